//! What a job reads: a Kafka topic or Parquet files, where event time comes
//! from, and where a source starts.

use std::path::PathBuf;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::DataflowError;

/// Where event time comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventTime {
    /// A column (milliseconds since the epoch, or a timestamp).
    Field(String),
    /// The Kafka record's timestamp, as the column `_timestamp`.
    Kafka,
}

/// Column added for [`EventTime::Kafka`].
pub const KAFKA_TIMESTAMP: &str = "_timestamp";

/// `schema` with the [`KAFKA_TIMESTAMP`] column added at the end.
pub(crate) fn with_kafka_timestamp(schema: &Schema) -> SchemaRef {
    crate::batch::schema_with(schema, [kafka_timestamp_field()])
}

/// The column a source adds with each record's Kafka timestamp.
pub(crate) fn kafka_timestamp_field() -> Field {
    Field::new(
        KAFKA_TIMESTAMP,
        DataType::Timestamp(TimeUnit::Millisecond, None),
        false,
    )
}

/// Where a source starts when the job has no checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// The beginning of every partition.
    #[default]
    Earliest,
    /// Only records produced from now on.
    Latest,
}

/// A Kafka topic as a source.
#[derive(Debug, Clone)]
pub struct KafkaSource {
    /// Topic.
    pub topic: String,
    /// Record schema; `None` takes the topic's registered Avro schema.
    pub schema: Option<SchemaRef>,
    /// Event time.
    pub event_time: EventTime,
    /// How late (in event time) a record may be before it is dead-lettered.
    pub lateness: Duration,
    /// A partition with no records for this long stops holding the
    /// watermark back.
    pub idle_timeout: Duration,
    /// Where to start without a checkpoint.
    pub start: Start,
    /// Stop at the end offsets seen at start (a backfill or a test); the
    /// last windows are then evaluated. Otherwise run until stopped.
    pub bounded: bool,
}

impl KafkaSource {
    /// A source of `topic` with event time in `field`, no lateness, 30 s
    /// idle timeout, from the earliest offsets, unbounded.
    pub fn new(topic: impl Into<String>, field: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            schema: None,
            event_time: EventTime::Field(field.into()),
            lateness: Duration::ZERO,
            idle_timeout: Duration::from_secs(30),
            start: Start::Earliest,
            bounded: false,
        }
    }
}

/// Parquet files as a (bounded) source: a backfill.
#[derive(Debug, Clone)]
pub struct ParquetSource {
    /// A file, or a directory read recursively (`*.parquet`, in name order;
    /// hidden files and directories are skipped).
    pub path: PathBuf,
    /// The event time column.
    pub event_time: String,
}

impl ParquetSource {
    /// The files to read, in order.
    pub fn files(&self) -> Result<Vec<PathBuf>, DataflowError> {
        fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
            let mut entries: Vec<_> = std::fs::read_dir(dir)?.flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let name = entry.file_name();
                if name.to_string_lossy().starts_with('.') {
                    continue;
                }
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out)?;
                } else if path.extension().is_some_and(|e| e == "parquet") {
                    out.push(path);
                }
            }
            Ok(())
        }
        if self.path.is_file() {
            return Ok(vec![self.path.clone()]);
        }
        let mut files = Vec::new();
        walk(&self.path, &mut files)
            .map_err(|e| DataflowError::Plan(format!("{}: {e}", self.path.display())))?;
        Ok(files)
    }
}

/// Where rows come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A Kafka topic.
    Kafka(KafkaSource),
    /// Parquet files.
    Parquet(ParquetSource),
}

impl Source {
    /// The event time column of decoded rows.
    pub fn event_time_column(&self) -> &str {
        match self {
            Source::Kafka(k) => match &k.event_time {
                EventTime::Field(name) => name,
                EventTime::Kafka => KAFKA_TIMESTAMP,
            },
            Source::Parquet(p) => &p.event_time,
        }
    }
}
