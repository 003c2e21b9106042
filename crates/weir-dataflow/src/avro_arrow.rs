//! The Arrow shape of Avro data: the columns an Avro schema becomes, and
//! each Avro value written as the JSON that arrow-json decodes into them.
//!
//! | Avro | Arrow |
//! |---|---|
//! | `record` | `Struct` (the top-level record's fields are the columns) |
//! | `array` | `List` |
//! | `map` | `Map` with `Utf8` keys |
//! | `["null", T]` | `T`, nullable |
//! | a union of several non-null types | `Struct` with one nullable field per branch, named by the branch (a record's name, or `string`, `long`, …); the branch taken is the one not null |
//! | `enum`, `uuid`, `string` | `Utf8` |
//! | `bytes`, `fixed` | `Binary`, `FixedSizeBinary` |
//! | `decimal(p, s)`, p ≤ 38 | `Decimal128(p, s)` |
//! | `date`, `time-millis`, `time-micros` | `Date32`, `Time32(ms)`, `Time64(µs)` |
//! | `timestamp-*`, `local-timestamp-*` | `Timestamp(unit)` |
//!
//! A topic whose schema is a union of records (`weir.meta`) has one
//! nullable struct column per record type. Enums stay `Utf8` (arrow-json
//! decodes no dictionaries); `duration` and recursive types are refused.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use apache_avro::Schema as AvroSchema;
use apache_avro::types::Value;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use serde_json::Value as Json;
use weir_bus::avro::float_json;
use weir_bus::{DeadLetterReason, DecodeError};

use crate::DataflowError;
use crate::column_type;

/// An Avro schema with its named types, and the Arrow schema it becomes.
#[derive(Debug, Clone)]
pub struct AvroShape {
    root: AvroSchema,
    named: HashMap<String, AvroSchema>,
    arrow: SchemaRef,
}

impl AvroShape {
    /// The shape of records written with `avro`: a record, or a union of
    /// records.
    pub fn new(avro: &AvroSchema) -> Result<Self, DataflowError> {
        let mut named = HashMap::new();
        collect_named(avro, &mut named);
        let mut shape = Self {
            root: avro.clone(),
            named,
            arrow: Arc::new(Schema::empty()),
        };
        let (data_type, _) = shape
            .data_type(avro, &mut Vec::new())
            .map_err(DataflowError::Plan)?;
        let DataType::Struct(fields) = data_type else {
            return Err(DataflowError::Plan(
                "a stream's schema must be an Avro record or a union of records".into(),
            ));
        };
        shape.arrow = Arc::new(Schema::new(fields));
        Ok(shape)
    }

    /// The Arrow schema of the records.
    pub fn arrow_schema(&self) -> SchemaRef {
        self.arrow.clone()
    }

    /// A decoded value as JSON shaped for [`AvroShape::arrow_schema`].
    pub fn to_json(&self, value: &Value) -> Result<Json, DecodeError> {
        let mut path = String::new();
        self.value_json(&self.root, value, &mut path)
            .map_err(|message| DecodeError {
                reason: DeadLetterReason::SchemaViolation,
                field: (!path.is_empty()).then_some(path),
                message,
            })
    }

    fn resolve<'a>(&'a self, schema: &'a AvroSchema) -> Result<&'a AvroSchema, String> {
        match schema {
            AvroSchema::Ref { name } => self
                .named
                .get(&name.fullname(None))
                .ok_or_else(|| format!("the schema names `{}`, which it does not define", name)),
            other => Ok(other),
        }
    }

    /// The Arrow type of `schema` and whether it is nullable. `within`
    /// holds the named types being expanded, to refuse recursion.
    fn data_type(
        &self,
        schema: &AvroSchema,
        within: &mut Vec<String>,
    ) -> Result<(DataType, bool), String> {
        use AvroSchema as S;
        let schema = self.resolve(schema)?;
        Ok(match schema {
            S::Null => (DataType::Null, true),
            S::Boolean => (DataType::Boolean, false),
            S::Int => (DataType::Int32, false),
            S::Long => (DataType::Int64, false),
            S::Float => (DataType::Float32, false),
            S::Double => (DataType::Float64, false),
            S::String | S::Enum(_) | S::Uuid(_) | S::BigDecimal => (DataType::Utf8, false),
            S::Bytes => (DataType::Binary, false),
            S::Fixed(fixed) => (
                DataType::FixedSizeBinary(
                    i32::try_from(fixed.size)
                        .map_err(|_| format!("fixed `{}` is too large for Arrow", fixed.name))?,
                ),
                false,
            ),
            S::Decimal(decimal) => {
                let precision = u8::try_from(decimal.precision)
                    .ok()
                    .filter(|p| *p <= 38)
                    .ok_or_else(|| {
                        format!(
                            "decimal precision {} is more than the 38 digits streams hold",
                            decimal.precision
                        )
                    })?;
                let scale = i8::try_from(decimal.scale)
                    .map_err(|_| format!("decimal scale {} is too large", decimal.scale))?;
                (DataType::Decimal128(precision, scale), false)
            }
            S::Date => (DataType::Date32, false),
            S::TimeMillis => (DataType::Time32(TimeUnit::Millisecond), false),
            S::TimeMicros => (DataType::Time64(TimeUnit::Microsecond), false),
            S::TimestampMillis | S::LocalTimestampMillis => {
                (DataType::Timestamp(TimeUnit::Millisecond, None), false)
            }
            S::TimestampMicros | S::LocalTimestampMicros => {
                (DataType::Timestamp(TimeUnit::Microsecond, None), false)
            }
            S::TimestampNanos | S::LocalTimestampNanos => {
                (DataType::Timestamp(TimeUnit::Nanosecond, None), false)
            }
            S::Duration(_) => return Err("Avro `duration` is not supported in streams".into()),
            S::Array(array) => {
                let (item, nullable) = self.data_type(&array.items, within)?;
                (
                    DataType::List(Arc::new(Field::new("item", item, nullable))),
                    false,
                )
            }
            S::Map(map) => {
                let (value, nullable) = self.data_type(&map.types, within)?;
                (column_type::map_of(value, nullable), false)
            }
            S::Record(record) => {
                let name = record.name.fullname(None);
                if within.contains(&name) {
                    return Err(format!("record `{name}` contains itself"));
                }
                within.push(name);
                let fields = record
                    .fields
                    .iter()
                    .map(|field| {
                        let (data_type, nullable) = self
                            .data_type(&field.schema, within)
                            .map_err(|e| format!("field `{}`: {e}", field.name))?;
                        Ok(Field::new(&field.name, data_type, nullable))
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                within.pop();
                (DataType::Struct(Fields::from(fields)), false)
            }
            S::Union(union) => {
                let variants = union.variants();
                let nullable = variants.iter().any(|v| matches!(v, S::Null));
                let branches: Vec<&AvroSchema> =
                    variants.iter().filter(|v| !matches!(v, S::Null)).collect();
                match branches.as_slice() {
                    [] => (DataType::Null, true),
                    [single] => (self.data_type(single, within)?.0, nullable),
                    several => {
                        let mut seen = HashSet::new();
                        let fields = several
                            .iter()
                            .map(|branch| {
                                let name = self.branch_name(branch)?;
                                if !seen.insert(name.clone()) {
                                    return Err(format!(
                                        "the union has two branches named `{name}`"
                                    ));
                                }
                                let (data_type, _) = self.data_type(branch, within)?;
                                Ok(Field::new(name, data_type, true))
                            })
                            .collect::<Result<Vec<_>, String>>()?;
                        (DataType::Struct(Fields::from(fields)), nullable)
                    }
                }
            }
            S::Ref { .. } => unreachable!("resolved above"),
        })
    }

    /// The field name of a union branch: a named type's name, else its
    /// Avro type name.
    fn branch_name(&self, schema: &AvroSchema) -> Result<String, String> {
        use AvroSchema as S;
        Ok(match self.resolve(schema)? {
            S::Record(r) => r.name.name().to_string(),
            S::Enum(e) => e.name.name().to_string(),
            S::Fixed(f) => f.name.name().to_string(),
            S::Boolean => "boolean".into(),
            S::Int => "int".into(),
            S::Long => "long".into(),
            S::Float => "float".into(),
            S::Double => "double".into(),
            S::Bytes => "bytes".into(),
            S::String => "string".into(),
            S::Array(_) => "array".into(),
            S::Map(_) => "map".into(),
            S::Decimal(_) | S::BigDecimal => "decimal".into(),
            S::Uuid(_) => "uuid".into(),
            S::Date => "date".into(),
            S::TimeMillis => "time_millis".into(),
            S::TimeMicros => "time_micros".into(),
            S::TimestampMillis => "timestamp_millis".into(),
            S::TimestampMicros => "timestamp_micros".into(),
            S::TimestampNanos => "timestamp_nanos".into(),
            S::LocalTimestampMillis => "local_timestamp_millis".into(),
            S::LocalTimestampMicros => "local_timestamp_micros".into(),
            S::LocalTimestampNanos => "local_timestamp_nanos".into(),
            other => return Err(format!("a union branch of type {other:?} is not supported")),
        })
    }

    /// `value` (of type `schema`) as JSON; `path` ends at the field where
    /// the value stopped fitting the schema.
    fn value_json(
        &self,
        schema: &AvroSchema,
        value: &Value,
        path: &mut String,
    ) -> Result<Json, String> {
        use AvroSchema as S;
        use Value as V;
        let schema = self.resolve(schema)?;
        Ok(match (schema, value) {
            (S::Union(union), V::Union(index, inner)) => {
                let variants = union.variants();
                let branch = variants
                    .get(*index as usize)
                    .ok_or_else(|| format!("union branch {index} does not exist"))?;
                let non_null = variants.iter().filter(|v| !matches!(v, S::Null)).count();
                if matches!(**inner, V::Null) {
                    Json::Null
                } else if non_null == 1 {
                    self.value_json(branch, inner, path)?
                } else {
                    let name = self.branch_name(branch)?;
                    let json = self.value_json(branch, inner, path)?;
                    Json::Object([(name, json)].into_iter().collect())
                }
            }
            (_, V::Null) => Json::Null,
            (S::Record(record), V::Record(fields)) => {
                let mut object = serde_json::Map::with_capacity(fields.len());
                for (name, field_value) in fields {
                    let Some(field) = record.lookup.get(name).map(|i| &record.fields[*i]) else {
                        continue;
                    };
                    let mark = path.len();
                    push_path(path, name);
                    let json = self.value_json(&field.schema, field_value, path)?;
                    path.truncate(mark);
                    object.insert(name.clone(), json);
                }
                Json::Object(object)
            }
            (S::Array(array), V::Array(items)) => {
                let mut list = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let mark = path.len();
                    let _ = write!(path, "[{i}]");
                    list.push(self.value_json(&array.items, item, path)?);
                    path.truncate(mark);
                }
                Json::Array(list)
            }
            (S::Map(map), V::Map(entries)) => {
                let mut object = serde_json::Map::with_capacity(entries.len());
                for (key, entry) in entries {
                    let mark = path.len();
                    let _ = write!(path, "[{key:?}]");
                    object.insert(key.clone(), self.value_json(&map.types, entry, path)?);
                    path.truncate(mark);
                }
                Json::Object(object)
            }
            (S::Decimal(decimal), V::Decimal(number)) => {
                let bytes = <Vec<u8>>::try_from(number).map_err(|e| e.to_string())?;
                Json::String(decimal_text(&bytes, decimal.scale)?)
            }
            (_, V::BigDecimal(number)) => Json::String(number.to_string()),
            (_, V::Bytes(bytes) | V::Fixed(_, bytes)) => Json::String(hex(bytes)),
            (_, V::Boolean(b)) => Json::Bool(*b),
            (_, V::Int(n) | V::Date(n) | V::TimeMillis(n)) => Json::from(*n),
            (
                _,
                V::Long(n)
                | V::TimeMicros(n)
                | V::TimestampMillis(n)
                | V::TimestampMicros(n)
                | V::TimestampNanos(n)
                | V::LocalTimestampMillis(n)
                | V::LocalTimestampMicros(n)
                | V::LocalTimestampNanos(n),
            ) => Json::from(*n),
            (_, V::Float(x)) => float_json(f64::from(*x)),
            (_, V::Double(x)) => float_json(*x),
            (_, V::String(s) | V::Enum(_, s)) => Json::String(s.clone()),
            (_, V::Uuid(uuid)) => Json::String(uuid.to_string()),
            (schema, value) => {
                return Err(format!(
                    "a value {value:?} where the schema has {}",
                    schema_kind(schema)
                ));
            }
        })
    }
}

fn push_path(path: &mut String, name: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(name);
}

fn schema_kind(schema: &AvroSchema) -> String {
    serde_json::to_string(schema).unwrap_or_else(|_| format!("{schema:?}"))
}

/// Records every named type in `schema` by full name, for `Ref`s.
fn collect_named(schema: &AvroSchema, named: &mut HashMap<String, AvroSchema>) {
    use AvroSchema as S;
    match schema {
        S::Record(record) => {
            named.insert(record.name.fullname(None), schema.clone());
            for field in &record.fields {
                collect_named(&field.schema, named);
            }
        }
        S::Enum(e) => {
            named.insert(e.name.fullname(None), schema.clone());
        }
        S::Fixed(f) => {
            named.insert(f.name.fullname(None), schema.clone());
        }
        S::Array(array) => collect_named(&array.items, named),
        S::Map(map) => collect_named(&map.types, named),
        S::Union(union) => {
            for variant in union.variants() {
                collect_named(variant, named);
            }
        }
        _ => {}
    }
}

/// Bytes as arrow-json reads binary columns: hexadecimal text.
fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// An Avro decimal (big-endian two's complement, `scale` digits after the
/// point) as decimal text.
fn decimal_text(bytes: &[u8], scale: usize) -> Result<String, String> {
    if bytes.len() > 16 {
        return Err("a decimal wider than 16 bytes".into());
    }
    let fill = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        0xff
    } else {
        0
    };
    let mut wide = [fill; 16];
    wide[16 - bytes.len()..].copy_from_slice(bytes);
    let unscaled = i128::from_be_bytes(wide);
    let digits = unscaled.unsigned_abs().to_string();
    let sign = if unscaled < 0 { "-" } else { "" };
    if scale == 0 {
        return Ok(format!("{sign}{digits}"));
    }
    let digits = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = digits.split_at(digits.len() - scale);
    Ok(format!("{sign}{whole}.{fraction}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_keep_their_sign_and_scale() {
        assert_eq!(decimal_text(&[0x30, 0x39], 2).unwrap(), "123.45");
        assert_eq!(decimal_text(&[0xcf, 0xc7], 2).unwrap(), "-123.45");
        assert_eq!(decimal_text(&[0x05], 3).unwrap(), "0.005");
        assert_eq!(decimal_text(&[0x05], 0).unwrap(), "5");
    }

    #[test]
    fn recursive_records_are_refused() {
        let avro = AvroSchema::parse_str(
            r#"{"type": "record", "name": "Node", "fields": [
                {"name": "next", "type": ["null", "Node"]}]}"#,
        )
        .unwrap();
        let error = AvroShape::new(&avro).unwrap_err().to_string();
        assert!(error.contains("contains itself"), "{error}");
    }
}
