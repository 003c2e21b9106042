//! The offline archive: a topic's records in Parquet files, partitioned by
//! date and hour, exactly once.
//!
//! ```text
//! <dir>/<topic>/date=2026-11-26/hour=14/p0002-00000000000000041000-00000000000000041999.parquet
//! ```
//!
//! Each file holds a contiguous run of one partition's records (columns
//! `partition`, `offset`, `timestamp`, `key`, `value` — the decoded value as
//! JSON) and is named by its first and last offsets. A partition has one
//! file open at a time, closed when it has enough rows, when it has been
//! open long enough, or when a record belongs to another hour; so a
//! partition's files tile its offsets, and where to resume is the file
//! names' largest last offset + 1. A file is written as records arrive
//! under `.staging/`, then synced and renamed into place when it closes: a
//! crash leaves at most staging files (removed at the next start, their
//! records read again), never a half file or a record twice.
//!
//! Hours are the records' Kafka timestamps (UTC). Records that cannot be
//! decoded are skipped (counted; the pipeline that reads the topic
//! dead-letters them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use weir_bus::{Bus, ConsumerOptions, Record, StartFrom};

use crate::FeaturesError;

/// When files close.
#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    /// A file closes at this many records.
    pub roll_rows: usize,
    /// A file closes once it has been open this long (following a topic).
    pub roll_after: Duration,
    /// Stop at the topic's end (else follow it until `stop`).
    pub until_end: bool,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        Self {
            roll_rows: 100_000,
            roll_after: Duration::from_secs(60),
            until_end: false,
        }
    }
}

/// What a run archived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveStats {
    /// Records written.
    pub records: u64,
    /// Files written.
    pub files: u64,
    /// Where each partition starts next.
    pub next: BTreeMap<i32, i64>,
}

fn failed(what: impl std::fmt::Display, error: impl std::fmt::Display) -> FeaturesError {
    FeaturesError::Archive(format!("{what}: {error}"))
}

/// The columns of every archive file.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
        Field::new("key", DataType::Utf8, true),
        Field::new("value", DataType::Utf8, false),
    ]))
}

/// `p0002-<first>-<last>.parquet` → (2, first, last).
fn parse_name(name: &str) -> Option<(i32, i64, i64)> {
    let stem = name.strip_suffix(".parquet")?.strip_prefix('p')?;
    let mut parts = stem.split('-');
    let partition = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((partition, first, last))
}

fn file_name(partition: i32, first: i64, last: i64) -> String {
    format!("p{partition:04}-{first:020}-{last:020}.parquet")
}

/// The archived files of `topic` under `dir`, in no order.
pub fn files(dir: &Path, topic: &str) -> Result<Vec<PathBuf>, FeaturesError> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            if entry.file_type()?.is_dir() {
                walk(&entry.path(), out)?;
            } else if parse_name(&name.to_string_lossy()).is_some() {
                out.push(entry.path());
            }
        }
        Ok(())
    }
    let root = dir.join(topic);
    let mut out = Vec::new();
    if root.exists() {
        walk(&root, &mut out).map_err(|e| failed(root.display(), e))?;
    }
    Ok(out)
}

/// Where each partition's archive ends: its largest archived offset + 1.
pub fn archived_until(dir: &Path, topic: &str) -> Result<BTreeMap<i32, i64>, FeaturesError> {
    let mut next = BTreeMap::new();
    for path in files(dir, topic)? {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if let Some((partition, _, last)) = parse_name(&name) {
            let end = next.entry(partition).or_insert(0);
            *end = (*end).max(last + 1);
        }
    }
    Ok(next)
}

/// The hour a record belongs to: `date=YYYY-MM-DD/hour=HH`.
fn hour_of(timestamp: Option<i64>) -> String {
    let time = chrono::DateTime::from_timestamp_millis(timestamp.unwrap_or(0)).unwrap_or_default();
    time.format("date=%Y-%m-%d/hour=%H").to_string()
}

/// Rows buffered before they are appended to the open file.
const CHUNK: usize = 1024;

/// One partition's open file: a Parquet writer on its staging file, and
/// the rows not yet appended to it.
struct Open {
    hour: String,
    opened: Instant,
    staged: PathBuf,
    writer: ArrowWriter<std::fs::File>,
    first: i64,
    last: i64,
    rows: usize,
    offsets: Vec<i64>,
    timestamps: Vec<Option<i64>>,
    keys: Vec<Option<String>>,
    values: Vec<String>,
}

impl Open {
    /// Appends the buffered rows to the file.
    fn append(&mut self, partition: i32, schema: &SchemaRef) -> Result<(), FeaturesError> {
        if self.offsets.is_empty() {
            return Ok(());
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from(vec![partition; self.offsets.len()])),
            Arc::new(Int64Array::from(std::mem::take(&mut self.offsets))),
            Arc::new(
                TimestampMillisecondArray::from(std::mem::take(&mut self.timestamps))
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from(std::mem::take(&mut self.keys))),
            Arc::new(StringArray::from(std::mem::take(&mut self.values))),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| failed("building a batch", e))?;
        self.writer
            .write(&batch)
            .map_err(|e| failed(self.staged.display(), e))
    }
}

struct Archive<'a> {
    root: PathBuf,
    schema: SchemaRef,
    options: &'a ArchiveOptions,
    open: BTreeMap<i32, Open>,
    stats: ArchiveStats,
}

impl Archive<'_> {
    fn add(&mut self, record: Record) -> Result<(), FeaturesError> {
        let hour = hour_of(record.timestamp);
        if self
            .open
            .get(&record.partition)
            .is_some_and(|o| o.hour != hour)
        {
            self.close(record.partition)?;
        }
        let open = match self.open.entry(record.partition) {
            std::collections::btree_map::Entry::Occupied(open) => open.into_mut(),
            std::collections::btree_map::Entry::Vacant(slot) => {
                let staged = self
                    .root
                    .join(".staging")
                    .join(format!("p{:04}-{:020}", record.partition, record.offset));
                let file =
                    std::fs::File::create(&staged).map_err(|e| failed(staged.display(), e))?;
                let properties = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .build();
                let writer = ArrowWriter::try_new(file, self.schema.clone(), Some(properties))
                    .map_err(|e| failed(staged.display(), e))?;
                slot.insert(Open {
                    hour,
                    opened: Instant::now(),
                    staged,
                    writer,
                    first: record.offset,
                    last: record.offset,
                    rows: 0,
                    offsets: Vec::new(),
                    timestamps: Vec::new(),
                    keys: Vec::new(),
                    values: Vec::new(),
                })
            }
        };
        open.last = record.offset;
        open.rows += 1;
        open.offsets.push(record.offset);
        open.timestamps.push(record.timestamp);
        open.keys
            .push(record.key.map(|k| String::from_utf8_lossy(&k).into_owned()));
        open.values.push(record.value.to_json().to_string());
        if open.offsets.len() >= CHUNK {
            open.append(record.partition, &self.schema)?;
        }
        if open.rows >= self.options.roll_rows {
            self.close(record.partition)?;
        }
        Ok(())
    }

    /// Finishes a partition's open file, syncs it, and renames it into
    /// place under its first and last offsets.
    fn close(&mut self, partition: i32) -> Result<(), FeaturesError> {
        let Some(mut open) = self.open.remove(&partition) else {
            return Ok(());
        };
        open.append(partition, &self.schema)?;
        let staged = open.staged;
        let file = open
            .writer
            .into_inner()
            .map_err(|e| failed(staged.display(), e))?;
        file.sync_all().map_err(|e| failed(staged.display(), e))?;
        let dir = self.root.join(&open.hour);
        std::fs::create_dir_all(&dir).map_err(|e| failed(dir.display(), e))?;
        let target = dir.join(file_name(partition, open.first, open.last));
        std::fs::rename(&staged, &target).map_err(|e| failed(target.display(), e))?;
        self.stats.records += open.rows as u64;
        self.stats.files += 1;
        self.stats.next.insert(partition, open.last + 1);
        Ok(())
    }

    fn close_stale(&mut self) -> Result<(), FeaturesError> {
        let stale: Vec<i32> = self
            .open
            .iter()
            .filter(|(_, o)| o.opened.elapsed() >= self.options.roll_after)
            .map(|(p, _)| *p)
            .collect();
        for partition in stale {
            self.close(partition)?;
        }
        Ok(())
    }
}

/// Archives `topic` into `dir` from where its archive ends, until the
/// topic's end (`until_end`) or until `stop` resolves; open files are
/// closed before returning.
pub async fn archive(
    bus: &Bus,
    topic: &str,
    dir: &Path,
    options: &ArchiveOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<ArchiveStats, FeaturesError> {
    let root = dir.join(topic);
    let staging = root.join(".staging");
    // What a crash left half-written: never renamed, so never visible.
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| failed(staging.display(), e))?;
    let next = archived_until(dir, topic)?;
    let mut consumer = bus
        .consumer(
            &[topic],
            ConsumerOptions {
                start: StartFrom::Offsets(
                    next.iter()
                        .map(|(p, o)| (topic.to_string(), *p, *o))
                        .collect(),
                ),
                until_end: options.until_end,
                read_only: true,
                ..Default::default()
            },
        )
        .map_err(|e| failed(topic, e))?;
    let mut archive = Archive {
        root,
        schema: schema(),
        options,
        open: BTreeMap::new(),
        stats: ArchiveStats {
            next,
            ..Default::default()
        },
    };
    // The consumer reads in a task of its own: `next()` is not
    // cancel-safe (it may hold a received record across an await), and the
    // loop below must wake up to close files that have been open too long.
    let (records, mut received) = tokio::sync::mpsc::channel(4096);
    let reader = tokio::spawn(async move {
        loop {
            let next = consumer.next().await;
            let last = !matches!(next, Ok(Some(_)));
            if records.send(next).await.is_err() || last {
                break;
            }
        }
    });
    tokio::pin!(stop);
    let tick = options.roll_after.min(Duration::from_secs(1));
    let result = loop {
        tokio::select! {
            () = &mut stop => break Ok(()),
            next = tokio::time::timeout(tick, received.recv()) => match next {
                Ok(Some(Ok(Some(record)))) => {
                    if let Err(error) = archive.add(record) {
                        break Err(error);
                    }
                }
                Ok(Some(Ok(None))) | Ok(None) => break Ok(()),
                Ok(Some(Err(error))) => break Err(failed(topic, error)),
                Err(_) => {}
            },
        }
        if let Err(error) = archive.close_stale() {
            break Err(error);
        }
    };
    reader.abort();
    result?;
    let partitions: Vec<i32> = archive.open.keys().copied().collect();
    for partition in partitions {
        archive.close(partition)?;
    }
    Ok(archive.stats)
}
