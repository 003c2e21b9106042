//! A training job, from dataset to recorded run and registered version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::Digest as _;
use weir_features::datasets::Datasets;
use weir_meta::Tracker;
use weir_meta::event::{KeyValue, Metric, ModelInfo};
use weir_meta::tracker::RunReport;
use weir_onnx::{Model, SessionOptions};

use crate::TrainError;
use crate::metrics::{self, Metrics};
use crate::runtime::{self, Contract};
use crate::spec::{Split, TrainSpec};
use crate::table::{Table, Target};

/// What a job talks to and where it works.
#[derive(Debug, Clone, Copy)]
pub struct Workspace<'a> {
    /// Runs, artifacts and the registry.
    pub tracker: &'a Tracker,
    /// Dataset versions, to resolve `name@version`.
    pub datasets: &'a Datasets,
    /// A scratch directory; each job works in a fresh directory under it,
    /// removed when it ends.
    pub scratch: &'a Path,
}

/// How a job ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Its run.
    pub run_id: String,
    /// Why it failed; `None` if it finished.
    pub failure: Option<String>,
    /// Its metrics.
    pub metrics: Metrics,
    /// The version it registered.
    pub version: Option<(String, u64)>,
    /// The model it made.
    pub model: Option<ModelInfo>,
}

/// A dataset read for a job.
pub(crate) struct Source {
    /// `name@version`, or the file's path.
    pub(crate) reference: String,
    /// Its content hash.
    pub(crate) digest: String,
    pub(crate) files: Vec<PathBuf>,
    /// Entity keys (not features).
    entity: Vec<String>,
}

/// What a job accumulates for its run as it goes, so a failure half-way
/// still records what was known.
#[derive(Default)]
struct Record {
    params: Vec<KeyValue>,
    metrics: Metrics,
    datasets: Vec<(String, String, String)>,
    artifacts: Vec<(String, Vec<u8>)>,
}

impl Record {
    fn param(&mut self, key: &str, value: impl Into<String>) {
        self.params.push(KeyValue {
            key: key.into(),
            value: value.into(),
        });
    }
}

/// Runs a training job and records it as a run of `spec.experiment`:
/// `FINISHED`, or `FAILED` with the reason (then nothing is registered).
/// An error means the run itself could not be recorded.
pub async fn train(spec: &TrainSpec, workspace: Workspace<'_>) -> Result<Outcome, TrainError> {
    let started = weir_meta::now_ms();
    let dir = workspace
        .scratch
        .join(format!("train-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(dir.display(), e))?;
    let mut record = Record::default();
    let result = run(spec, workspace, &dir, &mut record).await;
    let processes = spec.distributed.as_ref().map_or(1, |d| d.processes);
    for name in (0..processes).map(rank_log) {
        if let Ok(bytes) = std::fs::read(dir.join(&name)) {
            record.artifacts.push((name, bytes));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    let failure = result.as_ref().err().map(ToString::to_string);
    let mut tags = vec![
        tag("weir.runtime", spec.runtime.describe()),
        tag("mlflow.source.type", "JOB"),
    ];
    tags.extend(git_tags());
    tags.extend(spec.tags.iter().map(|(k, v)| tag(k, v.clone())));
    if let Some(reason) = &failure {
        tags.push(tag("weir.failure", reason.clone()));
        tracing::warn!(%reason, "training job failed");
    }
    let ended = weir_meta::now_ms();
    let metric_events = record
        .metrics
        .iter()
        .map(|(key, &value)| Metric {
            key: key.clone(),
            value,
            timestamp: ended,
            step: 0,
        })
        .collect();
    let (run_id, _) = workspace
        .tracker
        .record_run(RunReport {
            experiment: spec.experiment.clone(),
            run_name: spec.name.clone().unwrap_or_default(),
            start_time: started,
            end_time: ended,
            params: record.params,
            metrics: metric_events,
            tags,
            datasets: record.datasets,
            status: if failure.is_some() {
                "FAILED"
            } else {
                "FINISHED"
            }
            .into(),
            artifacts: record.artifacts,
        })
        .await?;
    let mut outcome = Outcome {
        run_id: run_id.clone(),
        failure,
        metrics: record.metrics,
        version: None,
        model: None,
    };
    let Ok(mut model) = result else {
        return Ok(outcome);
    };
    model.path = format!(
        "{}/{}",
        workspace.tracker.artifact_root(&run_id)?,
        model.path
    );
    if let Some(name) = &spec.register {
        let version = register(workspace.tracker, &run_id, name, String::new(), &model).await?;
        outcome.version = Some((name.clone(), version));
    }
    outcome.model = Some(model);
    Ok(outcome)
}

/// Runs a recorded training job again — the same job file, so the same
/// data version, split and params — as a new run tagged
/// `weir.reproduces`. Nothing is registered.
pub async fn reproduce(run_id: &str, workspace: Workspace<'_>) -> Result<Outcome, TrainError> {
    let root = workspace.tracker.artifact_root(run_id)?;
    let text = workspace
        .tracker
        .artifact_bytes(&format!("{root}/job.yaml"))
        .await
        .map_err(|_| {
            TrainError::Invalid(format!("run {run_id} is not a training job (no job.yaml)"))
        })?;
    let text = String::from_utf8_lossy(&text);
    let mut spec = TrainSpec::from_yaml(&text, &format!("run {run_id}: job.yaml"))?;
    spec.register = None;
    spec.tags
        .insert("weir.reproduces".into(), run_id.to_string());
    train(&spec, workspace).await
}

/// Where a run keeps the description of its model (a [`ModelInfo`] whose
/// path is relative to the run's artifacts).
const MODEL_INFO: &str = "model/model.json";

/// The model a finished training run made, its path in the store.
pub async fn run_model(tracker: &Tracker, run_id: &str) -> Result<ModelInfo, TrainError> {
    let root = tracker.artifact_root(run_id)?;
    let bytes = tracker
        .artifact_bytes(&format!("{root}/{MODEL_INFO}"))
        .await
        .map_err(|_| {
            TrainError::Invalid(format!("run {run_id} made no model (no {MODEL_INFO})"))
        })?;
    let mut model: ModelInfo = serde_json::from_slice(&bytes)
        .map_err(|e| TrainError::Invalid(format!("run {run_id}: {MODEL_INFO}: {e}")))?;
    model.path = format!("{root}/{}", model.path);
    Ok(model)
}

/// Registers the model a finished training run made as a new version of
/// `name` (created if missing). Returns the version and the model.
pub async fn register_run_model(
    tracker: &Tracker,
    run_id: &str,
    name: &str,
    description: String,
) -> Result<(u64, ModelInfo), TrainError> {
    let model = run_model(tracker, run_id).await?;
    let version = register(tracker, run_id, name, description, &model).await?;
    Ok((version, model))
}

/// Registers `model` (its path in the store) made by `run_id`.
async fn register(
    tracker: &Tracker,
    run_id: &str,
    name: &str,
    description: String,
    model: &ModelInfo,
) -> Result<u64, TrainError> {
    let source = format!(
        "mlflow-artifacts:/{}",
        model.path.trim_end_matches("/model.onnx")
    );
    Ok(tracker
        .register_version(
            name,
            source,
            run_id.to_string(),
            description,
            Some(model.clone()),
        )
        .await?)
}

/// The log of a runtime process: `runtime.log` for a job's only process or
/// rank 0, `runtime-rank<r>.log` for the others.
fn rank_log(rank: usize) -> String {
    match rank {
        0 => "runtime.log".into(),
        rank => format!("runtime-rank{rank}.log"),
    }
}

fn tag(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.into(),
    }
}

/// The commit of the code that ran (the working directory's repository)
/// and whether it had uncommitted changes.
fn git_tags() -> Vec<KeyValue> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(commit) = git(&["rev-parse", "HEAD"]) else {
        return vec![];
    };
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    vec![
        tag("mlflow.source.git.commit", commit),
        tag("weir.git.dirty", dirty.to_string()),
    ]
}

pub(crate) fn resolve(reference: &str, datasets: &Datasets) -> Result<Source, TrainError> {
    let path = Path::new(reference);
    if path.is_file() {
        let (digest, _) =
            weir_features::datasets::hash_file(path).map_err(|e| TrainError::io(reference, e))?;
        return Ok(Source {
            reference: reference.to_string(),
            digest,
            files: vec![path.to_path_buf()],
            entity: vec![],
        });
    }
    let version = datasets.find(reference).ok_or_else(|| {
        TrainError::Invalid(format!(
            "dataset `{reference}`: no such dataset version (`weir datasets list`) or file"
        ))
    })?;
    if version.format != "parquet" && version.format != "csv" {
        return Err(TrainError::Invalid(format!(
            "dataset {}@{} is {}; training reads tables (Parquet, CSV)",
            version.name, version.version, version.format
        )));
    }
    Ok(Source {
        reference: format!("{}@{}", version.name, version.version),
        digest: version.hash.clone(),
        files: version
            .files
            .iter()
            .map(|f| PathBuf::from(f.uri.trim_start_matches("file://")))
            .collect(),
        entity: version.entity.clone(),
    })
}

async fn run(
    spec: &TrainSpec,
    workspace: Workspace<'_>,
    dir: &Path,
    record: &mut Record,
) -> Result<ModelInfo, TrainError> {
    record.param("weir.dataset", &spec.dataset);
    record.param("weir.label", &spec.label);
    record.param("weir.runtime", spec.runtime.describe());
    record.param("weir.split", spec.split.describe());
    if let Some(distributed) = &spec.distributed {
        distributed.check(&spec.runtime)?;
    }
    for (key, value) in &spec.params {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        record.param(key, text);
    }
    let source = resolve(&spec.dataset, workspace.datasets);
    // The job as it ran: `name` (the latest version) pinned to the version
    // read, so that `weir runs reproduce` reads the same data.
    let mut pinned = spec.clone();
    if let Ok(source) = &source {
        pinned.dataset = source.reference.clone();
    }
    record.artifacts.push((
        "job.yaml".into(),
        serde_yaml::to_string(&pinned)
            .expect("a job is plain data")
            .into_bytes(),
    ));
    let source = source?;
    record.datasets.push((
        source.reference.clone(),
        source.digest.clone(),
        "training".into(),
    ));
    let table = Table::read_files(&source.files, &source.reference)?;
    let task = match spec.task {
        Some(task) => task,
        None => table.infer_task(&spec.label)?,
    };
    record.param("weir.task", task.as_str());
    let features = if spec.features.is_empty() {
        let mut skip = spec.exclude.clone();
        skip.extend(source.entity.iter().cloned());
        skip.push(weir_features::snapshot::EVENT_TIMESTAMP.into());
        if let Split::Time { column, .. } = &spec.split {
            skip.push(column.clone());
        }
        table.default_features(&spec.label, &skip)
    } else {
        spec.features.clone()
    };
    if features.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{}: no feature columns (numbers or booleans besides the label, keys and times)",
            source.reference
        )));
    }
    record.param("weir.features", features.join(","));
    let labelled = table.valid_rows(&spec.label)?;
    let parts = table.split(&spec.split, &labelled)?;
    for (name, rows) in ["train", "validation", "test"].iter().zip(&parts) {
        record
            .metrics
            .insert(format!("{name}_rows"), rows.len() as f64);
    }
    let target = table.target(&spec.label, task, None, &parts[0])?;
    let classes = match &target {
        Target::Classes { classes, .. } if classes.len() < 2 => {
            return Err(TrainError::Invalid(format!(
                "{}: label `{}` has {} class in the training rows; a classifier needs two",
                source.reference,
                spec.label,
                classes.len()
            )));
        }
        Target::Classes { classes, .. } => classes.clone(),
        Target::Values(_) => vec![],
    };

    let data = dir.join("data");
    let output = dir.join("output");
    for d in [&data, &output] {
        std::fs::create_dir_all(d).map_err(|e| TrainError::io(d.display(), e))?;
    }
    let mut columns = features.clone();
    columns.push(spec.label.clone());
    let paths = ["train", "validation", "test"].map(|n| data.join(format!("{n}.parquet")));
    let mut split_record = serde_json::json!({"split": spec.split, "parts": {}});
    for ((path, rows), name) in paths
        .iter()
        .zip(&parts)
        .zip(["train", "validation", "test"])
    {
        table.write_parquet(path, &columns, rows)?;
        let (sha256, _) =
            weir_features::datasets::hash_file(path).map_err(|e| TrainError::io(name, e))?;
        split_record["parts"][name] = serde_json::json!({"rows": rows.len(), "sha256": sha256});
    }
    record.artifacts.push((
        "split.json".into(),
        serde_json::to_vec_pretty(&split_record).expect("JSON"),
    ));

    let seed = match &spec.split {
        Split::Random { seed, .. } => *seed,
        Split::Time { .. } => 0,
    };
    let contract = Contract {
        parts: paths.clone(),
        features: features.clone(),
        label: spec.label.clone(),
        task: task.as_str().into(),
        classes: classes.clone(),
        params: spec.params.clone(),
        seed,
        output: output.clone(),
    };
    let clock = std::time::Instant::now();
    match &spec.distributed {
        None => runtime::run(&spec.runtime, &contract, &dir.join("runtime.log")).await?,
        Some(distributed) => {
            let processes = distributed.processes;
            record.param("weir.processes", processes.to_string());
            let mut shards = Vec::with_capacity(processes);
            for rank in 0..processes {
                let rows: Vec<usize> = parts[0]
                    .iter()
                    .copied()
                    .skip(rank)
                    .step_by(processes)
                    .collect();
                let path = data.join(format!("train-rank{rank}.parquet"));
                table.write_parquet(&path, &columns, &rows)?;
                shards.push(path);
            }
            let ranks = runtime::Ranks {
                shards,
                logs: (0..processes)
                    .map(|rank| dir.join(rank_log(rank)))
                    .collect(),
                scratch: dir.to_path_buf(),
                restarts: distributed.restarts,
            };
            let attempts = runtime::run_distributed(&spec.runtime, &contract, &ranks).await?;
            record
                .metrics
                .insert("attempts".into(), f64::from(attempts));
        }
    }
    record
        .metrics
        .insert("train_seconds".into(), clock.elapsed().as_secs_f64());

    let model_path = output.join("model.onnx");
    let model_bytes = std::fs::read(&model_path).map_err(|_| {
        TrainError::Runtime(format!(
            "runtime {} wrote no model.onnx to WEIR_OUTPUT_DIR",
            spec.runtime.describe()
        ))
    })?;
    let model = Model::load(&model_bytes, &SessionOptions::default())
        .map_err(|e| TrainError::Runtime(format!("the runtime's model.onnx: {e}")))?;
    if let Some(width) = model.width()
        && width != features.len()
    {
        return Err(TrainError::Runtime(format!(
            "the runtime's model.onnx takes {width} features; the job has {}",
            features.len()
        )));
    }

    // Validation: ONNX Runtime's scores against the framework's.
    let validation_scores = scores(&model, &table, &features, &parts[1])?;
    let reference = output.join("validation_scores.parquet");
    if reference.exists() {
        let diff = max_difference(&reference, &validation_scores)?;
        record.metrics.insert("onnx_max_abs_diff".into(), diff);
        if diff > spec.tolerance {
            return Err(TrainError::Runtime(format!(
                "the exported ONNX model disagrees with the framework on the validation rows: \
                 max |Δ| {diff:.3e} > tolerance {:.0e}",
                spec.tolerance
            )));
        }
    }
    for (name, rows, scored) in [
        ("validation", &parts[1], Some(validation_scores)),
        ("test", &parts[2], None),
    ] {
        let scored = match scored {
            Some(s) => s,
            None => scores(&model, &table, &features, rows)?,
        };
        let target = table.target(&spec.label, task, Some(&classes), rows)?;
        for (key, value) in score(&target, rows, &scored)? {
            record.metrics.insert(format!("{name}_{key}"), value);
        }
    }

    if let Ok(text) = std::fs::read_to_string(output.join("metrics.json")) {
        let reported: BTreeMap<String, serde_json::Value> = serde_json::from_str(&text)
            .map_err(|e| TrainError::Runtime(format!("the runtime's metrics.json: {e}")))?;
        for (key, value) in reported {
            let value = value.as_f64().ok_or_else(|| {
                TrainError::Runtime(format!(
                    "the runtime's metrics.json: `{key}` is not a number"
                ))
            })?;
            record.metrics.insert(key, value);
        }
    }
    let dependencies: BTreeMap<String, String> =
        match std::fs::read_to_string(output.join("dependencies.json")) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                TrainError::Runtime(format!("the runtime's dependencies.json: {e}"))
            })?,
            Err(_) => BTreeMap::new(),
        };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&output)
        .map_err(|e| TrainError::io(output.display(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p != &model_path && p != &reference)
        .collect();
    files.sort();
    for file in files {
        let name = file.file_name().expect("a file").to_string_lossy();
        let bytes = std::fs::read(&file).map_err(|e| TrainError::io(file.display(), e))?;
        record.artifacts.push((format!("output/{name}"), bytes));
    }
    let model = ModelInfo {
        format: "onnx".into(),
        path: "model/model.onnx".into(),
        sha256: format!("{:x}", sha2::Sha256::digest(&model_bytes)),
        size: model_bytes.len() as u64,
        signature: model.signature().clone(),
        features,
        label: spec.label.clone(),
        task: task.as_str().into(),
        classes,
        dependencies,
    };
    record
        .artifacts
        .push(("model/model.onnx".into(), model_bytes));
    record.artifacts.push((
        MODEL_INFO.into(),
        serde_json::to_vec_pretty(&model).expect("JSON"),
    ));
    Ok(model)
}

/// The model's scores of `rows`: `(rows × width values, width)`.
pub(crate) fn scores(
    model: &Model,
    table: &Table,
    features: &[String],
    rows: &[usize],
) -> Result<(Vec<f64>, usize), TrainError> {
    let matrix = table.features(features, rows)?;
    let prediction = model.predict(&matrix, rows.len())?;
    prediction.scores().ok_or_else(|| {
        TrainError::Runtime("the model has no floating-point output to score with".into())
    })
}

/// Metrics of `scores` against the target's values at `rows`; rows
/// without a label (or of a class the model does not know) are left out.
pub(crate) fn score(
    target: &Target,
    rows: &[usize],
    (scores, width): &(Vec<f64>, usize),
) -> Result<Metrics, TrainError> {
    let width = *width;
    match target {
        Target::Classes { classes, index } => {
            let probabilities =
                metrics::probabilities(scores, width, classes.len()).ok_or_else(|| {
                    TrainError::Runtime(format!(
                        "the model gives {width} scores a row for {} classes",
                        classes.len()
                    ))
                })?;
            let k = classes.len();
            let (mut truth, mut kept) = (Vec::new(), Vec::new());
            for (i, &row) in rows.iter().enumerate() {
                if let Some(class) = index[row] {
                    truth.push(class);
                    kept.extend_from_slice(&probabilities[i * k..(i + 1) * k]);
                }
            }
            Ok(metrics::classification(&truth, &kept, k))
        }
        Target::Values(values) => {
            if width != 1 {
                return Err(TrainError::Runtime(format!(
                    "a regressor should give one score a row, not {width}"
                )));
            }
            let (mut truth, mut predicted) = (Vec::new(), Vec::new());
            for (i, &row) in rows.iter().enumerate() {
                if let Some(v) = values[row] {
                    truth.push(v);
                    predicted.push(scores[i]);
                }
            }
            Ok(metrics::regression(&truth, &predicted))
        }
    }
}

/// The largest difference between ONNX Runtime's scores and those the
/// runtime wrote (`score_0`, `score_1`, … columns).
fn max_difference(
    reference: &Path,
    (scores, width): &(Vec<f64>, usize),
) -> Result<f64, TrainError> {
    let table = Table::read_file(reference)?;
    let rows = scores.len() / width.max(&1);
    if table.rows() != rows {
        return Err(TrainError::Runtime(format!(
            "validation_scores.parquet has {} rows; the validation part has {rows}",
            table.rows()
        )));
    }
    let columns: Vec<String> = (0..*width).map(|i| format!("score_{i}")).collect();
    let all: Vec<usize> = (0..rows).collect();
    let theirs = table.features(&columns, &all)?;
    Ok(theirs
        .iter()
        .zip(scores)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0.0, f64::max))
}
