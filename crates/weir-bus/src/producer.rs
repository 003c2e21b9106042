//! Producing raw bytes with [`Producer`] (encoded values: [`crate::Publisher`]).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::{BusConfig, BusError};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message as _, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};

/// Where a record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
}

/// A record to produce.
#[derive(Debug)]
pub struct OutRecord<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition; `None` lets the partitioner choose (by key hash when keyed).
    pub partition: Option<i32>,
    /// Key.
    pub key: Option<&'a [u8]>,
    /// Value bytes.
    pub payload: &'a [u8],
    /// Headers.
    pub headers: Option<OwnedHeaders>,
}

impl<'a> OutRecord<'a> {
    /// A record for `topic` with no key.
    pub fn new(topic: &'a str, payload: &'a [u8]) -> Self {
        Self {
            topic,
            partition: None,
            key: None,
            payload,
            headers: None,
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: &'a [u8]) -> Self {
        self.key = Some(key);
        self
    }

    /// Sets the key if there is one.
    pub fn maybe_key(mut self, key: Option<&'a [u8]>) -> Self {
        self.key = key;
        self
    }

    /// Sends to this partition.
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets headers.
    pub fn headers(mut self, headers: OwnedHeaders) -> Self {
        self.headers = Some(headers);
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &[u8]) -> Self {
        let headers = self.headers.take().unwrap_or_default();
        self.headers = Some(headers.insert(rdkafka::message::Header {
            key: name,
            value: Some(value),
        }));
        self
    }
}

/// A Kafka producer (idempotent, `acks=all`). Sending is asynchronous:
/// [`Producer::send`] queues the record and returns a future that resolves
/// once the broker has it, so callers can keep many records in flight.
#[derive(Clone)]
pub struct Producer {
    /// Taken only when dropped.
    inner: Option<FutureProducer<ProducerLog>>,
    /// Counted while it lives; a clone is another handle.
    live: Option<crate::Live>,
}

impl Drop for Producer {
    /// A producer with nothing in flight is dropped off the caller's thread
    /// ([`crate::drop_off_thread`]). One with records in flight is dropped
    /// here: rdkafka's drop purges them and flushes, so their deliveries
    /// resolve (as failed) before going on.
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        if inner.in_flight_count() == 0 {
            crate::drop_off_thread(inner, self.live.take());
        }
    }
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

/// The settings the bus produces with; `weir bench bus` gives the raw
/// baseline the same ones.
pub fn producer_config(config: &BusConfig) -> rdkafka::ClientConfig {
    let mut client = config.client_config();
    client
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000");
    // Overrides win over the defaults above.
    for (key, value) in &config.overrides {
        client.set(key, value);
    }
    client
}

impl Producer {
    /// Creates a producer.
    pub fn new(config: &BusConfig) -> Result<Self, BusError> {
        let settings = producer_config(config);
        let inner: FutureProducer<ProducerLog> = settings
            .create_with_context(ProducerLog)
            .map_err(|e| BusError::kafka("creating a producer", e))?;
        if settings.get("enable.idempotence") == Some("true") {
            ask_for_producer_id(&inner);
        }
        Ok(Self {
            inner: Some(inner),
            live: Some(crate::Live::new()),
        })
    }

    /// Queues a record; waits only while the local queue is full. The
    /// returned future resolves when the broker has acknowledged it.
    pub async fn send(&self, record: OutRecord<'_>) -> Result<PendingDelivery, BusError> {
        let mut out: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(record.topic).payload(record.payload);
        if let Some(key) = record.key {
            out = out.key(key);
        }
        if let Some(partition) = record.partition {
            out = out.partition(partition);
        }
        if let Some(headers) = record.headers {
            out = out.headers(headers);
        }
        let future = loop {
            match self.inner().send_result(out) {
                Ok(future) => break future,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    out = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((error, _)) => {
                    return Err(BusError::kafka(
                        format!("producing to `{}`", record.topic),
                        error,
                    ));
                }
            }
        };
        Ok(PendingDelivery { inner: future })
    }

    fn inner(&self) -> &FutureProducer<ProducerLog> {
        self.inner.as_ref().expect("taken only when dropped")
    }

    /// Sends one record and waits for its acknowledgement.
    pub async fn send_and_wait(&self, record: OutRecord<'_>) -> Result<Delivery, BusError> {
        self.send(record).await?.await
    }

    /// Waits until every queued record is acknowledged (or `timeout`).
    pub fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        self.inner()
            .flush(timeout)
            .map_err(|e| BusError::kafka("flushing the producer", e))
    }
}

/// The client context of the bus's producers: librdkafka's log through
/// [`producer_log`].
pub(crate) struct ProducerLog;

impl ClientContext for ProducerLog {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        producer_log(level, facility, message);
    }
}

/// A producer's librdkafka log line, as rdkafka forwards it, less one
/// warning. The first request for a producer id often goes out on the
/// bootstrap connection (soon, by [`ask_for_producer_id`]), which
/// librdkafka closes as it learns the brokers; it then warns "Failed to
/// acquire idempotence PID … Broker handle destroyed without termination:
/// retrying" and asks a learned broker at once. That is logged at debug
/// level. For producers made with a context of their own.
pub fn producer_log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    if facility == "GETPID" && message.contains("Broker handle destroyed") {
        tracing::debug!(target: "librdkafka", "librdkafka: {facility} {message}");
    } else {
        DefaultClientContext.log(level, facility, message);
    }
}

/// Gets an idempotent producer its producer id now rather than in up to a
/// second. Its first send waits for the id, which librdkafka asks for on a
/// timer — 500 ms after the client starts, 1 s when no broker connection
/// is up by then (`rdkafka_idempotence.c`) — or when a metadata response
/// comes while a broker is up. The first response comes on the bootstrap
/// connection, which librdkafka closes as it learns the cluster's brokers,
/// so at that moment often none is up; a second request is answered by a
/// learned broker, up. Both run on a thread of their own (the calls
/// block). Measured against the embedded broker: the first
/// acknowledgement 58 ms after the client starts instead of 506 to 1,008
/// ms.
pub(crate) fn ask_for_producer_id(producer: &FutureProducer<ProducerLog>) {
    let producer = producer.clone();
    let _ = std::thread::Builder::new()
        .name("weir-producer-id".into())
        .spawn(move || {
            for _ in 0..2 {
                let _ = producer
                    .client()
                    .fetch_metadata(None, Duration::from_secs(5));
            }
        });
}

/// A queued record: resolves to where it was stored once the broker has
/// acknowledged it.
#[must_use = "a delivery reports whether the record was stored"]
pub struct PendingDelivery {
    inner: DeliveryFuture,
}

impl std::fmt::Debug for PendingDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingDelivery").finish_non_exhaustive()
    }
}

impl Future for PendingDelivery {
    type Output = Result<Delivery, BusError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.inner)
            .poll(cx)
            .map(|result| match result {
                Ok(Ok(delivery)) => Ok(Delivery {
                    partition: delivery.partition,
                    offset: delivery.offset,
                }),
                Ok(Err((error, message))) => Err(BusError::kafka(
                    format!("producing to `{}`", message.topic()),
                    error,
                )),
                Err(_) => Err(BusError::Closed("the producer".into())),
            })
    }
}
