//! Which entities of the state changed since the store last saved them,
//! so that it saves only those.

use std::collections::{BTreeSet, HashMap};

use crate::event::Event;

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
pub(crate) struct Changes(pub(crate) Option<BTreeSet<Entity>>);

impl PartialEq for Changes {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Changes {
    /// Notes the entities `event`, just applied, changed.
    pub(crate) fn mark(&mut self, event: &Event, experiment_runs: &HashMap<String, Vec<String>>) {
        let Some(changed) = &mut self.0 else {
            return;
        };
        changed.insert(Entity::Applied);
        let experiment = |id: &str| Entity::Experiment(id.parse().unwrap_or(u64::MAX));
        match event {
            Event::ExperimentLifecycle { experiment_id, .. } => {
                changed.insert(experiment(experiment_id));
                // It deletes or restores the experiment's runs too.
                for run_id in experiment_runs.get(experiment_id).into_iter().flatten() {
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
}
