//! Why a record could not be decoded: the error every decoder gives, and
//! its class, which names the dead letter's reason.

use std::fmt;

/// Why a record could not be decoded: the `weir.dlq.reason` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeadLetterReason {
    /// Not valid JSON (and not Confluent-framed Avro).
    BadJson,
    /// Avro bytes that do not decode with their writer schema.
    BadAvro,
    /// A Confluent frame whose schema id the registry does not know.
    UnknownSchemaId,
    /// The writer schema cannot be resolved to the topic's schema.
    IncompatibleSchema,
    /// A required field is absent.
    MissingField,
    /// A field has a value of the wrong type.
    WrongType,
    /// The record breaks its JSON Schema.
    SchemaViolation,
    /// The record is larger than the configured maximum.
    Oversized,
    /// The record arrived later than a stream's allowed lateness.
    Late,
    /// The record decodes, but its consumer cannot act on it (a request a
    /// model cannot answer); the message says why.
    Rejected,
}

impl DeadLetterReason {
    /// The reason as written in the `weir.dlq.reason` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad-json",
            Self::BadAvro => "bad-avro",
            Self::UnknownSchemaId => "unknown-schema-id",
            Self::IncompatibleSchema => "incompatible-schema",
            Self::MissingField => "missing-field",
            Self::WrongType => "wrong-type",
            Self::SchemaViolation => "schema-violation",
            Self::Oversized => "oversized",
            Self::Late => "late",
            Self::Rejected => "rejected",
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record that cannot be decoded or does not match its schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}{}: {message}", field.as_ref().map(|f| format!(" at `{f}`")).unwrap_or_default())]
pub struct DecodeError {
    /// The class of problem.
    pub reason: DeadLetterReason,
    /// Path of the offending field (`user.address.zip`, `items[3]`), if one.
    pub field: Option<String>,
    /// What is wrong, for people.
    pub message: String,
}

impl DecodeError {
    /// A problem with the record as a whole.
    pub fn new(reason: DeadLetterReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            field: None,
            message: message.into(),
        }
    }
}
