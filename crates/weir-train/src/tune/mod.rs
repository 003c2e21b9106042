//! Hyper-parameter tuning: trials as messages on `weir.jobs.<experiment>`,
//! run by any number of `weir worker` processes in one consumer group.
//!
//! The coordinator ([`tune`]) opens a parent run, samples params from the
//! search space (grid, random, or TPE — the tree-structured Parzen
//! estimator Optuna uses by default), publishes each trial as a message and
//! follows `weir.meta` for the trials' runs. Workers take trials from the
//! topic ([`claim_trial`], [`run_claimed`]); each trial is a training job
//! recorded as a child run (tags `mlflow.parentRunId`, `weir.trial`).
//!
//! A worker runs a trial only under a lease on `weir.meta`
//! ([`claim_trial`]): the log's order decides between workers that claim
//! the same trial, and the winner renews the lease while the trial runs.
//! So a trial is run and recorded once whoever delivers it, and one whose
//! worker died is free again when the lease lapses ([`TRIAL_LEASE`]): idle
//! workers also read the whole topic and take over trials that are free
//! and not recorded — lapsed, or queued behind a busy or dead worker's
//! partitions — without waiting for the broker to move partitions.

mod worker;

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use weir_meta::event::{Event, KeyValue, Metric};
use weir_meta::state::State;
use weir_meta::tracker::RunStart;

pub use worker::{Report, WorkerEvent, WorkerOptions, run_worker};

use crate::TrainError;
use crate::job::{Outcome, Ran, Workspace, run_job, run_model};
use crate::spec::{Export, TrainSpec};

/// The tag naming a trial: `<tuning id>/<number>`.
pub const TRIAL_TAG: &str = "weir.trial";
/// The tag of a child run naming its parent (MLflow's).
pub const PARENT_TAG: &str = "mlflow.parentRunId";

/// A tuning job (`weir tune tune.yaml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuneSpec {
    /// The experiment of the parent run and the trials.
    pub experiment: String,
    /// The parent run's name.
    #[serde(default)]
    pub name: Option<String>,
    /// The training job each trial runs; its params are the fixed ones.
    pub job: TrainSpec,
    /// Where the trial params come from (`{int: [2, 8]}`: one key per
    /// param, the kind of range).
    #[serde(with = "serde_yaml::with::singleton_map_recursive")]
    pub space: BTreeMap<String, Param>,
    /// How they are chosen.
    #[serde(default)]
    pub search: Search,
    /// What is optimised.
    #[serde(default)]
    pub objective: Objective,
    /// Registers the best trial's model as a new version of this model.
    #[serde(default)]
    pub register: Option<String>,
    /// Which trials' models are exported to ONNX: `best` (the default:
    /// trials of a built-in runtime keep their fitted model, and the one
    /// registered is exported then) or `every` trial.
    #[serde(default)]
    pub export: TrialExport,
}

/// Which trials' models are exported to ONNX.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialExport {
    /// Only the one kept (a trial's export is deferred: see
    /// [`Export::Deferred`]); a command runtime's trials export anyway.
    #[default]
    Best,
    /// Every trial's.
    Every,
}

/// One param's range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Param {
    /// A number, uniform in `[low, high]`.
    Uniform([f64; 2]),
    /// A positive number, uniform in its logarithm.
    Loguniform([f64; 2]),
    /// An integer in `[low, high]`.
    Int([i64; 2]),
    /// One of these values.
    Choice(Vec<Json>),
}

/// How params are chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Search {
    /// `random`, `grid` or `tpe`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Trials in all (for a grid, at most its size).
    #[serde(default = "default_trials")]
    pub trials: usize,
    /// Trials out at once (the adaptive method waits for results before
    /// choosing more).
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    /// Trials published beyond `parallel`, waiting: a worker that finishes
    /// one starts the next at once instead of waiting for the coordinator to
    /// see its result and choose. The adaptive method chooses them without
    /// the results of the trials still running.
    #[serde(default = "default_ahead")]
    pub ahead: usize,
    /// Seed of the sampler.
    #[serde(default)]
    pub seed: u64,
    /// How long to wait for the trials, in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
}

fn default_method() -> String {
    "tpe".into()
}
fn default_trials() -> usize {
    20
}
fn default_parallel() -> usize {
    4
}
fn default_ahead() -> usize {
    1
}
fn default_timeout() -> u64 {
    3600
}

impl Default for Search {
    fn default() -> Self {
        Self {
            method: default_method(),
            trials: default_trials(),
            parallel: default_parallel(),
            ahead: default_ahead(),
            seed: 0,
            timeout_s: default_timeout(),
        }
    }
}

/// The metric to optimise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    /// A metric the trials log (`validation_roc_auc`, `validation_rmse`…).
    pub metric: String,
    /// `maximize` or `minimize`; by default from the metric's name.
    #[serde(default)]
    pub goal: Option<String>,
}

impl Default for Objective {
    fn default() -> Self {
        Self {
            metric: "validation_roc_auc".into(),
            goal: None,
        }
    }
}

impl Objective {
    /// Whether larger is better.
    pub fn maximize(&self) -> Result<bool, TrainError> {
        match self.goal.as_deref() {
            Some("maximize") => Ok(true),
            Some("minimize") => Ok(false),
            Some(other) => Err(TrainError::Invalid(format!(
                "objective goal `{other}`: maximize or minimize"
            ))),
            None => {
                let name = self
                    .metric
                    .trim_start_matches("validation_")
                    .trim_start_matches("test_");
                crate::metrics::higher_is_better(name).ok_or_else(|| {
                    TrainError::Invalid(format!(
                        "objective `{}`: say whether to maximize or minimize it",
                        self.metric
                    ))
                })
            }
        }
    }
}

impl TuneSpec {
    /// Reads a tuning job from YAML; errors name the field and its line.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, TrainError> {
        crate::spec::from_yaml(text, origin)
    }
}

/// A trial, as a message on `weir.jobs.<experiment>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// The tuning job's id (its parent run).
    pub parent_run_id: String,
    /// Its number, from 0.
    pub number: usize,
    /// The job to run, its params set.
    pub job: TrainSpec,
}

impl Trial {
    /// `<parent run>/<number>`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.parent_run_id, self.number)
    }
}

/// Partitions of a jobs topic: as many workers can share its trials.
pub const JOB_PARTITIONS: i32 = 8;

/// The topic a tuning job of `experiment` sends its trials to.
pub fn jobs_topic(experiment: &str) -> String {
    weir_core::topics::jobs(experiment)
}

/// How long a worker's claim on a trial lasts unless renewed (every third
/// of it while the trial runs): a worker that dies gives its trial up this
/// long after its last renewal.
pub const TRIAL_LEASE: Duration = Duration::from_secs(10);

/// Where a trial stands, as `weir.meta` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrialState {
    /// Its run is recorded (finished or failed): nothing to do.
    Recorded,
    /// Its tuning job has ended (the parent run is no longer running).
    Closed,
    /// A worker holds it, until then (ms since the epoch).
    Held {
        /// The worker.
        holder: String,
        /// Until when.
        until: i64,
    },
    /// Nobody holds it; `lapsed` when a worker did and gave it up or died.
    Open {
        /// A lease on it has lapsed.
        lapsed: bool,
    },
}

impl Trial {
    /// The key of a worker's lease on the trial.
    pub fn lease_key(&self) -> String {
        format!("trial/{}", self.id())
    }

    /// Where the trial stands in `state` at `now`.
    pub fn state(&self, state: &State, now: i64) -> TrialState {
        let id = self.id();
        let recorded = trial_runs(state, &self.job.experiment, &self.parent_run_id)
            .into_iter()
            .any(|(_, run)| {
                run.tags.get(TRIAL_TAG) == Some(&id)
                    && matches!(run.status.as_str(), "FINISHED" | "FAILED")
            });
        if recorded {
            return TrialState::Recorded;
        }
        if state
            .run(&self.parent_run_id)
            .is_ok_and(|parent| parent.status != "RUNNING")
        {
            return TrialState::Closed;
        }
        match state.lease(&self.lease_key()) {
            Some(lease) if lease.live(now) => TrialState::Held {
                holder: lease.holder.clone(),
                until: lease.until,
            },
            lease => TrialState::Open {
                lapsed: lease.is_some(),
            },
        }
    }
}

/// Claims a trial for `holder` (a lease on `weir.meta`): the state the
/// trial was in when the claim failed, or `None` when `holder` has it and
/// must now [`run_claimed`] it.
///
/// `follower` is how this process reads the log: it catches up first, then
/// the claim is written and `follower` reads on to it, so the log's order
/// up to the claim decides, and a trial recorded meanwhile is seen as
/// recorded.
pub async fn claim_trial(
    trial: &Trial,
    tracker: &weir_meta::Tracker,
    follower: &mut weir_meta::tracker::Follower,
    holder: &str,
) -> Result<Option<TrialState>, TrainError> {
    follower.catch_up().await?;
    match trial.state(follower.state(), weir_core::now_ms()) {
        TrialState::Open { .. } => {}
        TrialState::Held { holder: h, .. } if h == holder => {}
        other => return Ok(Some(other)),
    }
    let key = trial.lease_key();
    let won = tracker
        .claim_lease(follower, &key, holder, TRIAL_LEASE)
        .await?;
    match trial.state(follower.state(), weir_core::now_ms()) {
        TrialState::Held { holder: h, .. } if won && h == holder => Ok(None),
        // Won with nothing written in between: the follower has not read
        // the claim yet, and the trial is as it was.
        TrialState::Open { .. } if won => Ok(None),
        state => {
            if won {
                tracker.release_lease(&key, holder).await?;
            }
            Ok(Some(state))
        }
    }
}

/// Runs a trial `holder` has claimed as a training job recorded as a child
/// run, renewing the claim while it runs and giving it up at the end.
///
/// A worker that cannot renew (cut off from the brokers for longer than
/// [`TRIAL_LEASE`]) carries on, warning: the trial may then be run twice
/// and recorded twice, and the coordinator counts its first run.
pub async fn run_claimed(
    trial: &Trial,
    workspace: Workspace<'_>,
    holder: &str,
) -> Result<Outcome, TrainError> {
    run_trial(trial, workspace, holder)
        .await?
        .record(workspace.tracker)
        .await
}

/// The first half of [`run_claimed`]: runs the trial's job, renewing the
/// claim. Recording its run and giving up the claim is left to
/// [`RanTrial::record`], so that a worker's runtime can start its next
/// trial meanwhile.
pub async fn run_trial(
    trial: &Trial,
    workspace: Workspace<'_>,
    holder: &str,
) -> Result<RanTrial, TrainError> {
    let mut job = trial.job.clone();
    job.tags
        .insert(PARENT_TAG.into(), trial.parent_run_id.clone());
    job.tags.insert(TRIAL_TAG.into(), trial.id());
    job.name = Some(format!("trial-{}", trial.number));
    job.register = None;
    let key = trial.lease_key();
    let tracker = workspace.tracker;
    let running = run_job(&job, workspace);
    tokio::pin!(running);
    let mut renew = tokio::time::interval(TRIAL_LEASE / 3);
    renew.tick().await;
    let ran = loop {
        tokio::select! {
            ran = &mut running => break ran,
            _ = renew.tick() => if let Err(error) = tracker.renew_lease(&key, holder, TRIAL_LEASE).await {
                tracing::warn!(trial = %trial.id(), %error, "renewing the claim failed");
            },
        }
    };
    let ran = match ran {
        Ok(ran) => ran,
        Err(error) => {
            release(tracker, &key, holder, &trial.id()).await;
            return Err(error);
        }
    };
    Ok(RanTrial {
        ran,
        key,
        holder: holder.to_string(),
        trial: trial.id(),
    })
}

/// A trial whose job has run, its run not yet recorded ([`run_trial`]).
pub struct RanTrial {
    ran: Ran,
    key: String,
    holder: String,
    trial: String,
}

impl RanTrial {
    /// Records the trial's run, then gives up the claim: the log has the
    /// run before the lease ends, so no other worker runs it again.
    pub async fn record(self, tracker: &weir_meta::Tracker) -> Result<Outcome, TrainError> {
        let outcome = self.ran.record(tracker).await;
        release(tracker, &self.key, &self.holder, &self.trial).await;
        outcome
    }
}

/// Gives up a trial's claim; one that cannot be given up lapses.
async fn release(tracker: &weir_meta::Tracker, key: &str, holder: &str, trial: &str) {
    if let Err(error) = tracker.release_lease(key, holder).await {
        tracing::warn!(%trial, %error, "giving up the claim failed; it lapses");
    }
}

/// Adds the trials whose runs have ended in `state` to `done`: whether
/// any was new.
fn collect_results(
    state: &State,
    spec: &TuneSpec,
    parent: &str,
    issued: &BTreeMap<usize, BTreeMap<String, Json>>,
    done: &mut BTreeMap<usize, TrialResult>,
) -> bool {
    let before = done.len();
    for (run_id, run) in trial_runs(state, &spec.experiment, parent) {
        let finished = matches!(run.status.as_str(), "FINISHED" | "FAILED");
        let number = run
            .tags
            .get(TRIAL_TAG)
            .and_then(|t| t.rsplit('/').next())
            .and_then(|n| n.parse::<usize>().ok());
        let (Some(number), true) = (number, finished) else {
            continue;
        };
        let Some(params) = issued.get(&number) else {
            continue;
        };
        let value = (run.status == "FINISHED")
            .then(|| run.latest.get(&spec.objective.metric).map(|m| m.value))
            .flatten();
        done.entry(number).or_insert_with(|| TrialResult {
            number,
            run_id: run_id.to_string(),
            params: params.clone(),
            value,
        });
    }
    done.len() > before
}

/// The runs of `experiment` under the parent run.
fn trial_runs<'a>(
    state: &'a State,
    experiment: &str,
    parent_run_id: &str,
) -> Vec<(&'a str, &'a weir_meta::state::Run)> {
    let Ok(experiment) = state.experiment_by_name(experiment) else {
        return vec![];
    };
    state
        .runs_of(&experiment.experiment_id)
        .filter(|run| run.tags.get(PARENT_TAG).map(String::as_str) == Some(parent_run_id))
        .map(|run| (run.run_id.as_str(), run))
        .collect()
}

/// A finished trial.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialResult {
    /// Its number.
    pub number: usize,
    /// Its run.
    pub run_id: String,
    /// Its params (the sampled ones).
    pub params: BTreeMap<String, Json>,
    /// The objective; `None` if the trial failed.
    pub value: Option<f64>,
}

/// How a tuning job ended.
#[derive(Debug, Clone)]
pub struct TuneOutcome {
    /// The parent run.
    pub run_id: String,
    /// Every trial, by number.
    pub trials: Vec<TrialResult>,
    /// The best trial's number.
    pub best: Option<usize>,
    /// The version registered from the best trial.
    pub version: Option<(String, u64)>,
}

/// Runs a tuning job: publishes its trials and follows their runs until all
/// are recorded. Trials are run by workers (`weir worker`) reading
/// [`jobs_topic`], which record them on `weir.meta`; the coordinator
/// follows it, looking at the trials every 300 ms.
pub async fn tune(
    spec: &TuneSpec,
    workspace: Workspace<'_>,
    bus: &weir_bus::Bus,
) -> Result<TuneOutcome, TrainError> {
    let maximize = spec.objective.maximize()?;
    if spec.space.is_empty() {
        return Err(TrainError::Invalid(
            "tune: the search space is empty".into(),
        ));
    }
    for key in spec.space.keys() {
        if spec.job.params.contains_key(key) {
            return Err(TrainError::Invalid(format!(
                "tune: `{key}` is both a fixed param of the job and in the space"
            )));
        }
    }
    let mut sampler = Sampler::new(&spec.space, &spec.search)?;
    let wanted = sampler.trials(spec.search.trials);
    let producer = bus
        .producer()
        .map_err(|e| TrainError::Runtime(e.to_string()))?;
    let tracker = workspace.tracker;
    let text = |key: &str, value: String| KeyValue {
        key: key.into(),
        value,
    };
    let topic = jobs_topic(&spec.experiment);
    // The parent run and the jobs topic, while the follower reads the log
    // (the trials' runs, as the workers record them: the log read once,
    // then followed).
    let (parent, mut follower) = tokio::try_join!(
        async {
            let experiment_id = tracker.experiment_named(&spec.experiment).await?;
            let parent = tracker
                .start_run(RunStart {
                    experiment_id,
                    run_name: spec.name.clone(),
                    start_time: weir_core::now_ms(),
                    ..Default::default()
                })
                .await?;
            tracker
                .append(Event::RunLogged {
                    at: weir_core::now_ms(),
                    run_id: parent.clone(),
                    metrics: vec![],
                    params: vec![
                        text("weir.search", spec.search.method.clone()),
                        text("weir.trials", wanted.to_string()),
                        text("weir.objective", spec.objective.metric.clone()),
                        text(
                            "weir.space",
                            serde_json::to_string(&spec.space).expect("JSON"),
                        ),
                    ],
                    tags: vec![text("weir.tune", "parent".into())],
                })
                .await?;

            bus.admin()
                .ensure_topic(&weir_bus::TopicSpec::new(&topic, JOB_PARTITIONS))
                .await
                .map_err(|e| TrainError::Runtime(format!("creating {topic}: {e}")))?;
            Ok::<_, TrainError>(parent)
        },
        async { Ok(weir_meta::tracker::Follower::start(bus).await?) },
    )?;
    // Trials keep their model unless every one is exported or the runtime
    // exports by itself.
    let export = match spec.export {
        TrialExport::Best
            if Export::Deferred
                .check(&spec.job.runtime, spec.job.distributed.is_some())
                .is_ok() =>
        {
            Export::Deferred
        }
        _ => spec.job.export,
    };
    let mut issued: BTreeMap<usize, BTreeMap<String, Json>> = BTreeMap::new();
    let mut done: BTreeMap<usize, TrialResult> = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(spec.search.timeout_s);
    while done.len() < wanted {
        // Keep `parallel` trials out, and `ahead` more waiting; the
        // adaptive sampler sees every result so far.
        let out = spec.search.parallel.max(1) + spec.search.ahead;
        // Queued together, then acknowledged together: the first round goes
        // out in one round trip.
        let mut published = Vec::new();
        while issued.len() < wanted && issued.len() - done.len() < out {
            let number = issued.len();
            let history: Vec<&TrialResult> = done.values().collect();
            let params = sampler.next(number, &history, maximize);
            let mut job = spec.job.clone();
            job.experiment = spec.experiment.clone();
            job.params.extend(params.clone());
            job.export = export;
            let trial = Trial {
                parent_run_id: parent.clone(),
                number,
                job,
            };
            let payload = serde_json::to_vec(&trial).expect("JSON");
            let key = trial.id();
            let delivery = producer
                // Trial n on partition n: spread evenly over the workers.
                .send(
                    weir_bus::OutRecord::new(&topic, &payload)
                        .key(key.as_bytes())
                        .partition((number % JOB_PARTITIONS as usize) as i32),
                )
                .await;
            tracing::info!(trial = %key, ?params, "published");
            published.push((key, delivery));
            issued.insert(number, params);
        }
        for (key, delivery) in published {
            let publishing = |e| TrainError::Runtime(format!("publishing trial {key}: {e}"));
            delivery.map_err(publishing)?.await.map_err(publishing)?;
        }
        if std::time::Instant::now() > deadline {
            break;
        }
        if collect_results(follower.state(), spec, &parent, &issued, &mut done) {
            continue;
        }
        // Events until one ends a trial (or a while passes, to check the
        // deadline).
        let until = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Ok(event) = tokio::time::timeout_at(until, follower.next()).await {
            if !event? {
                return Err(TrainError::Runtime("weir.meta closed".into()));
            }
            if collect_results(follower.state(), spec, &parent, &issued, &mut done) {
                break;
            }
        }
    }

    let trials: Vec<TrialResult> = done.into_values().collect();
    let better = |a: f64, b: f64| if maximize { a > b } else { a < b };
    let best = trials
        .iter()
        .filter(|t| t.value.is_some_and(f64::is_finite))
        .fold(None::<&TrialResult>, |best, t| match best {
            Some(b) if !better(t.value.unwrap(), b.value.unwrap()) => Some(b),
            _ => Some(t),
        });
    let now = weir_core::now_ms();
    let mut metrics = vec![Metric {
        key: "trials_finished".into(),
        value: trials.iter().filter(|t| t.value.is_some()).count() as f64,
        timestamp: now,
        step: 0,
    }];
    let mut tags = vec![];
    if let Some(best) = best {
        metrics.push(Metric {
            key: format!("best_{}", spec.objective.metric),
            value: best.value.unwrap(),
            timestamp: now,
            step: 0,
        });
        tags.push(text("weir.best_run", best.run_id.clone()));
        tags.push(text(
            "weir.best_params",
            serde_json::to_string(&best.params).expect("JSON"),
        ));
    }
    tracker
        .append(Event::RunLogged {
            at: now,
            run_id: parent.clone(),
            metrics,
            params: vec![],
            tags,
        })
        .await?;
    let complete = trials.len() == wanted;
    tracker
        .append(Event::RunUpdated {
            at: now,
            run_id: parent.clone(),
            status: Some(if complete { "FINISHED" } else { "FAILED" }.into()),
            end_time: Some(now),
            run_name: None,
        })
        .await?;
    let mut version = None;
    if let (Some(name), Some(best)) = (&spec.register, best) {
        let (number, _) = keep_trial(bus, workspace, &best.run_id, Some(name)).await?;
        version = number.map(|n| (name.clone(), n));
    }
    if !complete {
        return Err(TrainError::Runtime(format!(
            "tune: {} of {} trials recorded within {} s (are workers running? `weir worker --experiment {}`)",
            trials.len(),
            wanted,
            spec.search.timeout_s,
            spec.experiment
        )));
    }
    Ok(TuneOutcome {
        run_id: parent,
        best: best.map(|b| b.number),
        trials,
        version,
    })
}

/// Keeps a trial's model: exports it if the trial deferred that (checked,
/// and scored on the test rows) and, given a name, registers it as a new
/// version. Returns the version and the run's test metrics. The trials were
/// recorded by the workers: a tracker that has read them (opened for this)
/// does it.
pub(crate) async fn keep_trial(
    bus: &weir_bus::Bus,
    workspace: Workspace<'_>,
    run_id: &str,
    register: Option<&str>,
) -> Result<(Option<u64>, crate::metrics::Metrics), TrainError> {
    let current = weir_meta::Tracker::open(bus, workspace.tracker.artifacts().clone()).await?;
    let workspace = Workspace {
        tracker: &current,
        ..workspace
    };
    let kept = async {
        let model = run_model(workspace, run_id).await?;
        let version = match register {
            Some(name) => {
                Some(crate::job::register(&current, run_id, name, String::new(), &model).await?)
            }
            None => None,
        };
        let test = current.read(|state| {
            state.run(run_id).map(|run| {
                run.latest
                    .iter()
                    .filter_map(|(key, m)| Some((key.strip_prefix("test_")?.to_string(), m.value)))
                    .collect()
            })
        })?;
        Ok((version, test))
    }
    .await;
    current.close().await;
    kept
}

/// Chooses trial params.
struct Sampler {
    space: Vec<(String, Param)>,
    method: String,
    rng: StdRng,
    grid: Vec<BTreeMap<String, Json>>,
}

impl Sampler {
    fn new(space: &BTreeMap<String, Param>, search: &Search) -> Result<Self, TrainError> {
        for (name, param) in space {
            let bad = match param {
                Param::Uniform([lo, hi]) => lo >= hi,
                Param::Loguniform([lo, hi]) => *lo <= 0.0 || lo >= hi,
                Param::Int([lo, hi]) => lo > hi,
                Param::Choice(values) => values.is_empty(),
            };
            if bad {
                return Err(TrainError::Invalid(format!(
                    "tune: param `{name}`: an empty range ({param:?})"
                )));
            }
        }
        let space: Vec<(String, Param)> =
            space.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let grid = match search.method.as_str() {
            "grid" => grid(&space)?,
            "random" | "tpe" => vec![],
            other => {
                return Err(TrainError::Invalid(format!(
                    "tune: search method `{other}`: random, grid or tpe"
                )));
            }
        };
        Ok(Self {
            space,
            method: search.method.clone(),
            rng: StdRng::seed_from_u64(search.seed),
            grid,
        })
    }

    /// How many trials run: a grid has no more points than its size.
    fn trials(&self, wanted: usize) -> usize {
        if self.method == "grid" {
            wanted.min(self.grid.len())
        } else {
            wanted
        }
    }

    fn next(
        &mut self,
        number: usize,
        history: &[&TrialResult],
        maximize: bool,
    ) -> BTreeMap<String, Json> {
        match self.method.as_str() {
            "grid" => self.grid[number].clone(),
            "tpe" => {
                let scored: Vec<(&BTreeMap<String, Json>, f64)> = history
                    .iter()
                    .filter_map(|t| Some((&t.params, t.value?)))
                    .filter(|(_, v)| v.is_finite())
                    .collect();
                // As Optuna: random until there are enough results to model.
                if scored.len() < STARTUP_TRIALS {
                    return self.random();
                }
                tpe(&self.space, &scored, maximize, &mut self.rng)
            }
            _ => self.random(),
        }
    }

    fn random(&mut self) -> BTreeMap<String, Json> {
        self.space
            .iter()
            .map(|(name, param)| (name.clone(), sample(param, &mut self.rng)))
            .collect()
    }
}

/// Random trials before TPE models the results (Optuna's default).
const STARTUP_TRIALS: usize = 10;
/// The share of results TPE counts as good, and at most how many (Optuna's
/// default γ: 10 %, at most 25).
const GOOD_SHARE: f64 = 0.1;
const GOOD_MAX: usize = 25;
/// Candidates drawn from the good density at each step (Optuna: 24).
const CANDIDATES: usize = 24;

fn sample(param: &Param, rng: &mut StdRng) -> Json {
    match param {
        Param::Uniform([lo, hi]) => Json::from(rng.random_range(*lo..=*hi)),
        Param::Loguniform([lo, hi]) => Json::from(rng.random_range(lo.ln()..=hi.ln()).exp()),
        Param::Int([lo, hi]) => Json::from(rng.random_range(*lo..=*hi)),
        Param::Choice(values) => values[rng.random_range(0..values.len())].clone(),
    }
}

fn grid(space: &[(String, Param)]) -> Result<Vec<BTreeMap<String, Json>>, TrainError> {
    let mut points = vec![BTreeMap::new()];
    for (name, param) in space {
        let values: Vec<Json> = match param {
            Param::Choice(values) => values.clone(),
            Param::Int([lo, hi]) if hi - lo < 100 => (*lo..=*hi).map(Json::from).collect(),
            _ => {
                return Err(TrainError::Invalid(format!(
                    "tune: a grid takes choices or small int ranges; `{name}` is {param:?}"
                )));
            }
        };
        points = points
            .into_iter()
            .flat_map(|point| {
                values.iter().map(move |v| {
                    let mut point = point.clone();
                    point.insert(name.clone(), v.clone());
                    point
                })
            })
            .collect();
    }
    Ok(points)
}

/// One TPE step, each param on its own (Optuna's default, independent
/// sampling): split the results into good and bad, draw candidates from a
/// Parzen estimator of the good values and keep the one where good is most
/// likely against bad.
fn tpe(
    space: &[(String, Param)],
    scored: &[(&BTreeMap<String, Json>, f64)],
    maximize: bool,
    rng: &mut StdRng,
) -> BTreeMap<String, Json> {
    let mut order: Vec<usize> = (0..scored.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (scored[a].1, scored[b].1);
        if maximize {
            y.total_cmp(&x)
        } else {
            x.total_cmp(&y)
        }
    });
    let n_good = ((scored.len() as f64 * GOOD_SHARE).ceil() as usize).clamp(1, GOOD_MAX);
    let (good, bad) = order.split_at(n_good);
    let mut point = BTreeMap::new();
    for (name, param) in space {
        let values = |rows: &[usize]| -> Vec<&Json> {
            rows.iter().filter_map(|&i| scored[i].0.get(name)).collect()
        };
        let (good_values, bad_values) = (values(good), values(bad));
        let value = match param {
            Param::Choice(choices) => {
                let index = |v: &Json| choices.iter().position(|c| c == v);
                let weights = |vs: &[&Json]| -> Vec<f64> {
                    let mut counts = vec![1.0; choices.len()];
                    for v in vs {
                        if let Some(i) = index(v) {
                            counts[i] += 1.0;
                        }
                    }
                    let total: f64 = counts.iter().sum();
                    counts.iter().map(|c| c / total).collect()
                };
                let (l, g) = (weights(&good_values), weights(&bad_values));
                let best = (0..CANDIDATES)
                    .map(|_| pick(&l, rng))
                    .max_by(|&a, &b| (l[a] / g[a]).total_cmp(&(l[b] / g[b])))
                    .expect("candidates");
                choices[best].clone()
            }
            numeric => {
                // In the param's own scale: log for loguniform.
                let (lo, hi, log, int) = match numeric {
                    Param::Uniform([lo, hi]) => (*lo, *hi, false, false),
                    Param::Loguniform([lo, hi]) => (lo.ln(), hi.ln(), true, false),
                    Param::Int([lo, hi]) => (*lo as f64 - 0.5, *hi as f64 + 0.5, false, true),
                    Param::Choice(_) => unreachable!("handled above"),
                };
                let scale = |v: &&Json| {
                    v.as_f64()
                        .map(|x| if log { x.ln() } else { x })
                        .filter(|x| x.is_finite())
                };
                let l = Parzen::new(good_values.iter().filter_map(scale).collect(), lo, hi);
                let g = Parzen::new(bad_values.iter().filter_map(scale).collect(), lo, hi);
                let best = (0..CANDIDATES)
                    .map(|_| l.sample(rng))
                    .max_by(|a, b| {
                        (l.log_density(*a) - g.log_density(*a))
                            .total_cmp(&(l.log_density(*b) - g.log_density(*b)))
                    })
                    .expect("candidates");
                if int {
                    Json::from(best.round().clamp(lo + 0.5, hi - 0.5) as i64)
                } else if log {
                    Json::from(best.exp())
                } else {
                    Json::from(best)
                }
            }
        };
        point.insert(name.clone(), value);
    }
    point
}

fn pick(weights: &[f64], rng: &mut StdRng) -> usize {
    let mut x = rng.random::<f64>();
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

/// A Parzen estimator on `[lo, hi]`: a Gaussian at each observation plus
/// the uniform prior, equally weighted; bandwidths from the distance to
/// neighbours (as TPE does), at least a hundredth of the range.
struct Parzen {
    centers: Vec<f64>,
    widths: Vec<f64>,
    lo: f64,
    hi: f64,
}

impl Parzen {
    fn new(mut points: Vec<f64>, lo: f64, hi: f64) -> Self {
        points.sort_by(f64::total_cmp);
        let range = hi - lo;
        let widths = (0..points.len())
            .map(|i| {
                let left = if i == 0 { lo } else { points[i - 1] };
                let right = if i + 1 == points.len() {
                    hi
                } else {
                    points[i + 1]
                };
                (points[i] - left)
                    .max(right - points[i])
                    .clamp(range / 100.0, range)
            })
            .collect();
        Self {
            centers: points,
            widths,
            lo,
            hi,
        }
    }

    fn components(&self) -> f64 {
        self.centers.len() as f64 + 1.0
    }

    fn sample(&self, rng: &mut StdRng) -> f64 {
        let k = rng.random_range(0..=self.centers.len());
        if k == self.centers.len() {
            return rng.random_range(self.lo..=self.hi);
        }
        // Box–Muller, redrawn until inside the range.
        loop {
            let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
            let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
            let x = self.centers[k] + z * self.widths[k];
            if (self.lo..=self.hi).contains(&x) {
                return x;
            }
        }
    }

    fn log_density(&self, x: f64) -> f64 {
        let prior = 1.0 / (self.hi - self.lo);
        let gaussians: f64 = self
            .centers
            .iter()
            .zip(&self.widths)
            .map(|(c, w)| {
                let z = (x - c) / w;
                (-0.5 * z * z).exp() / (w * (std::f64::consts::TAU).sqrt())
            })
            .sum();
        ((prior + gaussians) / self.components()).ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> BTreeMap<String, Param> {
        [
            ("x".to_string(), Param::Uniform([-5.0, 5.0])),
            ("lr".to_string(), Param::Loguniform([1e-3, 1.0])),
            ("depth".to_string(), Param::Int([2, 8])),
            (
                "kind".to_string(),
                Param::Choice(vec!["a".into(), "b".into()]),
            ),
        ]
        .into()
    }

    #[test]
    fn samples_stay_in_their_ranges() {
        let search = Search {
            method: "tpe".into(),
            ..Search::default()
        };
        let mut sampler = Sampler::new(&space(), &search).unwrap();
        let mut history = Vec::new();
        for number in 0..40 {
            let refs: Vec<&TrialResult> = history.iter().collect();
            let params = sampler.next(number, &refs, true);
            let x = params["x"].as_f64().unwrap();
            let lr = params["lr"].as_f64().unwrap();
            let depth = params["depth"].as_i64().unwrap();
            assert!((-5.0..=5.0).contains(&x) && (1e-3..=1.0).contains(&lr));
            assert!((2..=8).contains(&depth), "{params:?}");
            assert!(["a", "b"].contains(&params["kind"].as_str().unwrap()));
            history.push(TrialResult {
                number,
                run_id: String::new(),
                value: Some(-(x - 2.0).powi(2)),
                params,
            });
        }
    }

    #[test]
    fn tpe_beats_random_search_on_a_simple_objective() {
        // Maximise -(x-2)² over [-5, 5]: TPE's later trials crowd around 2.
        let space: BTreeMap<String, Param> =
            [("x".to_string(), Param::Uniform([-5.0, 5.0]))].into();
        let best_after = |method: &str, seed: u64| {
            let search = Search {
                method: method.into(),
                seed,
                ..Search::default()
            };
            let mut sampler = Sampler::new(&space, &search).unwrap();
            let mut history: Vec<TrialResult> = Vec::new();
            for number in 0..30 {
                let refs: Vec<&TrialResult> = history.iter().collect();
                let params = sampler.next(number, &refs, true);
                let x = params["x"].as_f64().unwrap();
                history.push(TrialResult {
                    number,
                    run_id: String::new(),
                    value: Some(-(x - 2.0).powi(2)),
                    params,
                });
            }
            history
                .iter()
                .map(|t| t.value.unwrap())
                .fold(f64::NEG_INFINITY, f64::max)
        };
        // TPE can settle on a poor region when its first random trials miss
        // the peak (as Optuna's can), so count wins rather than average.
        let wins = (0..20)
            .filter(|&seed| best_after("tpe", seed) > best_after("random", seed))
            .count();
        assert!(wins >= 14, "TPE beat random search on {wins} of 20 seeds");
    }

    #[test]
    fn a_grid_is_every_combination() {
        let space: BTreeMap<String, Param> = [
            ("a".to_string(), Param::Int([1, 3])),
            (
                "b".to_string(),
                Param::Choice(vec![true.into(), false.into()]),
            ),
        ]
        .into();
        let search = Search {
            method: "grid".into(),
            ..Search::default()
        };
        let sampler = Sampler::new(&space, &search).unwrap();
        assert_eq!(sampler.grid.len(), 6);
        assert_eq!(sampler.trials(100), 6);
        let bad: BTreeMap<String, Param> = [("x".to_string(), Param::Uniform([0.0, 1.0]))].into();
        assert!(Sampler::new(&bad, &search).is_err());
    }
}
