//! Stream–table joins: each stream row takes the latest row of a table
//! topic with the same key (a "lookup" or "enrichment" join).
//!
//! Every worker reads the whole table topic into its RocksDB (`t` rows of
//! the lookup operator), first to the end the topic had when the job
//! started — so the first events already see the table — and then, between
//! polls of the stream, every update as it arrives. A record without a value
//! (a tombstone) deletes the key named by its Kafka key. A join sees the
//! table as of the moment it runs: replaying the stream after a crash joins
//! the table as it is then, so results are exactly the same when the table
//! did not change meanwhile (reference data), and reflect the newer table
//! otherwise, as in Flink's and Arroyo's lookup joins.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{cast, take, take_record_batch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Message as _, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use weir_bus::{BusConfig, DecodeError, TopicCodec};

use crate::DataflowError;
use crate::decode::RecordDecoder;
use crate::store::{OperatorId, Store};

/// Which stream rows a lookup join keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JoinKind {
    /// Only rows whose key is in the table.
    #[default]
    Inner,
    /// Every row; the table's columns are null where the key is missing.
    Left,
}

/// A join of the stream with the latest row per key of a table topic.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The table's topic.
    pub topic: String,
    /// Its record schema; `None` takes the topic's registered Avro schema.
    pub schema: Option<SchemaRef>,
    /// The table's key column.
    pub key: String,
    /// The stream's column matched against the key.
    pub on: String,
    /// `(table column, output name)` pairs added to the stream's rows;
    /// empty: every column but the key, under its own name.
    pub columns: Vec<(String, String)>,
    /// Inner or left join.
    pub kind: JoinKind,
}

/// A lookup join planned against the stream's and the table's schemas.
#[derive(Debug, Clone)]
pub struct LookupPlan {
    /// The table's topic.
    pub topic: String,
    /// The table's schema.
    pub table: SchemaRef,
    /// Key column in the table.
    pub key: usize,
    /// Matched column in the stream.
    pub on: usize,
    /// Table columns added to each row, in order.
    pub take: Vec<usize>,
    /// Inner or left join.
    pub kind: JoinKind,
    /// The stream's schema followed by the added columns.
    pub output: SchemaRef,
    /// Partitions of the table topic.
    pub partitions: i32,
}

impl LookupPlan {
    /// Plans `lookup` for a stream of `stream` rows, with `table` the
    /// table's schema.
    pub fn new(
        lookup: &Lookup,
        stream: &SchemaRef,
        table: SchemaRef,
        partitions: i32,
    ) -> Result<Self, DataflowError> {
        let column = |schema: &SchemaRef, name: &str, what: &str| {
            schema.index_of(name).map_err(|_| {
                DataflowError::Plan(format!(
                    "`{name}` is not a column of the {what} ({})",
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
        };
        let key = column(&table, &lookup.key, &format!("table `{}`", lookup.topic))?;
        let on = column(stream, &lookup.on, "stream")?;
        let (from, to) = (stream.field(on).data_type(), table.field(key).data_type());
        if from != to && !arrow::compute::can_cast_types(from, to) {
            return Err(DataflowError::Plan(format!(
                "the stream's `{}` ({from}) cannot be matched with the table's `{}` ({to})",
                lookup.on, lookup.key
            )));
        }
        let pairs: Vec<(String, String)> = if lookup.columns.is_empty() {
            table
                .fields()
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != key)
                .map(|(_, f)| (f.name().clone(), f.name().clone()))
                .collect()
        } else {
            lookup.columns.clone()
        };
        let mut fields: Vec<Field> = stream.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut take = Vec::new();
        for (name, output) in &pairs {
            let index = column(&table, name, &format!("table `{}`", lookup.topic))?;
            if fields.iter().any(|f| f.name() == output) {
                return Err(DataflowError::Plan(format!(
                    "the joined column `{output}` clashes with a stream column: rename it"
                )));
            }
            let field = table.field(index);
            fields.push(Field::new(
                output,
                field.data_type().clone(),
                field.is_nullable() || lookup.kind == JoinKind::Left,
            ));
            take.push(index);
        }
        Ok(Self {
            topic: lookup.topic.clone(),
            table,
            key,
            on,
            take,
            kind: lookup.kind,
            output: Arc::new(Schema::new(fields)),
            partitions,
        })
    }
}

/// A worker's copy of a lookup table, and the consumer that keeps it fresh.
pub struct LookupTable {
    plan: LookupPlan,
    op: OperatorId,
    store: Rc<Store>,
    consumer: BaseConsumer,
    decoder: RecordDecoder,
    keys: RowConverter,
    values: RowConverter,
    /// Next offset to read, per partition.
    offsets: HashMap<i32, i64>,
}

/// A table record that could not be applied, for the dead-letter topic.
pub type Rejected = (OwnedMessage, DecodeError);

impl LookupTable {
    /// Opens the table, reading from `resume` (stored offsets) or the
    /// beginning.
    pub fn open(
        plan: LookupPlan,
        op: OperatorId,
        store: Rc<Store>,
        bus: &BusConfig,
        codec: TopicCodec,
        resume: &HashMap<i32, i64>,
    ) -> Result<Self, DataflowError> {
        let consumer: BaseConsumer = weir_bus::consumer_config(bus, "weir-lookup")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(|e| DataflowError::Execution(format!("creating a consumer: {e}")))?;
        let mut assignment = TopicPartitionList::new();
        let mut offsets = HashMap::new();
        for partition in 0..plan.partitions {
            let offset = resume.get(&partition).copied().unwrap_or(0);
            assignment
                .add_partition_offset(&plan.topic, partition, Offset::Offset(offset))
                .map_err(|e| DataflowError::Execution(e.to_string()))?;
            offsets.insert(partition, offset);
        }
        consumer
            .assign(&assignment)
            .map_err(|e| DataflowError::Execution(format!("assigning `{}`: {e}", plan.topic)))?;
        let key_type = plan.table.field(plan.key).data_type().clone();
        let keys = RowConverter::new(vec![SortField::new(key_type)])
            .map_err(|e| DataflowError::Plan(e.to_string()))?;
        let values = RowConverter::new(
            plan.take
                .iter()
                .map(|&i| SortField::new(plan.table.field(i).data_type().clone()))
                .collect(),
        )
        .map_err(|e| DataflowError::Plan(e.to_string()))?;
        Ok(Self {
            decoder: RecordDecoder::new(plan.table.clone(), Some(codec)),
            plan,
            op,
            store,
            consumer,
            keys,
            values,
            offsets,
        })
    }

    /// The table's topic.
    pub fn topic(&self) -> &str {
        &self.plan.topic
    }

    /// Next offsets to read, for a checkpoint.
    pub fn offsets(&self) -> &HashMap<i32, i64> {
        &self.offsets
    }

    /// Reads the table up to the end it has now.
    pub fn catch_up(&mut self) -> Result<Vec<Rejected>, DataflowError> {
        let mut ends = HashMap::new();
        for partition in 0..self.plan.partitions {
            let (_, high) = self
                .consumer
                .fetch_watermarks(&self.plan.topic, partition, Duration::from_secs(10))
                .map_err(|e| {
                    DataflowError::Execution(format!(
                        "offsets of {}/{partition}: {e}",
                        self.plan.topic
                    ))
                })?;
            ends.insert(partition, high);
        }
        let mut rejected = Vec::new();
        while ends
            .iter()
            .any(|(p, end)| self.offsets.get(p).is_some_and(|o| o < end))
        {
            rejected.extend(self.poll(4096, Duration::from_millis(100))?);
        }
        Ok(rejected)
    }

    /// Applies up to `max` table records, waiting up to `wait` for the first.
    pub fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Rejected>, DataflowError> {
        let mut messages = Vec::new();
        let mut timeout = wait;
        while messages.len() < max {
            match self.consumer.poll(timeout) {
                None => break,
                Some(Ok(message)) => messages.push(message.detach()),
                Some(Err(error)) => {
                    return Err(DataflowError::Execution(format!(
                        "reading `{}`: {error}",
                        self.plan.topic
                    )));
                }
            }
            timeout = Duration::ZERO;
        }
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        for message in &messages {
            let next = self.offsets.entry(message.partition()).or_default();
            *next = (*next).max(message.offset() + 1);
        }
        self.apply(messages)
    }

    fn apply(&mut self, messages: Vec<OwnedMessage>) -> Result<Vec<Rejected>, DataflowError> {
        let payloads: Vec<Option<&[u8]>> = messages
            .iter()
            .map(|m| m.payload().filter(|_| !is_tombstone(m)))
            .collect();
        let decoded = self.decoder.decode(&payloads)?;
        // Writes in record order: a later record of a key wins.
        let mut writes: Vec<(usize, Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        if decoded.batch.num_rows() > 0 {
            let keys = self.encode_keys(decoded.batch.column(self.plan.key))?;
            let columns: Vec<ArrayRef> = self
                .plan
                .take
                .iter()
                .map(|&i| decoded.batch.column(i).clone())
                .collect();
            let values = self
                .values
                .convert_columns(&columns)
                .map_err(|e| DataflowError::Execution(e.to_string()))?;
            for (row, &index) in decoded.rows.iter().enumerate() {
                if let Some(key) = &keys[row] {
                    writes.push((index, key.clone(), Some(values.row(row).as_ref().to_vec())));
                }
            }
        }
        let mut rejected = Vec::new();
        for (index, error) in decoded.rejected {
            let message = &messages[index];
            if is_tombstone(message) {
                match self.tombstone_key(message) {
                    Some(key) => writes.push((index, key, None)),
                    None => rejected.push((message.clone(), error)),
                }
            } else {
                rejected.push((message.clone(), error));
            }
        }
        writes.sort_by_key(|(index, _, _)| *index);
        self.store.put_table_rows(
            self.op,
            writes.iter().map(|(_, k, v)| (k.as_slice(), v.as_deref())),
        )?;
        Ok(rejected)
    }

    /// The key a tombstone deletes: its Kafka key, read as the key column's
    /// text.
    fn tombstone_key(&self, message: &OwnedMessage) -> Option<Vec<u8>> {
        let text = std::str::from_utf8(message.key()?).ok()?;
        let array: ArrayRef = Arc::new(arrow::array::StringArray::from(vec![text]));
        self.encode_keys(&array).ok()?.into_iter().next().flatten()
    }

    /// Key bytes of each value of `column` (`None` for a null key).
    fn encode_keys(&self, column: &ArrayRef) -> Result<Vec<Option<Vec<u8>>>, DataflowError> {
        let key_type = self.plan.table.field(self.plan.key).data_type();
        let column = if column.data_type() == key_type {
            column.clone()
        } else {
            cast(column, key_type).map_err(|e| DataflowError::Execution(e.to_string()))?
        };
        let rows = self
            .keys
            .convert_columns(std::slice::from_ref(&column))
            .map_err(|e| DataflowError::Execution(e.to_string()))?;
        Ok((0..column.len())
            .map(|i| column.is_valid(i).then(|| rows.row(i).as_ref().to_vec()))
            .collect())
    }

    /// Joins a batch of stream rows with the table.
    pub fn join(&self, batch: &RecordBatch) -> Result<RecordBatch, DataflowError> {
        let exec = |e: arrow::error::ArrowError| DataflowError::Execution(e.to_string());
        let keys = self.encode_keys(batch.column(self.plan.on))?;
        let present: Vec<&[u8]> = keys.iter().flatten().map(Vec::as_slice).collect();
        let mut found = self.store.table_rows(self.op, &present)?.into_iter();
        let mut hits: Vec<Vec<u8>> = Vec::new();
        // For each stream row, the index of its table row in `hits`.
        let mut matched: Vec<Option<u32>> = Vec::with_capacity(keys.len());
        for key in &keys {
            let row = match key {
                Some(_) => found.next().expect("one result per key"),
                None => None,
            };
            matched.push(row.map(|bytes| {
                hits.push(bytes);
                (hits.len() - 1) as u32
            }));
        }
        let parser = self.values.parser();
        let parsed: Vec<_> = hits.iter().map(|b| parser.parse(b)).collect();
        let table_columns = self.values.convert_rows(parsed).map_err(exec)?;
        let (stream_columns, indices) = match self.plan.kind {
            JoinKind::Left => (batch.columns().to_vec(), UInt32Array::from(matched.clone())),
            JoinKind::Inner => {
                let keep: Vec<u32> = (0..matched.len() as u32)
                    .filter(|i| matched[*i as usize].is_some())
                    .collect();
                let kept = take_record_batch(batch, &UInt32Array::from(keep)).map_err(exec)?;
                let indices: Vec<u32> = matched.iter().flatten().copied().collect();
                (kept.columns().to_vec(), UInt32Array::from(indices))
            }
        };
        let mut columns = stream_columns;
        for column in &table_columns {
            columns.push(take(column.as_ref(), &indices, None).map_err(exec)?);
        }
        let columns = columns
            .into_iter()
            .zip(self.plan.output.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c)
                } else {
                    cast(&c, f.data_type()).map_err(exec)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        RecordBatch::try_new(self.plan.output.clone(), columns).map_err(exec)
    }
}

fn is_tombstone(message: &OwnedMessage) -> bool {
    message.payload().is_none()
}
