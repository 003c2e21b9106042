//! The same view over history: DataFusion runs the query's plan over the
//! rows of its stream (Parquet files, or a topic read to its end) and the
//! latest row per key of its table, and gives the rows the stream gives.
//!
//! Everything below the aggregation — filters, projections, the join with
//! the table or with a second stream — is DataFusion's own plan of the same SQL. The window
//! function becomes rows DataFusion can group: `tumble` computes a start,
//! `hop` lists the starts of an event's windows and is unnested, and
//! `session` numbers a key's sessions with `lag` and a running `sum` over
//! the key's events in time order. The aggregates are the query's own; the
//! select list and HAVING above them run as the stream runs them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::functions_aggregate::expr_fn::{max, min};
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::functions_window::expr_fn::lag;
use datafusion::logical_expr::expr::{Cast, WindowFunction as WindowCall};
use datafusion::logical_expr::{
    Expr, ExprFunctionExt, LogicalPlanBuilder, SortExpr, WindowFrame, WindowFrameBound,
    WindowFrameUnits, WindowFunctionDefinition, col, lit, when,
};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use weir_bus::Bus;
use weir_dataflow::decode::RecordDecoder;

use crate::SqlError;
use crate::functions::{HopStarts, WindowKind, timestamp_type};
use crate::plan::{Plan, logical_plan, shape, window_group, with_event_time};

/// A DataFusion context with the dialect's window functions, for batch
/// queries.
pub fn context() -> datafusion::execution::context::SessionContext {
    crate::plan::context()
}

/// Rows read from a topic, with where each came from.
#[derive(Debug, Default)]
pub struct TopicRows {
    /// The rows, in batches.
    pub batches: Vec<RecordBatch>,
    /// For each batch, the `(partition, offset)` of each row.
    pub origins: Vec<Vec<(i32, i64)>>,
    /// Records without a value (tombstones): where, and their key.
    pub tombstones: Vec<((i32, i64), Vec<u8>)>,
}

impl TopicRows {
    /// The rows whose `(partition, offset)` `keep` accepts.
    pub fn filter(&self, keep: impl Fn(i32, i64) -> bool) -> Result<Vec<RecordBatch>, SqlError> {
        self.batches
            .iter()
            .zip(&self.origins)
            .map(|(batch, origins)| {
                let rows: UInt32Array = origins
                    .iter()
                    .enumerate()
                    .filter(|(_, (p, o))| keep(*p, *o))
                    .map(|(i, _)| i as u32)
                    .collect();
                arrow::compute::take_record_batch(batch, &rows)
                    .map_err(|e| SqlError::Execution(e.to_string()))
            })
            .collect()
    }
}

/// Reads a topic from its beginning to the end it has now, decoded with
/// `schema` (records that do not decode are left out, as a stream
/// dead-letters them).
pub async fn read_topic(bus: &Bus, topic: &str, schema: SchemaRef) -> Result<TopicRows, SqlError> {
    let partitions = bus.admin().partitions(topic).await?;
    let codec = bus.codec(topic);
    let config = bus.config().clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let fail =
            |e: rdkafka::error::KafkaError| SqlError::Execution(format!("reading `{topic}`: {e}"));
        let consumer: BaseConsumer = weir_bus::consumer_config(&config, "weir-sql")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(fail)?;
        let mut assignment = TopicPartitionList::new();
        let mut ends = HashMap::new();
        for partition in 0..partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition, Duration::from_secs(10))
                .map_err(fail)?;
            if high > low {
                assignment
                    .add_partition_offset(&topic, partition, Offset::Offset(low))
                    .map_err(fail)?;
                ends.insert(partition, high);
            }
        }
        consumer.assign(&assignment).map_err(fail)?;
        let decoder = RecordDecoder::new(schema, Some(codec));
        let mut next: HashMap<i32, i64> = HashMap::new();
        let mut rows = TopicRows::default();
        let done = |next: &HashMap<i32, i64>| {
            ends.iter()
                .all(|(p, end)| next.get(p).is_some_and(|n| n >= end))
        };
        while !done(&next) {
            let mut messages = Vec::new();
            while messages.len() < 4096 {
                match consumer.poll(Duration::from_millis(if messages.is_empty() {
                    500
                } else {
                    0
                })) {
                    None => break,
                    Some(message) => messages.push(message.map_err(fail)?.detach()),
                }
            }
            for message in &messages {
                next.insert(message.partition(), message.offset() + 1);
                if message.payload().is_none() {
                    rows.tombstones.push((
                        (message.partition(), message.offset()),
                        message.key().unwrap_or_default().to_vec(),
                    ));
                }
            }
            let payloads: Vec<Option<&[u8]>> = messages.iter().map(|m| m.payload()).collect();
            let decoded = decoder.decode(&payloads)?;
            if decoded.batch.num_rows() > 0 {
                rows.origins.push(
                    decoded
                        .rows
                        .iter()
                        .map(|i| (messages[*i].partition(), messages[*i].offset()))
                        .collect(),
                );
                rows.batches.push(decoded.batch);
            }
        }
        Ok(rows)
    })
    .await
    .map_err(|e| SqlError::Execution(e.to_string()))?
}

/// The latest row per key of a table topic (a record without a value
/// deletes its key), as a stream's lookup join sees it.
pub async fn read_table(
    bus: &Bus,
    topic: &str,
    schema: SchemaRef,
    key: &str,
) -> Result<Vec<RecordBatch>, SqlError> {
    let rows = read_topic(bus, topic, schema.clone()).await?;
    let key_column = schema
        .index_of(key)
        .map_err(|e| SqlError::Execution(e.to_string()))?;
    // The last record of each key, by (partition, offset): a key's records
    // share a partition when the producer keys them.
    // key → (where its last record is, its row: (batch, row), or none for
    // a tombstone)
    type Last = ((i32, i64), Option<(usize, usize)>);
    let mut latest: HashMap<String, Last> = HashMap::new();
    let mut keep = |key: String, at: (i32, i64), row: Option<(usize, usize)>| {
        let entry = latest.entry(key).or_insert((at, row));
        if at >= entry.0 {
            *entry = (at, row);
        }
    };
    for (b, batch) in rows.batches.iter().enumerate() {
        let keys = cast(batch.column(key_column), &DataType::Utf8)
            .map_err(|e| SqlError::Execution(e.to_string()))?;
        let keys = keys
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .expect("cast to strings");
        for row in 0..batch.num_rows() {
            if keys.is_valid(row) {
                keep(
                    keys.value(row).to_string(),
                    rows.origins[b][row],
                    Some((b, row)),
                );
            }
        }
    }
    for (at, key) in &rows.tombstones {
        keep(String::from_utf8_lossy(key).into_owned(), *at, None);
    }
    let mut out = Vec::new();
    for (b, batch) in rows.batches.iter().enumerate() {
        let kept: UInt32Array = latest
            .values()
            .filter_map(|(_, row)| *row)
            .filter(|(lb, _)| *lb == b)
            .map(|(_, r)| r as u32)
            .collect();
        if !kept.is_empty() {
            out.push(
                arrow::compute::take_record_batch(batch, &kept)
                    .map_err(|e| SqlError::Execution(e.to_string()))?,
            );
        }
    }
    Ok(out)
}

/// The rows as a table with `schema`: columns taken by name, so rows read
/// back from a file (whose schema may differ in nullability or metadata)
/// fit.
fn table(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<Arc<MemTable>, SqlError> {
    let batches = if batches.is_empty() {
        vec![RecordBatch::new_empty(schema.clone())]
    } else {
        batches
            .into_iter()
            .map(|batch| conform_to(&schema, &batch))
            .collect::<Result<_, _>>()?
    };
    Ok(Arc::new(MemTable::try_new(schema, vec![batches])?))
}

fn conform_to(schema: &SchemaRef, batch: &RecordBatch) -> Result<RecordBatch, SqlError> {
    if batch.schema() == *schema {
        return Ok(batch.clone());
    }
    let columns = schema
        .fields()
        .iter()
        .map(|field| {
            batch.column_by_name(field.name()).cloned().ok_or_else(|| {
                SqlError::Execution(format!("the input rows have no column `{}`", field.name()))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| SqlError::Execution(format!("the input rows do not fit the source: {e}")))
}

/// What a view reads, as rows.
#[derive(Debug, Default)]
pub struct Inputs {
    /// Its stream's rows.
    pub source: Vec<RecordBatch>,
    /// If it joins a table, the table's latest rows.
    pub table: Vec<RecordBatch>,
    /// If it joins a second stream, that stream's rows.
    pub joined: Vec<RecordBatch>,
}

impl Inputs {
    /// `source`'s rows, with the table and the second stream the plan
    /// joins read from their topics as they are now.
    pub async fn read(bus: &Bus, plan: &Plan, source: Vec<RecordBatch>) -> Result<Self, SqlError> {
        let table = match &plan.table {
            Some(t) => read_table(bus, &t.topic, t.schema.clone(), &t.key).await?,
            None => Vec::new(),
        };
        let joined = match &plan.joined {
            Some(j) => read_topic(bus, &j.topic, j.schema.clone()).await?.batches,
            None => Vec::new(),
        };
        Ok(Self {
            source,
            table,
            joined,
        })
    }
}

/// Runs `plan`'s view over `inputs`: the rows its stream gives for the
/// same input.
pub async fn run(plan: &Plan, inputs: Inputs) -> Result<Vec<RecordBatch>, SqlError> {
    let context = context();
    context.register_table(
        &plan.source.name,
        table(plan.source.schema.clone(), inputs.source)?,
    )?;
    if let Some(t) = &plan.table {
        context.register_table(&t.name, table(t.schema.clone(), inputs.table)?)?;
    }
    if let Some(j) = &plan.joined
        && j.name != plan.source.name
    {
        context.register_table(&j.name, table(j.schema.clone(), inputs.joined)?)?;
    }
    let logical = with_event_time(
        &plan.view,
        logical_plan(&plan.view, &context)?,
        &plan.source.event_time,
    )?;
    let tables: Vec<String> = plan.table.iter().map(|t| t.name.clone()).collect();
    let shape = shape(&plan.view, &logical, &tables)?;
    let window = match shape.aggregate {
        Some(aggregate) => window_group(&plan.view, aggregate)?.map(|w| (aggregate, w)),
        None => None,
    };
    let Some((aggregate, window)) = window else {
        // No window: the query as it is (a continuous aggregation's final
        // value per group, which its stream's last update per key equals).
        let batches = context
            .execute_logical_plan(logical)
            .await?
            .collect()
            .await?;
        return conform(batches, &plan.output);
    };
    let keys: Vec<Expr> = aggregate
        .group_expr
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != window.index)
        .map(|(_, e)| e.clone())
        .collect();
    let input = aggregate.input.as_ref().clone();
    let columns: Vec<Expr> = input
        .schema()
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    let millis = |e: Expr| {
        Expr::Cast(Cast::new(
            Box::new(Expr::Cast(Cast::new(Box::new(e), timestamp_type()))),
            DataType::Int64,
        ))
    };
    let to_timestamp = |e: Expr| Expr::Cast(Cast::new(Box::new(e), timestamp_type()));
    let size = window.window.size();
    let aggregated = match window.kind {
        WindowKind::Tumble | WindowKind::Hop => {
            let starts = match window.kind {
                WindowKind::Tumble => aggregate.group_expr[window.index].clone(),
                _ => {
                    let Expr::ScalarFunction(call) = &aggregate.group_expr[window.index] else {
                        unreachable!("a window call");
                    };
                    HopStarts::udf().call(call.args.clone())
                }
            };
            let mut projected = columns.clone();
            projected.push(starts.alias("__ws"));
            let mut builder = LogicalPlanBuilder::from(input).project(projected)?;
            if window.kind == WindowKind::Hop {
                builder = builder.unnest_column("__ws")?;
            }
            let mut group = keys.clone();
            group.push(col("__ws"));
            let plan = builder
                .aggregate(group, aggregate.aggr_expr.clone())?
                .build()?;
            let schema = plan.schema().clone();
            let n_keys = keys.len();
            let mut output: Vec<Expr> = (0..=n_keys)
                .map(|i| Expr::Column(Column::from(schema.qualified_field(i))))
                .collect();
            output.push(to_timestamp(millis(col("__ws")) + lit(size)).alias("__we"));
            output.extend(
                (n_keys + 1..schema.fields().len())
                    .map(|i| Expr::Column(Column::from(schema.qualified_field(i)))),
            );
            LogicalPlanBuilder::from(plan).project(output)?.build()?
        }
        WindowKind::Session => {
            let gap = size;
            let mut projected = columns.clone();
            projected.push(millis(window.time.clone()).alias("__t"));
            let by_time = vec![SortExpr::new(col("__t"), true, false)];
            let previous = lag(col("__t"), Some(1), None)
                .partition_by(keys.clone())
                .order_by(by_time.clone())
                .build()?
                .alias("__prev");
            let new_session = when(
                col("__prev")
                    .is_null()
                    .or((col("__t") - col("__prev")).gt_eq(lit(gap))),
                lit(1_i64),
            )
            .otherwise(lit(0_i64))?;
            let session_id = Expr::from(WindowCall::new(
                WindowFunctionDefinition::AggregateUDF(sum_udaf()),
                vec![col("__new")],
            ))
            .partition_by(keys.clone())
            .order_by(by_time)
            .window_frame(WindowFrame::new_bounds(
                WindowFrameUnits::Rows,
                WindowFrameBound::Preceding(ScalarValue::UInt64(None)),
                WindowFrameBound::CurrentRow,
            ))
            .build()?
            .alias("__sid");
            let builder = LogicalPlanBuilder::from(input)
                .project(projected)?
                .window(vec![previous])?;
            let schema = builder.schema().clone();
            let mut all: Vec<Expr> = schema.columns().into_iter().map(Expr::Column).collect();
            all.push(new_session.alias("__new"));
            let builder = builder.project(all)?.window(vec![session_id])?;
            let mut group = keys.clone();
            group.push(col("__sid"));
            let mut aggregates = aggregate.aggr_expr.clone();
            aggregates.push(min(col("__t")).alias("__min"));
            aggregates.push(max(col("__t")).alias("__max"));
            let plan = builder.aggregate(group, aggregates)?.build()?;
            let schema = plan.schema().clone();
            let n_keys = keys.len();
            let n_aggregates = aggregate.aggr_expr.len();
            let mut output: Vec<Expr> = (0..n_keys)
                .map(|i| Expr::Column(Column::from(schema.qualified_field(i))))
                .collect();
            output.push(to_timestamp(col("__min")).alias("__ws"));
            output.push(to_timestamp(col("__max") + lit(gap)).alias("__we"));
            output.extend(
                (n_keys + 1..n_keys + 1 + n_aggregates)
                    .map(|i| Expr::Column(Column::from(schema.qualified_field(i)))),
            );
            LogicalPlanBuilder::from(plan).project(output)?.build()?
        }
    };
    let batches = context
        .execute_logical_plan(aggregated)
        .await?
        .collect()
        .await?;
    let windowed = plan
        .pipeline
        .aggregate
        .as_ref()
        .expect("an aggregating view");
    let layout = weir_dataflow::aggregate::result_schema(&windowed.plan, windowed.window)?;
    let mut out = Vec::new();
    for batch in conform(batches, &layout)? {
        let batch = match &plan.pipeline.post {
            Some(post) => post.apply(&batch)?,
            None => batch,
        };
        if batch.num_rows() > 0 {
            out.push(batch);
        }
    }
    Ok(out)
}

/// Batches with `schema`'s names and types (position by position).
fn conform(batches: Vec<RecordBatch>, schema: &SchemaRef) -> Result<Vec<RecordBatch>, SqlError> {
    batches
        .into_iter()
        .filter(|b| b.num_rows() > 0)
        .map(|batch| {
            let columns = batch
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(column, field)| {
                    if column.data_type() == field.data_type() {
                        Ok(column.clone())
                    } else {
                        cast(column, field.data_type())
                    }
                })
                .collect::<Result<Vec<ArrayRef>, _>>()
                .map_err(|e| SqlError::Execution(e.to_string()))?;
            let relaxed = Arc::new(arrow::datatypes::Schema::new(
                schema
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone().with_nullable(true))
                    .collect::<Vec<_>>(),
            ));
            RecordBatch::try_new(relaxed, columns).map_err(|e| SqlError::Execution(e.to_string()))
        })
        .collect()
}

/// How a view's stream results compare with its batch recomputation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Rows (keys) the batch gives.
    pub batch_rows: usize,
    /// Rows (keys) the stream gave.
    pub stream_rows: usize,
    /// Keys only the batch has.
    pub missing: Vec<String>,
    /// Keys only the stream has.
    pub extra: Vec<String>,
    /// Keys whose values differ, with the first column that does.
    pub different: Vec<(String, String)>,
}

impl Comparison {
    /// The same rows with the same values.
    pub fn identical(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.different.is_empty()
    }
}

/// The rows of `batches` by key (`key` columns' values joined by `|`), the
/// last row of a key winning as in a topic; each row's values as text,
/// floats kept as numbers.
fn keyed(batches: &[RecordBatch], key: &[&str]) -> Result<HashMap<String, Vec<Value>>, SqlError> {
    let mut out = HashMap::new();
    for batch in batches {
        let schema = batch.schema();
        let key_columns = key
            .iter()
            .map(|k| {
                schema
                    .index_of(k)
                    .map_err(|_| SqlError::Execution(format!("no key column `{k}`")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let columns: Vec<Vec<Value>> = batch
            .columns()
            .iter()
            .map(values)
            .collect::<Result<_, _>>()?;
        for row in 0..batch.num_rows() {
            let k: Vec<String> = key_columns
                .iter()
                .map(|&c| columns[c][row].to_string())
                .collect();
            out.insert(
                k.join("|"),
                columns.iter().map(|c| c[row].clone()).collect(),
            );
        }
    }
    Ok(out)
}

/// A cell, comparable across runs: floats within 1e-9 relative (the order
/// of additions differs between a stream and a batch).
#[derive(Debug, Clone)]
enum Value {
    Float(f64),
    Other(String),
}

impl Value {
    fn same(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Float(a), Value::Float(b)) => {
                (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0) || (a.is_nan() && b.is_nan())
            }
            (a, b) => a.to_string() == b.to_string(),
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Float(v) => write!(f, "{v}"),
            Value::Other(v) => write!(f, "{v}"),
        }
    }
}

fn values(column: &ArrayRef) -> Result<Vec<Value>, SqlError> {
    let fail = |e: arrow::error::ArrowError| SqlError::Execution(e.to_string());
    Ok(match column.data_type() {
        DataType::Float64 | DataType::Float32 => {
            let floats = cast(column, &DataType::Float64).map_err(fail)?;
            let floats = floats
                .as_any()
                .downcast_ref::<arrow::array::Float64Array>()
                .expect("cast to floats");
            (0..floats.len())
                .map(|i| {
                    if floats.is_null(i) {
                        Value::Other("null".into())
                    } else {
                        Value::Float(floats.value(i))
                    }
                })
                .collect()
        }
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => {
            let ints = cast(
                &cast(column, &timestamp_type()).map_err(fail)?,
                &DataType::Int64,
            )
            .map_err(fail)?;
            strings(&ints)?
        }
        _ => strings(column)?,
    })
}

fn strings(column: &ArrayRef) -> Result<Vec<Value>, SqlError> {
    let options = arrow::util::display::FormatOptions::default().with_null("null");
    let formatter = arrow::util::display::ArrayFormatter::try_new(column.as_ref(), &options)
        .map_err(|e| SqlError::Execution(e.to_string()))?;
    Ok((0..column.len())
        .map(|i| Value::Other(formatter.value(i).to_string()))
        .collect())
}

/// Compares a view's stream results (its topic, latest row per key) with
/// its batch results, by `key` columns.
pub fn compare(
    stream: &[RecordBatch],
    batch: &[RecordBatch],
    key: &[&str],
) -> Result<Comparison, SqlError> {
    let (stream, batch) = (keyed(stream, key)?, keyed(batch, key)?);
    let mut comparison = Comparison {
        batch_rows: batch.len(),
        stream_rows: stream.len(),
        ..Default::default()
    };
    let mut keys: Vec<&String> = batch.keys().chain(stream.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        match (stream.get(key), batch.get(key)) {
            (None, Some(_)) => comparison.missing.push(key.clone()),
            (Some(_), None) => comparison.extra.push(key.clone()),
            (Some(s), Some(b)) => {
                if let Some(i) = (0..b.len()).find(|&i| s.get(i).is_none_or(|v| !v.same(&b[i]))) {
                    comparison.different.push((
                        key.clone(),
                        format!(
                            "column {i}: stream {:?}, batch {}",
                            s.get(i).map(ToString::to_string),
                            b[i]
                        ),
                    ));
                }
            }
            (None, None) => {}
        }
    }
    Ok(comparison)
}

/// A view's stream results (its topic) against the same SQL run as a batch
/// over its source's history: training/serving skew, checked.
pub async fn check(bus: &Bus, plan: &Plan, entity: &[String]) -> Result<Comparison, SqlError> {
    let stream = read_topic(bus, &plan.topic, plan.output.clone()).await?;
    let history = read_topic(bus, &plan.source.topic, plan.source.schema.clone()).await?;
    let batch = run(plan, Inputs::read(bus, plan, history.batches).await?).await?;
    let mut key: Vec<&str> = entity.iter().map(String::as_str).collect();
    if plan.window.is_some() {
        key.push(weir_dataflow::aggregate::WINDOW_START);
    }
    compare(&stream.batches, &batch, &key)
}

/// A view computed over its source's history as a batch: the source topic
/// read to its end, only the events with `from <= event time < to` (ms;
/// either bound may be open), joined with its table as it is now.
pub async fn backfill(
    bus: &Bus,
    plan: &Plan,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<Vec<RecordBatch>, SqlError> {
    let history = read_topic(bus, &plan.source.topic, plan.source.schema.clone()).await?;
    let time = plan
        .source
        .schema
        .index_of(&plan.source.event_time)
        .map_err(|e| SqlError::Execution(e.to_string()))?;
    let mut source = Vec::new();
    for batch in history.batches {
        let times = weir_dataflow::aggregate::event_times(batch.column(time))?;
        let keep: arrow::array::BooleanArray = times
            .iter()
            .map(|t| Some(from.is_none_or(|f| *t >= f) && to.is_none_or(|e| *t < e)))
            .collect();
        source.push(
            arrow::compute::filter_record_batch(&batch, &keep)
                .map_err(|e| SqlError::Execution(e.to_string()))?,
        );
    }
    run(plan, Inputs::read(bus, plan, source).await?).await
}

/// Writes `batches` to a Parquet file; returns the number of rows.
pub fn write_parquet(
    path: &std::path::Path,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<usize, SqlError> {
    let io = |e: &dyn std::fmt::Display| SqlError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let file = std::fs::File::create(path).map_err(|e| io(&e))?;
    let mut writer = datafusion::parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None)
        .map_err(|e| io(&e))?;
    let mut rows = 0;
    for batch in batches {
        rows += batch.num_rows();
        writer.write(batch).map_err(|e| io(&e))?;
    }
    writer.close().map_err(|e| io(&e))?;
    Ok(rows)
}
