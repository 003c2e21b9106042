//! Weir's bus: how every component talks to Kafka.
//!
//! ```text
//!            Publisher ──encode──▶ Producer ──▶ topic ──▶ Consumer ──decode──▶ Record
//!                 │                                          │
//!   TopicCodec ◀──┴── SchemaRegistry ◀── weir.schemas        └─ bad record ──▶ weir.dlq.<topic>
//! ```
//!
//! - [`Bus`] is the entry point: one connection configuration, the
//!   [`Admin`] client and the [`SchemaRegistry`];
//! - [`Producer`] and [`Consumer`] wrap `rdkafka` (consumer groups, manual
//!   offset commits); a [`Publisher`] encodes values for one topic;
//! - [`codec`] turns bytes into [`Value`]s: Avro in the Confluent wire format
//!   (magic byte and schema id) or JSON, checked against the topic's schema;
//! - [`registry`] keeps schemas in the compacted `weir.schemas` topic and
//!   serves the Confluent Schema Registry REST API, so any Kafka client's
//!   serializer can publish to Weir;
//! - a record that fails to decode or validate goes, unchanged, to
//!   `weir.dlq.<topic>` with headers naming the reason, the field and the
//!   source topic/partition/offset ([`dead_letter`]); the consumer counts it
//!   and keeps going.
//!
//! The code runs unchanged against Weir's embedded broker, Apache Kafka or
//! Redpanda: it only speaks the Kafka protocol.

mod admin;
pub mod avro;
pub mod codec;
mod consumer;
pub mod dead_letter;
mod decode_error;
mod error;
pub mod framing;
pub mod ingest;
mod metadata;
mod producer;
mod publisher;
pub mod registry;

use std::sync::Arc;

use rdkafka::ClientConfig;

pub use admin::{Admin, PartitionInfo, TopicInfo, TopicSpec};
pub use codec::{TopicCodec, Value, WireFormat};
pub use consumer::{
    Consumer, ConsumerOptions, QuietEof, RawRecord, Record, StartFrom, consumer_config,
};
pub use dead_letter::DeadLetterCounts;
pub use decode_error::{DeadLetterReason, DecodeError};
pub use error::BusError;
pub use producer::{Delivery, OutRecord, PendingDelivery, Producer, producer_config, producer_log};
pub use publisher::Publisher;
pub use registry::{SchemaRegistry, SchemaType};

/// Handles on rdkafka clients the bus made that are still alive, and a
/// condition signalled when one goes: whoever stops a broker in this
/// process waits until none is left ([`wait_for_dropped_clients`]).
static LIVE: (std::sync::Mutex<usize>, std::sync::Condvar) =
    (std::sync::Mutex::new(0), std::sync::Condvar::new());

/// One live handle on an rdkafka client, counted in [`LIVE`] until it is
/// dropped (a clone is another handle).
pub(crate) struct Live(());

impl Live {
    pub(crate) fn new() -> Self {
        *LIVE.0.lock().expect("live clients") += 1;
        Self(())
    }
}

impl Clone for Live {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let mut live = LIVE.0.lock().expect("live clients");
        *live = live.saturating_sub(1);
        LIVE.1.notify_all();
    }
}

/// Drops an rdkafka client handle on a thread of its own, then its
/// [`Live`] count: rdkafka's drops block for about 100 ms (a consumer polls
/// until its group is left, a producer or an admin client joins its
/// polling thread, which polls every 100 ms), which would hold up whatever
/// drops it — a command's exit, a follower replaced, a tracker closed —
/// once per client. If no thread can be started, it is dropped here
/// instead.
pub(crate) fn drop_off_thread(client: impl Send + 'static, live: Option<Live>) {
    let dropping = std::thread::Builder::new()
        .name("weir-client-drop".into())
        .spawn(move || {
            drop(client);
            drop(live);
        });
    if let Err(error) = dropping {
        tracing::debug!(%error, "dropping an rdkafka client here");
    }
}

/// Waits until every rdkafka client the bus made in this process is gone
/// (each goes within about 100 ms of its last handle), or a few seconds
/// have passed. Whoever stops a broker in this process calls it first, once
/// it has dropped its own handles: a client still open when its broker
/// stops logs errors (and a handle a task still held a moment ago is
/// dropped when the task is).
pub fn wait_for_dropped_clients() {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut live = LIVE.0.lock().expect("live clients");
    while *live > 0 {
        let now = std::time::Instant::now();
        if now >= deadline {
            tracing::debug!(live = *live, "rdkafka clients still open");
            return;
        }
        live = LIVE
            .1
            .wait_timeout(live, deadline - now)
            .expect("live clients")
            .0;
    }
}

/// An rdkafka client that is dropped off the caller's thread
/// ([`drop_off_thread`]) and counted while it lives.
pub(crate) struct DropOffThread<T: Send + 'static> {
    client: Option<T>,
    live: Option<Live>,
}

impl<T: Send + 'static> DropOffThread<T> {
    pub(crate) fn new(client: T) -> Self {
        Self {
            client: Some(client),
            live: Some(Live::new()),
        }
    }
}

impl<T: Send + 'static> std::ops::Deref for DropOffThread<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.client.as_ref().expect("taken only when dropped")
    }
}

impl<T: Send + 'static> Drop for DropOffThread<T> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop_off_thread(client, self.live.take());
        }
    }
}

// The Rust examples of the bus's page in docs/ are compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/bus.md")]
struct BusGuide;

/// How to reach Kafka, and the bus's own limits.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// `client.id` prefix of every client the bus creates.
    pub client_id: String,
    /// Consumed records larger than this go to the dead-letter topic.
    pub max_record_bytes: usize,
    /// Extra librdkafka properties applied to every client (security, tuning).
    pub overrides: Vec<(String, String)>,
}

impl BusConfig {
    /// A configuration for `bootstrap_servers` with default limits.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            client_id: "weir".to_string(),
            max_record_bytes: weir_core::Config::default().max_record_bytes,
            overrides: Vec::new(),
        }
    }

    /// A configuration for `bootstrap_servers` with the limits of a
    /// `weir` process's configuration.
    pub fn configured(bootstrap_servers: impl Into<String>, config: &weir_core::Config) -> Self {
        Self {
            max_record_bytes: config.max_record_bytes,
            ..Self::new(bootstrap_servers)
        }
    }

    /// Adds a librdkafka property to every client.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.overrides.push((key.into(), value.into()));
        self
    }

    /// The librdkafka configuration every client starts from.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", &self.client_id)
            // Kafka's default; the embedded broker needs no more.
            .set("message.max.bytes", "1000000");
        for (key, value) in &self.overrides {
            config.set(key, value);
        }
        config
    }
}

/// A connection to Kafka with the schema registry loaded: cheap to clone.
#[derive(Clone, Debug)]
pub struct Bus {
    config: Arc<BusConfig>,
    admin: Admin,
    registry: SchemaRegistry,
}

impl Bus {
    /// Connects, checks the brokers answer, and replays the schema registry.
    pub async fn connect(config: BusConfig) -> Result<Self, BusError> {
        let admin = Admin::new(&config)?;
        admin.check_reachable().await?;
        let registry = SchemaRegistry::open(&config, &admin).await?;
        Ok(Self {
            config: Arc::new(config),
            admin,
            registry,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BusConfig {
        &self.config
    }

    /// Topic administration.
    pub fn admin(&self) -> &Admin {
        &self.admin
    }

    /// The schema registry.
    pub fn registry(&self) -> &SchemaRegistry {
        &self.registry
    }

    /// A producer of raw bytes.
    pub fn producer(&self) -> Result<Producer, BusError> {
        Producer::new(&self.config)
    }

    /// The codec of `topic`, with its latest registered value schema.
    pub fn codec(&self, topic: &str) -> TopicCodec {
        let schema = self
            .registry
            .latest(&weir_core::topics::value_subject(topic))
            .map(|version| version.schema);
        TopicCodec::new(topic, schema, self.registry.clone())
    }

    /// A publisher that encodes values for `topic`.
    pub fn publisher(&self, topic: &str) -> Result<Publisher, BusError> {
        Ok(Publisher::new(self.producer()?, self.codec(topic)))
    }

    /// A consumer of `topics` that decodes records and dead-letters bad ones.
    pub fn consumer(
        &self,
        topics: &[&str],
        options: ConsumerOptions,
    ) -> Result<Consumer, BusError> {
        Consumer::new(self, topics, options)
    }

    /// The values of every record of a single-partition log topic such as
    /// `weir.meta`, from its beginning to its end now, in order (creating
    /// the topic if it does not exist). Registries rebuild themselves from
    /// it.
    pub async fn read_log(&self, topic: &str) -> Result<Vec<Vec<u8>>, BusError> {
        let (records, _) = self.read_log_records(topic).await?;
        Ok(records.into_iter().map(|(_, value)| value).collect())
    }

    /// As [`Bus::read_log`], each value with its offset, and the offset
    /// after the last record (where to follow the log from).
    pub async fn read_log_records(
        &self,
        topic: &str,
    ) -> Result<(Vec<(i64, Vec<u8>)>, i64), BusError> {
        self.admin().ensure_topic(&TopicSpec::new(topic, 1)).await?;
        let mut consumer = self.consumer(
            &[topic],
            ConsumerOptions {
                start: StartFrom::Beginning,
                until_end: true,
                read_only: true,
                // The end is known from a fetch that comes back empty; the
                // broker holds one for up to this long (librdkafka's 500 ms
                // default made every replay of a small log take ~0.8 s).
                settings: vec![("fetch.wait.max.ms".into(), "5".into())],
                ..Default::default()
            },
        )?;
        let (mut records, mut next) = (Vec::new(), 0);
        while let Some(record) = consumer.next_raw().await? {
            next = record.offset + 1;
            if let Some(payload) = record.payload {
                records.push((record.offset, payload));
            }
        }
        Ok((records, next))
    }

    /// How many records of `topic` consumer group `group` has yet to
    /// commit: the sum over partitions of the end offset minus the
    /// group's committed offset (the low watermark where it has none).
    /// What an autoscaler (or KEDA's Kafka scaler) scales on.
    pub async fn lag(&self, group: &str, topic: &str) -> Result<i64, BusError> {
        use rdkafka::consumer::{BaseConsumer, Consumer as _};
        let partitions = self.admin().partitions(topic).await?;
        let config = self.config.clone();
        let (group, topic) = (group.to_string(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            let timeout = std::time::Duration::from_secs(10);
            // A consumer that never subscribes: it reads the group's
            // offsets without joining it.
            let consumer: BaseConsumer = config
                .client_config()
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .create()
                .map_err(|e| BusError::kafka("creating a lag reader", e))?;
            let mut wanted = rdkafka::TopicPartitionList::new();
            for partition in 0..partitions {
                wanted.add_partition(&topic, partition);
            }
            let committed = consumer
                .committed_offsets(wanted, timeout)
                .map_err(|e| BusError::kafka(format!("reading {group}'s offsets"), e))?;
            let mut lag = 0;
            for partition in 0..partitions {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, partition, timeout)
                    .map_err(|e| BusError::kafka(format!("reading offsets of {topic}"), e))?;
                let at = match committed
                    .find_partition(&topic, partition)
                    .map(|e| e.offset())
                {
                    Some(rdkafka::Offset::Offset(at)) => at,
                    _ => low,
                };
                lag += (high - at).max(0);
            }
            Ok(lag)
        })
        .await
        .expect("lag task panicked")
    }
}
