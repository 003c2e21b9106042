//! Avro for the bus: a schema parsed once, natural JSON written straight to
//! Avro binary (the producer's hot path), Avro binary read into values, and
//! values shown as plain JSON.
//!
//! JSON is checked and encoded in one schema-guided pass with no
//! intermediate value tree. A record that does not fit fails with the path
//! of the first field that does not (`loc.zip`, `tags[1]`); the path is only
//! built on the way out of an error, so the happy path allocates nothing but
//! the output.

use std::collections::HashMap;
use std::fmt;

use apache_avro::Schema as AvroSchema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{Name, RecordSchema, UuidSchema};
use apache_avro::types::Value as AvroValue;
use apache_avro::writer::datum::GenericDatumWriter;
use serde_json::Value as Json;

use crate::decode_error::{DeadLetterReason, DecodeError};
use crate::framing::MAGIC_BYTE;

/// An Avro schema ready for encoding and decoding: parsed once, with its
/// named types indexed so `{"type": "Name"}` references resolve.
pub struct AvroCodec {
    /// The parsed schema.
    pub schema: &'static AvroSchema,
    names: HashMap<Name, &'static AvroSchema>,
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

/// A field that does not fit, with its path collected innermost first.
struct Misfit {
    reason: DeadLetterReason,
    path: Vec<Segment>,
    message: String,
}

enum Segment {
    Field(String),
    Index(usize),
}

impl Misfit {
    fn new(reason: DeadLetterReason, message: String) -> Self {
        Self {
            reason,
            path: Vec::new(),
            message,
        }
    }

    fn wrong(expected: &str, json: &Json) -> Self {
        Self::new(
            DeadLetterReason::WrongType,
            format!("expected {expected}, got {}", json_kind(json)),
        )
    }

    fn within(mut self, segment: Segment) -> Self {
        self.path.push(segment);
        self
    }

    fn into_error(self) -> DecodeError {
        let mut field = String::new();
        for segment in self.path.iter().rev() {
            match segment {
                Segment::Field(name) => {
                    if !field.is_empty() {
                        field.push('.');
                    }
                    field.push_str(name);
                }
                Segment::Index(i) => field.push_str(&format!("[{i}]")),
            }
        }
        DecodeError {
            reason: self.reason,
            field: (!field.is_empty()).then_some(field),
            message: self.message,
        }
    }
}

type Fit = Result<(), Misfit>;

impl AvroCodec {
    /// Parses an Avro schema.
    pub fn parse(text: &str) -> Result<Self, apache_avro::Error> {
        // The datum reader and writer borrow the schema and resolve its names
        // once. Schemas live as long as the registry that holds them
        // (registered schemas are never removed), so leaking one per
        // registered schema costs nothing and saves a resolution per record.
        let schema: &'static AvroSchema = Box::leak(Box::new(AvroSchema::parse_str(text)?));
        let mut names = HashMap::new();
        collect_names(schema, &mut names);
        Ok(Self {
            schema,
            names,
            checking_writer: GenericDatumWriter::builder(schema).build()?,
            reader: GenericDatumReader::builder(schema).build()?,
        })
    }

    /// Checks natural JSON (`{"amount": 3.5, "note": null}`) against this
    /// schema and encodes it, with Confluent framing (schema `id`).
    pub fn encode_json_framed(&self, id: u32, json: &Json) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::with_capacity(256);
        out.push(MAGIC_BYTE);
        out.extend_from_slice(&id.to_be_bytes());
        self.write(json, self.schema, &mut out)
            .map_err(Misfit::into_error)?;
        Ok(out)
    }

    /// Checks natural JSON against this schema and encodes it (no framing).
    pub fn encode_json(&self, json: &Json) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::with_capacity(256);
        self.write(json, self.schema, &mut out)
            .map_err(Misfit::into_error)?;
        Ok(out)
    }

    /// Converts natural JSON to an Avro value of this schema.
    pub fn from_json(&self, json: &Json) -> Result<AvroValue, DecodeError> {
        self.decode(&self.encode_json(json)?)
    }

    /// Checks any Avro value against this schema and encodes it with
    /// Confluent framing.
    pub fn encode_checked(&self, id: u32, value: &AvroValue) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::with_capacity(256);
        out.push(MAGIC_BYTE);
        out.extend_from_slice(&id.to_be_bytes());
        self.checking_writer
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

    fn write(&self, json: &Json, schema: &AvroSchema, out: &mut Vec<u8>) -> Fit {
        use AvroSchema as S;
        match schema {
            S::Null => match json {
                Json::Null => Ok(()),
                _ => Err(Misfit::wrong("null", json)),
            },
            S::Boolean => {
                let b = json
                    .as_bool()
                    .ok_or_else(|| Misfit::wrong("boolean", json))?;
                out.push(u8::from(b));
                Ok(())
            }
            S::Int | S::Date | S::TimeMillis => {
                let n: i32 = integer(json).ok_or_else(|| Misfit::wrong(int_name(schema), json))?;
                write_long(i64::from(n), out);
                Ok(())
            }
            S::Long
            | S::TimeMicros
            | S::TimestampMillis
            | S::TimestampMicros
            | S::TimestampNanos
            | S::LocalTimestampMillis
            | S::LocalTimestampMicros
            | S::LocalTimestampNanos => {
                let n: i64 = integer(json).ok_or_else(|| Misfit::wrong(int_name(schema), json))?;
                write_long(n, out);
                Ok(())
            }
            S::Float => {
                let x = float(json).ok_or_else(|| Misfit::wrong("float", json))?;
                // f64 -> f32 narrowing is what a float field asks for.
                out.extend_from_slice(&(x as f32).to_le_bytes());
                Ok(())
            }
            S::Double => {
                let x = float(json).ok_or_else(|| Misfit::wrong("double", json))?;
                out.extend_from_slice(&x.to_le_bytes());
                Ok(())
            }
            S::String | S::Bytes => {
                let text = json.as_str().ok_or_else(|| {
                    Misfit::wrong(
                        if matches!(schema, S::String) {
                            "string"
                        } else {
                            "bytes as a string"
                        },
                        json,
                    )
                })?;
                write_bytes(text.as_bytes(), out);
                Ok(())
            }
            S::Uuid(kind) => {
                let text = json
                    .as_str()
                    .ok_or_else(|| Misfit::wrong("a uuid string", json))?;
                let uuid: apache_avro::Uuid = text
                    .parse()
                    .map_err(|_| Misfit::wrong("a uuid string", json))?;
                match kind {
                    UuidSchema::String => {
                        write_bytes(uuid.hyphenated().to_string().as_bytes(), out)
                    }
                    UuidSchema::Bytes => write_bytes(uuid.as_bytes(), out),
                    UuidSchema::Fixed(_) => out.extend_from_slice(uuid.as_bytes()),
                }
                Ok(())
            }
            S::Fixed(fixed) => {
                let bytes = json
                    .as_str()
                    .ok_or_else(|| Misfit::wrong("fixed as a string", json))?
                    .as_bytes();
                if bytes.len() != fixed.size {
                    return Err(Misfit::wrong(&format!("{} bytes", fixed.size), json));
                }
                out.extend_from_slice(bytes);
                Ok(())
            }
            S::Enum(e) => {
                let symbol = json
                    .as_str()
                    .ok_or_else(|| Misfit::wrong("an enum symbol", json))?;
                let index = e
                    .symbols
                    .iter()
                    .position(|s| s == symbol)
                    .ok_or_else(|| Misfit::wrong(&format!("one of {:?}", e.symbols), json))?;
                write_long(index as i64, out);
                Ok(())
            }
            S::Array(array) => {
                let items = json
                    .as_array()
                    .ok_or_else(|| Misfit::wrong("an array", json))?;
                if !items.is_empty() {
                    write_long(items.len() as i64, out);
                    for (i, item) in items.iter().enumerate() {
                        self.write(item, &array.items, out)
                            .map_err(|m| m.within(Segment::Index(i)))?;
                    }
                }
                out.push(0);
                Ok(())
            }
            S::Map(map) => {
                let entries = json
                    .as_object()
                    .ok_or_else(|| Misfit::wrong("an object (map)", json))?;
                if !entries.is_empty() {
                    write_long(entries.len() as i64, out);
                    for (key, item) in entries {
                        write_bytes(key.as_bytes(), out);
                        self.write(item, &map.types, out)
                            .map_err(|m| m.within(Segment::Field(key.clone())))?;
                    }
                }
                out.push(0);
                Ok(())
            }
            S::Union(union) => self.write_union(json, union.variants(), out),
            S::Record(record) => self.write_record(json, record, out),
            S::Ref { name } => {
                let target = self.names.get(name).ok_or_else(|| {
                    Misfit::new(
                        DeadLetterReason::IncompatibleSchema,
                        format!("the schema references unknown type `{name}`"),
                    )
                })?;
                self.write(json, target, out)
            }
            other => Err(Misfit::new(
                DeadLetterReason::WrongType,
                format!("JSON input for Avro type {other:?} is not supported"),
            )),
        }
    }

    fn write_record(&self, json: &Json, record: &RecordSchema, out: &mut Vec<u8>) -> Fit {
        let object = json
            .as_object()
            .ok_or_else(|| Misfit::wrong(&format!("record `{}`", record.name), json))?;
        for field in &record.fields {
            let written = match (object.get(&field.name), &field.default) {
                (Some(value), _) => self.write(value, &field.schema, out),
                (None, Some(default)) => self.write(default, &field.schema, out),
                // An absent optional field (a union with null) is null.
                (None, None) if is_nullable(&field.schema) => {
                    self.write(&Json::Null, &field.schema, out)
                }
                (None, None) => Err(Misfit::new(
                    DeadLetterReason::MissingField,
                    format!("required field `{}` is missing", field.name),
                )),
            };
            written.map_err(|m| m.within(Segment::Field(field.name.clone())))?;
        }
        Ok(())
    }

    fn write_union(&self, json: &Json, variants: &[AvroSchema], out: &mut Vec<u8>) -> Fit {
        // Avro's own JSON encoding tags a branch: {"string": "x"}.
        if let Some((tag, inner)) = json
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.iter().next())
            && let Some(index) = variants
                .iter()
                .position(|v| branch_name(v).as_deref() == Some(tag))
        {
            write_long(index as i64, out);
            return self.write(inner, &variants[index], out);
        }
        let start = out.len();
        let mut deepest: Option<Misfit> = None;
        for (index, variant) in variants.iter().enumerate() {
            write_long(index as i64, out);
            match self.write(json, variant, out) {
                Ok(()) => return Ok(()),
                Err(misfit) => {
                    out.truncate(start);
                    if deepest
                        .as_ref()
                        .is_none_or(|d| misfit.path.len() > d.path.len())
                    {
                        deepest = Some(misfit);
                    }
                }
            }
        }
        // A problem inside a branch (a field of a record branch) says more
        // than "no branch fits".
        match deepest {
            Some(misfit) if !misfit.path.is_empty() => Err(misfit),
            _ => {
                let names: Vec<String> = variants
                    .iter()
                    .map(|v| branch_name(v).unwrap_or_else(|| "?".into()))
                    .collect();
                Err(Misfit::wrong(&format!("one of {names:?}"), json))
            }
        }
    }
}

/// Avro `long`: zig-zag, then variable-length.
fn write_long(n: i64, out: &mut Vec<u8>) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn write_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    write_long(bytes.len() as i64, out);
    out.extend_from_slice(bytes);
}

fn int_name(schema: &AvroSchema) -> &'static str {
    use AvroSchema as S;
    match schema {
        S::Int => "int",
        S::Long => "long",
        S::Date => "a date (days since the epoch)",
        S::TimeMillis | S::TimeMicros => "a time of day",
        S::TimestampMillis | S::LocalTimestampMillis => "a timestamp in milliseconds",
        S::TimestampMicros | S::LocalTimestampMicros => "a timestamp in microseconds",
        _ => "a timestamp in nanoseconds",
    }
}

fn is_nullable(schema: &AvroSchema) -> bool {
    matches!(schema, AvroSchema::Union(u) if u.variants().iter().any(|v| matches!(v, AvroSchema::Null)))
}

/// A number, or one of the strings JSON writes the values it has no
/// number for as (`"NaN"`, `"Infinity"`, `"-Infinity"`, as protobuf's JSON
/// and [`avro_to_json`] do).
fn float(json: &Json) -> Option<f64> {
    match json.as_str() {
        Some("NaN") => Some(f64::NAN),
        Some("Infinity") => Some(f64::INFINITY),
        Some("-Infinity") => Some(f64::NEG_INFINITY),
        Some(_) => None,
        None => json.as_f64(),
    }
}

/// A float as JSON: a number, or the string naming a value JSON has no
/// number for.
/// A float as JSON: NaN and ±infinity, which JSON lacks, as the strings
/// `"NaN"`, `"Infinity"` and `"-Infinity"` (what arrow-json parses too).
pub fn float_json(x: f64) -> Json {
    if x.is_nan() {
        Json::from("NaN")
    } else if x.is_infinite() {
        Json::from(if x > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        Json::from(x)
    }
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

fn collect_names(schema: &'static AvroSchema, names: &mut HashMap<Name, &'static AvroSchema>) {
    use AvroSchema as S;
    match schema {
        S::Record(record) => {
            names.insert(record.name.clone(), schema);
            for field in &record.fields {
                collect_names(&field.schema, names);
            }
        }
        S::Enum(e) => {
            names.insert(e.name.clone(), schema);
        }
        S::Fixed(f) => {
            names.insert(f.name.clone(), schema);
        }
        S::Array(a) => collect_names(&a.items, names),
        S::Map(m) => collect_names(&m.types, names),
        S::Union(u) => u.variants().iter().for_each(|v| collect_names(v, names)),
        _ => {}
    }
}

/// Plain JSON for an Avro value: unions unwrapped, bytes and fixed as
/// (lossy) UTF-8 strings, logical types as their underlying numbers, NaN
/// and the infinities as the strings `"NaN"`, `"Infinity"`, `"-Infinity"`.
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
        V::Float(x) => float_json(f64::from(*x)),
        V::Double(x) => float_json(*x),
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
    use crate::framing::{FRAME_HEADER_LEN, frame_schema_id};
    use serde_json::json;

    const TXN: &str = r#"{
        "type": "record", "name": "Txn", "namespace": "demo",
        "fields": [
            {"name": "user", "type": "string"},
            {"name": "amount", "type": "double"},
            {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "note", "type": ["null", "string"], "default": null},
            {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []},
            {"name": "attrs", "type": {"type": "map", "values": "int"}, "default": {}},
            {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}, "default": "A"},
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
            "note": "hi", "tags": ["a", "b"], "attrs": {"x": -3}, "kind": "B",
            "loc": {"zip": 75001}, "home": {"zip": 1}});
        let bytes = codec.encode_json_framed(7, &input).unwrap();
        assert_eq!(frame_schema_id(&bytes).unwrap(), 7);
        let back = codec.decode(&bytes[FRAME_HEADER_LEN..]).unwrap();
        assert_eq!(avro_to_json(&back), input);
        // The same bytes as apache-avro's own encoder writes.
        assert_eq!(codec.encode_checked(7, &back).unwrap(), bytes);
    }

    #[test]
    fn nan_and_the_infinities_round_trip_as_their_json_names() {
        let codec = AvroCodec::parse(
            r#"{"type": "record", "name": "M", "fields": [{"name": "x", "type": "double"}, {"name": "y", "type": "float"}]}"#,
        )
        .unwrap();
        for name in ["NaN", "Infinity", "-Infinity"] {
            let input = json!({"x": name, "y": name});
            let back = avro_to_json(&codec.decode(&codec.encode_json(&input).unwrap()).unwrap());
            assert_eq!(back, input);
        }
        let refused = codec
            .encode_json(&json!({"x": "nan", "y": 1.0}))
            .unwrap_err();
        assert_eq!(refused.field.as_deref(), Some("x"));
    }

    #[test]
    fn defaults_and_optional_fields_fill_in() {
        let value = codec()
            .from_json(&json!({"user": "u1", "amount": 1, "ts": 5, "loc": null}))
            .unwrap();
        assert_eq!(
            avro_to_json(&value),
            json!({"user": "u1", "amount": 1.0, "ts": 5, "note": null, "tags": [], "attrs": {},
                   "kind": "A", "loc": null, "home": null})
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

        let symbol = codec
            .from_json(&json!({"user": "u", "amount": 1, "ts": 5, "kind": "C"}))
            .unwrap_err();
        assert_eq!(symbol.field.as_deref(), Some("kind"), "{symbol}");

        let overflow = codec
            .from_json(&json!({"user": "u", "amount": 1, "ts": 5, "loc": {"zip": 1_u64 << 40}}))
            .unwrap_err();
        assert_eq!(overflow.field.as_deref(), Some("loc.zip"), "{overflow}");
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
        let bytes = codec
            .encode_json_framed(1, &json!({"user": "u1", "amount": 1, "ts": 5, "loc": null}))
            .unwrap();
        let error = codec
            .decode(&bytes[FRAME_HEADER_LEN..bytes.len() - 3])
            .unwrap_err();
        assert_eq!(error.reason, DeadLetterReason::BadAvro);
        assert!(frame_schema_id(&[0, 1]).is_err());
    }
}
