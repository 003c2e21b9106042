//! `weir bench automl`: Weir's tuning (`weir tune`, TPE, trials on a topic
//! run by `weir worker` processes) against Optuna's TPE
//! (`python/bench/optuna_tune.py`, `n_jobs` threads) on the same generated
//! data, the same LightGBM objective (validation ROC AUC), the same split
//! (by time: 60% train, 20% validation), the same space and trial budget.
//!
//! Reported: wall time, best validation ROC AUC, and the per-trial overhead
//! outside the fit itself — `(wall × workers − Σ fit) / trials`. Both walls
//! are whole processes, start-up included: Optuna's interpreter, imports
//! and data loading; Weir's broker, workers and their warm runtimes. (The
//! time Optuna spends in `optimize` alone is printed too.) Weir runs a
//! second time with a standing pool: the broker and workers started
//! before and their runtimes imported, `weir tune` alone timed, as workers
//! waiting on the jobs topic serve a tuning job. A Weir trial also records
//! a run with its params, metrics and fitted model; Optuna's trial only
//! fits and scores. Weir scores the test rows and exports the kept model
//! to ONNX only when it is registered (the bench registers none).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use arrow::array::{ArrayRef, BooleanArray, Float32Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use crate::{SpawnGroup as _, free_port};

#[derive(clap::Args)]
pub struct Args {
    /// Rows of the generated dataset.
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Trials, for each tool.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Weir's worker processes; Optuna's `n_jobs`.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Seed of the data and the samplers.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Rounds of the three runs, one after another; more than one also
    /// prints each figure's median.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

const FEATURES: usize = 30;

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let python = PathBuf::from(std::env::var_os("WEIR_PYTHON").context(
        "WEIR_PYTHON is not set: run `cargo xtask bench automl` (its Python environment has the runtimes and Optuna)",
    )?);
    // The embedded broker's SQLite file must sit under the working
    // directory (libsql's URL rules).
    let dir = std::env::current_dir()?.join(format!(".weir-bench-automl-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = compare(&args, &python, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn compare(args: &Args, python: &Path, dir: &Path) -> anyhow::Result<ExitCode> {
    if args.rounds == 0 {
        bail!("--rounds: at least 1");
    }
    println!(
        "weir bench automl: {} rows × {FEATURES} features, LightGBM, TPE, {} trials, {} workers; objective validation ROC AUC (time split 60/20/20)",
        args.rows, args.trials, args.workers
    );
    let data = dir.join("data.parquet");
    generate(&data, args.rows, args.seed)?;
    let spec = dir.join("tune.yaml");
    std::fs::write(
        &spec,
        format!(
            "experiment: bench-automl
job:
  dataset: {data}
  label: label
  exclude: [t]
  split: {{by: time, column: t, validation: 0.2, test: 0.2}}
  runtime: {{kind: lightgbm}}
  params: {{random_state: 0}}
space:
  n_estimators: {{int: [20, 200]}}
  learning_rate: {{loguniform: [0.02, 0.3]}}
  num_leaves: {{choice: [8, 16, 32, 64]}}
search: {{method: tpe, trials: {trials}, parallel: {workers}, seed: {seed}, timeout_s: 7200}}
",
            data = data.display(),
            trials = args.trials,
            workers = args.workers,
            seed = args.seed,
        ),
    )?;
    let mut rounds = Vec::with_capacity(args.rounds);
    for round in 0..args.rounds {
        let state = |name: &str| dir.join(format!("{name}-{round}"));
        let cold = tune_weir(args, python, &state("state"), &spec, false).await?;
        let standing = tune_weir(args, python, &state("state-standing"), &spec, true).await?;
        let optuna = tune_optuna(args, python, &data).await?;
        let round = Round {
            cold,
            standing,
            optuna,
        };
        if args.rounds > 1 {
            println!("round {}:", rounds.len() + 1);
        }
        round.print(args);
        rounds.push(round);
    }
    if args.rounds > 1 {
        print_medians(args, &rounds);
    }
    Ok(ExitCode::SUCCESS)
}

/// One side-by-side run of each tool.
struct Round {
    cold: WeirRun,
    standing: WeirRun,
    optuna: OptunaRun,
}

/// `(wall × workers − Σ fit) / trials`, in ms.
fn overhead(args: &Args, wall: f64, fit: f64) -> f64 {
    (wall * args.workers as f64 - fit) / args.trials as f64 * 1000.0
}

impl Round {
    /// Each tool's run: its name, wall seconds, best metric and Σ fit.
    fn runs(&self) -> [(&'static str, f64, f64, f64); 4] {
        let (cold, standing, optuna) = (&self.cold, &self.standing, &self.optuna);
        [
            ("weir", cold.wall, cold.best, cold.fit),
            ("optuna", optuna.process, optuna.best, optuna.fit),
            ("weir standing", standing.wall, standing.best, standing.fit),
            (
                "optuna optimize()",
                optuna.optimize,
                optuna.best,
                optuna.fit,
            ),
        ]
    }

    fn print(&self, args: &Args) {
        let Round {
            cold,
            standing,
            optuna,
        } = self;
        println!(
            "{:<8} {:>9} {:>11} {:>10} {:>20}",
            "", "wall s", "best AUC", "Σ fit s", "overhead ms/trial"
        );
        for &(name, wall, best, fit) in &self.runs()[..2] {
            println!(
                "{name:<8} {wall:>9.1} {best:>11.4} {fit:>10.1} {:>20.0}",
                overhead(args, wall, fit)
            );
        }
        println!(
            "weir with a standing pool (broker and workers started {} s before, runtimes imported; `weir tune` alone timed): {:.1} s, best AUC {:.4}, {:.0} ms/trial overhead",
            WARM_UP.as_secs(),
            standing.wall,
            standing.best,
            overhead(args, standing.wall, standing.fit)
        );
        println!(
            "optuna's optimize() alone (no start-up, imports or data loading): {:.1} s, {:.0} ms/trial overhead",
            optuna.optimize,
            overhead(args, optuna.optimize, optuna.fit)
        );
        println!(
            "weir: the warm runtime took {:.0} ms a trial on average beyond its fit (scoring, pickling the model; and the first trial's Python start-up and imports)",
            (cold.runtime - cold.fit) / args.trials as f64 * 1000.0
        );
        println!(
            "best AUC weir − optuna: {:+.4} (target: not worse); wall weir / optuna: {:.2}",
            cold.best - optuna.best,
            cold.wall / optuna.process
        );
    }
}

/// The median of each figure over the rounds: one run's figures vary by
/// as much as the tools differ (the machine's other load, the samplers'
/// paths through the space).
fn print_medians(args: &Args, rounds: &[Round]) {
    let median = |figure: &dyn Fn(&Round) -> f64| {
        let mut values: Vec<f64> = rounds.iter().map(figure).collect();
        values.sort_by(f64::total_cmp);
        let n = values.len();
        if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        }
    };
    println!("median of {} rounds:", rounds.len());
    println!(
        "{:<18} {:>9} {:>11} {:>20}",
        "", "wall s", "best AUC", "overhead ms/trial"
    );
    for (i, (name, ..)) in rounds[0].runs().iter().enumerate() {
        let run = |r: &Round| r.runs()[i];
        println!(
            "{name:<18} {:>9.1} {:>11.4} {:>20.0}",
            median(&|r| run(r).1),
            median(&|r| run(r).2),
            median(&|r| {
                let (_, wall, _, fit) = run(r);
                overhead(args, wall, fit)
            })
        );
    }
    println!(
        "median best AUC weir − optuna: {:+.4}; median wall weir / optuna: {:.2}",
        median(&|r| r.cold.best - r.optuna.best),
        median(&|r| r.cold.wall / r.optuna.process)
    );
}

/// One Optuna run: the whole process's wall time, `optimize`'s alone, the
/// summed fit seconds and the best validation metric.
struct OptunaRun {
    process: f64,
    optimize: f64,
    fit: f64,
    best: f64,
}

async fn tune_optuna(args: &Args, python: &Path, data: &Path) -> anyhow::Result<OptunaRun> {
    let started = Instant::now();
    let output = tokio::process::Command::new(python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../python/bench/optuna_tune.py"))
        .arg(data)
        .args([
            args.trials.to_string(),
            args.workers.to_string(),
            args.seed.to_string(),
        ])
        .output()
        .await?;
    let process = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!("optuna: {}", String::from_utf8_lossy(&output.stderr));
    }
    let report: serde_json::Value = serde_json::from_slice(
        output
            .stdout
            .rsplit(|b| *b == b'\n')
            .find(|l| !l.is_empty())
            .unwrap_or_default(),
    )?;
    let number = |key: &str| report[key].as_f64().unwrap_or(f64::NAN);
    Ok(OptunaRun {
        process,
        optimize: number("wall"),
        fit: number("fit"),
        best: number("best"),
    })
}

/// How long a standing pool's workers get to import their runtimes.
const WARM_UP: std::time::Duration = std::time::Duration::from_secs(8);

/// One `weir tune`: its wall time, best validation metric, and the trials'
/// summed fit and runtime seconds (`fit_seconds`, `train_seconds`).
struct WeirRun {
    wall: f64,
    best: f64,
    fit: f64,
    runtime: f64,
}

/// `weir tune` on a broker of its own and state under `state`. Cold: it
/// starts the embedded broker and its workers itself (`--workers`), all
/// timed. Standing: `weir broker` and the workers are started first and
/// given [`WARM_UP`] to import their runtimes, as a pool waiting on the
/// jobs topic would be; only `weir tune` is timed.
async fn tune_weir(
    args: &Args,
    python: &Path,
    state: &Path,
    spec: &Path,
    standing: bool,
) -> anyhow::Result<WeirRun> {
    let port = free_port()?;
    let address = port.to_string();
    let weir = |words: &[&str]| {
        let mut command = tokio::process::Command::new(std::env::current_exe().expect("weir"));
        command
            .args(words)
            .env("WEIR_STATE_DIR", state)
            .env("WEIR_EMBEDDED_BROKER", &address)
            .env("WEIR_PYTHON", python)
            .env_remove("WEIR_BROKERS");
        command
    };
    // Killed when dropped, at the end.
    let mut pool = Vec::new();
    if standing {
        let registry = free_port()?.to_string();
        let (broker, _) =
            crate::start_listening(weir(&["broker", "--registry", &registry]), port).await?;
        pool.push(broker);
        for _ in 0..args.workers {
            let mut worker = weir(&["worker", "--experiment", "bench-automl"]);
            worker
                .env(
                    "OMP_NUM_THREADS",
                    weir_train::runtime::threads_per_worker(args.workers),
                )
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            pool.push(worker.spawn_group()?);
        }
        tokio::time::sleep(WARM_UP).await;
    }
    let workers = if standing { 0 } else { args.workers };
    let started = Instant::now();
    let tuned = weir(&[
        "tune",
        spec.to_str().context("a UTF-8 path")?,
        "--workers",
        &workers.to_string(),
    ])
    .output()
    .await?;
    let wall = started.elapsed().as_secs_f64();
    if !tuned.status.success() {
        bail!("weir tune: {}", String::from_utf8_lossy(&tuned.stderr));
    }
    let report = String::from_utf8_lossy(&tuned.stdout);
    let best = report
        .lines()
        .find(|l| l.trim_start().starts_with('*'))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .context("the best trial in weir tune's report")?;
    let runs = weir(&["runs", "list", "bench-automl"]).output().await?;
    let runs = String::from_utf8_lossy(&runs.stdout);
    let metric = |name: &str| -> f64 {
        runs.lines()
            .filter(|l| l.contains(" trial-"))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{name}=")))
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .sum()
    };
    drop(pool);
    Ok(WeirRun {
        wall,
        best,
        fit: metric("fit_seconds"),
        runtime: metric("train_seconds"),
    })
}

/// Rows with 30 features (10 informative, with interactions), a time `t`
/// and a boolean label.
fn generate(path: &Path, rows: usize, seed: u64) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut columns: Vec<Vec<f32>> = (0..FEATURES).map(|_| Vec::with_capacity(rows)).collect();
    let mut labels = Vec::with_capacity(rows);
    for _ in 0..rows {
        let x: Vec<f32> = (0..FEATURES)
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect();
        let signal = x[..10].iter().sum::<f32>() + 2.0 * x[0] * x[1] - 1.5 * x[2].abs()
            + rng.random::<f32>() * 2.0
            - 1.0;
        labels.push(signal > 0.0);
        for (column, value) in columns.iter_mut().zip(x) {
            column.push(value);
        }
    }
    let mut fields = vec![Field::new("t", DataType::Int64, false)];
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_iter_values(0..rows as i64))];
    for (j, column) in columns.into_iter().enumerate() {
        fields.push(Field::new(format!("f{j:02}"), DataType::Float32, false));
        arrays.push(Arc::new(Float32Array::from(column)));
    }
    fields.push(Field::new("label", DataType::Boolean, false));
    arrays.push(Arc::new(BooleanArray::from(labels)));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?;
    let mut writer = ArrowWriter::try_new(std::fs::File::create(path)?, batch.schema(), None)?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(())
}
