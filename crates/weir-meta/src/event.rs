//! The events on `weir.meta` that experiments, runs, models and artifacts
//! are made of.
//!
//! Each event is a JSON object with a `kind`, like the feature views' and
//! datasets' events that share the topic, and carries everything its
//! effect depends on — ids, times, version numbers — so that applying the
//! log in order gives the same state on every node. Events of kinds this
//! crate does not know are skipped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

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
    pub signature: weir_onnx::Signature,
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

    /// Reads an event from a `weir.meta` record: `Ok(None)` for the kinds
    /// of other components (feature views, datasets).
    pub fn decode(payload: &[u8]) -> Result<Option<Self>, serde_json::Error> {
        #[derive(Deserialize)]
        struct Kind<'a> {
            #[serde(borrow)]
            kind: Option<std::borrow::Cow<'a, str>>,
        }
        let kind: Kind<'_> = serde_json::from_slice(payload)?;
        match kind.kind {
            Some(kind) if Self::KINDS.contains(&kind.as_ref()) => {
                serde_json::from_slice(payload).map(Some)
            }
            _ => Ok(None),
        }
    }
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
