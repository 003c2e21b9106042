//! Kafka records into Arrow batches with the source's schema.
//!
//! JSON records go through arrow-json's tape decoder, all records of a poll
//! at once. Confluent-framed Avro records go through arrow-avro's decoder,
//! all at once as well (`avro_batch.rs`: writer schema by id, resolved to the
//! topic's schema). When that fails, the records are decoded one by one so
//! that only the bad ones are rejected: Avro with the bus's codec, written
//! as JSON for the tape decoder. A record that fails is returned with its
//! reason for the dead-letter topic.

use apache_avro::Schema as AvroSchema;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::json::ReaderBuilder;
use arrow::json::reader::Decoder;
use weir_bus::framing::MAGIC_BYTE;
use weir_bus::registry::SchemaKind;
use weir_bus::{DeadLetterReason, DecodeError, TopicCodec};

use crate::DataflowError;
use crate::avro_arrow::AvroShape;
use crate::avro_batch::AvroBatchDecoder;

/// The Arrow schema of records described by an Avro schema (a record, or
/// a union of records); see [`AvroShape`] for how each type maps.
pub fn arrow_schema(avro: &AvroSchema) -> Result<SchemaRef, DataflowError> {
    Ok(AvroShape::new(avro)?.arrow_schema())
}

/// Decodes the records of one poll.
pub struct RecordDecoder {
    schema: SchemaRef,
    codec: Option<TopicCodec>,
    /// The topic's Avro schema, which decoded Avro values follow.
    shape: Option<std::sync::Arc<AvroShape>>,
    /// Avro records many at a time, when the schema allows.
    avro_batch: Option<Box<std::sync::Mutex<AvroBatchDecoder>>>,
}

/// The outcome of decoding a poll: a batch of the good records, with the
/// index (in the input) of each of its rows, and the bad records' indices
/// with their reasons.
pub struct Decoded {
    /// Rows of the records that decoded.
    pub batch: RecordBatch,
    /// For each row of `batch`, the index of its record in the input.
    pub rows: Vec<usize>,
    /// Records that did not decode.
    pub rejected: Vec<(usize, DecodeError)>,
}

impl RecordDecoder {
    /// A decoder producing `schema`; `codec` decodes Avro frames.
    pub fn new(schema: SchemaRef, codec: Option<TopicCodec>) -> Self {
        let shape = codec
            .as_ref()
            .and_then(|codec| codec.schema())
            .and_then(|registered| match &registered.kind {
                SchemaKind::Avro(avro) => AvroShape::new(avro.schema).ok().map(std::sync::Arc::new),
                SchemaKind::Json(_) => None,
            });
        let avro_batch = codec
            .as_ref()
            .and_then(|codec| AvroBatchDecoder::new(codec, schema.clone()))
            .map(|decoder| Box::new(std::sync::Mutex::new(decoder)));
        Self {
            schema,
            codec,
            shape,
            avro_batch,
        }
    }

    /// The schema of decoded batches.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Whether Avro records decode straight into Arrow, many at a time
    /// (the topic has an Avro schema whose columns arrow-avro gives).
    pub fn decodes_avro_in_batches(&self) -> bool {
        self.avro_batch.is_some()
    }

    /// Every payload an Avro frame, decoded at once; `None` when any is
    /// not one or does not decode.
    fn avro_at_once(&self, payloads: &[Option<&[u8]>]) -> Option<Decoded> {
        let batch_decoder = self.avro_batch.as_ref()?;
        let frames = payloads
            .iter()
            .map(|p| p.filter(|bytes| bytes.first() == Some(&MAGIC_BYTE)))
            .collect::<Option<Vec<&[u8]>>>()?;
        let batch = batch_decoder
            .lock()
            .expect("the decoder's lock is never poisoned")
            .decode(&frames)?;
        Some(Decoded {
            batch,
            rows: (0..payloads.len()).collect(),
            rejected: Vec::new(),
        })
    }

    fn decoder(&self, rows: usize) -> Result<Decoder, DataflowError> {
        ReaderBuilder::new(self.schema.clone())
            .with_batch_size(rows.max(1))
            .build_decoder()
            .map_err(|e| DataflowError::Plan(e.to_string()))
    }

    /// Decodes `payloads` (a `None` payload is a tombstone and is rejected).
    pub fn decode(&self, payloads: &[Option<&[u8]>]) -> Result<Decoded, DataflowError> {
        if let Some(decoded) = self.avro_at_once(payloads) {
            return Ok(decoded);
        }
        // Avro frames become JSON text first; everything else is JSON text.
        let mut texts: Vec<Result<std::borrow::Cow<'_, [u8]>, DecodeError>> =
            Vec::with_capacity(payloads.len());
        for payload in payloads {
            texts.push(match payload {
                None => Err(DecodeError::new(
                    DeadLetterReason::BadJson,
                    "a record without a value",
                )),
                Some(bytes) if bytes.first() == Some(&MAGIC_BYTE) => self.avro_to_json(bytes),
                Some(bytes) => Ok(std::borrow::Cow::Borrowed(*bytes)),
            });
        }
        let good: Vec<usize> = (0..texts.len()).filter(|i| texts[*i].is_ok()).collect();
        let mut rejected: Vec<(usize, DecodeError)> = texts
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.as_ref().err().map(|e| (i, e.clone())))
            .collect();

        // Fast path: every good record in one decoder run.
        let mut decoder = self.decoder(good.len())?;
        let fast = good
            .iter()
            .try_for_each(|i| feed(&mut decoder, texts[*i].as_ref().expect("good")))
            .ok()
            .and_then(|()| decoder.flush().ok())
            .map(|batch| batch.unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone())));
        if let Some(batch) = fast
            && batch.num_rows() == good.len()
        {
            rejected.sort_by_key(|(i, _)| *i);
            return Ok(Decoded {
                batch,
                rows: good,
                rejected,
            });
        }

        // Slow path: one record at a time, to find the bad ones.
        let mut batches = Vec::new();
        let mut rows = Vec::new();
        for i in good {
            let text = texts[i].as_ref().expect("good");
            let mut decoder = self.decoder(1)?;
            let outcome = feed(&mut decoder, text).and_then(|()| {
                decoder
                    .flush()
                    .map_err(|e| e.to_string())
                    .and_then(|b| b.ok_or_else(|| "no record".to_string()))
            });
            match outcome {
                Ok(batch) if batch.num_rows() == 1 => {
                    batches.push(batch);
                    rows.push(i);
                }
                Ok(_) => rejected.push((
                    i,
                    DecodeError::new(DeadLetterReason::BadJson, "not exactly one JSON record"),
                )),
                Err(message) => rejected.push((i, classify(&message))),
            }
        }
        rejected.sort_by_key(|(i, _)| *i);
        let batch = arrow::compute::concat_batches(&self.schema, &batches)
            .map_err(|e| DataflowError::Execution(e.to_string()))?;
        Ok(Decoded {
            batch,
            rows,
            rejected,
        })
    }

    fn avro_to_json<'a>(&self, bytes: &[u8]) -> Result<std::borrow::Cow<'a, [u8]>, DecodeError> {
        let codec = self.codec.as_ref().ok_or_else(|| {
            DecodeError::new(
                DeadLetterReason::UnknownSchemaId,
                "an Avro record on a topic the job reads as JSON",
            )
        })?;
        let value = codec.decode_cached(bytes)?;
        let json = match (&self.shape, &value) {
            (Some(shape), weir_bus::Value::Avro(avro)) => shape.to_json(avro)?,
            _ => value.to_json(),
        };
        Ok(std::borrow::Cow::Owned(
            serde_json::to_vec(&json).expect("JSON serializes"),
        ))
    }
}

fn feed(decoder: &mut Decoder, text: &[u8]) -> Result<(), String> {
    let mut rest = text;
    while !rest.is_empty() {
        let read = decoder.decode(rest).map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("the JSON decoder made no progress".into());
        }
        rest = &rest[read..];
    }
    // Records are separated so that two numbers never run together.
    decoder.decode(b"\n").map_err(|e| e.to_string())?;
    Ok(())
}

/// The dead-letter reason of an arrow-json error message.
fn classify(message: &str) -> DecodeError {
    let field = field_path(message);
    // A field left out reads as null, which a non-nullable struct, list or
    // map column refuses ("expected { got null").
    let reason = if message.contains("missing")
        || message.contains("non-nullable")
        || message.contains("got null")
    {
        DeadLetterReason::MissingField
    } else if message.contains("expected")
        || message.contains("whilst decoding")
        || message.contains("Error while parsing")
    {
        if field.is_some() && !message.contains("Encountered unexpected") {
            DeadLetterReason::WrongType
        } else {
            DeadLetterReason::BadJson
        }
    } else {
        DeadLetterReason::BadJson
    };
    DecodeError {
        reason,
        field,
        message: message.to_string(),
    }
}

/// The path of the field an arrow-json error is about (`inputs.shape`):
/// the fields it was decoding, outermost first, then a missing child's.
fn field_path(message: &str) -> Option<String> {
    const DECODING: &str = "whilst decoding field '";
    const MISSING: &str = "non-nullable StructArray child: Field { \"";
    let mut path: Vec<&str> = Vec::new();
    let mut rest = message;
    while let Some(at) = rest.find(DECODING) {
        rest = &rest[at + DECODING.len()..];
        let end = rest.find('\'').unwrap_or(rest.len());
        path.push(&rest[..end]);
        rest = &rest[end..];
    }
    if let Some(at) = rest.find(MISSING) {
        let name = &rest[at + MISSING.len()..];
        path.push(&name[..name.find('"').unwrap_or(name.len())]);
    }
    if path.is_empty() {
        if message.contains("whilst parsing") {
            return None; // not JSON: the quote is a character, not a field
        }
        // Other messages quote the field they are about, if any.
        return message
            .split('\'')
            .nth(1)
            .filter(|f| !f.is_empty())
            .map(str::to_string);
    }
    Some(path.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("amount", DataType::Float64, false),
            Field::new("event_time", DataType::Int64, false),
            Field::new("note", DataType::Utf8, true),
        ]))
    }

    #[test]
    fn good_json_decodes_in_one_go() {
        let decoder = RecordDecoder::new(schema(), None);
        let records: Vec<&[u8]> = vec![
            br#"{"user_id": "u1", "amount": 2.5, "event_time": 10}"#,
            br#"{"user_id": "u2", "amount": 3, "event_time": 11, "note": "x"}"#,
        ];
        let payloads: Vec<Option<&[u8]>> = records.into_iter().map(Some).collect();
        let decoded = decoder.decode(&payloads).unwrap();
        assert_eq!(decoded.batch.num_rows(), 2);
        assert_eq!(decoded.rows, vec![0, 1]);
        assert!(decoded.rejected.is_empty());
        let amounts = decoded
            .batch
            .column(1)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(amounts.value(1), 3.0);
    }

    #[test]
    fn bad_records_are_singled_out() {
        let decoder = RecordDecoder::new(schema(), None);
        let records: Vec<Option<&[u8]>> = vec![
            Some(br#"{"user_id": "u1", "amount": 2.5, "event_time": 10}"#),
            Some(br#"{"user_id": "u1", "amount": "#),
            Some(br#"{"user_id": "u3", "event_time": 12}"#),
            None,
            Some(br#"{"user_id": "u4", "amount": 1, "event_time": 13}"#),
        ];
        let decoded = decoder.decode(&records).unwrap();
        assert_eq!(decoded.rows, vec![0, 4]);
        let times = decoded
            .batch
            .column(2)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(times.values(), &[10, 13]);
        let reasons: Vec<(usize, DeadLetterReason)> = decoded
            .rejected
            .iter()
            .map(|(i, e)| (*i, e.reason))
            .collect();
        assert_eq!(reasons[0].0, 1);
        assert_eq!(reasons[1], (2, DeadLetterReason::MissingField));
        assert_eq!(reasons[2].0, 3);
    }

    #[test]
    fn a_nested_violation_names_its_field() {
        let field = |name: &str, kind: &str| {
            let (t, nullable) = crate::column_type::parse(kind).unwrap();
            Field::new(name, t, nullable)
        };
        let schema = Arc::new(Schema::new(vec![
            field("id", "string"),
            field(
                "inputs",
                "map<struct<shape: list<long>, numbers: list<double?>>>",
            ),
            field("user", "struct<name: string, age: int?>?"),
        ]));
        let decoder = RecordDecoder::new(schema, None);
        let records: Vec<Option<&[u8]>> = vec![
            Some(br#"{"id": "a", "inputs": {"x": {"shape": [1], "numbers": [NaN]}}}"#),
            Some(br#"{"id": "b", "inputs": {"x": {"shape": [1], "numbers": ["NaN", null]}}, "user": {"name": "ada"}}"#),
            Some(br#"{"id": "c", "inputs": {"x": {"shape": "one", "numbers": []}}}"#),
            Some(br#"{"id": "d", "inputs": {}, "user": {"age": 3}}"#),
        ];
        let decoded = decoder.decode(&records).unwrap();
        assert_eq!(decoded.rows, vec![1]);
        let rejected: Vec<(usize, DeadLetterReason, Option<&str>)> = decoded
            .rejected
            .iter()
            .map(|(i, e)| (*i, e.reason, e.field.as_deref()))
            .collect();
        assert_eq!(rejected[0], (0, DeadLetterReason::BadJson, None)); // NaN is not JSON
        assert_eq!(
            rejected[1],
            (2, DeadLetterReason::WrongType, Some("inputs.shape"))
        );
        assert_eq!(
            rejected[2],
            (3, DeadLetterReason::MissingField, Some("user.name"))
        );
    }

    #[test]
    fn avro_schemas_become_arrow_schemas() {
        let avro =
            AvroSchema::parse_str(include_str!("../../../schemas/card_transaction.avsc")).unwrap();
        let schema = arrow_schema(&avro).unwrap();
        assert_eq!(schema.field(3).data_type(), &DataType::Float64);
        assert_eq!(
            schema.field(5).data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, None)
        );
    }
}
