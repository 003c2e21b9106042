use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;
use weir_bus::{Bus, OutRecord, TopicSpec};
use weir_dataflow::aggregate::Emit;
use weir_dataflow::job::{
    Aggregation, Cluster, JobHandle, JobSpec, KafkaSource, MemorySink, Sink, Source, start,
};
use weir_dataflow::window::Window;

pub use weir_test_support::Harness;

/// One synthetic card transaction.
#[derive(Debug, Clone)]
pub struct Event {
    pub user: String,
    pub merchant: String,
    pub amount: f64,
    pub ts: i64,
}

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, false),
        Field::new("merchant_id", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, false),
        Field::new("event_time", DataType::Int64, false),
    ]))
}

/// `count` events over `users` users, event time advancing `step` ms per
/// event with up to `disorder` ms of disorder.
pub fn events(count: usize, users: usize, step: i64, disorder: i64, seed: u64) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|i| Event {
            user: format!("u{}", rng.random_range(0..users)),
            merchant: format!("m{}", rng.random_range(0..20)),
            amount: (rng.random_range(100..100_000) as f64) / 100.0,
            ts: 1_700_000_000_000 + i as i64 * step - rng.random_range(0..=disorder),
        })
        .collect()
}

pub async fn publish(bus: &Bus, topic: &str, partitions: i32, events: &[Event]) {
    bus.admin()
        .create_topic(&TopicSpec::new(topic, partitions))
        .await
        .unwrap();
    append(bus, topic, events).await;
}

/// Publishes `events` to an existing topic.
pub async fn append(bus: &Bus, topic: &str, events: &[Event]) {
    let producer = bus.producer().unwrap();
    let mut pending = Vec::new();
    for event in events {
        let value = json!({"user_id": event.user, "merchant_id": event.merchant,
                           "amount": event.amount, "event_time": event.ts});
        let bytes = serde_json::to_vec(&value).unwrap();
        pending.push(
            producer
                .send(OutRecord::new(topic, &bytes).key(event.user.as_bytes()))
                .await
                .unwrap(),
        );
    }
    for delivery in pending {
        delivery.await.unwrap();
    }
}

pub fn aggregation(window: Window) -> Aggregation {
    Aggregation {
        filter: None,
        keys: vec!["user_id".into()],
        window,
        aggregates: vec![
            ("n".into(), "count(*)".into()),
            ("total".into(), "sum(amount)".into()),
            ("mean".into(), "avg(amount)".into()),
            ("low".into(), "min(amount)".into()),
            ("high".into(), "max(amount)".into()),
            ("merchants".into(), "count(DISTINCT merchant_id)".into()),
        ],
        emit: Emit::OnClose,
    }
}

pub fn spec(
    name: &str,
    topic: &str,
    state: &std::path::Path,
    window: Window,
    sink: Sink,
) -> JobSpec {
    let mut source = KafkaSource::new(topic, "event_time");
    source.schema = Some(schema());
    source.lateness = Duration::from_secs(5);
    source.bounded = true;
    JobSpec {
        name: name.into(),
        source: Source::Kafka(source),
        lookup: None,
        join: None,
        select: None,
        operators: Vec::new(),
        aggregation: Some(aggregation(window)),
        sink,
        checkpoint_interval: Duration::from_millis(200),
        state_dir: state.to_path_buf(),
    }
}

/// Runs a job to the end of its topic and returns its results.
pub async fn run_to_end(bus: &Bus, spec: JobSpec, cluster: Cluster) -> Results {
    Results::from_batches(&run_to_end_batches(bus, spec, cluster).await)
}

/// Runs a job to the end of its source and returns what its memory sink got.
pub async fn run_to_end_batches(bus: &Bus, spec: JobSpec, cluster: Cluster) -> Vec<RecordBatch> {
    let sink = match &spec.sink {
        Sink::Memory(sink) => sink.clone(),
        _ => panic!("run_to_end reads a memory sink"),
    };
    let handle = start(spec, bus, cluster).await.unwrap();
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap()
        .unwrap();
    sink.batches()
}

pub fn memory() -> (Sink, MemorySink) {
    let sink = MemorySink::default();
    (Sink::Memory(sink.clone()), sink)
}

/// One window's aggregates.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub n: i64,
    pub total: f64,
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    pub merchants: i64,
}

/// Results by (user, window start).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Results(pub BTreeMap<(String, i64), Row>);

impl Results {
    pub fn from_batches(batches: &[RecordBatch]) -> Self {
        let mut out = BTreeMap::new();
        for batch in batches {
            let col = |name: &str| batch.column(batch.schema().index_of(name).unwrap()).clone();
            let users = col("user_id");
            let users = users.as_any().downcast_ref::<StringArray>().unwrap();
            let starts = col("window_start");
            let starts = starts
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .unwrap();
            let ints = |name: &str| {
                col(name)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .clone()
            };
            let floats = |name: &str| {
                col(name)
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .unwrap()
                    .clone()
            };
            let (n, merchants) = (ints("n"), ints("merchants"));
            let (total, mean, low, high) = (
                floats("total"),
                floats("mean"),
                floats("low"),
                floats("high"),
            );
            for i in 0..batch.num_rows() {
                let previous = out.insert(
                    (users.value(i).to_string(), starts.value(i)),
                    Row {
                        n: n.value(i),
                        total: total.value(i),
                        mean: mean.value(i),
                        low: low.value(i),
                        high: high.value(i),
                        merchants: merchants.value(i),
                    },
                );
                assert!(
                    previous.is_none(),
                    "window ({}, {}) emitted twice",
                    users.value(i),
                    starts.value(i)
                );
            }
        }
        Self(out)
    }

    /// The reference: every window of every event, by brute force.
    pub fn reference(events: &[Event], window: Window) -> Self {
        let mut acc: BTreeMap<(String, i64), (Vec<f64>, std::collections::BTreeSet<String>)> =
            BTreeMap::new();
        for (key, group) in reference_groups(events, window) {
            let entry = acc.entry(key).or_default();
            for event in group {
                entry.0.push(event.amount);
                entry.1.insert(event.merchant.clone());
            }
        }
        Self(
            acc.into_iter()
                .map(|(k, (amounts, merchants))| {
                    let total: f64 = amounts.iter().sum();
                    (
                        k,
                        Row {
                            n: amounts.len() as i64,
                            total,
                            mean: total / amounts.len() as f64,
                            low: amounts.iter().copied().fold(f64::INFINITY, f64::min),
                            high: amounts.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                            merchants: merchants.len() as i64,
                        },
                    )
                })
                .collect(),
        )
    }

    /// Equal, with sums compared to 1e-9 relative (float addition order).
    pub fn assert_matches(&self, expected: &Results) {
        assert_eq!(self.0.len(), expected.0.len(), "number of windows");
        for (key, want) in &expected.0 {
            let got = self
                .0
                .get(key)
                .unwrap_or_else(|| panic!("window {key:?} missing"));
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
            assert!(
                got.n == want.n
                    && got.merchants == want.merchants
                    && got.low == want.low
                    && got.high == want.high
                    && close(got.total, want.total)
                    && close(got.mean, want.mean),
                "window {key:?}: got {got:?}, want {want:?}"
            );
        }
    }
}

/// The events of every (user, window start), by brute force: hopping and
/// tumbling windows by definition, sessions by sorting each user's events
/// and cutting where two are a gap or more apart.
pub fn reference_groups(events: &[Event], window: Window) -> BTreeMap<(String, i64), Vec<&Event>> {
    let mut groups: BTreeMap<(String, i64), Vec<&Event>> = BTreeMap::new();
    match window {
        Window::Session { gap } => {
            let mut by_user: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
            for event in events {
                by_user.entry(&event.user).or_default().push(event);
            }
            for (user, mut list) in by_user {
                list.sort_by_key(|e| e.ts);
                let mut start = list[0].ts;
                let mut last = list[0].ts;
                for event in list {
                    if event.ts - last >= gap {
                        start = event.ts;
                    }
                    last = event.ts;
                    groups
                        .entry((user.to_string(), start))
                        .or_default()
                        .push(event);
                }
            }
        }
        _ => {
            for event in events {
                for start in window.windows_of(event.ts) {
                    groups
                        .entry((event.user.clone(), start))
                        .or_default()
                        .push(event);
                }
            }
        }
    }
    groups
}

/// Waits (up to a minute) until a running job has read `records` records.
/// The job's Kafka source, to change how it reads.
pub fn kafka_source(job: &mut JobSpec) -> &mut KafkaSource {
    match &mut job.source {
        Source::Kafka(source) => source,
        _ => unreachable!("a Kafka source"),
    }
}

pub async fn wait_until_read(handle: &JobHandle, records: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while handle.status().records_in < records as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            handle.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
