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

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use apache_avro::Schema as AvroSchema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{Name, RecordSchema};
use apache_avro::types::Value as AvroValue;
use apache_avro::writer::datum::GenericDatumWriter;
use serde_json::Value as Json;

use crate::registry::{RegisteredSchema, SchemaKind, SchemaRegistry};

/// First byte of a Confluent-framed record.
pub const MAGIC_BYTE: u8 = 0;
/// Magic byte plus the 4-byte schema id.
pub const FRAME_HEADER_LEN: usize = 5;

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

    fn at(reason: DeadLetterReason, field: &str, message: impl Into<String>) -> Self {
        Self {
            reason,
            field: (!field.is_empty()).then(|| field.to_string()),
            message: message.into(),
        }
    }
}

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
                SchemaKind::Avro(avro) => {
                    let datum = avro.from_json(value)?;
                    avro.encode_framed(schema.id, &datum)
                }
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
    /// JSON otherwise.
    pub async fn decode(&self, payload: &[u8]) -> Result<Value, DecodeError> {
        if payload.first() == Some(&MAGIC_BYTE) {
            let id = frame_schema_id(payload)?;
            let writer = match self.registry.by_id(id) {
                Some(writer) => writer,
                // A schema registered a moment ago may not be materialised
                // here yet: catch up with the registry's log once, then decide.
                None => {
                    self.registry.sync().await.map_err(|e| {
                        DecodeError::new(DeadLetterReason::UnknownSchemaId, e.to_string())
                    })?;
                    self.registry.by_id(id).ok_or_else(|| {
                        DecodeError::new(
                            DeadLetterReason::UnknownSchemaId,
                            format!("schema id {id} is not registered"),
                        )
                    })?
                }
            };
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

/// The schema id of a Confluent-framed record.
pub fn frame_schema_id(payload: &[u8]) -> Result<u32, DecodeError> {
    if payload.len() < FRAME_HEADER_LEN || payload[0] != MAGIC_BYTE {
        return Err(DecodeError::new(
            DeadLetterReason::BadAvro,
            format!(
                "a Confluent Avro record starts with byte 0 and a 4-byte schema id; got {} bytes",
                payload.len()
            ),
        ));
    }
    Ok(u32::from_be_bytes(
        payload[1..5].try_into().expect("4 bytes"),
    ))
}

/// An Avro schema ready for encoding and decoding: parsed once, with its
/// named types indexed so `{"type": "Name"}` references resolve.
pub struct AvroCodec {
    /// The parsed schema.
    pub schema: &'static AvroSchema,
    names: HashMap<Name, AvroSchema>,
    /// Encodes values built by [`AvroCodec::from_json`], already checked.
    trusted_writer: GenericDatumWriter<'static>,
    /// Encodes values from elsewhere, checking them first.
    checking_writer: GenericDatumWriter<'static>,
    reader: GenericDatumReader<'static>,
}

impl fmt::Debug for AvroCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AvroCodec")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl AvroCodec {
    /// Parses an Avro schema.
    pub fn parse(text: &str) -> Result<Self, apache_avro::Error> {
        // The datum reader and writers borrow the schema and resolve its
        // names once. Schemas live as long as the registry that holds them
        // (registered schemas are never removed), so leaking one per
        // registered schema costs nothing and saves a resolution per record.
        let schema: &'static AvroSchema = Box::leak(Box::new(AvroSchema::parse_str(text)?));
        let mut names = HashMap::new();
        collect_names(schema, &mut names);
        Ok(Self {
            schema,
            names,
            trusted_writer: GenericDatumWriter::builder(schema)
                .validate(false)
                .build()?,
            checking_writer: GenericDatumWriter::builder(schema).build()?,
            reader: GenericDatumReader::builder(schema).build()?,
        })
    }

    /// Encodes a value made by [`AvroCodec::from_json`] with Confluent framing.
    pub fn encode_framed(&self, id: u32, value: &AvroValue) -> Result<Vec<u8>, DecodeError> {
        self.encode_with(&self.trusted_writer, id, value)
    }

    /// Checks any Avro value against this schema and encodes it with
    /// Confluent framing.
    pub fn encode_checked(&self, id: u32, value: &AvroValue) -> Result<Vec<u8>, DecodeError> {
        self.encode_with(&self.checking_writer, id, value)
    }

    fn encode_with(
        &self,
        writer: &GenericDatumWriter<'static>,
        id: u32,
        value: &AvroValue,
    ) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::with_capacity(128);
        out.push(MAGIC_BYTE);
        out.extend_from_slice(&id.to_be_bytes());
        writer
            .write_value_ref(&mut out, value)
            .map_err(|e| DecodeError::new(DeadLetterReason::WrongType, e.to_string()))?;
        Ok(out)
    }

    /// Decodes an Avro binary datum written with this schema.
    pub fn decode(&self, mut body: &[u8]) -> Result<AvroValue, DecodeError> {
        let value = self
            .reader
            .read_value(&mut body)
            .map_err(|e| DecodeError::new(DeadLetterReason::BadAvro, e.to_string()))?;
        if !body.is_empty() {
            return Err(DecodeError::new(
                DeadLetterReason::BadAvro,
                format!("{} bytes left over after the Avro datum", body.len()),
            ));
        }
        Ok(value)
    }

    /// Converts natural JSON (`{"amount": 3.5, "note": null}`) to an Avro
    /// value of this schema, naming the first field that does not fit.
    pub fn from_json(&self, json: &Json) -> Result<AvroValue, DecodeError> {
        self.convert(json, self.schema, &mut String::new())
    }

    fn convert(
        &self,
        json: &Json,
        schema: &AvroSchema,
        path: &mut String,
    ) -> Result<AvroValue, DecodeError> {
        use AvroSchema as S;
        let wrong = |expected: &str| {
            DecodeError::at(
                DeadLetterReason::WrongType,
                path,
                format!("expected {expected}, got {}", json_kind(json)),
            )
        };
        Ok(match schema {
            S::Null => match json {
                Json::Null => AvroValue::Null,
                _ => return Err(wrong("null")),
            },
            S::Boolean => AvroValue::Boolean(json.as_bool().ok_or_else(|| wrong("boolean"))?),
            S::Int => AvroValue::Int(integer(json).ok_or_else(|| wrong("int"))?),
            S::Long => AvroValue::Long(integer(json).ok_or_else(|| wrong("long"))?),
            S::Date => AvroValue::Date(integer(json).ok_or_else(|| wrong("date (days)"))?),
            S::TimeMillis => AvroValue::TimeMillis(integer(json).ok_or_else(|| wrong("int"))?),
            S::TimeMicros => AvroValue::TimeMicros(integer(json).ok_or_else(|| wrong("long"))?),
            S::TimestampMillis => AvroValue::TimestampMillis(
                integer(json).ok_or_else(|| wrong("timestamp in milliseconds"))?,
            ),
            S::TimestampMicros => AvroValue::TimestampMicros(
                integer(json).ok_or_else(|| wrong("timestamp in microseconds"))?,
            ),
            S::TimestampNanos => AvroValue::TimestampNanos(
                integer(json).ok_or_else(|| wrong("timestamp in nanoseconds"))?,
            ),
            S::LocalTimestampMillis => AvroValue::LocalTimestampMillis(
                integer(json).ok_or_else(|| wrong("timestamp in milliseconds"))?,
            ),
            S::LocalTimestampMicros => AvroValue::LocalTimestampMicros(
                integer(json).ok_or_else(|| wrong("timestamp in microseconds"))?,
            ),
            S::LocalTimestampNanos => AvroValue::LocalTimestampNanos(
                integer(json).ok_or_else(|| wrong("timestamp in nanoseconds"))?,
            ),
            // f64 -> f32 narrowing is what a float field asks for.
            S::Float => AvroValue::Float(json.as_f64().ok_or_else(|| wrong("float"))? as f32),
            S::Double => AvroValue::Double(json.as_f64().ok_or_else(|| wrong("double"))?),
            S::String => AvroValue::String(json.as_str().ok_or_else(|| wrong("string"))?.into()),
            S::Uuid(_) => {
                let text = json.as_str().ok_or_else(|| wrong("uuid string"))?;
                AvroValue::Uuid(text.parse().map_err(|_| wrong("uuid string"))?)
            }
            S::Bytes => AvroValue::Bytes(
                json.as_str()
                    .ok_or_else(|| wrong("bytes as a string"))?
                    .as_bytes()
                    .to_vec(),
            ),
            S::Fixed(fixed) => {
                let bytes = json
                    .as_str()
                    .ok_or_else(|| wrong("fixed as a string"))?
                    .as_bytes();
                if bytes.len() != fixed.size {
                    return Err(wrong(&format!("{} bytes", fixed.size)));
                }
                AvroValue::Fixed(fixed.size, bytes.to_vec())
            }
            S::Enum(e) => {
                let symbol = json.as_str().ok_or_else(|| wrong("an enum symbol"))?;
                let index = e
                    .symbols
                    .iter()
                    .position(|s| s == symbol)
                    .ok_or_else(|| wrong(&format!("one of {:?}", e.symbols)))?;
                AvroValue::Enum(index as u32, symbol.to_string())
            }
            S::Array(array) => {
                let items = json.as_array().ok_or_else(|| wrong("array"))?;
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    out.push(self.convert(item, &array.items, path)?);
                    path.truncate(len);
                }
                AvroValue::Array(out)
            }
            S::Map(map) => {
                let entries = json.as_object().ok_or_else(|| wrong("object (map)"))?;
                let mut out = HashMap::with_capacity(entries.len());
                for (key, item) in entries {
                    let len = path.len();
                    push_field(path, key);
                    out.insert(key.clone(), self.convert(item, &map.types, path)?);
                    path.truncate(len);
                }
                AvroValue::Map(out)
            }
            S::Union(union) => return self.convert_union(json, union.variants(), path),
            S::Record(record) => return self.convert_record(json, record, path),
            S::Ref { name } => {
                let target = self.names.get(name).ok_or_else(|| {
                    DecodeError::at(
                        DeadLetterReason::IncompatibleSchema,
                        path,
                        format!("schema references unknown type `{name}`"),
                    )
                })?;
                return self.convert(json, target, path);
            }
            other => {
                return Err(DecodeError::at(
                    DeadLetterReason::WrongType,
                    path,
                    format!("JSON input for Avro type {other:?} is not supported"),
                ));
            }
        })
    }

    fn convert_record(
        &self,
        json: &Json,
        record: &RecordSchema,
        path: &mut String,
    ) -> Result<AvroValue, DecodeError> {
        let object = json.as_object().ok_or_else(|| {
            DecodeError::at(
                DeadLetterReason::WrongType,
                path,
                format!("expected record `{}`, got {}", record.name, json_kind(json)),
            )
        })?;
        let mut fields = Vec::with_capacity(record.fields.len());
        for field in &record.fields {
            let len = path.len();
            push_field(path, &field.name);
            let value = match (object.get(&field.name), &field.default) {
                (Some(value), _) => self.convert(value, &field.schema, path)?,
                (None, Some(default)) => self.convert(default, &field.schema, path)?,
                // An absent optional field (a union with null) is null.
                (None, None) if is_nullable(&field.schema) => {
                    self.convert(&Json::Null, &field.schema, path)?
                }
                (None, None) => {
                    return Err(DecodeError::at(
                        DeadLetterReason::MissingField,
                        path,
                        format!("required field `{}` is missing", field.name),
                    ));
                }
            };
            path.truncate(len);
            fields.push((field.name.clone(), value));
        }
        Ok(AvroValue::Record(fields))
    }

    fn convert_union(
        &self,
        json: &Json,
        variants: &[AvroSchema],
        path: &mut String,
    ) -> Result<AvroValue, DecodeError> {
        // Avro's own JSON encoding tags a branch: {"string": "x"}.
        if let Some((tag, inner)) = json
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.iter().next())
            && let Some(index) = variants
                .iter()
                .position(|v| branch_name(v).as_deref() == Some(tag))
        {
            let value = self.convert(inner, &variants[index], path)?;
            return Ok(AvroValue::Union(index as u32, Box::new(value)));
        }
        let mut deepest: Option<DecodeError> = None;
        for (index, variant) in variants.iter().enumerate() {
            match self.convert(json, variant, path) {
                Ok(value) => return Ok(AvroValue::Union(index as u32, Box::new(value))),
                Err(error) => {
                    let depth = |e: &DecodeError| e.field.as_ref().map_or(0, String::len);
                    if deepest.as_ref().is_none_or(|d| depth(&error) > depth(d)) {
                        deepest = Some(error);
                    }
                }
            }
        }
        // An error inside a branch (a field of a record branch) says more
        // than "no branch fits".
        if let Some(error) =
            deepest.filter(|e| e.field.as_ref().map_or(0, String::len) > path.len())
        {
            return Err(error);
        }
        let names: Vec<String> = variants
            .iter()
            .map(|v| branch_name(v).unwrap_or_else(|| "?".into()))
            .collect();
        Err(DecodeError::at(
            DeadLetterReason::WrongType,
            path,
            format!("expected one of {names:?}, got {}", json_kind(json)),
        ))
    }
}

fn push_field(path: &mut String, name: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(name);
}

fn is_nullable(schema: &AvroSchema) -> bool {
    matches!(schema, AvroSchema::Union(u) if u.variants().iter().any(|v| matches!(v, AvroSchema::Null)))
}

fn integer<T: TryFrom<i64>>(json: &Json) -> Option<T> {
    json.as_i64().and_then(|n| T::try_from(n).ok())
}

fn json_kind(json: &Json) -> String {
    match json {
        Json::Null => "null".into(),
        Json::Bool(_) => "a boolean".into(),
        Json::Number(n) => format!("the number {n}"),
        Json::String(s) if s.len() <= 40 => format!("the string {s:?}"),
        Json::String(_) => "a string".into(),
        Json::Array(_) => "an array".into(),
        Json::Object(_) => "an object".into(),
    }
}

/// The name Avro's JSON encoding uses to tag a union branch.
fn branch_name(schema: &AvroSchema) -> Option<String> {
    use AvroSchema as S;
    Some(match schema {
        S::Null => "null".into(),
        S::Boolean => "boolean".into(),
        S::Int => "int".into(),
        S::Long => "long".into(),
        S::Float => "float".into(),
        S::Double => "double".into(),
        S::Bytes => "bytes".into(),
        S::String => "string".into(),
        S::Array(_) => "array".into(),
        S::Map(_) => "map".into(),
        S::Record(r) => r.name.fullname(None),
        S::Enum(e) => e.name.fullname(None),
        S::Fixed(f) => f.name.fullname(None),
        S::Ref { name } => name.fullname(None),
        _ => return None,
    })
}

fn collect_names(schema: &AvroSchema, names: &mut HashMap<Name, AvroSchema>) {
    use AvroSchema as S;
    match schema {
        S::Record(record) => {
            names.insert(record.name.clone(), schema.clone());
            for field in &record.fields {
                collect_names(&field.schema, names);
            }
        }
        S::Enum(e) => {
            names.insert(e.name.clone(), schema.clone());
        }
        S::Fixed(f) => {
            names.insert(f.name.clone(), schema.clone());
        }
        S::Array(a) => collect_names(&a.items, names),
        S::Map(m) => collect_names(&m.types, names),
        S::Union(u) => u.variants().iter().for_each(|v| collect_names(v, names)),
        _ => {}
    }
}

/// Plain JSON for an Avro value: unions unwrapped, bytes and fixed as
/// (lossy) UTF-8 strings, logical types as their underlying numbers.
pub fn avro_to_json(value: &AvroValue) -> Json {
    use AvroValue as V;
    match value {
        V::Null => Json::Null,
        V::Boolean(b) => Json::Bool(*b),
        V::Int(n) | V::Date(n) | V::TimeMillis(n) => Json::from(*n),
        V::Long(n)
        | V::TimeMicros(n)
        | V::TimestampMillis(n)
        | V::TimestampMicros(n)
        | V::TimestampNanos(n)
        | V::LocalTimestampMillis(n)
        | V::LocalTimestampMicros(n)
        | V::LocalTimestampNanos(n) => Json::from(*n),
        V::Float(x) => Json::from(f64::from(*x)),
        V::Double(x) => Json::from(*x),
        V::Bytes(bytes) | V::Fixed(_, bytes) => Json::String(String::from_utf8_lossy(bytes).into()),
        V::String(s) | V::Enum(_, s) => Json::String(s.clone()),
        V::Union(_, inner) => avro_to_json(inner),
        V::Array(items) => Json::Array(items.iter().map(avro_to_json).collect()),
        V::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), avro_to_json(v)))
                .collect(),
        ),
        V::Record(fields) => Json::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), avro_to_json(v)))
                .collect(),
        ),
        V::Uuid(uuid) => Json::String(uuid.to_string()),
        other => Json::String(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TXN: &str = r#"{
        "type": "record", "name": "Txn", "namespace": "demo",
        "fields": [
            {"name": "user", "type": "string"},
            {"name": "amount", "type": "double"},
            {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "note", "type": ["null", "string"], "default": null},
            {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []},
            {"name": "loc", "type": ["null", {"type": "record", "name": "Loc",
                "fields": [{"name": "zip", "type": "int"}]}]},
            {"name": "home", "type": ["null", "Loc"], "default": null}
        ]}"#;

    fn codec() -> AvroCodec {
        AvroCodec::parse(TXN).unwrap()
    }

    #[test]
    fn json_round_trips_through_avro() {
        let codec = codec();
        let input = json!({"user": "u1", "amount": 12.5, "ts": 1700000000000_i64,
            "note": "hi", "tags": ["a"], "loc": {"zip": 75001}, "home": {"zip": 1}});
        let value = codec.from_json(&input).unwrap();
        let bytes = codec.encode_framed(7, &value).unwrap();
        assert_eq!(frame_schema_id(&bytes).unwrap(), 7);
        let back = codec.decode(&bytes[FRAME_HEADER_LEN..]).unwrap();
        assert_eq!(avro_to_json(&back), input);
    }

    #[test]
    fn defaults_and_optional_fields_fill_in() {
        let value = codec()
            .from_json(&json!({"user": "u1", "amount": 1, "ts": 5, "loc": null}))
            .unwrap();
        assert_eq!(
            avro_to_json(&value),
            json!({"user": "u1", "amount": 1.0, "ts": 5, "note": null, "tags": [], "loc": null, "home": null})
        );
    }

    #[test]
    fn errors_name_the_field() {
        let codec = codec();
        let missing = codec
            .from_json(&json!({"amount": 1.0, "ts": 5}))
            .unwrap_err();
        assert_eq!(missing.reason, DeadLetterReason::MissingField);
        assert_eq!(missing.field.as_deref(), Some("user"));

        let wrong = codec
            .from_json(&json!({"user": "u", "amount": "12", "ts": 5}))
            .unwrap_err();
        assert_eq!(wrong.reason, DeadLetterReason::WrongType);
        assert_eq!(wrong.field.as_deref(), Some("amount"));
        assert!(wrong.message.contains("expected double"), "{wrong}");

        let nested = codec
            .from_json(&json!({"user": "u", "amount": 1, "ts": 5, "loc": {"zip": "x"}}))
            .unwrap_err();
        assert_eq!(nested.field.as_deref(), Some("loc.zip"), "{nested}");

        let item = codec
            .from_json(&json!({"user": "u", "amount": 1, "ts": 5, "tags": ["a", 3]}))
            .unwrap_err();
        assert_eq!(item.field.as_deref(), Some("tags[1]"), "{item}");
    }

    #[test]
    fn avro_json_encoding_of_unions_is_accepted() {
        let value = codec()
            .from_json(
                &json!({"user": "u", "amount": 1, "ts": 5, "note": {"string": "x"}, "loc": null}),
            )
            .unwrap();
        assert_eq!(avro_to_json(&value)["note"], json!("x"));
    }

    #[test]
    fn truncated_avro_is_bad_avro() {
        let codec = codec();
        let value = codec
            .from_json(&json!({"user": "u1", "amount": 1, "ts": 5, "loc": null}))
            .unwrap();
        let bytes = codec.encode_framed(1, &value).unwrap();
        let error = codec
            .decode(&bytes[FRAME_HEADER_LEN..bytes.len() - 3])
            .unwrap_err();
        assert_eq!(error.reason, DeadLetterReason::BadAvro);
        assert!(frame_schema_id(&[0, 1]).is_err());
    }
}
