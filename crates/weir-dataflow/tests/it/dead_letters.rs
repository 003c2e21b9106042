use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use weir_bus::dead_letter::{self, describe};
use weir_bus::{ConsumerOptions, OutRecord, StartFrom, TopicSpec};
use weir_dataflow::job::{Cluster, start};
use weir_dataflow::window::Window;

use crate::support::{Event, Harness, Results, memory, spec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_and_malformed_records_go_to_the_dead_letter_topic() {
    let h = Harness::start().await;
    h.bus
        .admin()
        .create_topic(&TopicSpec::new("dirty", 1))
        .await
        .unwrap();
    let producer = h.bus.producer().unwrap();
    let base = 1_700_000_000_000_i64;
    let mut good = Vec::new();
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    let mut push_good = |i: i64, payloads: &mut Vec<Vec<u8>>| {
        let event = Event {
            user: format!("u{}", i % 3),
            merchant: format!("m{}", i % 4),
            amount: i as f64,
            ts: base + i * 100,
        };
        payloads.push(
            serde_json::to_vec(
                &json!({"user_id": event.user, "merchant_id": event.merchant,
                "amount": event.amount, "event_time": event.ts}),
            )
            .unwrap(),
        );
        good.push(event);
    };
    for i in 0..1_000 {
        push_good(i, &mut payloads);
    }
    // 100 s behind the newest record, with 5 s of lateness allowed.
    payloads.push(
        serde_json::to_vec(&json!({"user_id": "u1", "merchant_id": "m1", "amount": 1e6,
            "event_time": base}))
        .unwrap(),
    );
    payloads.push(br#"{"user_id": "u1", "amount": "#.to_vec());
    payloads.push(br#"{"user_id": "u2", "amount": 5.0, "event_time": 1700000100000}"#.to_vec());
    for i in 1_000..1_010 {
        push_good(i, &mut payloads);
    }
    for payload in &payloads {
        producer
            .send_and_wait(OutRecord::new("dirty", payload))
            .await
            .unwrap();
    }

    let window = Window::tumbling(Duration::from_secs(10)).unwrap();
    let (sink, results) = memory();
    let handle = start(
        spec("dirty", "dirty", h.dir.path(), window, sink),
        &h.bus,
        Cluster::local(1),
    )
    .await
    .unwrap();
    let status = tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap()
        .unwrap();
    Results::from_batches(&results.batches()).assert_matches(&Results::reference(&good, window));
    assert_eq!(status.records_in, payloads.len() as u64);
    assert_eq!(status.dead_letters, 3);
    assert_eq!(status.late, 1);

    let mut reader = h
        .bus
        .consumer(
            &["weir.dlq.dirty"],
            ConsumerOptions {
                start: StartFrom::Beginning,
                until_end: true,
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
    let mut reasons = Vec::new();
    while let Some(letter) = reader.next_raw().await.unwrap() {
        let headers: BTreeMap<String, String> = describe(&letter.headers).into_iter().collect();
        reasons.push((
            headers[dead_letter::OFFSET].clone(),
            headers[dead_letter::REASON].clone(),
        ));
    }
    reasons.sort_by_key(|(offset, _)| offset.parse::<i64>().unwrap());
    assert_eq!(
        reasons,
        vec![
            ("1000".to_string(), "late".to_string()),
            ("1001".to_string(), "bad-json".to_string()),
            ("1002".to_string(), "missing-field".to_string()),
        ]
    );
}

/// A partition whose records have not been read yet is behind, not idle:
/// even with an idle timeout far shorter than the time it takes to read
/// the topic, no record of a slower-read partition counts as late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_with_records_left_to_read_is_never_idle() {
    let h = Harness::start().await;
    // Keyed by user, so each partition's records are in event-time order.
    let events = crate::support::events(30_000, 200, 10, 0, 11);
    crate::support::publish(&h.bus, "backlog", 4, &events).await;
    let window = Window::tumbling(Duration::from_secs(10)).unwrap();
    let (sink, results) = memory();
    let mut spec = spec("backlog", "backlog", h.dir.path(), window, sink);
    let weir_dataflow::job::Source::Kafka(source) = &mut spec.source else {
        unreachable!("a Kafka source");
    };
    source.lateness = Duration::ZERO;
    source.idle_timeout = Duration::from_millis(1);
    let handle = start(spec, &h.bus, Cluster::local(1)).await.unwrap();
    let status = tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status.late, 0,
        "records of a partition read later were late"
    );
    Results::from_batches(&results.batches()).assert_matches(&Results::reference(&events, window));

    // Unbounded, the source does not know where partitions end: the
    // broker's end-of-partition decides, not the time since a record.
    let (sink, _) = memory();
    let state = tempfile::tempdir().unwrap();
    let mut unbounded =
        crate::support::spec("backlog-unbounded", "backlog", state.path(), window, sink);
    let source = crate::support::kafka_source(&mut unbounded);
    source.bounded = false;
    source.lateness = Duration::ZERO;
    source.idle_timeout = Duration::from_millis(1);
    let handle = start(unbounded, &h.bus, Cluster::local(1)).await.unwrap();
    crate::support::wait_until_read(&handle, events.len()).await;
    handle.stop();
    let status = tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status.late, 0,
        "unbounded: records of a partition read later were late"
    );
}

/// The other side of the rule above: a partition that has nothing to read
/// becomes idle after the timeout, so an empty partition does not hold an
/// unbounded job's windows open forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_partition_goes_idle_and_windows_close() {
    let h = Harness::start().await;
    h.bus
        .admin()
        .create_topic(&TopicSpec::new("one-sided", 2))
        .await
        .unwrap();
    let producer = h.bus.producer().unwrap();
    let base = 1_700_000_000_000_i64;
    // 30 s of events, all in partition 0; partition 1 stays empty.
    for i in 0..300_i64 {
        let payload = serde_json::to_vec(&json!({"user_id": "u1", "merchant_id": "m1",
            "amount": 1.0, "event_time": base + i * 100}))
        .unwrap();
        producer
            .send_and_wait(OutRecord::new("one-sided", &payload).partition(0))
            .await
            .unwrap();
    }
    let window = Window::tumbling(Duration::from_secs(10)).unwrap();
    let (sink, results) = memory();
    let mut spec = spec("one-sided", "one-sided", h.dir.path(), window, sink);
    let source = crate::support::kafka_source(&mut spec);
    source.bounded = false;
    source.lateness = Duration::ZERO;
    source.idle_timeout = Duration::from_millis(500);
    let handle = start(spec, &h.bus, Cluster::local(1)).await.unwrap();
    // Windows [0, 10 s) and [10 s, 20 s) close once partition 1 is idle.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while results
        .batches()
        .iter()
        .map(|b| b.num_rows())
        .sum::<usize>()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the empty partition held the windows open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.stop();
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap()
        .unwrap();
}
