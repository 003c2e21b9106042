//! Custom operators on the operator API: the example `top_k` against a
//! brute-force reference, with 1 and 2 workers, and resumed after a stop.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use weir_dataflow::job::{Cluster, JobSpec, KafkaSource, Source, start};
use weir_dataflow::operators::top_k::TopK;

use crate::support::{Event, Harness, events, memory, publish, schema};

/// `(key, window_start) -> values, largest first`.
type Tops = BTreeMap<(String, i64), Vec<f64>>;

fn top_k_job(
    name: &str,
    topic: &str,
    state: &std::path::Path,
) -> (JobSpec, weir_dataflow::job::MemorySink) {
    let (sink, memory) = memory();
    let mut source = KafkaSource::new(topic, "event_time");
    source.schema = Some(schema());
    source.lateness = Duration::from_secs(5);
    source.bounded = true;
    let job = JobSpec::new(name, Source::Kafka(source), sink, state)
        .checkpoint_every(Duration::from_millis(200))
        .operator(TopK {
            key: "user_id".into(),
            by: "amount".into(),
            k: 3,
            window: 60_000,
            time: "event_time".into(),
        });
    (job, memory)
}

fn reference(events: &[Event]) -> Tops {
    let mut all: Tops = BTreeMap::new();
    for e in events {
        let start = e.ts - e.ts.rem_euclid(60_000);
        all.entry((e.user.clone(), start))
            .or_default()
            .push(e.amount);
    }
    for values in all.values_mut() {
        values.sort_by(|a, b| b.total_cmp(a));
        values.truncate(3);
    }
    all
}

/// The emitted rows; fails on a (key, window, rank) emitted twice.
fn tops(batches: &[RecordBatch]) -> Tops {
    let mut ranked: BTreeMap<(String, i64), BTreeMap<i64, f64>> = BTreeMap::new();
    for batch in batches {
        let col = |i: usize| batch.column(i).clone();
        let keys = col(0);
        let keys = keys.as_any().downcast_ref::<StringArray>().unwrap();
        let starts = col(1);
        let starts = starts.as_any().downcast_ref::<Int64Array>().unwrap();
        let ranks = col(2);
        let ranks = ranks.as_any().downcast_ref::<Int64Array>().unwrap();
        let values = col(3);
        let values = values.as_any().downcast_ref::<Float64Array>().unwrap();
        for row in 0..batch.num_rows() {
            let window = (keys.value(row).to_string(), starts.value(row));
            let previous = ranked
                .entry(window.clone())
                .or_default()
                .insert(ranks.value(row), values.value(row));
            assert!(
                previous.is_none(),
                "{window:?} rank {} emitted twice",
                ranks.value(row)
            );
        }
    }
    ranked
        .into_iter()
        .map(|(window, ranks)| {
            let expected: Vec<i64> = (1..=ranks.len() as i64).collect();
            assert_eq!(
                ranks.keys().copied().collect::<Vec<_>>(),
                expected,
                "{window:?}"
            );
            (window, ranks.into_values().collect())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_k_per_key_and_window_equals_a_brute_force_reference() {
    let h = Harness::start().await;
    let data = events(30_000, 40, 20, 3_000, 11);
    publish(&h.bus, "topk-in", 3, &data).await;
    let expected = reference(&data);
    for workers in [1, 2] {
        let state = tempfile::tempdir().unwrap();
        let (job, sink) = top_k_job(&format!("topk-{workers}"), "topk-in", state.path());
        let handle = start(job, &h.bus, Cluster::local(workers)).await.unwrap();
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .unwrap()
            .unwrap();
        let got = tops(&sink.batches());
        assert_eq!(got.len(), expected.len(), "{workers} worker(s): windows");
        assert_eq!(got, expected, "{workers} worker(s)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_top_k_job_resumes_from_its_state() {
    let h = Harness::start().await;
    let data = events(30_000, 40, 20, 3_000, 12);
    let (first, second) = data.split_at(15_000);
    publish(&h.bus, "topk-resume", 2, first).await;
    let state = tempfile::tempdir().unwrap();

    // Half the input, then a stop: windows still open stay in state.
    let (mut job, sink) = top_k_job("topk-resume", "topk-resume", state.path());
    crate::support::kafka_source(&mut job).bounded = false;
    let handle = start(job, &h.bus, Cluster::local(2)).await.unwrap();
    crate::support::wait_until_read(&handle, first.len()).await;
    // Until the watermark has closed some windows.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sink.batches().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no window closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.checkpoint();
    handle.stop();
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap()
        .unwrap();
    let mut batches = sink.batches();
    let closed = tops(&batches).len();
    assert!(
        closed > 0 && closed < reference(&data).len(),
        "{closed} windows closed before the stop"
    );

    // The rest: the windows open at the stop close with the values read
    // before it, kept in state (a job that lost them emits fewer).
    crate::support::append(&h.bus, "topk-resume", second).await;
    let (job, sink) = top_k_job("topk-resume", "topk-resume", state.path());
    let handle = start(job, &h.bus, Cluster::local(2)).await.unwrap();
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap()
        .unwrap();
    batches.extend(sink.batches());
    assert_eq!(tops(&batches), reference(&data));
}
