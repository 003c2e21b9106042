//! Kafka records into Arrow batches with the source's schema.
//!
//! JSON records go through arrow-json's tape decoder, all records of a poll
//! at once; when that fails, the records are decoded one by one so that only
//! the bad ones are rejected. Confluent-framed Avro records are decoded with
//! the bus's codec (writer schema by id, resolved to the topic's schema) and
//! fed to the same decoder. A record that fails is returned with its reason
//! for the dead-letter topic.

use std::sync::Arc;

use apache_avro::Schema as AvroSchema;
use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::json::ReaderBuilder;
use arrow::json::reader::Decoder;
use weir_bus::framing::MAGIC_BYTE;
use weir_bus::{DeadLetterReason, DecodeError, TopicCodec};

use crate::DataflowError;

/// The Arrow schema of records described by an Avro record schema.
/// Nullable unions (`["null", T]`) become nullable `T`; nested records,
/// arrays and maps are not supported in streams yet.
pub fn arrow_schema(avro: &AvroSchema) -> Result<SchemaRef, DataflowError> {
    let AvroSchema::Record(record) = avro else {
        return Err(DataflowError::Plan(
            "a stream's schema must be an Avro record".into(),
        ));
    };
    let fields = record
        .fields
        .iter()
        .map(|field| {
            let (data_type, nullable) = arrow_type(&field.schema).ok_or_else(|| {
                DataflowError::Plan(format!(
                    "field `{}` has an Avro type streams do not support yet: {:?}",
                    field.name, field.schema
                ))
            })?;
            Ok(Field::new(&field.name, data_type, nullable))
        })
        .collect::<Result<Vec<_>, DataflowError>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

fn arrow_type(schema: &AvroSchema) -> Option<(DataType, bool)> {
    use AvroSchema as S;
    Some(match schema {
        S::Boolean => (DataType::Boolean, false),
        S::Int => (DataType::Int32, false),
        S::Long => (DataType::Int64, false),
        S::Float => (DataType::Float32, false),
        S::Double => (DataType::Float64, false),
        S::String | S::Enum(_) | S::Uuid(_) => (DataType::Utf8, false),
        S::Bytes => (DataType::Binary, false),
        S::Date => (DataType::Date32, false),
        S::TimestampMillis | S::LocalTimestampMillis => {
            (DataType::Timestamp(TimeUnit::Millisecond, None), false)
        }
        S::TimestampMicros | S::LocalTimestampMicros => {
            (DataType::Timestamp(TimeUnit::Microsecond, None), false)
        }
        S::Union(union) => {
            let variants = union.variants();
            let non_null: Vec<&AvroSchema> =
                variants.iter().filter(|v| !matches!(v, S::Null)).collect();
            match non_null.as_slice() {
                [single] if non_null.len() < variants.len() => (arrow_type(single)?.0, true),
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// Decodes the records of one poll.
pub struct RecordDecoder {
    schema: SchemaRef,
    codec: Option<TopicCodec>,
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
        Self { schema, codec }
    }

    /// The schema of decoded batches.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn decoder(&self, rows: usize) -> Result<Decoder, DataflowError> {
        ReaderBuilder::new(self.schema.clone())
            .with_batch_size(rows.max(1))
            .build_decoder()
            .map_err(|e| DataflowError::Plan(e.to_string()))
    }

    /// Decodes `payloads` (a `None` payload is a tombstone and is rejected).
    pub fn decode(&self, payloads: &[Option<&[u8]>]) -> Result<Decoded, DataflowError> {
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
        Ok(std::borrow::Cow::Owned(
            serde_json::to_vec(&value.to_json()).expect("JSON serializes"),
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
    let field = message
        .split('\'')
        .nth(1)
        .filter(|f| !f.is_empty())
        .map(str::to_string);
    let reason = if message.contains("missing") || message.contains("non-nullable") {
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array};

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
