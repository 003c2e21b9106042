//! What flows between operators: Arrow record batches.
//!
//! Between threads of one process a [`Batch`] moves as a pointer; between
//! processes of a timely cluster timely serializes it, and a batch
//! serializes as Arrow IPC bytes.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::row::{RowConverter, Rows, SortField};
use serde::de::Error as _;
use serde::ser::Error as _;

/// `schema` with `fields` after its own (its metadata left behind).
pub fn schema_with(schema: &Schema, fields: impl IntoIterator<Item = Field>) -> SchemaRef {
    let mut all: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    all.extend(fields);
    Arc::new(Schema::new(all))
}

/// `batch` with `columns` after its own: each a field and its values, a
/// value per row.
pub fn with_columns(
    batch: &RecordBatch,
    columns: impl IntoIterator<Item = (Field, ArrayRef)>,
) -> Result<RecordBatch, ArrowError> {
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = columns.into_iter().unzip();
    let schema = schema_with(&batch.schema(), fields);
    let mut all = batch.columns().to_vec();
    all.extend(arrays);
    RecordBatch::try_new(schema, all)
}

/// An Arrow record batch that timely can exchange.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch(pub RecordBatch);

impl Batch {
    /// Rows in the batch.
    pub fn num_rows(&self) -> usize {
        self.0.num_rows()
    }
}

impl serde::Serialize for Batch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&to_ipc(&self.0).map_err(S::Error::custom)?)
    }
}

impl<'de> serde::Deserialize<'de> for Batch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: Vec<u8> = serde::Deserialize::deserialize(deserializer)?;
        from_ipc(&bytes).map(Batch).map_err(D::Error::custom)
    }
}

/// A batch as Arrow IPC stream bytes.
pub fn to_ipc(batch: &RecordBatch) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let mut bytes = Vec::new();
    {
        let mut writer = StreamWriter::try_new(&mut bytes, &batch.schema())?;
        writer.write(batch)?;
        writer.finish()?;
    }
    Ok(bytes)
}

/// A batch from Arrow IPC stream bytes.
pub fn from_ipc(bytes: &[u8]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    reader.next().unwrap_or_else(|| {
        Err(arrow::error::ArrowError::IpcError(
            "an IPC stream without a batch".into(),
        ))
    })
}

/// Turns the key columns of batches into comparable, hashable byte rows
/// (Arrow's row format) and back.
#[derive(Debug)]
pub struct KeyEncoder {
    converter: RowConverter,
    indices: Vec<usize>,
    schema: SchemaRef,
}

impl KeyEncoder {
    /// Encodes the columns `indices` of batches with `schema`.
    pub fn new(schema: SchemaRef, indices: Vec<usize>) -> Result<Self, arrow::error::ArrowError> {
        let fields = indices
            .iter()
            .map(|&i| SortField::new(schema.field(i).data_type().clone()))
            .collect();
        Ok(Self {
            converter: RowConverter::new(fields)?,
            indices,
            schema,
        })
    }

    /// The key rows of a batch.
    pub fn rows(&self, batch: &RecordBatch) -> Result<Rows, arrow::error::ArrowError> {
        let columns: Vec<ArrayRef> = self
            .indices
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        self.converter.convert_columns(&columns)
    }

    /// Key columns back from encoded rows.
    pub fn columns<'a>(
        &self,
        rows: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<ArrayRef>, arrow::error::ArrowError> {
        let parser = self.converter.parser();
        let parsed: Vec<_> = rows.into_iter().map(|bytes| parser.parse(bytes)).collect();
        self.converter.convert_rows(parsed)
    }

    /// The key fields.
    pub fn fields(&self) -> Vec<arrow::datatypes::FieldRef> {
        self.indices
            .iter()
            .map(|&i| Arc::new(self.schema.field(i).clone()))
            .collect()
    }
}

/// Splits a batch into one sub-batch per worker by a hash of each row's
/// key, so that every row of a key meets the same worker's state. Returns
/// `(worker, rows)` pairs for the workers that get rows.
pub fn split_by_key(
    batch: &RecordBatch,
    keys: &Rows,
    workers: usize,
) -> Result<Vec<(u64, RecordBatch)>, arrow::error::ArrowError> {
    if workers == 1 {
        return Ok(vec![(0, batch.clone())]);
    }
    let mut per_worker: Vec<Vec<u32>> = vec![Vec::new(); workers];
    for (row, key) in keys.iter().enumerate() {
        per_worker[(key_hash(key.as_ref()) % workers as u64) as usize].push(row as u32);
    }
    per_worker
        .into_iter()
        .enumerate()
        .filter(|(_, rows)| !rows.is_empty())
        .map(|(worker, rows)| {
            let indices = UInt32Array::from(rows);
            Ok((worker as u64, take_record_batch(batch, &indices)?))
        })
        .collect()
}

/// A hash of a key's bytes that is the same in every process (FNV-1a:
/// `std`'s hasher is randomly seeded per process).
pub fn key_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user", DataType::Utf8, false),
            Field::new("amount", DataType::Float64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "a", "c"])),
                Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 4.0])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn batches_survive_serialization() {
        let original = Batch(batch());
        let bytes = to_ipc(&original.0).unwrap();
        assert_eq!(Batch(from_ipc(&bytes).unwrap()), original);
    }

    #[test]
    fn rows_of_a_key_go_to_one_worker() {
        let batch = batch();
        let encoder = KeyEncoder::new(batch.schema(), vec![0]).unwrap();
        let rows = encoder.rows(&batch).unwrap();
        let parts = split_by_key(&batch, &rows, 3).unwrap();
        assert_eq!(parts.iter().map(|(_, b)| b.num_rows()).sum::<usize>(), 4);
        for (_, part) in &parts {
            let users = part
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            for other in &parts {
                if std::ptr::eq(part, &other.1) {
                    continue;
                }
                let theirs = other
                    .1
                    .column(0)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap();
                assert!(users.iter().all(|u| !theirs.iter().any(|t| t == u)));
            }
        }
        let keys: Vec<Vec<u8>> = rows.iter().map(|r| r.as_ref().to_vec()).collect();
        let back = encoder.columns(keys.iter().map(Vec::as_slice)).unwrap();
        assert_eq!(back[0].as_ref(), batch.column(0).as_ref());
    }
}
