//! A feature view without a window — rows of precomputed features, each
//! with its own event time, Feast's most common case — snapshotted with
//! Feast's point-in-time semantics, and compared with Feast's own answer:
//! inclusive bounds at the row's time and at exactly the TTL, ties on
//! event time broken by the created time, a later event created earlier,
//! an entity with no rows, a label before any row. The online store
//! answers with the same row.

use std::process::Command;

use datafusion::arrow::array::{Array as _, AsArray as _};
use datafusion::arrow::datatypes::Float64Type;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Value as Json, json};

use crate::support::{Platform, json_lines, python, repo, stderr};

const HOUR: i64 = 3_600_000;

/// `(driver, event time, created time, rate)`, in the order published.
const ROWS: &[(&str, i64, i64, f64)] = &[
    ("d1", 0, 0, 1.0),
    ("d1", HOUR, HOUR, 2.0),
    // Two rows of one event time: the one created last wins, though it
    // was written first.
    ("d1", 2 * HOUR, 2 * HOUR + 500, 3.5),
    ("d1", 2 * HOUR, 2 * HOUR + 100, 3.1),
    // A later event created earlier: the event time decides.
    ("d2", 0, 5 * HOUR, 10.0),
    ("d2", HOUR, HOUR / 2, 20.0),
];

/// `(driver, label time)`: each a case of Feast's semantics.
const LABELS: &[(&str, i64)] = &[
    ("d1", HOUR),            // at a row's time: that row (inclusive)
    ("d1", 2 * HOUR),        // a tie on event time: the later created
    ("d1", 3 * HOUR),        // exactly the TTL after the last row: still it
    ("d1", 3 * HOUR + 1000), // past the TTL: nothing
    ("d1", -1000),           // before any row: nothing
    ("d2", HOUR + 60_000),   // the later event, though created earlier
    ("d3", HOUR),            // an entity with no rows: nothing
];

fn rfc3339(t0: i64, ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(t0 + ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A view of the rows as they are. Precomputed feature rows come in no
/// order of event time (here d2's after d1's later ones): the view allows
/// a day's lateness, else they would be dead letters.
fn view(name: &str, created: bool) -> String {
    format!(
        "---\nname: {name}\nentity: [driver]\nttl: 1h\n{}sources:\n  stats: {{topic: driver_stats, event_time: event_ts, lateness: 1d, \
         schema: {{driver: string, rate: double, event_ts: long, created: long}}}}\n---\n\
         SELECT driver, rate{} FROM stats\n",
        if created {
            "created_timestamp: created\n"
        } else {
            ""
        },
        if created { ", created" } else { "" }
    )
}

/// The snapshot's `rate` column (full feature names), in label order.
fn snapshot_rates(path: &std::path::Path, column: &str) -> Vec<Option<f64>> {
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap();
    let mut rates = Vec::new();
    for batch in reader.build().unwrap() {
        let batch = batch.unwrap();
        let rate = batch
            .column_by_name(column)
            .unwrap_or_else(|| panic!("no {column} in {:?}", batch.schema()));
        let rate = rate.as_primitive::<Float64Type>();
        rates.extend((0..rate.len()).map(|i| rate.is_valid(i).then(|| rate.value(i))));
    }
    rates
}

#[test]
fn a_view_without_a_window_snapshots_as_feast_does() {
    let platform = Platform::start();
    let dir = tempfile::tempdir().unwrap();
    // Times are relative to two and a half hours ago (in whole seconds),
    // so that the online store, which answers as of now, finds d1's last
    // rows within the TTL.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let t0 = now / 1000 * 1000 - 5 * HOUR / 2;
    let rows: String = ROWS
        .iter()
        .map(|(driver, event, created, rate)| {
            json!({"driver": driver, "rate": rate, "event_ts": t0 + event, "created": t0 + created})
                .to_string()
                + "\n"
        })
        .collect();
    let rows_file = dir.path().join("rows.jsonl");
    std::fs::write(&rows_file, &rows).unwrap();
    platform.run(
        &["topics", "create", "driver_stats", "--partitions", "2"],
        b"",
    );
    platform.run(
        &[
            "publish",
            "driver_stats",
            rows_file.to_str().unwrap(),
            "--key",
            "driver",
        ],
        b"",
    );
    let views = dir.path().join("views");
    std::fs::create_dir(&views).unwrap();
    std::fs::write(views.join("driver_stats.sql"), view("driver_stats", true)).unwrap();
    std::fs::write(views.join("driver_plain.sql"), view("driver_plain", false)).unwrap();
    platform.run(
        &["features", "apply", views.to_str().unwrap(), "--until-end"],
        b"",
    );

    let labels: String = std::iter::once("driver,event_timestamp,label\n".to_string())
        .chain(
            LABELS
                .iter()
                .enumerate()
                .map(|(i, (driver, at))| format!("{driver},{},{i}\n", rfc3339(t0, *at))),
        )
        .collect();
    let labels_file = dir.path().join("labels.csv");
    std::fs::write(&labels_file, labels).unwrap();
    let out = dir.path().join("snapshot.parquet");
    platform.run(
        &[
            "snapshot",
            labels_file.to_str().unwrap(),
            "--view",
            "driver_stats",
            "--view",
            "driver_plain",
            "--full-feature-names",
            "--out",
            out.to_str().unwrap(),
        ],
        b"",
    );
    let weir = snapshot_rates(&out, "driver_stats__rate");
    assert_eq!(
        weir,
        vec![
            Some(2.0),
            Some(3.5),
            Some(3.5),
            None,
            None,
            Some(20.0),
            None
        ],
        "Weir's snapshot"
    );
    // Without a created time, a tie goes to the row written last.
    let plain = snapshot_rates(&out, "driver_plain__rate");
    assert_eq!(plain[1], Some(3.1), "{plain:?}");

    let feast = Command::new(python())
        .arg(repo().join("tests/python/feast_pit.py"))
        .args([
            rows_file.to_str().unwrap(),
            labels_file.to_str().unwrap(),
            "3600",
        ])
        .output()
        .unwrap();
    assert!(feast.status.success(), "feast_pit.py: {}", stderr(&feast));
    let feast: Vec<(usize, Option<f64>)> = json_lines(&feast)
        .iter()
        .map(|row| {
            (
                row["label"].as_u64().unwrap() as usize,
                row["rate"].as_f64(),
            )
        })
        .collect();
    // Feast's file offline store drops a label row of an entity that has
    // feature rows but none in its bounds (its TTL filter runs after the
    // join), though its documented semantics keep it with nulls, as Weir
    // does: those rows have no answer of Feast's to compare with.
    let answered: Vec<usize> = feast.iter().map(|(row, _)| *row).collect();
    assert_eq!(answered, [0, 1, 2, 5, 6], "the rows Feast answers");
    for (row, rate) in feast {
        assert_eq!(weir[row], rate, "label row {row}: Weir against Feast");
    }

    // The online store serves the row a snapshot at the latest time takes.
    let got = platform.run(&["features", "get", "driver_stats", "d1"], b"");
    let got: Json = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(got["values"]["rate"], json!(3.5), "{got}");
}
