//! `weir train` and `weir evaluate`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Parser;
use weir_core::Config;
use weir_train::spec::{Runtime, Split, Task, TrainSpec};
use weir_train::tune::TuneSpec;
use weir_train::{EvaluationRequest, GateRule};

use crate::session::Session;
use weir_broker::connect::connect;

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
    if let Some(reason) = &outcome.failure {
        // A failed run has no timings or metrics to print.
        eprintln!(
            "run {} (experiment {}) failed: {reason}",
            outcome.run_id, spec.experiment
        );
        return Ok(ExitCode::FAILURE);
    }
    print_outcome(&spec, &outcome);
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
    /// A dataset version or a Parquet or CSV file holding the model's
    /// label; omitted, the rows the model's training run held out (the test
    /// part of its recorded split).
    dataset: Option<String>,
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

/// Exit status 0 when the gate passes (or is skipped: the candidate is the
/// champion), 2 when it refuses.
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
    if args.promote && evaluation.gate.passed() {
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
    Ok(if evaluation.gate.refused() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
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
        evaluation.gate.verdict.as_str(),
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

/// `weir worker`: runs the experiment's trials until Ctrl-C (see
/// `weir_train::tune::run_worker`), printing what it does.
pub async fn worker(config: &Config, args: WorkerArgs) -> anyhow::Result<ExitCode> {
    use weir_train::tune::{WorkerEvent, WorkerOptions, run_worker};
    let connection = connect(config).await?;
    let options = WorkerOptions {
        experiment: args.experiment,
        max_trials: args.max_trials,
        scratch: config.state_dir.join("train"),
        artifacts: weir_meta::artifacts::ArtifactStore::under(&config.state_dir)?,
    };
    let report = std::sync::Arc::new(|event: WorkerEvent| match event {
        WorkerEvent::Waiting { holder, topic } => {
            println!("worker {holder}: waiting for trials on {topic}")
        }
        WorkerEvent::NotATrial { at, error } => {
            eprintln!("worker: {at}: not a trial, skipped: {error}")
        }
        WorkerEvent::NotRunHere { trial, at, state } => {
            println!("worker: trial {trial} ({at}): {state:?}; not run here")
        }
        WorkerEvent::Running { trial, at } => println!("worker: trial {trial} ({at}): running"),
        WorkerEvent::Recorded {
            trial,
            run_id,
            failure,
        } => println!(
            "worker: trial {trial}: run {run_id} {}",
            failure.as_deref().unwrap_or("finished")
        ),
    });
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let ran = run_worker(&connection.bus, options, stop, report).await;
    connection.close().await;
    ran?;
    Ok(ExitCode::SUCCESS)
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
    let share = weir_train::runtime::threads_per_worker(count);
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

/// `weir runs reproduce RUN`: the run's job again, the metrics side by
/// side; exit status 1 when one moved beyond `tolerance`.
pub async fn reproduce(config: &Config, run: &str, tolerance: f64) -> anyhow::Result<ExitCode> {
    let session = Session::open(config).await?;
    let reproduction = weir_train::reproduce(run, session.workspace()).await;
    session.close().await;
    let reproduction = reproduction?;
    let outcome = &reproduction.outcome;
    if let Some(reason) = &outcome.failure {
        eprintln!("run {} failed: {reason}", outcome.run_id);
        return Ok(ExitCode::FAILURE);
    }
    println!("run {} reproduces {run}", outcome.run_id);
    println!("  {:<24} {:>12} {:>12}", "metric", "original", "again");
    for (key, before, again) in &reproduction.metrics {
        println!(
            "  {key:<24} {:>12} {again:>12.6}",
            before.map_or("-".into(), |v| format!("{v:.6}"))
        );
    }
    let differing = reproduction.differing(tolerance);
    if differing.is_empty() {
        println!("metrics reproduced (tolerance {tolerance:e})");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "metrics differ beyond {tolerance:e}: {}",
            differing.join(", ")
        );
        Ok(ExitCode::FAILURE)
    }
}
