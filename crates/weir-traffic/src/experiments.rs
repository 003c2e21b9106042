//! Applying, listing and stopping experiments: a spec checked against the
//! registry becomes the next version of its experiment's [`Routing`] on
//! `weir.control.<deployment>`, which holds each experiment's history.

use weir_bus::Bus;
use weir_meta::Tracker;
use weir_meta::event::KeyValue;
use weir_meta::state::State;
use weir_meta::tracker::RunReport;
use weir_serve::control;
use weir_serve::routing::{Candidate, Mirror, Routing, Sticky};

use crate::TrafficError;
use crate::spec::ExperimentSpec;

/// An experiment as its deployment's control topic tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    /// Its latest routing.
    pub routing: Routing,
    /// Its latest routing as applied (not written by an allocator, not a
    /// stop): the one its jobs follow and are named after.
    pub applied: Routing,
    /// The deployment.
    pub deployment: String,
}

impl Experiment {
    /// Whether it routes traffic now.
    pub fn running(&self) -> bool {
        !self.routing.stopped
    }
}

/// What applying a spec did.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The routing now published.
    pub routing: Routing,
    /// Whether it is a new version (`false`: the same as the latest).
    pub new: bool,
}

/// `reference` as `name@version` for the spec's `field`.
fn pinned(
    state: &State,
    reference: &str,
    field: &str,
    origin: &str,
) -> Result<String, TrafficError> {
    let spec_error = |message: String| TrafficError::spec(origin, format!("{field}: {message}"));
    let (model, version) = state
        .version_by_reference(reference)
        .map_err(|e| spec_error(e.to_string()))?;
    if version.model.is_none() {
        return Err(spec_error(format!(
            "{}@{} has no ONNX model to serve",
            model.name, version.version
        )));
    }
    Ok(format!("{}@{}", model.name, version.version))
}

/// The routing `spec` means now: its references pinned to the versions
/// they point at (an alias that moves later does not change a running
/// experiment), its deployment checked.
pub fn resolve(
    spec: &ExperimentSpec,
    origin: &str,
    state: &State,
) -> Result<Routing, TrafficError> {
    let serving = match state.deployment(&spec.deployment) {
        Ok(deployment) if !deployment.deleted => deployment.latest().models.clone(),
        _ => {
            return Err(TrafficError::spec(
                origin,
                format!(
                    "deployment: no deployment `{}` (apply it with `weir deploy` first)",
                    spec.deployment
                ),
            ));
        }
    };
    let mut candidates: Vec<Candidate> = Vec::with_capacity(spec.candidates.len());
    for (i, candidate) in spec.candidates.iter().enumerate() {
        let field = format!("candidates[{i}].model");
        let model = pinned(state, &candidate.model, &field, origin)?;
        if let Some(same) = candidates.iter().position(|c| c.model == model) {
            return Err(TrafficError::spec(
                origin,
                format!(
                    "{field}: `{}` is {model}, as candidates[{same}] is",
                    candidate.model
                ),
            ));
        }
        candidates.push(Candidate {
            model,
            weight: candidate.weight,
        });
    }
    let default_index = spec
        .candidates
        .iter()
        .position(|c| c.model == spec.default_model())
        .expect("the spec's check found the default among the candidates");
    // The default stands for the deployment's own model, which serves
    // again when the experiment stops.
    let own = match serving.as_slice() {
        [only] => pinned(state, only, "deployment", origin)?,
        _ => {
            return Err(TrafficError::spec(
                origin,
                format!(
                    "deployment: `{}` serves an ensemble; an experiment routes between single models",
                    spec.deployment
                ),
            ));
        }
    };
    if candidates[default_index].model != own {
        return Err(TrafficError::spec(
            origin,
            format!(
                "default: `{}` is {}, but the deployment serves {} ({}); the default is the model it serves, which takes the traffic back when the experiment stops",
                spec.default_model(),
                candidates[default_index].model,
                own,
                serving[0]
            ),
        ));
    }
    let mirror = match &spec.mirror {
        Some(mirror) => Some(Mirror {
            model: pinned(state, &mirror.model, "mirror.model", origin)?,
            percent: mirror.percent,
        }),
        None => None,
    };
    let routing = Routing {
        experiment: spec.name.clone(),
        version: 0,
        kind: spec.kind,
        default: candidates[default_index].model.clone(),
        candidates,
        mirror,
        sticky: match &spec.sticky {
            Some(sticky) => Some(
                sticky
                    .to_sticky()
                    .map_err(|message| TrafficError::spec(origin, message))?,
            ),
            None => None,
        },
        stopped: false,
        allocated: false,
        at: weir_core::now_ms(),
    };
    routing.check()?;
    Ok(routing)
}

/// Whether two routings route alike (their versions and times aside).
fn same_routing(a: &Routing, b: &Routing) -> bool {
    let plain = |r: &Routing| Routing {
        version: 0,
        at: 0,
        ..r.clone()
    };
    plain(a) == plain(b)
}

/// Applies `spec` (read from `origin`): publishes its routing as the
/// experiment's next version, unless it routes as the latest does, and
/// records the version on `weir.meta` as a run of
/// [`crate::TRACKING_EXPERIMENT`] (`<experiment>-v<version>`, the routing
/// in its params). A deployment runs one experiment at a time.
pub async fn apply(
    bus: &Bus,
    tracker: &Tracker,
    spec: &ExperimentSpec,
    origin: &str,
) -> Result<Applied, TrafficError> {
    let state = tracker.snapshot();
    let mut routing = resolve(spec, origin, &state)?;
    let (history, _) = control::history(bus, &spec.deployment).await?;
    if let Some(latest) = history.last()
        && !latest.stopped
        && latest.experiment != spec.name
    {
        return Err(TrafficError::Refused(format!(
            "deployment `{}` runs experiment `{}`: stop it first (`weir traffic stop {}`)",
            spec.deployment, latest.experiment, latest.experiment
        )));
    }
    let mine = history.iter().filter(|r| r.experiment == spec.name);
    if let Some(latest) = mine.clone().next_back()
        && same_routing(latest, &routing)
    {
        return Ok(Applied {
            routing: latest.clone(),
            new: false,
        });
    }
    routing.version = mine.map(|r| r.version).max().unwrap_or(0) + 1;
    control::publish(bus, &spec.deployment, &routing).await?;
    record_version(tracker, spec, &routing, origin).await?;
    Ok(Applied { routing, new: true })
}

/// Records `routing`, a version of `spec`'s experiment just applied, as a
/// run on `weir.meta`.
async fn record_version(
    tracker: &Tracker,
    spec: &ExperimentSpec,
    routing: &Routing,
    origin: &str,
) -> Result<(), TrafficError> {
    let text = |key: &str, value: String| KeyValue {
        key: key.into(),
        value,
    };
    let candidates = routing
        .candidates
        .iter()
        .map(|c| format!("{}={}", c.model, c.weight))
        .collect::<Vec<_>>()
        .join(", ");
    // As the spec names it (`canary`, `ab`, `bandit`).
    let kind = serde_json::to_value(routing.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut params = vec![
        text("experiment", routing.experiment.clone()),
        text("experiment_version", routing.version.to_string()),
        text("deployment", spec.deployment.clone()),
        text("kind", kind),
        text("default", routing.default.clone()),
        text("candidates", candidates),
        text("spec", origin.into()),
    ];
    if let Some(mirror) = &routing.mirror {
        params.push(text(
            "mirror",
            format!("{} {}%", mirror.model, mirror.percent),
        ));
    }
    if let Some(sticky) = &routing.sticky {
        params.push(text(
            "sticky",
            match sticky {
                Sticky::Key(key) => format!("key {key}"),
                Sticky::Header(header) => format!("header {header}"),
            },
        ));
    }
    let now = weir_core::now_ms();
    let report = RunReport {
        experiment: crate::TRACKING_EXPERIMENT.into(),
        run_name: format!("{}-v{}", routing.experiment, routing.version),
        start_time: now,
        end_time: now,
        params,
        metrics: Vec::new(),
        tags: vec![
            text("weir.traffic.experiment", routing.experiment.clone()),
            text("weir.traffic.event", "applied".into()),
        ],
        datasets: Vec::new(),
        status: String::new(),
        artifacts: Vec::new(),
    };
    tracker.record_run(report).await?;
    Ok(())
}

/// Every experiment of every deployment on `weir.meta`, by deployment,
/// with its latest routing.
pub async fn list(bus: &Bus, state: &State) -> Result<Vec<Experiment>, TrafficError> {
    let mut experiments: Vec<Experiment> = Vec::new();
    for deployment in state.deployments().filter(|d| !d.deleted) {
        let (history, _) = control::history(bus, &deployment.name).await?;
        for routing in history {
            match experiments.iter_mut().find(|e| {
                e.deployment == deployment.name && e.routing.experiment == routing.experiment
            }) {
                Some(known) => {
                    if !routing.allocated && !routing.stopped {
                        known.applied = routing.clone();
                    }
                    known.routing = routing;
                }
                None => experiments.push(Experiment {
                    applied: routing.clone(),
                    routing,
                    deployment: deployment.name.clone(),
                }),
            }
        }
    }
    Ok(experiments)
}

/// The experiment named `name`.
pub async fn find(bus: &Bus, state: &State, name: &str) -> Result<Experiment, TrafficError> {
    list(bus, state)
        .await?
        .into_iter()
        .find(|e| e.routing.experiment == name)
        .ok_or_else(|| TrafficError::Refused(format!("no experiment `{name}`")))
}

/// Stops experiment `name`: its deployment serves its own model again.
/// Returns the deployment and the stopped routing (`None`: it had stopped
/// already).
pub async fn stop(
    bus: &Bus,
    state: &State,
    name: &str,
) -> Result<Option<(String, Routing)>, TrafficError> {
    let experiment = find(bus, state, name).await?;
    if !experiment.running() {
        return Ok(None);
    }
    let routing = Routing {
        version: experiment.routing.version + 1,
        stopped: true,
        allocated: false,
        at: weir_core::now_ms(),
        ..experiment.routing
    };
    control::publish(bus, &experiment.deployment, &routing).await?;
    Ok(Some((experiment.deployment, routing)))
}

/// What promoting an experiment's candidate did.
#[derive(Debug, Clone, PartialEq)]
pub struct Promoted {
    /// The deployment.
    pub deployment: String,
    /// The alias moved, as `name@alias`.
    pub alias: String,
    /// The version it pointed at before, if any.
    pub from: Option<u64>,
    /// The version it points at now: the candidate's.
    pub to: u64,
    /// The experiment's routing, stopped.
    pub routing: Routing,
}

/// Promotes a candidate of the running experiment `name`: moves the alias
/// its deployment serves (`churn-model@champion`) to the candidate's
/// version, then stops the experiment, so the deployment serves the
/// candidate as its own model (serving swaps on the alias move).
/// `candidate` is a registry reference; it may be left out when one
/// candidate is not the default. A deployment that serves a fixed version
/// (`name@3`) has no alias to move, and is refused.
pub async fn promote(
    bus: &Bus,
    tracker: &weir_meta::Tracker,
    name: &str,
    candidate: Option<&str>,
) -> Result<Promoted, TrafficError> {
    let state = tracker.snapshot();
    let experiment = find(bus, &state, name).await?;
    if !experiment.running() {
        return Err(TrafficError::Refused(format!(
            "experiment `{name}` has stopped: there is nothing to promote"
        )));
    }
    let routing = &experiment.routing;
    let challengers: Vec<&str> = routing
        .candidates
        .iter()
        .map(|c| c.model.as_str())
        .filter(|model| *model != routing.default)
        .collect();
    let winner = match candidate {
        Some(reference) => {
            let pinned = pinned(&state, reference, "candidate", name)?;
            if !routing.candidates.iter().any(|c| c.model == pinned) {
                return Err(TrafficError::Refused(format!(
                    "{reference} ({pinned}) is not a candidate of `{name}`: {}",
                    routing
                        .candidates
                        .iter()
                        .map(|c| c.model.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            pinned
        }
        None => match challengers.as_slice() {
            [one] => one.to_string(),
            _ => {
                return Err(TrafficError::Refused(format!(
                    "name the candidate to promote: one of {}",
                    challengers.join(", ")
                )));
            }
        },
    };
    let serves = state
        .deployment(&experiment.deployment)
        .map(|d| d.latest().models.clone())
        .unwrap_or_default();
    let reference: Option<weir_catalog::Reference> = match serves.as_slice() {
        [one] => one.parse().ok(),
        _ => None,
    };
    let (model, alias) = match reference {
        Some(weir_catalog::Reference {
            name: model,
            at: weir_catalog::At::Alias(alias),
        }) => (model, alias),
        _ => {
            return Err(TrafficError::Refused(format!(
                "deployment `{}` serves {}, not a model by an alias: promotion moves an alias; change the deployment's spec instead",
                experiment.deployment,
                serves.join(", ")
            )));
        }
    };
    let Some((winner_model, version)) = winner
        .rsplit_once('@')
        .and_then(|(m, v)| Some((m, v.parse::<u64>().ok()?)))
    else {
        return Err(TrafficError::Refused(format!(
            "candidate `{winner}` is not pinned to a version (name@3)"
        )));
    };
    if winner_model != model {
        return Err(TrafficError::Refused(format!(
            "{winner} is not a version of `{model}`, which deployment `{}` serves as {model}@{alias}",
            experiment.deployment
        )));
    }
    let from = state
        .model(&model)
        .ok()
        .and_then(|m| m.aliases.get(&alias).copied());
    tracker.set_alias(&model, &alias, version).await?;
    let stopped = stop(bus, &state, name)
        .await?
        .map(|(_, routing)| routing)
        .expect("the experiment was running");
    Ok(Promoted {
        deployment: experiment.deployment,
        alias: format!("{model}@{alias}"),
        from,
        to: version,
        routing: stopped,
    })
}
