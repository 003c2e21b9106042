//! Nested Avro data into Arrow: every field of every record type of the
//! platform's own schemas (`inference_log.avsc`, each branch of
//! `meta_event.avsc`), filled with values generated from the schema,
//! written in the Confluent wire format and decoded into Arrow. Each
//! decoded row, written back out by arrow-json, must hold exactly what the
//! Avro value held.

use std::collections::HashMap;

use apache_avro::Schema as AvroSchema;
use apache_avro::types::Value;
use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use serde_json::Value as Json;
use weir_bus::avro::avro_to_json;
use weir_bus::{DeadLetterReason, SchemaType};
use weir_dataflow::decode::{RecordDecoder, arrow_schema};
use weir_test_support::Harness;

/// A value of type `schema`, different for each `seed`, with every
/// optional part present.
fn generate(schema: &AvroSchema, named: &HashMap<String, AvroSchema>, seed: &mut i64) -> Value {
    use AvroSchema as S;
    *seed += 1;
    let n = *seed;
    match schema {
        S::Ref { name } => generate(&named[&name.fullname(None)], named, seed),
        S::Null => Value::Null,
        S::Boolean => Value::Boolean(n % 2 == 0),
        S::Int => Value::Int(n as i32),
        S::Long => Value::Long(n * 1_000_003),
        S::Float => Value::Float(n as f32 + 0.5),
        S::Double => Value::Double(n as f64 / 4.0),
        S::String => Value::String(format!("s{n}")),
        S::TimestampMillis => Value::TimestampMillis(1_700_000_000_000 + n),
        S::Enum(e) => {
            let i = n as usize % e.symbols.len();
            Value::Enum(i as u32, e.symbols[i].clone())
        }
        S::Array(array) => Value::Array(
            (0..2)
                .map(|_| generate(&array.items, named, seed))
                .collect(),
        ),
        S::Map(map) => Value::Map(
            (0..2)
                .map(|k| (format!("k{n}_{k}"), generate(&map.types, named, seed)))
                .collect(),
        ),
        S::Record(record) => Value::Record(
            record
                .fields
                .iter()
                .map(|f| (f.name.clone(), generate(&f.schema, named, seed)))
                .collect(),
        ),
        S::Union(union) => {
            let (i, branch) = union
                .variants()
                .iter()
                .enumerate()
                .find(|(_, v)| !matches!(v, S::Null))
                .expect("a union with a value");
            Value::Union(i as u32, Box::new(generate(branch, named, seed)))
        }
        other => panic!("no generator for {other:?}"),
    }
}

fn collect_named(schema: &AvroSchema, named: &mut HashMap<String, AvroSchema>) {
    use AvroSchema as S;
    match schema {
        S::Record(r) => {
            named.insert(r.name.fullname(None), schema.clone());
            r.fields
                .iter()
                .for_each(|f| collect_named(&f.schema, named));
        }
        S::Enum(e) => {
            named.insert(e.name.fullname(None), schema.clone());
        }
        S::Array(a) => collect_named(&a.items, named),
        S::Map(m) => collect_named(&m.types, named),
        S::Union(u) => u.variants().iter().for_each(|v| collect_named(v, named)),
        _ => {}
    }
}

/// `json` without its null members, as arrow-json writes rows.
fn without_nulls(json: Json) -> Json {
    match json {
        Json::Object(members) => Json::Object(
            members
                .into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Json::Array(items) => Json::Array(items.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

/// The rows of `batch` as arrow-json writes them, timestamps as numbers.
fn written(batch: &RecordBatch) -> Vec<Json> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Timestamp(..) => arrow::compute::cast(c, &DataType::Int64).unwrap(),
            _ => c.clone(),
        })
        .collect();
    let fields: Vec<_> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Timestamp(..) => f.as_ref().clone().with_data_type(DataType::Int64).into(),
            _ => f.clone(),
        })
        .collect();
    let batch = RecordBatch::try_new(
        std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
        columns,
    )
    .unwrap();
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
    serde_json::from_slice(&writer.into_inner()).unwrap()
}

/// Registers `text` for `topic`, writes `values` with it and decodes them;
/// also says whether they decoded many at a time, straight into Arrow.
async fn round_trip(h: &Harness, topic: &str, text: &str, values: &[Value]) -> (Vec<Json>, bool) {
    h.topic(topic, 1).await;
    h.bus
        .registry()
        .register(&format!("{topic}-value"), SchemaType::Avro, text)
        .await
        .unwrap();
    let codec = h.bus.codec(topic);
    let schema = arrow_schema(&AvroSchema::parse_str(text).unwrap()).unwrap();
    let payloads: Vec<Vec<u8>> = values
        .iter()
        .map(|v| codec.encode_avro(v).unwrap())
        .collect();
    for payload in &payloads {
        h.produce_raw(topic, None, payload).await;
    }
    let decoder = RecordDecoder::new(schema, Some(codec));
    let records: Vec<Option<&[u8]>> = payloads.iter().map(|p| Some(p.as_slice())).collect();
    let decoded = decoder.decode(&records).unwrap();
    assert!(decoded.rejected.is_empty(), "{:?}", decoded.rejected);
    (written(&decoded.batch), decoder.decodes_avro_in_batches())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_of_the_request_log_decodes_to_what_it_holds() {
    let h = Harness::start().await;
    let text = include_str!("../../../../schemas/inference_log.avsc");
    let schema = AvroSchema::parse_str(text).unwrap();
    let mut named = HashMap::new();
    collect_named(&schema, &mut named);
    let mut seed = 0;
    let values: Vec<Value> = (0..5)
        .map(|_| generate(&schema, &named, &mut seed))
        .collect();
    let (rows, in_batches) = round_trip(&h, "log", text, &values).await;
    assert!(in_batches, "the request log decodes with arrow-avro");
    assert_eq!(rows.len(), values.len());
    for (row, value) in rows.into_iter().zip(&values) {
        assert_eq!(row, without_nulls(avro_to_json(value)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_branch_of_the_metadata_log_decodes_into_its_own_column() {
    let h = Harness::start().await;
    let text = include_str!("../../../../schemas/meta_event.avsc");
    let schema = AvroSchema::parse_str(text).unwrap();
    let AvroSchema::Union(union) = &schema else {
        panic!("meta_event.avsc is a union")
    };
    let mut named = HashMap::new();
    collect_named(&schema, &mut named);
    let mut seed = 0;
    let mut values = Vec::new();
    let mut branches = Vec::new();
    for (i, branch) in union.variants().iter().enumerate() {
        let AvroSchema::Record(record) = branch else {
            panic!("every branch is a record")
        };
        branches.push(record.name.name().to_string());
        values.push(Value::Union(
            i as u32,
            Box::new(generate(branch, &named, &mut seed)),
        ));
    }
    assert!(branches.len() > 20, "{branches:?}");
    // A union of records: arrow-avro would make an Arrow union of it, so
    // its records decode one at a time into a struct per branch.
    let (rows, in_batches) = round_trip(&h, "meta", text, &values).await;
    assert!(!in_batches);
    assert_eq!(rows.len(), values.len());
    for ((row, value), branch) in rows.into_iter().zip(&values).zip(&branches) {
        let mut expected = serde_json::Map::new();
        expected.insert(branch.clone(), without_nulls(avro_to_json(value)));
        assert_eq!(row, Json::Object(expected), "{branch}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_avro_records_in_a_batch_are_singled_out_with_their_reasons() {
    let h = Harness::start().await;
    let text = include_str!("../../../../schemas/inference_log.avsc");
    let schema = AvroSchema::parse_str(text).unwrap();
    let mut named = HashMap::new();
    collect_named(&schema, &mut named);
    let mut seed = 0;
    let values: Vec<Value> = (0..4)
        .map(|_| generate(&schema, &named, &mut seed))
        .collect();
    h.topic("log", 1).await;
    h.bus
        .registry()
        .register("log-value", SchemaType::Avro, text)
        .await
        .unwrap();
    let codec = h.bus.codec("log");
    let good: Vec<Vec<u8>> = values
        .iter()
        .map(|v| codec.encode_avro(v).unwrap())
        .collect();
    let truncated = good[1][..good[1].len() / 2].to_vec();
    let mut unknown_id = good[2].clone();
    unknown_id[1..5].copy_from_slice(&9999_u32.to_be_bytes());
    let payloads: Vec<Option<&[u8]>> = vec![
        Some(&good[0]),
        Some(&truncated),
        Some(&good[1]),
        Some(&unknown_id),
        Some(&good[2]),
        Some(br#"{"request_id": "json"}"#),
        Some(&good[3]),
    ];
    let decoder = RecordDecoder::new(arrow_schema(&schema).unwrap(), Some(codec));
    assert!(decoder.decodes_avro_in_batches());
    let decoded = decoder.decode(&payloads).unwrap();
    assert_eq!(decoded.rows, vec![0, 2, 4, 6]);
    let reasons: Vec<(usize, DeadLetterReason)> = decoded
        .rejected
        .iter()
        .map(|(i, e)| (*i, e.reason))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (1, DeadLetterReason::BadAvro),
            (3, DeadLetterReason::UnknownSchemaId),
            (5, DeadLetterReason::MissingField),
        ]
    );
    let rows = written(&decoded.batch);
    for (row, value) in rows.iter().zip(&values) {
        assert_eq!(*row, without_nulls(avro_to_json(value)));
    }
    // The good ones alone go at once again, and give the same rows.
    let alone: Vec<Option<&[u8]>> = good.iter().map(|g| Some(g.as_slice())).collect();
    assert_eq!(written(&decoder.decode(&alone).unwrap().batch), rows);
}
