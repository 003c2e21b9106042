//! `top_k`: the `k` largest values of a column per key and tumbling
//! window, emitted once when the window closes. The example operator of
//! `docs/dataflow.md`: value state, a timer per window, state removed once
//! emitted, output gathered over the timers of one watermark.
//!
//! ```toml
//! [[operator]]
//! kind = "top_k"
//! key = "user_id"      # rows are routed by it
//! by = "amount"        # a numeric column
//! k = 3
//! window = "1m"        # tumbling, on the event time column `time`
//! time = "event_time"
//! ```
//!
//! Output: `key` (the key as text), `window_start` (ms), `rank` (1 is the
//! largest) and `value`, one row per rank.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float64Array, Float64Builder, Int64Builder, RecordBatch, StringArray,
    StringBuilder,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::Deserialize;

use crate::DataflowError;
use crate::aggregate::event_times;
use crate::operator::{Context, Operator, OperatorFactory};
use crate::store::{time_bytes, time_from_bytes};

/// Settings of a `top_k` operator.
#[derive(Debug, Clone)]
pub struct TopK {
    /// The key column.
    pub key: String,
    /// The column ranked.
    pub by: String,
    /// How many values per key and window.
    pub k: usize,
    /// Window length, ms.
    pub window: i64,
    /// The event time column.
    pub time: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopKFile {
    #[allow(dead_code)]
    kind: String,
    key: String,
    by: String,
    k: usize,
    window: String,
    time: String,
}

impl TopK {
    /// From an `[[operator]]` table.
    pub fn from_toml(table: toml::Table) -> Result<Self, String> {
        let file: TopKFile = table
            .try_into()
            .map_err(|e: toml::de::Error| format!("top_k: {}", e.message()))?;
        if file.k == 0 {
            return Err("top_k: `k` must be at least 1".into());
        }
        let window = crate::duration::parse_duration(&file.window)
            .map_err(|e| format!("top_k: `window`: {e}"))?;
        let window = i64::try_from(window.as_millis())
            .ok()
            .filter(|ms| *ms > 0)
            .ok_or("top_k: `window` must be at least 1ms")?;
        Ok(Self {
            key: file.key,
            by: file.by,
            k: file.k,
            window,
            time: file.time,
        })
    }

    fn column(&self, input: &SchemaRef, name: &str) -> Result<usize, DataflowError> {
        input.index_of(name).map_err(|_| {
            DataflowError::Plan(format!("top_k: `{name}` is not a column of its input"))
        })
    }
}

impl OperatorFactory for TopK {
    fn name(&self) -> &str {
        "top_k"
    }

    fn key_columns(&self) -> Vec<String> {
        vec![self.key.clone()]
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, DataflowError> {
        let by = input.field(self.column(input, &self.by)?);
        if !by.data_type().is_numeric() {
            return Err(DataflowError::Plan(format!(
                "top_k: `{}` is {}, not a number",
                self.by,
                by.data_type()
            )));
        }
        self.column(input, &self.key)?;
        self.column(input, &self.time)?;
        Ok(Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("window_start", DataType::Int64, false),
            Field::new("rank", DataType::Int64, false),
            Field::new("value", DataType::Float64, false),
        ])))
    }

    fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>, DataflowError> {
        Ok(Box::new(TopKOperator {
            key: self.column(input, &self.key)?,
            by: self.column(input, &self.by)?,
            time: self.column(input, &self.time)?,
            k: self.k,
            window: self.window,
            output: self.output_schema(input)?,
            closed: Vec::new(),
        }))
    }
}

/// State: the values so far of each (key, window), largest first, under
/// the state key `key bytes ++ window start`.
const TOP: &str = "top";

struct TopKOperator {
    key: usize,
    by: usize,
    time: usize,
    k: usize,
    window: i64,
    output: SchemaRef,
    /// Windows closed by the timers of the current watermark.
    closed: Vec<(String, i64, Vec<f64>)>,
}

fn arrow_error(error: arrow::error::ArrowError) -> DataflowError {
    DataflowError::Execution(error.to_string())
}

fn state_key(key: &str, window_start: i64) -> Vec<u8> {
    let mut out = key.as_bytes().to_vec();
    out.extend_from_slice(&time_bytes(window_start));
    out
}

impl Operator for TopKOperator {
    fn process(&mut self, batch: &RecordBatch, ctx: &mut Context<'_>) -> Result<(), DataflowError> {
        let keys: ArrayRef = cast(batch.column(self.key), &DataType::Utf8).map_err(arrow_error)?;
        let keys = keys.as_any().downcast_ref::<StringArray>().expect("utf8");
        let values: ArrayRef =
            cast(batch.column(self.by), &DataType::Float64).map_err(arrow_error)?;
        let values = values
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("float64");
        let times = event_times(batch.column(self.time))?;
        for (row, time) in times.into_iter().enumerate() {
            if keys.is_null(row) || values.is_null(row) {
                continue;
            }
            let start = time - time.rem_euclid(self.window);
            let end = start + self.window;
            if ctx.watermark().is_some_and(|w| end <= w) {
                // The source dead-letters what is later than its lateness,
                // so this cannot happen: a bug if it does.
                return Err(DataflowError::Execution(format!(
                    "top_k: a row of the window at {start} arrived after it closed"
                )));
            }
            let key = state_key(keys.value(row), start);
            let mut top: Vec<f64> = ctx.value(TOP).get(&key)?.unwrap_or_default();
            let value = values.value(row);
            let at = top.partition_point(|v| v.total_cmp(&value).is_ge());
            if at < self.k {
                top.insert(at, value);
                top.truncate(self.k);
                ctx.value(TOP).set(&key, &top)?;
            }
            ctx.set_timer(&key, end);
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        key: &[u8],
        _time: i64,
        ctx: &mut Context<'_>,
    ) -> Result<(), DataflowError> {
        let top: Vec<f64> = ctx.value(TOP).get(key)?.unwrap_or_default();
        ctx.value::<Vec<f64>>(TOP).clear(key);
        let (name, start) = key.split_at(key.len() - 8);
        let name = String::from_utf8(name.to_vec())
            .map_err(|e| DataflowError::State(format!("top_k: a key is not text: {e}")))?;
        self.closed.push((name, time_from_bytes(start), top));
        Ok(())
    }

    fn on_watermark(
        &mut self,
        _watermark: i64,
        ctx: &mut Context<'_>,
    ) -> Result<(), DataflowError> {
        if self.closed.is_empty() {
            return Ok(());
        }
        let (mut keys, mut starts) = (StringBuilder::new(), Int64Builder::new());
        let (mut ranks, mut values) = (Int64Builder::new(), Float64Builder::new());
        for (key, start, top) in self.closed.drain(..) {
            for (rank, value) in top.into_iter().enumerate() {
                keys.append_value(&key);
                starts.append_value(start);
                ranks.append_value(rank as i64 + 1);
                values.append_value(value);
            }
        }
        let batch = RecordBatch::try_new(
            self.output.clone(),
            vec![
                Arc::new(keys.finish()),
                Arc::new(starts.finish()),
                Arc::new(ranks.finish()),
                Arc::new(values.finish()),
            ],
        )
        .map_err(arrow_error)?;
        ctx.emit(batch);
        Ok(())
    }
}
