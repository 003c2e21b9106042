//! Runs the models: dynamic batching of concurrent requests over a pool of
//! ONNX Runtime sessions, and the swap to new versions under load.
//!
//! Requests queue their matrices; each of `runners` threads takes the
//! first request waiting, then whatever else is queued (waiting up to
//! `max_wait_us` for more) up to `max_batch` rows, runs them as one batch
//! on its own session of each model, and hands each request its rows.
//! Sessions are not shared between threads (a run holds its session), so
//! the runners never wait on each other.
//!
//! A request that finds the runners idle and the queue empty runs at once
//! on its own thread, on a session kept for that (if no other request
//! holds it): a lone request does not pay the two thread hand-offs of the
//! queue. Under load the runners are busy, so requests queue and batch.
//!
//! A swap loads the new models' sessions first, then replaces the set the
//! runners read before each batch: batches already running finish on the
//! old set, the next ones take the new, and no request fails.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::oneshot;
use weir_onnx::{Model, Output, SessionOptions, Values};

use crate::ServeError;
use crate::spec::{Batching, Combine};

/// One model of a set, loaded once per runner.
pub struct LoadedModel {
    /// `name@version`.
    pub reference: String,
    /// Its registry version.
    pub version: u64,
    /// Its ensemble weight.
    pub weight: f64,
    /// One session per runner thread, and the last for requests that run
    /// on their own thread.
    sessions: Vec<Model>,
}

impl LoadedModel {
    /// Loads `bytes` once per runner.
    pub fn load(
        reference: String,
        version: u64,
        weight: f64,
        bytes: &[u8],
        batching: &Batching,
    ) -> Result<Self, ServeError> {
        let options = SessionOptions {
            intra_threads: Some(batching.intra_threads),
        };
        let sessions = (0..=batching.runners)
            .map(|_| Model::load(bytes, &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ServeError::Model(format!("{reference}: {e}")))?;
        Ok(Self {
            reference,
            version,
            weight,
            sessions,
        })
    }

    /// What the file declares.
    pub fn signature(&self) -> &weir_onnx::Signature {
        self.sessions[0].signature()
    }
}

/// The models a deployment serves at one time.
pub struct ModelSet {
    /// The members.
    pub members: Vec<LoadedModel>,
    /// How their scores combine.
    pub combine: Combine,
    /// The model combining them (`Combine::Stacking`).
    pub stacker: Option<LoadedModel>,
}

impl ModelSet {
    /// The versions, as logged: `name@3`, `a@1+b@2` for an ensemble,
    /// `a@1+b@2>s@1` when `s` stacks them.
    pub fn versions(&self) -> String {
        let members = self
            .members
            .iter()
            .map(|m| m.reference.as_str())
            .collect::<Vec<_>>()
            .join("+");
        match &self.stacker {
            Some(stacker) => format!("{members}>{}", stacker.reference),
            None => members,
        }
    }

    /// Each model's `name@version`: the members, then the stacker.
    pub fn references(&self) -> Vec<String> {
        self.members
            .iter()
            .chain(&self.stacker)
            .map(|m| m.reference.clone())
            .collect()
    }

    /// The version number the OIP model reports: the first member's.
    pub fn version(&self) -> u64 {
        self.members.first().map_or(0, |m| m.version)
    }

    /// The outputs of one batch on the session kept for requests running
    /// on their own thread; `None` if it is busy (a single model only).
    fn try_run_inline(
        &self,
        matrix: &[f32],
        rows: usize,
    ) -> Option<Result<Vec<Output>, ServeError>> {
        let [only] = self.members.as_slice() else {
            return None;
        };
        let session = only.sessions.last()?;
        let outcome = session.try_predict(matrix, rows)?;
        Some(
            outcome
                .map(|p| p.outputs)
                .map_err(|e| ServeError::Request(format!("{}: {e}", only.reference))),
        )
    }

    /// The outputs of one batch, through runner `runner`'s sessions.
    fn run(&self, runner: usize, matrix: &[f32], rows: usize) -> Result<Vec<Output>, ServeError> {
        let inference = |m: &LoadedModel, e: weir_onnx::OnnxError| {
            ServeError::Request(format!("{}: {e}", m.reference))
        };
        if let Some(stacker) = &self.stacker {
            return self.stack(stacker, runner, matrix, rows);
        }
        if let [only] = self.members.as_slice() {
            let prediction = only.sessions[runner]
                .predict(matrix, rows)
                .map_err(|e| inference(only, e))?;
            return Ok(prediction.outputs);
        }
        // An ensemble: its members' scores, combined.
        let mut total: Vec<f64> = Vec::new();
        let mut width = 0;
        let mut weights = 0.0;
        for member in &self.members {
            let prediction = member.sessions[runner]
                .predict(matrix, rows)
                .map_err(|e| inference(member, e))?;
            let (scores, w) = prediction.scores().ok_or_else(|| {
                ServeError::Model(format!("{}: no numeric output", member.reference))
            })?;
            if total.is_empty() {
                total = vec![0.0; scores.len()];
                width = w;
            } else if w != width {
                return Err(ServeError::Model(format!(
                    "{}: {w} scores a row, the other members {width}",
                    member.reference
                )));
            }
            let weight = match self.combine {
                Combine::Mean | Combine::Stacking => 1.0,
                Combine::Weighted | Combine::Vote => member.weight,
            };
            weights += weight;
            match self.combine {
                Combine::Vote if width > 1 => {
                    for (row, votes) in scores.chunks(width).zip(total.chunks_mut(width)) {
                        let top = row
                            .iter()
                            .enumerate()
                            .fold(
                                (0, f64::NEG_INFINITY),
                                |b, (i, &v)| {
                                    if v > b.1 { (i, v) } else { b }
                                },
                            )
                            .0;
                        votes[top] += weight;
                    }
                }
                _ => {
                    for (t, s) in total.iter_mut().zip(scores) {
                        *t += weight * s;
                    }
                }
            }
        }
        for t in &mut total {
            *t /= weights;
        }
        let name = if width > 1 {
            "probabilities"
        } else {
            "variable"
        };
        Ok(vec![Output {
            name: name.into(),
            shape: vec![rows, width],
            values: Values::F64(total),
        }])
    }
}

impl ModelSet {
    /// The stacker's outputs on the members' scores, side by side.
    fn stack(
        &self,
        stacker: &LoadedModel,
        runner: usize,
        matrix: &[f32],
        rows: usize,
    ) -> Result<Vec<Output>, ServeError> {
        let mut scores = Vec::with_capacity(self.members.len());
        for member in &self.members {
            let prediction = member.sessions[runner]
                .predict(matrix, rows)
                .map_err(|e| ServeError::Request(format!("{}: {e}", member.reference)))?;
            scores.push(prediction.scores().ok_or_else(|| {
                ServeError::Model(format!("{}: no numeric output", member.reference))
            })?);
        }
        let width: usize = scores.iter().map(|(_, w)| w).sum();
        let mut stacked = Vec::with_capacity(rows * width);
        for row in 0..rows {
            for (values, w) in &scores {
                stacked.extend(values[row * w..(row + 1) * w].iter().map(|&x| x as f32));
            }
        }
        stacker.sessions[runner]
            .predict(&stacked, rows)
            .map(|p| p.outputs)
            .map_err(|e| ServeError::Model(format!("stacker {}: {e}", stacker.reference)))
    }
}

/// What a request gets back.
#[derive(Debug, Clone)]
pub struct Scored {
    /// The outputs, for its rows only.
    pub outputs: Vec<Output>,
    /// The versions that answered.
    pub versions: String,
    /// The version number the OIP model reports.
    pub version: u64,
}

impl Scored {
    /// The scores (`rows × width`): see [`weir_onnx::Prediction::scores`].
    pub fn scores(&self) -> Option<(Vec<f64>, usize)> {
        weir_onnx::scores(&self.outputs)
    }
}

struct Job {
    matrix: Vec<f32>,
    rows: usize,
    reply: oneshot::Sender<Result<Scored, ServeError>>,
}

/// How the batcher has batched: model runs (a request run inline, on the
/// caller's thread when every runner is idle, is a run of one), the
/// requests and rows they held, and the most requests one run held.
#[derive(Debug, Default)]
pub struct BatchCounts {
    runs: AtomicU64,
    requests: AtomicU64,
    rows: AtomicU64,
    most_requests: AtomicU64,
}

impl BatchCounts {
    fn record(&self, requests: usize, rows: usize) {
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(requests as u64, Ordering::Relaxed);
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
        self.most_requests
            .fetch_max(requests as u64, Ordering::Relaxed);
    }

    /// `(runs, requests, rows, most requests in one run)` so far.
    pub fn totals(&self) -> (u64, u64, u64, u64) {
        (
            self.runs.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
            self.rows.load(Ordering::Relaxed),
            self.most_requests.load(Ordering::Relaxed),
        )
    }

    /// In Prometheus' text format.
    pub fn render(&self, deployment: &str) -> String {
        let (runs, requests, rows, most) = self.totals();
        let labels = format!("deployment=\"{deployment}\"");
        format!(
            "# HELP weir_batches_total Model runs of the dynamic batcher.\n# TYPE weir_batches_total counter\n\
             weir_batches_total{{{labels}}} {runs}\n\
             # HELP weir_batched_requests_total Requests those runs answered.\n# TYPE weir_batched_requests_total counter\n\
             weir_batched_requests_total{{{labels}}} {requests}\n\
             # HELP weir_batched_rows_total Rows those runs scored.\n# TYPE weir_batched_rows_total counter\n\
             weir_batched_rows_total{{{labels}}} {rows}\n\
             # HELP weir_batch_requests_max The most requests one run answered.\n# TYPE weir_batch_requests_max gauge\n\
             weir_batch_requests_max{{{labels}}} {most}\n"
        )
    }
}

/// The batcher and its runner threads.
pub struct Runner {
    queue: Sender<Job>,
    /// How it has batched.
    counts: Arc<BatchCounts>,
    /// Runner threads running a batch now.
    active: Arc<AtomicUsize>,
    current: Arc<RwLock<Arc<ModelSet>>>,
    width: usize,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("threads", &self.threads.len())
            .finish_non_exhaustive()
    }
}

impl Runner {
    /// Starts `batching.runners` threads serving `models`, whose rows
    /// have `width` features.
    pub fn start(models: ModelSet, width: usize, batching: &Batching) -> Self {
        let (queue, jobs) = crossbeam_channel::bounded::<Job>(4096);
        let current = Arc::new(RwLock::new(Arc::new(models)));
        let active = Arc::new(AtomicUsize::new(0));
        let counts = Arc::new(BatchCounts::default());
        let threads = (0..batching.runners)
            .map(|index| {
                let jobs = jobs.clone();
                let current = current.clone();
                let active = active.clone();
                let counts = counts.clone();
                let max_batch = batching.max_batch;
                let max_wait = Duration::from_micros(batching.max_wait_us);
                std::thread::Builder::new()
                    .name(format!("weir-runner-{index}"))
                    .spawn(move || {
                        let limits = (width, max_batch, max_wait);
                        serve(index, &jobs, &current, &active, &counts, limits)
                    })
                    .expect("a runner thread")
            })
            .collect();
        Self {
            queue,
            counts,
            active,
            current,
            width,
            threads,
        }
    }

    /// How it has batched so far.
    pub fn batch_counts(&self) -> &BatchCounts {
        &self.counts
    }

    /// The models serving now.
    pub fn models(&self) -> Arc<ModelSet> {
        self.current.read().expect("models lock").clone()
    }

    /// Serves `models` from the next batch on.
    pub fn swap(&self, models: ModelSet) {
        *self.current.write().expect("models lock") = Arc::new(models);
    }

    /// Runs `rows` rows (row-major, `rows × width`).
    pub async fn predict(&self, matrix: Vec<f32>, rows: usize) -> Result<Scored, ServeError> {
        if matrix.len() != rows * self.width {
            return Err(ServeError::Request(format!(
                "{} values do not make {rows} rows of {} features",
                matrix.len(),
                self.width
            )));
        }
        if self.queue.is_empty() && self.active.load(Ordering::Relaxed) == 0 {
            let models = self.models();
            if let Some(outcome) = models.try_run_inline(&matrix, rows) {
                // A run of its own: a batch of one.
                self.counts.record(1, rows);
                return outcome.map(|outputs| Scored {
                    outputs,
                    versions: models.versions(),
                    version: models.version(),
                });
            }
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            matrix,
            rows,
            reply,
        };
        // The queue is bounded: a full one holds the caller back. Sending
        // blocks, so it is done off the async threads when it must wait.
        let job = match self.queue.try_send(job) {
            Ok(()) => None,
            Err(crossbeam_channel::TrySendError::Full(job)) => Some(job),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                return Err(ServeError::Internal("the runners have stopped".into()));
            }
        };
        if let Some(job) = job {
            let queue = self.queue.clone();
            tokio::task::spawn_blocking(move || queue.send(job))
                .await
                .map_err(|e| ServeError::Internal(e.to_string()))?
                .map_err(|_| ServeError::Internal("the runners have stopped".into()))?;
        }
        answer
            .await
            .map_err(|_| ServeError::Internal("a runner stopped".into()))?
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        // The threads stop when the queue closes: replace our sender.
        let (closed, _) = crossbeam_channel::bounded(0);
        self.queue = closed;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A runner thread: takes a request, and more that wait (up to
/// `max_batch` rows, for up to `max_wait`), and runs them as one batch of
/// `width`-feature rows.
fn serve(
    index: usize,
    jobs: &Receiver<Job>,
    current: &RwLock<Arc<ModelSet>>,
    active: &AtomicUsize,
    counts: &BatchCounts,
    (width, max_batch, max_wait): (usize, usize, Duration),
) {
    while let Ok(first) = jobs.recv() {
        active.fetch_add(1, Ordering::Relaxed);
        let mut rows = first.rows;
        let mut batch = vec![first];
        let deadline = Instant::now() + max_wait;
        while rows < max_batch {
            let next = if max_wait.is_zero() {
                jobs.try_recv().ok()
            } else {
                jobs.recv_deadline(deadline).ok()
            };
            let Some(job) = next else { break };
            rows += job.rows;
            batch.push(job);
        }
        counts.record(batch.len(), rows);
        let models = current.read().expect("models lock").clone();
        let outcome = if let [only] = batch.as_slice() {
            models.run(index, &only.matrix, only.rows)
        } else {
            let mut matrix = Vec::with_capacity(rows * width);
            for job in &batch {
                matrix.extend_from_slice(&job.matrix);
            }
            models.run(index, &matrix, rows)
        };
        let versions = models.versions();
        let version = models.version();
        match outcome {
            Ok(outputs) => {
                let mut start = 0;
                for job in batch {
                    let outputs = outputs
                        .iter()
                        .map(|o| rows_of(o, start, job.rows, rows))
                        .collect();
                    start += job.rows;
                    let _ = job.reply.send(Ok(Scored {
                        outputs,
                        versions: versions.clone(),
                        version,
                    }));
                }
            }
            Err(error) if batch.len() > 1 => {
                // One bad request must not fail the others: run each alone.
                tracing::debug!(%error, "a batch failed; running its requests one by one");
                for job in batch {
                    let outcome = models
                        .run(index, &job.matrix, job.rows)
                        .map(|outputs| Scored {
                            outputs,
                            versions: versions.clone(),
                            version,
                        });
                    let _ = job.reply.send(outcome);
                }
            }
            Err(error) => {
                for job in batch {
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
        }
        active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Rows `start..start + n` of an output of a `total`-row batch.
fn rows_of(output: &Output, start: usize, n: usize, total: usize) -> Output {
    let width = output_len(&output.values).checked_div(total).unwrap_or(0);
    let range = start * width..(start + n) * width;
    let values = match &output.values {
        Values::F32(v) => Values::F32(v[range].to_vec()),
        Values::F64(v) => Values::F64(v[range].to_vec()),
        Values::I64(v) => Values::I64(v[range].to_vec()),
        Values::Str(v) => Values::Str(v[range].to_vec()),
    };
    let mut shape = output.shape.clone();
    if let Some(first) = shape.first_mut() {
        *first = n;
    }
    Output {
        name: output.name.clone(),
        shape,
        values,
    }
}

/// How many values an output holds.
pub fn output_len(values: &Values) -> usize {
    match values {
        Values::F32(v) => v.len(),
        Values::F64(v) => v.len(),
        Values::I64(v) => v.len(),
        Values::Str(v) => v.len(),
    }
}
