//! The schema registry: a materialised view of the compacted `weir.schemas`
//! topic, served over the Confluent Schema Registry REST API by [`http`].
//!
//! Every registration is a record on `weir.schemas` first. Each node replays
//! the topic into memory, so every node reaches the same state, and ids are
//! decided by the log itself rather than by a leader:
//!
//! - a schema's **id** is the offset (+1) of the first record that carried
//!   its content, so the same schema under two subjects has one id;
//! - a subject's **versions** count its distinct schemas in log order;
//! - a record that breaks the subject's compatibility level *at its place in
//!   the log* is ignored, so two writers racing incompatible schemas cannot
//!   both win: the writer whose record was ignored answers 409.
//!
//! A writer produces its record, waits until its own follower has applied
//! that offset, then reads the answer from the materialised state.

pub mod http;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use apache_avro::schema_compatibility::SchemaCompatibility;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_core::topics;

use crate::avro::AvroCodec;
use crate::decode_error::{DeadLetterReason, DecodeError};
use crate::{Admin, BusConfig, BusError, TopicSpec};

/// The kind of a schema, as the REST API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum SchemaType {
    /// Apache Avro.
    #[default]
    Avro,
    /// JSON Schema.
    Json,
}

/// How new schemas of a subject must relate to its earlier ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Compatibility {
    /// Anything goes.
    None,
    /// The new schema can read data written with the latest one.
    #[default]
    Backward,
    /// ... with every earlier one.
    BackwardTransitive,
    /// The latest schema can read data written with the new one.
    Forward,
    /// ... every earlier one can.
    ForwardTransitive,
    /// Both backward and forward.
    Full,
    /// Both, against every earlier one.
    FullTransitive,
}

impl Compatibility {
    fn transitive(self) -> bool {
        matches!(
            self,
            Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive
        )
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive
        )
    }
}

/// A reference from a schema to a named type registered under another subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    /// The referenced type's name.
    pub name: String,
    /// Its subject.
    pub subject: String,
    /// Its version.
    pub version: i32,
}

/// A parsed schema, ready to check and convert records.
#[derive(Debug)]
pub enum SchemaKind {
    /// An Avro schema.
    Avro(Box<AvroCodec>),
    /// A JSON Schema.
    Json(jsonschema::Validator),
}

/// A schema known to the registry.
#[derive(Debug)]
pub struct RegisteredSchema {
    /// Global id (what the Confluent wire format carries).
    pub id: u32,
    /// AVRO or JSON.
    pub schema_type: SchemaType,
    /// The schema text as first registered.
    pub text: String,
    /// The parsed schema.
    pub kind: SchemaKind,
}

impl RegisteredSchema {
    /// Parses and checks a schema's text.
    pub fn parse(id: u32, schema_type: SchemaType, text: &str) -> Result<Self, RegistryError> {
        let kind = match schema_type {
            SchemaType::Avro => AvroCodec::parse(text)
                .map(|codec| SchemaKind::Avro(Box::new(codec)))
                .map_err(|e| RegistryError::InvalidSchema(format!("invalid Avro schema: {e}")))?,
            SchemaType::Json => {
                let json: Json = serde_json::from_str(text).map_err(|e| {
                    RegistryError::InvalidSchema(format!("invalid JSON Schema: {e}"))
                })?;
                jsonschema::validator_for(&json)
                    .map(SchemaKind::Json)
                    .map_err(|e| {
                        RegistryError::InvalidSchema(format!("invalid JSON Schema: {e}"))
                    })?
            }
        };
        Ok(Self {
            id,
            schema_type,
            text: text.to_string(),
            kind,
        })
    }

    /// Checks a JSON value against the schema.
    pub fn check_json(&self, json: &Json) -> Result<(), DecodeError> {
        match &self.kind {
            SchemaKind::Avro(avro) => avro.encode_json(json).map(|_| ()),
            SchemaKind::Json(validator) => match validator.iter_errors(json).next() {
                None => Ok(()),
                Some(error) => {
                    let pointer = error.instance_path().to_string();
                    let field = pointer.trim_start_matches('/').replace('/', ".");
                    Err(DecodeError {
                        reason: DeadLetterReason::SchemaViolation,
                        field: (!field.is_empty()).then_some(field),
                        message: error.to_string(),
                    })
                }
            },
        }
    }
}

/// One version of a subject.
#[derive(Debug, Clone)]
pub struct SubjectVersion {
    /// The subject.
    pub subject: String,
    /// Its version, from 1.
    pub version: i32,
    /// The schema.
    pub schema: Arc<RegisteredSchema>,
}

/// Registry failures, each with the Confluent error code clients expect.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Unknown subject.
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// Unknown version of a known subject.
    #[error("Version {version} not found for subject '{subject}'.")]
    VersionNotFound {
        /// The subject.
        subject: String,
        /// The version asked for.
        version: String,
    },
    /// Unknown schema id, or a schema not registered under a subject.
    #[error("{0}")]
    SchemaNotFound(String),
    /// A schema that does not parse.
    #[error("{0}")]
    InvalidSchema(String),
    /// A version that is neither a positive number nor `latest`.
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    /// An unknown compatibility level.
    #[error(
        "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive"
    )]
    InvalidCompatibility,
    /// No subject-level compatibility is set.
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    NoSubjectConfig(String),
    /// The schema breaks the subject's compatibility level.
    #[error(
        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\": {details}"
    )]
    Incompatible {
        /// The subject.
        subject: String,
        /// What does not fit.
        details: String,
    },
    /// The registry's topic could not be read or written.
    #[error("schema registry store: {0}")]
    Store(String),
}

/// One record of the `weir.schemas` log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum LogRecord {
    /// A schema registered under a subject.
    Schema {
        subject: String,
        schema: String,
        #[serde(rename = "schemaType", default)]
        schema_type: SchemaType,
    },
    /// The compatibility level of a subject (`None`: the global level).
    Config {
        subject: Option<String>,
        compatibility: Option<Compatibility>,
    },
}

impl LogRecord {
    /// Compaction key: later records with the same key replace earlier ones.
    fn key(&self) -> String {
        match self {
            LogRecord::Schema {
                subject,
                schema,
                schema_type,
            } => format!("schema\n{subject}\n{schema_type:?}\n{}", canonical(schema)),
            LogRecord::Config { subject, .. } => {
                format!("config\n{}", subject.as_deref().unwrap_or(""))
            }
        }
    }
}

/// Whitespace- and key-order-insensitive form of a schema, for identity.
fn canonical(text: &str) -> String {
    serde_json::from_str::<Json>(text)
        .map(|json| json.to_string())
        .unwrap_or_else(|_| text.trim().to_string())
}

#[derive(Default)]
struct State {
    by_id: HashMap<u32, Arc<RegisteredSchema>>,
    ids_by_content: HashMap<(SchemaType, String), u32>,
    /// Schema ids of each subject's versions, in order (version = index + 1).
    subjects: BTreeMap<String, Vec<u32>>,
    global: Compatibility,
    subject_config: HashMap<String, Compatibility>,
}

impl State {
    fn apply(&mut self, offset: i64, record: LogRecord) {
        match record {
            LogRecord::Config {
                subject: None,
                compatibility,
            } => self.global = compatibility.unwrap_or_default(),
            LogRecord::Config {
                subject: Some(subject),
                compatibility: Some(level),
            } => {
                self.subject_config.insert(subject, level);
            }
            LogRecord::Config {
                subject: Some(subject),
                compatibility: None,
            } => {
                self.subject_config.remove(&subject);
            }
            LogRecord::Schema {
                subject,
                schema,
                schema_type,
            } => {
                let content = (schema_type, canonical(&schema));
                let existing = self.ids_by_content.get(&content).copied();
                if let Some(id) = existing
                    && self
                        .subjects
                        .get(&subject)
                        .is_some_and(|ids| ids.contains(&id))
                {
                    return;
                }
                let parsed = match existing {
                    Some(id) => self.by_id[&id].clone(),
                    None => {
                        let Ok(id) = u32::try_from(offset + 1) else {
                            return;
                        };
                        match RegisteredSchema::parse(id, schema_type, &schema) {
                            Ok(parsed) => Arc::new(parsed),
                            // Writers check schemas before producing; a bad
                            // record can only come from elsewhere. Skip it.
                            Err(error) => {
                                tracing::warn!(offset, %error, "ignoring an invalid schema on {}", topics::SCHEMAS);
                                return;
                            }
                        }
                    }
                };
                if let Err(error) = self.check_compatibility(&subject, &parsed) {
                    tracing::debug!(offset, %error, "schema record rejected by its place in the log");
                    return;
                }
                self.ids_by_content.insert(content, parsed.id);
                self.by_id.insert(parsed.id, parsed.clone());
                self.subjects.entry(subject).or_default().push(parsed.id);
            }
        }
    }

    fn compatibility(&self, subject: &str) -> Compatibility {
        self.subject_config
            .get(subject)
            .copied()
            .unwrap_or(self.global)
    }

    fn versions(&self, subject: &str) -> Vec<Arc<RegisteredSchema>> {
        self.subjects
            .get(subject)
            .map(|ids| ids.iter().map(|id| self.by_id[id].clone()).collect())
            .unwrap_or_default()
    }

    fn check_compatibility(
        &self,
        subject: &str,
        candidate: &RegisteredSchema,
    ) -> Result<(), RegistryError> {
        let level = self.compatibility(subject);
        let versions = self.versions(subject);
        let against: &[Arc<RegisteredSchema>] = if level.transitive() {
            &versions
        } else {
            versions.last().map(std::slice::from_ref).unwrap_or(&[])
        };
        check_against(subject, level, candidate, against)
    }
}

fn check_against(
    subject: &str,
    level: Compatibility,
    candidate: &RegisteredSchema,
    against: &[Arc<RegisteredSchema>],
) -> Result<(), RegistryError> {
    let incompatible = |details: String| RegistryError::Incompatible {
        subject: subject.to_string(),
        details,
    };
    for earlier in against {
        let (SchemaKind::Avro(new), SchemaKind::Avro(old)) = (&candidate.kind, &earlier.kind)
        else {
            if candidate.schema_type != earlier.schema_type {
                return Err(incompatible(format!(
                    "schema type {:?} differs from {:?} of schema {}",
                    candidate.schema_type, earlier.schema_type, earlier.id
                )));
            }
            // JSON Schema compatibility is not checked (as with level NONE).
            continue;
        };
        if level.backward()
            && let Err(e) = SchemaCompatibility::can_read(old.schema, new.schema)
        {
            return Err(incompatible(format!(
                "the new schema cannot read data written with schema {}: {e}",
                earlier.id
            )));
        }
        if level.forward()
            && let Err(e) = SchemaCompatibility::can_read(new.schema, old.schema)
        {
            return Err(incompatible(format!(
                "schema {} cannot read data written with the new schema: {e}",
                earlier.id
            )));
        }
    }
    Ok(())
}

/// The registry: cheap to clone, shared by codecs, the CLI and the REST API.
#[derive(Clone)]
pub struct SchemaRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    state: RwLock<State>,
    /// Made at the first write: most processes only read schemas, and a
    /// producer is a librdkafka client with threads and connections of its
    /// own (its polling thread wakes ten times a second).
    producer:
        tokio::sync::OnceCell<crate::DropOffThread<FutureProducer<crate::producer::ProducerLog>>>,
    producer_config: rdkafka::ClientConfig,
    follower: Arc<crate::DropOffThread<StreamConsumer>>,
    /// The next offset of `weir.schemas` to apply (everything before is applied).
    applied: watch::Receiver<i64>,
    task: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("applied", &*self.inner.applied.borrow())
            .finish()
    }
}

const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

impl SchemaRegistry {
    /// Creates `weir.schemas` if needed, replays it, and keeps following it.
    pub async fn open(config: &BusConfig, admin: &Admin) -> Result<Self, BusError> {
        admin
            .ensure_topic(
                &TopicSpec::new(topics::SCHEMAS, 1)
                    .config("cleanup.policy", "compact")
                    .config("retention.ms", "-1"),
            )
            .await?;
        let follower: StreamConsumer = config
            .client_config()
            .set("group.id", format!("weir-registry-{}", uuid_like()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(|e| BusError::kafka("creating the schema registry follower", e))?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topics::SCHEMAS, 0, Offset::Beginning)
            .map_err(|e| BusError::kafka("assigning weir.schemas", e))?;
        follower
            .assign(&assignment)
            .map_err(|e| BusError::kafka("assigning weir.schemas", e))?;
        let follower = Arc::new(crate::DropOffThread::new(follower));
        let mut producer_config = config.client_config();
        producer_config
            .set("acks", "all")
            .set("enable.idempotence", "true");

        let (applied_tx, applied) = watch::channel(0_i64);
        let state = RwLock::new(State::default());
        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<Inner>| {
            let weak = weak.clone();
            let follower_task = follower.clone();
            let task = tokio::spawn(async move {
                loop {
                    let message = match follower_task.recv().await {
                        Ok(message) => message,
                        Err(error) => {
                            tracing::warn!(%error, "schema registry follower");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    };
                    let Some(inner) = weak.upgrade() else { return };
                    let offset = message.offset();
                    match message.payload().map(serde_json::from_slice::<LogRecord>) {
                        Some(Ok(record)) => inner
                            .state
                            .write()
                            .expect("registry state lock")
                            .apply(offset, record),
                        // A tombstone (null value) or a foreign record.
                        None => {}
                        Some(Err(error)) => {
                            tracing::warn!(offset, %error, "ignoring an unreadable record on {}", topics::SCHEMAS)
                        }
                    }
                    let _ = applied_tx.send(offset + 1);
                }
            });
            Inner {
                state,
                producer: tokio::sync::OnceCell::new(),
                producer_config,
                follower,
                applied,
                task,
            }
        });
        let registry = Self { inner };
        registry.sync().await?;
        Ok(registry)
    }

    /// Waits until everything written to `weir.schemas` so far is applied.
    pub async fn sync(&self) -> Result<(), BusError> {
        let follower = self.inner.follower.clone();
        let (_, high) = tokio::task::spawn_blocking(move || {
            follower.fetch_watermarks(topics::SCHEMAS, 0, Duration::from_secs(10))
        })
        .await
        .expect("watermark task")
        .map_err(|e| BusError::kafka("reading the end of weir.schemas", e))?;
        self.wait_applied(high).await
    }

    async fn wait_applied(&self, next_offset: i64) -> Result<(), BusError> {
        let mut applied = self.inner.applied.clone();
        tokio::time::timeout(REPLAY_TIMEOUT, applied.wait_for(|&a| a >= next_offset))
            .await
            .map_err(|_| {
                BusError::Timeout(format!(
                    "the schema registry did not reach offset {next_offset} of {} in {REPLAY_TIMEOUT:?}",
                    topics::SCHEMAS
                ))
            })?
            .map_err(|_| BusError::Closed("schema registry follower".into()))?;
        Ok(())
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner.state.read().expect("registry state lock")
    }

    /// The schema with global id `id`.
    pub fn by_id(&self, id: u32) -> Option<Arc<RegisteredSchema>> {
        self.state().by_id.get(&id).cloned()
    }

    /// All subjects, sorted.
    pub fn subjects(&self) -> Vec<String> {
        self.state().subjects.keys().cloned().collect()
    }

    /// The versions of a subject (1, 2, ...).
    pub fn versions(&self, subject: &str) -> Result<Vec<i32>, RegistryError> {
        let state = self.state();
        let ids = state
            .subjects
            .get(subject)
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))?;
        Ok((1..=ids.len() as i32).collect())
    }

    /// The latest version of a subject, if it has one.
    pub fn latest(&self, subject: &str) -> Option<SubjectVersion> {
        self.version(subject, "latest").ok()
    }

    /// Version `version` (a number, or `latest`/`-1`) of a subject.
    pub fn version(&self, subject: &str, version: &str) -> Result<SubjectVersion, RegistryError> {
        let state = self.state();
        let ids = state
            .subjects
            .get(subject)
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))?;
        let index = match version {
            "latest" | "-1" => ids.len().checked_sub(1),
            number => {
                let n: i32 = number
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| RegistryError::InvalidVersion(number.to_string()))?;
                Some(n as usize - 1).filter(|i| *i < ids.len())
            }
        }
        .ok_or_else(|| RegistryError::VersionNotFound {
            subject: subject.to_string(),
            version: version.to_string(),
        })?;
        Ok(SubjectVersion {
            subject: subject.to_string(),
            version: index as i32 + 1,
            schema: state.by_id[&ids[index]].clone(),
        })
    }

    /// The version of `subject` that has exactly this schema, if any.
    pub fn lookup(
        &self,
        subject: &str,
        schema_type: SchemaType,
        text: &str,
    ) -> Result<SubjectVersion, RegistryError> {
        let state = self.state();
        let ids = state
            .subjects
            .get(subject)
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))?;
        let not_found = || RegistryError::SchemaNotFound("Schema not found".to_string());
        let id = *state
            .ids_by_content
            .get(&(schema_type, canonical(text)))
            .ok_or_else(not_found)?;
        let index = ids.iter().position(|i| *i == id).ok_or_else(not_found)?;
        Ok(SubjectVersion {
            subject: subject.to_string(),
            version: index as i32 + 1,
            schema: state.by_id[&id].clone(),
        })
    }

    /// Registers a schema under a subject (idempotent) and returns its version.
    pub async fn register(
        &self,
        subject: &str,
        schema_type: SchemaType,
        text: &str,
    ) -> Result<SubjectVersion, RegistryError> {
        if let Ok(existing) = self.lookup(subject, schema_type, text) {
            return Ok(existing);
        }
        // Parse and check before writing: the log only gets sound records.
        let candidate = RegisteredSchema::parse(0, schema_type, text)?;
        self.state().check_compatibility(subject, &candidate)?;
        let offset = self
            .append(LogRecord::Schema {
                subject: subject.to_string(),
                schema: text.to_string(),
                schema_type,
            })
            .await?;
        self.wait_applied(offset + 1)
            .await
            .map_err(|e| RegistryError::Store(e.to_string()))?;
        self.lookup(subject, schema_type, text).map_err(|_| {
            // Another writer's record got into the log first and made ours
            // incompatible at its place.
            self.state()
                .check_compatibility(subject, &candidate)
                .err()
                .unwrap_or_else(|| RegistryError::Incompatible {
                    subject: subject.to_string(),
                    details: "a concurrent registration won".to_string(),
                })
        })
    }

    /// Whether a schema could be registered under `subject`, checked against
    /// `version` (or all versions if the level is transitive).
    pub fn check(
        &self,
        subject: &str,
        version: &str,
        schema_type: SchemaType,
        text: &str,
    ) -> Result<Result<(), String>, RegistryError> {
        let candidate = RegisteredSchema::parse(0, schema_type, text)?;
        let state = self.state();
        let level = state.compatibility(subject);
        let against: Vec<Arc<RegisteredSchema>> = match version {
            "latest" | "-1" if state.subjects.get(subject).is_none_or(|v| v.is_empty()) => {
                vec![]
            }
            _ if level.transitive() => state.versions(subject),
            _ => {
                drop(state);
                vec![self.version(subject, version)?.schema]
            }
        };
        Ok(match check_against(subject, level, &candidate, &against) {
            Ok(()) => Ok(()),
            Err(RegistryError::Incompatible { details, .. }) => Err(details),
            Err(other) => return Err(other),
        })
    }

    /// The compatibility level of a subject, or the global one (`None`).
    pub fn compatibility(&self, subject: Option<&str>) -> Result<Compatibility, RegistryError> {
        let state = self.state();
        match subject {
            None => Ok(state.global),
            Some(subject) => state
                .subject_config
                .get(subject)
                .copied()
                .ok_or_else(|| RegistryError::NoSubjectConfig(subject.to_string())),
        }
    }

    /// Sets (or with `None` clears) the compatibility level of a subject or,
    /// with no subject, the global level.
    pub async fn set_compatibility(
        &self,
        subject: Option<&str>,
        level: Option<Compatibility>,
    ) -> Result<(), RegistryError> {
        let offset = self
            .append(LogRecord::Config {
                subject: subject.map(str::to_string),
                compatibility: level,
            })
            .await?;
        self.wait_applied(offset + 1)
            .await
            .map_err(|e| RegistryError::Store(e.to_string()))
    }

    async fn append(&self, record: LogRecord) -> Result<i64, RegistryError> {
        let key = record.key();
        let value = serde_json::to_vec(&record).expect("log records serialize");
        let producer = self
            .inner
            .producer
            .get_or_try_init(|| async {
                let producer: FutureProducer<crate::producer::ProducerLog> = self
                    .inner
                    .producer_config
                    .create_with_context(crate::producer::ProducerLog)
                    .map_err(|e| {
                        RegistryError::Store(format!("creating the schema registry producer: {e}"))
                    })?;
                // Its first send waits for a producer id (see there).
                crate::producer::ask_for_producer_id(&producer);
                Ok::<_, RegistryError>(crate::DropOffThread::new(producer))
            })
            .await?;
        let delivery = producer
            .send(
                FutureRecord::to(topics::SCHEMAS).key(&key).payload(&value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| RegistryError::Store(format!("writing {}: {e}", topics::SCHEMAS)))?;
        Ok(delivery.offset)
    }
}

/// A unique-enough suffix for client group ids (process id and time).
pub(crate) fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos:x}", std::process::id())
}
