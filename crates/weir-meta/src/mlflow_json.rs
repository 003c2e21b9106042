//! MLflow's JSON shapes (`service.proto`, `model_registry.proto`) of the
//! state's entities, as the MLflow server answers with them.

use std::collections::BTreeMap;

use serde_json::{Value as Json, json};

use crate::event::KeyValue;
use crate::state::{Experiment, Model, Run, Version};

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
