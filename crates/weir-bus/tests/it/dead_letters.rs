use std::collections::BTreeMap;

use serde_json::json;
use weir_bus::dead_letter::{self, describe};
use weir_bus::{ConsumerOptions, DeadLetterReason, SchemaType, StartFrom};

use crate::support::{Harness, TXN_SCHEMA, txn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_go_to_the_dead_letter_topic_and_good_ones_through() {
    let h = Harness::start_with(|config| {
        let mut config = config;
        config.max_record_bytes = 4096;
        config
    })
    .await;
    h.topic("payments", 1).await;
    let registered = h
        .bus
        .registry()
        .register("payments-value", SchemaType::Avro, TXN_SCHEMA)
        .await
        .unwrap();
    let publisher = h.bus.publisher("payments").unwrap();

    let good = |i| publisher.encode(&txn(i)).unwrap();
    let mut unknown_id = good(0);
    unknown_id[1..5].copy_from_slice(&(registered.schema.id + 1000).to_be_bytes());
    let missing = serde_json::to_vec(&json!({"user": "u", "amount": 1.0, "ts": 1})).unwrap();
    let wrong_type =
        serde_json::to_vec(&json!({"user": "u", "merchant": "m", "amount": "lots", "ts": 1}))
            .unwrap();
    let oversized = serde_json::to_vec(&json!({"pad": "x".repeat(5000)})).unwrap();
    let mut truncated = good(0);
    truncated.truncate(9);

    let bad: Vec<(&str, Vec<u8>, DeadLetterReason, Option<&str>)> = vec![
        (
            "bad-json",
            b"{\"user\": ".to_vec(),
            DeadLetterReason::BadJson,
            None,
        ),
        (
            "unknown-id",
            unknown_id,
            DeadLetterReason::UnknownSchemaId,
            None,
        ),
        (
            "missing",
            missing,
            DeadLetterReason::MissingField,
            Some("merchant"),
        ),
        (
            "wrong-type",
            wrong_type,
            DeadLetterReason::WrongType,
            Some("amount"),
        ),
        ("oversized", oversized, DeadLetterReason::Oversized, None),
        ("truncated", truncated, DeadLetterReason::BadAvro, None),
    ];
    // good, bad, good, bad, ... good
    let mut expected_good = 0;
    for (i, (key, payload, _, _)) in bad.iter().enumerate() {
        h.produce_raw("payments", Some("good"), &good(i)).await;
        expected_good += 1;
        h.produce_raw("payments", Some(key), payload).await;
    }
    h.produce_raw("payments", Some("good"), &good(99)).await;
    expected_good += 1;

    let mut consumer = h
        .bus
        .consumer(
            &["payments"],
            ConsumerOptions {
                start: StartFrom::Beginning,
                until_end: true,
                ..Default::default()
            },
        )
        .unwrap();
    let mut good_records = Vec::new();
    while let Some(record) = consumer.next().await.unwrap() {
        good_records.push(record);
    }
    consumer.settle_dead_letters().await.unwrap();
    assert_eq!(good_records.len(), expected_good);
    assert!(
        good_records
            .iter()
            .all(|r| r.key.as_deref() == Some(b"good".as_slice()))
    );
    let counts = consumer.dead_letters();
    assert_eq!(counts.total(), bad.len() as u64);
    let expected_counts: BTreeMap<_, _> =
        bad.iter().map(|(_, _, reason, _)| (*reason, 1)).collect();
    assert_eq!(counts.by_reason(), expected_counts);

    // The dead letters: unchanged payloads and keys, headers saying why and where.
    let mut reader = h
        .bus
        .consumer(
            &["weir.dlq.payments"],
            ConsumerOptions {
                start: StartFrom::Beginning,
                until_end: true,
                ..Default::default()
            },
        )
        .unwrap();
    let mut letters = Vec::new();
    while let Some(letter) = reader.next_raw().await.unwrap() {
        letters.push(letter);
    }
    assert_eq!(letters.len(), bad.len());
    for (letter, (key, payload, reason, field)) in letters.iter().zip(&bad) {
        assert_eq!(letter.key.as_deref(), Some(key.as_bytes()));
        assert_eq!(letter.payload.as_deref(), Some(payload.as_slice()));
        let headers: BTreeMap<String, String> = describe(&letter.headers).into_iter().collect();
        assert_eq!(headers[dead_letter::REASON], reason.as_str(), "{headers:?}");
        assert_eq!(headers[dead_letter::TOPIC], "payments");
        assert_eq!(headers[dead_letter::PARTITION], "0");
        assert_eq!(
            headers.get(dead_letter::FIELD).map(String::as_str),
            *field,
            "{headers:?}"
        );
        assert!(!headers[dead_letter::ERROR].is_empty());
    }
    // Offsets: bad records sit at odd offsets 1, 3, 5, ...
    let offsets: Vec<String> = letters
        .iter()
        .map(|l| {
            describe(&l.headers)
                .into_iter()
                .find(|(k, _)| k == dead_letter::OFFSET)
                .unwrap()
                .1
        })
        .collect();
    assert_eq!(offsets, ["1", "3", "5", "7", "9", "11"]);
}
