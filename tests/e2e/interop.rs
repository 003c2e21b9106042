//! Records written by clients that are not ours, read by `weir`, and the
//! reverse: Confluent's Python client with its Avro serializers, pointed at
//! Weir's schema registry API.

use std::process::Command;

use serde_json::Value as Json;

use crate::support::{Platform, json_lines, python, repo, stderr};

fn confluent(platform: &Platform, args: &[&str]) -> std::process::Output {
    let output = Command::new(python())
        .arg(repo().join("tests/python/confluent_avro.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "confluent_avro.py {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    let _ = platform;
    output
}

#[test]
fn avro_from_confluent_python_is_read_by_weir_tail() {
    let platform = Platform::start();
    platform.run(&["topics", "create", "payments", "--partitions", "2"], b"");
    let schema = repo().join("schemas/card_transaction.avsc");
    let produced = confluent(
        &platform,
        &[
            "produce",
            &platform.kafka.to_string(),
            &platform.registry_url(),
            "payments",
            schema.to_str().unwrap(),
            "25",
        ],
    );
    let mut sent = json_lines(&produced);

    // The Python serializer registered the schema through Weir's API.
    let subjects = platform.run(&["schemas", "list"], b"");
    assert!(String::from_utf8_lossy(&subjects.stdout).contains("payments-value"));

    let tail = platform.run(&["tail", "payments", "--from-beginning"], b"");
    let mut read = json_lines(&tail);
    let by_id = |v: &Json| v["transaction_id"].as_str().unwrap().to_string();
    sent.sort_by_key(by_id);
    read.sort_by_key(by_id);
    assert_eq!(
        read, sent,
        "weir tail decodes every Confluent-framed record"
    );
}

#[test]
fn avro_published_by_weir_is_read_by_confluent_python() {
    let platform = Platform::start();
    let schema = repo().join("schemas/card_transaction.avsc");
    let input: String = (0..30)
        .map(|i| {
            format!(
                r#"{{"transaction_id": "w{i:03}", "user_id": "u{}", "merchant_id": "m1", "amount": {}.25, "event_time": {}}}"#,
                i % 4,
                i,
                1_700_000_000_000_i64 + i
            ) + "\n"
        })
        .collect();
    platform.run(
        &[
            "publish",
            "weir-made",
            "--schema",
            schema.to_str().unwrap(),
            "--key",
            "user_id",
        ],
        input.as_bytes(),
    );
    let consumed = confluent(
        &platform,
        &[
            "consume",
            &platform.kafka.to_string(),
            &platform.registry_url(),
            "weir-made",
            "30",
        ],
    );
    let mut read = json_lines(&consumed);
    read.sort_by_key(|v| v["transaction_id"].as_str().unwrap().to_string());
    assert_eq!(read.len(), 30);
    assert_eq!(read[7]["transaction_id"], "w007");
    assert_eq!(read[7]["amount"], 7.25);
    // The schema's default filled the field the input left out.
    assert_eq!(read[7]["currency"], "EUR");
}

#[test]
fn a_stock_python_producer_creates_a_topic_by_producing_to_it() {
    let platform = Platform::start();
    let output = Command::new(python())
        .arg(repo().join("tests/python/confluent_plain.py"))
        .args([&platform.kafka.to_string(), "made-by-python", "20"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let result = &json_lines(&output)[0];
    assert_eq!(result["failed"], serde_json::json!([]), "{result}");
    let sent: Vec<String> = (0..20).map(|i| format!("v{i:03}")).collect();
    let strings = |v: &Json| -> Vec<String> {
        let mut values: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        values.sort();
        values
    };
    assert_eq!(strings(&result["delivered"]), sent);
    assert_eq!(strings(&result["consumed"]), sent);
    // Made as Kafka makes it: the broker's default partitions (one).
    let described = platform.run(&["topics", "describe", "made-by-python"], b"");
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(text.contains("partitions 1\n"), "{text}");
    assert!(text.contains("records    20\n"), "{text}");
}
