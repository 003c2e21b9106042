//! A worker's source: the Kafka partitions or Parquet files it reads, its
//! watermark and epoch, and what it does to rows before they leave it
//! (dead-lettering late records, the lookup join, the transform).
//!
//! Kafka partitions and Parquet files are assigned to workers round-robin
//! (`partition % workers`). A Parquet source is a backfill: its watermark
//! does not move until every file is read, so no row is late, and all
//! windows close at the end.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{RecordBatch, TimestampMillisecondArray, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::parquet::arrow::arrow_reader::{
    ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder,
};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use weir_bus::{DeadLetterReason, DecodeError};

use crate::DataflowError;
use crate::aggregate::event_times;
use crate::batch::with_columns;
use crate::decode::RecordDecoder;
use crate::input::{KAFKA_TIMESTAMP, Source, Start, kafka_timestamp_field};
use crate::kafka::{Producer, dead_letter, flush, producer};
use crate::lag::EndOffsets;
use crate::lookup::LookupTable;
use crate::pipeline::Status;
use crate::store::{OperatorId, Store};
use crate::transform::Transform;

/// Most records read per activation.
const POLL_BATCH: usize = 4096;

/// How many epochs a source may be ahead of the last committed one and
/// still read.
const MAX_EPOCHS_AHEAD: u64 = 3;

/// What a source checkpoints with each epoch: where to resume.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    /// Next offset (Kafka) or row (Parquet file) per partition.
    pub source: HashMap<i32, i64>,
    /// Next offset per partition of the lookup table's topic.
    #[serde(default)]
    pub table: HashMap<i32, i64>,
    /// Largest event time read per partition, so that the watermark (and
    /// what is late) goes on where it was.
    #[serde(default)]
    pub max_event: HashMap<i32, i64>,
}

/// One partition (or file) of a source.
#[derive(Debug)]
struct PartitionProgress {
    next_offset: i64,
    /// Where a bounded source stops.
    end: Option<i64>,
    /// Largest event time read.
    max_event: Option<i64>,
    last_activity: Instant,
    /// The partition's end as last known (for the lag).
    high: i64,
    /// Read up to what the broker had at the last fetch (librdkafka's
    /// partition EOF). Only such a partition can be idle: one with records
    /// left to read is behind, however long it has been since its last
    /// record, and must keep holding the watermark back.
    caught_up: bool,
}

pub(crate) enum SourceStep {
    Continue { again: bool },
    Done,
}

enum Reader {
    Kafka {
        /// Shared so that a poll's messages can borrow it (copying each
        /// out of librdkafka cost more than decoding it) while the source
        /// goes on.
        consumer: Arc<BaseConsumer<weir_bus::QuietEof>>,
        decoder: RecordDecoder,
        topic: String,
        kafka_time: bool,
    },
    Parquet {
        files: BTreeMap<i32, PathBuf>,
        current: Option<(i32, ParquetRecordBatchReader)>,
    },
}

/// A worker's source.
pub(crate) struct SourceState {
    op: OperatorId,
    reader: Reader,
    lookup: Option<LookupTable>,
    transform: Option<Transform>,
    dlq: Producer,
    store: Rc<Store>,
    partitions: BTreeMap<i32, PartitionProgress>,
    lateness: i64,
    idle_timeout: Duration,
    /// A backfill: the watermark stays put until the end.
    hold_watermark: bool,
    time_column: usize,
    epoch: u64,
    interval: Duration,
    next_checkpoint: Instant,
    /// An unbounded Kafka source's end offsets, for its lag.
    end_offsets: Option<EndOffsets>,
    /// Event time below which records are late (-inf until known).
    watermark: i64,
    stop: Arc<AtomicBool>,
    /// Checkpoints asked for (`JobHandle::checkpoint`), and how many this
    /// source has taken.
    checkpoints: Arc<AtomicU64>,
    checkpoints_taken: u64,
    status: Arc<Mutex<Status>>,
    /// The input ended: the watermark is at the end of time.
    ended: bool,
    /// Set once the end reached every sink (see [`SourceState::drain`]).
    drained: Rc<Cell<bool>>,
    /// See [`SourceSetup::joined`].
    joined: bool,
}

/// What a source reads, and what it does to rows before passing them on.
pub(crate) struct SourceSetup<'a> {
    /// The job's name (its consumer group's).
    pub job: &'a str,
    /// The topic or files.
    pub source: &'a Source,
    /// A row transform applied as rows are read.
    pub transform: Option<Transform>,
    /// How often offsets are checkpointed.
    pub checkpoint_interval: Duration,
    /// Whether this is an interval join's topic (it reports its progress
    /// under `Status::joined_partitions`).
    pub joined: bool,
}

/// Worker `index` of `peers` takes every partition `p` with `p % peers == index`.
fn mine(partition: i32, index: usize, peers: usize) -> bool {
    partition as usize % peers == index
}

impl SourceState {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        setup: SourceSetup<'_>,
        bus: &weir_bus::BusConfig,
        source_schema: SchemaRef,
        codec: Option<weir_bus::TopicCodec>,
        partitions_total: i32,
        (op, store): (OperatorId, Rc<Store>),
        lookup: Option<LookupTable>,
        (index, peers): (usize, usize),
        resume: &Checkpoint,
        first_epoch: u64,
        (stop, checkpoints): (Arc<AtomicBool>, Arc<AtomicU64>),
        status: Arc<Mutex<Status>>,
        drained: Rc<Cell<bool>>,
    ) -> Result<Self, DataflowError> {
        let mut partitions = BTreeMap::new();
        let now = Instant::now();
        let (reader, lateness, idle_timeout, hold_watermark) = match setup.source {
            Source::Kafka(source) => {
                let consumer: BaseConsumer<weir_bus::QuietEof> =
                    weir_bus::consumer_config(bus, &format!("weir-job-{}", setup.job))
                        .set("enable.partition.eof", "true")
                        .create_with_context(weir_bus::QuietEof)
                        .map_err(|e| {
                            DataflowError::Execution(format!("creating a consumer: {e}"))
                        })?;
                let mut assignment = TopicPartitionList::new();
                for partition in (0..partitions_total).filter(|p| mine(*p, index, peers)) {
                    let offset = match resume.source.get(&partition) {
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
                            max_event: resume.max_event.get(&partition).copied(),
                            last_activity: now,
                            high,
                            caught_up: false,
                        },
                    );
                }
                consumer
                    .assign(&assignment)
                    .map_err(|e| DataflowError::Execution(format!("assigning partitions: {e}")))?;
                let kafka_time = source.event_time == crate::input::EventTime::Kafka;
                let payload_schema = if kafka_time {
                    let fields: Vec<Field> = source_schema
                        .fields()
                        .iter()
                        .filter(|f| f.name() != KAFKA_TIMESTAMP)
                        .map(|f| f.as_ref().clone())
                        .collect();
                    Arc::new(Schema::new(fields))
                } else {
                    source_schema.clone()
                };
                (
                    Reader::Kafka {
                        consumer: Arc::new(consumer),
                        decoder: RecordDecoder::new(payload_schema, codec),
                        topic: source.topic.clone(),
                        kafka_time,
                    },
                    i64::try_from(source.lateness.as_millis()).unwrap_or(i64::MAX),
                    source.idle_timeout,
                    false,
                )
            }
            Source::Parquet(source) => {
                let mut files = BTreeMap::new();
                for (i, path) in source.files()?.into_iter().enumerate() {
                    let partition = i as i32;
                    if !mine(partition, index, peers) {
                        continue;
                    }
                    let rows = parquet_rows(&path)?;
                    partitions.insert(
                        partition,
                        PartitionProgress {
                            next_offset: resume.source.get(&partition).copied().unwrap_or(0),
                            end: Some(rows),
                            max_event: resume.max_event.get(&partition).copied(),
                            last_activity: now,
                            high: rows,
                            caught_up: false,
                        },
                    );
                    files.insert(partition, path);
                }
                (
                    Reader::Parquet {
                        files,
                        current: None,
                    },
                    0,
                    Duration::MAX,
                    true,
                )
            }
        };
        let end_offsets = match &reader {
            Reader::Kafka {
                consumer, topic, ..
            } if partitions.values().any(|p| p.end.is_none()) => Some(EndOffsets::start(
                consumer.clone(),
                topic.clone(),
                partitions.keys().copied().collect(),
            )),
            _ => None,
        };
        let mut state = Self {
            op,
            reader,
            lookup,
            transform: setup.transform,
            dlq: producer(bus)?,
            store,
            partitions,
            lateness,
            idle_timeout,
            hold_watermark,
            time_column: source_schema
                .index_of(setup.source.event_time_column())
                .map_err(|e| DataflowError::Plan(e.to_string()))?,
            epoch: first_epoch,
            interval: setup.checkpoint_interval,
            next_checkpoint: Instant::now() + setup.checkpoint_interval,
            end_offsets,
            watermark: i64::MIN,
            stop,
            checkpoints_taken: checkpoints.load(Ordering::SeqCst),
            checkpoints,
            status,
            ended: false,
            drained,
            joined: setup.joined,
        };
        if let Some(watermark) = state.candidate_watermark(now) {
            state.watermark = watermark;
        }
        Ok(state)
    }

    /// Reads the lookup table to its current end before the stream starts.
    pub(crate) fn catch_up_table(&mut self) -> Result<(), DataflowError> {
        if let Some(table) = &mut self.lookup {
            let rejected = table.catch_up()?;
            for (message, error) in &rejected {
                dead_letter(&self.dlq, message, error)?;
            }
            self.status.lock().expect("status").dead_letters += rejected.len() as u64;
        }
        Ok(())
    }

    pub(crate) fn step(
        &mut self,
        cap: &mut timely::dataflow::operators::Capability<crate::time::Time>,
        output: &mut impl FnMut(
            &timely::dataflow::operators::Capability<crate::time::Time>,
            RecordBatch,
        ),
    ) -> Result<SourceStep, DataflowError> {
        use timely::order::Product;
        if cap.time().outer < self.epoch {
            cap.downgrade(&Product::new(self.epoch, 0));
        }
        if self.stop.load(Ordering::SeqCst) {
            self.seal()?;
            return Ok(SourceStep::Done);
        }
        if self.ended {
            return self.drain(cap);
        }
        if let Some(table) = &mut self.lookup {
            let rejected = table.poll(1024, Duration::ZERO)?;
            for (message, error) in &rejected {
                dead_letter(&self.dlq, message, error)?;
            }
            self.status.lock().expect("status").dead_letters += rejected.len() as u64;
        }
        // Backpressure: no more reading while the epochs read and not yet
        // committed are many (what is slower downstream holds them), so
        // what waits in memory stays bounded and commits keep coming.
        let committed = self.status.lock().expect("status").committed_epoch;
        let throttled = self.epoch > committed.unwrap_or(0) + MAX_EPOCHS_AHEAD;
        let read = match &mut self.reader {
            _ if throttled => false,
            Reader::Kafka { consumer, .. } => {
                let consumer = consumer.clone();
                let mut messages = Vec::new();
                // Partitions read to their end (and how many records came
                // before): caught up once those records are admitted, unless
                // more came after.
                let mut ended = Vec::new();
                while messages.len() < POLL_BATCH {
                    match consumer.poll(Duration::ZERO) {
                        None => break,
                        Some(Ok(message)) => messages.push(message),
                        Some(Err(KafkaError::PartitionEOF(partition))) => {
                            ended.push((partition, messages.len()));
                        }
                        Some(Err(error)) => {
                            return Err(DataflowError::Execution(format!(
                                "reading the source: {error}"
                            )));
                        }
                    }
                }
                let read = !messages.is_empty();
                if read {
                    self.process_kafka(&messages, cap, output)?;
                }
                for (partition, at) in ended {
                    let more = messages[at..].iter().any(|m| m.partition() == partition);
                    if let Some(progress) = self.partitions.get_mut(&partition)
                        && !more
                    {
                        progress.caught_up = true;
                    }
                }
                read
            }
            Reader::Parquet { .. } => self.read_parquet(cap, output)?,
        };
        self.advance_watermark(cap);
        self.report_progress();
        let asked = self.checkpoints.load(Ordering::SeqCst);
        // A throttled source starts no epoch on the clock: its epochs would
        // run on ahead of the commits, which it waits for, and it would
        // never read again while commits take longer than the epochs it
        // may be ahead.
        let due = Instant::now() >= self.next_checkpoint && !throttled;
        if due || asked > self.checkpoints_taken {
            self.checkpoints_taken = asked;
            self.seal()?;
            self.epoch += 1;
            self.next_checkpoint = Instant::now() + self.interval;
            cap.downgrade(&Product::new(self.epoch, cap.time().inner));
        }
        let finished = self
            .partitions
            .values()
            .all(|p| p.end.is_some_and(|end| p.next_offset >= end));
        if finished {
            // The end of the input is a watermark at the end of time: every
            // window closes and every timer fires inside the dataflow, so
            // what they emit flows through the operators after them.
            self.ended = true;
            cap.downgrade(&Product::new(self.epoch, u64::MAX));
            return Ok(SourceStep::Continue { again: false });
        }
        Ok(SourceStep::Continue { again: read })
    }

    /// After the end of the input: checkpoints go on (so the rest of the
    /// job commits) until every operator has seen the end, then the source
    /// lets go.
    fn drain(
        &mut self,
        cap: &mut timely::dataflow::operators::Capability<crate::time::Time>,
    ) -> Result<SourceStep, DataflowError> {
        use timely::order::Product;
        if self.drained.get() {
            self.seal()?;
            return Ok(SourceStep::Done);
        }
        let asked = self.checkpoints.load(Ordering::SeqCst);
        if Instant::now() >= self.next_checkpoint || asked > self.checkpoints_taken {
            self.checkpoints_taken = asked;
            self.seal()?;
            self.epoch += 1;
            self.next_checkpoint = Instant::now() + self.interval;
            cap.downgrade(&Product::new(self.epoch, u64::MAX));
        }
        Ok(SourceStep::Continue { again: false })
    }

    /// Stores the offsets after the current epoch and marks it sealed.
    fn seal(&mut self) -> Result<(), DataflowError> {
        flush(&self.dlq)?;
        let checkpoint = Checkpoint {
            source: self
                .partitions
                .iter()
                .map(|(p, progress)| (*p, progress.next_offset))
                .collect(),
            table: self
                .lookup
                .as_ref()
                .map(|t| t.offsets().clone())
                .unwrap_or_default(),
            max_event: self
                .partitions
                .iter()
                .filter_map(|(p, progress)| progress.max_event.map(|m| (*p, m)))
                .collect(),
        };
        let bytes = serde_json::to_vec(&checkpoint).expect("offsets serialize");
        self.store.seal(self.op, self.epoch, None, Some(&bytes))
    }

    fn process_kafka(
        &mut self,
        messages: &[impl Message],
        cap: &timely::dataflow::operators::Capability<crate::time::Time>,
        output: &mut impl FnMut(
            &timely::dataflow::operators::Capability<crate::time::Time>,
            RecordBatch,
        ),
    ) -> Result<(), DataflowError> {
        let Reader::Kafka {
            decoder,
            kafka_time,
            ..
        } = &self.reader
        else {
            unreachable!("a Kafka reader");
        };
        let kafka_time = *kafka_time;
        let payloads: Vec<Option<&[u8]>> = messages.iter().map(|m| m.payload()).collect();
        let decoded = decoder.decode(&payloads)?;
        for (index, error) in &decoded.rejected {
            dead_letter(&self.dlq, &messages[*index], error)?;
        }
        let mut batch = decoded.batch;
        if kafka_time {
            let times = TimestampMillisecondArray::from_iter_values(
                decoded
                    .rows
                    .iter()
                    .map(|i| messages[*i].timestamp().to_millis().unwrap_or(0)),
            );
            batch = with_columns(&batch, [(kafka_timestamp_field(), Arc::new(times) as _)])
                .map_err(|e| DataflowError::Execution(e.to_string()))?;
        }
        let row_partitions: Vec<i32> = decoded
            .rows
            .iter()
            .map(|i| messages[*i].partition())
            .collect();
        let (keep, late) = self.admit(&batch, &row_partitions)?;
        for row in &late {
            let (t, message) = (row.1, &messages[decoded.rows[row.0]]);
            let error = DecodeError::new(
                DeadLetterReason::Late,
                format!(
                    "event time {t} is before the watermark {} (allowed lateness {} ms)",
                    row.2, self.lateness
                ),
            );
            dead_letter(&self.dlq, message, &error)?;
        }
        let now = Instant::now();
        for message in messages {
            if let Some(partition) = self.partitions.get_mut(&message.partition()) {
                partition.next_offset = partition.next_offset.max(message.offset() + 1);
                partition.last_activity = now;
                partition.caught_up = false;
            }
        }
        self.emit(batch, keep, cap, output)?;
        let mut status = self.status.lock().expect("status");
        status.records_in += messages.len() as u64;
        status.dead_letters += (decoded.rejected.len() + late.len()) as u64;
        status.late += late.len() as u64;
        Ok(())
    }

    /// Each partition's offset and lag in the status, at every step, read
    /// or not: a source that has caught up must say so, not keep the lag
    /// it last saw. A partition's end is known for a bounded source, is
    /// its offset when the broker last said it was read to the end, and
    /// is otherwise the latest end offset the broker told ([`EndOffsets`]).
    fn report_progress(&mut self) {
        for (partition, progress) in &mut self.partitions {
            let known = match (&self.end_offsets, progress.end) {
                (_, Some(end)) => Some(end),
                _ if progress.caught_up => Some(progress.next_offset),
                (Some(end_offsets), None) => end_offsets.get(*partition),
                (None, None) => None,
            };
            if let Some(high) = known {
                progress.high = progress.high.max(high);
            }
        }
        let mut status = self.status.lock().expect("status");
        let status = &mut *status;
        let partitions = match self.joined {
            true => &mut status.joined_partitions,
            false => &mut status.partitions,
        };
        for (partition, progress) in &self.partitions {
            let entry = partitions.entry(*partition).or_default();
            entry.offset = progress.next_offset;
            entry.lag = (progress.high - progress.next_offset).max(0);
        }
    }

    /// Reads one batch of the next unfinished file; `false` when none is left.
    fn read_parquet(
        &mut self,
        cap: &timely::dataflow::operators::Capability<crate::time::Time>,
        output: &mut impl FnMut(
            &timely::dataflow::operators::Capability<crate::time::Time>,
            RecordBatch,
        ),
    ) -> Result<bool, DataflowError> {
        let Reader::Parquet { files, current } = &mut self.reader else {
            unreachable!("a Parquet reader");
        };
        if current.is_none() {
            let next = self
                .partitions
                .iter()
                .find(|(_, p)| p.end.is_some_and(|end| p.next_offset < end));
            let Some((&partition, progress)) = next else {
                return Ok(false);
            };
            let path = &files[&partition];
            let file = File::open(path)
                .map_err(|e| DataflowError::Execution(format!("{}: {e}", path.display())))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .and_then(|b| {
                    b.with_batch_size(8192)
                        .with_offset(progress.next_offset as usize)
                        .build()
                })
                .map_err(|e| DataflowError::Execution(format!("{}: {e}", path.display())))?;
            *current = Some((partition, reader));
        }
        let (partition, reader) = current.as_mut().expect("opened above");
        let partition = *partition;
        let batch = match reader.next() {
            Some(batch) => batch.map_err(|e| {
                DataflowError::Execution(format!("{}: {e}", files[&partition].display()))
            })?,
            None => {
                // A file shorter than its metadata said: it is done.
                let progress = self.partitions.get_mut(&partition).expect("a file");
                progress.end = Some(progress.next_offset);
                *current = None;
                return Ok(true);
            }
        };
        let rows = batch.num_rows();
        let progress = self.partitions.get_mut(&partition).expect("a file");
        progress.next_offset += rows as i64;
        if progress.end.is_some_and(|end| progress.next_offset >= end) {
            *current = None;
        }
        let row_partitions = vec![partition; rows];
        let (keep, _) = self.admit(&batch, &row_partitions)?;
        self.emit(batch, keep, cap, output)?;
        self.status.lock().expect("status").records_in += rows as u64;
        Ok(true)
    }

    /// Checks rows against the watermark, moving it row by row: returns the
    /// rows to keep and the late ones `(row, event time, watermark)`.
    #[allow(clippy::type_complexity)]
    fn admit(
        &mut self,
        batch: &RecordBatch,
        row_partitions: &[i32],
    ) -> Result<(Vec<u32>, Vec<(usize, i64, i64)>), DataflowError> {
        let times = event_times(batch.column(self.time_column))?;
        let mut keep = Vec::with_capacity(times.len());
        let mut late = Vec::new();
        let now = Instant::now();
        for (row, (&t, partition)) in times.iter().zip(row_partitions).enumerate() {
            if t < self.watermark {
                late.push((row, t, self.watermark));
                continue;
            }
            keep.push(row as u32);
            let progress = self
                .partitions
                .get_mut(partition)
                .expect("assigned partition");
            // Active again before the watermark is reckoned: a partition
            // still taken for idle would have its new event time advanced
            // by the time it was quiet, ahead of the records after it.
            progress.last_activity = now;
            progress.caught_up = false;
            if progress.max_event.is_none_or(|m| t > m) {
                progress.max_event = Some(t);
                // The watermark moves record by record, so that a record is
                // late against every record before it in its partition, not
                // only those of earlier polls.
                if let Some(candidate) = self.candidate_watermark(now)
                    && candidate > self.watermark
                {
                    self.watermark = candidate;
                }
            }
        }
        Ok((keep, late))
    }

    /// Sends the kept rows on, through the lookup join and the transform.
    fn emit(
        &mut self,
        batch: RecordBatch,
        keep: Vec<u32>,
        cap: &timely::dataflow::operators::Capability<crate::time::Time>,
        output: &mut impl FnMut(
            &timely::dataflow::operators::Capability<crate::time::Time>,
            RecordBatch,
        ),
    ) -> Result<(), DataflowError> {
        let mut batch = if keep.len() == batch.num_rows() {
            batch
        } else {
            take_record_batch(&batch, &UInt32Array::from(keep))
                .map_err(|e| DataflowError::Execution(e.to_string()))?
        };
        if let Some(table) = &self.lookup {
            batch = table.join(&batch)?;
        }
        if let Some(transform) = &self.transform {
            batch = transform.apply(&batch)?;
        }
        if batch.num_rows() > 0 {
            output(cap, batch);
        }
        Ok(())
    }

    /// The watermark the partitions allow now: the smallest over partitions
    /// that are neither finished nor idle (caught up, and without a record
    /// for the idle timeout). When every partition is idle,
    /// event time is taken to advance with the clock since each one's last
    /// record, so that a quiet worker does not hold the whole job back.
    fn candidate_watermark(&self, now: Instant) -> Option<i64> {
        if self.hold_watermark {
            return None;
        }
        let watermark_of =
            |p: &PartitionProgress| p.max_event.map(|m| m.saturating_sub(self.lateness));
        let mut active = self
            .partitions
            .values()
            .filter(|p| p.end.is_none_or(|end| p.next_offset < end))
            // A bounded source knows where each partition ends, so one that
            // has not got there is never idle.
            .filter(|p| {
                p.end.is_some()
                    || !p.caught_up
                    || now.duration_since(p.last_activity) < self.idle_timeout
            })
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
    fn advance_watermark(
        &mut self,
        cap: &mut timely::dataflow::operators::Capability<crate::time::Time>,
    ) {
        use timely::order::Product;
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

/// Rows in a Parquet file, from its footer.
pub(crate) fn parquet_rows(path: &std::path::Path) -> Result<i64, DataflowError> {
    let file = File::open(path)
        .map_err(|e| DataflowError::Execution(format!("{}: {e}", path.display())))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| DataflowError::Execution(format!("{}: {e}", path.display())))?;
    Ok(builder.metadata().file_metadata().num_rows())
}
