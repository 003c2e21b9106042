//! AutoML: a search over model families — linear, gradient-boosted trees,
//! random forest, a small neural network — and their params, each family a
//! TPE tuning job ([`crate::tune`]) of the scikit-learn runtime under a
//! share of the trial and time budget. The best trial by the validation
//! objective wins; its test metrics (the part no choice was made on) are
//! its run's, and it is registered.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::TrainError;
use crate::job::{Workspace, resolve};
use crate::metrics::Metrics;
use crate::spec::{Runtime, Task, TrainSpec};
use crate::table::Table;
use crate::tune::{Objective, Param, Search, TrialResult, TuneOutcome, TuneSpec, keep_trial, tune};

/// The families searched, in order.
pub const FAMILIES: [&str; 4] = ["linear", "gbdt", "forest", "mlp"];

/// An AutoML job.
#[derive(Debug, Clone)]
pub struct AutomlSpec {
    /// The experiment of its runs.
    pub experiment: String,
    /// The data, label, features and split (its runtime and params are
    /// chosen here).
    pub job: TrainSpec,
    /// Families to try (default: all of [`FAMILIES`]).
    pub families: Vec<String>,
    /// Trials in all, shared evenly by the families.
    pub trials: usize,
    /// Trials out at once.
    pub parallel: usize,
    /// Time budget for the whole search.
    pub budget: Duration,
    /// Seed of the samplers.
    pub seed: u64,
    /// Registers the best model as a new version of this model.
    pub register: Option<String>,
}

/// How an AutoML job ended.
#[derive(Debug, Clone)]
pub struct AutomlOutcome {
    /// The objective (`validation_roc_auc`, `validation_rmse`).
    pub objective: String,
    /// Each family's tuning job.
    pub families: Vec<(String, TuneOutcome)>,
    /// The winner: its family and trial.
    pub best: Option<(String, TrialResult)>,
    /// The winner's metrics on the test rows (`roc_auc`, `rmse`…).
    pub test: Metrics,
    /// The version registered from it.
    pub version: Option<(String, u64)>,
}

/// A family's estimator and search space for a task.
pub fn family(name: &str, task: Task) -> Result<(String, BTreeMap<String, Param>), TrainError> {
    let classification = task == Task::Classification;
    let pick = |c: &str, r: &str| if classification { c } else { r }.to_string();
    let space = |params: Vec<(&str, Param)>| {
        params
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<BTreeMap<_, _>>()
    };
    Ok(match name {
        "linear" => (
            pick("LogisticRegression", "Ridge"),
            space(vec![if classification {
                ("C", Param::Loguniform([1e-3, 100.0]))
            } else {
                ("alpha", Param::Loguniform([1e-3, 100.0]))
            }]),
        ),
        "gbdt" => (
            pick(
                "HistGradientBoostingClassifier",
                "HistGradientBoostingRegressor",
            ),
            space(vec![
                ("learning_rate", Param::Loguniform([0.02, 0.3])),
                ("max_iter", Param::Int([50, 300])),
                ("max_leaf_nodes", Param::Int([8, 64])),
            ]),
        ),
        "forest" => (
            pick("RandomForestClassifier", "RandomForestRegressor"),
            space(vec![
                ("n_estimators", Param::Int([50, 200])),
                ("max_depth", Param::Int([3, 16])),
                ("min_samples_leaf", Param::Int([1, 10])),
            ]),
        ),
        "mlp" => (
            pick("MLPClassifier", "MLPRegressor"),
            space(vec![
                (
                    "hidden_layer_sizes",
                    Param::Choice(vec![json!([16]), json!([32]), json!([32, 16])]),
                ),
                ("alpha", Param::Loguniform([1e-5, 1e-2])),
            ]),
        ),
        other => {
            return Err(TrainError::Invalid(format!(
                "automl: family `{other}`: one of {}",
                FAMILIES.join(", ")
            )));
        }
    })
}

/// Runs an AutoML job (trials run by workers, as for [`tune`]).
pub async fn automl(
    spec: &AutomlSpec,
    workspace: Workspace<'_>,
    bus: &weir_bus::Bus,
) -> Result<AutomlOutcome, TrainError> {
    let task = match spec.job.task {
        Some(task) => task,
        None => {
            let source = resolve(&spec.job.dataset, workspace.datasets)?;
            Table::read_files(&source.files, &source.reference)?.infer_task(&spec.job.label)?
        }
    };
    let objective = Objective {
        metric: match task {
            Task::Classification => "validation_roc_auc",
            Task::Regression => "validation_rmse",
        }
        .into(),
        goal: None,
    };
    let maximize = objective.maximize()?;
    let families: Vec<String> = if spec.families.is_empty() {
        FAMILIES.iter().map(|f| f.to_string()).collect()
    } else {
        spec.families.clone()
    };
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for (i, name) in families.iter().enumerate() {
        let left = spec.budget.saturating_sub(started.elapsed());
        if left.is_zero() {
            tracing::warn!(family = %name, "automl: out of time; family not tried");
            break;
        }
        let (estimator, space) = family(name, task)?;
        // Trials left, shared by the families left.
        let done: usize = outcomes
            .iter()
            .map(|(_, o): &(String, TuneOutcome)| o.trials.len())
            .sum();
        let trials = (spec.trials.saturating_sub(done) / (families.len() - i)).max(1);
        let mut job = spec.job.clone();
        job.task = Some(task);
        job.runtime = Runtime::Sklearn { estimator };
        job.params.clear();
        if name == "linear" || name == "mlp" {
            job.params.insert("max_iter".into(), json!(500));
        }
        let tuning = TuneSpec {
            experiment: spec.experiment.clone(),
            name: Some(format!("automl-{name}")),
            job,
            space,
            search: Search {
                method: "tpe".into(),
                trials,
                parallel: spec.parallel,
                ahead: 1,
                seed: spec.seed + i as u64,
                timeout_s: left.as_secs().max(1),
            },
            objective: objective.clone(),
            register: None,
            export: Default::default(),
        };
        outcomes.push((name.clone(), tune(&tuning, workspace, bus).await?));
    }
    let better = |a: f64, b: f64| if maximize { a > b } else { a < b };
    let mut best: Option<(String, TrialResult)> = None;
    for (name, outcome) in &outcomes {
        for trial in &outcome.trials {
            let Some(value) = trial.value.filter(|v| v.is_finite()) else {
                continue;
            };
            if best
                .as_ref()
                .is_none_or(|(_, b)| better(value, b.value.expect("scored")))
            {
                best = Some((name.clone(), trial.clone()));
            }
        }
    }
    let (mut version, mut test) = (None, Metrics::new());
    if let Some((_, trial)) = &best {
        // The winner is exported and meets the test rows, on which no
        // choice was made.
        let (number, metrics) =
            keep_trial(bus, workspace, &trial.run_id, spec.register.as_deref()).await?;
        version = spec.register.clone().zip(number);
        test = metrics;
    }
    Ok(AutomlOutcome {
        objective: objective.metric,
        families: outcomes,
        best,
        test,
        version,
    })
}
