//! `weir tune`, `weir worker` and `weir automl`: searches whose trials
//! `weir worker` processes run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Parser;
use weir_broker::connect::connect;
use weir_core::Config;
use weir_train::tune::TuneSpec;

use crate::session::Session;
use crate::train::TrainArgs;

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
    let seed = args.job.seed().unwrap_or(0);
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
