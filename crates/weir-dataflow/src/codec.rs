//! Compact bytes for aggregate state values (`ScalarValue`s) in RocksDB.
//!
//! The state of a (key, pane) is a handful of scalars whose types are known
//! from the aggregates' state fields, so no type tags are written: a null
//! flag, then the value — fixed-width little-endian for numbers, a length
//! and bytes for strings. Nested values (the lists of `count(DISTINCT)` and
//! of percentile digests) are written as single-row Arrow IPC.

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::{DataType, Field, FieldRef, Schema};
use datafusion::common::ScalarValue;

use crate::DataflowError;

/// Appends `value` (of type `data_type`) to `out`.
pub fn encode(value: &ScalarValue, out: &mut Vec<u8>) -> Result<(), DataflowError> {
    if value.is_null() {
        out.push(0);
        return Ok(());
    }
    out.push(1);
    match value {
        ScalarValue::Boolean(Some(v)) => out.push(u8::from(*v)),
        ScalarValue::Int8(Some(v)) => out.extend_from_slice(&v.to_le_bytes()),
        ScalarValue::Int16(Some(v)) => out.extend_from_slice(&v.to_le_bytes()),
        ScalarValue::Int32(Some(v)) | ScalarValue::Date32(Some(v)) => {
            out.extend_from_slice(&v.to_le_bytes())
        }
        ScalarValue::Int64(Some(v))
        | ScalarValue::Date64(Some(v))
        | ScalarValue::TimestampSecond(Some(v), _)
        | ScalarValue::TimestampMillisecond(Some(v), _)
        | ScalarValue::TimestampMicrosecond(Some(v), _)
        | ScalarValue::TimestampNanosecond(Some(v), _) => out.extend_from_slice(&v.to_le_bytes()),
        ScalarValue::UInt8(Some(v)) => out.push(*v),
        ScalarValue::UInt16(Some(v)) => out.extend_from_slice(&v.to_le_bytes()),
        ScalarValue::UInt32(Some(v)) => out.extend_from_slice(&v.to_le_bytes()),
        ScalarValue::UInt64(Some(v)) => out.extend_from_slice(&v.to_le_bytes()),
        ScalarValue::Float32(Some(v)) => out.extend_from_slice(&v.to_le_bytes()),
        ScalarValue::Float64(Some(v)) => out.extend_from_slice(&v.to_le_bytes()),
        ScalarValue::Decimal128(Some(v), _, _) => out.extend_from_slice(&v.to_le_bytes()),
        ScalarValue::Utf8(Some(v))
        | ScalarValue::LargeUtf8(Some(v))
        | ScalarValue::Utf8View(Some(v)) => write_bytes(v.as_bytes(), out),
        ScalarValue::Binary(Some(v))
        | ScalarValue::LargeBinary(Some(v))
        | ScalarValue::BinaryView(Some(v)) => write_bytes(v, out),
        other => {
            // Nested and rare types: one-row Arrow IPC.
            let array = other
                .to_array()
                .map_err(|e| DataflowError::State(e.to_string()))?;
            let schema = Schema::new(vec![Field::new("v", array.data_type().clone(), true)]);
            let batch = arrow::array::RecordBatch::try_new(schema.into(), vec![array])
                .map_err(|e| DataflowError::State(e.to_string()))?;
            let bytes =
                crate::batch::to_ipc(&batch).map_err(|e| DataflowError::State(e.to_string()))?;
            write_bytes(&bytes, out);
        }
    }
    Ok(())
}

fn write_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], DataflowError> {
    if input.len() < n {
        return Err(DataflowError::State("truncated state value".into()));
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

fn fixed<const N: usize>(input: &mut &[u8]) -> Result<[u8; N], DataflowError> {
    Ok(take(input, N)?.try_into().expect("N bytes"))
}

fn read_bytes<'a>(input: &mut &'a [u8]) -> Result<&'a [u8], DataflowError> {
    let len = u32::from_le_bytes(fixed(input)?) as usize;
    take(input, len)
}

/// Reads a value of `data_type` written by [`encode`].
pub fn decode(input: &mut &[u8], data_type: &DataType) -> Result<ScalarValue, DataflowError> {
    let present = take(input, 1)?[0] == 1;
    if !present {
        return ScalarValue::try_from(data_type).map_err(|e| DataflowError::State(e.to_string()));
    }
    use DataType as D;
    Ok(match data_type {
        D::Boolean => ScalarValue::Boolean(Some(take(input, 1)?[0] == 1)),
        D::Int8 => ScalarValue::Int8(Some(i8::from_le_bytes(fixed(input)?))),
        D::Int16 => ScalarValue::Int16(Some(i16::from_le_bytes(fixed(input)?))),
        D::Int32 => ScalarValue::Int32(Some(i32::from_le_bytes(fixed(input)?))),
        D::Date32 => ScalarValue::Date32(Some(i32::from_le_bytes(fixed(input)?))),
        D::Int64 => ScalarValue::Int64(Some(i64::from_le_bytes(fixed(input)?))),
        D::Date64 => ScalarValue::Date64(Some(i64::from_le_bytes(fixed(input)?))),
        D::Timestamp(unit, tz) => {
            let v = Some(i64::from_le_bytes(fixed(input)?));
            let tz = tz.clone();
            match unit {
                arrow::datatypes::TimeUnit::Second => ScalarValue::TimestampSecond(v, tz),
                arrow::datatypes::TimeUnit::Millisecond => ScalarValue::TimestampMillisecond(v, tz),
                arrow::datatypes::TimeUnit::Microsecond => ScalarValue::TimestampMicrosecond(v, tz),
                arrow::datatypes::TimeUnit::Nanosecond => ScalarValue::TimestampNanosecond(v, tz),
            }
        }
        D::UInt8 => ScalarValue::UInt8(Some(take(input, 1)?[0])),
        D::UInt16 => ScalarValue::UInt16(Some(u16::from_le_bytes(fixed(input)?))),
        D::UInt32 => ScalarValue::UInt32(Some(u32::from_le_bytes(fixed(input)?))),
        D::UInt64 => ScalarValue::UInt64(Some(u64::from_le_bytes(fixed(input)?))),
        D::Float32 => ScalarValue::Float32(Some(f32::from_le_bytes(fixed(input)?))),
        D::Float64 => ScalarValue::Float64(Some(f64::from_le_bytes(fixed(input)?))),
        D::Decimal128(p, s) => {
            ScalarValue::Decimal128(Some(i128::from_le_bytes(fixed(input)?)), *p, *s)
        }
        D::Utf8 | D::LargeUtf8 | D::Utf8View => {
            let text = String::from_utf8(read_bytes(input)?.to_vec())
                .map_err(|_| DataflowError::State("state string is not UTF-8".into()))?;
            match data_type {
                D::Utf8 => ScalarValue::Utf8(Some(text)),
                D::LargeUtf8 => ScalarValue::LargeUtf8(Some(text)),
                _ => ScalarValue::Utf8View(Some(text)),
            }
        }
        D::Binary => ScalarValue::Binary(Some(read_bytes(input)?.to_vec())),
        D::LargeBinary => ScalarValue::LargeBinary(Some(read_bytes(input)?.to_vec())),
        D::BinaryView => ScalarValue::BinaryView(Some(read_bytes(input)?.to_vec())),
        _ => {
            let batch = crate::batch::from_ipc(read_bytes(input)?)
                .map_err(|e| DataflowError::State(e.to_string()))?;
            ScalarValue::try_from_array(batch.column(0), 0)
                .map_err(|e| DataflowError::State(e.to_string()))?
        }
    })
}

/// Encodes row `row` of state columns `columns`.
pub fn encode_row(
    columns: &[ArrayRef],
    row: usize,
    out: &mut Vec<u8>,
) -> Result<(), DataflowError> {
    for column in columns {
        let value = ScalarValue::try_from_array(column, row)
            .map_err(|e| DataflowError::State(e.to_string()))?;
        encode(&value, out)?;
    }
    Ok(())
}

/// Decodes encoded rows into one array per field.
pub fn decode_rows<'a>(
    rows: impl IntoIterator<Item = &'a [u8]>,
    fields: &[FieldRef],
) -> Result<Vec<ArrayRef>, DataflowError> {
    let mut columns: Vec<Vec<ScalarValue>> = vec![Vec::new(); fields.len()];
    for row in rows {
        let mut input = row;
        for (field, column) in fields.iter().zip(&mut columns) {
            column.push(decode(&mut input, field.data_type())?);
        }
    }
    fields
        .iter()
        .zip(columns)
        .map(|(field, values)| {
            if values.is_empty() {
                return Ok(arrow::array::new_empty_array(field.data_type()));
            }
            let array = ScalarValue::iter_to_array(values)
                .map_err(|e| DataflowError::State(e.to_string()))?;
            // List element fields may differ in name/nullability from the
            // state field; cast to the declared type.
            if array.data_type() == field.data_type() {
                Ok(array)
            } else {
                arrow::compute::cast(&array, field.data_type())
                    .map_err(|e| DataflowError::State(e.to_string()))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn scalars_round_trip() {
        let list = ScalarValue::List(ScalarValue::new_list_nullable(
            &[ScalarValue::from("a"), ScalarValue::from("b")],
            &DataType::Utf8,
        ));
        let values = vec![
            ScalarValue::Int64(Some(-5)),
            ScalarValue::UInt64(Some(7)),
            ScalarValue::Float64(Some(2.5)),
            ScalarValue::Float64(None),
            ScalarValue::from("héllo"),
            ScalarValue::Boolean(Some(true)),
            list,
        ];
        let mut bytes = Vec::new();
        for value in &values {
            encode(value, &mut bytes).unwrap();
        }
        let mut input = bytes.as_slice();
        for value in &values {
            assert_eq!(&decode(&mut input, &value.data_type()).unwrap(), value);
        }
        assert!(input.is_empty());
    }

    #[test]
    fn rows_become_columns() {
        let fields: Vec<FieldRef> = vec![
            Arc::new(Field::new("count", DataType::Int64, true)),
            Arc::new(Field::new("sum", DataType::Float64, true)),
        ];
        let mut a = Vec::new();
        encode(&ScalarValue::Int64(Some(1)), &mut a).unwrap();
        encode(&ScalarValue::Float64(Some(1.5)), &mut a).unwrap();
        let mut b = Vec::new();
        encode(&ScalarValue::Int64(Some(2)), &mut b).unwrap();
        encode(&ScalarValue::Float64(None), &mut b).unwrap();
        let columns = decode_rows([a.as_slice(), b.as_slice()], &fields).unwrap();
        assert_eq!(columns[0].len(), 2);
        assert!(columns[1].is_null(1));
    }
}
