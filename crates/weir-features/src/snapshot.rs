//! Point-in-time-correct training snapshots.
//!
//! A snapshot takes a **label table** — entity keys, an `event_timestamp`,
//! and any label columns — and, for each of its rows, every requested
//! feature **as it was known at that time**: the value of the latest
//! feature row of the same entity with `feature_ts <= event_timestamp`,
//! and, when the view has a TTL, `feature_ts >= event_timestamp - ttl`
//! (both bounds inclusive; no TTL means no lower bound). Ties on the
//! feature time go to the row created last when the view declares a
//! created timestamp (Feast's `created_timestamp_column`), and otherwise,
//! or among rows created at the same time, to the row written last. A
//! label row with no such feature row keeps its place, with nulls (a left
//! join). These are Feast's semantics (`get_historical_features`).
//!
//! A windowed view's row is timed by its window's **end** (`window_end`):
//! the moment the window's value was complete, so nothing from the future
//! leaks into a training row. A view without a window (rows of precomputed
//! features, each with its own event time) is timed by its event time.
//!
//! The join runs in DataFusion, one view at a time: the label rows and
//! the view's rows are put in one stream, sorted by entity and time, and
//! each label row takes the last feature row before it
//! (`last_value(…) IGNORE NULLS`). Sorts spill to disk, so a snapshot of
//! millions of label rows does not hold them all, with their features, in
//! memory at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::functions::core::expr_fn::{get_field, named_struct};
use datafusion::functions_window::expr_fn::last_value;
use datafusion::logical_expr::expr::Cast;
use datafusion::logical_expr::{
    Expr, ExprFunctionExt, SortExpr, WindowFrame, WindowFrameBound, WindowFrameUnits, col, lit,
    when,
};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::ParquetReadOptions;
use futures::StreamExt as _;

use crate::FeaturesError;

/// The label table's time column.
pub const EVENT_TIMESTAMP: &str = "event_timestamp";

/// A feature view's rows, as a snapshot reads them.
#[derive(Debug, Clone)]
pub struct ViewRows {
    /// The view's name (the prefix of full feature names).
    pub name: String,
    /// Its entity key columns.
    pub entity: Vec<String>,
    /// The features to take (columns of `files`).
    pub features: Vec<String>,
    /// How long a value stays valid (`None`: forever).
    pub ttl: Option<Duration>,
    /// The column that times each row (`window_end`, or the event time).
    pub time: String,
    /// The column that orders rows of the same time, when there is one.
    pub created: Option<String>,
    /// The view's rows in Parquet: entity columns, features, the time
    /// columns and `__created` (the order rows were written, for ties).
    pub files: Vec<PathBuf>,
}

/// How a snapshot is taken.
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// Name feature columns `view__feature` (Feast's `full_feature_names`).
    pub full_feature_names: bool,
    /// Memory DataFusion may use before it spills sorts to disk.
    pub memory_limit: usize,
    /// Where it spills, and keeps its intermediate files.
    pub scratch: PathBuf,
}

/// What a snapshot wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Label rows (= snapshot rows).
    pub rows: usize,
    /// The snapshot's columns.
    pub columns: Vec<String>,
}

fn df(error: impl std::fmt::Display) -> FeaturesError {
    FeaturesError::Snapshot(error.to_string())
}

fn context(options: &SnapshotOptions) -> Result<SessionContext, FeaturesError> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(options.memory_limit)))
        .with_disk_manager_builder(
            DiskManagerBuilder::default()
                .with_mode(DiskManagerMode::Directories(vec![options.scratch.clone()])),
        )
        .build_arc()
        .map_err(df)?;
    let config = SessionConfig::new().with_target_partitions(2);
    Ok(SessionContext::new_with_config_rt(config, runtime))
}

/// The record batches of a table file, `.parquet` or `.csv` (with a
/// header; types inferred from the first 10,000 rows).
pub fn read_table_file(
    path: &Path,
) -> Result<Box<dyn Iterator<Item = Result<RecordBatch, arrow::error::ArrowError>>>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    Ok(match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => Box::new(
            datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                file,
            )
            .and_then(|b| b.with_batch_size(65_536).build())
            .map_err(|e| e.to_string())?,
        ),
        Some("csv") => {
            let (schema, _) = arrow_csv::reader::Format::default()
                .with_header(true)
                .infer_schema(
                    std::fs::File::open(path).map_err(|e| e.to_string())?,
                    Some(10_000),
                )
                .map_err(|e| e.to_string())?;
            Box::new(
                arrow_csv::ReaderBuilder::new(Arc::new(schema))
                    .with_header(true)
                    .with_batch_size(65_536)
                    .build(file)
                    .map_err(|e| e.to_string())?,
            )
        }
        _ => return Err("a table is a .parquet or .csv file".into()),
    })
}

/// Reads a label table (Parquet or CSV), checks it, numbers its rows and
/// writes it as Parquet with `event_timestamp` in milliseconds (UTC).
fn prepare_labels(path: &Path, out: &Path) -> Result<SchemaRef, FeaturesError> {
    let fail = |message: String| FeaturesError::Labels {
        path: path.display().to_string(),
        message,
    };
    let batches = read_table_file(path).map_err(fail)?;
    let mut writer: Option<ArrowWriter<std::fs::File>> = None;
    let mut schema: Option<SchemaRef> = None;
    let mut row = 0_i64;
    for batch in batches {
        let batch = batch.map_err(|e| fail(e.to_string()))?;
        let time = batch.schema().index_of(EVENT_TIMESTAMP).map_err(|_| {
            fail(format!(
                "no `{EVENT_TIMESTAMP}` column (it has {})",
                names(&batch.schema()).join(", ")
            ))
        })?;
        let times = to_millis(batch.column(time))
            .map_err(|e| fail(format!("`{EVENT_TIMESTAMP}` is not a time ({e})")))?;
        if let Some(i) = (0..times.len()).find(|&i| times.is_null(i)) {
            let given = batch.column(time);
            let line = row + i as i64 + 1;
            return Err(fail(if given.is_null(i) {
                format!("`{EVENT_TIMESTAMP}` is empty in row {line}")
            } else {
                let text =
                    arrow::util::display::array_value_to_string(given, i).unwrap_or_default();
                format!("`{EVENT_TIMESTAMP}` in row {line} is not a time: `{text}`")
            }));
        }
        let mut columns = batch.columns().to_vec();
        columns[time] = cast(&times, &DataType::Timestamp(TimeUnit::Millisecond, None))
            .map_err(|e| fail(e.to_string()))?;
        columns.push(Arc::new(Int64Array::from_iter_values(
            row..row + batch.num_rows() as i64,
        )));
        row += batch.num_rows() as i64;
        let mut fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields[time] = Field::new(
            EVENT_TIMESTAMP,
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        );
        fields.push(Field::new("__row", DataType::Int64, false));
        let out_schema = Arc::new(Schema::new(fields));
        let batch =
            RecordBatch::try_new(out_schema.clone(), columns).map_err(|e| fail(e.to_string()))?;
        if writer.is_none() {
            let file = std::fs::File::create(out).map_err(|e| fail(e.to_string()))?;
            writer = Some(
                ArrowWriter::try_new(file, out_schema.clone(), None)
                    .map_err(|e| fail(e.to_string()))?,
            );
            schema = Some(out_schema);
        }
        writer
            .as_mut()
            .expect("opened")
            .write(&batch)
            .map_err(|e| fail(e.to_string()))?;
    }
    let Some(writer) = writer else {
        return Err(fail("the label table has no rows".into()));
    };
    writer.close().map_err(|e| fail(e.to_string()))?;
    Ok(schema.expect("written"))
}

/// Times as milliseconds since the epoch: a timestamp (any unit; without
/// a zone it is UTC), a date, an integer (ms) or RFC 3339 text.
fn to_millis(column: &ArrayRef) -> Result<ArrayRef, arrow::error::ArrowError> {
    let ms = DataType::Timestamp(TimeUnit::Millisecond, None);
    let as_time = match column.data_type() {
        DataType::Int64 | DataType::Int32 => return cast(column, &DataType::Int64),
        DataType::Timestamp(_, Some(_)) => {
            // Normalise the zone away: the instant stays.
            let utc = cast(
                column,
                &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            )?;
            cast(&utc, &ms)?
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => cast(
            &cast(column, &DataType::Utf8)?,
            &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        )
        .and_then(|t| cast(&t, &ms))?,
        _ => cast(column, &ms)?,
    };
    cast(&as_time, &DataType::Int64)
}

fn names(schema: &Schema) -> Vec<String> {
    schema.fields().iter().map(|f| f.name().clone()).collect()
}

/// Takes a snapshot: `labels` joined, as of each row's time, with the
/// features of `views`; written to `out` (Parquet).
pub async fn snapshot(
    labels: &Path,
    views: &[ViewRows],
    out: &Path,
    options: &SnapshotOptions,
) -> Result<SnapshotStats, FeaturesError> {
    std::fs::create_dir_all(&options.scratch).map_err(df)?;
    let first = options.scratch.join("labels.parquet");
    let label_schema = prepare_labels(labels, &first)?;
    let label_columns: Vec<String> = names(&label_schema)
        .into_iter()
        .filter(|n| n != "__row")
        .collect();
    // Feature column names must not clash with each other or the labels.
    let mut output_names = label_columns.clone();
    for view in views {
        for feature in &view.features {
            let name = feature_name(view, feature, options.full_feature_names);
            if output_names.contains(&name) {
                return Err(FeaturesError::Snapshot(format!(
                    "two columns would be named `{name}`: use full feature names (view__feature)"
                )));
            }
            output_names.push(name);
        }
    }
    let context = context(options)?;
    let mut current = first;
    for (i, view) in views.iter().enumerate() {
        let next = options.scratch.join(format!("stage-{i}.parquet"));
        join_view(&context, &current, view, &next, options).await?;
        current = next;
    }
    // In the label table's order, without the row numbers.
    let frame = context
        .read_parquet(
            current.to_string_lossy().as_ref(),
            ParquetReadOptions::default(),
        )
        .await
        .map_err(df)?
        .sort(vec![SortExpr::new(col("__row"), true, false)])
        .map_err(df)?
        .select(
            output_names
                .iter()
                .map(|n| col(quoted(n)))
                .collect::<Vec<_>>(),
        )
        .map_err(df)?;
    let rows = write_stream(frame, out).await?;
    Ok(SnapshotStats {
        rows,
        columns: output_names,
    })
}

/// A column reference that keeps its case and dots.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn feature_name(view: &ViewRows, feature: &str, full: bool) -> String {
    if full {
        format!("{}__{feature}", view.name)
    } else {
        feature.to_string()
    }
}

/// One view: `input` (labels, and the features of earlier views) joined
/// with `view`'s rows as of each row's time, to `out`.
async fn join_view(
    context: &SessionContext,
    input: &Path,
    view: &ViewRows,
    out: &Path,
    options: &SnapshotOptions,
) -> Result<(), FeaturesError> {
    let left = context
        .read_parquet(
            input.to_string_lossy().as_ref(),
            ParquetReadOptions::default(),
        )
        .await
        .map_err(df)?;
    let paths: Vec<String> = view
        .files
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let right = context
        .read_parquet(paths, ParquetReadOptions::default())
        .await
        .map_err(df)?;
    let left_schema = Arc::new(left.schema().as_arrow().clone());
    let right_schema = Arc::new(right.schema().as_arrow().clone());
    for key in &view.entity {
        if left_schema.index_of(key).is_err() {
            return Err(FeaturesError::Snapshot(format!(
                "the label table has no column `{key}`, an entity key of `{}`",
                view.name
            )));
        }
    }
    let millis = |e: Expr| {
        Expr::Cast(Cast::new(
            Box::new(Expr::Cast(Cast::new(
                Box::new(e),
                DataType::Timestamp(TimeUnit::Millisecond, None),
            ))),
            DataType::Int64,
        ))
    };
    // The struct each feature row carries: its time and its features.
    for column in std::iter::once(&view.time).chain(&view.created) {
        if right_schema.index_of(column).is_err() {
            return Err(FeaturesError::Snapshot(format!(
                "`{column}`, which times the rows of `{}`, is not one of its columns ({})",
                view.name,
                names(&right_schema).join(", ")
            )));
        }
    }
    let mut struct_args = vec![lit("__fts"), millis(col(quoted(&view.time)))];
    for feature in &view.features {
        if right_schema.index_of(feature).is_err() {
            return Err(FeaturesError::Snapshot(format!(
                "`{feature}` is not a column of `{}` ({})",
                view.name,
                names(&right_schema).join(", ")
            )));
        }
        struct_args.push(lit(feature.as_str()));
        struct_args.push(col(quoted(feature)));
    }
    let packed = named_struct(struct_args);
    // Label rows: their columns, the entity keys cast to the view's types,
    // their time, kind 1, no feature struct.
    let struct_type = right
        .clone()
        .select(vec![packed.clone().alias("__f")])
        .map_err(df)?
        .schema()
        .field(0)
        .data_type()
        .clone();
    let typed_null = |t: &DataType| -> Result<Expr, FeaturesError> {
        Ok(lit(ScalarValue::try_from(t).map_err(df)?))
    };
    let mut left_exprs: Vec<Expr> = Vec::new();
    let mut right_exprs: Vec<Expr> = Vec::new();
    for field in left_schema.fields() {
        let name = field.name();
        if let Some(k) = view.entity.iter().position(|e| e == name) {
            let key_type = right_schema
                .field_with_name(&view.entity[k])
                .map_err(|_| {
                    FeaturesError::Snapshot(format!(
                        "`{}` has no entity column `{name}`",
                        view.name
                    ))
                })?
                .data_type()
                .clone();
            left_exprs
                .push(Expr::Cast(Cast::new(Box::new(col(quoted(name))), key_type)).alias(name));
            right_exprs.push(col(quoted(name)).alias(name));
        } else {
            left_exprs.push(col(quoted(name)));
            right_exprs.push(typed_null(field.data_type())?.alias(name));
        }
    }
    left_exprs.push(millis(col(EVENT_TIMESTAMP)).alias("__ts"));
    right_exprs.push(millis(col(quoted(&view.time))).alias("__ts"));
    left_exprs.push(lit(1_i32).alias("__kind"));
    right_exprs.push(lit(0_i32).alias("__kind"));
    left_exprs.push(typed_null(&DataType::Int64)?.alias("__ctime"));
    right_exprs.push(match &view.created {
        Some(created) => millis(col(quoted(created))).alias("__ctime"),
        None => typed_null(&DataType::Int64)?.alias("__ctime"),
    });
    left_exprs.push(typed_null(&DataType::Int64)?.alias("__created"));
    right_exprs.push(
        Expr::Cast(Cast::new(Box::new(col("__created")), DataType::Int64)).alias("__created"),
    );
    left_exprs.push(typed_null(&struct_type)?.alias("__f"));
    right_exprs.push(packed.alias("__f"));
    let both = left
        .select(left_exprs)
        .map_err(df)?
        .union(right.select(right_exprs).map_err(df)?)
        .map_err(df)?;
    // Each row takes the last feature row of its entity up to it: features
    // before labels at equal times (the bound is inclusive), and among
    // rows of one time, those created later, then written later, after
    // earlier ones.
    let latest = last_value(col("__f"))
        .partition_by(view.entity.iter().map(|k| col(quoted(k))).collect())
        .order_by(vec![
            SortExpr::new(col("__ts"), true, true),
            SortExpr::new(col("__kind"), true, true),
            SortExpr::new(col("__ctime"), true, true),
            SortExpr::new(col("__created"), true, true),
        ])
        .window_frame(WindowFrame::new_bounds(
            WindowFrameUnits::Rows,
            WindowFrameBound::Preceding(ScalarValue::UInt64(None)),
            WindowFrameBound::CurrentRow,
        ))
        .null_treatment(datafusion::logical_expr::expr::NullTreatment::IgnoreNulls)
        .build()
        .map_err(df)?
        .alias("__latest");
    let windowed = both
        .window(vec![latest])
        .map_err(df)?
        .filter(col("__kind").eq(lit(1_i32)))
        .map_err(df)?;
    let mut keep: Vec<Expr> = left_schema
        .fields()
        .iter()
        .map(|f| col(quoted(f.name())))
        .collect();
    let fresh = match view.ttl {
        Some(ttl) if !ttl.is_zero() => {
            (col("__ts") - get_field(col("__latest"), "__fts")).lt_eq(lit(ttl.as_millis() as i64))
        }
        _ => get_field(col("__latest"), "__fts").is_not_null(),
    };
    for feature in &view.features {
        let value = get_field(col("__latest"), feature.as_str());
        keep.push(
            when(fresh.clone(), value)
                .end()
                .map_err(df)?
                .alias(feature_name(view, feature, options.full_feature_names)),
        );
    }
    let frame = windowed.select(keep).map_err(df)?;
    write_stream(frame, out).await?;
    Ok(())
}

/// Runs a frame and writes its batches to a Parquet file as they come.
async fn write_stream(
    frame: datafusion::dataframe::DataFrame,
    out: &Path,
) -> Result<usize, FeaturesError> {
    let schema = Arc::new(frame.schema().as_arrow().clone());
    let mut stream = frame.execute_stream().await.map_err(df)?;
    let file = std::fs::File::create(out).map_err(df)?;
    let mut writer = ArrowWriter::try_new(file, schema.clone(), None).map_err(df)?;
    let mut rows = 0;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(df)?;
        rows += batch.num_rows();
        let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec()).map_err(df)?;
        writer.write(&batch).map_err(df)?;
    }
    writer.close().map_err(df)?;
    Ok(rows)
}
