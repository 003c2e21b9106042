//! Topic administration: create, list, describe.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::types::RDKafkaErrorCode;

use crate::{BusConfig, BusError};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// What a topic should look like when created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    pub partitions: i32,
    /// Replication factor; `None` uses the broker's default.
    pub replication: Option<i32>,
    /// Topic configs such as `retention.ms` or `cleanup.policy`.
    pub configs: Vec<(String, String)>,
}

impl TopicSpec {
    /// A topic with `partitions` partitions and the broker's defaults. Its
    /// `retention.ms` is set explicitly (to -1, keep forever) because some
    /// clients read it and fail when a broker does not report it.
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication: None,
            configs: vec![("retention.ms".into(), "-1".into())],
        }
    }

    /// Sets a topic config (replacing an earlier value of the same key).
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        self.configs.retain(|(k, _)| *k != key);
        self.configs.push((key, value.into()));
        self
    }
}

/// A partition of a topic and its offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition number.
    pub id: i32,
    /// Broker id of the leader.
    pub leader: i32,
    /// First offset still stored.
    pub low: i64,
    /// Offset the next record will get.
    pub high: i64,
}

/// A topic's partitions and configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// Its partitions.
    pub partitions: Vec<PartitionInfo>,
    /// Configs set on the topic (not broker defaults), sorted by key.
    pub configs: Vec<(String, String)>,
}

impl TopicInfo {
    /// Records currently stored (sum of high − low over partitions).
    pub fn records(&self) -> i64 {
        self.partitions.iter().map(|p| p.high - p.low).sum()
    }
}

/// Admin client: cheap to clone.
#[derive(Clone)]
pub struct Admin {
    admin: Arc<crate::DropOffThread<AdminClient<DefaultClientContext>>>,
    /// Metadata and watermarks need a consumer handle.
    metadata: Arc<crate::DropOffThread<BaseConsumer>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

impl Admin {
    /// Creates the admin and metadata clients (no connection yet).
    pub fn new(config: &BusConfig) -> Result<Self, BusError> {
        let admin = config
            .client_config()
            .create()
            .map_err(|e| BusError::kafka("creating the admin client", e))?;
        let metadata = config
            .client_config()
            .set("group.id", "weir-admin")
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| BusError::kafka("creating the metadata client", e))?;
        Ok(Self {
            admin: Arc::new(crate::DropOffThread::new(admin)),
            metadata: Arc::new(crate::DropOffThread::new(metadata)),
        })
    }

    /// Fails with a clear message if no broker answers.
    pub async fn check_reachable(&self) -> Result<(), BusError> {
        self.blocking(|metadata| metadata.fetch_metadata(None, METADATA_TIMEOUT).map(|_| ()))
            .await
            .map_err(|e| BusError::kafka("no Kafka broker answered", e))
    }

    /// Creates a topic; fails if it exists.
    pub async fn create_topic(&self, spec: &TopicSpec) -> Result<(), BusError> {
        match self.create(spec).await? {
            None => Ok(()),
            Some(code) => Err(BusError::kafka(
                format!("creating topic `{}`", spec.name),
                rdkafka::error::KafkaError::AdminOp(code),
            )),
        }
    }

    /// Creates a topic unless it exists; returns whether it was created.
    pub async fn ensure_topic(&self, spec: &TopicSpec) -> Result<bool, BusError> {
        match self.create(spec).await? {
            None => Ok(true),
            Some(RDKafkaErrorCode::TopicAlreadyExists) => Ok(false),
            Some(code) => Err(BusError::kafka(
                format!("creating topic `{}`", spec.name),
                rdkafka::error::KafkaError::AdminOp(code),
            )),
        }
    }

    async fn create(&self, spec: &TopicSpec) -> Result<Option<RDKafkaErrorCode>, BusError> {
        weir_core::topics::validate(&spec.name).map_err(BusError::InvalidTopic)?;
        if spec.partitions < 1 {
            return Err(BusError::InvalidOption(format!(
                "topic `{}` needs at least one partition, not {}",
                spec.name, spec.partitions
            )));
        }
        let mut topic = NewTopic::new(
            &spec.name,
            spec.partitions,
            TopicReplication::Fixed(spec.replication.unwrap_or(-1)),
        );
        for (key, value) in &spec.configs {
            topic = topic.set(key, value);
        }
        let options = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
        let results = self
            .admin
            .create_topics([&topic], &options)
            .await
            .map_err(|e| BusError::kafka(format!("creating topic `{}`", spec.name), e))?;
        Ok(results
            .into_iter()
            .find_map(|r| r.err().map(|(_, code)| code)))
    }

    /// Names and partition counts of all topics, sorted by name.
    pub async fn list_topics(&self) -> Result<Vec<(String, usize)>, BusError> {
        let mut topics = self
            .blocking(|metadata| {
                metadata.fetch_metadata(None, METADATA_TIMEOUT).map(|m| {
                    m.topics()
                        .iter()
                        .map(|t| (t.name().to_string(), t.partitions().len()))
                        .collect::<Vec<_>>()
                })
            })
            .await
            .map_err(|e| BusError::kafka("listing topics", e))?;
        topics.sort();
        Ok(topics)
    }

    /// Number of partitions of `topic`.
    pub async fn partitions(&self, topic: &str) -> Result<i32, BusError> {
        let name = topic.to_string();
        let count = self
            .blocking(move |metadata| {
                crate::metadata::patiently(|| {
                    metadata.fetch_metadata(Some(&name), METADATA_TIMEOUT)
                })
                .map(|m| {
                    m.topics()
                        .iter()
                        .find(|t| t.name() == name && t.error().is_none())
                        .map_or(0, |t| t.partitions().len())
                })
            })
            .await
            .map_err(|e| BusError::kafka(format!("reading metadata of `{topic}`"), e))?;
        if count == 0 {
            return Err(BusError::UnknownTopic(topic.to_string()));
        }
        Ok(count as i32)
    }

    /// Partitions with leaders and offsets, and the topic's own configs.
    pub async fn describe_topic(&self, topic: &str) -> Result<TopicInfo, BusError> {
        let name = topic.to_string();
        let partitions = self
            .blocking(move |metadata| {
                let meta = metadata.fetch_metadata(Some(&name), METADATA_TIMEOUT)?;
                let Some(found) = meta.topics().iter().find(|t| {
                    t.name() == name && t.error().is_none() && !t.partitions().is_empty()
                }) else {
                    return Ok(None);
                };
                let mut partitions = Vec::new();
                for p in found.partitions() {
                    let (low, high) = metadata.fetch_watermarks(&name, p.id(), METADATA_TIMEOUT)?;
                    partitions.push(PartitionInfo {
                        id: p.id(),
                        leader: p.leader(),
                        low,
                        high,
                    });
                }
                partitions.sort_by_key(|p| p.id);
                Ok(Some(partitions))
            })
            .await
            .map_err(|e| BusError::kafka(format!("describing `{topic}`"), e))?
            .ok_or_else(|| BusError::UnknownTopic(topic.to_string()))?;
        // Only asked for a topic known to exist: the embedded broker cannot
        // describe the configs of a missing one.
        let options = AdminOptions::new().request_timeout(Some(METADATA_TIMEOUT));
        let resources = self
            .admin
            .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
            .await
            .map_err(|e| BusError::kafka(format!("describing configs of `{topic}`"), e))?;
        let mut configs: Vec<(String, String)> = resources
            .into_iter()
            .flatten()
            .flat_map(|resource| resource.entries)
            .filter(|entry| !entry.is_default)
            .filter_map(|entry| entry.value.map(|value| (entry.name, value)))
            .collect();
        configs.sort();
        Ok(TopicInfo {
            name: topic.to_string(),
            partitions,
            configs,
        })
    }

    /// The `(low, high)` offsets of one partition.
    pub async fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), BusError> {
        let name = topic.to_string();
        self.blocking(move |metadata| metadata.fetch_watermarks(&name, partition, METADATA_TIMEOUT))
            .await
            .map_err(|e| BusError::kafka(format!("reading offsets of {topic}/{partition}"), e))
    }

    /// librdkafka's metadata calls block: run them off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&BaseConsumer) -> T + Send + 'static,
    ) -> T {
        let metadata = self.metadata.clone();
        tokio::task::spawn_blocking(move || call(&metadata))
            .await
            .expect("metadata task panicked")
    }
}
