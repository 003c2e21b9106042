//! The materialised query store: experiments, runs, models and artifacts as
//! the events on `weir.meta` left them.
//!
//! [`State::apply`] (in `apply.rs`) checks an event against the state
//! before changing anything, so an event it refuses leaves the state as it
//! was: the writer refuses bad requests with it before the event reaches
//! the log, and every node that replays the log applies the same events in
//! the same order. The entities are in `entities.rs`, what the store
//! tracks of their changes in `changes.rs`; MLflow's JSON shapes of them
//! are rendered beside the server (`crate::mlflow_json`).

mod apply;
mod changes;
mod entities;

use std::collections::{BTreeMap, HashMap};

use weir_catalog::{At, Reference};

use crate::MetaError;
use changes::Changes;
pub(crate) use changes::Entity;
pub use entities::{
    Artifact, DEFAULT_EXPERIMENT, Deployment, DeploymentVersion, Experiment, Lease, Model,
    RUN_NAME_TAG, Run, STAGES, Version, stage_name,
};

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
}
