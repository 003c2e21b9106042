//! The runtime's Kafka producers: sends that wait while the local queue is
//! full, flushes that fail if any record was not delivered, and dead
//! letters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer as _, ThreadedProducer};
use weir_bus::dead_letter::{self, Source as DeadSource};
use weir_bus::{BusConfig, DecodeError};

use crate::DataflowError;

/// Counts delivery failures of a producer, so a flush can tell whether
/// everything it waited for arrived.
#[derive(Default)]
pub struct CountingContext {
    failures: AtomicU64,
}

impl rdkafka::ClientContext for CountingContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        weir_bus::producer_log(level, facility, message);
    }
}

impl rdkafka::producer::ProducerContext for CountingContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if let Err((error, message)) = result {
            tracing::error!(%error, topic = message.topic(), "a record was not delivered");
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A producer whose flush reports lost records.
pub type Producer = ThreadedProducer<CountingContext>;

/// A producer with the bus's settings.
pub fn producer(config: &BusConfig) -> Result<Producer, DataflowError> {
    weir_bus::producer_config(config)
        .create_with_context(CountingContext::default())
        .map_err(|e| DataflowError::Execution(format!("creating a producer: {e}")))
}

/// Sends a record, waiting while the local queue is full.
pub fn produce(
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
pub fn flush(producer: &Producer) -> Result<(), DataflowError> {
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

/// Sends a record read from `message.topic()` to its dead-letter topic,
/// unchanged, with headers naming `error` and where the record was.
pub fn dead_letter(
    producer: &Producer,
    message: &impl Message,
    error: &DecodeError,
) -> Result<(), DataflowError> {
    let headers: Vec<(String, Vec<u8>)> = Vec::new();
    let source = DeadSource {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key(),
        payload: message.payload(),
        headers: &headers,
    };
    let headers = dead_letter::headers(&source, error);
    produce(
        producer,
        &weir_core::topics::dlq(message.topic()),
        message.key(),
        message.payload().unwrap_or_default(),
        Some(headers),
    )
}
