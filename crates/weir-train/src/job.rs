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
use crate::spec::{Export, Split, Task, TrainSpec};
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
    /// What a process running many jobs keeps between them; `None`: each
    /// job starts from nothing.
    pub cache: Option<&'a JobCache>,
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
    /// The model it made (`None` when it failed, or kept the model to
    /// export later).
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
    let mut outcome = run_job(spec, workspace)
        .await?
        .record(workspace.tracker)
        .await?;
    if let (Some(name), None) = (&spec.register, &outcome.failure) {
        // A deferred model is exported on the way.
        let (version, model) =
            register_run_model(workspace, &outcome.run_id, name, String::new()).await?;
        outcome.version = Some((name.clone(), version));
        outcome.model = Some(model);
    }
    Ok(outcome)
}

/// The first half of [`train`]: runs the job (data, runtime, scores) and
/// returns what its run will record. Nothing is written to the log yet,
/// and nothing is registered: [`Ran::record`] records it, which a worker
/// does while its runtime goes on to the next trial.
pub async fn run_job(spec: &TrainSpec, workspace: Workspace<'_>) -> Result<Ran, TrainError> {
    let started = weir_core::now_ms();
    let dir = workspace
        .scratch
        .join(format!("train-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(dir.display(), e))?;
    let mut record = Record::default();
    let clock = std::time::Instant::now();
    let result = run(spec, workspace, &dir, &mut record).await;
    let processes = spec.distributed.as_ref().map_or(1, |d| d.processes);
    for name in (0..processes).map(rank_log) {
        if let Ok(bytes) = std::fs::read(dir.join(&name)) {
            record.artifacts.push((name, bytes));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    tracing::debug!(ms = clock.elapsed().as_millis() as u64, "training job ran");
    Ok(Ran {
        experiment: spec.experiment.clone(),
        name: spec.name.clone().unwrap_or_default(),
        runtime: spec.runtime.describe(),
        tags: spec.tags.clone(),
        started,
        ended: weir_core::now_ms(),
        record,
        result,
    })
}

/// A training job that has run, its run not yet recorded ([`run_job`]).
pub struct Ran {
    experiment: String,
    name: String,
    runtime: String,
    tags: BTreeMap<String, String>,
    started: i64,
    ended: i64,
    record: Record,
    result: Result<Option<ModelInfo>, TrainError>,
}

impl Ran {
    /// Records the job as a run: `FINISHED`, or `FAILED` with the reason.
    /// An error means the run itself could not be recorded.
    pub async fn record(self, tracker: &Tracker) -> Result<Outcome, TrainError> {
        let clock = std::time::Instant::now();
        let Ran { record, result, .. } = self;
        let failure = result.as_ref().err().map(ToString::to_string);
        let mut tags = vec![
            tag("weir.runtime", self.runtime),
            tag("mlflow.source.type", "JOB"),
        ];
        tags.extend(git_tags());
        tags.extend(self.tags.into_iter().map(|(k, v)| tag(&k, v)));
        if let Some(reason) = &failure {
            tags.push(tag("weir.failure", reason.clone()));
            tracing::warn!(%reason, "training job failed");
        }
        let (run_id, _) = tracker
            .record_run(RunReport {
                experiment: self.experiment,
                run_name: self.name,
                start_time: self.started,
                end_time: self.ended,
                params: record.params,
                metrics: metric_events(&record.metrics, self.ended),
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
        tracing::debug!(run = %run_id, ms = clock.elapsed().as_millis() as u64, "training job recorded");
        let root = tracker.artifact_root(&run_id)?;
        let model = result.ok().flatten().map(|mut model| {
            model.path = format!("{root}/{}", model.path);
            model
        });
        Ok(Outcome {
            run_id,
            failure,
            metrics: record.metrics,
            version: None,
            model,
        })
    }
}

/// A run's job run again, and its metrics next to the original's.
#[derive(Debug, Clone)]
pub struct Reproduction {
    /// The new run.
    pub outcome: Outcome,
    /// Each metric of the new run (but timings): the original's value, if
    /// it had one, and the new one.
    pub metrics: Vec<(String, Option<f64>, f64)>,
}

impl Reproduction {
    /// The metrics that differ from the original's by more than
    /// `tolerance`, relative to the larger of the two values (and absolute
    /// below 1), or that the original did not have.
    pub fn differing(&self, tolerance: f64) -> Vec<&str> {
        self.metrics
            .iter()
            .filter(|(_, before, again)| {
                before.is_none_or(|before| {
                    (before - again).abs() > tolerance * before.abs().max(again.abs()).max(1.0)
                })
            })
            .map(|(key, _, _)| key.as_str())
            .collect()
    }
}

/// Runs a recorded training job again — the same job file, so the same
/// data version, split and params — as a new run tagged
/// `weir.reproduces`, and sets its metrics next to the original's. Nothing
/// is registered.
pub async fn reproduce(run_id: &str, workspace: Workspace<'_>) -> Result<Reproduction, TrainError> {
    let mut spec = recorded_job(workspace.tracker, run_id).await?;
    spec.register = None;
    spec.tags
        .insert("weir.reproduces".into(), run_id.to_string());
    let original = workspace
        .tracker
        .read(|state| state.run(run_id).map(|run| run.latest.clone()))?;
    let outcome = train(&spec, workspace).await?;
    let metrics = outcome
        .metrics
        .iter()
        .filter(|(key, _)| !key.ends_with("seconds"))
        .map(|(key, value)| (key.clone(), original.get(key).map(|m| m.value), *value))
        .collect();
    Ok(Reproduction { outcome, metrics })
}

/// The job a training run ran, as it recorded it (`job.yaml`, its dataset
/// pinned to the version it read).
pub(crate) async fn recorded_job(tracker: &Tracker, run_id: &str) -> Result<TrainSpec, TrainError> {
    let root = tracker.artifact_root(run_id)?;
    let text = tracker
        .artifact_bytes(&format!("{root}/job.yaml"))
        .await
        .map_err(|_| {
            TrainError::Invalid(format!("run {run_id} is not a training job (no job.yaml)"))
        })?;
    TrainSpec::from_yaml(
        &String::from_utf8_lossy(&text),
        &format!("run {run_id}: job.yaml"),
    )
}

/// Where a run keeps the description of its model (a [`ModelInfo`] whose
/// path is relative to the run's artifacts).
const MODEL_INFO: &str = "model/model.json";

/// The model a finished training run made, its path in the store. A model
/// whose export was deferred is exported now (and kept with the run).
pub async fn run_model(workspace: Workspace<'_>, run_id: &str) -> Result<ModelInfo, TrainError> {
    let tracker = workspace.tracker;
    let root = tracker.artifact_root(run_id)?;
    let stored = |path: &str| tracker.read(|state| state.artifact(path).is_some());
    if !stored(&format!("{root}/{MODEL_INFO}")) && stored(&format!("{root}/{KEPT_MODEL}")) {
        export_kept(workspace, run_id, &root).await?;
    }
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
    workspace: Workspace<'_>,
    run_id: &str,
    name: &str,
    description: String,
) -> Result<(u64, ModelInfo), TrainError> {
    let model = run_model(workspace, run_id).await?;
    let version = register(workspace.tracker, run_id, name, description, &model).await?;
    Ok((version, model))
}

/// Exports the model a run kept (deferred export) to ONNX, checks it
/// against the framework's scores of the validation rows, and stores it
/// with the run as a job that exported would have, with its test metrics.
async fn export_kept(workspace: Workspace<'_>, run_id: &str, root: &str) -> Result<(), TrainError> {
    let tracker = workspace.tracker;
    let spec = recorded_job(tracker, run_id).await?;
    let dir = workspace
        .scratch
        .join(format!("export-{}", uuid::Uuid::new_v4().simple()));
    let output = dir.join("output");
    std::fs::create_dir_all(&output).map_err(|e| TrainError::io(output.display(), e))?;
    let exported = async {
        let source = resolve(&spec.dataset, workspace.datasets)?;
        let data = workspace.prepare(&spec, &source, &dir.join("data"))?;
        let pickle = dir.join("model.pkl");
        let bytes = tracker
            .artifact_bytes(&format!("{root}/{KEPT_MODEL}"))
            .await?;
        std::fs::write(&pickle, bytes).map_err(|e| TrainError::io(pickle.display(), e))?;
        let log = dir.join("export.log");
        runtime::export(
            &pickle,
            &data.contract(&spec, output.clone()),
            &log,
            workspace.warm(),
        )
        .await?;
        let checked = check_onnx(&output, &spec.runtime, &data, spec.tolerance)?;
        let dependencies = tracker
            .artifact_bytes(&format!("{root}/output/dependencies.json"))
            .await
            .ok();
        let model = checked.info(
            &data,
            &spec.label,
            read_dependencies(dependencies.as_deref())?,
        );
        tracker
            .store_artifact(run_id, "model/model.onnx", checked.bytes)
            .await?;
        tracker
            .store_artifact(
                run_id,
                MODEL_INFO,
                serde_json::to_vec_pretty(&model).expect("JSON"),
            )
            .await?;
        // The model kept meets the test rows now, through ONNX Runtime as
        // an exporting job's does.
        let mut metrics = data.model_metrics(&checked.model, 2)?;
        if let Some(diff) = checked.max_diff {
            metrics.insert("onnx_max_abs_diff".into(), diff);
        }
        let now = weir_core::now_ms();
        tracker
            .append(weir_meta::event::Event::RunLogged {
                at: now,
                run_id: run_id.into(),
                metrics: metric_events(&metrics, now),
                params: vec![],
                tags: vec![],
            })
            .await?;
        Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    exported.map_err(|e: TrainError| {
        TrainError::Runtime(format!("exporting run {run_id}'s model to ONNX: {e}"))
    })
}

/// Registers `model` (its path in the store) made by `run_id`.
pub(crate) async fn register(
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
/// and whether it had uncommitted changes, read once per process: a
/// worker's trials are recorded without spawning `git` twice each.
fn git_tags() -> Vec<KeyValue> {
    static TAGS: std::sync::OnceLock<Vec<KeyValue>> = std::sync::OnceLock::new();
    TAGS.get_or_init(|| {
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
    })
    .clone()
}

pub(crate) fn resolve(reference: &str, datasets: &Datasets) -> Result<Source, TrainError> {
    let path = Path::new(reference);
    if path.is_file() {
        let (digest, _) =
            weir_features::datasets::hash_file(path).map_err(|e| TrainError::io(reference, e))?;
        return Ok(file_source(reference, digest));
    }
    let parsed: weir_catalog::Reference = reference
        .parse()
        .map_err(|e| TrainError::Invalid(format!("dataset: {e}")))?;
    let version = datasets.find(&parsed).ok_or_else(|| {
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
        reference: version.reference().to_string(),
        digest: version.hash.clone(),
        files: version
            .files
            .iter()
            .map(|f| PathBuf::from(f.uri.trim_start_matches("file://")))
            .collect(),
        entity: version.entity.clone(),
    })
}

/// A data file named by its path, with its content's digest.
fn file_source(reference: &str, digest: String) -> Source {
    Source {
        reference: reference.to_string(),
        digest,
        files: vec![PathBuf::from(reference)],
        entity: vec![],
    }
}

/// A job's data, read and split: the table, its features and target, the
/// parts' rows and the parts written as Parquet for the runtime.
pub(crate) struct Prepared {
    table: Table,
    task: Task,
    features: Vec<String>,
    /// Every row's label (and a classifier's classes).
    target: Target,
    parts: [Vec<usize>; 3],
    /// `train.parquet`, `validation.parquet`, `test.parquet`.
    paths: [PathBuf; 3],
    /// The split as recorded (`split.json`): how, and each part's rows and hash.
    split_record: serde_json::Value,
}

impl Prepared {
    /// Reads `source` and splits it as `spec` says, writing the parts
    /// under `dir`.
    fn new(spec: &TrainSpec, source: &Source, dir: &Path) -> Result<Self, TrainError> {
        let table = Table::read_files(&source.files, &source.reference)?;
        let task = match spec.task {
            Some(task) => task,
            None => table.infer_task(&spec.label)?,
        };
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
        let labelled = table.valid_rows(&spec.label)?;
        let parts = table.split(&spec.split, &labelled)?;
        // Each row's label, read once: trial after trial scores these parts.
        let target = table.target(&spec.label, task, None, &parts[0])?;
        if let Target::Classes { classes, .. } = &target
            && classes.len() < 2
        {
            return Err(TrainError::Invalid(format!(
                "{}: label `{}` has {} class in the training rows; a classifier needs two",
                source.reference,
                spec.label,
                classes.len()
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir.display(), e))?;
        let mut columns = features.clone();
        columns.push(spec.label.clone());
        let paths = PART_NAMES.map(|n| dir.join(format!("{n}.parquet")));
        let mut split_record = serde_json::json!({"split": spec.split, "parts": {}});
        for ((path, rows), name) in paths.iter().zip(&parts).zip(PART_NAMES) {
            table.write_parquet(path, &columns, rows)?;
            let (sha256, _) =
                weir_features::datasets::hash_file(path).map_err(|e| TrainError::io(name, e))?;
            split_record["parts"][name] = serde_json::json!({"rows": rows.len(), "sha256": sha256});
        }
        Ok(Self {
            table,
            task,
            features,
            target,
            parts,
            paths,
            split_record,
        })
    }

    /// A classifier's classes, in the order of its scores (none for a
    /// regression).
    fn classes(&self) -> &[String] {
        match &self.target {
            Target::Classes { classes, .. } => classes,
            Target::Values(_) => &[],
        }
    }

    /// The contract for a job on these parts, writing to `output`.
    fn contract(&self, spec: &TrainSpec, output: PathBuf) -> Contract {
        Contract {
            parts: self.paths.clone(),
            features: self.features.clone(),
            label: spec.label.clone(),
            task: self.task.as_str().into(),
            classes: self.classes().to_vec(),
            params: spec.params.clone(),
            seed: match &spec.split {
                Split::Random { seed, .. } => *seed,
                Split::Time { .. } => 0,
            },
            output,
            deferred: spec.export == Export::Deferred,
        }
    }

    /// The metrics of `scores` of part `part` (1: validation, 2: test),
    /// named `<part>_<metric>`.
    fn metrics(&self, part: usize, scores: &(Vec<f64>, usize)) -> Result<Metrics, TrainError> {
        let rows = &self.parts[part];
        Ok(score(&self.target, rows, scores)?
            .into_iter()
            .map(|(key, value)| (format!("{}_{key}", PART_NAMES[part]), value))
            .collect())
    }

    /// The metrics of `model`'s scores of part `part`, by ONNX Runtime.
    fn model_metrics(&self, model: &Model, part: usize) -> Result<Metrics, TrainError> {
        let scores = scores(model, &self.table, &self.features, &self.parts[part])?;
        self.metrics(part, &scores)
    }
}

/// Metric events of `metrics`, all at `at`, step 0.
fn metric_events(metrics: &Metrics, at: i64) -> Vec<Metric> {
    metrics
        .iter()
        .map(|(key, &value)| Metric {
            key: key.clone(),
            value,
            timestamp: at,
            step: 0,
        })
        .collect()
}

const PART_NAMES: [&str; 3] = ["train", "validation", "test"];

/// What a process running job after job keeps between them (a tuning
/// worker): one warm runtime process for the built-in runtimes, and the
/// last few datasets read and split, so each trial reads and splits its
/// data once. Its parts live under its directory.
pub struct JobCache {
    dir: PathBuf,
    warm: runtime::Warm,
    prepared: std::sync::Mutex<Vec<(String, std::sync::Arc<Prepared>)>>,
    /// Data files' digests, by path, size and modification time.
    digests: std::sync::Mutex<BTreeMap<(PathBuf, u64, std::time::SystemTime), String>>,
}

impl std::fmt::Debug for JobCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobCache").field("dir", &self.dir).finish()
    }
}

/// Datasets a [`JobCache`] keeps split.
const CACHED_DATASETS: usize = 4;

impl JobCache {
    /// An empty cache keeping its files under `dir` (emptied now).
    pub fn new(dir: PathBuf) -> Self {
        let _ = std::fs::remove_dir_all(&dir);
        Self {
            dir,
            warm: runtime::Warm::new(),
            prepared: Default::default(),
            digests: Default::default(),
        }
    }

    /// Starts the warm runtime process ahead of the first job.
    pub async fn warm_up(&self) -> Result<(), TrainError> {
        self.warm.start().await
    }

    /// [`resolve`], with a data file's digest kept while its size and
    /// modification time stay the same: a worker reads the same file trial
    /// after trial, and hashing it each time costs tens of milliseconds.
    fn resolve(&self, reference: &str, datasets: &Datasets) -> Result<Source, TrainError> {
        let stamp = std::fs::metadata(reference)
            .ok()
            .filter(std::fs::Metadata::is_file)
            .and_then(|m| Some((PathBuf::from(reference), m.len(), m.modified().ok()?)));
        let Some(stamp) = stamp else {
            return resolve(reference, datasets);
        };
        if let Some(digest) = self.digests.lock().expect("cache lock").get(&stamp) {
            return Ok(file_source(reference, digest.clone()));
        }
        let source = resolve(reference, datasets)?;
        self.digests
            .lock()
            .expect("cache lock")
            .insert(stamp, source.digest.clone());
        Ok(source)
    }

    fn prepared(
        &self,
        spec: &TrainSpec,
        source: &Source,
    ) -> Result<std::sync::Arc<Prepared>, TrainError> {
        // Everything the data, split and features depend on.
        let key = serde_json::json!([
            source.digest,
            source.files,
            spec.label,
            spec.features,
            spec.exclude,
            spec.task,
            spec.split
        ]);
        let key = format!("{:x}", sha2::Sha256::digest(key.to_string()));
        let key = &key[..16];
        let mut kept = self.prepared.lock().expect("cache lock");
        if let Some((_, prepared)) = kept.iter().find(|(k, _)| k == key) {
            return Ok(prepared.clone());
        }
        let prepared = std::sync::Arc::new(Prepared::new(spec, source, &self.dir.join(key))?);
        if kept.len() >= CACHED_DATASETS {
            let (old, _) = kept.remove(0);
            let _ = std::fs::remove_dir_all(self.dir.join(old));
        }
        kept.push((key.to_string(), prepared.clone()));
        Ok(prepared)
    }
}

impl Workspace<'_> {
    /// `source` read and split for `spec`: from the cache, or written under
    /// `dir`.
    fn prepare(
        &self,
        spec: &TrainSpec,
        source: &Source,
        dir: &Path,
    ) -> Result<std::sync::Arc<Prepared>, TrainError> {
        match self.cache {
            Some(cache) => cache.prepared(spec, source),
            None => Ok(std::sync::Arc::new(Prepared::new(spec, source, dir)?)),
        }
    }

    fn warm(&self) -> Option<&runtime::Warm> {
        self.cache.map(|c| &c.warm)
    }
}

/// Where a run keeps a model whose export was deferred.
const KEPT_MODEL: &str = "model/model.pkl";

/// The framework's scores of the validation rows, as the runtime wrote them.
const VALIDATION_SCORES: &str = "validation_scores.parquet";

async fn run(
    spec: &TrainSpec,
    workspace: Workspace<'_>,
    dir: &Path,
    record: &mut Record,
) -> Result<Option<ModelInfo>, TrainError> {
    record.param("weir.dataset", &spec.dataset);
    record.param("weir.label", &spec.label);
    record.param("weir.runtime", spec.runtime.describe());
    record.param("weir.split", spec.split.describe());
    if let Some(distributed) = &spec.distributed {
        distributed.check(&spec.runtime)?;
    }
    spec.export
        .check(&spec.runtime, spec.distributed.is_some())?;
    if spec.export == Export::Deferred {
        record.param("weir.export", "deferred");
    }
    for (key, value) in &spec.params {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        record.param(key, text);
    }
    let source = match workspace.cache {
        Some(cache) => cache.resolve(&spec.dataset, workspace.datasets),
        None => resolve(&spec.dataset, workspace.datasets),
    };
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
    let data = workspace.prepare(spec, &source, &dir.join("data"))?;
    record.param("weir.task", data.task.as_str());
    record.param("weir.features", data.features.join(","));
    for (name, rows) in PART_NAMES.iter().zip(&data.parts) {
        record
            .metrics
            .insert(format!("{name}_rows"), rows.len() as f64);
    }
    record.artifacts.push((
        "split.json".into(),
        serde_json::to_vec_pretty(&data.split_record).expect("JSON"),
    ));

    let output = dir.join("output");
    std::fs::create_dir_all(&output).map_err(|e| TrainError::io(output.display(), e))?;
    let contract = data.contract(spec, output.clone());
    let clock = std::time::Instant::now();
    match &spec.distributed {
        None => {
            runtime::run(
                &spec.runtime,
                &contract,
                &dir.join("runtime.log"),
                workspace.warm(),
            )
            .await?
        }
        Some(distributed) => {
            let processes = distributed.processes;
            record.param("weir.processes", processes.to_string());
            let mut columns = data.features.clone();
            columns.push(spec.label.clone());
            let mut shards = Vec::with_capacity(processes);
            for rank in 0..processes {
                let rows: Vec<usize> = data.parts[0]
                    .iter()
                    .copied()
                    .skip(rank)
                    .step_by(processes)
                    .collect();
                let path = dir.join(format!("train-rank{rank}.parquet"));
                data.table.write_parquet(&path, &columns, &rows)?;
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

    // Files the run keeps elsewhere, or not at all.
    let handled = [VALIDATION_SCORES, "model.onnx", "model.pkl"].map(|name| output.join(name));
    let model = if spec.export == Export::Deferred {
        // The framework's own scores make the validation metrics; the
        // model is kept as fitted. The test rows are scored when it is
        // exported: only the model a search keeps meets them.
        let scores = read_scores(&output.join(VALIDATION_SCORES), data.parts[1].len())?;
        record.metrics.extend(data.metrics(1, &scores)?);
        let pickled = std::fs::read(output.join("model.pkl")).map_err(|_| {
            TrainError::Runtime(format!(
                "runtime {} kept no model.pkl",
                spec.runtime.describe()
            ))
        })?;
        record.artifacts.push((KEPT_MODEL.into(), pickled));
        None
    } else {
        let checked = check_onnx(&output, &spec.runtime, &data, spec.tolerance)?;
        if let Some(diff) = checked.max_diff {
            record.metrics.insert("onnx_max_abs_diff".into(), diff);
        }
        record.metrics.extend(data.metrics(1, &checked.validation)?);
        record
            .metrics
            .extend(data.model_metrics(&checked.model, 2)?);
        Some(checked)
    };

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
    let dependencies = read_dependencies(
        std::fs::read(output.join("dependencies.json"))
            .ok()
            .as_deref(),
    )?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&output)
        .map_err(|e| TrainError::io(output.display(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && !handled.contains(p))
        .collect();
    files.sort();
    for file in files {
        let name = file.file_name().expect("a file").to_string_lossy();
        let bytes = std::fs::read(&file).map_err(|e| TrainError::io(file.display(), e))?;
        record.artifacts.push((format!("output/{name}"), bytes));
    }
    let Some(checked) = model else {
        return Ok(None);
    };
    let model = checked.info(&data, &spec.label, dependencies);
    record
        .artifacts
        .push(("model/model.onnx".into(), checked.bytes));
    record.artifacts.push((
        MODEL_INFO.into(),
        serde_json::to_vec_pretty(&model).expect("JSON"),
    ));
    Ok(Some(model))
}

/// A runtime's `dependencies.json`: `{"package": "version"}`.
fn read_dependencies(bytes: Option<&[u8]>) -> Result<BTreeMap<String, String>, TrainError> {
    match bytes {
        Some(bytes) => serde_json::from_slice(bytes)
            .map_err(|e| TrainError::Runtime(format!("the runtime's dependencies.json: {e}"))),
        None => Ok(BTreeMap::new()),
    }
}

/// A runtime's `model.onnx`, loaded and checked.
struct Checked {
    bytes: Vec<u8>,
    model: Model,
    /// ONNX Runtime's scores of the validation rows.
    validation: (Vec<f64>, usize),
    /// The largest difference from the framework's scores, when the
    /// runtime wrote them.
    max_diff: Option<f64>,
}

impl Checked {
    /// The registry's description of the model (its path relative to the
    /// run's artifacts).
    fn info(
        &self,
        data: &Prepared,
        label: &str,
        dependencies: BTreeMap<String, String>,
    ) -> ModelInfo {
        ModelInfo {
            format: "onnx".into(),
            path: "model/model.onnx".into(),
            sha256: format!("{:x}", sha2::Sha256::digest(&self.bytes)),
            size: self.bytes.len() as u64,
            signature: self.model.signature().clone(),
            features: data.features.clone(),
            label: label.into(),
            task: data.task.as_str().into(),
            classes: data.classes().to_vec(),
            dependencies,
        }
    }
}

/// Loads `output/model.onnx` with ONNX Runtime and checks it takes the
/// job's features and, when the runtime wrote its own scores of the
/// validation rows, gives the same within `tolerance`.
fn check_onnx(
    output: &Path,
    runtime: &crate::spec::Runtime,
    data: &Prepared,
    tolerance: f64,
) -> Result<Checked, TrainError> {
    let bytes = std::fs::read(output.join("model.onnx")).map_err(|_| {
        TrainError::Runtime(format!(
            "runtime {} wrote no model.onnx to WEIR_OUTPUT_DIR",
            runtime.describe()
        ))
    })?;
    let model = Model::load(&bytes, &SessionOptions::default())
        .map_err(|e| TrainError::Runtime(format!("the runtime's model.onnx: {e}")))?;
    if let Some(width) = model.width()
        && width != data.features.len()
    {
        return Err(TrainError::Runtime(format!(
            "the runtime's model.onnx takes {width} features; the job has {}",
            data.features.len()
        )));
    }
    let validation = scores(&model, &data.table, &data.features, &data.parts[1])?;
    let reference = output.join(VALIDATION_SCORES);
    let max_diff = if reference.exists() {
        let theirs = read_scores(&reference, data.parts[1].len())?;
        let diff = if theirs.1 == validation.1 {
            theirs
                .0
                .iter()
                .zip(&validation.0)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max)
        } else {
            f64::INFINITY
        };
        if diff > tolerance {
            return Err(TrainError::Runtime(format!(
                "the exported ONNX model disagrees with the framework on the validation rows: \
                 max |Δ| {diff:.3e} > tolerance {tolerance:.0e}"
            )));
        }
        Some(diff)
    } else {
        None
    };
    Ok(Checked {
        bytes,
        model,
        validation,
        max_diff,
    })
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

/// Scores a runtime wrote (`score_0`, `score_1`, … columns) for `rows`
/// rows: `(rows × width values, width)`.
fn read_scores(path: &Path, rows: usize) -> Result<(Vec<f64>, usize), TrainError> {
    use arrow::array::{Array as _, Float64Array};
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let table = Table::read_file(path)?;
    if table.rows() != rows {
        return Err(TrainError::Runtime(format!(
            "{name} has {} rows; the part has {rows}",
            table.rows()
        )));
    }
    let mut columns = Vec::new();
    while let Ok(column) = table.column(&format!("score_{}", columns.len())) {
        let values = arrow::compute::cast(column, &arrow::datatypes::DataType::Float64)
            .map_err(|e| TrainError::Runtime(format!("{name}: score_{}: {e}", columns.len())))?;
        columns.push(values);
    }
    if columns.is_empty() {
        return Err(TrainError::Runtime(format!("{name} has no score_0 column")));
    }
    let columns: Vec<&Float64Array> = columns
        .iter()
        .map(|c| c.as_any().downcast_ref().expect("cast to Float64"))
        .collect();
    let mut scores = Vec::with_capacity(rows * columns.len());
    for row in 0..rows {
        scores.extend(columns.iter().map(|c| {
            if c.is_null(row) {
                f64::NAN
            } else {
                c.value(row)
            }
        }));
    }
    Ok((scores, columns.len()))
}
