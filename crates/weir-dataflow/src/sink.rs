//! Where results go, and how each sink makes an epoch's results durable
//! (**seal**) and then visible (**commit**).
//!
//! | sink | write | seal | commit |
//! |---|---|---|---|
//! | Kafka topic | produce (keyed) | flush: every record delivered | — |
//! | Parquet files | append to the epoch's hidden staging file | close and sync the file | rename it into place |
//! | RocksDB table | buffer | the epoch's rows into the worker's store | upsert them into the table |
//! | memory | keep | — | — |
//!
//! A staging file is named by worker and epoch, and renamed only when the
//! epoch commits; after a crash, staged files of epochs all workers sealed
//! are renamed, the others deleted and rewritten by the replay. So a
//! Parquet directory never shows a half file or a duplicate row. Kafka
//! records are keyed deterministically (entity and window), so a replay
//! rewrites the same keys; a table is upserted by key, so a replay is
//! harmless.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use rocksdb::{DB, Options, WriteBatch};

use crate::DataflowError;
use crate::kafka::{Producer, flush, produce, producer};
use crate::store::{OperatorId, Store};

/// Results collected in memory (tests, tools): one process only.
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    batches: Arc<Mutex<Vec<RecordBatch>>>,
}

impl MemorySink {
    /// Everything emitted so far.
    pub fn batches(&self) -> Vec<RecordBatch> {
        self.batches.lock().expect("sink lock").clone()
    }
}

/// Where results go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// A topic, as JSON records keyed by `key` columns joined with `|`
    /// (`u1|1700000000000`): a replay rewrites the same keys. An empty
    /// `key` takes a windowed job's grouping keys and `window_start`.
    Kafka {
        /// Topic.
        topic: String,
        /// Key columns.
        key: Vec<String>,
    },
    /// Parquet files in a directory, one per worker and epoch
    /// (`part-<worker>-<epoch>.parquet`), exactly once.
    Parquet {
        /// The directory.
        dir: PathBuf,
    },
    /// A RocksDB table of the latest row per key (key as for Kafka; the
    /// row as JSON), upserted exactly once per epoch.
    Table {
        /// The RocksDB directory.
        path: PathBuf,
        /// Key columns.
        key: Vec<String>,
    },
    /// Memory.
    Memory(MemorySink),
}

/// Reads a table a [`Sink::Table`] wrote: the row stored under `key`.
pub fn read_table(path: &Path, key: &str) -> Result<Option<serde_json::Value>, DataflowError> {
    let db = DB::open_for_read_only(&Options::default(), path, false)
        .map_err(|e| DataflowError::State(format!("{}: {e}", path.display())))?;
    db.get(key.as_bytes())
        .map_err(|e| DataflowError::State(e.to_string()))?
        .map(|bytes| {
            serde_json::from_slice(&bytes).map_err(|e| DataflowError::State(e.to_string()))
        })
        .transpose()
}

/// A table row: its key and its JSON.
type TableRow = (Vec<u8>, Vec<u8>);

enum Target {
    Kafka {
        topic: String,
        producer: Producer,
    },
    Parquet {
        dir: PathBuf,
        open: BTreeMap<u64, ArrowWriter<File>>,
    },
    Table {
        db: Arc<DB>,
        staged: BTreeMap<u64, Vec<TableRow>>,
    },
    Memory(MemorySink),
}

/// A worker's sink.
pub(crate) struct SinkState {
    target: Target,
    worker: usize,
    op: OperatorId,
    store: Rc<Store>,
    /// Output columns that make a record's key.
    key: Vec<usize>,
    schema: SchemaRef,
}

impl SinkState {
    pub(crate) fn new(
        sink: &Sink,
        bus: &weir_bus::BusConfig,
        schema: SchemaRef,
        key: Vec<usize>,
        worker: usize,
        (op, store): (OperatorId, Rc<Store>),
    ) -> Result<Self, DataflowError> {
        let target = match sink {
            Sink::Kafka { topic, .. } => Target::Kafka {
                topic: topic.clone(),
                producer: producer(bus)?,
            },
            Sink::Parquet { dir } => {
                std::fs::create_dir_all(staging(dir))
                    .map_err(|e| DataflowError::State(format!("{}: {e}", dir.display())))?;
                Target::Parquet {
                    dir: dir.clone(),
                    open: BTreeMap::new(),
                }
            }
            Sink::Table { path, .. } => {
                let db = open_shared(path)?;
                Target::Table {
                    db,
                    staged: BTreeMap::new(),
                }
            }
            Sink::Memory(memory) => Target::Memory(memory.clone()),
        };
        Ok(Self {
            target,
            worker,
            op,
            store,
            key,
            schema,
        })
    }

    /// Writes results that belong to `epoch`.
    pub(crate) fn write(&mut self, epoch: u64, batch: &RecordBatch) -> Result<(), DataflowError> {
        let exec = |e: &dyn std::fmt::Display| DataflowError::Execution(e.to_string());
        match &mut self.target {
            Target::Memory(memory) => {
                memory
                    .batches
                    .lock()
                    .expect("sink lock")
                    .push(batch.clone());
            }
            Target::Kafka { topic, producer } => {
                let keys = record_keys(batch, &self.key)?;
                let lines = json_lines(batch)?;
                for (i, line) in lines.iter().enumerate() {
                    let key = keys.as_ref().map(|k| k[i].as_bytes());
                    produce(producer, topic, key, line, None)?;
                }
            }
            Target::Parquet { dir, open } => {
                let writer = match open.entry(epoch) {
                    std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
                    std::collections::btree_map::Entry::Vacant(entry) => {
                        let path = staging(dir).join(part_name(self.worker, epoch));
                        let file = File::create(&path).map_err(|e| {
                            DataflowError::State(format!("{}: {e}", path.display()))
                        })?;
                        let properties = WriterProperties::builder()
                            .set_compression(Compression::ZSTD(ZstdLevel::default()))
                            .build();
                        entry.insert(
                            ArrowWriter::try_new(file, self.schema.clone(), Some(properties))
                                .map_err(|e| exec(&e))?,
                        )
                    }
                };
                writer.write(batch).map_err(|e| exec(&e))?;
            }
            Target::Table { staged, .. } => {
                let keys = record_keys(batch, &self.key)?
                    .ok_or_else(|| DataflowError::Plan("a table sink needs key columns".into()))?;
                let lines = json_lines(batch)?;
                let rows = staged.entry(epoch).or_default();
                for (key, line) in keys.into_iter().zip(lines) {
                    rows.push((key.into_bytes(), line));
                }
            }
        }
        Ok(())
    }

    /// Makes every result of epochs up to `epoch` durable.
    pub(crate) fn seal(&mut self, epoch: u64) -> Result<(), DataflowError> {
        let mut changes = None;
        match &mut self.target {
            Target::Kafka { producer, .. } => flush(producer)?,
            Target::Parquet { open, .. } => {
                let later = open.split_off(&(epoch + 1));
                for (_, writer) in std::mem::replace(open, later) {
                    let file = writer
                        .into_inner()
                        .map_err(|e| DataflowError::Execution(e.to_string()))?;
                    file.sync_all()
                        .map_err(|e| DataflowError::State(e.to_string()))?;
                }
            }
            Target::Table { staged, .. } => {
                let later = staged.split_off(&(epoch + 1));
                let rows: Vec<TableRow> = std::mem::replace(staged, later)
                    .into_values()
                    .flatten()
                    .collect();
                changes = Some(serde_json::to_vec(&rows).expect("rows serialize"));
            }
            Target::Memory(_) => {}
        }
        self.store.seal(self.op, epoch, changes.as_deref(), None)
    }

    /// Makes `epoch`'s results visible (every worker has sealed it).
    pub(crate) fn commit(&mut self, epoch: u64) -> Result<(), DataflowError> {
        match &self.target {
            Target::Parquet { dir, .. } => {
                let name = part_name(self.worker, epoch);
                let staged = staging(dir).join(&name);
                if staged.exists() {
                    std::fs::rename(&staged, dir.join(&name))
                        .map_err(|e| DataflowError::State(format!("{}: {e}", staged.display())))?;
                }
            }
            Target::Table { db, .. } => {
                if let Some(bytes) = self.store.sealed_changes(self.op, epoch)? {
                    let rows: Vec<TableRow> = serde_json::from_slice(&bytes)
                        .map_err(|e| DataflowError::State(format!("staged table rows: {e}")))?;
                    let mut batch = WriteBatch::default();
                    for (key, row) in rows {
                        batch.put(key, row);
                    }
                    db.write(batch)
                        .map_err(|e| DataflowError::State(format!("writing the table: {e}")))?;
                }
            }
            Target::Kafka { .. } | Target::Memory(_) => {}
        }
        self.store.commit(self.op, epoch, |_| {})
    }

    /// After a restart: commits what was sealed up to `committed` (the
    /// epoch every worker sealed) and forgets the rest.
    pub(crate) fn recover(&mut self, committed: Option<u64>) -> Result<(), DataflowError> {
        if let Some(committed) = committed {
            let first = self.store.committed(self.op)?.map_or(0, |m| m + 1);
            for epoch in first..=committed {
                self.commit(epoch)?;
            }
        }
        if let Target::Parquet { dir, .. } = &self.target {
            // Staging files left are of epochs that never committed.
            let prefix = format!("part-{:04}-", self.worker);
            for entry in std::fs::read_dir(staging(dir))
                .map_err(|e| DataflowError::State(format!("{}: {e}", dir.display())))?
                .flatten()
            {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        match committed {
            Some(_) => self.store.discard_after(self.op, committed),
            None => self.store.reset(self.op),
        }
    }
}

/// Opens a RocksDB table that the workers of this process share (RocksDB
/// allows one opener per directory). In a multi-process cluster, give each
/// process its own table directory.
fn open_shared(path: &Path) -> Result<Arc<DB>, DataflowError> {
    static OPEN: Mutex<BTreeMap<PathBuf, std::sync::Weak<DB>>> = Mutex::new(BTreeMap::new());
    let mut open = OPEN.lock().expect("tables lock");
    if let Some(db) = open.get(path).and_then(std::sync::Weak::upgrade) {
        return Ok(db);
    }
    let mut options = Options::default();
    options.create_if_missing(true);
    let db = Arc::new(
        DB::open(&options, path)
            .map_err(|e| DataflowError::State(format!("{}: {e}", path.display())))?,
    );
    open.insert(path.to_path_buf(), Arc::downgrade(&db));
    Ok(db)
}

fn staging(dir: &Path) -> PathBuf {
    dir.join(".staging")
}

fn part_name(worker: usize, epoch: u64) -> String {
    format!("part-{worker:04}-{epoch:012}.parquet")
}

/// Rows as JSON lines.
fn json_lines(batch: &RecordBatch) -> Result<Vec<Vec<u8>>, DataflowError> {
    let mut bytes = Vec::new();
    {
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut bytes);
        writer
            .write(batch)
            .map_err(|e| DataflowError::Execution(e.to_string()))?;
        writer
            .finish()
            .map_err(|e| DataflowError::Execution(e.to_string()))?;
    }
    Ok(bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// Deterministic keys of result rows: the key columns' values joined by `|`
/// (`u1|1700000000000`); `None` without key columns.
pub(crate) fn record_keys(
    batch: &RecordBatch,
    key: &[usize],
) -> Result<Option<Vec<String>>, DataflowError> {
    if key.is_empty() {
        return Ok(None);
    }
    let options = arrow::util::display::FormatOptions::default();
    let formatters = key
        .iter()
        .map(|&i| {
            let column = batch.column(i);
            // Timestamps key as milliseconds, the way they are written.
            let column = match column.data_type() {
                arrow::datatypes::DataType::Timestamp(..) => {
                    arrow::compute::cast(column, &arrow::datatypes::DataType::Int64)
                        .map_err(|e| DataflowError::Execution(e.to_string()))?
                }
                _ => column.clone(),
            };
            Ok(column)
        })
        .collect::<Result<Vec<_>, DataflowError>>()?;
    let formatters = formatters
        .iter()
        .map(|c| arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DataflowError::Execution(e.to_string()))?;
    Ok(Some(
        (0..batch.num_rows())
            .map(|row| {
                formatters
                    .iter()
                    .map(|f| f.value(row).to_string())
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect(),
    ))
}
