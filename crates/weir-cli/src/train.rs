//! `weir train`, `weir evaluate` and `weir runs reproduce`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use weir_core::Config;
use weir_train::overrides::Overrides;
use weir_train::spec::TrainSpec;
use weir_train::{EvaluationRequest, GateRule};

use crate::session::Session;

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
    pub fn spec(self) -> anyhow::Result<TrainSpec> {
        let job = match &self.spec {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                Some(TrainSpec::from_yaml(&text, &path.display().to_string())?)
            }
            None => None,
        };
        let overrides = Overrides {
            dataset: self.dataset,
            label: self.label,
            runtime: self.runtime,
            estimator: self.estimator,
            command: self.command,
            params: self.params,
            features: self.features,
            exclude: self.exclude,
            task: self.task,
            split_by: self.split_by,
            validation: self.validation,
            test: self.test,
            seed: self.seed,
            experiment: self.experiment,
            name: self.name,
            register: self.register,
            processes: self.processes,
            restarts: self.restarts,
        };
        Ok(overrides.apply(job)?)
    }

    /// The seed given, if any (AutoML seeds its search with it).
    pub fn seed(&self) -> Option<u64> {
        self.seed
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
        promote: args.promote,
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
    if evaluation.promoted {
        let candidate: weir_catalog::Reference = evaluation.candidate.model.parse()?;
        println!("{candidate} is now {}@{}", candidate.name, args.champion);
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
