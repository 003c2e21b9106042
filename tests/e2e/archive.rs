//! `weir archive` killed at random points while records keep arriving:
//! after a last run to the topic's end, the Parquet files hold every
//! record of every partition exactly once, each file a contiguous run of
//! offsets named by its first and last.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use datafusion::arrow::array::{AsArray as _, RecordBatch};
use datafusion::arrow::datatypes::{Int32Type, Int64Type};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::{Rng as _, SeedableRng as _};

use crate::support::Platform;

fn publish(platform: &Platform, dir: &std::path::Path, from: usize, count: usize) {
    let lines: String = (from..from + count)
        .map(|i| {
            format!(
                "{{\"id\":{i},\"user\":\"u{}\",\"amount\":{}.5}}\n",
                i % 97,
                i % 13
            )
        })
        .collect();
    let file = dir.join(format!("batch-{from}.jsonl"));
    std::fs::write(&file, lines).unwrap();
    platform.run(
        &["publish", "clicks", file.to_str().unwrap(), "--key", "user"],
        b"",
    );
}

fn read(path: &std::path::Path) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn an_archiver_killed_mid_file_loses_and_repeats_nothing() {
    let platform = Platform::start();
    platform.run(&["topics", "create", "clicks", "--partitions", "3"], b"");
    let data = tempfile::tempdir().unwrap();
    let archive = tempfile::tempdir().unwrap();
    let dir = archive.path().to_str().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut published = 0;
    let mut killed_mid_file = 0;
    for _ in 0..5 {
        publish(&platform, data.path(), published, 4000);
        published += 4000;
        let mut archiver = platform
            .weir(&[
                "archive",
                "clicks",
                "--dir",
                dir,
                "--roll-rows",
                "700",
                "--roll-after",
                "1s",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(300..2500)));
        archiver.kill().unwrap();
        archiver.wait().unwrap();
        let staging = archive.path().join("clicks/.staging");
        if std::fs::read_dir(&staging).is_ok_and(|mut d| d.next().is_some()) {
            killed_mid_file += 1;
        }
    }
    assert!(
        killed_mid_file > 0,
        "some kill left a half-written file behind"
    );
    publish(&platform, data.path(), published, 1000);
    published += 1000;
    let last = platform.run(&["archive", "clicks", "--dir", dir, "--until-end"], b"");
    let summary = String::from_utf8_lossy(&last.stdout).into_owned();
    assert!(summary.starts_with("clicks: "), "{summary}");

    let files = weir_features::archive::files(archive.path(), "clicks").unwrap();
    let mut offsets: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for path in &files {
        let relative = path
            .strip_prefix(archive.path())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            relative.contains("/date=") && relative.contains("/hour="),
            "{relative}"
        );
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let parts: Vec<&str> = name.trim_end_matches(".parquet").split('-').collect();
        let (first, last): (i64, i64) = (parts[1].parse().unwrap(), parts[2].parse().unwrap());
        let mut in_file = Vec::new();
        for batch in read(path) {
            let partition = batch.column(0).as_primitive::<Int32Type>();
            let offset = batch.column(1).as_primitive::<Int64Type>();
            let values = batch.column(4).as_string::<i32>();
            for row in 0..batch.num_rows() {
                in_file.push(offset.value(row));
                offsets
                    .entry(partition.value(row))
                    .or_default()
                    .push(offset.value(row));
                let value: serde_json::Value = serde_json::from_str(values.value(row)).unwrap();
                assert!(
                    ids.insert(value["id"].as_i64().unwrap()),
                    "id {} twice",
                    value["id"]
                );
            }
        }
        assert_eq!(in_file.first(), Some(&first), "{name}");
        assert_eq!(in_file.last(), Some(&last), "{name}");
        assert!(
            in_file.windows(2).all(|w| w[1] == w[0] + 1),
            "{name} is one contiguous run"
        );
    }
    assert_eq!(ids.len(), published, "every record, once");
    for (partition, mut seen) in offsets {
        seen.sort_unstable();
        let expected: Vec<i64> = (0..seen.len() as i64).collect();
        assert_eq!(
            seen, expected,
            "partition {partition}: offsets 0.. once each"
        );
    }
    assert!(files.len() > 5, "files rolled: {}", files.len());
}
