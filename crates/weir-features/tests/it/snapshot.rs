//! Point-in-time correctness: Feast's own test cases (ported with their
//! data and expected rows), edge cases, and a brute-force reference on
//! 100k random rows.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, Float64Array, Int64Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use weir_features::snapshot::{SnapshotOptions, ViewRows, snapshot};

const DAY: i64 = 86_400_000;
/// 2024-01-01T00:00Z.
const JAN1: i64 = 1_704_067_200_000;

fn write(path: &Path, batch: &RecordBatch) {
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
}

fn ms(column: Vec<i64>) -> Arc<dyn Array> {
    cast(
        &(Arc::new(Int64Array::from(column)) as Arc<dyn Array>),
        &DataType::Timestamp(TimeUnit::Millisecond, None),
    )
    .unwrap()
}

/// A label table of (customer_id, event_timestamp ms, label).
fn labels(dir: &Path, rows: &[(i64, i64, i64)]) -> PathBuf {
    let path = dir.join("labels.parquet");
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("customer_id", DataType::Int64, false),
            Field::new(
                "event_timestamp",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("label", DataType::Int64, false),
        ])),
        vec![
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            ms(rows.iter().map(|r| r.1).collect()),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap();
    write(&path, &batch);
    path
}

/// A view's rows: (key, feature time ms, created, value), keyed by `key`.
fn view(
    dir: &Path,
    name: &str,
    key: &str,
    rows: &[(i64, i64, i64, f64)],
    ttl: Option<Duration>,
) -> ViewRows {
    let path = dir.join(format!("{name}.parquet"));
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new(key, DataType::Int64, false),
            Field::new(
                "window_end",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("__created", DataType::Int64, false),
            Field::new("value", DataType::Float64, true),
        ])),
        vec![
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            ms(rows.iter().map(|r| r.1).collect()),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.3).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap();
    write(&path, &batch);
    ViewRows {
        name: name.into(),
        entity: vec![key.into()],
        features: vec!["value".into()],
        ttl,
        time: "window_end".into(),
        created: None,
        files: vec![path],
    }
}

/// The snapshot's rows: (label columns as i64, then each feature as f64).
async fn take(
    dir: &Path,
    labels: &Path,
    views: &[ViewRows],
    full: bool,
) -> (Vec<String>, Vec<Vec<Option<f64>>>) {
    let out = dir.join("snapshot.parquet");
    let stats = snapshot(
        labels,
        views,
        &out,
        &SnapshotOptions {
            full_feature_names: full,
            memory_limit: 256 << 20,
            scratch: dir.join("scratch"),
        },
    )
    .await
    .unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&out).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let columns: Vec<Arc<dyn Array>> = batch
            .columns()
            .iter()
            .map(|c| {
                let c = match c.data_type() {
                    DataType::Timestamp(..) => cast(c, &DataType::Int64).unwrap(),
                    _ => c.clone(),
                };
                cast(&c, &DataType::Float64).unwrap()
            })
            .collect();
        for row in 0..batch.num_rows() {
            rows.push(
                columns
                    .iter()
                    .map(|c| {
                        let c = c.as_any().downcast_ref::<Float64Array>().unwrap();
                        c.is_valid(row).then(|| c.value(row))
                    })
                    .collect(),
            );
        }
    }
    assert_eq!(rows.len(), stats.rows);
    (stats.columns, rows)
}

/// Feast's ibis unit test `test_point_in_time_join` (case A): ttl 10 days
/// and ttl 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feast_point_in_time_join_case() {
    let dir = tempfile::tempdir().unwrap();
    let entity = labels(
        dir.path(),
        &[
            (1, JAN1, 0),
            (1, JAN1 + DAY, 1),
            (2, JAN1, 2),
            (3, JAN1 + 2 * DAY, 3),
        ],
    );
    let rows = [
        (1, JAN1 - DAY, JAN1 - DAY, 11.0),
        (1, JAN1 + DAY, JAN1 + DAY, 22.0),
        (1, JAN1 + 2 * DAY, JAN1 + 2 * DAY, 33.0),
        (2, JAN1 - 363 * DAY, JAN1 - 363 * DAY, 22.0),
        (3, JAN1, JAN1 + 2 * DAY, 10.0),
        (3, JAN1, JAN1 + DAY, 20.0),
    ];
    let ten_days = view(
        dir.path(),
        "fv",
        "customer_id",
        &rows,
        Some(Duration::from_secs(10 * 86_400)),
    );
    let (columns, got) = take(dir.path(), &entity, &[ten_days], false).await;
    assert_eq!(
        columns,
        ["customer_id", "event_timestamp", "label", "value"]
    );
    let values: Vec<Option<f64>> = got.iter().map(|r| r[3]).collect();
    assert_eq!(values, [Some(11.0), Some(22.0), None, Some(10.0)]);
    // Rows keep the label table's order and columns.
    assert_eq!(
        got.iter().map(|r| r[2]).collect::<Vec<_>>(),
        [Some(0.0), Some(1.0), Some(2.0), Some(3.0)]
    );

    let forever = view(dir.path(), "fv", "customer_id", &rows, None);
    let (_, got) = take(dir.path(), &entity, &[forever], false).await;
    assert_eq!(got[2][3], Some(22.0), "ttl 0: no lower bound");
}

/// Feast's `test_historical_features_containing_backfills` (case B): a
/// later event time beats a later created time; at equal event times the
/// later created wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feast_backfills_case() {
    let dir = tempfile::tempdir().unwrap();
    let (t0, t1, t2) = (JAN1, JAN1 + DAY, JAN1 + 2 * DAY);
    let entity = labels(dir.path(), &[(1001, t2, 0), (1002, t2, 1)]);
    let stats = view(
        dir.path(),
        "driver_stats",
        "customer_id",
        &[
            (1001, t0, t0, 10.0),
            (1001, t0, t1, 20.0),
            (1002, t0, t1, 30.0),
            (1002, t1, t0, 40.0),
        ],
        None,
    );
    let (_, got) = take(dir.path(), &entity, &[stats], false).await;
    assert_eq!(
        got.iter().map(|r| r[3]).collect::<Vec<_>>(),
        [Some(20.0), Some(40.0)]
    );
}

/// Edge cases (case G): an unknown entity and one with only future rows
/// keep their rows with nulls; duplicate label rows both stay; the TTL's
/// lower bound is inclusive (10 days) and exclusive one second short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_cases() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        (1, JAN1 - DAY, JAN1 - DAY, 11.0),
        (1, JAN1 + DAY, JAN1 + DAY, 22.0),
        (1, JAN1 + 2 * DAY, JAN1 + 2 * DAY, 33.0),
        (3, JAN1, JAN1 + 2 * DAY, 10.0),
    ];
    // G1: unknown entity 9, entity 3 before any of its rows.
    let entity = labels(
        dir.path(),
        &[
            (9, JAN1 + 4 * DAY, 0),
            (3, JAN1 - 31 * DAY, 1),
            (1, JAN1 + 4 * DAY, 2),
        ],
    );
    let fv = view(dir.path(), "fv1", "customer_id", &rows, None);
    let (columns, got) = take(dir.path(), &entity, &[fv], true).await;
    assert_eq!(columns[3], "fv1__value");
    assert_eq!(
        got.iter().map(|r| r[3]).collect::<Vec<_>>(),
        [None, None, Some(33.0)]
    );
    // G2: the same (entity, time) twice: both rows stay.
    let entity = labels(
        dir.path(),
        &[(1, JAN1 + 10 * DAY, 5), (1, JAN1 + 10 * DAY, 6)],
    );
    let fv = view(
        dir.path(),
        "fv1",
        "customer_id",
        &rows,
        Some(Duration::from_secs(10 * 86_400)),
    );
    let (_, got) = take(dir.path(), &entity, &[fv], false).await;
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got[0][2], got[0][3], got[1][2], got[1][3]),
        (Some(5.0), Some(33.0), Some(6.0), Some(33.0))
    );
    // G3/G4: exactly ttl old is in; a second short of it is out.
    let entity = labels(dir.path(), &[(1, JAN1 + 9 * DAY, 0)]);
    let only = [(1, JAN1 - DAY, JAN1 - DAY, 11.0)];
    let fv = view(
        dir.path(),
        "fv1",
        "customer_id",
        &only,
        Some(Duration::from_secs(10 * 86_400)),
    );
    assert_eq!(
        take(dir.path(), &entity, &[fv], false).await.1[0][3],
        Some(11.0)
    );
    let fv = view(
        dir.path(),
        "fv1",
        "customer_id",
        &only,
        Some(Duration::from_secs(10 * 86_400 - 1)),
    );
    assert_eq!(take(dir.path(), &entity, &[fv], false).await.1[0][3], None);
}

/// Two views on different keys (case G6), with full names, each joined on
/// its own key with its own times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_views_on_their_own_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labels.csv");
    std::fs::write(
        &path,
        "customer_id,driver_id,event_timestamp\n1,7,2024-01-02T00:00:00Z\n1,8,2024-01-05T00:00:00Z\n3,7,2024-01-05T01:00:00+01:00\n",
    )
    .unwrap();
    let fv1 = view(
        dir.path(),
        "fv1",
        "customer_id",
        &[
            (1, JAN1 - DAY, JAN1 - DAY, 11.0),
            (1, JAN1 + DAY, JAN1 + DAY, 22.0),
            (1, JAN1 + 2 * DAY, JAN1 + 2 * DAY, 33.0),
            (3, JAN1, JAN1 + 2 * DAY, 10.0),
        ],
        None,
    );
    let fv2 = view(
        dir.path(),
        "fv2",
        "driver_id",
        &[
            (7, JAN1, JAN1, 100.0),
            (7, JAN1 + 3 * DAY, JAN1 + 3 * DAY, 200.0),
        ],
        None,
    );
    let (columns, got) = take(dir.path(), &path, &[fv2, fv1], true).await;
    assert_eq!(
        columns,
        [
            "customer_id",
            "driver_id",
            "event_timestamp",
            "fv2__value",
            "fv1__value"
        ]
    );
    let values: Vec<(Option<f64>, Option<f64>)> = got.iter().map(|r| (r[3], r[4])).collect();
    assert_eq!(
        values,
        [
            (Some(100.0), Some(22.0)),
            (None, Some(33.0)),
            (Some(200.0), Some(10.0))
        ]
    );
    // A time with a zone is the same instant in UTC.
    assert_eq!(got[2][2], Some((JAN1 + 4 * DAY) as f64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_label_tables_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let fv = view(
        dir.path(),
        "fv",
        "customer_id",
        &[(1, JAN1, JAN1, 1.0)],
        None,
    );
    let options = SnapshotOptions {
        full_feature_names: false,
        memory_limit: 64 << 20,
        scratch: dir.path().join("scratch"),
    };
    let out = dir.path().join("out.parquet");
    let no_time = dir.path().join("no_time.csv");
    std::fs::write(&no_time, "customer_id,ts\n1,2024-01-01T00:00:00Z\n").unwrap();
    let error = snapshot(&no_time, std::slice::from_ref(&fv), &out, &options)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("no_time.csv") && error.contains("event_timestamp"),
        "{error}"
    );
    let bad_time = dir.path().join("bad_time.csv");
    std::fs::write(&bad_time, "customer_id,event_timestamp\n1,yesterday\n").unwrap();
    let error = snapshot(&bad_time, std::slice::from_ref(&fv), &out, &options)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("bad_time.csv") && error.contains("row 1 is not a time: `yesterday`"),
        "{error}"
    );
    let no_key = dir.path().join("no_key.csv");
    std::fs::write(&no_key, "user,event_timestamp\n1,2024-01-01T00:00:00Z\n").unwrap();
    let error = snapshot(&no_key, &[fv], &out, &options)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("customer_id"), "{error}");
}

/// 100k label rows against 200k feature rows of 1,000 entities, with a TTL
/// and ties: every value equals a brute-force reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brute_force_reference_agrees_on_100k_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let span = 30 * DAY;
    let features: Vec<(i64, i64, i64, f64)> = (0..200_000)
        .map(|i| {
            let t = JAN1 + rng.random_range(0..span / 60_000) * 60_000; // whole minutes: ties happen
            (
                rng.random_range(0..1_000),
                t,
                i,
                rng.random_range(0..1_000_000) as f64,
            )
        })
        .collect();
    let entity_rows: Vec<(i64, i64, i64)> = (0..100_000)
        .map(|i| {
            (
                rng.random_range(0..1_050),
                JAN1 + rng.random_range(0..span),
                i,
            )
        })
        .collect();
    let ttl = Duration::from_secs(2 * 86_400);
    let entity = labels(dir.path(), &entity_rows);
    let fv = view(dir.path(), "fv", "customer_id", &features, Some(ttl));
    let (_, got) = take(dir.path(), &entity, &[fv], false).await;

    // By key, sorted by (time, created).
    let mut by_key: std::collections::HashMap<i64, Vec<(i64, i64, f64)>> = Default::default();
    for (k, t, c, v) in &features {
        by_key.entry(*k).or_default().push((*t, *c, *v));
    }
    for rows in by_key.values_mut() {
        rows.sort_by_key(|(t, c, _)| (*t, *c));
    }
    let ttl_ms = ttl.as_millis() as i64;
    assert_eq!(got.len(), entity_rows.len());
    let mut present = 0;
    for ((k, t, label), row) in entity_rows.iter().zip(&got) {
        let want = by_key
            .get(k)
            .and_then(|rows| rows.iter().rev().find(|(ft, _, _)| ft <= t))
            .filter(|(ft, _, _)| t - ft <= ttl_ms)
            .map(|(_, _, v)| *v);
        assert_eq!(row[2], Some(*label as f64), "row order");
        assert_eq!(row[3], want, "customer {k} at {t}");
        present += usize::from(want.is_some());
    }
    assert!(
        present > 50_000 && present < 100_000,
        "{present} rows with a value"
    );
}
