//! The events on `weir.meta` that experiments, runs, models and artifacts
//! are made of.
//!
//! Each event has a `kind` and is written in Avro (`schemas/meta_event.avsc`,
//! one record per kind, in the single-object encoding), next to the
//! feature views' and datasets' JSON events that share the topic. It
//! carries everything its effect depends on — ids, times, version numbers
//! — so that applying the log in order gives the same state on every node.
//! Events of kinds this crate does not know are skipped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::MetaError;

/// One metric value. `value` may be NaN or ±infinity: as in protobuf's
/// JSON, those are written as the strings `"NaN"`, `"Infinity"` and
/// `"-Infinity"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// Name.
    pub key: String,
    /// Value.
    #[serde(with = "float")]
    pub value: f64,
    /// When it was measured, ms since the epoch.
    pub timestamp: i64,
    /// Training step.
    #[serde(default)]
    pub step: i64,
}

/// A model file as a registered version holds it: where it is, what it
/// takes and gives, and what it needs to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// `onnx`.
    pub format: String,
    /// Its path in the artifact store (`<experiment>/<run>/artifacts/model/model.onnx`).
    pub path: String,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Inputs, outputs, opsets and producer, read from the file.
    pub signature: weir_catalog::Signature,
    /// The columns its input takes, in order.
    pub features: Vec<String>,
    /// The column it predicts.
    pub label: String,
    /// `classification` or `regression`.
    pub task: String,
    /// A classifier's classes, in the order of its scores.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    /// What it needs to run: package → version (`scikit-learn` → `1.9.1`).
    #[serde(default)]
    pub dependencies: BTreeMap<String, String>,
}

/// A key and a value (params, tags).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
}

/// A metadata change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// An experiment was created.
    ExperimentCreated {
        /// When.
        at: i64,
        /// Its id.
        experiment_id: String,
        /// Its unique name.
        name: String,
        /// Where its runs' artifacts go.
        artifact_location: String,
        /// Tags.
        #[serde(default)]
        tags: Vec<KeyValue>,
    },
    /// An experiment was renamed.
    ExperimentRenamed {
        /// When.
        at: i64,
        /// Which.
        experiment_id: String,
        /// The new name.
        name: String,
    },
    /// An experiment was deleted (`deleted: true`) or restored.
    ExperimentLifecycle {
        /// When.
        at: i64,
        /// Which.
        experiment_id: String,
        /// Deleted or restored.
        deleted: bool,
    },
    /// A tag was set on an experiment.
    ExperimentTagged {
        /// When.
        at: i64,
        /// Which.
        experiment_id: String,
        /// The tag.
        tag: KeyValue,
    },
    /// A run was started.
    RunCreated {
        /// When.
        at: i64,
        /// Its id (32 hex digits).
        run_id: String,
        /// Its experiment.
        experiment_id: String,
        /// Its name.
        run_name: String,
        /// Who started it.
        user_id: String,
        /// Start time, ms since the epoch.
        start_time: i64,
        /// Where its artifacts go.
        artifact_uri: String,
        /// Tags.
        #[serde(default)]
        tags: Vec<KeyValue>,
    },
    /// A run's status, end time or name changed.
    RunUpdated {
        /// When.
        at: i64,
        /// Which.
        run_id: String,
        /// New status (`RUNNING`, `SCHEDULED`, `FINISHED`, `FAILED`, `KILLED`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
        /// End time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        end_time: Option<i64>,
        /// New name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run_name: Option<String>,
    },
    /// A run was deleted (`deleted: true`) or restored.
    RunLifecycle {
        /// When.
        at: i64,
        /// Which.
        run_id: String,
        /// Deleted or restored.
        deleted: bool,
    },
    /// Metrics, params and tags were logged to a run (one `log-batch`, or
    /// one `log-metric`, `log-parameter`, `set-tag`).
    RunLogged {
        /// When.
        at: i64,
        /// Which.
        run_id: String,
        /// Metrics.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        metrics: Vec<Metric>,
        /// Params (write-once).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        params: Vec<KeyValue>,
        /// Tags.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tags: Vec<KeyValue>,
    },
    /// A tag was removed from a run.
    RunTagDeleted {
        /// When.
        at: i64,
        /// Which.
        run_id: String,
        /// The tag's key.
        key: String,
    },
    /// A run read these datasets (MLflow's `DatasetInput`s, as sent).
    RunInputs {
        /// When.
        at: i64,
        /// Which.
        run_id: String,
        /// The inputs.
        datasets: Vec<Json>,
    },
    /// A file was stored at `path` of the artifact store.
    ArtifactStored {
        /// When.
        at: i64,
        /// Its path in the store (`<experiment>/<run>/artifacts/…`).
        path: String,
        /// SHA-256 of its bytes, hex: where its bytes are.
        sha256: String,
        /// Its size.
        size: u64,
    },
    /// A registered model was created.
    ModelCreated {
        /// When.
        at: i64,
        /// Its unique name.
        name: String,
        /// Description.
        #[serde(default)]
        description: String,
        /// Tags.
        #[serde(default)]
        tags: Vec<KeyValue>,
    },
    /// A registered model was renamed.
    ModelRenamed {
        /// When.
        at: i64,
        /// Its name.
        name: String,
        /// Its new name.
        new_name: String,
    },
    /// A registered model's description changed.
    ModelDescribed {
        /// When.
        at: i64,
        /// Which.
        name: String,
        /// The description.
        description: String,
    },
    /// A registered model and its versions were deleted.
    ModelDeleted {
        /// When.
        at: i64,
        /// Which.
        name: String,
    },
    /// A tag was set on a registered model (`version: None`) or on one of
    /// its versions; `value: None` removes it.
    ModelTagged {
        /// When.
        at: i64,
        /// The model.
        name: String,
        /// The version, if the tag is a version's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
        /// The key.
        key: String,
        /// The value; `None` deletes the tag.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
    },
    /// A model version was created.
    VersionCreated {
        /// When.
        at: i64,
        /// The model.
        name: String,
        /// Its number, from 1.
        version: u64,
        /// Where its files are (`runs:/…`, `mlflow-artifacts:/…`, a URI).
        source: String,
        /// The run that made it.
        #[serde(default)]
        run_id: String,
        /// Who created it.
        #[serde(default)]
        user_id: String,
        /// Description.
        #[serde(default)]
        description: String,
        /// Tags.
        #[serde(default)]
        tags: Vec<KeyValue>,
        /// What the model file is, for versions Weir made (training jobs).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<Box<ModelInfo>>,
    },
    /// A model version's description changed.
    VersionDescribed {
        /// When.
        at: i64,
        /// The model.
        name: String,
        /// The version.
        version: u64,
        /// The description.
        description: String,
    },
    /// A model version moved to a stage (`None`, `Staging`, `Production`,
    /// `Archived`).
    VersionStaged {
        /// When.
        at: i64,
        /// The model.
        name: String,
        /// The version.
        version: u64,
        /// The stage.
        stage: String,
        /// Whether the versions in that stage move to `Archived`.
        archive_existing: bool,
    },
    /// A model version was deleted.
    VersionDeleted {
        /// When.
        at: i64,
        /// The model.
        name: String,
        /// The version.
        version: u64,
    },
    /// An alias now points at a version (`version: None` removes it).
    AliasSet {
        /// When.
        at: i64,
        /// The model.
        name: String,
        /// The alias (`champion`, …).
        alias: String,
        /// The version; `None` deletes the alias.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
    },
    /// A deployment spec was applied: the deployment's next version.
    DeploymentApplied {
        /// When.
        at: i64,
        /// The deployment.
        name: String,
        /// Its version (1, 2, … by spec change).
        version: u64,
        /// The spec, as written (YAML).
        spec: String,
        /// The registry references it serves (`name@alias`).
        models: Vec<String>,
    },
    /// A deployment started serving these model versions: when it starts,
    /// and after each swap.
    DeploymentServing {
        /// When.
        at: i64,
        /// The deployment.
        name: String,
        /// `name@version` of each model.
        models: Vec<String>,
    },
    /// A deployment was deleted: its servers stop.
    DeploymentDeleted {
        /// When.
        at: i64,
        /// The deployment.
        name: String,
    },
    /// `holder` takes, renews or (with `until <= at`) gives up a lease on
    /// `key`: a claim on shared work, such as a tuning trial, that lapses
    /// unless renewed. Applied in log order, the first claim on a free key
    /// wins; a claim on a key another holder's lease still covers (by the
    /// claim's own time) changes nothing.
    Lease {
        /// When, ms since the epoch.
        at: i64,
        /// What is claimed (`trial/<parent run>/<n>`).
        key: String,
        /// Who claims it (`host/pid/start time`).
        holder: String,
        /// Until when, ms since the epoch.
        until: i64,
    },
}

impl Event {
    /// The key the event is stored under on `weir.meta`: what it is about.
    pub fn subject(&self) -> String {
        match self {
            Self::ExperimentCreated { experiment_id, .. }
            | Self::ExperimentRenamed { experiment_id, .. }
            | Self::ExperimentLifecycle { experiment_id, .. }
            | Self::ExperimentTagged { experiment_id, .. } => format!("experiment/{experiment_id}"),
            Self::RunCreated { run_id, .. }
            | Self::RunUpdated { run_id, .. }
            | Self::RunLifecycle { run_id, .. }
            | Self::RunLogged { run_id, .. }
            | Self::RunTagDeleted { run_id, .. }
            | Self::RunInputs { run_id, .. } => format!("run/{run_id}"),
            Self::ArtifactStored { path, .. } => format!("artifact/{path}"),
            Self::ModelCreated { name, .. }
            | Self::ModelRenamed { name, .. }
            | Self::ModelDescribed { name, .. }
            | Self::ModelDeleted { name, .. }
            | Self::ModelTagged { name, .. }
            | Self::VersionCreated { name, .. }
            | Self::VersionDescribed { name, .. }
            | Self::VersionStaged { name, .. }
            | Self::VersionDeleted { name, .. }
            | Self::AliasSet { name, .. } => format!("model/{name}"),
            Self::DeploymentApplied { name, .. }
            | Self::DeploymentServing { name, .. }
            | Self::DeploymentDeleted { name, .. } => format!("deployment/{name}"),
            Self::Lease { key, .. } => format!("lease/{key}"),
        }
    }

    /// The event's kinds, as written in `kind`.
    pub const KINDS: &'static [&'static str] = &[
        "experiment_created",
        "experiment_renamed",
        "experiment_lifecycle",
        "experiment_tagged",
        "run_created",
        "run_updated",
        "run_lifecycle",
        "run_logged",
        "run_tag_deleted",
        "run_inputs",
        "artifact_stored",
        "model_created",
        "model_renamed",
        "model_described",
        "model_deleted",
        "model_tagged",
        "version_created",
        "version_described",
        "version_staged",
        "version_deleted",
        "alias_set",
        "deployment_applied",
        "deployment_serving",
        "deployment_deleted",
        "lease",
    ];

    /// The event as a `weir.meta` record: Avro, in the single-object
    /// encoding of `schemas/meta_event.avsc` (its fingerprint, then the
    /// datum: a union with one record per kind).
    pub fn encode(&self) -> Vec<u8> {
        let avro = avro();
        let mut json = serde_json::to_value(self).expect("events serialise");
        let object = json.as_object_mut().expect("an event is an object");
        let kind = match object.remove("kind") {
            Some(Json::String(kind)) => kind,
            other => unreachable!("an event's kind is a string, not {other:?}"),
        };
        // MLflow's dataset inputs are free-form: JSON text in Avro.
        if let Some(Json::Array(datasets)) = object.get_mut("datasets") {
            for dataset in datasets {
                *dataset = Json::String(dataset.to_string());
            }
        }
        let tagged = Json::Object(
            [(format!("{AVRO_NAMESPACE}.{kind}"), json)]
                .into_iter()
                .collect(),
        );
        let mut out = avro.header.clone();
        out.extend(avro.codec.encode_json(&tagged).unwrap_or_else(|e| {
            panic!("schemas/meta_event.avsc does not fit a `{kind}` event: {e}")
        }));
        out
    }

    /// Reads an event from a `weir.meta` record: `Ok(None)` for the kinds
    /// of other components (feature views, datasets, in JSON). Events are
    /// Avro ([`Event::encode`]); JSON events, as Weir wrote them before,
    /// are read too.
    pub fn decode(payload: &[u8]) -> Result<Option<Self>, MetaError> {
        if payload.starts_with(&AVRO_MAGIC) {
            return Self::decode_avro(payload).map(Some);
        }
        #[derive(Deserialize)]
        struct Kind<'a> {
            #[serde(borrow)]
            kind: Option<std::borrow::Cow<'a, str>>,
        }
        let unreadable = |e: serde_json::Error| MetaError::invalid(format!("a JSON record: {e}"));
        let kind: Kind<'_> = serde_json::from_slice(payload).map_err(unreadable)?;
        match kind.kind {
            Some(kind) if Self::KINDS.contains(&kind.as_ref()) => serde_json::from_slice(payload)
                .map(Some)
                .map_err(unreadable),
            _ => Ok(None),
        }
    }

    fn decode_avro(payload: &[u8]) -> Result<Self, MetaError> {
        let avro = avro();
        let Some(datum) = payload.strip_prefix(avro.header.as_slice()) else {
            let fingerprint: String = payload
                .iter()
                .skip(2)
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect();
            return Err(MetaError::invalid(format!(
                "an Avro event written with another schema (fingerprint {fingerprint}) than this Weir's schemas/meta_event.avsc"
            )));
        };
        let value = avro
            .codec
            .decode(datum)
            .map_err(|e| MetaError::invalid(format!("an Avro event: {e}")))?;
        let apache_avro::types::Value::Union(index, record) = value else {
            unreachable!("the schema is a union");
        };
        let kind = &avro.kinds[index as usize];
        let mut json = weir_bus::avro::avro_to_json(&record);
        let object = json.as_object_mut().expect("each branch is a record");
        if let Some(Json::Array(datasets)) = object.get_mut("datasets") {
            for dataset in datasets {
                if let Json::String(text) = dataset {
                    *dataset = serde_json::from_str(text).map_err(|e| {
                        MetaError::invalid(format!("a `{kind}` event's dataset: {e}"))
                    })?;
                }
            }
        }
        object.insert("kind".into(), Json::String(kind.clone()));
        serde_json::from_value(json)
            .map_err(|e| MetaError::invalid(format!("a `{kind}` event: {e}")))
    }
}

/// Every event's schema: `schemas/meta_event.avsc`.
pub const AVRO_SCHEMA: &str = include_str!("../../../schemas/meta_event.avsc");
const AVRO_NAMESPACE: &str = "weir.meta";
/// Avro's single-object encoding starts so.
const AVRO_MAGIC: [u8; 2] = [0xC3, 0x01];

struct Avro {
    codec: weir_bus::avro::AvroCodec,
    /// `C3 01` and the schema's Rabin fingerprint.
    header: Vec<u8>,
    /// Each union branch's kind, by index.
    kinds: Vec<String>,
}

fn avro() -> &'static Avro {
    static AVRO: std::sync::OnceLock<Avro> = std::sync::OnceLock::new();
    AVRO.get_or_init(|| {
        use apache_avro::headers::HeaderBuilder as _;
        let codec =
            weir_bus::avro::AvroCodec::parse(AVRO_SCHEMA).expect("schemas/meta_event.avsc parses");
        let header =
            apache_avro::headers::RabinFingerprintHeader::from_schema(codec.schema).build_header();
        let apache_avro::Schema::Union(union) = codec.schema else {
            panic!("schemas/meta_event.avsc is a union of records");
        };
        let kinds = union
            .variants()
            .iter()
            .map(|variant| match variant {
                apache_avro::Schema::Record(record) => record.name.name().to_string(),
                other => {
                    panic!("schemas/meta_event.avsc has a branch that is no record: {other:?}")
                }
            })
            .collect();
        Avro {
            codec,
            header,
            kinds,
        }
    })
}

/// Tags as a map.
pub fn tag_map(tags: &[KeyValue]) -> BTreeMap<String, String> {
    tags.iter()
        .map(|t| (t.key.clone(), t.value.clone()))
        .collect()
}

/// Floats as protobuf's JSON writes them: numbers, and the strings `"NaN"`,
/// `"Infinity"`, `"-Infinity"` for the values JSON has no number for.
pub mod float {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    /// Writes `value`.
    pub fn serialize<S: Serializer>(value: &f64, out: S) -> Result<S::Ok, S::Error> {
        if value.is_nan() {
            out.serialize_str("NaN")
        } else if value.is_infinite() {
            out.serialize_str(if *value > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            })
        } else {
            out.serialize_f64(*value)
        }
    }

    /// Reads a number, or one of the three strings (also a number as text).
    pub fn deserialize<'de, D: Deserializer<'de>>(input: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(input)? {
            Raw::Number(value) => Ok(value),
            Raw::Text(text) => {
                parse(&text).ok_or_else(|| D::Error::custom(format!("`{text}` is not a number")))
            }
        }
    }

    /// `text` as a float: a number, `NaN`, `Infinity` or `-Infinity`.
    pub fn parse(text: &str) -> Option<f64> {
        match text {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => text.trim().parse().ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
        }
    }

    /// One event of every kind, its optional fields both set and unset.
    fn every_kind() -> Vec<Event> {
        let name = || "churn".to_string();
        let run_id = || "ab".repeat(16);
        let model = ModelInfo {
            format: "onnx".into(),
            path: "1/ab/artifacts/model/model.onnx".into(),
            sha256: "00".repeat(32),
            size: 12_345,
            signature: weir_catalog::Signature {
                inputs: vec![weir_catalog::TensorSpec {
                    name: "features".into(),
                    dtype: "float32".into(),
                    shape: vec![-1, 30],
                }],
                outputs: vec![weir_catalog::TensorSpec {
                    name: "probabilities".into(),
                    dtype: "float32".into(),
                    shape: vec![-1, 2],
                }],
                opsets: vec![weir_catalog::Opset {
                    domain: "ai.onnx.ml".into(),
                    version: 3,
                }],
                ir_version: 8,
                producer: "skl2onnx".into(),
            },
            features: vec!["amount".into(), "hour".into()],
            label: "fraud".into(),
            task: "classification".into(),
            classes: vec!["0".into(), "1".into()],
            dependencies: [("scikit-learn".to_string(), "1.9.1".to_string())].into(),
        };
        vec![
            Event::ExperimentCreated {
                at: 1,
                experiment_id: "1".into(),
                name: name(),
                artifact_location: "mlflow-artifacts:/1".into(),
                tags: vec![kv("team", "risk")],
            },
            Event::ExperimentRenamed {
                at: 2,
                experiment_id: "1".into(),
                name: "churn-2".into(),
            },
            Event::ExperimentLifecycle {
                at: 3,
                experiment_id: "1".into(),
                deleted: true,
            },
            Event::ExperimentTagged {
                at: 4,
                experiment_id: "1".into(),
                tag: kv("note", "é ✓"),
            },
            Event::RunCreated {
                at: 5,
                run_id: run_id(),
                experiment_id: "1".into(),
                run_name: "trial-0".into(),
                user_id: "ana".into(),
                start_time: 1_700_000_000_000,
                artifact_uri: "mlflow-artifacts:/1/ab/artifacts".into(),
                tags: vec![],
            },
            Event::RunUpdated {
                at: 6,
                run_id: run_id(),
                status: Some("FINISHED".into()),
                end_time: Some(-7),
                run_name: None,
            },
            Event::RunUpdated {
                at: 6,
                run_id: run_id(),
                status: None,
                end_time: None,
                run_name: Some("renamed".into()),
            },
            Event::RunLifecycle {
                at: 7,
                run_id: run_id(),
                deleted: false,
            },
            Event::RunLogged {
                at: 8,
                run_id: run_id(),
                metrics: vec![
                    Metric {
                        key: "auc".into(),
                        value: 0.91,
                        timestamp: 9,
                        step: 3,
                    },
                    Metric {
                        key: "loss".into(),
                        value: f64::INFINITY,
                        timestamp: 9,
                        step: 0,
                    },
                ],
                params: vec![kv("lr", "0.1")],
                tags: vec![],
            },
            Event::RunTagDeleted {
                at: 9,
                run_id: run_id(),
                key: "note".into(),
            },
            Event::RunInputs {
                at: 10,
                run_id: run_id(),
                datasets: vec![
                    json!({"dataset": {"name": "clicks", "digest": "d1"}, "tags": [{"key": "mlflow.data.context", "value": "training"}]}),
                ],
            },
            Event::ArtifactStored {
                at: 11,
                path: "1/ab/artifacts/notes.txt".into(),
                sha256: "11".repeat(32),
                size: 5,
            },
            Event::ModelCreated {
                at: 12,
                name: name(),
                description: "scores churn".into(),
                tags: vec![kv("owner", "risk")],
            },
            Event::ModelRenamed {
                at: 13,
                name: name(),
                new_name: "churn-model".into(),
            },
            Event::ModelDescribed {
                at: 14,
                name: name(),
                description: String::new(),
            },
            Event::ModelDeleted {
                at: 15,
                name: name(),
            },
            Event::ModelTagged {
                at: 16,
                name: name(),
                version: Some(2),
                key: "validated".into(),
                value: None,
            },
            Event::VersionCreated {
                at: 17,
                name: name(),
                version: 1,
                source: "mlflow-artifacts:/1/ab/artifacts/model".into(),
                run_id: run_id(),
                user_id: "ana".into(),
                description: String::new(),
                tags: vec![],
                model: Some(Box::new(model)),
            },
            Event::VersionCreated {
                at: 17,
                name: name(),
                version: 2,
                source: "s3://bucket/model".into(),
                run_id: String::new(),
                user_id: String::new(),
                description: String::new(),
                tags: vec![],
                model: None,
            },
            Event::VersionDescribed {
                at: 18,
                name: name(),
                version: 1,
                description: "first".into(),
            },
            Event::VersionStaged {
                at: 19,
                name: name(),
                version: 1,
                stage: "Production".into(),
                archive_existing: true,
            },
            Event::VersionDeleted {
                at: 20,
                name: name(),
                version: 2,
            },
            Event::AliasSet {
                at: 21,
                name: name(),
                alias: "champion".into(),
                version: Some(1),
            },
            Event::DeploymentApplied {
                at: 22,
                name: "fraud".into(),
                version: 1,
                spec: "name: fraud\nmodels: [churn@champion]\n".into(),
                models: vec!["churn@champion".into()],
            },
            Event::DeploymentServing {
                at: 23,
                name: "fraud".into(),
                models: vec!["churn@1".into()],
            },
            Event::DeploymentDeleted {
                at: 24,
                name: "fraud".into(),
            },
            Event::Lease {
                at: 25,
                key: "trial/ab/3".into(),
                holder: "worker-1".into(),
                until: 35,
            },
        ]
    }

    #[test]
    fn every_kind_round_trips_through_avro() {
        let events = every_kind();
        let kinds: std::collections::BTreeSet<String> = events
            .iter()
            .map(|e| {
                serde_json::to_value(e).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(kinds.len(), Event::KINDS.len(), "one event of each kind");
        for event in events {
            let bytes = event.encode();
            assert_eq!(&bytes[..2], &AVRO_MAGIC);
            assert_eq!(Event::decode(&bytes).unwrap(), Some(event));
        }
    }

    #[test]
    fn a_nan_metric_is_still_nan() {
        let bytes = Event::RunLogged {
            at: 1,
            run_id: "r".into(),
            metrics: vec![Metric {
                key: "loss".into(),
                value: f64::NAN,
                timestamp: 1,
                step: 1,
            }],
            params: vec![],
            tags: vec![],
        }
        .encode();
        let Some(Event::RunLogged { metrics, .. }) = Event::decode(&bytes).unwrap() else {
            panic!("a run_logged event");
        };
        assert!(metrics[0].value.is_nan());
    }

    #[test]
    fn json_events_and_other_components_records_still_read() {
        let event = every_kind().remove(0);
        let json = serde_json::to_vec(&event).unwrap();
        assert_eq!(Event::decode(&json).unwrap(), Some(event));
        let view = br#"{"kind": "feature_view_version", "name": "spend", "version": 1}"#;
        assert_eq!(Event::decode(view).unwrap(), None);
    }

    #[test]
    fn an_event_of_another_schema_is_refused_by_name() {
        let mut bytes = every_kind().remove(0).encode();
        bytes[2] ^= 0xff;
        let error = Event::decode(&bytes).unwrap_err();
        assert!(
            error.message.contains("another schema"),
            "{}",
            error.message
        );
        let error = Event::decode(&every_kind().remove(0).encode()[..14]).unwrap_err();
        assert!(error.message.contains("Avro event"), "{}", error.message);
    }
}
