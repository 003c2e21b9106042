//! The materialised query store: experiments, runs, models and artifacts as
//! the events on `weir.meta` left them.
//!
//! [`State::apply`] checks an event against the state before changing
//! anything, so an event it refuses leaves the state as it was: the writer
//! refuses bad requests with it before the event reaches the log, and every
//! node that replays the log applies the same events in the same order.
//! Reads render MLflow's JSON shapes (`service.proto`,
//! `model_registry.proto`).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use weir_catalog::{At, Reference};

use crate::MetaError;
use crate::event::{Event, KeyValue, Metric, tag_map};

/// The id of the experiment that always exists, named `Default`.
pub const DEFAULT_EXPERIMENT: &str = "0";
/// The tag MLflow keeps a run's name in.
pub const RUN_NAME_TAG: &str = "mlflow.runName";
/// The stages of a model version.
pub const STAGES: [&str; 4] = ["None", "Staging", "Production", "Archived"];

/// The longest param value MLflow accepts.
const MAX_PARAM_VALUE: usize = 6000;
/// The longest tag value MLflow accepts.
const MAX_TAG_VALUE: usize = 8000;
/// The longest metric, param or tag key MLflow accepts.
const MAX_KEY: usize = 250;

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

/// Everything the events so far say.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    experiments: BTreeMap<u64, Experiment>,
    experiment_names: HashMap<String, u64>,
    runs: HashMap<String, Run>,
    /// Run ids of each experiment, in creation order.
    experiment_runs: HashMap<String, Vec<String>>,
    models: BTreeMap<String, Model>,
    artifacts: BTreeMap<String, Artifact>,
    deployments: BTreeMap<String, Deployment>,
    leases: HashMap<String, Lease>,
    /// Other components' versions (feature views, datasets), for lineage.
    records: crate::records::Records,
    /// Events applied.
    applied: u64,
    /// What changed since the store last saved (when tracked).
    changes: Changes,
}

/// An entity of the state, as the store keeps it: each is saved whole,
/// under its own key, when an event changes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Entity {
    Experiment(u64),
    /// The run ids of an experiment, in creation order.
    ExperimentRuns(String),
    Run(String),
    Model(String),
    Deployment(String),
    Lease(String),
    Artifact(String),
    /// Other components' versions, for lineage.
    Records,
    /// How many events were applied.
    Applied,
}

/// The entities changed since they were last taken, when tracking is on.
/// Not part of what a state *is*: two states with the same entities are
/// equal whatever they have tracked.
#[derive(Debug, Clone, Default)]
struct Changes(Option<std::collections::BTreeSet<Entity>>);

impl PartialEq for Changes {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Default for State {
    fn default() -> Self {
        let mut state = Self {
            experiments: BTreeMap::new(),
            experiment_names: HashMap::new(),
            runs: HashMap::new(),
            experiment_runs: HashMap::new(),
            models: BTreeMap::new(),
            artifacts: BTreeMap::new(),
            deployments: BTreeMap::new(),
            leases: HashMap::new(),
            records: crate::records::Records::default(),
            applied: 0,
            changes: Changes::default(),
        };
        // MLflow's `Default` experiment exists before anything is logged.
        state.experiments.insert(
            0,
            Experiment {
                experiment_id: DEFAULT_EXPERIMENT.into(),
                name: "Default".into(),
                artifact_location: format!("mlflow-artifacts:/{DEFAULT_EXPERIMENT}"),
                deleted: false,
                creation_time: 0,
                last_update_time: 0,
                tags: BTreeMap::new(),
            },
        );
        state.experiment_names.insert("Default".into(), 0);
        state
    }
}

fn check_key(what: &str, key: &str) -> Result<(), MetaError> {
    if key.is_empty() {
        return Err(MetaError::invalid(format!("{what} key must not be empty")));
    }
    if key.len() > MAX_KEY {
        return Err(MetaError::invalid(format!(
            "{what} key '{key}' is {} characters long; the limit is {MAX_KEY}",
            key.len()
        )));
    }
    // MLflow's rule: names are path-like, and never climb out of one.
    let allowed = |c: char| c.is_alphanumeric() || "_-. /:".contains(c);
    if !key.chars().all(allowed) || key.split('/').any(|part| part == "..") || key.starts_with('/')
    {
        return Err(MetaError::invalid(format!(
            "Invalid {what} name: '{key}'. Names may only contain alphanumerics, underscores (_), dashes (-), periods (.), spaces ( ), colon(:) and slashes (/)."
        )));
    }
    Ok(())
}

/// `value`, cut to `limit` characters: MLflow truncates over-long param
/// and tag values rather than refusing them.
fn truncated(value: &str, limit: usize) -> String {
    match value.char_indices().nth(limit) {
        Some((end, _)) => value[..end].to_string(),
        None => value.to_string(),
    }
}

/// Whether `a` is a later value of a metric than `b`: higher step, then
/// later time, then larger value (MLflow's rule for a run's latest metric).
fn later(a: &Metric, b: &Metric) -> bool {
    (a.step, a.timestamp)
        .cmp(&(b.step, b.timestamp))
        .then(a.value.total_cmp(&b.value))
        .is_gt()
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

impl State {
    /// How many events have been applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The experiment with this id.
    pub fn experiment(&self, id: &str) -> Result<&Experiment, MetaError> {
        let number: u64 = id.parse().map_err(|_| {
            MetaError::invalid(format!(
                "Invalid experiment ID '{id}'. Experiment ID must be a valid integer."
            ))
        })?;
        self.experiments
            .get(&number)
            .ok_or_else(|| MetaError::missing(format!("No Experiment with id={id} exists")))
    }

    /// The experiment with this name.
    pub fn experiment_by_name(&self, name: &str) -> Result<&Experiment, MetaError> {
        self.experiment_names
            .get(name)
            .and_then(|n| self.experiments.get(n))
            .ok_or_else(|| {
                MetaError::missing(format!("Could not find experiment with name '{name}'"))
            })
    }

    /// Every experiment, by id.
    pub fn experiments(&self) -> impl Iterator<Item = &Experiment> {
        self.experiments.values()
    }

    /// The id the next experiment gets.
    pub fn next_experiment_id(&self) -> String {
        let last = self.experiments.keys().next_back().copied().unwrap_or(0);
        (last + 1).to_string()
    }

    /// The run with this id.
    pub fn run(&self, run_id: &str) -> Result<&Run, MetaError> {
        self.runs
            .get(run_id)
            .ok_or_else(|| MetaError::missing(format!("Run with id={run_id} not found")))
    }

    /// The runs of an experiment, in creation order.
    pub fn runs_of(&self, experiment_id: &str) -> impl Iterator<Item = &Run> {
        self.experiment_runs
            .get(experiment_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.runs.get(id))
    }

    /// The registered model with this name.
    pub fn model(&self, name: &str) -> Result<&Model, MetaError> {
        self.models.get(name).ok_or_else(|| {
            MetaError::missing(format!("Registered Model with name={name} not found"))
        })
    }

    /// Every registered model, by name.
    pub fn models(&self) -> impl Iterator<Item = &Model> {
        self.models.values()
    }

    /// A version of a registered model; `version` as text, as MLflow sends it.
    pub fn version(&self, name: &str, version: &str) -> Result<(&Model, &Version), MetaError> {
        let model = self.model(name)?;
        version
            .parse::<u64>()
            .ok()
            .and_then(|v| model.versions.get(&v))
            .map(|v| (model, v))
            .ok_or_else(|| {
                MetaError::missing(format!(
                    "Model Version (name={name}, version={version}) not found"
                ))
            })
    }

    /// A version by reference: `name@3`, `name@champion` (an alias), or
    /// `name` (its latest version).
    pub fn version_by_reference(&self, reference: &str) -> Result<(&Model, &Version), MetaError> {
        let parsed: Reference = reference
            .parse()
            .map_err(|e: weir_catalog::ReferenceError| MetaError::invalid(e.to_string()))?;
        let name = &parsed.name;
        let model = self.model(name)?;
        let number = match &parsed.at {
            At::Latest => model.versions.keys().next_back().copied(),
            At::Version(version) => Some(*version),
            At::Alias(alias) => model.aliases.get(alias).copied(),
        };
        number
            .and_then(|v| model.versions.get(&v))
            .map(|v| (model, v))
            .ok_or_else(|| {
                MetaError::missing(format!(
                    "{reference}: no such version or alias of {name} (versions: {:?}, aliases: {:?})",
                    model.versions.keys().collect::<Vec<_>>(),
                    model.aliases.keys().collect::<Vec<_>>()
                ))
            })
    }

    /// A deployment by name (deleted ones too).
    pub fn deployment(&self, name: &str) -> Result<&Deployment, MetaError> {
        self.deployments
            .get(name)
            .ok_or_else(|| MetaError::missing(format!("no deployment `{name}`")))
    }

    /// Every deployment (deleted ones too).
    pub fn deployments(&self) -> impl Iterator<Item = &Deployment> {
        self.deployments.values()
    }

    /// Applies one `weir.meta` record as read: one of this crate's events,
    /// or another component's record (kept for lineage). An event that
    /// does not apply (it was refused when written too, so one here means
    /// a second writer) or cannot be read is skipped with a warning.
    pub fn apply_record(&mut self, payload: &[u8]) {
        match crate::event::Event::decode(payload) {
            Ok(Some(event)) => {
                if let Err(error) = self.apply(&event) {
                    tracing::warn!(%error, "skipping a metadata event that does not apply");
                }
            }
            Ok(None) => self.record_foreign(payload),
            Err(error) => tracing::warn!(%error, "skipping an unreadable metadata event"),
        }
    }

    /// The last lease taken on `key`, live or lapsed.
    pub fn lease(&self, key: &str) -> Option<&Lease> {
        self.leases.get(key)
    }

    /// What other components recorded on the log, for lineage.
    pub fn records(&self) -> &crate::records::Records {
        &self.records
    }

    /// Records another component's event (a feature view or dataset
    /// version); kinds lineage does not use are ignored.
    pub fn record_foreign(&mut self, payload: &[u8]) {
        self.records.record(payload);
        if let Some(changed) = &mut self.changes.0 {
            changed.insert(Entity::Records);
        }
    }

    /// The stored file at `path`.
    pub fn artifact(&self, path: &str) -> Option<&Artifact> {
        self.artifacts.get(path)
    }

    /// The stored files under the directory `prefix` (no trailing slash;
    /// empty for the root), with their paths.
    pub fn artifacts_under<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Artifact)> + 'a {
        let start = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        self.artifacts
            .range(start.clone()..)
            .take_while(move |(path, _)| path.starts_with(&start))
    }

    /// Applies `event`, or refuses it and changes nothing.
    pub fn apply(&mut self, event: &Event) -> Result<(), MetaError> {
        match event {
            Event::ExperimentCreated {
                at,
                experiment_id,
                name,
                artifact_location,
                tags,
            } => {
                if name.trim().is_empty() {
                    return Err(MetaError::invalid("Invalid experiment name: ''"));
                }
                if self.experiment_names.contains_key(name) {
                    return Err(MetaError::exists(format!(
                        "Experiment(name={name}) already exists."
                    )));
                }
                let id: u64 = experiment_id.parse().map_err(|_| {
                    MetaError::invalid(format!("experiment id `{experiment_id}` is not a number"))
                })?;
                if self.experiments.contains_key(&id) {
                    return Err(MetaError::exists(format!(
                        "Experiment with id={experiment_id} already exists."
                    )));
                }
                for tag in tags {
                    check_key("tag", &tag.key)?;
                }
                self.experiment_names.insert(name.clone(), id);
                self.experiments.insert(
                    id,
                    Experiment {
                        experiment_id: experiment_id.clone(),
                        name: name.clone(),
                        artifact_location: artifact_location.clone(),
                        deleted: false,
                        creation_time: *at,
                        last_update_time: *at,
                        tags: tag_map(tags),
                    },
                );
            }
            Event::ExperimentRenamed {
                at,
                experiment_id,
                name,
            } => {
                let old = self.experiment(experiment_id)?.name.clone();
                if name.trim().is_empty() {
                    return Err(MetaError::invalid("Invalid experiment name: ''"));
                }
                if old != *name && self.experiment_names.contains_key(name) {
                    return Err(MetaError::exists(format!(
                        "Experiment(name={name}) already exists."
                    )));
                }
                let id = self
                    .experiment_names
                    .remove(&old)
                    .expect("names follow experiments");
                self.experiment_names.insert(name.clone(), id);
                let experiment = self.experiments.get_mut(&id).expect("checked");
                experiment.name = name.clone();
                experiment.last_update_time = *at;
            }
            Event::ExperimentLifecycle {
                at,
                experiment_id,
                deleted,
            } => {
                self.experiment(experiment_id)?;
                let id: u64 = experiment_id.parse().expect("checked");
                let experiment = self.experiments.get_mut(&id).expect("checked");
                experiment.deleted = *deleted;
                experiment.last_update_time = *at;
                // Deleting an experiment deletes its runs, as MLflow does.
                for run_id in self
                    .experiment_runs
                    .get(experiment_id)
                    .into_iter()
                    .flatten()
                {
                    if let Some(run) = self.runs.get_mut(run_id) {
                        run.deleted = *deleted;
                    }
                }
            }
            Event::ExperimentTagged {
                at,
                experiment_id,
                tag,
            } => {
                self.experiment(experiment_id)?;
                check_key("tag", &tag.key)?;
                let id: u64 = experiment_id.parse().expect("checked");
                let experiment = self.experiments.get_mut(&id).expect("checked");
                experiment.tags.insert(tag.key.clone(), tag.value.clone());
                experiment.last_update_time = *at;
            }
            Event::RunCreated {
                at: _,
                run_id,
                experiment_id,
                run_name,
                user_id,
                start_time,
                artifact_uri,
                tags,
            } => {
                let experiment = self.experiment(experiment_id)?;
                if experiment.deleted {
                    return Err(MetaError::invalid(format!(
                        "The experiment {experiment_id} must be in the 'active' state. Current state is deleted."
                    )));
                }
                if self.runs.contains_key(run_id) {
                    return Err(MetaError::exists(format!(
                        "Run with id={run_id} already exists"
                    )));
                }
                for tag in tags {
                    check_key("tag", &tag.key)?;
                }
                self.experiment_runs
                    .entry(experiment_id.clone())
                    .or_default()
                    .push(run_id.clone());
                self.runs.insert(
                    run_id.clone(),
                    Run {
                        run_id: run_id.clone(),
                        experiment_id: experiment_id.clone(),
                        run_name: run_name.clone(),
                        user_id: user_id.clone(),
                        status: "RUNNING".into(),
                        start_time: *start_time,
                        end_time: None,
                        artifact_uri: artifact_uri.clone(),
                        deleted: false,
                        params: BTreeMap::new(),
                        tags: tags
                            .iter()
                            .map(|t| (t.key.clone(), truncated(&t.value, MAX_TAG_VALUE)))
                            .collect(),
                        latest: BTreeMap::new(),
                        history: BTreeMap::new(),
                        inputs: Vec::new(),
                    },
                );
            }
            Event::RunUpdated {
                at: _,
                run_id,
                status,
                end_time,
                run_name,
            } => {
                self.active_run(run_id)?;
                if let Some(status) = status {
                    const STATUSES: [&str; 5] =
                        ["RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"];
                    if !STATUSES.contains(&status.as_str()) {
                        return Err(MetaError::invalid(format!(
                            "Invalid run status '{status}': one of {}",
                            STATUSES.join(", ")
                        )));
                    }
                }
                let run = self.runs.get_mut(run_id).expect("checked");
                if let Some(status) = status {
                    run.status = status.clone();
                }
                if end_time.is_some() {
                    run.end_time = *end_time;
                }
                if let Some(name) = run_name {
                    run.run_name = name.clone();
                    run.tags.insert(RUN_NAME_TAG.into(), name.clone());
                }
            }
            Event::RunLifecycle {
                at: _,
                run_id,
                deleted,
            } => {
                self.run(run_id)?;
                self.runs.get_mut(run_id).expect("checked").deleted = *deleted;
            }
            Event::RunLogged {
                at: _,
                run_id,
                metrics,
                params,
                tags,
            } => {
                let run = self.active_run(run_id)?;
                for metric in metrics {
                    check_key("metric", &metric.key)?;
                }
                let mut batch: HashMap<&str, String> = HashMap::new();
                for param in params {
                    check_key("param", &param.key)?;
                    let value = truncated(&param.value, MAX_PARAM_VALUE);
                    if let Some(other) = batch.get(param.key.as_str())
                        && *other != value
                    {
                        return Err(MetaError::invalid(format!(
                            "Duplicate parameter keys have been submitted: ['{}']. Please ensure the request contains only one param value per param key.",
                            param.key
                        )));
                    }
                    if let Some(old) = run.params.get(&param.key)
                        && *old != value
                    {
                        return Err(MetaError::invalid(format!(
                            "Changing param values is not allowed. Param with key='{}' was already logged with value='{old}' for run ID='{run_id}'. Attempted logging new value '{value}'.",
                            param.key
                        )));
                    }
                    batch.insert(&param.key, value);
                }
                for tag in tags {
                    check_key("tag", &tag.key)?;
                }
                let run = self.runs.get_mut(run_id).expect("checked");
                for metric in metrics {
                    let latest = run
                        .latest
                        .entry(metric.key.clone())
                        .or_insert_with(|| metric.clone());
                    if later(metric, latest) {
                        *latest = metric.clone();
                    }
                    run.history
                        .entry(metric.key.clone())
                        .or_default()
                        .push(metric.clone());
                }
                for (key, value) in batch {
                    run.params.insert(key.to_string(), value);
                }
                for tag in tags {
                    let value = truncated(&tag.value, MAX_TAG_VALUE);
                    if tag.key == RUN_NAME_TAG {
                        run.run_name = value.clone();
                    }
                    run.tags.insert(tag.key.clone(), value);
                }
            }
            Event::RunTagDeleted { at: _, run_id, key } => {
                let run = self.active_run(run_id)?;
                if !run.tags.contains_key(key) {
                    return Err(MetaError::missing(format!(
                        "No tag with name: {key} in run with id {run_id}"
                    )));
                }
                self.runs.get_mut(run_id).expect("checked").tags.remove(key);
            }
            Event::RunInputs {
                at: _,
                run_id,
                datasets,
            } => {
                self.active_run(run_id)?;
                let run = self.runs.get_mut(run_id).expect("checked");
                for input in datasets {
                    if !run.inputs.contains(input) {
                        run.inputs.push(input.clone());
                    }
                }
            }
            Event::ArtifactStored {
                at: _,
                path,
                sha256,
                size,
            } => {
                crate::artifacts::check_path(path)?;
                self.artifacts.insert(
                    path.clone(),
                    Artifact {
                        sha256: sha256.clone(),
                        size: *size,
                    },
                );
            }
            Event::ModelCreated {
                at,
                name,
                description,
                tags,
            } => {
                if name.trim().is_empty() {
                    return Err(MetaError::invalid("Registered model name cannot be empty."));
                }
                if self.models.contains_key(name) {
                    return Err(MetaError::exists(format!(
                        "Registered Model (name={name}) already exists."
                    )));
                }
                self.models.insert(
                    name.clone(),
                    Model {
                        name: name.clone(),
                        description: description.clone(),
                        creation_timestamp: *at,
                        last_updated_timestamp: *at,
                        tags: tag_map(tags),
                        versions: BTreeMap::new(),
                        aliases: BTreeMap::new(),
                        next_version: 1,
                    },
                );
            }
            Event::ModelRenamed { at, name, new_name } => {
                self.model(name)?;
                if new_name.trim().is_empty() {
                    return Err(MetaError::invalid("Registered model name cannot be empty."));
                }
                if self.models.contains_key(new_name) {
                    return Err(MetaError::exists(format!(
                        "Registered Model (name={new_name}) already exists."
                    )));
                }
                let mut model = self.models.remove(name).expect("checked");
                model.name = new_name.clone();
                model.last_updated_timestamp = *at;
                self.models.insert(new_name.clone(), model);
            }
            Event::ModelDescribed {
                at,
                name,
                description,
            } => {
                self.model(name)?;
                let model = self.models.get_mut(name).expect("checked");
                model.description = description.clone();
                model.last_updated_timestamp = *at;
            }
            Event::ModelDeleted { at: _, name } => {
                self.model(name)?;
                self.models.remove(name);
            }
            Event::ModelTagged {
                at,
                name,
                version,
                key,
                value,
            } => {
                check_key("tag", key)?;
                match version {
                    Some(v) => {
                        self.version(name, &v.to_string())?;
                    }
                    None => {
                        self.model(name)?;
                    }
                }
                let model = self.models.get_mut(name).expect("checked");
                let tags = match version {
                    Some(v) => {
                        let version = model.versions.get_mut(v).expect("checked");
                        version.last_updated_timestamp = *at;
                        &mut version.tags
                    }
                    None => &mut model.tags,
                };
                match value {
                    Some(value) => tags.insert(key.clone(), value.clone()),
                    None => tags.remove(key),
                };
            }
            Event::VersionCreated {
                at,
                name,
                version,
                source,
                run_id,
                user_id,
                description,
                tags,
                model: info,
            } => {
                let model = self.model(name)?;
                if *version != model.next_version {
                    return Err(MetaError::invalid(format!(
                        "version {version} of {name} is not the next one ({})",
                        model.next_version
                    )));
                }
                let model = self.models.get_mut(name).expect("checked");
                model.next_version += 1;
                model.last_updated_timestamp = *at;
                model.versions.insert(
                    *version,
                    Version {
                        version: *version,
                        source: source.clone(),
                        run_id: run_id.clone(),
                        user_id: user_id.clone(),
                        description: description.clone(),
                        stage: "None".into(),
                        creation_timestamp: *at,
                        last_updated_timestamp: *at,
                        tags: tag_map(tags),
                        model: info.as_deref().cloned(),
                    },
                );
            }
            Event::VersionDescribed {
                at,
                name,
                version,
                description,
            } => {
                self.version(name, &version.to_string())?;
                let v = self.version_mut(name, *version);
                v.description = description.clone();
                v.last_updated_timestamp = *at;
            }
            Event::VersionStaged {
                at,
                name,
                version,
                stage,
                archive_existing,
            } => {
                self.version(name, &version.to_string())?;
                let stage = stage_name(stage)?;
                let model = self.models.get_mut(name).expect("checked");
                if *archive_existing && (stage == "Staging" || stage == "Production") {
                    for other in model.versions.values_mut() {
                        if other.version != *version && other.stage == stage {
                            other.stage = "Archived".into();
                            other.last_updated_timestamp = *at;
                        }
                    }
                }
                let v = model.versions.get_mut(version).expect("checked");
                v.stage = stage.into();
                v.last_updated_timestamp = *at;
            }
            Event::VersionDeleted { at, name, version } => {
                self.version(name, &version.to_string())?;
                let model = self.models.get_mut(name).expect("checked");
                model.versions.remove(version);
                model.aliases.retain(|_, v| v != version);
                model.last_updated_timestamp = *at;
            }
            Event::AliasSet {
                at: _,
                name,
                alias,
                version,
            } => {
                check_alias(alias)?;
                match version {
                    Some(v) => {
                        self.version(name, &v.to_string())?;
                    }
                    None => {
                        self.model(name)?;
                    }
                }
                let model = self.models.get_mut(name).expect("checked");
                match version {
                    Some(v) => model.aliases.insert(alias.clone(), *v),
                    None => model.aliases.remove(alias),
                };
            }
            Event::DeploymentApplied {
                at,
                name,
                version,
                spec,
                models,
            } => {
                let next = self
                    .deployments
                    .get(name)
                    .map_or(1, |d| d.latest().version + 1);
                if *version != next {
                    return Err(MetaError::invalid(format!(
                        "deployment `{name}`: version {version} applied, {next} expected"
                    )));
                }
                let deployment =
                    self.deployments
                        .entry(name.clone())
                        .or_insert_with(|| Deployment {
                            name: name.clone(),
                            versions: BTreeMap::new(),
                            serving: Vec::new(),
                            served: BTreeMap::new(),
                            deleted: false,
                            updated: *at,
                        });
                deployment.versions.insert(
                    *version,
                    DeploymentVersion {
                        version: *version,
                        spec: spec.clone(),
                        models: models.clone(),
                        created: *at,
                    },
                );
                deployment.deleted = false;
                deployment.updated = *at;
            }
            Event::DeploymentServing { at, name, models } => {
                for model in models {
                    let served = model
                        .parse::<Reference>()
                        .ok()
                        .filter(|r| r.number().is_some())
                        .ok_or_else(|| {
                            MetaError::invalid(format!("`{model}` is not name@version"))
                        })?;
                    self.version_by_reference(&served.to_string())?;
                }
                let deployment = self
                    .deployments
                    .get_mut(name)
                    .filter(|d| !d.deleted)
                    .ok_or_else(|| MetaError::missing(format!("no deployment `{name}`")))?;
                for model in models {
                    deployment.served.entry(model.clone()).or_insert(*at);
                }
                deployment.serving = models.clone();
                deployment.updated = *at;
            }
            Event::DeploymentDeleted { at, name } => {
                let deployment = self
                    .deployments
                    .get_mut(name)
                    .filter(|d| !d.deleted)
                    .ok_or_else(|| MetaError::missing(format!("no deployment `{name}`")))?;
                deployment.deleted = true;
                deployment.serving.clear();
                deployment.updated = *at;
            }
            Event::Lease {
                at,
                key,
                holder,
                until,
            } => {
                // A lost race is not an error: every node applying the log
                // sees the same winner.
                let taken = self
                    .leases
                    .get(key)
                    .is_some_and(|lease| lease.holder != *holder && lease.live(*at));
                if !taken {
                    self.leases.insert(
                        key.clone(),
                        Lease {
                            holder: holder.clone(),
                            until: *until,
                        },
                    );
                }
            }
        }
        self.applied += 1;
        self.mark(event);
        Ok(())
    }

    /// Starts tracking which entities change (for the store).
    pub(crate) fn track_changes(&mut self) {
        self.changes.0.get_or_insert_with(Default::default);
    }

    /// The entities changed since the last call (or since tracking began).
    pub(crate) fn take_changes(&mut self) -> std::collections::BTreeSet<Entity> {
        self.changes
            .0
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Puts back changes a failed save took.
    pub(crate) fn requeue_changes(&mut self, changes: std::collections::BTreeSet<Entity>) {
        if let Some(changed) = &mut self.changes.0 {
            changed.extend(changes);
        }
    }

    /// Notes the entities `event`, just applied, changed.
    fn mark(&mut self, event: &Event) {
        let Some(changed) = &mut self.changes.0 else {
            return;
        };
        changed.insert(Entity::Applied);
        let experiment = |id: &str| Entity::Experiment(id.parse().unwrap_or(u64::MAX));
        match event {
            Event::ExperimentLifecycle { experiment_id, .. } => {
                changed.insert(experiment(experiment_id));
                // It deletes or restores the experiment's runs too.
                for run_id in self
                    .experiment_runs
                    .get(experiment_id)
                    .into_iter()
                    .flatten()
                {
                    changed.insert(Entity::Run(run_id.clone()));
                }
            }
            Event::ExperimentCreated { experiment_id, .. }
            | Event::ExperimentRenamed { experiment_id, .. }
            | Event::ExperimentTagged { experiment_id, .. } => {
                changed.insert(experiment(experiment_id));
            }
            Event::RunCreated {
                run_id,
                experiment_id,
                ..
            } => {
                changed.insert(Entity::Run(run_id.clone()));
                changed.insert(Entity::ExperimentRuns(experiment_id.clone()));
            }
            Event::RunUpdated { run_id, .. }
            | Event::RunLifecycle { run_id, .. }
            | Event::RunLogged { run_id, .. }
            | Event::RunTagDeleted { run_id, .. }
            | Event::RunInputs { run_id, .. } => {
                changed.insert(Entity::Run(run_id.clone()));
            }
            Event::ArtifactStored { path, .. } => {
                changed.insert(Entity::Artifact(path.clone()));
            }
            Event::ModelRenamed { name, new_name, .. } => {
                changed.insert(Entity::Model(name.clone()));
                changed.insert(Entity::Model(new_name.clone()));
            }
            Event::ModelCreated { name, .. }
            | Event::ModelDescribed { name, .. }
            | Event::ModelDeleted { name, .. }
            | Event::ModelTagged { name, .. }
            | Event::VersionCreated { name, .. }
            | Event::VersionDescribed { name, .. }
            | Event::VersionStaged { name, .. }
            | Event::VersionDeleted { name, .. }
            | Event::AliasSet { name, .. } => {
                changed.insert(Entity::Model(name.clone()));
            }
            Event::DeploymentApplied { name, .. }
            | Event::DeploymentServing { name, .. }
            | Event::DeploymentDeleted { name, .. } => {
                changed.insert(Entity::Deployment(name.clone()));
            }
            Event::Lease { key, .. } => {
                changed.insert(Entity::Lease(key.clone()));
            }
        }
    }

    /// `entity` as stored: its JSON, or `None` when the state no longer
    /// has it (a deleted or renamed model).
    pub(crate) fn entity_json(&self, entity: &Entity) -> Option<Vec<u8>> {
        let bytes = match entity {
            Entity::Experiment(id) => serde_json::to_vec(self.experiments.get(id)?),
            Entity::ExperimentRuns(id) => serde_json::to_vec(self.experiment_runs.get(id)?),
            Entity::Run(id) => serde_json::to_vec(self.runs.get(id)?),
            Entity::Model(name) => serde_json::to_vec(self.models.get(name)?),
            Entity::Deployment(name) => serde_json::to_vec(self.deployments.get(name)?),
            Entity::Lease(key) => serde_json::to_vec(self.leases.get(key)?),
            Entity::Artifact(path) => serde_json::to_vec(self.artifacts.get(path)?),
            Entity::Records => serde_json::to_vec(&self.records),
            Entity::Applied => serde_json::to_vec(&self.applied),
        };
        Some(bytes.expect("the state's entities serialise"))
    }

    /// Puts back an entity the store kept.
    pub(crate) fn restore(&mut self, entity: Entity, json: &[u8]) -> serde_json::Result<()> {
        match entity {
            Entity::Experiment(id) => {
                let experiment: Experiment = serde_json::from_slice(json)?;
                self.experiment_names.retain(|_, other| *other != id);
                self.experiment_names.insert(experiment.name.clone(), id);
                self.experiments.insert(id, experiment);
            }
            Entity::ExperimentRuns(id) => {
                self.experiment_runs
                    .insert(id, serde_json::from_slice(json)?);
            }
            Entity::Run(id) => {
                self.runs.insert(id, serde_json::from_slice(json)?);
            }
            Entity::Model(name) => {
                self.models.insert(name, serde_json::from_slice(json)?);
            }
            Entity::Deployment(name) => {
                self.deployments.insert(name, serde_json::from_slice(json)?);
            }
            Entity::Lease(key) => {
                self.leases.insert(key, serde_json::from_slice(json)?);
            }
            Entity::Artifact(path) => {
                self.artifacts.insert(path, serde_json::from_slice(json)?);
            }
            Entity::Records => self.records = serde_json::from_slice(json)?,
            Entity::Applied => self.applied = serde_json::from_slice(json)?,
        }
        Ok(())
    }

    fn active_run(&self, run_id: &str) -> Result<&Run, MetaError> {
        let run = self.run(run_id)?;
        if run.deleted {
            return Err(MetaError::new(
                crate::ErrorCode::InvalidParameterValue,
                format!(
                    "The run {run_id} must be in the 'active' state. Current state is deleted."
                ),
            ));
        }
        Ok(run)
    }

    fn version_mut(&mut self, name: &str, version: u64) -> &mut Version {
        self.models
            .get_mut(name)
            .and_then(|m| m.versions.get_mut(&version))
            .expect("checked")
    }
}

/// MLflow's rules for alias names: word characters and dashes, at most 255,
/// not `latest`, not a version (`v3`).
fn check_alias(alias: &str) -> Result<(), MetaError> {
    let version_like = alias.len() > 1
        && alias.starts_with(['v', 'V'])
        && alias[1..].chars().all(|c| c.is_ascii_digit());
    if version_like {
        return Err(MetaError::invalid(format!(
            "Version alias name '{alias}' is reserved."
        )));
    }
    if alias.eq_ignore_ascii_case("latest") {
        return Err(MetaError::invalid(
            "'latest' alias name (case insensitive) is reserved.",
        ));
    }
    if alias.is_empty()
        || alias.len() > 255
        || !alias
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
    {
        return Err(MetaError::invalid(format!(
            "Invalid alias name: '{alias}'. Names may only contain alphanumerics, underscores (_), and dashes (-)."
        )));
    }
    Ok(())
}

fn tags_json(tags: &BTreeMap<String, String>) -> Json {
    Json::Array(
        tags.iter()
            .map(|(key, value)| json!({"key": key, "value": value}))
            .collect(),
    )
}

fn key_values(values: &BTreeMap<String, String>) -> Vec<KeyValue> {
    values
        .iter()
        .map(|(key, value)| KeyValue {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

/// An experiment as MLflow's JSON.
pub fn experiment_json(experiment: &Experiment) -> Json {
    json!({
        "experiment_id": experiment.experiment_id,
        "name": experiment.name,
        "artifact_location": experiment.artifact_location,
        "lifecycle_stage": if experiment.deleted { "deleted" } else { "active" },
        "creation_time": experiment.creation_time,
        "last_update_time": experiment.last_update_time,
        "tags": tags_json(&experiment.tags),
    })
}

/// A run's `info` as MLflow's JSON.
pub fn run_info_json(run: &Run) -> Json {
    let mut info = json!({
        "run_id": run.run_id,
        "run_uuid": run.run_id,
        "run_name": run.run_name,
        "experiment_id": run.experiment_id,
        "user_id": run.user_id,
        "status": run.status,
        "start_time": run.start_time,
        "artifact_uri": run.artifact_uri,
        "lifecycle_stage": if run.deleted { "deleted" } else { "active" },
    });
    if let Some(end) = run.end_time {
        info["end_time"] = json!(end);
    }
    info
}

/// A run as MLflow's JSON: `info`, `data` (latest metrics, params, tags),
/// `inputs`.
pub fn run_json(run: &Run) -> Json {
    json!({
        "info": run_info_json(run),
        "data": {
            "metrics": run.latest.values().collect::<Vec<_>>(),
            "params": key_values(&run.params),
            "tags": key_values(&run.tags),
        },
        "inputs": {"dataset_inputs": run.inputs},
    })
}

/// A model version as MLflow's JSON.
pub fn version_json(model: &Model, version: &Version) -> Json {
    let aliases: Vec<&String> = model
        .aliases
        .iter()
        .filter(|(_, v)| **v == version.version)
        .map(|(alias, _)| alias)
        .collect();
    json!({
        "name": model.name,
        "version": version.version.to_string(),
        "creation_timestamp": version.creation_timestamp,
        "last_updated_timestamp": version.last_updated_timestamp,
        "user_id": version.user_id,
        "current_stage": version.stage,
        "description": version.description,
        "source": version.source,
        "run_id": version.run_id,
        "status": "READY",
        "tags": tags_json(&version.tags),
        "aliases": aliases,
    })
}

/// A registered model as MLflow's JSON, with the latest version of each
/// stage.
pub fn model_json(model: &Model) -> Json {
    let mut latest: BTreeMap<&str, &Version> = BTreeMap::new();
    for version in model.versions.values() {
        latest.insert(&version.stage, version);
    }
    json!({
        "name": model.name,
        "creation_timestamp": model.creation_timestamp,
        "last_updated_timestamp": model.last_updated_timestamp,
        "description": model.description,
        "latest_versions": latest.values().map(|v| version_json(model, v)).collect::<Vec<_>>(),
        "tags": tags_json(&model.tags),
        "aliases": model.aliases.iter().map(|(alias, version)| json!({"alias": alias, "version": version.to_string()})).collect::<Vec<_>>(),
    })
}
