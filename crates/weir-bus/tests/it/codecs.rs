use std::collections::HashMap;

use serde_json::json;
use weir_bus::{SchemaType, Value, WireFormat};

use crate::support::{Harness, TXN_SCHEMA, txn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_round_trip_keeps_keys_and_partitions() {
    let h = Harness::start().await;
    h.topic("txns", 3).await;
    let registered = h
        .bus
        .registry()
        .register("txns-value", SchemaType::Avro, TXN_SCHEMA)
        .await
        .unwrap();
    let publisher = h.bus.publisher("txns").unwrap();
    assert_eq!(publisher.codec().schema().unwrap().id, registered.schema.id);
    let mut deliveries = Vec::new();
    for i in 0..300 {
        let value = txn(i);
        let key = value["user"].as_str().unwrap().to_string();
        let bytes = publisher.encode(&value).unwrap();
        assert_eq!(bytes[0], 0, "Confluent magic byte");
        assert_eq!(
            u32::from_be_bytes(bytes[1..5].try_into().unwrap()),
            registered.schema.id
        );
        deliveries.push((
            key.clone(),
            publisher.send(Some(key.as_bytes()), &bytes).await.unwrap(),
        ));
    }
    let mut partition_of_key = HashMap::new();
    for (key, delivery) in deliveries {
        let delivery = delivery.await.unwrap();
        // One key, one partition.
        assert_eq!(
            *partition_of_key.entry(key).or_insert(delivery.partition),
            delivery.partition
        );
    }

    // An explicit partition is honoured.
    let producer = h.bus.producer().unwrap();
    let bytes = publisher.encode(&txn(1000)).unwrap();
    let delivery = producer
        .send_and_wait(
            weir_bus::OutRecord::new("txns", &bytes)
                .key(b"pinned")
                .partition(2),
        )
        .await
        .unwrap();
    assert_eq!(delivery.partition, 2);

    let mut records = h.read_all("txns").await;
    let pinned = records
        .iter()
        .position(|r| r.key.as_deref() == Some(b"pinned".as_slice()))
        .unwrap();
    assert_eq!(records.remove(pinned).partition, 2);
    assert_eq!(records.len(), 300);
    let mut seen: Vec<_> = records
        .iter()
        .map(|r| {
            let value = r.value.to_json();
            let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
            assert_eq!(value["user"], json!(key), "key preserved");
            assert_eq!(partition_of_key[&key], r.partition, "partition preserved");
            assert!(matches!(r.value, Value::Avro(_)));
            value["amount"].as_f64().unwrap()
        })
        .collect();
    seen.sort_by(f64::total_cmp);
    let expected: Vec<f64> = (0..300).map(|i| i as f64 * 1.25).collect();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_round_trip_with_and_without_a_schema() {
    let h = Harness::start().await;
    h.topic("free", 2).await;
    let publisher = h.bus.publisher("free").unwrap();
    assert_eq!(publisher.codec().default_format(), WireFormat::Json);
    for i in 0..20 {
        let value = json!({"i": i, "nested": {"tags": ["a", i]}});
        let bytes = publisher.encode(&value).unwrap();
        publisher
            .send(Some(format!("k{i}").as_bytes()), &bytes)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut values: Vec<_> = h
        .read_all("free")
        .await
        .into_iter()
        .map(|r| {
            (
                String::from_utf8(r.key.unwrap()).unwrap(),
                r.value.to_json(),
            )
        })
        .collect();
    values.sort_by_key(|(_, v)| v["i"].as_i64());
    assert_eq!(values.len(), 20);
    assert_eq!(
        values[7],
        (
            "k7".to_string(),
            json!({"i": 7, "nested": {"tags": ["a", 7]}})
        )
    );

    // JSON on a topic with an Avro schema: checked and converted to Avro.
    h.topic("typed", 1).await;
    h.bus
        .registry()
        .register("typed-value", SchemaType::Avro, crate::support::TXN_SCHEMA)
        .await
        .unwrap();
    let publisher = h
        .bus
        .publisher("typed")
        .unwrap()
        .with_format(WireFormat::Json);
    let bytes = publisher.encode(&txn(3)).unwrap();
    assert_eq!(bytes[0], b'{');
    publisher.send(None, &bytes).await.unwrap().await.unwrap();
    let records = h.read_all("typed").await;
    assert_eq!(records.len(), 1);
    assert!(matches!(records[0].value, Value::Avro(_)));
    assert_eq!(records[0].value.to_json(), txn(3));

    // A JSON Schema topic validates JSON.
    h.topic("checked", 1).await;
    h.bus
        .registry()
        .register(
            "checked-value",
            SchemaType::Json,
            r#"{"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}"#,
        )
        .await
        .unwrap();
    let publisher = h.bus.publisher("checked").unwrap();
    assert!(publisher.encode(&json!({"id": 1})).is_ok());
    let error = publisher.encode(&json!({"id": "x"})).unwrap_err();
    assert_eq!(error.field.as_deref(), Some("id"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evolved_schema_reads_old_records() {
    let h = Harness::start().await;
    h.topic("evolving", 1).await;
    h.bus
        .registry()
        .register("evolving-value", SchemaType::Avro, TXN_SCHEMA)
        .await
        .unwrap();
    let old = h.bus.publisher("evolving").unwrap();
    let bytes = old.encode(&txn(1)).unwrap();
    old.send(None, &bytes).await.unwrap().await.unwrap();

    // Version 2 adds a field with a default: backward compatible.
    let v2 = TXN_SCHEMA.replace(
        r#"{"name": "amount", "type": "double"},"#,
        r#"{"name": "amount", "type": "double"}, {"name": "currency", "type": "string", "default": "EUR"},"#,
    );
    let registered = h
        .bus
        .registry()
        .register("evolving-value", SchemaType::Avro, &v2)
        .await
        .unwrap();
    assert_eq!(registered.version, 2);
    let records = h.read_all("evolving").await;
    assert_eq!(records[0].value.to_json()["currency"], json!("EUR"));
}
