//! Stream–table joins: every event takes the latest row of its merchant
//! from a table topic; updates win, tombstones delete.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use serde_json::json;
use weir_bus::TopicSpec;
use weir_dataflow::job::{Aggregation, Cluster, Select};
use weir_dataflow::lookup::{JoinKind, Lookup};
use weir_dataflow::window::Window;

use crate::support::{Harness, events, memory, publish, run_to_end_batches, spec};

fn merchants_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("merchant_id", DataType::Utf8, false),
        Field::new("category", DataType::Utf8, false),
        Field::new("risk", DataType::Float64, false),
    ]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_join_the_latest_row_of_their_merchant() {
    let h = Harness::start().await;
    h.bus
        .admin()
        .create_topic(&TopicSpec::new("merchants", 2))
        .await
        .unwrap();
    let producer: ThreadedProducer<DefaultProducerContext> =
        weir_bus::producer_config(h.bus.config()).create().unwrap();
    let send = |key: &str, value: Option<serde_json::Value>| {
        let payload = value.map(|v| serde_json::to_vec(&v).unwrap());
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to("merchants").key(key);
        if let Some(payload) = &payload {
            record = record.payload(payload.as_slice());
        }
        producer.send(record).map_err(|(e, _)| e).unwrap();
    };
    let mut table: HashMap<String, (String, f64)> = HashMap::new();
    for i in 0..20 {
        let (id, category, risk) = (format!("m{i}"), format!("c{}", i % 4), i as f64);
        send(
            &id,
            Some(json!({"merchant_id": id, "category": category, "risk": risk})),
        );
        table.insert(id, (category, risk));
    }
    // An update (the later row wins) and a deletion.
    send(
        "m3",
        Some(json!({"merchant_id": "m3", "category": "c9", "risk": 100.0})),
    );
    table.insert("m3".into(), ("c9".into(), 100.0));
    send("m7", None);
    table.remove("m7");
    // A row that is not a merchant goes to the table's dead letters.
    send("bad", Some(json!({"merchant_id": "bad"})));
    producer.flush(Duration::from_secs(10)).unwrap();

    let data = events(6_000, 25, 50, 1_000, 7);
    publish(&h.bus, "payments", 2, &data).await;
    let window = Window::tumbling(Duration::from_secs(30)).unwrap();

    for kind in [JoinKind::Inner, JoinKind::Left] {
        let (sink, _) = memory();
        let mut job = spec(
            &format!("lookup-{kind:?}"),
            "payments",
            h.dir.path(),
            window,
            sink,
        );
        job.lookup = Some(Lookup {
            topic: "merchants".into(),
            schema: Some(merchants_schema()),
            key: "merchant_id".into(),
            on: "merchant_id".into(),
            columns: vec![
                ("category".into(), "merchant_category".into()),
                ("risk".into(), "risk".into()),
            ],
            kind,
        });
        job.select = Some(Select {
            filter: Some("amount > 10".into()),
            columns: None,
        });
        job.aggregation = Some(Aggregation {
            aggregates: vec![
                ("n".into(), "count(*)".into()),
                (
                    "categories".into(),
                    "count(DISTINCT merchant_category)".into(),
                ),
                ("risk".into(), "sum(risk)".into()),
            ],
            ..job.aggregation.unwrap()
        });
        let batches = run_to_end_batches(&h.bus, job, Cluster::local(2)).await;

        // The reference, by brute force.
        // (user, window) → (count, categories, risk)
        type Want = BTreeMap<(String, i64), (i64, BTreeSet<String>, Option<f64>)>;
        let mut want: Want = BTreeMap::new();
        for event in data.iter().filter(|e| e.amount > 10.0) {
            let row = table.get(&event.merchant);
            if row.is_none() && kind == JoinKind::Inner {
                continue;
            }
            for start in window.windows_of(event.ts) {
                let entry = want.entry((event.user.clone(), start)).or_default();
                entry.0 += 1;
                if let Some((category, risk)) = row {
                    entry.1.insert(category.clone());
                    entry.2 = Some(entry.2.unwrap_or(0.0) + risk);
                }
            }
        }
        let mut got = BTreeMap::new();
        for batch in &batches {
            let col = |name: &str| batch.column(batch.schema().index_of(name).unwrap()).clone();
            let users = col("user_id");
            let users = users.as_any().downcast_ref::<StringArray>().unwrap();
            let starts = col("window_start");
            let starts = starts
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .unwrap();
            let n = col("n");
            let n = n.as_any().downcast_ref::<Int64Array>().unwrap();
            let categories = col("categories");
            let categories = categories.as_any().downcast_ref::<Int64Array>().unwrap();
            let risk = col("risk");
            let risk = risk.as_any().downcast_ref::<Float64Array>().unwrap();
            for i in 0..batch.num_rows() {
                got.insert(
                    (users.value(i).to_string(), starts.value(i)),
                    (
                        n.value(i),
                        categories.value(i),
                        risk.is_valid(i).then(|| risk.value(i)),
                    ),
                );
            }
        }
        assert_eq!(got.len(), want.len(), "{kind:?}: number of windows");
        for (key, (n, categories, risk)) in &want {
            let (got_n, got_categories, got_risk) = got[key];
            assert_eq!(got_n, *n, "{kind:?} {key:?}: count");
            assert_eq!(
                got_categories,
                categories.len() as i64,
                "{kind:?} {key:?}: categories"
            );
            match (got_risk, risk) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-6, "{kind:?} {key:?}: risk"),
                (a, b) => assert_eq!(a, *b, "{kind:?} {key:?}: risk"),
            }
        }
    }
}
