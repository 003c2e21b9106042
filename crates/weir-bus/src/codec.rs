//! Record codecs: Avro in the Confluent wire format and JSON, both checked
//! against the topic's registered schema.
//!
//! A topic's values are described by the schema registered under the subject
//! `<topic>-value`. Records on the wire may be:
//!
//! - **Avro, Confluent framing**: byte `0`, the writer schema id (4 bytes,
//!   big-endian), then the Avro binary datum. Read with the writer's schema
//!   and resolved to the topic's current schema (schema evolution);
//! - **JSON**: a UTF-8 JSON document. On a topic with an Avro schema it is
//!   checked and converted field by field (so a JSON producer and an Avro
//!   producer can share a topic); with a JSON Schema it is validated.
//!
//! Whatever fails becomes a [`DecodeError`] whose [`DeadLetterReason`] and
//! field path go into the dead-letter record's headers.

use std::fmt;
use std::sync::Arc;

use apache_avro::types::Value as AvroValue;
use serde_json::Value as Json;

use crate::avro::avro_to_json;
use crate::registry::{RegisteredSchema, SchemaKind, SchemaRegistry};

pub use crate::decode_error::{DeadLetterReason, DecodeError};
use crate::framing::{FRAME_HEADER_LEN, MAGIC_BYTE, frame_schema_id};

/// A decoded record value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Checked against (and resolved to) the topic's Avro schema.
    Avro(AvroValue),
    /// JSON, validated against the topic's JSON Schema if it has one.
    Json(Json),
}

impl Value {
    /// The value as plain JSON (unions unwrapped, bytes as strings).
    pub fn to_json(&self) -> Json {
        match self {
            Value::Avro(value) => avro_to_json(value),
            Value::Json(value) => value.clone(),
        }
    }
}

/// How a producer writes a topic's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// Avro binary with Confluent framing (needs an Avro schema).
    Avro,
    /// JSON text.
    Json,
}

/// Encodes and decodes the values of one topic.
///
/// Holds the topic's schema as of its creation; the writer schemas of Avro
/// records are looked up in the registry by id as they arrive.
#[derive(Clone)]
pub struct TopicCodec {
    topic: String,
    schema: Option<Arc<RegisteredSchema>>,
    registry: SchemaRegistry,
}

impl fmt::Debug for TopicCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicCodec")
            .field("topic", &self.topic)
            .field("schema_id", &self.schema.as_ref().map(|s| s.id))
            .finish()
    }
}

impl TopicCodec {
    pub(crate) fn new(
        topic: &str,
        schema: Option<Arc<RegisteredSchema>>,
        registry: SchemaRegistry,
    ) -> Self {
        Self {
            topic: topic.to_string(),
            schema,
            registry,
        }
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic's schema, if one is registered.
    pub fn schema(&self) -> Option<&Arc<RegisteredSchema>> {
        self.schema.as_ref()
    }

    /// The schema registered under `id`, which a record framed with it was
    /// written with (as the registry has it now: no waiting).
    pub fn writer_schema(&self, id: u32) -> Option<Arc<RegisteredSchema>> {
        self.registry.by_id(id)
    }

    /// The format a producer should use by default: Avro when the topic has
    /// an Avro schema, JSON otherwise.
    pub fn default_format(&self) -> WireFormat {
        match self.schema.as_deref().map(|s| &s.kind) {
            Some(SchemaKind::Avro(_)) => WireFormat::Avro,
            _ => WireFormat::Json,
        }
    }

    /// Checks a JSON value against the topic's schema and encodes it.
    pub fn encode_json(&self, value: &Json, format: WireFormat) -> Result<Vec<u8>, DecodeError> {
        match (&self.schema, format) {
            (Some(schema), WireFormat::Avro) => match &schema.kind {
                SchemaKind::Avro(avro) => avro.encode_json_framed(schema.id, value),
                SchemaKind::Json(_) => Err(DecodeError::new(
                    DeadLetterReason::IncompatibleSchema,
                    format!(
                        "topic `{}` has a JSON Schema; it cannot be written as Avro",
                        self.topic
                    ),
                )),
            },
            (None, WireFormat::Avro) => Err(DecodeError::new(
                DeadLetterReason::UnknownSchemaId,
                format!(
                    "topic `{}` has no schema registered under `{}`: Avro needs one",
                    self.topic,
                    weir_core::topics::value_subject(&self.topic)
                ),
            )),
            (Some(schema), WireFormat::Json) => {
                schema.check_json(value)?;
                Ok(serde_json::to_vec(value).expect("a JSON value always serializes"))
            }
            (None, WireFormat::Json) => {
                Ok(serde_json::to_vec(value).expect("a JSON value always serializes"))
            }
        }
    }

    /// Encodes an Avro value already shaped by the topic's Avro schema.
    pub fn encode_avro(&self, value: &AvroValue) -> Result<Vec<u8>, DecodeError> {
        match self.schema.as_deref() {
            Some(RegisteredSchema {
                id,
                kind: SchemaKind::Avro(avro),
                ..
            }) => avro.encode_checked(*id, value),
            _ => Err(DecodeError::new(
                DeadLetterReason::UnknownSchemaId,
                format!("topic `{}` has no Avro schema", self.topic),
            )),
        }
    }

    /// Decodes a record's bytes: Confluent-framed Avro if the first byte is 0,
    /// JSON otherwise. A schema id not known yet makes the registry catch
    /// up with its log once before the record is declared undecodable.
    pub async fn decode(&self, payload: &[u8]) -> Result<Value, DecodeError> {
        match self.decode_cached(payload) {
            Err(error) if error.reason == DeadLetterReason::UnknownSchemaId => {
                // A schema registered a moment ago may not be materialised
                // here yet.
                self.registry.sync().await.map_err(|e| {
                    DecodeError::new(DeadLetterReason::UnknownSchemaId, e.to_string())
                })?;
                self.decode_cached(payload)
            }
            other => other,
        }
    }

    /// Like [`TopicCodec::decode`], with the schemas the registry has now
    /// (no waiting: for callers outside an async runtime).
    pub fn decode_cached(&self, payload: &[u8]) -> Result<Value, DecodeError> {
        if payload.first() == Some(&MAGIC_BYTE) {
            let id = frame_schema_id(payload)?;
            let writer = self.registry.by_id(id).ok_or_else(|| {
                DecodeError::new(
                    DeadLetterReason::UnknownSchemaId,
                    format!("schema id {id} is not registered"),
                )
            })?;
            self.decode_avro(&writer, &payload[FRAME_HEADER_LEN..])
        } else {
            self.decode_json(payload)
        }
    }

    fn decode_avro(&self, writer: &RegisteredSchema, body: &[u8]) -> Result<Value, DecodeError> {
        let SchemaKind::Avro(writer_schema) = &writer.kind else {
            return Err(DecodeError::new(
                DeadLetterReason::IncompatibleSchema,
                format!("schema id {} is a JSON Schema, not Avro", writer.id),
            ));
        };
        let reader_schema = match self.schema.as_deref() {
            None => None,
            Some(reader) if reader.id == writer.id => None,
            Some(RegisteredSchema {
                kind: SchemaKind::Avro(avro),
                ..
            }) => Some(avro),
            Some(reader) => {
                return Err(DecodeError::new(
                    DeadLetterReason::IncompatibleSchema,
                    format!(
                        "topic `{}` has JSON Schema {}, the record is Avro (schema {})",
                        self.topic, reader.id, writer.id
                    ),
                ));
            }
        };
        let value = writer_schema.decode(body)?;
        match reader_schema {
            None => Ok(Value::Avro(value)),
            Some(reader) => value.resolve(reader.schema).map(Value::Avro).map_err(|e| {
                DecodeError::new(
                    DeadLetterReason::IncompatibleSchema,
                    format!(
                        "written with schema {} which does not resolve to the topic's schema: {e}",
                        writer.id
                    ),
                )
            }),
        }
    }

    fn decode_json(&self, payload: &[u8]) -> Result<Value, DecodeError> {
        let json: Json = serde_json::from_slice(payload).map_err(|e| {
            DecodeError::new(
                DeadLetterReason::BadJson,
                format!("not JSON (line {} column {}): {e}", e.line(), e.column()),
            )
        })?;
        match self.schema.as_deref() {
            None => Ok(Value::Json(json)),
            Some(schema) => match &schema.kind {
                SchemaKind::Avro(avro) => avro.from_json(&json).map(Value::Avro),
                SchemaKind::Json(_) => {
                    schema.check_json(&json)?;
                    Ok(Value::Json(json))
                }
            },
        }
    }
}
