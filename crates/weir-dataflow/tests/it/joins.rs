//! Stream–stream interval joins against a brute-force reference: inner and
//! left-outer, out-of-order input with repeated keys and rows, late rows
//! dead-lettered, 1 and 2 workers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use weir_bus::{Bus, ConsumerOptions, OutRecord, StartFrom, TopicSpec};
use weir_dataflow::aggregate::Emit;
use weir_dataflow::interval_join::IntervalJoin;
use weir_dataflow::job::{Aggregation, Cluster, JobSpec, KafkaSource, Source, start};
use weir_dataflow::lookup::JoinKind;
use weir_dataflow::window::Window;

use crate::support::{Harness, memory};

const BASE: i64 = 1_700_000_000_000;

#[derive(Debug, Clone)]
struct Served {
    id: String,
    variant: String,
    ts: i64,
}

#[derive(Debug, Clone)]
struct Label {
    id: String,
    label: i64,
    ts: i64,
}

/// Requests served over 200 s (ids repeat: a key has several rows), and
/// labels for 90 % of them from 2 s before to 14 s after (the join takes 0
/// to 10 s), some twice, some for ids never served; 2 s of disorder.
fn data(seed: u64, count: i64) -> (Vec<Served>, Vec<Label>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let served: Vec<Served> = (0..count)
        .map(|i| Served {
            id: format!("r{}", rng.random_range(0..count * 3 / 4)),
            variant: ["a", "b"][rng.random_range(0..2)].to_string(),
            ts: BASE + i * 50 - rng.random_range(0..2_000),
        })
        .collect();
    let mut labels = Vec::new();
    for s in &served {
        if rng.random_range(0..10) == 0 {
            continue;
        }
        let label = Label {
            id: s.id.clone(),
            label: rng.random_range(0..2),
            ts: s.ts + rng.random_range(-2_000..14_000),
        };
        if rng.random_range(0..20) == 0 {
            labels.push(label.clone());
        }
        labels.push(label);
    }
    for i in 0..100 {
        labels.push(Label {
            id: format!("unknown{i}"),
            label: 1,
            ts: BASE + i * 2_000,
        });
    }
    // Published in time order, up to 2 s out of it.
    labels.sort_by_cached_key(|l| l.ts + rng.random_range(0..2_000));
    (served, labels)
}

async fn publish(bus: &Bus, topic: &str, rows: Vec<(String, serde_json::Value)>) {
    let admin = bus.admin();
    if admin.partitions(topic).await.is_err() {
        admin.create_topic(&TopicSpec::new(topic, 2)).await.unwrap();
    }
    let producer = bus.producer().unwrap();
    let mut pending = Vec::new();
    for (key, value) in rows {
        let bytes = serde_json::to_vec(&value).unwrap();
        pending.push(
            producer
                .send(OutRecord::new(topic, &bytes).key(key.as_bytes()))
                .await
                .unwrap(),
        );
    }
    for delivery in pending {
        delivery.await.unwrap();
    }
}

/// `(id, variant, ts, label, label_ts)`.
type Joined = (String, String, i64, Option<i64>, Option<i64>);

fn reference(served: &[Served], labels: &[Label], kind: JoinKind) -> Vec<Joined> {
    let mut by_id: HashMap<&str, Vec<&Label>> = HashMap::new();
    for l in labels {
        by_id.entry(&l.id).or_default().push(l);
    }
    let mut out = Vec::new();
    for s in served {
        let mut matched = false;
        for l in by_id.get(s.id.as_str()).into_iter().flatten() {
            if s.ts <= l.ts && l.ts <= s.ts + 10_000 {
                matched = true;
                out.push((
                    s.id.clone(),
                    s.variant.clone(),
                    s.ts,
                    Some(l.label),
                    Some(l.ts),
                ));
            }
        }
        if !matched && kind == JoinKind::Left {
            out.push((s.id.clone(), s.variant.clone(), s.ts, None, None));
        }
    }
    out.sort();
    out
}

fn job(
    name: &str,
    state: &std::path::Path,
    kind: JoinKind,
) -> (JobSpec, weir_dataflow::job::MemorySink) {
    let source = |topic: &str, fields: Vec<Field>| {
        let mut source = KafkaSource::new(topic, "ts");
        source.schema = Some(Arc::new(Schema::new(fields)));
        source.lateness = Duration::from_secs(5);
        source.bounded = true;
        source
    };
    let served = source(
        "served",
        vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("variant", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
        ],
    );
    let labels = source(
        "labels",
        vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("label", DataType::Int64, false),
            Field::new("ts", DataType::Int64, false),
        ],
    );
    let (sink, memory) = memory();
    let job = JobSpec::new(name, Source::Kafka(served), sink, state)
        .checkpoint_every(Duration::from_millis(200))
        .join(IntervalJoin {
            right: labels,
            on: vec![("id".into(), "id".into())],
            lower: 0,
            upper: 10_000,
            kind,
            columns: vec![
                ("label".into(), "label".into()),
                ("ts".into(), "label_ts".into()),
            ],
        });
    (job, memory)
}

fn joined(batches: &[arrow::array::RecordBatch]) -> Vec<Joined> {
    let mut out = Vec::new();
    for batch in batches {
        let text = |i: usize| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone()
        };
        let long = |i: usize| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .clone()
        };
        let (ids, variants, ts, labels, label_ts) = (text(0), text(1), long(2), long(3), long(4));
        for row in 0..batch.num_rows() {
            let opt = |a: &Int64Array| (!a.is_null(row)).then(|| a.value(row));
            out.push((
                ids.value(row).to_string(),
                variants.value(row).to_string(),
                ts.value(row),
                opt(&labels),
                opt(&label_ts),
            ));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_joins_equal_a_brute_force_reference() {
    let h = Harness::start().await;
    let (served, labels) = data(5, 4_000);
    let row = |s: &Served| {
        (
            s.id.clone(),
            json!({"id": s.id, "variant": s.variant, "ts": s.ts}),
        )
    };
    let label_row = |l: &Label| {
        (
            l.id.clone(),
            json!({"id": l.id, "label": l.label, "ts": l.ts}),
        )
    };
    publish(&h.bus, "served", served.iter().map(row).collect()).await;
    publish(&h.bus, "labels", labels.iter().map(label_row).collect()).await;
    // Labels far behind the newest: later than the 5 s allowed, dead-lettered.
    let late: Vec<Label> = served[..7]
        .iter()
        .map(|s| Label {
            id: s.id.clone(),
            label: 0,
            ts: s.ts,
        })
        .collect();
    publish(&h.bus, "labels", late.iter().map(label_row).collect()).await;

    let mut letters_seen = 0;
    for kind in [JoinKind::Inner, JoinKind::Left] {
        for workers in [1, 2] {
            let state = tempfile::tempdir().unwrap();
            let (job, sink) = job(&format!("join-{kind:?}-{workers}"), state.path(), kind);
            let handle = start(job, &h.bus, Cluster::local(workers)).await.unwrap();
            let status = tokio::task::spawn_blocking(move || handle.join())
                .await
                .unwrap()
                .unwrap();
            // The late labels this run dead-lettered: a label is late once
            // every partition of its worker has been read past its time
            // plus the lateness, so which of them are depends on the order
            // partitions are read in. No other row may be.
            let letters = dead_letters(&h.bus).await;
            let dead: Vec<(String, i64)> = letters[letters_seen..].to_vec();
            letters_seen = letters.len();
            for letter in &dead {
                assert!(
                    late.iter().any(|l| (&l.id, l.ts) == (&letter.0, letter.1)),
                    "{letter:?} was dead-lettered"
                );
            }
            assert_eq!(
                status.late,
                dead.len() as u64,
                "{kind:?}, {workers} worker(s)"
            );
            let mut kept = labels.clone();
            kept.extend(
                late.iter()
                    .filter(|l| !dead.contains(&(l.id.clone(), l.ts)))
                    .cloned(),
            );
            let expected = reference(&served, &kept, kind);
            let got = joined(&sink.batches());
            assert_eq!(
                got.len(),
                expected.len(),
                "{kind:?}, {workers} worker(s): rows"
            );
            assert_eq!(got, expected, "{kind:?}, {workers} worker(s)");
            assert_eq!(
                status.records_in,
                (served.len() + labels.len() + late.len()) as u64
            );
            // Each topic's progress under its own name: every offset read.
            let read = |p: &std::collections::BTreeMap<
                i32,
                weir_dataflow::job::PartitionStatus,
            >| { (p.len(), p.values().map(|s| s.offset).sum::<i64>()) };
            assert_eq!(read(&status.partitions), (2, served.len() as i64));
            assert_eq!(
                read(&status.joined_partitions),
                (2, (labels.len() + late.len()) as i64)
            );
            println!(
                "{kind:?}, {workers} worker(s): {} rows, {} late labels dead-lettered",
                got.len(),
                dead.len()
            );
        }
    }
}

/// `(id, ts)` of every record in the labels' dead-letter topic.
async fn dead_letters(bus: &Bus) -> Vec<(String, i64)> {
    let mut reader = bus
        .consumer(
            &["weir.dlq.labels"],
            ConsumerOptions {
                start: StartFrom::Beginning,
                until_end: true,
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
    let mut letters = Vec::new();
    while let Some(letter) = reader.next_raw().await.unwrap() {
        let value: serde_json::Value =
            serde_json::from_slice(letter.payload.as_deref().unwrap()).unwrap();
        letters.push((
            value["id"].as_str().unwrap().to_string(),
            value["ts"].as_i64().unwrap(),
        ));
    }
    letters
}

/// Windows after a left-outer join count every row it emits, matched or
/// not (an unmatched row comes out only once the watermark has passed its
/// time plus the bound). This input is read in one go, so the watermark
/// reaches the join in one step: a join that did not hold its output
/// watermark back would pass too; that it must is argued in
/// `interval_join.rs`, not shown here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_after_a_join_count_its_unmatched_rows() {
    let h = Harness::start().await;
    let (served, labels) = data(6, 4_000);
    let row = |s: &Served| {
        (
            s.id.clone(),
            json!({"id": s.id, "variant": s.variant, "ts": s.ts}),
        )
    };
    let label_row = |l: &Label| {
        (
            l.id.clone(),
            json!({"id": l.id, "label": l.label, "ts": l.ts}),
        )
    };
    publish(&h.bus, "served", served.iter().map(row).collect()).await;
    publish(&h.bus, "labels", labels.iter().map(label_row).collect()).await;

    let (job, sink) = job("join-windows", h.dir.path(), JoinKind::Left);
    let job = job.aggregate(Aggregation {
        filter: None,
        keys: vec!["variant".into()],
        window: Window::tumbling(Duration::from_secs(1)).unwrap(),
        aggregates: vec![
            ("n".into(), "count(*)".into()),
            ("labelled".into(), "count(label)".into()),
        ],
        emit: Emit::OnClose,
    });
    let handle = start(job, &h.bus, Cluster::local(2)).await.unwrap();
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap()
        .unwrap();

    let mut expected: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    for (_, variant, ts, label, _) in reference(&served, &labels, JoinKind::Left) {
        let entry = expected
            .entry((variant, ts - ts.rem_euclid(1_000)))
            .or_default();
        entry.0 += 1;
        entry.1 += i64::from(label.is_some());
    }
    let mut got: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    for batch in sink.batches() {
        let schema = batch.schema();
        let column = |name: &str| batch.column(schema.index_of(name).unwrap()).clone();
        let variants = column("variant");
        let variants = variants.as_any().downcast_ref::<StringArray>().unwrap();
        let starts = arrow::compute::cast(&column("window_start"), &DataType::Int64).unwrap();
        let starts = starts.as_any().downcast_ref::<Int64Array>().unwrap();
        let (n, labelled) = (column("n"), column("labelled"));
        let n = n.as_any().downcast_ref::<Int64Array>().unwrap();
        let labelled = labelled.as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..batch.num_rows() {
            let previous = got.insert(
                (variants.value(i).to_string(), starts.value(i)),
                (n.value(i), labelled.value(i)),
            );
            assert!(previous.is_none(), "a window emitted twice");
        }
    }
    assert_eq!(got, expected);
}
