//! [`State::apply`]: an event checked against the state, then applied —
//! or refused, the state unchanged. MLflow's rules for names, keys, values
//! and stages are checked here, as its server checks them.

use std::collections::{BTreeMap, HashMap};

use weir_catalog::Reference;

use super::State;
use super::entities::*;
use crate::MetaError;
use crate::event::{Event, Metric, tag_map};

/// The longest param value MLflow accepts.
const MAX_PARAM_VALUE: usize = 6000;
/// The longest tag value MLflow accepts.
const MAX_TAG_VALUE: usize = 8000;
/// The longest metric, param or tag key MLflow accepts.
const MAX_KEY: usize = 250;

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

impl State {
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
        self.changes.mark(event, &self.experiment_runs);
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
