//! Continuous aggregation without a window: the latest update of each key
//! equals its totals over every event, across a stop and a topic that grew
//! meanwhile; its sink topic is compacted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use arrow::array::{Array, Float64Array, Int64Array, StringArray};
use weir_dataflow::aggregate::Emit;
use weir_dataflow::job::Aggregation;
use weir_dataflow::job::{Cluster, Sink, start};
use weir_dataflow::window::Window;

use crate::support::{
    Event, Harness, aggregation, append, events, kafka_source, memory, publish, spec,
    wait_until_read,
};

/// `user -> (n, total, high, merchants)`.
type Totals = BTreeMap<String, (i64, f64, f64, i64)>;

fn reference(events: &[Event]) -> Totals {
    let mut merchants: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut totals = Totals::new();
    for e in events {
        let entry = totals
            .entry(e.user.clone())
            .or_insert((0, 0.0, f64::MIN, 0));
        entry.0 += 1;
        entry.1 += e.amount;
        entry.2 = entry.2.max(e.amount);
        merchants.entry(&e.user).or_default().insert(&e.merchant);
    }
    for (user, entry) in totals.iter_mut() {
        entry.3 = merchants[user.as_str()].len() as i64;
    }
    totals
}

/// The latest update of each user, in the order they were emitted.
fn latest(batches: &[arrow::array::RecordBatch]) -> Totals {
    let mut totals = Totals::new();
    for batch in batches {
        let schema = batch.schema();
        let column = |name: &str| batch.column(schema.index_of(name).unwrap()).clone();
        let users = column("user_id");
        let users = users.as_any().downcast_ref::<StringArray>().unwrap();
        let n = column("n");
        let n = n.as_any().downcast_ref::<Int64Array>().unwrap();
        let total = column("total");
        let total = total.as_any().downcast_ref::<Float64Array>().unwrap();
        let high = column("high");
        let high = high.as_any().downcast_ref::<Float64Array>().unwrap();
        let merchants = column("merchants");
        let merchants = merchants.as_any().downcast_ref::<Int64Array>().unwrap();
        for row in 0..batch.num_rows() {
            totals.insert(
                users.value(row).to_string(),
                (
                    n.value(row),
                    total.value(row),
                    high.value(row),
                    merchants.value(row),
                ),
            );
        }
    }
    totals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windowless_aggregation_keeps_each_keys_totals_up_to_date() {
    let h = Harness::start().await;
    let data = events(20_000, 50, 10, 2_000, 21);
    let (first, rest) = data.split_at(10_000);
    let (second, third) = rest.split_at(5_000);
    publish(&h.bus, "running", 2, first).await;
    let job = |sink: Sink, bounded: bool| {
        let mut job = spec("running", "running", h.dir.path(), Window::Global, sink);
        let aggregation = job.aggregation.as_mut().unwrap();
        aggregation
            .aggregates
            .retain(|(name, _)| name != "mean" && name != "low");
        aggregation.emit = Emit::OnUpdate;
        kafka_source(&mut job).bounded = bounded;
        job
    };

    // The first part, then a stop: the totals so far are emitted, and kept.
    let (sink, first_run) = memory();
    let handle = start(job(sink, false), &h.bus, Cluster::local(2))
        .await
        .unwrap();
    assert!(
        handle.output_schema().index_of("window_start").is_err(),
        "no window columns: {:?}",
        handle.output_schema()
    );
    wait_until_read(&handle, first.len()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while latest(&first_run.batches()) != reference(first) {
        assert!(
            std::time::Instant::now() < deadline,
            "the updates never caught up with the first part"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.stop();
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap()
        .unwrap();

    // Two more parts, each read by a run to the end of the topic: each
    // user's latest update holds the totals over every part (a run that
    // lost the state, or closed the window at the end of its input, would
    // hold the last part's only).
    let mut batches = first_run.batches();
    for part in [second, third] {
        append(&h.bus, "running", part).await;
        let (sink, run) = memory();
        let handle = start(job(sink, true), &h.bus, Cluster::local(2))
            .await
            .unwrap();
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .unwrap()
            .unwrap();
        batches.extend(run.batches());
    }
    let got = latest(&batches);
    let expected = reference(&data);
    assert_eq!(got.len(), expected.len());
    for (user, (n, total, high, merchants)) in &expected {
        let (got_n, got_total, got_high, got_merchants) = got[user];
        assert_eq!(
            (got_n, got_high, got_merchants),
            (*n, *high, *merchants),
            "{user}"
        );
        assert!(
            (got_total - total).abs() <= 1e-9 * total.abs().max(1.0),
            "{user}"
        );
    }

    // Without a window it needs updates: closing never comes.
    let mut closing = job(memory().0, true);
    closing.aggregation.as_mut().unwrap().emit = Emit::OnClose;
    let error = start(closing, &h.bus, Cluster::local(1))
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("never closes"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_stream_goes_to_a_compacted_topic() {
    let h = Harness::start().await;
    publish(&h.bus, "compact-in", 1, &events(100, 5, 10, 0, 3)).await;
    let mut job = spec(
        "compact",
        "compact-in",
        h.dir.path(),
        Window::Global,
        Sink::Kafka {
            topic: "compact-out".into(),
            key: Vec::new(),
        },
    );
    job.aggregation = Some(Aggregation {
        emit: Emit::OnUpdate,
        ..aggregation(Window::Global)
    });
    let handle = start(job, &h.bus, Cluster::local(1)).await.unwrap();
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap()
        .unwrap();
    let info = h.bus.admin().describe_topic("compact-out").await.unwrap();
    assert!(
        info.configs
            .contains(&("cleanup.policy".to_string(), "compact".to_string())),
        "{:?}",
        info.configs
    );
    assert!(info.records() >= 5, "an update per user at least");

    // A windowed job emitting on close writes no upserts: not compacted.
    let job = spec(
        "closing",
        "compact-in",
        h.dir.path(),
        Window::tumbling(Duration::from_secs(60)).unwrap(),
        Sink::Kafka {
            topic: "closing-out".into(),
            key: Vec::new(),
        },
    );
    let handle = start(job, &h.bus, Cluster::local(1)).await.unwrap();
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap()
        .unwrap();
    let info = h.bus.admin().describe_topic("closing-out").await.unwrap();
    assert!(
        !info.configs.iter().any(|(key, _)| key == "cleanup.policy"),
        "{:?}",
        info.configs
    );
}
