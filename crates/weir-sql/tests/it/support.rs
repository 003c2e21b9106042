use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use serde_json::json;
use weir_bus::{Bus, ConsumerOptions, StartFrom, TopicSpec};
use weir_dataflow::job::{Cluster, JobHandle, Status};
use weir_sql::Plan;
use weir_sql::registry::{self, Registry};

/// The shared harness, with what the views' tests do on it.
pub struct Harness(weir_test_support::Harness);

impl std::ops::Deref for Harness {
    type Target = weir_test_support::Harness;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Harness {
    pub async fn start() -> Self {
        Self(weir_test_support::Harness::start().await)
    }

    /// Writes a view file and returns its path.
    pub fn view(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.sql"));
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Applies view files and returns their plans.
    pub async fn apply(&self, paths: &[&Path]) -> Vec<registry::Applied> {
        let views: Vec<_> = paths
            .iter()
            .map(|p| weir_sql::ViewFile::load(p).unwrap())
            .collect();
        let known = Registry::load(&self.bus).await.unwrap();
        registry::apply(&self.bus, &known, &views, &self.state())
            .await
            .unwrap()
    }

    /// Runs a view's stream to the end of its source.
    pub async fn run_to_end(&self, plan: &Plan) -> Status {
        let handle = self.start_view(plan, true).await;
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .unwrap()
            .unwrap()
    }

    pub async fn start_view(&self, plan: &Plan, bounded: bool) -> JobHandle {
        let mut pipeline = plan.pipeline.clone();
        pipeline.set_bounded(bounded);
        weir_dataflow::job::run(pipeline, &self.bus, Cluster::local(2))
            .await
            .unwrap()
    }

    /// `(partition, offset)` of the records dead-lettered from `topic`
    /// after `from` (an offset of its dead-letter topic).
    pub async fn dead_letters(&self, topic: &str, from: i64) -> HashSet<(i32, i64)> {
        let dlq = weir_core::topics::dlq(topic);
        let mut reader = self
            .bus
            .consumer(
                &[&dlq],
                ConsumerOptions {
                    start: StartFrom::Offsets(vec![(dlq.clone(), 0, from)]),
                    until_end: true,
                    read_only: true,
                    ..Default::default()
                },
            )
            .unwrap();
        let mut out = HashSet::new();
        while let Some(letter) = reader.next_raw().await.unwrap() {
            let headers: BTreeMap<String, String> =
                weir_bus::dead_letter::describe(&letter.headers)
                    .into_iter()
                    .collect();
            out.insert((
                headers["weir.dlq.partition"].parse().unwrap(),
                headers["weir.dlq.offset"].parse().unwrap(),
            ));
        }
        out
    }

    pub async fn dlq_end(&self, topic: &str) -> i64 {
        let dlq = weir_core::topics::dlq(topic);
        self.bus
            .admin()
            .ensure_topic(&TopicSpec::new(&dlq, 1))
            .await
            .unwrap();
        self.bus.admin().watermarks(&dlq, 0).await.unwrap().1
    }
}

/// Card transactions: `count` events over `users` users, 20 ms apart in
/// event time, up to 2 s out of order, and one in `late_every` sent 30 s
/// late (beyond a 5 s lateness).
pub fn transactions(
    count: usize,
    users: usize,
    late_every: usize,
    seed: u64,
) -> Vec<serde_json::Value> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            let mut ts = 1_700_000_000_000_i64 + i as i64 * 20 - rng.random_range(0..2_000);
            if late_every > 0 && i % late_every == late_every - 1 {
                ts -= 30_000;
            }
            json!({
                "user_id": format!("u{:03}", rng.random_range(0..users)),
                "merchant_id": format!("m{:02}", rng.random_range(0..30)),
                "amount": (rng.random_range(100..50_000) as f64) / 100.0,
                "event_time": ts,
            })
        })
        .collect()
}

/// Publishes JSON records (keyed by `key`), `None` values as tombstones.
pub async fn publish(
    bus: &Bus,
    topic: &str,
    partitions: i32,
    records: &[(String, Option<serde_json::Value>)],
) {
    bus.admin()
        .ensure_topic(&TopicSpec::new(topic, partitions))
        .await
        .unwrap();
    let producer: ThreadedProducer<DefaultProducerContext> =
        weir_bus::producer_config(bus.config()).create().unwrap();
    for (key, value) in records {
        let payload = value.as_ref().map(|v| serde_json::to_vec(v).unwrap());
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).key(key.as_str());
        if let Some(payload) = &payload {
            record = record.payload(payload.as_slice());
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// One value of a result row, comparable across runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
}

/// Rows by key: `key` columns joined with `|`.
pub type Rows = BTreeMap<String, BTreeMap<String, Cell>>;

fn cell(column: &ArrayRef, row: usize) -> Cell {
    if column.is_null(row) {
        return Cell::Null;
    }
    match column.data_type() {
        DataType::Float64 | DataType::Float32 => {
            let c = cast(column, &DataType::Float64).unwrap();
            Cell::Float(
                c.as_any()
                    .downcast_ref::<Float64Array>()
                    .unwrap()
                    .value(row),
            )
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let c = cast(column, &DataType::Utf8).unwrap();
            Cell::Text(
                c.as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap()
                    .value(row)
                    .to_string(),
            )
        }
        _ => {
            let c = cast(column, &DataType::Int64).unwrap();
            Cell::Int(c.as_any().downcast_ref::<Int64Array>().unwrap().value(row))
        }
    }
}

/// Rows of batches by key; the last row of a key wins (as in a topic).
pub fn rows(batches: &[RecordBatch], key: &[&str]) -> Rows {
    let mut out = Rows::new();
    for batch in batches {
        let schema = batch.schema();
        for row in 0..batch.num_rows() {
            let values: BTreeMap<String, Cell> = schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| (f.name().clone(), cell(batch.column(i), row)))
                .collect();
            let k: Vec<String> = key
                .iter()
                .map(|name| match &values[*name] {
                    Cell::Int(v) => v.to_string(),
                    Cell::Text(v) => v.clone(),
                    Cell::Float(v) => v.to_string(),
                    Cell::Null => "null".into(),
                })
                .collect();
            out.insert(k.join("|"), values);
        }
    }
    out
}

/// Stream rows equal batch rows: every key, every column; floats to 1e-9
/// relative, columns in `approximate` to `tolerance` relative.
pub fn assert_same(view: &str, stream: &Rows, batch: &Rows, approximate: &[&str], tolerance: f64) {
    assert!(!batch.is_empty(), "{view}: the batch gave no rows");
    let missing: Vec<&String> = batch
        .keys()
        .filter(|k| !stream.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<&String> = stream
        .keys()
        .filter(|k| !batch.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{view}: {} stream rows, {} batch rows; missing from the stream {missing:?}, only in the stream {extra:?}",
        stream.len(),
        batch.len()
    );
    for (key, want) in batch {
        let got = &stream[key];
        for (column, expected) in want {
            let actual = got
                .get(column)
                .unwrap_or_else(|| panic!("{view}: the stream has no column `{column}`"));
            let equal = match (actual, expected) {
                (Cell::Float(a), Cell::Float(b)) => {
                    let tol = if approximate.contains(&column.as_str()) {
                        tolerance
                    } else {
                        1e-9
                    };
                    (a - b).abs() <= tol * a.abs().max(b.abs()).max(1.0)
                }
                (a, b) => a == b,
            };
            assert!(
                equal,
                "{view} {key} `{column}`: stream {actual:?}, batch {expected:?}"
            );
        }
    }
}
