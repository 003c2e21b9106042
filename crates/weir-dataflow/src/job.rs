//! Jobs: a source (and a second one for an interval join), joins, a row
//! transform, custom operators, a windowed aggregation and a sink, run as a
//! timely dataflow on any number of worker threads and processes.
//!
//! ```text
//!  source ─▶ [lookup join] ─┐
//!                           ├─ route by key ─exchange─▶ [interval join] ─▶ [transform]
//!  [join source] ───────────┘
//!     ─▶ route by key ─exchange─▶ [custom operators…] ─▶ split by key ─exchange─▶ [window aggregate ─▶ transform]
//!     ─▶ sink ─▶ commit
//! ```
//!
//! This file wires the stages into a dataflow on each worker;
//! [`crate::epochs`] is the checkpoint protocol the workers follow,
//! [`crate::operator`] runs joins and custom operators, and
//! [`crate::window_operator`] the windowed aggregation.
//!
//! A [`JobSpec`] says what to compute in SQL fragments (what `weir job run`
//! reads from TOML); [`plan`] turns it into a [`Pipeline`] of physical
//! expressions against the resolved schemas (the SQL front end builds
//! pipelines directly; both are [`crate::pipeline`]'s); [`run`] runs a
//! pipeline.
//!
//! # Time, watermarks and epochs
//!
//! Every batch carries a timely timestamp `(epoch, watermark)`, ordered as a
//! product. The **watermark** is event time (ms) minus the allowed lateness;
//! a source holds its capability at the smallest watermark of its
//! partitions, so the input frontier of the window operator says which
//! windows no row can still arrive for. The **epoch** counts checkpoints: every checkpoint interval a
//! source stores its offsets for the epoch it leaves and moves its
//! capability to the next epoch.
//!
//! # Exactly-once
//!
//! Each stateful operator **seals** an epoch on its own when its input
//! frontier has left it: the source its offsets, the window operator its
//! partial states, the sink its output (flushed to Kafka, or a staged
//! Parquet file synced to disk). The sink holds its capability until it has
//! sealed, so when the frontier of the final commit operator leaves epoch
//! `e`, every operator of every worker has sealed `e` (timely's progress
//! tracking is global): the worker **commits** `e` — merges the partial
//! states into the committed state, keeps the offsets, renames the staged
//! files into place. After a crash the workers agree (a broadcast) on the
//! last epoch they all sealed, commit it, drop later ones, and the sources
//! resume at its offsets. Outputs are keyed by entity and window, so a
//! replay rewrites identical records and nothing is counted twice.
//!
//! When the dataflow ends, the workers agree on one last epoch that every
//! operator seals — closing every remaining window in it at the end of a
//! bounded input, leaving them open for the next run when stopped — and
//! all commit it together.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, Pipeline as Pipe};
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::Operator;
use timely::dataflow::operators::generic::{OutputBuilderSession, source};
use timely::order::Product;
use weir_bus::{Bus, BusConfig, TopicCodec, TopicSpec};

use crate::DataflowError;
use crate::aggregate::WindowAggregator;
use crate::batch::{Batch, KeyEncoder, split_by_key};
use crate::epochs::{
    JOIN_OP, LOOKUP_OP, OPERATOR_OPS, RIGHT_SOURCE_OP, SINK_OP, SOURCE_OP, WINDOW_OP, WorkerShared,
    agree_on_committed, commit_through, finish, local_sealed, resume_source, sealing_ops,
};
use crate::lookup::LookupTable;
use crate::operator::{Emitted, OperatorRunner};
use crate::sink::SinkState;
use crate::source::{SourceSetup, SourceState, SourceStep};
use crate::state::KeyedState;
use crate::store::{OperatorId, Store};
use crate::window_operator::WindowOp;

pub use crate::pipeline::{
    Aggregation, Cluster, EventTime, JobSpec, KAFKA_TIMESTAMP, KafkaSource, ParquetSource,
    PartitionStatus, Pipeline, Select, Source, Start, Status, Time, WindowedAggregate, plan,
    source_schema, topic_schema,
};
pub use crate::sink::{MemorySink, Sink};

/// A running job.
pub struct JobHandle {
    stop: Arc<AtomicBool>,
    checkpoints: Arc<AtomicU64>,
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

    /// Asks the job to checkpoint now rather than at its next interval
    /// (`Status::committed_epoch` says when it has).
    pub fn checkpoint(&self) {
        self.checkpoints.fetch_add(1, Ordering::SeqCst);
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

/// Plans and starts `spec` on `cluster`. Must be called within a tokio
/// runtime (the schema registry and Kafka admin calls are async).
pub async fn start(spec: JobSpec, bus: &Bus, cluster: Cluster) -> Result<JobHandle, DataflowError> {
    let pipeline = plan(spec, bus).await?;
    run(pipeline, bus, cluster).await
}

/// Everything a worker needs, shareable across threads.
struct Prepared {
    pipeline: Pipeline,
    bus: BusConfig,
    source_codec: Option<TopicCodec>,
    table_codec: Option<TopicCodec>,
    partitions: i32,
    /// The interval join's topic: its codec and partitions.
    right: Option<(TopicCodec, i32)>,
    sink_key: Vec<usize>,
    output: SchemaRef,
    stop: Arc<AtomicBool>,
    checkpoints: Arc<AtomicU64>,
    status: Arc<Mutex<Status>>,
    /// Set when a worker of this process failed: the others stop at once
    /// rather than wait for it (timely's progress would wait forever).
    failed: AtomicBool,
    /// The first failure, which the job ends with.
    failure: Mutex<Option<DataflowError>>,
}

impl Prepared {
    /// Records an operator's failure (the first is kept) and stops every
    /// worker of this process.
    fn fail(&self, error: DataflowError) {
        let mut failure = self.failure.lock().expect("failure");
        if failure.is_none() {
            tracing::error!(%error, "dataflow job failed");
            *failure = Some(error);
        }
        self.failed.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// What a worker returns when it stopped because another one failed.
const ANOTHER_FAILED: &str = "stopped: another worker of the job failed";

/// Marks the job failed when the worker holding it unwinds from a panic
/// (an operator's error), so that the other workers stop.
struct FailOnPanic<'a>(&'a Prepared);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.failed.store(true, Ordering::SeqCst);
            self.0.stop.store(true, Ordering::SeqCst);
        }
    }
}

/// Starts a planned job on `cluster`. Must be called within a tokio
/// runtime (Kafka admin calls are async).
pub async fn run(
    pipeline: Pipeline,
    bus: &Bus,
    cluster: Cluster,
) -> Result<JobHandle, DataflowError> {
    let admin = bus.admin();
    let (partitions, source_codec) = match &pipeline.source {
        Source::Kafka(kafka) => {
            admin
                .ensure_topic(&TopicSpec::new(weir_core::topics::dlq(&kafka.topic), 1))
                .await?;
            (
                admin.partitions(&kafka.topic).await?,
                Some(bus.codec(&kafka.topic)),
            )
        }
        Source::Parquet(parquet) => (parquet.files()?.len() as i32, None),
    };
    let table_codec = match &pipeline.lookup {
        Some(lookup) => {
            admin
                .ensure_topic(&TopicSpec::new(weir_core::topics::dlq(&lookup.topic), 1))
                .await?;
            Some(bus.codec(&lookup.topic))
        }
        None => None,
    };
    let right = match &pipeline.join {
        Some(join) => {
            let topic = &join.spec.right.topic;
            admin
                .ensure_topic(&TopicSpec::new(weir_core::topics::dlq(topic), 1))
                .await?;
            Some((bus.codec(topic), admin.partitions(topic).await?))
        }
        None => None,
    };
    if let Some(spec) = pipeline.sink_topic(partitions.max(1)) {
        admin.ensure_topic(&spec).await?;
    }
    let output = pipeline.output_schema()?;
    let sink_key = pipeline.sink_key()?;
    if let Some(aggregate) = &pipeline.aggregate
        && aggregate.window.is_global()
        && aggregate.emit == crate::aggregate::Emit::OnClose
    {
        return Err(DataflowError::Plan(
            "an aggregation without a window never closes: it is emitted as it changes (emit = \"update\")".into(),
        ));
    }
    if matches!(pipeline.sink, Sink::Table { .. }) && sink_key.is_empty() {
        return Err(DataflowError::Plan(
            "a table sink needs key columns (`key`)".into(),
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let checkpoints = Arc::new(AtomicU64::new(0));
    let status = Arc::new(Mutex::new(Status::default()));
    let name = pipeline.name.clone();
    let prepared = Arc::new(Prepared {
        pipeline,
        bus: bus.config().clone(),
        source_codec,
        table_codec,
        partitions,
        right,
        sink_key,
        output: output.clone(),
        stop: stop.clone(),
        checkpoints: checkpoints.clone(),
        status: status.clone(),
        failed: AtomicBool::new(false),
        failure: Mutex::new(None),
    });
    let ended = prepared.clone();
    let config = timely_config(&cluster);
    let thread = std::thread::Builder::new()
        .name(format!("weir-job-{name}"))
        .spawn(move || {
            let guards = timely::execute(config, move |worker| {
                let _failing = FailOnPanic(&prepared);
                if let Err(error) = run_worker(worker, &prepared) {
                    // The first failure is the job's; the others' are
                    // "another worker failed".
                    let error = if prepared.failed.load(Ordering::SeqCst) {
                        prepared.stop.store(true, Ordering::SeqCst);
                        error
                    } else {
                        prepared.fail(error);
                        DataflowError::Execution(ANOTHER_FAILED.into())
                    };
                    // Timely steps a worker until its dataflows complete,
                    // after this returns: with a peer gone they never do.
                    for dataflow in worker.installed_dataflows() {
                        worker.drop_dataflow(dataflow);
                    }
                    return Err(error);
                }
                Ok(())
            })
            .map_err(DataflowError::Execution)?;
            let results = guards.join();
            // The failure that stopped the others, not theirs.
            if let Some(failure) = ended.failure.lock().expect("failure").take() {
                return Err(failure);
            }
            for result in results {
                result.map_err(DataflowError::Execution)??;
            }
            Ok(())
        })
        .map_err(|e| DataflowError::Execution(e.to_string()))?;
    Ok(JobHandle {
        stop,
        checkpoints,
        status,
        thread: Some(thread),
        output,
    })
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

fn run_worker(
    worker: &mut timely::worker::Worker,
    prepared: &Arc<Prepared>,
) -> Result<(), DataflowError> {
    let (index, peers) = (worker.index(), worker.peers());
    let pipeline = &prepared.pipeline;
    // Every event of this worker carries the job and the worker.
    let _span = tracing::info_span!("job", name = %pipeline.name, worker = index).entered();
    let dir = pipeline
        .state_dir
        .join(&pipeline.name)
        .join(format!("worker-{index}"));
    std::fs::create_dir_all(&dir)
        .map_err(|e| DataflowError::State(format!("{}: {e}", dir.display())))?;
    let store = Rc::new(Store::open(&dir)?);

    // Recovery: the last epoch all workers sealed.
    let ops = sealing_ops(pipeline);
    let local = local_sealed(&store, &ops)?;
    let committed = agree_on_committed(worker, local);
    let aggregator = match &pipeline.aggregate {
        Some(aggregate) => {
            let mut aggregator = WindowAggregator::new(
                WINDOW_OP,
                store.clone(),
                aggregate.plan.clone(),
                aggregate.window,
                aggregate.time_column,
                aggregate.emit,
            )?;
            aggregator.recover(committed)?;
            Some(RefCell::new(aggregator))
        }
        None => None,
    };
    let mut operators = Vec::new();
    for (i, planned) in pipeline.operators.iter().enumerate() {
        let state = KeyedState::recover(OPERATOR_OPS + i as OperatorId, store.clone(), committed)?;
        operators.push(RefCell::new(OperatorRunner::new(
            planned.factory.name().to_string(),
            planned.factory.create(&planned.input)?,
            state,
            prepared.stop.clone(),
            planned.factory.watermark_delay(),
        )));
    }
    let join = match &pipeline.join {
        Some(plan) => Some(RefCell::new(OperatorRunner::new(
            "join".into(),
            plan.operator()?,
            KeyedState::recover(JOIN_OP, store.clone(), committed)?,
            prepared.stop.clone(),
            plan.watermark_delay(),
        ))),
        None => None,
    };
    let mut sink = SinkState::new(
        &pipeline.sink,
        &prepared.bus,
        prepared.output.clone(),
        prepared.sink_key.clone(),
        index,
        (SINK_OP, store.clone()),
    )?;
    sink.recover(committed)?;
    let resume = resume_source(&store, SOURCE_OP, committed)?;
    if committed.is_none() {
        store.reset(LOOKUP_OP)?;
    }
    let right_resume = match &pipeline.join {
        Some(_) => Some(resume_source(&store, RIGHT_SOURCE_OP, committed)?),
        None => None,
    };
    let first_epoch = committed.map_or(1, |e| e + 1);
    {
        let mut status = prepared.status.lock().expect("status");
        status.committed_epoch = status.committed_epoch.max(committed);
    }
    if let (Some(aggregator), Some(_)) = (&aggregator, committed) {
        // Updates emitted before a crash may not have reached the sink:
        // emit the current value of every open window again.
        for batch in aggregator.borrow().open_windows()? {
            let batch = match &pipeline.post {
                Some(post) => post.apply(&batch)?,
                None => batch,
            };
            if batch.num_rows() > 0 {
                sink.write(first_epoch, &batch)?;
            }
        }
    }
    tracing::info!(
        worker = index,
        ?local,
        ?committed,
        resume = ?resume.source,
        right_resume = ?right_resume.as_ref().map(|r| &r.source),
        "job {} starting at epoch {first_epoch}",
        pipeline.name
    );

    let lookup = match (&pipeline.lookup, &prepared.table_codec) {
        (Some(plan), Some(codec)) => Some(LookupTable::open(
            plan.clone(),
            LOOKUP_OP,
            store.clone(),
            &prepared.bus,
            codec.clone(),
            &resume.table,
        )?),
        _ => None,
    };
    let drained = Rc::new(Cell::new(false));
    let mut source_state = SourceState::new(
        SourceSetup {
            job: &pipeline.name,
            source: &pipeline.source,
            // With a join the transform comes after it.
            transform: pipeline
                .transform
                .clone()
                .filter(|_| pipeline.join.is_none()),
            checkpoint_interval: pipeline.checkpoint_interval,
            joined: false,
        },
        &prepared.bus,
        pipeline.source_schema.clone(),
        prepared.source_codec.clone(),
        prepared.partitions,
        (SOURCE_OP, store.clone()),
        lookup,
        (index, peers),
        &resume,
        first_epoch,
        (prepared.stop.clone(), prepared.checkpoints.clone()),
        prepared.status.clone(),
        drained.clone(),
    )?;
    source_state.catch_up_table()?;
    let right_state = match (&pipeline.join, &prepared.right, &right_resume) {
        (Some(join), Some((codec, partitions)), Some(resume)) => Some(SourceState::new(
            SourceSetup {
                job: &pipeline.name,
                source: &Source::Kafka(join.spec.right.clone()),
                transform: None,
                checkpoint_interval: pipeline.checkpoint_interval,
                joined: true,
            },
            &prepared.bus,
            join.right.clone(),
            Some(codec.clone()),
            *partitions,
            (RIGHT_SOURCE_OP, store.clone()),
            None,
            (index, peers),
            resume,
            first_epoch,
            (prepared.stop.clone(), prepared.checkpoints.clone()),
            prepared.status.clone(),
            drained.clone(),
        )?),
        _ => None,
    };

    let shared = Rc::new(WorkerShared {
        store,
        ops,
        aggregator,
        join,
        operators,
        sink: RefCell::new(sink),
        committed: RefCell::new(committed),
        drained,
    });

    // Routes rows to the worker of their key, for each custom operator.
    let mut encoders = pipeline
        .operators
        .iter()
        .map(|planned| {
            (!planned.keys.is_empty())
                .then(|| KeyEncoder::new(planned.input.clone(), planned.keys.clone()))
                .transpose()
                .map_err(|e| DataflowError::Plan(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?
        .into_iter();

    let join_encoders = match &pipeline.join {
        Some(plan) => (
            Some(
                KeyEncoder::new(plan.left.clone(), plan.left_keys.clone())
                    .map_err(|e| DataflowError::Plan(e.to_string()))?,
            ),
            Some(
                KeyEncoder::new(plan.right.clone(), plan.right_keys.clone())
                    .map_err(|e| DataflowError::Plan(e.to_string()))?,
            ),
        ),
        None => (None, None),
    };
    let plan_transform = pipeline.transform.clone();

    // Root timestamps must be totally ordered; the job runs in a nested
    // scope whose timestamps are (epoch, watermark) products.
    worker.dataflow::<u64, _, _>(|root| {
        root.iterative::<u64, _, _>(|scope| {
            let make_source = |state: SourceState, name: &str| {
                let failed = prepared.clone();
                source::<_, CapacityContainerBuilder<Vec<Batch>>, _, _>(
                    scope,
                    name,
                    move |cap, info| {
                        let activator = scope.activator_for(info.address);
                        let mut state = state;
                        let mut cap = Some(cap);
                        move |output| {
                            let Some(c) = cap.as_mut() else { return };
                            let mut give = |at: &timely::dataflow::operators::Capability<Time>,
                                            batch: RecordBatch| {
                                output.session(at).give(Batch(batch));
                            };
                            match state.step(c, &mut give) {
                                Ok(SourceStep::Continue { again }) => {
                                    if again {
                                        activator.activate();
                                    } else {
                                        activator.activate_after(Duration::from_millis(5));
                                    }
                                }
                                Ok(SourceStep::Done) => cap = None,
                                Err(error) => {
                                    failed.fail(error);
                                    cap = None;
                                }
                            }
                        }
                    },
                )
            };
            let mut rows = make_source(source_state, "Source");
            if let Some(right_state) = right_state {
                let right_rows = make_source(right_state, "JoinSource");
                let left = route(rows, join_encoders.0, index, peers);
                let right = route(right_rows, join_encoders.1, index, peers);
                let join_shared = shared.clone();
                let join_failed = prepared.clone();
                rows = left.binary_frontier::<_, CapacityContainerBuilder<Vec<Batch>>, _, _, _, _>(
                    right,
                    Exchange::new(|x: &(u64, Batch)| x.0),
                    Exchange::new(|x: &(u64, Batch)| x.0),
                    "IntervalJoin",
                    move |cap, _| {
                        let mut cap = Some(cap);
                        move |(left, left_frontier), (right, right_frontier), output| {
                            let mut arrived = Vec::new();
                            left.for_each(|stamp, data| {
                                let epoch = stamp.stamp().iter().map(|t| t.outer).min().unwrap_or(0);
                                arrived.extend(data.drain(..).map(|(_, batch)| (epoch, 0, batch.0)));
                            });
                            right.for_each(|stamp, data| {
                                let epoch = stamp.stamp().iter().map(|t| t.outer).min().unwrap_or(0);
                                arrived.extend(data.drain(..).map(|(_, batch)| (epoch, 1, batch.0)));
                            });
                            let elements: Vec<Time> = left_frontier
                                .frontier()
                                .iter()
                                .chain(right_frontier.frontier().iter())
                                .cloned()
                                .collect();
                            let runner = join_shared.join.as_ref().expect("a join");
                            let stepped = runner.borrow_mut().step(arrived, &elements);
                            emit_stepped(&mut cap, stepped, output, &join_failed);
                        }
                    },
                );
                if let Some(transform) = plan_transform.clone() {
                    rows = rows.unary::<CapacityContainerBuilder<Vec<Batch>>, _, _, _>(
                        Pipe,
                        "Select",
                        move |_, _| {
                            move |input, output| {
                                input.for_each(|cap, data| {
                                    let mut session = output.session(&cap);
                                    for batch in data.drain(..) {
                                        let out = transform.apply(&batch.0).expect("planned transform");
                                        if out.num_rows() > 0 {
                                            session.give(Batch(out));
                                        }
                                    }
                                });
                            }
                        },
                    );
                }
            }
            for (i, planned) in pipeline.operators.iter().enumerate() {
                let encoder = encoders.next().expect("an encoder per operator");
                let routed = route(rows, encoder, index, peers);
                let op_shared = shared.clone();
                let op_failed = prepared.clone();
                rows = routed.unary_frontier::<CapacityContainerBuilder<Vec<Batch>>, _, _, _>(
                    Exchange::new(|x: &(u64, Batch)| x.0),
                    planned.factory.name(),
                    move |cap, _| {
                        let mut cap = Some(cap);
                        move |(input, frontier), output| {
                            let mut arrived = Vec::new();
                            input.for_each(|stamp, data| {
                                let epoch = stamp.stamp().iter().map(|t| t.outer).min().unwrap_or(0);
                                arrived.extend(data.drain(..).map(|(_, batch)| (epoch, 0, batch.0)));
                            });
                            let elements: Vec<Time> = frontier.frontier().iter().cloned().collect();
                            let stepped = op_shared.operators[i].borrow_mut().step(arrived, &elements);
                            emit_stepped(&mut cap, stepped, output, &op_failed);
                        }
                    },
                );
            }

            let results = match &pipeline.aggregate {
                None => rows,
                Some(aggregate) => {
                    let key_columns = aggregate.plan.keys.clone();
                    let input_schema = aggregate.plan.input.clone();
                    let split = rows.unary::<CapacityContainerBuilder<Vec<(u64, Batch)>>, _, _, _>(
                        Pipe,
                        "SplitByKey",
                        move |_, _| {
                            let encoder = KeyEncoder::new(input_schema, key_columns)
                                .expect("key columns planned");
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
                    let window_failed = prepared.clone();
                    let stopping = prepared.stop.clone();
                    let post = pipeline.post.clone();
                    split.unary_frontier::<CapacityContainerBuilder<Vec<Batch>>, _, _, _>(
                        Exchange::new(|x: &(u64, Batch)| x.0),
                        "WindowAggregate",
                        move |cap, _| {
                            let mut op = WindowOp {
                                shared: window_shared,
                                sealed_through: first_epoch - 1,
                                max_epoch_seen: first_epoch,
                                close_epoch: first_epoch,
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
                                let elements: Vec<Time> =
                                    frontier.frontier().iter().cloned().collect();
                                let apply_post = |batches: Vec<RecordBatch>| -> Result<Vec<Batch>, DataflowError> {
                                    batches
                                        .iter()
                                        .map(|b| match &post {
                                            Some(post) => post.apply(b),
                                            None => Ok(b.clone()),
                                        })
                                        .filter(|b| b.as_ref().map_or(true, |b| b.num_rows() > 0))
                                        .map(|b| b.map(Batch))
                                        .collect()
                                };
                                let outcome = op.step(arrived, &elements).and_then(|(updates, closed, next)| {
                                    Ok((apply_post(updates)?, apply_post(closed)?, next))
                                });
                                match outcome {
                                    Ok((updates, closed, next)) => {
                                        if !updates.is_empty() {
                                            output.session(&*held).give_iterator(updates.into_iter());
                                        }
                                        if !closed.is_empty() {
                                            let at = Product::new(op.close_epoch, held.time().inner);
                                            let at = held.delayed(&at);
                                            output.session(&at).give_iterator(closed.into_iter());
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
                                    Err(error) => {
                                        window_failed.fail(error);
                                        cap = None;
                                    }
                                }
                            }
                        },
                    )
                }
            };

            let sink_shared = shared.clone();
            let sink_failed = prepared.clone();
            let status = prepared.status.clone();
            let sealed = results.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
                Pipe,
                "Sink",
                move |cap, _| {
                    let mut cap = Some(cap);
                    let mut sealed_through = first_epoch - 1;
                    let mut max_epoch = first_epoch;
                    move |(input, frontier), _output| {
                        let mut sink = sink_shared.sink.borrow_mut();
                        input.for_each(|stamp, data| {
                            let epoch = stamp.stamp().iter().map(|t| t.outer).min().unwrap_or(0);
                            max_epoch = max_epoch.max(epoch);
                            for batch in data.drain(..) {
                                if let Err(error) = sink.write(epoch, &batch.0) {
                                    sink_failed.fail(error);
                                    return;
                                }
                                status.lock().expect("status").records_out +=
                                    batch.num_rows() as u64;
                            }
                        });
                        let Some(held) = cap.as_mut() else { return };
                        // The end of a bounded input got here: the sources may let go.
                        if !frontier.is_empty()
                            && frontier.frontier().iter().all(|t| t.inner == u64::MAX)
                        {
                            sink_shared.drained.set(true);
                        }
                        let min_epoch = frontier.frontier().iter().map(|t| t.outer).min();
                        if let Some(epoch) = min_epoch {
                            max_epoch = max_epoch.max(epoch);
                        }
                        let through = min_epoch.map_or(max_epoch, |e| e.saturating_sub(1));
                        if through > sealed_through {
                            if let Err(error) = sink.seal(through) {
                                sink_failed.fail(error);
                                cap = None;
                                return;
                            }
                            sealed_through = through;
                        }
                        match min_epoch {
                            Some(epoch) if epoch > held.time().outer => {
                                held.downgrade(&Product::new(epoch, 0))
                            }
                            Some(_) => {}
                            None => cap = None,
                        }
                    }
                },
            );

            let commit_shared = shared.clone();
            let commit_failed = prepared.clone();
            let status = prepared.status.clone();
            let mut last_done = None;
            sealed.sink(Pipe, "Commit", move |(input, frontier)| {
                input.for_each(|_, _| {});
                // Epochs before the earliest one still in the frontier are
                // sealed everywhere; an empty frontier means all of them are.
                // An empty frontier is the end: `finish` commits then.
                let Some(done) = frontier
                    .frontier()
                    .iter()
                    .map(|t| t.outer)
                    .min()
                    .map(|epoch| epoch.saturating_sub(1))
                else {
                    return;
                };
                if last_done != Some(done) {
                    last_done = Some(done);
                    if let Err(error) = commit_through(&commit_shared, done, &status) {
                        commit_failed.fail(error);
                    }
                }
            });
        })
    });
    while worker.step_or_park(Some(Duration::from_millis(20))) {
        if prepared.failed.load(Ordering::SeqCst) {
            return Err(DataflowError::Execution(ANOTHER_FAILED.into()));
        }
    }
    finish(
        worker,
        &shared,
        prepared.stop.load(Ordering::SeqCst),
        prepared.pipeline.post.as_ref(),
        &prepared.status,
    )
}

/// Tags each batch with the worker its rows go to: split by the key of
/// `encoder`, or all to this worker without one.
fn route<'scope>(
    rows: Stream<'scope, Time, Vec<Batch>>,
    encoder: Option<KeyEncoder>,
    index: usize,
    peers: usize,
) -> Stream<'scope, Time, Vec<(u64, Batch)>> {
    rows.unary::<CapacityContainerBuilder<Vec<(u64, Batch)>>, _, _, _>(
        Pipe,
        "RouteByKey",
        move |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let mut session = output.session(&cap);
                    for batch in data.drain(..) {
                        let Some(encoder) = &encoder else {
                            session.give((index as u64, batch));
                            continue;
                        };
                        let rows = encoder.rows(&batch.0).expect("key rows");
                        for (worker, part) in split_by_key(&batch.0, &rows, peers).expect("split") {
                            session.give((worker, Batch(part)));
                        }
                    }
                });
            }
        },
    )
}

/// Sends what an operator runner emitted, each batch in its epoch, and
/// moves its output capability on (or lets it go when its input ended or
/// it failed).
fn emit_stepped(
    cap: &mut Option<Capability<Time>>,
    stepped: Result<(Emitted, Option<Time>), DataflowError>,
    output: &mut OutputBuilderSession<'_, Time, CapacityContainerBuilder<Vec<Batch>>>,
    failed: &Prepared,
) {
    let Some(held) = cap.as_mut() else { return };
    match stepped {
        Ok((emitted, next)) => {
            for (epoch, batch) in emitted {
                let at = Product::new(epoch.max(held.time().outer), held.time().inner);
                let at = held.delayed(&at);
                output.session(&at).give(Batch(batch));
            }
            match next {
                Some(next)
                    if held.time() != &next
                        && timely::order::PartialOrder::less_equal(held.time(), &next) =>
                {
                    held.downgrade(&next)
                }
                Some(_) => {}
                None => *cap = None,
            }
        }
        Err(error) => {
            failed.fail(error);
            *cap = None;
        }
    }
}
