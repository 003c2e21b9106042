//! The `weir` command line: publish, tail, topics, schemas.

use serde_json::json;

use crate::support::{Platform, json_lines, repo, stderr};

#[test]
fn publish_reports_bad_lines_and_publishes_the_rest() {
    let platform = Platform::start();
    let schema = repo().join("schemas/card_transaction.avsc");
    let good = |i: i64| {
        format!(
            r#"{{"transaction_id": "t{i}", "user_id": "u1", "merchant_id": "m1", "amount": 2.5, "event_time": {i}}}"#
        )
    };
    let input = [
        good(1),
        good(2),
        r#"{"transaction_id": "t3", "user_id": "u1""#.to_string(), // line 3: not JSON
        good(4),
        r#"{"transaction_id": "t5", "user_id": "u1", "merchant_id": "m1", "amount": "x", "event_time": 5}"#
            .to_string(), // line 5: wrong type
        String::new(),
        good(7),
    ]
    .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("txns.jsonl");
    std::fs::write(&file, &input).unwrap();
    let file = file.to_str().unwrap();

    // --strict: nothing is published, every bad line is named.
    let strict = platform.run_unchecked(
        &[
            "publish",
            "txns",
            file,
            "--schema",
            schema.to_str().unwrap(),
            "--strict",
        ],
        b"",
    );
    assert!(!strict.status.success());
    let message = stderr(&strict);
    assert!(message.contains(&format!("{file}:3:")), "{message}");
    assert!(
        message.contains(&format!("{file}:5: wrong-type at `amount`")),
        "{message}"
    );
    assert!(message.contains("nothing published"), "{message}");
    let tail = platform.run(&["tail", "txns", "--from-beginning"], b"");
    assert!(json_lines(&tail).is_empty());

    // Default: good lines published, bad ones reported and dead-lettered.
    let published = platform.run(&["publish", "txns", file], b"");
    let message = stderr(&published);
    assert!(message.contains("published 4 records"), "{message}");
    assert!(message.contains(&format!("{file}:3:")), "{message}");
    assert!(
        message.contains("2 bad line(s) sent to weir.dlq.txns"),
        "{message}"
    );
    let values = json_lines(&platform.run(&["tail", "txns", "--from-beginning"], b""));
    let mut ids: Vec<_> = values.iter().map(|v| v["transaction_id"].clone()).collect();
    ids.sort_by_key(|v| v.to_string());
    assert_eq!(ids, [json!("t1"), json!("t2"), json!("t4"), json!("t7")]);

    let letters = json_lines(&platform.run(&["tail", "weir.dlq.txns", "--from-beginning"], b""));
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["dead_letter"]["reason"], "bad-json");
    assert_eq!(letters[0]["dead_letter"]["offset"], "3", "the line number");
    assert_eq!(letters[1]["dead_letter"]["reason"], "wrong-type");
    assert_eq!(letters[1]["dead_letter"]["field"], "amount");
    assert_eq!(
        letters[1]["payload"].as_str().unwrap(),
        input.lines().nth(4).unwrap(),
        "the line, unchanged"
    );
}

#[test]
fn csv_is_typed_by_the_schema_and_keys_are_kept() {
    let platform = Platform::start();
    let schema = repo().join("schemas/card_transaction.avsc");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("txns.csv");
    std::fs::write(
        &file,
        "transaction_id,user_id,merchant_id,amount,currency,event_time\n\
         c1,u7,m2,12.5,USD,1700000000000\n\
         c2,u8,m3,3,EUR,1700000000001\n",
    )
    .unwrap();
    platform.run(
        &[
            "publish",
            "csv-txns",
            file.to_str().unwrap(),
            "--schema",
            schema.to_str().unwrap(),
            "--key",
            "user_id",
            "--partitions",
            "1",
        ],
        b"",
    );
    let records =
        json_lines(&platform.run(&["tail", "csv-txns", "--from-beginning", "--meta"], b""));
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["key"], "u7");
    assert_eq!(records[0]["offset"], 0);
    assert_eq!(
        records[1]["value"],
        json!({"transaction_id": "c2", "user_id": "u8", "merchant_id": "m3", "amount": 3.0,
               "currency": "EUR", "event_time": 1_700_000_000_001_i64})
    );
    // Default tail: the last records only.
    let last = json_lines(&platform.run(&["tail", "csv-txns", "-n", "1"], b""));
    assert_eq!(last.len(), 1);
    assert_eq!(last[0]["transaction_id"], "c2");
}

#[test]
fn topics_and_schemas_commands() {
    let platform = Platform::start();
    platform.run(
        &[
            "topics",
            "create",
            "events",
            "-p",
            "4",
            "--config",
            "cleanup.policy=compact",
        ],
        b"",
    );
    let listed = String::from_utf8(platform.run(&["topics"], b"").stdout).unwrap();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("events") && l.ends_with('4')),
        "{listed}"
    );
    let described =
        String::from_utf8(platform.run(&["topics", "describe", "events"], b"").stdout).unwrap();
    assert!(described.contains("partitions 4"), "{described}");
    assert!(described.contains("cleanup.policy=compact"), "{described}");

    let again = platform.run_unchecked(&["topics", "create", "events"], b"");
    assert!(!again.status.success());
    let missing = platform.run_unchecked(&["topics", "describe", "nope"], b"");
    assert!(
        stderr(&missing).contains("topic `nope` does not exist"),
        "{}",
        stderr(&missing)
    );

    let schema = repo().join("schemas/card_transaction.avsc");
    let registered = platform.run(
        &[
            "schemas",
            "register",
            "--topic",
            "events",
            "--file",
            schema.to_str().unwrap(),
        ],
        b"",
    );
    assert!(String::from_utf8_lossy(&registered.stdout).contains("`events-value` version 1"));
    let shown = platform.run(&["schemas", "show", "events-value"], b"");
    let parsed: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(parsed["name"], "CardTransaction");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.avsc");
    std::fs::write(
        &bad,
        r#"{"type": "record", "name": "X", "fields": [{"name": "a"}]}"#,
    )
    .unwrap();
    let refused = platform.run_unchecked(
        &[
            "schemas",
            "register",
            "x-value",
            "--file",
            bad.to_str().unwrap(),
        ],
        b"",
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("bad.avsc"),
        "{}",
        stderr(&refused)
    );
    assert!(
        stderr(&refused).contains("invalid Avro schema"),
        "{}",
        stderr(&refused)
    );
}

/// Commands that start the embedded broker in-process, on a fresh state
/// directory, as a new user runs them: each succeeds and says nothing at
/// ERROR or WARN level (no client outliving its broker, no connection
/// refused before the broker is up). A JSON topic with no schema is
/// queried with a schema inferred from its records, and says so.
#[test]
fn commands_on_the_embedded_broker_print_no_error_or_warning() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = crate::support::free_port();
    let registry = crate::support::free_port();
    let events = dir.path().join("clicks.jsonl");
    std::fs::write(
        &events,
        "{\"user\": \"u1\", \"n\": 2}\n{\"user\": \"u2\", \"n\": 5}\n{\"user\": \"u1\", \"n\": 1}\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let output = std::process::Command::new(crate::support::WEIR)
            .args(args)
            .current_dir(dir.path())
            .env_remove("WEIR_BROKERS")
            .env("WEIR_STATE_DIR", ".weir")
            .env("WEIR_EMBEDDED_BROKER", kafka.to_string())
            .env("WEIR_REGISTRY", registry.to_string())
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let text = stderr(&output);
        assert!(
            output.status.success(),
            "weir {args:?} failed: {text}\nstdout:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
        for line in text.lines() {
            assert!(
                !line.contains("ERROR") && !line.contains("WARN"),
                "weir {args:?} printed: {line}\nall of stderr:\n{text}"
            );
        }
        (String::from_utf8_lossy(&output.stdout).into_owned(), text)
    };
    run(&["topics", "create", "clicks", "-p", "2"]);
    run(&[
        "publish",
        "clicks",
        events.to_str().unwrap(),
        "--key",
        "user",
    ]);
    let (tailed, _) = run(&["tail", "clicks", "--from-beginning"]);
    assert_eq!(tailed.lines().count(), 3, "{tailed}");
    let (summed, notes) = run(&[
        "sql",
        "SELECT user, sum(n) AS n FROM clicks GROUP BY user ORDER BY user",
        "--format",
        "csv",
    ]);
    assert_eq!(summed, "user,n\nu1,3\nu2,5\n");
    assert!(
        notes.contains("note: `clicks`: schema inferred from its first 3 record(s)"),
        "{notes}"
    );
    run(&["features", "list"]);
    run(&["runs", "list", "Default"]);
}
