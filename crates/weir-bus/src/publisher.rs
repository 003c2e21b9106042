//! Producing values encoded with a topic's codec (Avro in Confluent's
//! wire format, or JSON), checked against its schema first.

use std::time::Duration;

use serde_json::Value as Json;

use crate::BusError;
use crate::codec::{DecodeError, TopicCodec, WireFormat};
use crate::producer::{OutRecord, PendingDelivery, Producer};

/// Encodes values with a topic's codec and produces them.
#[derive(Debug, Clone)]
pub struct Publisher {
    producer: Producer,
    codec: TopicCodec,
    format: WireFormat,
}

impl Publisher {
    pub(crate) fn new(producer: Producer, codec: TopicCodec) -> Self {
        let format = codec.default_format();
        Self {
            producer,
            codec,
            format,
        }
    }

    /// Writes values in `format` instead of the topic's default.
    pub fn with_format(mut self, format: WireFormat) -> Self {
        self.format = format;
        self
    }

    /// The topic's codec.
    pub fn codec(&self) -> &TopicCodec {
        &self.codec
    }

    /// The underlying producer (for records that bypass the codec).
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// Checks a JSON value against the topic's schema and encodes it.
    pub fn encode(&self, value: &Json) -> Result<Vec<u8>, DecodeError> {
        self.codec.encode_json(value, self.format)
    }

    /// Queues encoded bytes for the topic (see [`Producer::send`]).
    pub async fn send(
        &self,
        key: Option<&[u8]>,
        bytes: &[u8],
    ) -> Result<PendingDelivery, BusError> {
        self.producer
            .send(OutRecord::new(self.codec.topic(), bytes).maybe_key(key))
            .await
    }

    /// Waits until every queued record is acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        self.producer.flush(timeout)
    }
}
