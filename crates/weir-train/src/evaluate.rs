//! Evaluation: a registered model version scored on a dataset through ONNX
//! Runtime, overall and by slice, next to the champion (a registry alias),
//! with the metric history of the model's versions and a promotion gate.
//! Each evaluation is recorded as a run, its report as the run's artifact.

use std::collections::BTreeMap;

use weir_meta::Tracker;
use weir_meta::event::{KeyValue, Metric, ModelInfo};
use weir_meta::tracker::RunReport;
use weir_onnx::{Model, SessionOptions};

pub use crate::evaluation::{Curves, Evaluation, Gate, Scored, Verdict};

use crate::TrainError;
use crate::job::{Workspace, resolve, score, scores};
use crate::metrics::{self, Metrics};
use crate::spec::Task;
use crate::table::{Table, Target};

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvaluationRequest {
    /// The candidate: `name@version`, `name@alias` or `name` (latest).
    pub model: String,
    /// A dataset version or a Parquet or CSV file, with the model's label
    /// column; `None`: the rows the candidate's training run held out (the
    /// test part of its recorded split of its dataset).
    pub dataset: Option<String>,
    /// A column to break the metrics down by.
    pub slice: Option<String>,
    /// The alias of the model to beat.
    pub champion: String,
    /// The promotion gate; when empty, the task's main metric (`roc_auc`,
    /// or `rmse` for a regression) must not be worse than the champion's.
    pub gate: Vec<GateRule>,
    /// The experiment the evaluation's run goes to.
    pub experiment: String,
    /// Move the champion alias to the candidate when it passes the gate.
    pub promote: bool,
}

/// A gate rule: the candidate beats the champion on `metric` by at least
/// `margin`, in the metric's better direction.
#[derive(Debug, Clone, PartialEq)]
pub struct GateRule {
    /// The metric.
    pub metric: String,
    /// How much better (0: not worse).
    pub margin: f64,
}

impl std::str::FromStr for GateRule {
    type Err = TrainError;

    /// `roc_auc` or `roc_auc:0.01`.
    fn from_str(text: &str) -> Result<Self, TrainError> {
        let (metric, margin) = text.split_once(':').unwrap_or((text, "0"));
        if metrics::higher_is_better(metric).is_none() {
            return Err(TrainError::Invalid(format!(
                "gate `{text}`: `{metric}` is not a metric Weir knows which way is better \
                 (accuracy, precision, recall, f1, roc_auc, pr_auc, log_loss, ece, rmse, mae, r2)"
            )));
        }
        let margin = margin.parse::<f64>().map_err(|_| {
            TrainError::Invalid(format!("gate `{text}`: margin `{margin}` is not a number"))
        })?;
        Ok(Self {
            metric: metric.into(),
            margin,
        })
    }
}

/// Evaluates `request.model` on `request.dataset`.
pub async fn evaluate(
    request: &EvaluationRequest,
    workspace: Workspace<'_>,
) -> Result<Evaluation, TrainError> {
    let started = weir_core::now_ms();
    let tracker = workspace.tracker;
    let (candidate_at, run_id, info, champion, is_champion) = tracker.read(|state| {
        let (model, version) = state.version_by_reference(&request.model)?;
        let info = version.model.clone().ok_or_else(|| {
            TrainError::Invalid(format!(
                "{}@{} has no ONNX model Weir knows of (registered by `weir train`?)",
                model.name, version.version
            ))
        })?;
        let champion_version = model.aliases.get(&request.champion).copied();
        let champion = champion_version
            .filter(|&v| v != version.version)
            .and_then(|v| model.versions.get(&v))
            .and_then(|v| Some((format!("{}@{}", model.name, v.version), v.model.clone()?)));
        Ok::<_, TrainError>((
            (model.name.clone(), version.version),
            version.run_id.clone(),
            info,
            champion,
            champion_version == Some(version.version),
        ))
    })?;
    let candidate_ref = format!("{}@{}", candidate_at.0, candidate_at.1);
    let (source, table, rows, described) = match &request.dataset {
        Some(dataset) => {
            let source = resolve(dataset, workspace.datasets)?;
            let table = Table::read_files(&source.files, &source.reference)?;
            let rows = table.valid_rows(&info.label)?;
            let described = source.reference.clone();
            (source, table, rows, described)
        }
        None => held_out(workspace, &candidate_ref, &run_id).await?,
    };
    if rows.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{}: no row has a `{}` label",
            source.reference, info.label
        )));
    }
    let slices = match &request.slice {
        Some(column) => Some(table.text(column)?),
        None => None,
    };

    let candidate = score_model(
        tracker,
        &candidate_ref,
        &info,
        &table,
        &rows,
        slices.as_deref(),
    )
    .await?;
    let champion = match &champion {
        Some((reference, champion_info)) => Some(
            score_model(
                tracker,
                reference,
                champion_info,
                &table,
                &rows,
                slices.as_deref(),
            )
            .await?,
        ),
        None => None,
    };
    let task: Task = info.task.parse()?;
    let gate = if is_champion {
        Gate {
            verdict: Verdict::Skipped,
            reasons: vec![format!(
                "{candidate_ref} is the champion (@{}): nothing to compare it with",
                request.champion
            )],
        }
    } else {
        judge(&request.gate, task, &candidate, champion.as_ref())
    };
    let history = history(tracker, &request.model);

    let mut evaluation = Evaluation {
        dataset: described,
        rows: rows.len(),
        candidate,
        champion,
        gate,
        history,
        run_id: String::new(),
        report: String::new(),
        promoted: false,
    };
    evaluation.report = crate::report::html(&evaluation);

    let ended = weir_core::now_ms();
    let metric = |key: String, value: f64| Metric {
        key,
        value,
        timestamp: ended,
        step: 0,
    };
    let mut logged: Vec<Metric> = evaluation
        .candidate
        .overall
        .iter()
        .map(|(k, &v)| metric(k.clone(), v))
        .collect();
    if let Some(champion) = &evaluation.champion {
        logged.extend(
            champion
                .overall
                .iter()
                .map(|(k, &v)| metric(format!("champion_{k}"), v)),
        );
    }
    let text = |key: &str, value: String| KeyValue {
        key: key.into(),
        value,
    };
    let (run_id, _) = tracker
        .record_run(RunReport {
            experiment: request.experiment.clone(),
            run_name: format!("evaluate {candidate_ref}"),
            start_time: started,
            end_time: ended,
            params: vec![
                text("model", candidate_ref.clone()),
                text("dataset", evaluation.dataset.clone()),
                text(
                    "champion",
                    evaluation
                        .champion
                        .as_ref()
                        .map_or("-".into(), |c| c.model.clone()),
                ),
                text(
                    "gate",
                    request
                        .gate
                        .iter()
                        .map(|r| format!("{}:{}", r.metric, r.margin))
                        .collect::<Vec<_>>()
                        .join(","),
                ),
            ],
            metrics: logged,
            tags: vec![
                text("weir.model", candidate_ref),
                text("weir.gate", evaluation.gate.verdict.as_str().into()),
            ],
            datasets: vec![(source.reference, source.digest, "evaluation".into())],
            status: String::new(),
            artifacts: vec![("report.html".into(), evaluation.report.clone().into_bytes())],
        })
        .await?;
    evaluation.run_id = run_id;
    if request.promote && evaluation.gate.passed() {
        let (name, version) = candidate_at;
        tracker.set_alias(&name, &request.champion, version).await?;
        evaluation.promoted = true;
    }
    Ok(evaluation)
}

async fn score_model(
    tracker: &Tracker,
    reference: &str,
    info: &ModelInfo,
    table: &Table,
    rows: &[usize],
    slices: Option<&[Option<String>]>,
) -> Result<Scored, TrainError> {
    let bytes = tracker.artifact_bytes(&info.path).await?;
    let model = Model::load(&bytes, &SessionOptions::default())?;
    let task: Task = info.task.parse()?;
    let classes = (task == Task::Classification).then_some(info.classes.as_slice());
    let target = table.target(&info.label, task, classes, rows)?;
    let all = scores(&model, table, &info.features, rows)?;
    let overall = score(&target, rows, &all)?;
    let mut by_slice = BTreeMap::new();
    if let Some(values) = slices {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, &row) in rows.iter().enumerate() {
            let key = values[row].clone().unwrap_or_else(|| "(null)".into());
            groups.entry(key).or_default().push(i);
        }
        let (values, width) = &all;
        for (key, members) in groups {
            let subset_rows: Vec<usize> = members.iter().map(|&i| rows[i]).collect();
            let subset: Vec<f64> = members
                .iter()
                .flat_map(|&i| values[i * width..(i + 1) * width].iter().copied())
                .collect();
            by_slice.insert(key, score(&target, &subset_rows, &(subset, *width))?);
        }
    }
    let curves = match &target {
        Target::Classes { classes, index } if classes.len() == 2 => {
            let (values, width) = &all;
            let probabilities = metrics::probabilities(values, *width, 2).unwrap_or_default();
            let (mut positive, mut p) = (Vec::new(), Vec::new());
            for (i, &row) in rows.iter().enumerate() {
                if let Some(class) = index[row] {
                    positive.push(class == 1);
                    p.push(probabilities[i * 2 + 1]);
                }
            }
            Some(Curves {
                roc: metrics::roc_curve(&positive, &p).unwrap_or_default(),
                pr: metrics::pr_curve(&positive, &p).unwrap_or_default(),
                calibration: metrics::calibration(&positive, &p, 10),
            })
        }
        _ => None,
    };
    Ok(Scored {
        model: reference.to_string(),
        overall,
        slices: by_slice,
        curves,
    })
}

/// The gate: every rule must hold against the champion; with no champion
/// the candidate passes.
pub fn judge(
    rules: &[GateRule],
    task: Task,
    candidate: &Scored,
    champion: Option<&Scored>,
) -> Gate {
    let Some(champion) = champion else {
        return Gate {
            verdict: Verdict::Passed,
            reasons: vec!["no champion to beat".into()],
        };
    };
    let default = [GateRule {
        metric: match task {
            Task::Classification => "roc_auc",
            Task::Regression => "rmse",
        }
        .into(),
        margin: 0.0,
    }];
    let rules = if rules.is_empty() {
        &default[..]
    } else {
        rules
    };
    let mut passed = true;
    let mut reasons = Vec::new();
    for rule in rules {
        let (Some(&ours), Some(&theirs)) = (
            candidate.overall.get(&rule.metric),
            champion.overall.get(&rule.metric),
        ) else {
            passed = false;
            reasons.push(format!("{}: not measured for both models", rule.metric));
            continue;
        };
        let higher = metrics::higher_is_better(&rule.metric).unwrap_or(true);
        let (holds, wanted) = if higher {
            (
                ours >= theirs + rule.margin,
                format!("≥ {:.4}", theirs + rule.margin),
            )
        } else {
            (
                ours <= theirs - rule.margin,
                format!("≤ {:.4}", theirs - rule.margin),
            )
        };
        passed &= holds;
        reasons.push(format!(
            "{}: {ours:.4} vs champion {theirs:.4} (wanted {wanted}): {}",
            rule.metric,
            if holds { "ok" } else { "refused" }
        ));
    }
    Gate {
        verdict: if passed {
            Verdict::Passed
        } else {
            Verdict::Refused
        },
        reasons,
    }
}

/// The rows the training run `run_id` of `model` held out for its test
/// metrics: its recorded job's dataset, split again as the job split it
/// (a split is a function of the rows and the split's settings), and
/// checked against the number of test rows the run recorded.
async fn held_out(
    workspace: Workspace<'_>,
    model: &str,
    run_id: &str,
) -> Result<(crate::job::Source, Table, Vec<usize>, String), TrainError> {
    if run_id.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{model} was not registered by a training run: name a dataset to evaluate it on"
        )));
    }
    let spec = crate::job::recorded_job(workspace.tracker, run_id).await?;
    let source = resolve(&spec.dataset, workspace.datasets)?;
    let table = Table::read_files(&source.files, &source.reference)?;
    let labelled = table.valid_rows(&spec.label)?;
    let [_, _, test] = table.split(&spec.split, &labelled)?;
    let recorded = workspace.tracker.read(|state| {
        state
            .run(run_id)
            .ok()
            .and_then(|run| run.latest.get("test_rows"))
            .map(|m| m.value as usize)
    });
    if recorded.is_some_and(|n| n != test.len()) {
        return Err(TrainError::Invalid(format!(
            "{}: split again as run {run_id} split it, its test part has {} rows, not the {} \
             the run recorded",
            source.reference,
            test.len(),
            recorded.unwrap_or_default()
        )));
    }
    let described = format!(
        "{}, the {} test rows run {run_id} held out ({})",
        source.reference,
        test.len(),
        spec.split.describe()
    );
    Ok((source, table, test, described))
}

/// Each version's test metrics, from its training run.
fn history(tracker: &Tracker, reference: &str) -> Vec<(u64, Metrics)> {
    let name = reference.split('@').next().unwrap_or(reference);
    tracker.read(|state| {
        let Ok(model) = state.model(name) else {
            return vec![];
        };
        model
            .versions
            .values()
            .filter_map(|v| {
                let run = state.run(&v.run_id).ok()?;
                let metrics: Metrics = run
                    .latest
                    .iter()
                    .filter_map(|(k, m)| Some((k.strip_prefix("test_")?.to_string(), m.value)))
                    .collect();
                Some((v.version, metrics))
            })
            .collect()
    })
}
