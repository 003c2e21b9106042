//! Jobs: a Kafka source, a windowed aggregation and a sink, run as a timely
//! dataflow on any number of worker threads and processes.
//!
//! # Time, watermarks and epochs
//!
//! Every batch carries a timely timestamp `(epoch, watermark)`, ordered as a
//! product. The **watermark** is event time (ms) minus the allowed lateness;
//! a source holds its capability at the smallest watermark of its
//! partitions, so the input frontier of the window operator says which
//! windows no row can still arrive for. The **epoch** counts checkpoints:
//! every checkpoint interval a source stores its offsets for the epoch it
//! leaves and moves its capability to the next epoch.
//!
//! # Exactly-once
//!
//! When its input frontier has left epoch `e`, a window operator has seen
//! every row of `e` from every source: it seals `e` (partial states to
//! RocksDB) and only then lets its output frontier leave `e`. So when the
//! sink's frontier leaves `e`, every operator of every worker has sealed it:
//! the sink flushes its outputs and commits `e` on its worker (merge into
//! the state; keep `e`'s offsets). After a crash the workers agree on the
//! last epoch they all sealed, commit it, drop later ones, and the sources
//! resume at its offsets. Outputs are keyed by entity and window, so a
//! replay rewrites identical records and nothing is counted twice.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, RecordBatch, TimestampMillisecondArray};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseRecord, Producer as _, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::source;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Capability, Input, Inspect, Operator, Probe};
use timely::order::Product;
use weir_bus::dead_letter::{self, Source as DeadSource};
use weir_bus::{Bus, BusConfig, DeadLetterReason, DecodeError, TopicSpec};

use crate::DataflowError;
use crate::aggregate::{WINDOW_START, WindowAggregator, event_times};
use crate::batch::{Batch, KeyEncoder, split_by_key};
use crate::decode::{RecordDecoder, arrow_schema};
use crate::plan::{AggregatePlan, plan_aggregate};
use crate::store::{OperatorId, Store};
use crate::window::Window;

/// Timely time of every batch: `(epoch, watermark)`, a product order.
pub type Time = Product<u64, u64>;

const SOURCE_OP: OperatorId = 1;
const WINDOW_OP: OperatorId = 2;

/// Where event time comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventTime {
    /// A column (milliseconds since the epoch, or a timestamp).
    Field(String),
    /// The Kafka record's timestamp, as the column `_timestamp`.
    Kafka,
}

/// Column added for [`EventTime::Kafka`].
pub const KAFKA_TIMESTAMP: &str = "_timestamp";

/// Where a source starts when the job has no checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// The beginning of every partition.
    #[default]
    Earliest,
    /// Only records produced from now on.
    Latest,
}

/// A Kafka topic as a source.
#[derive(Debug, Clone)]
pub struct KafkaSource {
    /// Topic.
    pub topic: String,
    /// Record schema; `None` takes the topic's registered Avro schema.
    pub schema: Option<SchemaRef>,
    /// Event time.
    pub event_time: EventTime,
    /// How late (in event time) a record may be before it is dead-lettered.
    pub lateness: Duration,
    /// A partition with no records for this long stops holding the
    /// watermark back.
    pub idle_timeout: Duration,
    /// Where to start without a checkpoint.
    pub start: Start,
    /// Stop at the end offsets seen at start (a backfill or a test); the
    /// last windows are then evaluated. Otherwise run until stopped.
    pub bounded: bool,
}

impl KafkaSource {
    /// A source of `topic` with event time in `field`, no lateness, 30 s
    /// idle timeout, from the earliest offsets, unbounded.
    pub fn new(topic: impl Into<String>, field: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            schema: None,
            event_time: EventTime::Field(field.into()),
            lateness: Duration::ZERO,
            idle_timeout: Duration::from_secs(30),
            start: Start::Earliest,
            bounded: false,
        }
    }
}

/// A grouped, windowed aggregation.
#[derive(Debug, Clone)]
pub struct Aggregation {
    /// SQL condition rows must meet, if any.
    pub filter: Option<String>,
    /// Grouping key columns.
    pub keys: Vec<String>,
    /// The window.
    pub window: Window,
    /// `(output name, SQL aggregate)` pairs.
    pub aggregates: Vec<(String, String)>,
}

/// Results collected in memory (tests, tools): one process only.
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    batches: Arc<Mutex<Vec<RecordBatch>>>,
}

impl MemorySink {
    /// Everything emitted so far.
    pub fn batches(&self) -> Vec<RecordBatch> {
        self.batches.lock().expect("sink lock").clone()
    }
}

/// Where results go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// A topic, as JSON, keyed by the grouping keys and the window start
    /// (`u1|1700000000000`): a replay rewrites the same keys.
    Kafka {
        /// Topic.
        topic: String,
    },
    /// Memory.
    Memory(MemorySink),
}

/// A job.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// Name: the state directory and consumer group are named after it.
    pub name: String,
    /// Input.
    pub source: KafkaSource,
    /// Computation.
    pub aggregation: Aggregation,
    /// Output.
    pub sink: Sink,
    /// How often state and offsets are checkpointed.
    pub checkpoint_interval: Duration,
    /// Where workers keep their RocksDB state (`<dir>/<job>/worker-<n>`).
    pub state_dir: PathBuf,
}

/// Workers: threads of this process, and the other processes of a timely
/// cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Worker threads per process.
    pub threads: usize,
    /// This process's index in `addresses`.
    pub process: usize,
    /// `host:port` of every process; empty for a single process.
    pub addresses: Vec<String>,
}

impl Cluster {
    /// `threads` workers in this process only.
    pub fn local(threads: usize) -> Self {
        Self {
            threads,
            process: 0,
            addresses: Vec::new(),
        }
    }
}

/// What a running job reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Records read.
    pub records_in: u64,
    /// Result rows written.
    pub records_out: u64,
    /// Records sent to the dead-letter topic (all reasons).
    pub dead_letters: u64,
    /// Of which late.
    pub late: u64,
    /// Smallest watermark of this process's sources (ms).
    pub watermark: Option<i64>,
    /// Last epoch committed on this process's workers.
    pub committed_epoch: Option<u64>,
    /// Per partition: next offset to read and the lag behind its end.
    pub partitions: BTreeMap<i32, PartitionStatus>,
}

/// One partition's progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PartitionStatus {
    /// Next offset to read.
    pub offset: i64,
    /// Records between it and the end of the partition when last polled.
    pub lag: i64,
}

/// A running job.
pub struct JobHandle {
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<Status>>,
    thread: Option<std::thread::JoinHandle<Result<(), DataflowError>>>,
    output: SchemaRef,
}

impl JobHandle {
    /// The job's progress so far.
    pub fn status(&self) -> Status {
        self.status.lock().expect("status lock").clone()
    }

    /// Schema of the result rows.
    pub fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    /// Asks the job to checkpoint and stop (windows stay open for the next
    /// run).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Whether the job has ended (see [`JobHandle::join`]).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits for the job to end: a bounded source reached its end, or
    /// [`JobHandle::stop`] was called.
    pub fn join(mut self) -> Result<Status, DataflowError> {
        let thread = self.thread.take().expect("joined once");
        thread
            .join()
            .map_err(|_| DataflowError::Execution("a worker panicked".into()))??;
        Ok(self.status())
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        self.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Everything a worker needs, shareable across threads.
struct Prepared {
    spec: JobSpec,
    bus: BusConfig,
    codec: weir_bus::TopicCodec,
    payload_schema: SchemaRef,
    plan: AggregatePlan,
    time_column: usize,
    partitions: i32,
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<Status>>,
}

/// Plans and starts `spec` on `cluster`. Must be called within a tokio
/// runtime (the schema registry and Kafka admin calls are async).
pub async fn start(spec: JobSpec, bus: &Bus, cluster: Cluster) -> Result<JobHandle, DataflowError> {
    let source = &spec.source;
    let payload_schema = match &source.schema {
        Some(schema) => schema.clone(),
        None => {
            let subject = weir_core::topics::value_subject(&source.topic);
            let latest = bus.registry().latest(&subject).ok_or_else(|| {
                DataflowError::Plan(format!(
                    "topic `{}` has no schema registered under `{subject}`: register one or give the job a schema",
                    source.topic
                ))
            })?;
            match &latest.schema.kind {
                weir_bus::registry::SchemaKind::Avro(avro) => arrow_schema(avro.schema)?,
                weir_bus::registry::SchemaKind::Json(_) => {
                    return Err(DataflowError::Plan(format!(
                        "`{subject}` is a JSON Schema: give the job an Arrow schema"
                    )));
                }
            }
        }
    };
    let input_schema = match &source.event_time {
        EventTime::Kafka => {
            let mut fields: Vec<Field> = payload_schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            fields.push(Field::new(
                KAFKA_TIMESTAMP,
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ));
            Arc::new(Schema::new(fields))
        }
        EventTime::Field(_) => payload_schema.clone(),
    };
    let time_name = match &source.event_time {
        EventTime::Field(name) => name.as_str(),
        EventTime::Kafka => KAFKA_TIMESTAMP,
    };
    let time_column = input_schema.index_of(time_name).map_err(|_| {
        DataflowError::Plan(format!(
            "the event time column `{time_name}` is not in the source's schema"
        ))
    })?;
    let aggregation = &spec.aggregation;
    let keys: Vec<&str> = aggregation.keys.iter().map(String::as_str).collect();
    let aggregates: Vec<(&str, &str)> = aggregation
        .aggregates
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_str()))
        .collect();
    let plan = plan_aggregate(
        input_schema,
        aggregation.filter.as_deref(),
        &keys,
        &aggregates,
    )?;

    let admin = bus.admin();
    let partitions = admin.partitions(&source.topic).await?;
    admin
        .ensure_topic(&TopicSpec::new(weir_core::topics::dlq(&source.topic), 1))
        .await?;
    if let Sink::Kafka { topic } = &spec.sink {
        admin
            .ensure_topic(&TopicSpec::new(topic, partitions))
            .await?;
    }
    // The output schema, from an aggregator that is never run.
    let probe_dir = tempfile_dir()?;
    let output = WindowAggregator::new(
        0,
        Rc::new(Store::open(&probe_dir.join("probe"))?),
        plan.clone(),
        aggregation.window,
        time_column,
    )?
    .output_schema();
    let _ = std::fs::remove_dir_all(&probe_dir);

    let stop = Arc::new(AtomicBool::new(false));
    let status = Arc::new(Mutex::new(Status::default()));
    let prepared = Arc::new(Prepared {
        codec: bus.codec(&source.topic),
        spec,
        bus: bus.config().clone(),
        payload_schema,
        plan,
        time_column,
        partitions,
        stop: stop.clone(),
        status: status.clone(),
    });
    let config = timely_config(&cluster);
    let thread = std::thread::Builder::new()
        .name(format!("weir-job-{}", prepared.spec.name))
        .spawn(move || {
            let guards = timely::execute(config, move |worker| {
                if let Err(error) = run_worker(worker, &prepared) {
                    tracing::error!(%error, "dataflow worker failed");
                    prepared.stop.store(true, Ordering::SeqCst);
                    return Err(error);
                }
                Ok(())
            })
            .map_err(DataflowError::Execution)?;
            for result in guards.join() {
                result.map_err(DataflowError::Execution)??;
            }
            Ok(())
        })
        .map_err(|e| DataflowError::Execution(e.to_string()))?;
    Ok(JobHandle {
        stop,
        status,
        thread: Some(thread),
        output,
    })
}

fn tempfile_dir() -> Result<PathBuf, DataflowError> {
    let dir = std::env::temp_dir().join(format!(
        "weir-plan-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| DataflowError::State(e.to_string()))?;
    Ok(dir)
}

fn timely_config(cluster: &Cluster) -> timely::Config {
    let communication = if cluster.addresses.len() > 1 {
        timely::CommunicationConfig::Cluster {
            threads: cluster.threads,
            process: cluster.process,
            addresses: cluster.addresses.clone(),
            report: false,
            zerocopy: false,
        }
    } else if cluster.threads > 1 {
        timely::CommunicationConfig::Process(cluster.threads)
    } else {
        timely::CommunicationConfig::Thread
    };
    timely::Config {
        communication,
        worker: timely::WorkerConfig::default(),
    }
}

/// The epoch every worker has sealed, agreed through a broadcast.
fn agree_on_committed(worker: &mut timely::worker::Worker, local: Option<u64>) -> Option<u64> {
    let seen: Rc<RefCell<Vec<Option<u64>>>> = Rc::new(RefCell::new(Vec::new()));
    let collected = seen.clone();
    let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
        let (input, stream) = scope.new_input::<Vec<Option<u64>>>();
        let (probe, _) = stream
            .broadcast()
            .inspect(move |value| collected.borrow_mut().push(*value))
            .probe();
        (input, probe)
    });
    input.send(local);
    input.advance_to(1);
    drop(input);
    while !probe.done() {
        worker.step();
    }
    let values = seen.borrow();
    debug_assert_eq!(values.len(), worker.peers());
    values
        .iter()
        .copied()
        .collect::<Option<Vec<u64>>>()
        .and_then(|v| v.into_iter().min())
}

fn run_worker(
    worker: &mut timely::worker::Worker,
    prepared: &Arc<Prepared>,
) -> Result<(), DataflowError> {
    let (index, peers) = (worker.index(), worker.peers());
    let spec = &prepared.spec;
    let dir = spec
        .state_dir
        .join(&spec.name)
        .join(format!("worker-{index}"));
    std::fs::create_dir_all(&dir)
        .map_err(|e| DataflowError::State(format!("{}: {e}", dir.display())))?;
    let store = Rc::new(Store::open(&dir)?);

    // Recovery: the last epoch all workers sealed.
    let local = match (store.sealed(SOURCE_OP)?, store.sealed(WINDOW_OP)?) {
        (Some(a), Some(b)) => Some(a.min(b)),
        _ => None,
    };
    let committed = agree_on_committed(worker, local);
    let mut aggregator = WindowAggregator::new(
        WINDOW_OP,
        store.clone(),
        prepared.plan.clone(),
        spec.aggregation.window,
        prepared.time_column,
    )?;
    // Results of the epochs being committed now may have died with the
    // process before reaching the sink: write them again first.
    let replayed = aggregator.recover(committed)?;
    let replayed_rows: usize = replayed.iter().map(RecordBatch::num_rows).sum();
    if !replayed.is_empty() {
        let mut sink = SinkState::new(prepared)?;
        for batch in &replayed {
            sink.write(batch)?;
        }
        sink.flush()?;
    }
    aggregator.finish_recovery(committed)?;
    let resume: HashMap<i32, i64> = match committed {
        Some(epoch) => {
            let pending = store.committed(SOURCE_OP)?.is_none_or(|m| m < epoch);
            let offsets = store
                .offsets(SOURCE_OP, epoch)?
                .map(|bytes| serde_json::from_slice(&bytes))
                .transpose()
                .map_err(|e| DataflowError::State(format!("stored offsets: {e}")))?
                .unwrap_or_default();
            if pending {
                store.commit(SOURCE_OP, epoch, |_| {})?;
            }
            store.discard_after(SOURCE_OP, Some(epoch))?;
            offsets
        }
        None => {
            store.reset(SOURCE_OP)?;
            HashMap::new()
        }
    };
    let first_epoch = committed.map_or(1, |e| e + 1);
    tracing::info!(
        worker = index,
        ?local,
        ?committed,
        ?resume,
        results_written_again = replayed_rows,
        "job {} starting at epoch {first_epoch}",
        spec.name
    );

    let shared = Rc::new(WorkerShared {
        store,
        aggregator: RefCell::new(aggregator),
        committed: RefCell::new(committed),
    });
    let mut source_state = SourceState::new(prepared, index, peers, &resume, first_epoch)?;
    source_state.store = Some(shared.store.clone());
    let sink_state = SinkState::new(prepared)?;

    // Root timestamps must be totally ordered; the job runs in a nested
    // scope whose timestamps are (epoch, watermark) products.
    worker.dataflow::<u64, _, _>(|root| {
        root.iterative::<u64, _, _>(|scope| {
            let prepared_source = prepared.clone();
            let batches = source::<_, CapacityContainerBuilder<Vec<Batch>>, _, _>(
                scope,
                "KafkaSource",
                move |cap, info| {
                    let activator = scope.activator_for(info.address);
                    let mut state = source_state;
                    let mut cap = Some(cap);
                    move |output| {
                        let Some(c) = cap.as_mut() else { return };
                        match state.step(c, output) {
                            Ok(SourceStep::Continue { again }) => {
                                if again {
                                    activator.activate();
                                } else {
                                    activator.activate_after(Duration::from_millis(5));
                                }
                            }
                            Ok(SourceStep::Done) => cap = None,
                            Err(error) => {
                                prepared_source.stop.store(true, Ordering::SeqCst);
                                panic!("source failed: {error}");
                            }
                        }
                    }
                },
            );

            let key_columns = prepared.plan.keys.clone();
            let input_schema = prepared.plan.input.clone();
            let split = batches.unary::<CapacityContainerBuilder<Vec<(u64, Batch)>>, _, _, _>(
                Pipeline,
                "SplitByKey",
                move |_, _| {
                    let encoder =
                        KeyEncoder::new(input_schema, key_columns).expect("key columns planned");
                    move |input, output| {
                        input.for_each(|cap, data| {
                            let mut session = output.session(&cap);
                            for batch in data.drain(..) {
                                let rows = encoder.rows(&batch.0).expect("key rows");
                                for (worker, part) in
                                    split_by_key(&batch.0, &rows, peers).expect("split")
                                {
                                    session.give((worker, Batch(part)));
                                }
                            }
                        });
                    }
                },
            );

            let window_shared = shared.clone();
            let stopping = prepared.stop.clone();
            let results = split.unary_frontier::<CapacityContainerBuilder<Vec<Batch>>, _, _, _>(
                Exchange::new(|x: &(u64, Batch)| x.0),
                "WindowAggregate",
                move |cap, _| {
                    let mut op = WindowOp {
                        shared: window_shared,
                        sealed_through: first_epoch - 1,
                        max_epoch_seen: first_epoch,
                        stopping,
                    };
                    let mut cap = Some(cap);
                    move |(input, frontier), output| {
                        let mut arrived = Vec::new();
                        input.for_each(|stamp, data| {
                            let epoch = stamp.stamp().iter().map(|t| t.outer).min().unwrap_or(0);
                            arrived.extend(data.drain(..).map(|(_, batch)| (epoch, batch)));
                        });
                        let Some(held) = cap.as_mut() else { return };
                        let elements: Vec<Time> = frontier.frontier().iter().cloned().collect();
                        match op.step(arrived, &elements) {
                            Ok((results, next)) => {
                                if !results.is_empty() {
                                    output.session(&*held).give_iterator(results.into_iter());
                                }
                                match next {
                                    Some(next)
                                        if held.time() != &next
                                            && timely::order::PartialOrder::less_equal(
                                                held.time(),
                                                &next,
                                            ) =>
                                    {
                                        held.downgrade(&next)
                                    }
                                    Some(_) => {}
                                    None => cap = None,
                                }
                            }
                            Err(error) => panic!("window operator failed: {error}"),
                        }
                    }
                },
            );

            let sink_shared = shared.clone();
            let status = prepared.status.clone();
            let mut sink_state = sink_state;
            let mut last_done = None;
            results.sink(Pipeline, "SinkAndCommit", move |(input, frontier)| {
                input.for_each(|_, data| {
                    for batch in data.drain(..) {
                        if let Err(error) = sink_state.write(&batch.0) {
                            panic!("sink failed: {error}");
                        }
                        status.lock().expect("status").records_out += batch.num_rows() as u64;
                    }
                });
                // Epochs before the earliest one still in the frontier are done
                // everywhere; an empty frontier means all of them are.
                let done = match frontier.frontier().iter().map(|t| t.outer).min() {
                    None => u64::MAX,
                    Some(epoch) => epoch.saturating_sub(1),
                };
                if done == u64::MAX
                    && last_done != Some(done)
                    && let Err(error) = sink_state.flush()
                {
                    panic!("sink failed: {error}");
                }
                if last_done != Some(done) {
                    last_done = Some(done);
                    if let Err(error) = commit_through(&sink_shared, &mut sink_state, done, &status)
                    {
                        panic!("commit failed: {error}");
                    }
                }
            });
        })
    });
    while worker.step_or_park(Some(Duration::from_millis(20))) {}
    Ok(())
}

/// What the operators of one worker share (they run on its thread).
struct WorkerShared {
    store: Rc<Store>,
    aggregator: RefCell<WindowAggregator>,
    committed: RefCell<Option<u64>>,
}

/// Commits every epoch up to `done` that this worker's operators sealed:
/// outputs flushed first, then state merged and offsets kept.
fn commit_through(
    shared: &WorkerShared,
    sink: &mut SinkState,
    done: u64,
    status: &Mutex<Status>,
) -> Result<(), DataflowError> {
    let sealed = match (
        shared.store.sealed(SOURCE_OP)?,
        shared.store.sealed(WINDOW_OP)?,
    ) {
        (Some(a), Some(b)) => a.min(b),
        _ => return Ok(()),
    };
    let target = done.min(sealed);
    let last = *shared.committed.borrow();
    let first = last.map_or(1, |l| l + 1);
    if target < first {
        return Ok(());
    }
    sink.flush()?;
    let mut aggregator = shared.aggregator.borrow_mut();
    for epoch in first..=target {
        aggregator.commit(epoch)?;
        shared.store.commit(SOURCE_OP, epoch, |_| {})?;
    }
    *shared.committed.borrow_mut() = Some(target);
    status.lock().expect("status").committed_epoch = Some(target);
    tracing::debug!(epoch = target, "committed");
    Ok(())
}

/// The window operator's logic around the aggregator: seal epochs the
/// input frontier has left, close windows the watermark has passed, and
/// say how far the output capability may move.
struct WindowOp {
    shared: Rc<WorkerShared>,
    sealed_through: u64,
    max_epoch_seen: u64,
    stopping: Arc<AtomicBool>,
}

impl WindowOp {
    /// Takes the batches that arrived (with their epochs) and the input
    /// frontier; returns results to emit and where the output capability
    /// goes next (`None`: release it, the input is over).
    fn step(
        &mut self,
        arrived: Vec<(u64, Batch)>,
        frontier: &[Time],
    ) -> Result<(Vec<Batch>, Option<Time>), DataflowError> {
        let mut aggregator = self.shared.aggregator.borrow_mut();
        for (epoch, batch) in arrived {
            self.max_epoch_seen = self.max_epoch_seen.max(epoch);
            aggregator.update(epoch, &batch.0)?;
        }
        let mut results = Vec::new();
        if frontier.is_empty() {
            // Input over: a bounded source ended (evaluate every window) or
            // the job is stopping (keep windows open for the next run).
            for epoch in self.sealed_through + 1..=self.max_epoch_seen {
                aggregator.seal(epoch)?;
            }
            self.sealed_through = self.max_epoch_seen.max(self.sealed_through);
            if !self.stopping.load(Ordering::SeqCst) {
                // The last results belong to one more epoch, sealed too.
                let last = self.sealed_through + 1;
                if let Some(batch) = aggregator.close_all(last)? {
                    results.push(Batch(batch));
                }
                aggregator.seal(last)?;
                self.sealed_through = last;
            }
            return Ok((results, None));
        }
        let min_epoch = frontier.iter().map(|t| t.outer).min().expect("non-empty");
        let min_watermark = frontier.iter().map(|t| t.inner).min().expect("non-empty");
        for epoch in self.sealed_through + 1..min_epoch {
            aggregator.seal(epoch)?;
            self.sealed_through = epoch;
        }
        let limit = aggregator.closable(i64::try_from(min_watermark).unwrap_or(i64::MAX));
        if let Some(batch) = aggregator.close(min_epoch, limit)? {
            results.push(Batch(batch));
        }
        Ok((results, Some(Product::new(min_epoch, min_watermark))))
    }
}

/// Counts delivery failures of a producer, so a flush can tell whether
/// everything it waited for arrived.
#[derive(Default)]
struct CountingContext {
    failures: std::sync::atomic::AtomicU64,
}

impl rdkafka::ClientContext for CountingContext {}

impl rdkafka::producer::ProducerContext for CountingContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if let Err((error, message)) = result {
            tracing::error!(%error, topic = message.topic(), "a record was not delivered");
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

type Producer = ThreadedProducer<CountingContext>;

fn producer(config: &BusConfig) -> Result<Producer, DataflowError> {
    weir_bus::producer_config(config)
        .create_with_context(CountingContext::default())
        .map_err(|e| DataflowError::Execution(format!("creating a producer: {e}")))
}

/// Sends a record, waiting while the local queue is full.
fn produce(
    producer: &Producer,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: Option<rdkafka::message::OwnedHeaders>,
) -> Result<(), DataflowError> {
    let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(payload);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(headers) = headers {
        record = record.headers(headers);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((error, _)) => {
                return Err(DataflowError::Execution(format!(
                    "producing to `{topic}`: {error}"
                )));
            }
        }
    }
}

/// Waits for every record sent so far; fails if any was not delivered.
fn flush(producer: &Producer) -> Result<(), DataflowError> {
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| DataflowError::Execution(format!("flushing a producer: {e}")))?;
    let failures = producer.context().failures.swap(0, Ordering::Relaxed);
    if failures > 0 {
        return Err(DataflowError::Execution(format!(
            "{failures} record(s) were not delivered"
        )));
    }
    Ok(())
}

/// One partition of a source.
#[derive(Debug)]
struct PartitionProgress {
    next_offset: i64,
    /// Where a bounded source stops.
    end: Option<i64>,
    /// Largest event time read.
    max_event: Option<i64>,
    last_activity: Instant,
}

enum SourceStep {
    Continue { again: bool },
    Done,
}

/// A worker's Kafka source: its partitions, watermark and epoch.
struct SourceState {
    consumer: BaseConsumer,
    decoder: RecordDecoder,
    topic: String,
    dlq_topic: String,
    dlq: Producer,
    store: Option<Rc<Store>>,
    partitions: BTreeMap<i32, PartitionProgress>,
    lateness: i64,
    idle_timeout: Duration,
    kafka_time: bool,
    time_column: usize,
    epoch: u64,
    interval: Duration,
    next_checkpoint: Instant,
    /// Event time below which records are late (-inf until known).
    watermark: i64,
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<Status>>,
}

/// Most records decoded per activation.
const POLL_BATCH: usize = 4096;

impl SourceState {
    fn new(
        prepared: &Prepared,
        index: usize,
        peers: usize,
        resume: &HashMap<i32, i64>,
        first_epoch: u64,
    ) -> Result<Self, DataflowError> {
        let spec = &prepared.spec;
        let source = &spec.source;
        let consumer: BaseConsumer =
            weir_bus::consumer_config(&prepared.bus, &format!("weir-job-{}", spec.name))
                .set(
                    "auto.offset.reset",
                    match source.start {
                        Start::Earliest => "earliest",
                        Start::Latest => "latest",
                    },
                )
                .set("enable.partition.eof", "false")
                .create()
                .map_err(|e| DataflowError::Execution(format!("creating a consumer: {e}")))?;
        let mut assignment = TopicPartitionList::new();
        let mut partitions = BTreeMap::new();
        for partition in (0..prepared.partitions).filter(|p| *p as usize % peers == index) {
            let offset = match resume.get(&partition) {
                Some(offset) => Offset::Offset(*offset),
                None => match source.start {
                    Start::Earliest => Offset::Beginning,
                    Start::Latest => Offset::End,
                },
            };
            assignment
                .add_partition_offset(&source.topic, partition, offset)
                .map_err(|e| DataflowError::Execution(e.to_string()))?;
            let (low, high) = consumer
                .fetch_watermarks(&source.topic, partition, Duration::from_secs(10))
                .map_err(|e| {
                    DataflowError::Execution(format!(
                        "offsets of {}/{partition}: {e}",
                        source.topic
                    ))
                })?;
            let next_offset = match offset {
                Offset::Offset(o) => o,
                Offset::End => high,
                _ => low,
            };
            partitions.insert(
                partition,
                PartitionProgress {
                    next_offset,
                    end: source.bounded.then_some(high),
                    max_event: None,
                    last_activity: Instant::now(),
                },
            );
        }
        consumer
            .assign(&assignment)
            .map_err(|e| DataflowError::Execution(format!("assigning partitions: {e}")))?;
        let lateness = i64::try_from(source.lateness.as_millis()).unwrap_or(i64::MAX);
        Ok(Self {
            consumer,
            decoder: RecordDecoder::new(
                prepared.payload_schema.clone(),
                Some(prepared.codec.clone()),
            ),
            topic: source.topic.clone(),
            dlq_topic: weir_core::topics::dlq(&source.topic),
            dlq: producer(&prepared.bus)?,
            store: None,
            partitions,
            lateness,
            idle_timeout: source.idle_timeout,
            kafka_time: source.event_time == EventTime::Kafka,
            time_column: prepared.time_column,
            epoch: first_epoch,
            interval: spec.checkpoint_interval,
            next_checkpoint: Instant::now() + spec.checkpoint_interval,
            watermark: i64::MIN,
            stop: prepared.stop.clone(),
            status: prepared.status.clone(),
        })
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("store attached")
    }

    fn step(
        &mut self,
        cap: &mut Capability<Time>,
        output: &mut timely::dataflow::operators::generic::OutputBuilderSession<
            '_,
            Time,
            CapacityContainerBuilder<Vec<Batch>>,
        >,
    ) -> Result<SourceStep, DataflowError> {
        if cap.time().outer < self.epoch {
            cap.downgrade(&Product::new(self.epoch, 0));
        }
        if self.stop.load(Ordering::SeqCst) {
            self.seal()?;
            return Ok(SourceStep::Done);
        }
        let mut messages = Vec::new();
        while messages.len() < POLL_BATCH {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(message)) => messages.push(message.detach()),
                Some(Err(error)) => {
                    return Err(DataflowError::Execution(format!(
                        "reading `{}`: {error}",
                        self.topic
                    )));
                }
            }
        }
        let read = !messages.is_empty();
        if read {
            self.process(&messages, cap, output)?;
        }
        self.advance_watermark(cap);
        if Instant::now() >= self.next_checkpoint {
            self.seal()?;
            self.epoch += 1;
            self.next_checkpoint = Instant::now() + self.interval;
            cap.downgrade(&Product::new(self.epoch, cap.time().inner));
        }
        let finished = !self.partitions.is_empty()
            && self
                .partitions
                .values()
                .all(|p| p.end.is_some_and(|end| p.next_offset >= end));
        let no_partitions_bounded = self.partitions.is_empty() && self.is_bounded();
        if finished || no_partitions_bounded {
            self.seal()?;
            return Ok(SourceStep::Done);
        }
        Ok(SourceStep::Continue { again: read })
    }

    fn is_bounded(&self) -> bool {
        self.partitions.values().all(|p| p.end.is_some())
    }

    /// Stores the offsets after the current epoch and marks it sealed.
    fn seal(&mut self) -> Result<(), DataflowError> {
        flush(&self.dlq)?;
        let offsets: HashMap<i32, i64> = self
            .partitions
            .iter()
            .map(|(p, progress)| (*p, progress.next_offset))
            .collect();
        let bytes = serde_json::to_vec(&offsets).expect("offsets serialize");
        self.store().seal(SOURCE_OP, self.epoch, None, Some(&bytes))
    }

    fn process(
        &mut self,
        messages: &[rdkafka::message::OwnedMessage],
        cap: &Capability<Time>,
        output: &mut timely::dataflow::operators::generic::OutputBuilderSession<
            '_,
            Time,
            CapacityContainerBuilder<Vec<Batch>>,
        >,
    ) -> Result<(), DataflowError> {
        let payloads: Vec<Option<&[u8]>> = messages.iter().map(|m| m.payload()).collect();
        let decoded = self.decoder.decode(&payloads)?;
        for (index, error) in &decoded.rejected {
            self.dead_letter(&messages[*index], error)?;
        }
        let mut batch = decoded.batch;
        if self.kafka_time {
            let times = TimestampMillisecondArray::from_iter_values(
                decoded
                    .rows
                    .iter()
                    .map(|i| messages[*i].timestamp().to_millis().unwrap_or(0)),
            );
            let mut columns = batch.columns().to_vec();
            columns.push(Arc::new(times));
            let mut fields: Vec<Field> = batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            fields.push(Field::new(
                KAFKA_TIMESTAMP,
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ));
            batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
                .map_err(|e| DataflowError::Execution(e.to_string()))?;
        }
        let times = event_times(batch.column(self.time_column))?;
        let mut keep = Vec::with_capacity(times.len());
        let mut late = 0;
        for (row, (&index, &t)) in decoded.rows.iter().zip(&times).enumerate() {
            if t < self.watermark {
                late += 1;
                let error = DecodeError::new(
                    DeadLetterReason::Late,
                    format!(
                        "event time {t} is before the watermark {} (allowed lateness {} ms)",
                        self.watermark, self.lateness
                    ),
                );
                self.dead_letter(&messages[index], &error)?;
            } else {
                keep.push(row as u32);
                let partition = self
                    .partitions
                    .get_mut(&messages[index].partition())
                    .expect("assigned partition");
                if partition.max_event.is_none_or(|m| t > m) {
                    partition.max_event = Some(t);
                    // The watermark moves record by record, so that a record
                    // is late against every record before it in its
                    // partition, not only those of earlier polls.
                    if let Some(candidate) = self.candidate_watermark(Instant::now())
                        && candidate > self.watermark
                    {
                        self.watermark = candidate;
                    }
                }
            }
        }
        let now = Instant::now();
        for message in messages {
            if let Some(partition) = self.partitions.get_mut(&message.partition()) {
                partition.next_offset = partition.next_offset.max(message.offset() + 1);
                partition.last_activity = now;
            }
        }
        let batch = if keep.len() == batch.num_rows() {
            batch
        } else {
            take_record_batch(&batch, &arrow::array::UInt32Array::from(keep))
                .map_err(|e| DataflowError::Execution(e.to_string()))?
        };
        if batch.num_rows() > 0 {
            output.session(cap).give(Batch(batch));
        }
        let mut status = self.status.lock().expect("status");
        status.records_in += messages.len() as u64;
        status.dead_letters += (decoded.rejected.len() + late) as u64;
        status.late += late as u64;
        for (partition, progress) in &self.partitions {
            let entry = status.partitions.entry(*partition).or_default();
            entry.offset = progress.next_offset;
            if let Ok((_, high)) =
                self.consumer
                    .fetch_watermarks(&self.topic, *partition, Duration::ZERO)
            {
                entry.lag = (high - progress.next_offset).max(0);
            }
        }
        Ok(())
    }

    fn dead_letter(
        &self,
        message: &rdkafka::message::OwnedMessage,
        error: &DecodeError,
    ) -> Result<(), DataflowError> {
        let headers: Vec<(String, Vec<u8>)> = Vec::new();
        let source = DeadSource {
            topic: &self.topic,
            partition: message.partition(),
            offset: message.offset(),
            key: message.key(),
            payload: message.payload(),
            headers: &headers,
        };
        let headers = dead_letter::headers(&source, error);
        produce(
            &self.dlq,
            &self.dlq_topic,
            message.key(),
            message.payload().unwrap_or_default(),
            Some(headers),
        )
    }

    /// The watermark the partitions allow now: the smallest over partitions
    /// that are neither finished nor idle. When every partition is idle,
    /// event time is taken to advance with the clock since each one's last
    /// record, so that a quiet worker does not hold the whole job back.
    fn candidate_watermark(&self, now: Instant) -> Option<i64> {
        let watermark_of =
            |p: &PartitionProgress| p.max_event.map(|m| m.saturating_sub(self.lateness));
        let mut active = self
            .partitions
            .values()
            .filter(|p| p.end.is_none_or(|end| p.next_offset < end))
            .filter(|p| now.duration_since(p.last_activity) < self.idle_timeout)
            .peekable();
        if self.partitions.is_empty() {
            Some(i64::MAX)
        } else if active.peek().is_some() {
            // A partition that has not shown an event time yet holds the
            // watermark where it is.
            active
                .map(watermark_of)
                .collect::<Option<Vec<_>>>()
                .and_then(|v| v.into_iter().min())
        } else {
            self.partitions
                .values()
                .filter_map(|p| {
                    watermark_of(p).map(|w| {
                        let idle = now.duration_since(p.last_activity).as_millis() as i64;
                        w.saturating_add(idle)
                    })
                })
                .max()
        }
    }

    /// Moves the watermark and the capability with it.
    fn advance_watermark(&mut self, cap: &mut Capability<Time>) {
        if let Some(candidate) = self.candidate_watermark(Instant::now())
            && candidate > self.watermark
        {
            self.watermark = candidate;
        }
        if self.watermark == i64::MIN {
            return;
        }
        let inner = u64::try_from(self.watermark.max(0)).unwrap_or(0);
        if inner > cap.time().inner {
            cap.downgrade(&Product::new(self.epoch, inner));
            self.status.lock().expect("status").watermark = Some(self.watermark);
        }
    }
}

/// Writes results to the sink.
struct SinkState {
    target: SinkTarget,
}

enum SinkTarget {
    Kafka { topic: String, producer: Producer },
    Memory(MemorySink),
}

impl SinkState {
    fn new(prepared: &Prepared) -> Result<Self, DataflowError> {
        let target = match &prepared.spec.sink {
            Sink::Kafka { topic } => SinkTarget::Kafka {
                topic: topic.clone(),
                producer: producer(&prepared.bus)?,
            },
            Sink::Memory(memory) => SinkTarget::Memory(memory.clone()),
        };
        Ok(Self { target })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), DataflowError> {
        match &self.target {
            SinkTarget::Memory(memory) => {
                memory
                    .batches
                    .lock()
                    .expect("sink lock")
                    .push(batch.clone());
                Ok(())
            }
            SinkTarget::Kafka { topic, producer } => {
                let keys = result_keys(batch)?;
                let mut lines = Vec::new();
                {
                    let mut writer = arrow::json::LineDelimitedWriter::new(&mut lines);
                    writer
                        .write(batch)
                        .map_err(|e| DataflowError::Execution(e.to_string()))?;
                    writer
                        .finish()
                        .map_err(|e| DataflowError::Execution(e.to_string()))?;
                }
                for (key, line) in keys.iter().zip(lines.split(|b| *b == b'\n')) {
                    produce(producer, topic, Some(key.as_bytes()), line, None)?;
                }
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> Result<(), DataflowError> {
        match &self.target {
            SinkTarget::Kafka { producer, .. } => flush(producer),
            SinkTarget::Memory(_) => Ok(()),
        }
    }
}

/// Deterministic keys of result rows: the grouping keys and the window
/// start, `|`-separated (`u1|1700000000000`).
fn result_keys(batch: &RecordBatch) -> Result<Vec<String>, DataflowError> {
    let schema = batch.schema();
    let start = schema
        .index_of(WINDOW_START)
        .map_err(|e| DataflowError::Execution(e.to_string()))?;
    let options = arrow::util::display::FormatOptions::default();
    let formatters = (0..start)
        .map(|i| arrow::util::display::ArrayFormatter::try_new(batch.column(i).as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DataflowError::Execution(e.to_string()))?;
    let starts = batch
        .column(start)
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .ok_or_else(|| {
            DataflowError::Execution("window_start is not a millisecond timestamp".into())
        })?;
    Ok((0..batch.num_rows())
        .map(|row| {
            let mut key: Vec<String> = formatters
                .iter()
                .map(|f| f.value(row).to_string())
                .collect();
            key.push(starts.value(row).to_string());
            key.join("|")
        })
        .collect())
}
