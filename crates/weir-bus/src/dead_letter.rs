//! Dead letters: records that failed to decode or validate, kept unchanged
//! on `weir.dlq.<source>` with headers saying why and where they came from.
//!
//! | header | value |
//! |---|---|
//! | `weir.dlq.reason` | [`DeadLetterReason`] (`bad-json`, `missing-field`, `oversized`, ...) |
//! | `weir.dlq.error` | the full message |
//! | `weir.dlq.field` | path of the offending field, when there is one |
//! | `weir.dlq.topic`, `weir.dlq.partition`, `weir.dlq.offset` | where the record was |
//!
//! The record's own key, payload and headers are kept as they were, so a
//! fixed consumer can replay the dead-letter topic.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use weir_core::topics;

use crate::decode_error::{DeadLetterReason, DecodeError};
use crate::{Admin, Bus, BusConfig, BusError, OutRecord, PendingDelivery, Producer, TopicSpec};

/// What every dead-letter header's name starts with.
pub const HEADER_PREFIX: &str = "weir.dlq.";
/// Header naming the reason.
pub const REASON: &str = "weir.dlq.reason";
/// Header with the full error message.
pub const ERROR: &str = "weir.dlq.error";
/// Header with the offending field's path.
pub const FIELD: &str = "weir.dlq.field";
/// Header with the source topic.
pub const TOPIC: &str = "weir.dlq.topic";
/// Header with the source partition.
pub const PARTITION: &str = "weir.dlq.partition";
/// Header with the source offset.
pub const OFFSET: &str = "weir.dlq.offset";

/// How many records went to dead-letter topics, in total and by reason.
#[derive(Debug, Default)]
pub struct DeadLetterCounts {
    total: AtomicU64,
    by_reason: Mutex<BTreeMap<DeadLetterReason, u64>>,
}

impl DeadLetterCounts {
    /// All dead letters.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Dead letters per reason.
    pub fn by_reason(&self) -> BTreeMap<DeadLetterReason, u64> {
        self.by_reason.lock().expect("counts lock").clone()
    }

    fn add(&self, reason: DeadLetterReason) {
        self.total.fetch_add(1, Ordering::Relaxed);
        *self
            .by_reason
            .lock()
            .expect("counts lock")
            .entry(reason)
            .or_default() += 1;
    }
}

/// Where a dead letter came from, and what it was.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Source partition (`-1` when the record never reached a topic, such as
    /// a line `weir publish` could not parse).
    pub partition: i32,
    /// Source offset (for input that never reached a topic: its line number).
    pub offset: i64,
    /// The record's key.
    pub key: Option<&'a [u8]>,
    /// The record's payload, unchanged.
    pub payload: Option<&'a [u8]>,
    /// The record's own headers.
    pub headers: &'a [(String, Vec<u8>)],
}

/// Writes dead letters and counts them.
pub struct DeadLetters {
    /// Made with the first dead letter: a reader that meets none starts no
    /// producer, which is a librdkafka client of its own, with threads,
    /// connections and a polling thread that wakes ten times a second.
    producer: Option<Producer>,
    config: std::sync::Arc<BusConfig>,
    admin: Admin,
    ensured: HashSet<String>,
    counts: std::sync::Arc<DeadLetterCounts>,
    pending: Vec<PendingDelivery>,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("total", &self.counts.total())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl DeadLetters {
    /// A dead-letter writer on `bus`.
    pub fn new(bus: &Bus) -> Self {
        Self {
            producer: None,
            config: bus.config.clone(),
            admin: bus.admin().clone(),
            ensured: HashSet::new(),
            counts: Default::default(),
            pending: Vec::new(),
        }
    }

    /// The counters (shared; they keep counting).
    pub fn counts(&self) -> std::sync::Arc<DeadLetterCounts> {
        self.counts.clone()
    }

    /// Queues `source` for its dead-letter topic with `error` as the reason.
    /// Call [`DeadLetters::settle`] before committing the source's offsets.
    pub async fn send(&mut self, source: Source<'_>, error: &DecodeError) -> Result<(), BusError> {
        let dlq = topics::dlq(source.topic);
        if !self.ensured.contains(&dlq) {
            self.admin.ensure_topic(&TopicSpec::new(&dlq, 1)).await?;
            self.ensured.insert(dlq.clone());
        }
        let headers = headers(&source, error);
        // Per record at debug level: bad input can come by the million; the
        // counters and the dead-letter topic are what make it visible.
        tracing::debug!(
            topic = source.topic,
            partition = source.partition,
            offset = source.offset,
            reason = %error.reason,
            field = error.field.as_deref().unwrap_or(""),
            "dead letter: {}",
            error.message
        );
        let record = OutRecord::new(&dlq, source.payload.unwrap_or_default())
            .maybe_key(source.key)
            .headers(headers);
        let producer = match &mut self.producer {
            Some(producer) => producer,
            none => none.insert(Producer::new(&self.config)?),
        };
        let delivery = producer.send(record).await?;
        self.pending.push(delivery);
        self.counts.add(error.reason);
        Ok(())
    }

    /// Counts a record that a read-only reader skipped without writing it.
    pub fn count_only(&self, reason: DeadLetterReason) {
        self.counts.add(reason);
    }

    /// Waits until every dead letter sent so far is stored.
    pub async fn settle(&mut self) -> Result<(), BusError> {
        for delivery in self.pending.drain(..) {
            delivery.await?;
        }
        Ok(())
    }
}

/// The headers of `source`'s dead letter: its own headers and the
/// `weir.dlq.*` ones saying why and where.
pub fn headers(source: &Source<'_>, error: &DecodeError) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(source.headers.len() + 6);
    for (key, value) in source.headers {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    let partition = source.partition.to_string();
    let offset = source.offset.to_string();
    let mut ours = vec![
        (REASON, error.reason.as_str()),
        (ERROR, error.message.as_str()),
        (TOPIC, source.topic),
        (PARTITION, partition.as_str()),
        (OFFSET, offset.as_str()),
    ];
    if let Some(field) = &error.field {
        ours.push((FIELD, field));
    }
    for (key, value) in ours {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    headers
}

/// The `weir.dlq.*` headers of a dead-letter record, as `(name, value)` pairs.
pub fn describe(headers: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(key, _)| key.starts_with(HEADER_PREFIX))
        .map(|(key, value)| (key.clone(), String::from_utf8_lossy(value).into_owned()))
        .collect()
}

/// A dead letter as JSON: where it is, its key and payload as text, and
/// the reason headers without their `weir.dlq.` prefix.
pub fn to_json(record: &crate::RawRecord) -> serde_json::Value {
    let reasons: serde_json::Map<String, serde_json::Value> = describe(&record.headers)
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches(HEADER_PREFIX).to_string(), v.into()))
        .collect();
    serde_json::json!({
        "partition": record.partition,
        "offset": record.offset,
        "key": record.key.as_deref().map(String::from_utf8_lossy),
        "payload": record.payload.as_deref().map(String::from_utf8_lossy),
        "dead_letter": reasons,
    })
}

/// Copies a message's headers into owned pairs.
pub(crate) fn owned_headers(
    headers: Option<&rdkafka::message::BorrowedHeaders>,
) -> Vec<(String, Vec<u8>)> {
    headers
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
