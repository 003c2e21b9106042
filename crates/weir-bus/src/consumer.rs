//! Consuming: decoded [`Record`]s, bad ones dead-lettered, offsets committed
//! by hand.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rdkafka::ClientContext;
use rdkafka::consumer::{CommitMode, Consumer as _, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::codec::{DeadLetterReason, DecodeError, TopicCodec, Value};
use crate::dead_letter::{DeadLetterCounts, DeadLetters, Source, owned_headers};
use crate::{Bus, BusConfig, BusError};

/// Where a consumer starts reading.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The group's committed offsets; the beginning where none are committed.
    #[default]
    Committed,
    /// The beginning of every partition (no group offsets are used).
    Beginning,
    /// The end: only records produced from now on.
    End,
    /// These offsets, per partition (partitions not named start at the
    /// beginning). No group offsets are used.
    Offsets(Vec<(String, i32, i64)>),
}

/// How a [`Consumer`] reads.
#[derive(Debug, Clone, Default)]
pub struct ConsumerOptions {
    /// Consumer group. With a group, partitions are balanced across its
    /// members and [`Consumer::commit`] stores offsets for the group.
    pub group: Option<String>,
    /// Where to start.
    pub start: StartFrom,
    /// Stop (return `None`) once every partition has been read to its end.
    /// Needs exactly one topic.
    pub until_end: bool,
    /// Only look: report records that fail to decode (a warning and a
    /// count) instead of writing them to the dead-letter topic. For tools
    /// such as `weir tail` that must not change anything.
    pub read_only: bool,
    /// librdkafka settings for this consumer only (`session.timeout.ms`…).
    pub settings: Vec<(String, String)>,
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Timestamp in milliseconds since the epoch, if the record has one.
    pub timestamp: Option<i64>,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The decoded value (`Value::Json(Null)` for a tombstone).
    pub value: Value,
}

impl Record {
    /// The record as JSON: its value, or with `placed` its topic,
    /// partition, offset, timestamp and key around the value.
    pub fn to_json(&self, placed: bool) -> serde_json::Value {
        if !placed {
            return self.value.to_json();
        }
        serde_json::json!({
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp,
            "key": self.key.as_deref().map(String::from_utf8_lossy),
            "value": self.value.to_json(),
        })
    }
}

/// A record as stored, not decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Timestamp in milliseconds since the epoch, if the record has one.
    pub timestamp: Option<i64>,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Value bytes.
    pub payload: Option<Vec<u8>>,
}

/// Reads topics; decodes values with each topic's codec; sends records that
/// fail to the dead-letter topic and moves on.
pub struct Consumer {
    /// Dropped off the caller's thread: every consumer here has a group,
    /// and rdkafka's drop waits to leave it.
    inner: crate::DropOffThread<Arc<StreamConsumer<QuietEof>>>,
    codecs: HashMap<String, TopicCodec>,
    dead_letters: DeadLetters,
    max_record_bytes: usize,
    /// Next offset to commit, per (topic, partition): past everything handed
    /// out or dead-lettered.
    positions: HashMap<(String, i32), i64>,
    until_end: bool,
    read_only: bool,
    at_end: HashSet<i32>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("topics", &self.codecs.keys().collect::<Vec<_>>())
            .field("positions", &self.positions)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    pub(crate) fn new(
        bus: &Bus,
        topics: &[&str],
        options: ConsumerOptions,
    ) -> Result<Self, BusError> {
        if topics.is_empty() {
            return Err(BusError::InvalidOption(
                "a consumer needs at least one topic".into(),
            ));
        }
        if options.until_end && topics.len() != 1 {
            return Err(BusError::InvalidOption(
                "reading until the end needs exactly one topic".into(),
            ));
        }
        let group = options
            .group
            .clone()
            .unwrap_or_else(|| format!("weir-reader-{}", crate::registry::uuid_like()));
        let reset = match options.start {
            StartFrom::End => "latest",
            _ => "earliest",
        };
        let mut client = consumer_config(bus.config(), &group);
        client.set("auto.offset.reset", reset).set(
            "enable.partition.eof",
            if options.until_end { "true" } else { "false" },
        );
        for (key, value) in &options.settings {
            client.set(key, value);
        }
        let inner: StreamConsumer<QuietEof> = client
            .create_with_context(QuietEof)
            .map_err(|e| BusError::kafka("creating a consumer", e))?;
        if options.group.is_some() && matches!(options.start, StartFrom::Committed | StartFrom::End)
        {
            inner
                .subscribe(topics)
                .map_err(|e| BusError::kafka(format!("subscribing to {topics:?}"), e))?;
        } else {
            // No group (or "from the beginning"): read every partition ourselves.
            let mut assignment = TopicPartitionList::new();
            for topic in topics {
                let partitions = partition_count(&inner, topic)?;
                for partition in 0..partitions {
                    // "From the beginning" is offset 0: librdkafka looks
                    // `Offset::Beginning` up first (a ListOffsets, which can
                    // queue behind a waiting fetch on the same connection);
                    // where the log no longer starts at 0, the fetch is out
                    // of range and `auto.offset.reset` (earliest) takes it
                    // to the start.
                    let offset = match &options.start {
                        StartFrom::End => Offset::End,
                        StartFrom::Offsets(offsets) => offsets
                            .iter()
                            .find(|(t, p, _)| t == topic && *p == partition)
                            .map_or(Offset::Offset(0), |(_, _, o)| Offset::Offset(*o)),
                        _ => Offset::Offset(0),
                    };
                    assignment
                        .add_partition_offset(topic, partition, offset)
                        .map_err(|e| BusError::kafka("assigning partitions", e))?;
                }
            }
            inner
                .assign(&assignment)
                .map_err(|e| BusError::kafka(format!("assigning {topics:?}"), e))?;
        }
        let codecs = topics
            .iter()
            .map(|topic| (topic.to_string(), bus.codec(topic)))
            .collect();
        Ok(Self {
            inner: crate::DropOffThread::new(Arc::new(inner)),
            codecs,
            dead_letters: DeadLetters::new(bus),
            max_record_bytes: bus.config().max_record_bytes,
            positions: HashMap::new(),
            until_end: options.until_end,
            read_only: options.read_only,
            at_end: HashSet::new(),
        })
    }

    /// The next good record, decoded. Records that fail go to the
    /// dead-letter topic on the way. `None` once every partition is read to
    /// its end, when the consumer was made with `until_end`.
    pub async fn next(&mut self) -> Result<Option<Record>, BusError> {
        loop {
            let inner = Arc::clone(&self.inner);
            let message = match self.receive(&inner).await? {
                Some(message) => message,
                None => return Ok(None),
            };
            let topic = message.topic();
            let codec = &self.codecs[topic];
            let payload = message.payload();
            let decoded = match payload {
                Some(bytes) if bytes.len() > self.max_record_bytes => Err(DecodeError::new(
                    DeadLetterReason::Oversized,
                    format!(
                        "{} bytes is more than the {} bytes allowed",
                        bytes.len(),
                        self.max_record_bytes
                    ),
                )),
                Some(bytes) => codec.decode(bytes).await,
                None => Ok(Value::Json(serde_json::Value::Null)),
            };
            self.positions.insert(
                (topic.to_string(), message.partition()),
                message.offset() + 1,
            );
            let headers = owned_headers(message.headers());
            match decoded {
                Ok(value) => {
                    return Ok(Some(Record {
                        topic: topic.to_string(),
                        partition: message.partition(),
                        offset: message.offset(),
                        timestamp: message.timestamp().to_millis(),
                        key: message.key().map(<[u8]>::to_vec),
                        headers,
                        value,
                    }));
                }
                Err(error) if self.read_only => {
                    tracing::warn!(
                        topic,
                        partition = message.partition(),
                        offset = message.offset(),
                        "undecodable record skipped: {error}"
                    );
                    self.dead_letters.count_only(error.reason);
                }
                Err(error) => {
                    let source = Source {
                        topic,
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key(),
                        payload,
                        headers: &headers,
                    };
                    self.dead_letters.send(source, &error).await?;
                }
            }
        }
    }

    /// The next record as stored, without decoding (for dead-letter topics
    /// and tools that copy bytes).
    pub async fn next_raw(&mut self) -> Result<Option<RawRecord>, BusError> {
        let inner = Arc::clone(&self.inner);
        let Some(message) = self.receive(&inner).await? else {
            return Ok(None);
        };
        self.positions.insert(
            (message.topic().to_string(), message.partition()),
            message.offset() + 1,
        );
        Ok(Some(RawRecord {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            headers: owned_headers(message.headers()),
            payload: message.payload().map(<[u8]>::to_vec),
        }))
    }

    async fn receive<'c>(
        &mut self,
        inner: &'c StreamConsumer<QuietEof>,
    ) -> Result<Option<BorrowedMessage<'c>>, BusError> {
        loop {
            match inner.recv().await {
                Ok(message) => {
                    if self.until_end {
                        self.at_end.remove(&message.partition());
                    }
                    return Ok(Some(message));
                }
                Err(KafkaError::PartitionEOF(partition)) => {
                    self.at_end.insert(partition);
                    if self.all_at_end()? {
                        return Ok(None);
                    }
                }
                Err(error) => return Err(BusError::kafka("consuming", error)),
            }
        }
    }

    fn all_at_end(&self) -> Result<bool, BusError> {
        let assignment = self
            .inner
            .assignment()
            .map_err(|e| BusError::kafka("reading the assignment", e))?;
        let elements = assignment.elements();
        Ok(!elements.is_empty()
            && elements
                .iter()
                .all(|e| self.at_end.contains(&e.partition())))
    }

    /// Commits (synchronously) the offsets of everything handed out or
    /// dead-lettered so far, after the dead letters themselves are stored.
    pub async fn commit(&mut self) -> Result<(), BusError> {
        self.dead_letters.settle().await?;
        if self.positions.is_empty() {
            return Ok(());
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), next) in &self.positions {
            offsets
                .add_partition_offset(topic, *partition, Offset::Offset(*next))
                .map_err(|e| BusError::kafka("building the offsets to commit", e))?;
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.commit(&offsets, CommitMode::Sync))
            .await
            .expect("commit task panicked")
            .map_err(|e| BusError::kafka("committing offsets", e))
    }

    /// Sends a record this consumer handed out to its dead-letter topic,
    /// with `error` as the reason: for a record that decodes but cannot be
    /// acted on. [`Consumer::commit`] waits for it to be stored.
    pub async fn dead_letter(
        &mut self,
        record: &RawRecord,
        error: &DecodeError,
    ) -> Result<(), BusError> {
        let source = Source {
            topic: &record.topic,
            partition: record.partition,
            offset: record.offset,
            key: record.key.as_deref(),
            payload: record.payload.as_deref(),
            headers: &record.headers,
        };
        self.dead_letters.send(source, error).await
    }

    /// Waits until every dead letter sent so far is stored.
    pub async fn settle_dead_letters(&mut self) -> Result<(), BusError> {
        self.dead_letters.settle().await
    }

    /// Dead-letter counters of this consumer.
    pub fn dead_letters(&self) -> Arc<DeadLetterCounts> {
        self.dead_letters.counts()
    }

    /// The next offset of each partition read so far.
    pub fn positions(&self) -> &HashMap<(String, i32), i64> {
        &self.positions
    }
}

/// A client context for consumers that ask to be told when they reach the
/// end of a partition (`enable.partition.eof`): librdkafka reports it as an
/// error, which for them is news, not a fault, so it is not logged as one.
pub struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {
                tracing::trace!("librdkafka: {error}: {reason}")
            }
            _ => tracing::error!("librdkafka: {error}: {reason}"),
        }
    }
}

impl ConsumerContext for QuietEof {}

/// The settings the bus consumes with (offsets committed by hand);
/// `weir bench bus` gives the raw baseline the same ones.
pub fn consumer_config(config: &BusConfig, group: &str) -> rdkafka::ClientConfig {
    let mut client = config.client_config();
    client
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Once a consumer's prefetch queue is full, librdkafka waits this
        // long before fetching again (default 1 s): a reader that drains
        // the queue in 0.1 s then idles for the rest.
        .set("fetch.queue.backoff.ms", "10");
    for (key, value) in &config.overrides {
        client.set(key, value);
    }
    client
}

fn partition_count(consumer: &StreamConsumer<QuietEof>, topic: &str) -> Result<i32, BusError> {
    let metadata = crate::metadata::patiently(|| {
        consumer.fetch_metadata(Some(topic), std::time::Duration::from_secs(10))
    })
    .map_err(|e| BusError::kafka(format!("reading metadata of `{topic}`"), e))?;
    let count = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len());
    if count == 0 {
        return Err(BusError::UnknownTopic(topic.to_string()));
    }
    Ok(count as i32)
}
