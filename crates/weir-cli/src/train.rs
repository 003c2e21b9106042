//! `weir train` and `weir evaluate`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use weir_core::Config;
use weir_features::datasets::Datasets;
use weir_train::spec::{Runtime, Split, Task, TrainSpec};
use weir_train::tune::TuneSpec;
use weir_train::{EvaluationRequest, GateRule, Workspace};

use crate::connect::{Connection, connect};

/// What the training verbs work with: the bus, the tracker, the datasets
/// and a scratch directory.
pub(crate) struct Session {
    connection: Connection,
    tracker: weir_meta::Tracker,
    datasets: Datasets,
    scratch: PathBuf,
}

impl Session {
    pub(crate) async fn open(config: &Config) -> anyhow::Result<Self> {
        Self::on(config, connect(config).await?).await
    }

    /// The session on a connection made already.
    async fn on(config: &Config, connection: Connection) -> anyhow::Result<Self> {
        // Both replay weir.meta: at once.
        let (tracker, datasets) = tokio::try_join!(
            crate::tracking::open_tracker(config, &connection.bus),
            async { Ok(Datasets::load(&connection.bus).await?) },
        )?;
        Ok(Self {
            connection,
            tracker,
            datasets,
            scratch: config.state_dir.join("train"),
        })
    }

    pub(crate) fn workspace(&self) -> Workspace<'_> {
        Workspace {
            tracker: &self.tracker,
            datasets: &self.datasets,
            scratch: &self.scratch,
            cache: None,
        }
    }

    pub(crate) async fn close(self) {
        self.tracker.close().await;
        self.connection.close().await;
    }
}

#[derive(Parser)]
pub struct TrainArgs {
    /// A job file (YAML, see docs/training.md); the options below override
    /// its fields, or describe the whole job without one.
    spec: Option<PathBuf>,
    /// A dataset version (`name@version`, `name` for its latest) or a
    /// Parquet file.
    #[arg(long)]
    dataset: Option<String>,
    /// The column to predict.
    #[arg(long)]
    label: Option<String>,
    /// `sklearn`, `lightgbm`, or `command` (with `--command`).
    #[arg(long)]
    runtime: Option<String>,
    /// The scikit-learn estimator (`sklearn` runtime).
    #[arg(long, default_value = "HistGradientBoostingClassifier")]
    estimator: String,
    /// The command of a custom runtime, as one string split on spaces.
    #[arg(long)]
    command: Option<String>,
    /// A param, `key=value` (value read as JSON: `100`, `0.1`, `true`; else text).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// Feature columns, in order (default: the numeric columns but the
    /// label, keys and times).
    #[arg(long, value_delimiter = ',')]
    features: Vec<String>,
    /// Columns that are not features.
    #[arg(long, value_delimiter = ',')]
    exclude: Vec<String>,
    /// `classification` or `regression` (default: from the label's type).
    #[arg(long)]
    task: Option<String>,
    /// Split by time on this column instead of at random.
    #[arg(long)]
    split_by: Option<String>,
    /// Share of rows for validation.
    #[arg(long)]
    validation: Option<f64>,
    /// Share of rows for test.
    #[arg(long)]
    test: Option<f64>,
    /// Seed of the random split.
    #[arg(long)]
    seed: Option<u64>,
    /// The experiment.
    #[arg(long)]
    experiment: Option<String>,
    /// The run's name.
    #[arg(long)]
    name: Option<String>,
    /// Register the model as a new version of this model.
    #[arg(long)]
    register: Option<String>,
    /// Data-parallel: run the runtime as this many processes, each on its
    /// share of the training rows (lightgbm, or a command runtime).
    #[arg(long)]
    processes: Option<usize>,
    /// Start all processes again this many times after one fails.
    #[arg(long, default_value_t = 0, requires = "processes")]
    restarts: u32,
}

impl TrainArgs {
    fn spec(self) -> anyhow::Result<TrainSpec> {
        let mut spec = match &self.spec {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                TrainSpec::from_yaml(&text, &path.display().to_string())?
            }
            None => {
                let (Some(dataset), Some(label)) = (self.dataset.clone(), self.label.clone())
                else {
                    bail!("give a job file, or at least --dataset and --label");
                };
                TrainSpec {
                    experiment: "Default".into(),
                    name: None,
                    dataset,
                    label,
                    features: vec![],
                    exclude: vec![],
                    task: None,
                    split: Split::default(),
                    runtime: Runtime::Lightgbm,
                    params: Default::default(),
                    register: None,
                    tolerance: 1e-4,
                    tags: Default::default(),
                    distributed: None,
                    export: Default::default(),
                }
            }
        };
        if let Some(dataset) = self.dataset {
            spec.dataset = dataset;
        }
        if let Some(label) = self.label {
            spec.label = label;
        }
        match self.runtime.as_deref() {
            None => {}
            Some("sklearn") => {
                spec.runtime = Runtime::Sklearn {
                    estimator: self.estimator,
                }
            }
            Some("lightgbm") => spec.runtime = Runtime::Lightgbm,
            Some("command") => {
                let command = self.command.context("--runtime command needs --command")?;
                spec.runtime = Runtime::Command {
                    command: command.split_whitespace().map(String::from).collect(),
                }
            }
            Some(other) => bail!("--runtime {other}: not sklearn, lightgbm or command"),
        }
        for param in self.params {
            let (key, value) = param
                .split_once('=')
                .with_context(|| format!("--param {param}: not key=value"))?;
            let value: serde_json::Value = serde_json::from_str(value)
                .unwrap_or_else(|_| serde_json::Value::String(value.into()));
            spec.params.insert(key.into(), value);
        }
        if !self.features.is_empty() {
            spec.features = self.features;
        }
        spec.exclude.extend(self.exclude);
        if let Some(task) = self.task {
            spec.task = Some(task.parse::<Task>()?);
        }
        let (mut validation, mut test) = spec.split.shares();
        validation = self.validation.unwrap_or(validation);
        test = self.test.unwrap_or(test);
        spec.split = match (self.split_by, spec.split) {
            (Some(column), _) | (None, Split::Time { column, .. }) => Split::Time {
                column,
                validation,
                test,
            },
            (None, Split::Random { seed, .. }) => Split::Random {
                validation,
                test,
                seed: self.seed.unwrap_or(seed),
            },
        };
        if let Some(experiment) = self.experiment {
            spec.experiment = experiment;
        }
        if self.name.is_some() {
            spec.name = self.name;
        }
        if self.register.is_some() {
            spec.register = self.register;
        }
        if let Some(processes) = self.processes {
            spec.distributed = Some(weir_train::spec::Distributed {
                processes,
                restarts: self.restarts,
            });
        }
        Ok(spec)
    }
}

pub async fn train(config: &Config, args: TrainArgs) -> anyhow::Result<ExitCode> {
    let spec = args.spec()?;
    let session = Session::open(config).await?;
    let workspace = session.workspace();
    let outcome = weir_train::train(&spec, workspace).await?;
    session.close().await;
    print_outcome(&spec, &outcome);
    if let Some(reason) = &outcome.failure {
        eprintln!("failed: {reason}");
        return Ok(ExitCode::FAILURE);
    }
    if let Some((name, version)) = &outcome.version {
        println!("registered {name}@{version}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The run, then its validation and test metrics side by side.
fn print_outcome(spec: &TrainSpec, outcome: &weir_train::Outcome) {
    let metric = |key: &str| outcome.metrics.get(key).copied().unwrap_or(f64::NAN);
    println!(
        "run {} (experiment {}): {} rows train / {} validation / {} test, trained in {:.2} s",
        outcome.run_id,
        spec.experiment,
        metric("train_rows"),
        metric("validation_rows"),
        metric("test_rows"),
        metric("train_seconds"),
    );
    if let Some(distributed) = &spec.distributed {
        println!(
            "  data-parallel: {} processes, {} attempt(s)",
            distributed.processes,
            metric("attempts")
        );
    }
    let scored: Vec<&str> = outcome
        .metrics
        .keys()
        .filter_map(|k| k.strip_prefix("validation_"))
        .filter(|k| *k != "rows")
        .collect();
    if !scored.is_empty() {
        println!("  {:<10} {:>10} {:>10}", "metric", "validation", "test");
        for key in scored {
            println!(
                "  {key:<10} {:>10.4} {:>10.4}",
                metric(&format!("validation_{key}")),
                metric(&format!("test_{key}"))
            );
        }
    }
    let others: Vec<String> = outcome
        .metrics
        .iter()
        .filter(|(k, _)| {
            !k.starts_with("validation_")
                && !k.starts_with("test_")
                && !k.ends_with("_rows")
                && !["train_seconds", "attempts"].contains(&k.as_str())
        })
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect();
    if !others.is_empty() {
        println!("  also: {}", others.join(", "));
    }
}

#[derive(Parser)]
pub struct EvaluateArgs {
    /// The candidate: `name@version`, `name@alias` or `name` (latest).
    model: String,
    /// A dataset version or a Parquet file holding the model's label.
    dataset: String,
    /// Break the metrics down by this column.
    #[arg(long)]
    slice: Option<String>,
    /// The alias of the model to beat.
    #[arg(long, default_value = "champion")]
    champion: String,
    /// A gate rule, `metric` or `metric:margin`: the candidate must beat
    /// the champion on it by the margin (default: `roc_auc`, or `rmse`,
    /// not worse).
    #[arg(long = "gate")]
    gate: Vec<String>,
    /// Move the champion alias to the candidate if it passes the gate.
    #[arg(long)]
    promote: bool,
    /// Write the HTML report here too (it is always kept with the run).
    #[arg(long)]
    report: Option<PathBuf>,
    /// The experiment of the evaluation's run.
    #[arg(long, default_value = "evaluations")]
    experiment: String,
}

/// Exit status 0 when the gate passes, 2 when it refuses.
pub async fn evaluate(config: &Config, args: EvaluateArgs) -> anyhow::Result<ExitCode> {
    let gate = args
        .gate
        .iter()
        .map(|rule| rule.parse::<GateRule>())
        .collect::<Result<Vec<_>, _>>()?;
    let request = EvaluationRequest {
        model: args.model,
        dataset: args.dataset,
        slice: args.slice,
        champion: args.champion.clone(),
        gate,
        experiment: args.experiment,
    };
    let session = Session::open(config).await?;
    let workspace = session.workspace();
    let evaluation = weir_train::evaluate(&request, workspace).await?;
    print_evaluation(&evaluation);
    if let Some(path) = &args.report {
        std::fs::write(path, &evaluation.report)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("report: {}", path.display());
    }
    if args.promote && evaluation.gate.passed {
        let (name, version) = evaluation
            .candidate
            .model
            .rsplit_once('@')
            .expect("name@version");
        session
            .tracker
            .set_alias(name, &args.champion, version.parse()?)
            .await?;
        println!(
            "{} is now {name}@{}",
            evaluation.candidate.model, args.champion
        );
    }
    session.close().await;
    Ok(if evaluation.gate.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

pub fn print_evaluation(evaluation: &weir_train::Evaluation) {
    let candidate = &evaluation.candidate;
    let champion = evaluation.champion.as_ref();
    println!(
        "{} on {} ({} labelled rows), run {}",
        candidate.model, evaluation.dataset, evaluation.rows, evaluation.run_id
    );
    match champion {
        Some(c) => println!(
            "  {:<12} {:>10} {:>10} {:>10}",
            "metric", "candidate", c.model, "Δ"
        ),
        None => println!("  {:<12} {:>10}", "metric", "candidate"),
    }
    for (metric, value) in &candidate.overall {
        match champion.and_then(|c| c.overall.get(metric)) {
            Some(theirs) => println!(
                "  {metric:<12} {value:>10.4} {theirs:>10.4} {:>+10.4}",
                value - theirs
            ),
            None => println!("  {metric:<12} {value:>10.4}"),
        }
    }
    for (slice, metrics) in &candidate.slices {
        let text: Vec<String> = metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
        println!("  slice {slice}: {}", text.join(", "));
    }
    println!(
        "  gate: {} — {}",
        if evaluation.gate.passed {
            "passed"
        } else {
            "refused"
        },
        evaluation.gate.reasons.join("; ")
    );
}

#[derive(Parser)]
pub struct TuneArgs {
    /// The tuning job (YAML, see docs/training.md).
    spec: PathBuf,
    /// Also start this many `weir worker` processes here, stopped at the
    /// end (0: the trials wait for workers started elsewhere).
    #[arg(long, default_value_t = 0)]
    workers: usize,
}

/// `weir tune`: publishes the trials, waits for the workers to record
/// them, reports the best.
pub async fn tune(config: &Config, args: TuneArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.spec)
        .with_context(|| format!("reading {}", args.spec.display()))?;
    let spec = TuneSpec::from_yaml(&text, &args.spec.display().to_string())?;
    // The workers start (runtimes, imports, replays) while this replays.
    let connection = connect(config).await?;
    let local = start_workers(args.workers, &spec.experiment)?;
    let session = Session::on(config, connection).await?;
    let workspace = session.workspace();
    let outcome = weir_train::tune::tune(&spec, workspace, &session.connection.bus).await;
    drop(local);
    session.close().await;
    let outcome = outcome?;
    println!(
        "parent run {} (experiment {}): {} trials",
        outcome.run_id,
        spec.experiment,
        outcome.trials.len()
    );
    for trial in &outcome.trials {
        let params: Vec<String> = trial
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "  {}{:>3}  {:>10}  {}  run {}",
            if outcome.best == Some(trial.number) {
                "*"
            } else {
                " "
            },
            trial.number,
            trial
                .value
                .map_or("failed".to_string(), |v| format!("{v:.4}")),
            params.join(" "),
            trial.run_id
        );
    }
    if let Some((name, version)) = &outcome.version {
        println!("registered the best trial's model as {name}@{version}");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Parser)]
pub struct WorkerArgs {
    /// Run the trials of this experiment's tuning jobs
    /// (`weir.jobs.<experiment>`).
    #[arg(long)]
    experiment: String,
    /// Stop after this many trials (default: until stopped).
    #[arg(long)]
    max_trials: Option<usize>,
}

/// `weir worker`: one member of the experiment's worker group. Trials come
/// from the group's partitions; each is run under a lease on `weir.meta`,
/// so a trial is run once whoever delivers it. A worker without work also
/// reads every trial on the topic (without the group) and takes any that
/// is free: new and not yet claimed — the group hands out partitions, not
/// work, so a trial may wait behind another worker's — or given up by a
/// worker that died (its lease lapsed). That is also how a dead worker's
/// trials get run where the broker never moves its partitions to the
/// others.
pub async fn worker(config: &Config, args: WorkerArgs) -> anyhow::Result<ExitCode> {
    use weir_bus::{ConsumerOptions, StartFrom, TopicSpec};
    use weir_train::tune::{Trial, TrialState};
    let connection = connect(config).await?;
    let bus = &connection.bus;
    let topic = weir_train::tune::jobs_topic(&args.experiment);
    bus.admin()
        .ensure_topic(&TopicSpec::new(&topic, weir_train::tune::JOB_PARTITIONS))
        .await?;
    let setting = |k: &str, v: &str| (k.to_string(), v.to_string());
    let mut group = bus.consumer(
        &[&topic],
        ConsumerOptions {
            group: Some(format!("weir-workers.{}", args.experiment)),
            start: StartFrom::Committed,
            settings: vec![
                // Notice a dead worker quickly; never drop a live one for
                // taking long over a trial.
                setting("session.timeout.ms", "6000"),
                setting("heartbeat.interval.ms", "1000"),
                setting("max.poll.interval.ms", "86400000"),
            ],
            ..Default::default()
        },
    )?;
    let mut everything = bus.consumer(
        &[&topic],
        ConsumerOptions {
            start: StartFrom::Beginning,
            read_only: true,
            settings: vec![setting(
                "fetch.wait.max.ms",
                weir_meta::tracker::FOLLOW_WAIT_MS,
            )],
            ..Default::default()
        },
    )?;
    let holder = format!(
        "{}/{}/{}",
        hostname(),
        std::process::id(),
        weir_meta::now_ms()
    );
    println!("worker {holder}: waiting for trials on {topic}");
    let scratch = config.state_dir.join("train");
    // One warm runtime process and the datasets' split parts, kept from
    // trial to trial.
    let cache = weir_train::JobCache::new(scratch.join(format!("worker-{}", std::process::id())));
    cache.warm_up().await?;
    let artifacts = crate::tracking::artifact_store(config)?;
    // Trials seen on any partition and not yet known to be done.
    let mut seen: BTreeMap<String, Trial> = BTreeMap::new();
    let mut idle = tokio::time::interval(Duration::from_millis(250));
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let parse = |record: &weir_bus::RawRecord| {
        let where_ = format!("{}/{}@{}", record.topic, record.partition, record.offset);
        serde_json::from_slice::<Trial>(record.payload.as_deref().unwrap_or(b""))
            .map(|trial| (trial, where_.clone()))
            .map_err(|error| eprintln!("worker: {where_}: not a trial, skipped: {error}"))
            .ok()
    };
    // The log, read once and then followed: the trials' runs and leases,
    // and the state each trial's tracker starts from.
    // Three reads of the log at once; the tracker's own also starts its
    // producer early (each trial brings it up to the follower).
    let (mut follower, mut datasets, tracker) = tokio::try_join!(
        async { Ok(weir_meta::tracker::Follower::start(bus).await?) },
        async { anyhow::Ok(Datasets::load(bus).await?) },
        async { Ok(weir_meta::Tracker::open(bus, artifacts).await?) },
    )?;
    tracing::debug!("worker: the log read");
    // Trials whose runtime is done, their runs being recorded and their
    // claims given up while the runtime starts the next trial.
    let mut recording = tokio::task::JoinSet::new();
    let mut run_here = std::collections::BTreeSet::new();
    let mut ran = 0;
    let served = async {
        while args.max_trials.is_none_or(|max| ran < max) {
            let (trial, where_) = tokio::select! {
                // The log first: what is decided below reads its state.
                biased;
                event = follower.next() => {
                    if !event? {
                        bail!("weir.meta closed");
                    }
                    continue;
                }
                record = group.next_raw() => {
                    let Some(record) = record? else { break };
                    let trial = parse(&record);
                    group.commit().await?;
                    match trial {
                        // One another worker has already run (or is running) is
                        // passed over without a claim.
                        Some((trial, where_)) => match trial.state(follower.state(), weir_meta::now_ms()) {
                            TrialState::Recorded | TrialState::Closed => continue,
                            TrialState::Held { holder: h, .. } if h != holder => continue,
                            _ => (trial, where_),
                        },
                        None => continue,
                    }
                }
                record = everything.next_raw() => {
                    let record = record?.context("the jobs topic ended")?;
                    let Some((trial, where_)) = parse(&record) else { continue };
                    seen.insert(trial.id(), trial.clone());
                    // An idle worker takes a new trial at once, whichever
                    // worker's partition it came on: the claim decides.
                    match trial.state(follower.state(), weir_meta::now_ms()) {
                        TrialState::Open { .. } => (trial, where_),
                        _ => continue,
                    }
                }
                _ = idle.tick(), if !seen.is_empty() => {
                    let now = weir_meta::now_ms();
                    let state = follower.state();
                    seen.retain(|_, trial| {
                        !matches!(trial.state(state, now), TrialState::Recorded | TrialState::Closed)
                    });
                    let free = seen
                        .values()
                        .find(|trial| matches!(trial.state(state, now), TrialState::Open { .. }));
                    match free {
                        Some(trial) => (trial.clone(), "taken over".to_string()),
                        None => continue,
                    }
                }
                _ = tokio::signal::ctrl_c() => break,
            };
            tracing::debug!(trial = %trial.id(), %where_, "worker: a trial to claim");
            // Both consumers deliver each trial, and one this worker ran
            // is still held by it while its run is being recorded: it is
            // not run twice.
            if run_here.contains(&trial.id()) {
                continue;
            }
            if let Some(state) =
                weir_train::tune::claim_trial(&trial, &tracker, &mut follower, &holder).await?
            {
                if !matches!(state, TrialState::Recorded | TrialState::Closed) {
                    println!(
                        "worker: trial {} ({where_}): {state:?}; not run here",
                        trial.id()
                    );
                }
                continue;
            }
            tracing::debug!(trial = %trial.id(), "worker: claimed");
            run_here.insert(trial.id());
            println!("worker: trial {} ({where_}): running", trial.id());
            // Dataset versions do not change; a name without a version
            // means the latest, which may be new.
            let dataset = &trial.job.dataset;
            if !std::path::Path::new(dataset).is_file()
                && (!dataset.contains('@') || datasets.find(dataset).is_none())
            {
                datasets = Datasets::load(bus).await?;
            }
            let workspace = Workspace {
                tracker: &tracker,
                datasets: &datasets,
                scratch: &scratch,
                cache: Some(&cache),
            };
            // While the runtime starts this trial (its job does not read
            // the tracker), the last trial's run goes to the log, then the
            // tracker gets to where the follower has read (up to the
            // claim): no replay of the log per trial. The run goes first:
            // the tracker may take the follower's state, which has not
            // read it yet. Both take milliseconds; the claim's first
            // renewal comes after a third of its lease.
            let ready = async {
                while let Some(recorded) = recording.join_next().await {
                    recorded??;
                }
                tracker.catch_up_with(bus, &follower).await?;
                anyhow::Ok(())
            };
            let (ready, trial_ran) = tokio::join!(
                ready,
                weir_train::tune::run_trial(&trial, workspace, &holder)
            );
            ready?;
            let trial_ran = trial_ran?;
            let (tracker, id) = (tracker.clone(), trial.id());
            recording.spawn(async move {
                let outcome = trial_ran.record(&tracker).await?;
                println!(
                    "worker: trial {id}: run {} {}",
                    outcome.run_id,
                    outcome.failure.as_deref().unwrap_or("finished")
                );
                anyhow::Ok(())
            });
            ran += 1;
        }
        anyhow::Ok(())
    }
    .await;
    // Runs still being recorded are finished, even when the worker stops
    // on an error.
    while let Some(recorded) = recording.join_next().await {
        recorded??;
    }
    served?;
    tracker.close().await;
    connection.close().await;
    Ok(ExitCode::SUCCESS)
}

/// This machine's name, for naming a worker.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

#[derive(Parser)]
pub struct AutomlArgs {
    /// The data, label, features and split, as for `weir train` (a job
    /// file or the options); the runtime and its params are chosen here.
    #[command(flatten)]
    job: TrainArgs,
    /// Trials in all, shared by the families.
    #[arg(long, default_value_t = 16)]
    trials: usize,
    /// Trials out at once.
    #[arg(long, default_value_t = 2)]
    parallel: usize,
    /// Time budget for the whole search, in seconds.
    #[arg(long, default_value_t = 1800)]
    budget_s: u64,
    /// Families to try: linear, gbdt, forest, mlp (default: all).
    #[arg(long, value_delimiter = ',')]
    families: Vec<String>,
    /// Also start this many `weir worker` processes here.
    #[arg(long, default_value_t = 0)]
    workers: usize,
}

/// Local workers for a search, stopped (killed) when dropped. They share
/// this machine's cores: unless `OMP_NUM_THREADS` is set, each worker's
/// runtimes get an OpenMP pool (LightGBM's, scikit-learn's boosting) of
/// its share, since N processes each spinning a pool over every core slow
/// one another down.
fn start_workers(count: usize, experiment: &str) -> anyhow::Result<Vec<tokio::process::Child>> {
    let share = runtime_threads(count);
    (0..count)
        .map(|_| {
            let mut command = tokio::process::Command::new(std::env::current_exe()?);
            command
                .args(["worker", "--experiment", experiment])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true);
            if std::env::var_os("OMP_NUM_THREADS").is_none() {
                command.env("OMP_NUM_THREADS", &share);
            }
            command.spawn().context("starting a local worker")
        })
        .collect()
}

/// The OpenMP threads each of `workers` local workers' runtimes gets: its
/// share of this machine's cores.
pub(crate) fn runtime_threads(workers: usize) -> String {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores / workers.max(1)).max(1).to_string()
}

/// `weir automl`: each family tuned in turn, the best registered.
pub async fn automl(config: &Config, args: AutomlArgs) -> anyhow::Result<ExitCode> {
    let seed = args.job.seed.unwrap_or(0);
    let job = args.job.spec()?;
    if job.distributed.is_some() {
        bail!("automl trains each candidate in one process; leave out --processes");
    }
    let spec = weir_train::automl::AutomlSpec {
        experiment: job.experiment.clone(),
        register: job.register.clone(),
        job,
        families: args.families,
        trials: args.trials,
        parallel: args.parallel,
        budget: std::time::Duration::from_secs(args.budget_s),
        seed,
    };
    let connection = connect(config).await?;
    let workers = start_workers(args.workers, &spec.experiment)?;
    let session = Session::on(config, connection).await?;
    let workspace = session.workspace();
    let outcome = weir_train::automl::automl(&spec, workspace, &session.connection.bus).await;
    drop(workers);
    session.close().await;
    let outcome = outcome?;
    println!(
        "{:<8} {:>7} {:>12}  best params",
        "family", "trials", outcome.objective
    );
    for (family, tuning) in &outcome.families {
        let best = tuning
            .best
            .and_then(|n| tuning.trials.iter().find(|t| t.number == n));
        println!(
            "{family:<8} {:>7} {:>12}  {}",
            tuning.trials.len(),
            best.and_then(|t| t.value)
                .map_or("-".into(), |v| format!("{v:.4}")),
            best.map_or(String::new(), |t| serde_json::to_string(&t.params)
                .unwrap_or_default())
        );
    }
    match &outcome.best {
        Some((family, trial)) => println!(
            "best: {family}, {} {:.4}, run {}",
            outcome.objective,
            trial.value.unwrap_or(f64::NAN),
            trial.run_id
        ),
        None => println!("no trial finished"),
    }
    if !outcome.test.is_empty() {
        let shown: Vec<String> = ["roc_auc", "accuracy", "f1", "log_loss", "rmse", "mae", "r2"]
            .iter()
            .filter_map(|key| Some(format!("{key} {:.4}", outcome.test.get(*key)?)))
            .collect();
        println!("test (the winner only): {}", shown.join(", "));
    }
    if let Some((name, version)) = &outcome.version {
        println!("registered {name}@{version}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `weir runs reproduce RUN`: the run's job again, the metrics side by side.
pub async fn reproduce(config: &Config, run: &str) -> anyhow::Result<ExitCode> {
    let session = Session::open(config).await?;
    let workspace = session.workspace();
    let outcome = weir_train::reproduce(run, workspace).await;
    let original = session
        .tracker
        .read(|state| state.run(run).map(|r| r.latest.clone()))?;
    session.close().await;
    let outcome = outcome?;
    if let Some(reason) = &outcome.failure {
        eprintln!("run {} failed: {reason}", outcome.run_id);
        return Ok(ExitCode::FAILURE);
    }
    println!("run {} reproduces {run}", outcome.run_id);
    println!("  {:<24} {:>12} {:>12}", "metric", "original", "again");
    let mut same = true;
    for (key, value) in &outcome.metrics {
        if key.ends_with("seconds") {
            continue;
        }
        let before = original.get(key).map(|m| m.value);
        same &= before == Some(*value);
        println!(
            "  {key:<24} {:>12} {value:>12.6}",
            before.map_or("-".into(), |v| format!("{v:.6}"))
        );
    }
    println!(
        "{}",
        if same {
            "identical metrics"
        } else {
            "metrics differ"
        }
    );
    Ok(ExitCode::SUCCESS)
}
