//! The same SQL as a stream and as a batch gives the same rows: five views
//! covering every window kind, the aggregates, HAVING and expressions, a
//! lookup join with a table, and a view over another view, on 120k events
//! out of order with late ones mixed in. The batch reads what the stream
//! accepted (its late records are in the dead-letter topic).

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use weir_dataflow::job::Status;

use crate::support::{Harness, assert_same, publish, rows, transactions};

const SCHEMA: &str = "{ user_id: string, merchant_id: string, amount: double, event_time: long }";

fn header(name: &str, entity: &str, extra: &str) -> String {
    format!(
        "---\nname: {name}\nentity: [{entity}]\ncheckpoint_interval: 200ms\nsources:\n  transactions: {{ topic: transactions, event_time: event_time, lateness: 5s, schema: {SCHEMA} }}\n{extra}---\n"
    )
}

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
    let batch = weir_sql::batch::run(plan, accepted, table_rows)
        .await
        .unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_and_batch_give_the_same_rows() {
    let h = Harness::start().await;

    // The merchants table: an update (the later row wins) and a deletion.
    let mut merchants: Vec<(String, Option<serde_json::Value>)> = (0..30)
        .map(|i| {
            let id = format!("m{i:02}");
            (id.clone(), Some(json!({"merchant_id": id, "category": format!("c{}", i % 5), "risk": i as f64 / 10.0})))
        })
        .collect();
    merchants.push((
        "m03".into(),
        Some(json!({"merchant_id": "m03", "category": "c9", "risk": 9.5})),
    ));
    merchants.push(("m07".into(), None));
    publish(&h.bus, "merchants", 1, &merchants).await;

    let events = transactions(120_000, 200, 400, 11);
    let records: Vec<(String, Option<serde_json::Value>)> = events
        .iter()
        .map(|e| (e["user_id"].as_str().unwrap().to_string(), Some(e.clone())))
        .collect();
    publish(&h.bus, "transactions", 3, &records).await;

    let tumble = h.view(
        "spend_1m",
        &format!(
            "{}SELECT user_id, count(*) AS n, sum(amount) AS total, avg(amount) AS mean,\n       min(amount) AS low, max(amount) AS high\nFROM transactions\nWHERE amount > 5\nGROUP BY user_id, tumble(event_time, INTERVAL '1 minute')\n",
            header("spend_1m", "user_id", "")
        ),
    );
    let hop = h.view(
        "spread_5m",
        &format!(
            "{}SELECT user_id,\n       stddev(amount) AS sd, var_pop(amount) AS variance,\n       count(DISTINCT merchant_id) AS merchants,\n       approx_percentile_cont(amount, 0.9) AS p90,\n       avg(amount) * 100 AS mean_cents,\n       CASE WHEN max(amount) > 400 THEN 'big' ELSE 'small' END AS size\nFROM transactions\nGROUP BY user_id, hop(event_time, INTERVAL '1 minute', INTERVAL '5 minutes')\nHAVING count(*) > 2\n",
            header("spread_5m", "user_id", "")
        ),
    );
    let session = h.view(
        "visits",
        &format!(
            "{}SELECT user_id, count(*) AS n, sum(amount) AS total, max(amount) - min(amount) AS spread\nFROM transactions\nGROUP BY user_id, session(event_time, INTERVAL '30 seconds')\n",
            header("visits", "user_id", "")
        ),
    );
    let join = h.view(
        "merchant_mix",
        &format!(
            "{}SELECT upper(t.user_id) AS user_key,\n       count(*) AS n,\n       count(m.category) AS known,\n       count(DISTINCT m.category) AS categories,\n       sum(m.risk) AS risk,\n       sum(CASE WHEN m.category = 'c1' THEN t.amount ELSE 0 END) AS c1_spend\nFROM transactions t LEFT JOIN merchants m ON t.merchant_id = m.merchant_id\nGROUP BY upper(t.user_id), tumble(t.event_time, INTERVAL '2 minutes')\n",
            header(
                "merchant_mix",
                "user_key",
                "tables:\n  merchants: { topic: merchants, key: merchant_id, schema: { merchant_id: string, category: string, risk: double } }\n"
            )
        ),
    );
    let chained = h.view(
        "spend_10m",
        "---\nname: spend_10m\nentity: [user_id]\ncheckpoint_interval: 200ms\nsources:\n  spend_1m: { view: spend_1m, lateness: 1m }\n---\nSELECT user_id, sum(n) AS n, max(high) AS high, count(*) AS minutes\nFROM spend_1m\nGROUP BY user_id, tumble(window_end, INTERVAL '10 minutes')\n",
    );
    let applied = h.apply(&[&chained, &tumble, &hop, &session, &join]).await;
    let by_name = |name: &str| applied.iter().find(|a| a.version.name == name).unwrap();
    assert!(applied.iter().all(|a| a.recorded && a.version.version == 1));

    let status = compare(&h, by_name("spend_1m"), "transactions", None, &[]).await;
    assert!(status.late > 0, "some events were late: {status:?}");
    compare(&h, by_name("spread_5m"), "transactions", None, &["p90"]).await;
    compare(&h, by_name("visits"), "transactions", None, &[]).await;
    compare(
        &h,
        by_name("merchant_mix"),
        "transactions",
        Some(("merchants", "merchant_id")),
        &[],
    )
    .await;
    let upstream = &by_name("spend_1m").version.topic;
    compare(&h, by_name("spend_10m"), upstream, None, &[]).await;

    // Applying the same files again records nothing new.
    let again = h.apply(&[&tumble]).await;
    assert!(!again[0].recorded);
    assert_eq!(again[0].version.version, 1);
    // A changed view is a new version with its own topic.
    std::fs::write(
        &tumble,
        std::fs::read_to_string(&tumble)
            .unwrap()
            .replace("amount > 5", "amount > 6"),
    )
    .unwrap();
    let changed = h.apply(&[&tumble]).await;
    assert!(changed[0].recorded);
    assert_eq!(changed[0].version.version, 2);
    assert_ne!(changed[0].version.topic, by_name("spend_1m").version.topic);
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
    let path = h.view(
        "hourly",
        &format!(
            "{}SELECT user_id, count(*) AS n, sum(amount) AS total, count(DISTINCT merchant_id) AS merchants\nFROM transactions\nGROUP BY user_id, hop(event_time, INTERVAL '1 minute', INTERVAL '3 minutes')\n",
            header("hourly", "user_id", "")
        ),
    );
    let applied = h.apply(&[&path]).await;
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
    let batch = weir_sql::batch::run(plan, history.batches, Vec::new())
        .await
        .unwrap();
    let key = ["user_id", "window_start"];
    assert_same(
        "hourly",
        &rows(&stream.batches, &key),
        &rows(&batch, &key),
        &[],
        0.0,
    );
}
