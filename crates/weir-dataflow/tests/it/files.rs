//! Parquet and table sinks, and Parquet files as a backfill source.

use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::array::{Array, Float64Array, RecordBatch};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use weir_dataflow::job::{Cluster, JobSpec, ParquetSource, Select, Sink, Source, start};
use weir_dataflow::window::Window;

use crate::support::{Harness, Results, events, memory, publish, run_to_end, spec};

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    files
}

fn read_parquet(dir: &Path) -> Vec<RecordBatch> {
    parquet_files(dir)
        .iter()
        .flat_map(|path| {
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
                .unwrap()
                .build()
                .unwrap()
                .map(Result::unwrap)
        })
        .collect()
}

async fn run(h: &Harness, job: JobSpec, threads: usize) {
    let handle = start(job, &h.bus, Cluster::local(threads)).await.unwrap();
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap()
        .unwrap();
}

/// A job `name` copying `topic` into Parquet files under `archive`.
fn archive_job(h: &Harness, name: &str, topic: &str, archive: &Path, window: Window) -> JobSpec {
    let mut job = spec(
        name,
        topic,
        h.dir.path(),
        window,
        Sink::Parquet {
            dir: archive.to_path_buf(),
        },
    );
    job.aggregation = None;
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_archived_to_parquet_backfills_the_same_windows() {
    let h = Harness::start().await;
    let data = events(9_000, 30, 50, 1_000, 8);
    publish(&h.bus, "archive-in", 3, &data).await;
    let archive = h.dir.path().join("archive");
    let window = Window::tumbling(Duration::from_secs(30)).unwrap();

    // Stateless: filter and project into Parquet, one file per worker and
    // epoch, nothing staged left over.
    let mut job = archive_job(&h, "archive", "archive-in", &archive, window);
    job.select = Some(Select {
        filter: Some("amount > 100".into()),
        columns: Some(vec![
            ("user_id".into(), "user_id".into()),
            ("merchant_id".into(), "merchant_id".into()),
            ("amount".into(), "amount".into()),
            ("event_time".into(), "event_time".into()),
        ]),
    });
    run(&h, job.clone(), 2).await;
    let kept: Vec<_> = data.iter().filter(|e| e.amount > 100.0).cloned().collect();
    let batches = read_parquet(&archive);
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows, kept.len(), "every kept event once");
    let total: f64 = batches
        .iter()
        .map(|b| {
            let amounts = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
            amounts.iter().flatten().sum::<f64>()
        })
        .sum();
    let want: f64 = kept.iter().map(|e| e.amount).sum();
    assert!((total - want).abs() < 1e-6 * want);
    assert_eq!(
        std::fs::read_dir(archive.join(".staging")).unwrap().count(),
        0
    );

    // Run again: the source is at its end, so nothing is written twice.
    let files = parquet_files(&archive);
    run(&h, job, 2).await;
    let again: usize = read_parquet(&archive)
        .iter()
        .map(RecordBatch::num_rows)
        .sum();
    assert_eq!(again, kept.len());
    assert!(parquet_files(&archive).len() >= files.len());

    // Backfill: the archive as a source gives the windows of the kept events.
    let (sink, _) = memory();
    let mut backfill = spec("backfill", "unused", h.dir.path(), window, sink);
    backfill.source = Source::Parquet(ParquetSource {
        path: archive.clone(),
        event_time: "event_time".into(),
    });
    let got = run_to_end(&h.bus, backfill, Cluster::local(2)).await;
    got.assert_matches(&Results::reference(&kept, window));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_upsert_a_rocksdb_table() {
    let h = Harness::start().await;
    let data = events(5_000, 20, 50, 1_000, 9);
    publish(&h.bus, "table-in", 2, &data).await;
    let path = h.dir.path().join("spend.db");
    let window = Window::tumbling(Duration::from_secs(60)).unwrap();
    let job = spec(
        "table",
        "table-in",
        h.dir.path(),
        window,
        Sink::Table {
            path: path.clone(),
            key: Vec::new(),
        },
    );
    run(&h, job, 2).await;
    let reference = Results::reference(&data, window);
    for ((user, start), row) in &reference.0 {
        let stored = weir_dataflow::sink::read_table(&path, &format!("{user}|{start}"))
            .unwrap()
            .unwrap_or_else(|| panic!("{user}|{start} missing"));
        assert_eq!(stored["n"], row.n, "{user}|{start}");
        assert_eq!(stored["merchants"], row.merchants);
        assert!((stored["total"].as_f64().unwrap() - row.total).abs() < 1e-6);
    }
}

/// One worker failing while it starts (here: its file is not Parquet)
/// fails the whole job, with that worker's error, and the job ends: the
/// other worker does not wait for it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_fails_at_its_start_fails_the_job() {
    let h = Harness::start().await;
    let data = events(2_000, 30, 50, 1_000, 8);
    publish(&h.bus, "broken-in", 2, &data).await;
    let archive = h.dir.path().join("archive");
    let window = Window::tumbling(Duration::from_secs(30)).unwrap();
    let job = archive_job(&h, "broken-archive", "broken-in", &archive, window);
    run(&h, job, 2).await;
    let files = parquet_files(&archive);
    assert!(files.len() >= 2, "one file per worker at least: {files:?}");
    // The second file is the second worker's.
    std::fs::write(&files[1], b"not parquet").unwrap();

    let (sink, _) = memory();
    let mut backfill = spec("broken-backfill", "unused", h.dir.path(), window, sink);
    backfill.source = Source::Parquet(ParquetSource {
        path: archive.clone(),
        event_time: "event_time".into(),
    });
    let handle = start(backfill, &h.bus, Cluster::local(2)).await.unwrap();
    // A thread of its own: a job that never ends must fail the test, not
    // hold it at the runtime's shutdown.
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(handle.join()));
    let ended = receiver
        .recv_timeout(Duration::from_secs(60))
        .expect("the job ended within 60 s");
    let error = ended.expect_err("the job failed").to_string();
    let name = files[1].file_name().unwrap().to_string_lossy().into_owned();
    assert!(error.contains(&name), "the error names the file: {error}");
}
