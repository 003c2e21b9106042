//! The same SQL as a stream and as a batch gives the same rows on many
//! events: case files' views (`tests/cases/`) covering every window kind,
//! the aggregates, HAVING and expressions, a lookup join with a table, and
//! a view over another view, on 120k events out of order with late ones
//! mixed in. The batch reads what the stream accepted (its late records
//! are in the dead-letter topic).

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use weir_dataflow::job::Status;

use crate::support::{Harness, assert_same, publish, rows, transactions};

/// Runs a view's stream and batch and compares them.
async fn compare(
    h: &Harness,
    applied: &weir_sql::registry::Applied,
    source_topic: &str,
    table: Option<(&str, &str)>,
    approximate: &[&str],
) -> Status {
    let plan = &applied.plan;
    let dlq_from = h.dlq_end(source_topic).await;
    let status = h.run_to_end(plan).await;
    let late: HashSet<(i32, i64)> = h.dead_letters(source_topic, dlq_from).await;
    assert_eq!(
        late.len() as u64,
        status.dead_letters,
        "{}: dead letters",
        applied.version.name
    );

    let stream = weir_sql::batch::read_topic(&h.bus, &plan.topic, plan.output.clone())
        .await
        .unwrap();
    let history = weir_sql::batch::read_topic(&h.bus, source_topic, plan.source.schema.clone())
        .await
        .unwrap();
    let accepted = history.filter(|p, o| !late.contains(&(p, o))).unwrap();
    let table_rows = match (table, &plan.table) {
        (Some((topic, key)), Some(t)) => {
            weir_sql::batch::read_table(&h.bus, topic, t.schema.clone(), key)
                .await
                .unwrap()
        }
        _ => Vec::new(),
    };
    let inputs = weir_sql::batch::Inputs {
        source: accepted,
        table: table_rows,
        ..Default::default()
    };
    let batch = weir_sql::batch::run(plan, inputs).await.unwrap();
    let mut key: Vec<&str> = applied
        .version
        .header
        .entity
        .iter()
        .map(String::as_str)
        .collect();
    key.push("window_start");
    assert_same(
        &applied.version.name,
        &rows(&stream.batches, &key),
        &rows(&batch, &key),
        approximate,
        0.02,
    );
    status
}

/// The views of case file `name` (`tests/cases/<name>.case`), written
/// as view files; the last is the one the case tests.
fn case_views(h: &Harness, name: &str) -> Vec<std::path::PathBuf> {
    crate::cases::views_of(name)
        .iter()
        .enumerate()
        .map(|(i, text)| h.view(&format!("{name}-{i}"), text))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_and_batch_give_the_same_rows() {
    let h = Harness::start().await;

    // The merchants table: an update (the later row wins) and a deletion.
    let mut merchants: Vec<(String, Option<serde_json::Value>)> = (0..30)
        .map(|i| {
            let id = format!("m{i:02}");
            (
                id.clone(),
                Some(json!({"merchant_id": id, "category": format!("c{}", i % 5)})),
            )
        })
        .collect();
    merchants.push((
        "m03".into(),
        Some(json!({"merchant_id": "m03", "category": "c9"})),
    ));
    merchants.push(("m07".into(), None));
    publish(&h.bus, "merchants", 1, &merchants).await;

    let events = transactions(120_000, 200, 400, 11);
    let records: Vec<(String, Option<serde_json::Value>)> = events
        .iter()
        .map(|e| (e["user_id"].as_str().unwrap().to_string(), Some(e.clone())))
        .collect();
    publish(&h.bus, "transactions", 3, &records).await;

    // The case files' views, on many more events, out of order, some late.
    let mut paths = Vec::new();
    for case in [
        "tumble_aggregates",
        "tumble_expressions",
        "hop_sum_having",
        "session_gap",
        "join_left",
        "view_over_view",
    ] {
        paths.extend(case_views(&h, case));
    }
    let path_refs: Vec<&std::path::Path> = paths.iter().map(|p| p.as_path()).collect();
    let applied = h.apply(&path_refs).await;
    let by_name = |name: &str| applied.iter().find(|a| a.version.name == name).unwrap();
    assert!(applied.iter().all(|a| a.recorded && a.version.version == 1));

    let status = compare(&h, by_name("tumble_aggregates"), "transactions", None, &[]).await;
    assert!(status.late > 0, "some events were late: {status:?}");
    compare(&h, by_name("tumble_expressions"), "transactions", None, &[]).await;
    compare(&h, by_name("hop_sum_having"), "transactions", None, &[]).await;
    compare(&h, by_name("session_gap"), "transactions", None, &[]).await;
    compare(
        &h,
        by_name("join_left"),
        "transactions",
        Some(("merchants", "merchant_id")),
        &[],
    )
    .await;
    compare(&h, by_name("spend_1m"), "transactions", None, &[]).await;
    let upstream = &by_name("spend_1m").version.topic;
    compare(&h, by_name("view_over_view"), upstream, None, &[]).await;

    // Applying the same files again records nothing new.
    let tumble = &paths[0];
    let again = h.apply(&[tumble]).await;
    assert!(!again[0].recorded);
    assert_eq!(again[0].version.version, 1);
    // A changed view is a new version with its own topic.
    std::fs::write(
        tumble,
        std::fs::read_to_string(tumble)
            .unwrap()
            .replace("sum(amount) AS total", "sum(amount) AS total_spend"),
    )
    .unwrap();
    let changed = h.apply(&[tumble]).await;
    assert!(changed[0].recorded);
    assert_eq!(changed[0].version.version, 2);
    assert_ne!(
        changed[0].version.topic,
        by_name("tumble_aggregates").version.topic
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_survives_a_restart_with_exact_results() {
    let h = Harness::start().await;
    let events = transactions(60_000, 100, 0, 12);
    let records: Vec<(String, Option<serde_json::Value>)> = events
        .iter()
        .map(|e| (e["user_id"].as_str().unwrap().to_string(), Some(e.clone())))
        .collect();
    publish(&h.bus, "transactions", 3, &records).await;
    let paths = case_views(&h, "hop_count");
    let applied = h.apply(&[&paths[0]]).await;
    let plan = &applied[0].plan;
    // Stop it twice along the way; the third run goes to the end.
    for wait in [700, 900] {
        let handle = h.start_view(plan, true).await;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        handle.stop();
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .unwrap()
            .unwrap();
    }
    h.run_to_end(plan).await;
    let stream = weir_sql::batch::read_topic(&h.bus, &plan.topic, plan.output.clone())
        .await
        .unwrap();
    let history = weir_sql::batch::read_topic(&h.bus, "transactions", plan.source.schema.clone())
        .await
        .unwrap();
    let inputs = weir_sql::batch::Inputs {
        source: history.batches,
        ..Default::default()
    };
    let batch = weir_sql::batch::run(plan, inputs).await.unwrap();
    let key = ["user_id", "window_start"];
    assert_same(
        "hop_count",
        &rows(&stream.batches, &key),
        &rows(&batch, &key),
        &[],
        0.0,
    );
}
