//! The entities of the state: experiments, runs, registered models and
//! their versions, deployments, leases and stored artifacts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::MetaError;
use crate::event::Metric;

/// The id of the experiment that always exists, named `Default`.
pub const DEFAULT_EXPERIMENT: &str = "0";
/// The tag MLflow keeps a run's name in.
pub const RUN_NAME_TAG: &str = "mlflow.runName";
/// The stages of a model version.
pub const STAGES: [&str; 4] = ["None", "Staging", "Production", "Archived"];

/// An experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    /// Its id (an integer, as text).
    pub experiment_id: String,
    /// Its unique name.
    pub name: String,
    /// Where its runs' artifacts go.
    pub artifact_location: String,
    /// Deleted (restorable).
    pub deleted: bool,
    /// Created, ms since the epoch.
    pub creation_time: i64,
    /// Last changed.
    pub last_update_time: i64,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// A run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Its id.
    pub run_id: String,
    /// Its experiment.
    pub experiment_id: String,
    /// Its name.
    pub run_name: String,
    /// Who started it.
    pub user_id: String,
    /// `RUNNING`, `SCHEDULED`, `FINISHED`, `FAILED` or `KILLED`.
    pub status: String,
    /// Started, ms since the epoch.
    pub start_time: i64,
    /// Ended.
    pub end_time: Option<i64>,
    /// Where its artifacts go.
    pub artifact_uri: String,
    /// Deleted (restorable).
    pub deleted: bool,
    /// Params (write-once).
    pub params: BTreeMap<String, String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Each metric's latest value (highest step, then time, then value).
    pub latest: BTreeMap<String, Metric>,
    /// Each metric's values in the order they were logged.
    pub history: BTreeMap<String, Vec<Metric>>,
    /// The datasets it read.
    pub inputs: Vec<Json>,
}

/// A registered model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// Its unique name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Created.
    pub creation_timestamp: i64,
    /// Last changed.
    pub last_updated_timestamp: i64,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Versions by number.
    pub versions: BTreeMap<u64, Version>,
    /// Aliases and the version each points at.
    pub aliases: BTreeMap<String, u64>,
    /// The number the next version gets (numbers are never reused).
    pub next_version: u64,
}

/// A model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// Its number.
    pub version: u64,
    /// Where its files are.
    pub source: String,
    /// The run that made it.
    pub run_id: String,
    /// Who created it.
    pub user_id: String,
    /// Description.
    pub description: String,
    /// Its stage.
    pub stage: String,
    /// Created.
    pub creation_timestamp: i64,
    /// Last changed.
    pub last_updated_timestamp: i64,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// The model file, for versions Weir made.
    pub model: Option<crate::event::ModelInfo>,
}

/// A deployment: its spec versions and what it has served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// Its name.
    pub name: String,
    /// Its spec versions.
    pub versions: BTreeMap<u64, DeploymentVersion>,
    /// The model versions (`name@version`) it serves now.
    pub serving: Vec<String>,
    /// Every model version it has served, with when it started to.
    pub served: BTreeMap<String, i64>,
    /// Deleted.
    pub deleted: bool,
    /// Last changed.
    pub updated: i64,
}

impl Deployment {
    /// Its latest spec version.
    pub fn latest(&self) -> &DeploymentVersion {
        self.versions
            .values()
            .next_back()
            .expect("a deployment has a version")
    }
}

/// A version of a deployment's spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentVersion {
    /// Its number.
    pub version: u64,
    /// The spec (YAML).
    pub spec: String,
    /// The registry references it serves.
    pub models: Vec<String>,
    /// Applied.
    pub created: i64,
}

/// Who holds a lease, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The holder.
    pub holder: String,
    /// Until when, ms since the epoch; it lapses then unless renewed.
    pub until: i64,
}

impl Lease {
    /// Whether it still holds at `now` (ms since the epoch).
    pub fn live(&self, now: i64) -> bool {
        self.until > now
    }
}

/// A stored artifact file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// SHA-256 of its bytes.
    pub sha256: String,
    /// Its size.
    pub size: u64,
}

/// A stage as MLflow spells it, whatever its case.
pub fn stage_name(stage: &str) -> Result<&'static str, MetaError> {
    STAGES
        .into_iter()
        .find(|s| s.eq_ignore_ascii_case(stage))
        .ok_or_else(|| {
            MetaError::invalid(format!(
                "Invalid Model Version stage: {stage}. Value must be one of {}.",
                STAGES.join(", ")
            ))
        })
}
