//! `weir bench snapshot`: a point-in-time-correct training snapshot — label
//! rows × 10 features from 3 views (ttl 1 day, ties on a created time) —
//! taken by Weir (in a child process: its time and peak RSS) and by Feast's
//! `get_historical_features` (local file offline store,
//! `python/bench/feast_snapshot.py`) on the same Parquet files, with the
//! outputs compared value by value. Data as in
//! `shared/anchors/feast_pit.py`: 10k users, 30 days.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use arrow::array::{
    Array, ArrayRef, AsArray as _, Float32Array, Int64Array, PrimitiveArray, RecordBatch,
};
use arrow::compute::cast;
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Field, Float64Type, Int64Type, Schema, TimeUnit,
};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use weir_features::snapshot::{SnapshotOptions, ViewRows, snapshot};

use crate::hop::peak_rss_mib;

#[derive(clap::Args)]
pub struct Args {
    /// Label rows.
    #[arg(long, default_value_t = 1_000_000)]
    labels: usize,
    /// Feature rows per view.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Skip Feast.
    #[arg(long)]
    no_feast: bool,
    /// Memory Weir's join may use before its sorts spill to disk.
    #[arg(long, default_value_t = 1 << 30)]
    memory: usize,
    /// Write the data and both outputs here, and keep them (default: a
    /// temporary directory, removed).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// (internal) take Weir's snapshot of the data in this directory.
    #[arg(long, hide = true)]
    child: Option<PathBuf>,
}

const USERS: i64 = 10_000;
/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600_000;
const SPAN_S: i64 = 30 * 86_400;
const VIEWS: [(&str, usize); 3] = [("a", 4), ("b", 3), ("c", 3)];
const DAY: Duration = Duration::from_secs(86_400);

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &args.child {
        return child(dir, args.memory).await;
    }
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("weir-bench-snapshot-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir)?;
    println!(
        "weir bench snapshot: {} label rows × 10 features from 3 views ({} rows each, ttl 1 day), {USERS} users over 30 days",
        args.labels, args.rows
    );
    write_data(&dir, args.labels, args.rows)?;

    let child = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "bench",
            "snapshot",
            "--memory",
            &args.memory.to_string(),
            "--child",
        ])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let (status, output, rss) = wait_sampling(child).await?;
    if !status.success() {
        bail!("Weir's snapshot failed ({status})");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&output).context("the child's report")?;
    let weir_seconds = report["seconds"].as_f64().unwrap_or(f64::NAN);
    println!(
        "\n{:<40} {:>9} {:>12} {:>11}",
        "", "seconds", "rows/s", "peak RSS"
    );
    println!(
        "{:<40} {:>9.2} {:>12.0} {:>11}",
        "weir snapshot (DataFusion, child)",
        weir_seconds,
        args.labels as f64 / weir_seconds,
        rss.map_or("-".into(), |m| format!("{m:.0} MiB"))
    );
    if !args.no_feast {
        let python = std::env::var_os("WEIR_PYTHON").context(
            "WEIR_PYTHON is not set: run `cargo xtask bench snapshot` (its Python environment has Feast), or pass --no-feast",
        )?;
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../python/bench/feast_snapshot.py");
        let output = tokio::process::Command::new(python)
            .arg(&script)
            .arg(&dir)
            .stderr(Stdio::inherit())
            .output()
            .await?;
        let report = String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .context("Feast printed no report")?;
        let seconds = report["seconds"].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:<40} {:>9.2} {:>12.0} {:>11}",
            "feast get_historical_features (file)",
            seconds,
            args.labels as f64 / seconds,
            report["peak_rss_mib"]
                .as_f64()
                .map_or("-".into(), |m| format!("{m:.0} MiB"))
        );
        println!(
            "\nweir / feast: {:.1}x faster (target >= 20x); peak RSS {:.0} MiB vs {:.0} MiB",
            seconds / weir_seconds,
            rss.unwrap_or(f64::NAN),
            report["peak_rss_mib"].as_f64().unwrap_or(f64::NAN)
        );
        compare(&dir)?;
    }
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(ExitCode::SUCCESS)
}

/// The child: Weir's snapshot of the data in `dir`, timed.
async fn child(dir: &Path, memory: usize) -> anyhow::Result<ExitCode> {
    let views: Vec<ViewRows> = VIEWS
        .iter()
        .map(|(name, features)| ViewRows {
            name: format!("fv_{name}"),
            entity: vec!["user_id".into()],
            features: (0..*features).map(|i| format!("{name}{i}")).collect(),
            ttl: Some(DAY),
            time: "window_end".into(),
            created: None,
            files: vec![dir.join(format!("{name}.parquet"))],
        })
        .collect();
    let options = SnapshotOptions {
        full_feature_names: false,
        memory_limit: memory,
        scratch: dir.join("scratch"),
    };
    let started = Instant::now();
    let stats = snapshot(
        &dir.join("labels.parquet"),
        &views,
        &dir.join("weir.parquet"),
        &options,
    )
    .await?;
    println!(
        "{}",
        serde_json::json!({"seconds": started.elapsed().as_secs_f64(), "rows": stats.rows})
    );
    Ok(ExitCode::SUCCESS)
}

fn write(path: &Path, batch: &RecordBatch) -> anyhow::Result<()> {
    let mut writer = ArrowWriter::try_new(std::fs::File::create(path)?, batch.schema(), None)?;
    writer.write(batch)?;
    writer.close()?;
    Ok(())
}

/// Times (ms) as pandas writes them: nanoseconds, UTC (Feast's file store
/// mis-joins millisecond columns).
fn utc_nanos(millis: Vec<i64>) -> anyhow::Result<ArrayRef> {
    Ok(cast(
        &Int64Array::from_iter_values(millis.into_iter().map(|ms| ms * 1_000_000)),
        &utc(),
    )?)
}

fn utc() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

/// Labels and the three views, as Parquet files both tools read. A view
/// file has Feast's columns (`event_timestamp`, `created`) and Weir's
/// (`window_end`, `__created`), with the same values.
fn write_data(dir: &Path, labels: usize, rows: usize) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(7);
    for (name, features) in VIEWS {
        let users: Vec<i64> = (0..rows).map(|_| rng.random_range(0..USERS)).collect();
        let times: Vec<i64> = (0..rows)
            .map(|_| T0 + rng.random_range(0..SPAN_S) * 1000)
            .collect();
        let created: Vec<i64> = times
            .iter()
            .map(|t| t + rng.random_range(0..60) * 1000)
            .collect();
        let mut fields = vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("event_timestamp", utc(), false),
            Field::new("created", utc(), false),
            Field::new(
                "window_end",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("__created", DataType::Int64, false),
        ];
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(users)),
            utc_nanos(times.clone())?,
            utc_nanos(created.clone())?,
            cast(
                &Int64Array::from(times),
                &DataType::Timestamp(TimeUnit::Millisecond, None),
            )?,
            Arc::new(Int64Array::from(created)),
        ];
        for i in 0..features {
            fields.push(Field::new(format!("{name}{i}"), DataType::Float32, false));
            columns.push(Arc::new(Float32Array::from_iter_values(
                (0..rows).map(|_| rng.random::<f32>()),
            )));
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        write(&dir.join(format!("{name}.parquet")), &batch)?;
    }
    let users: Vec<i64> = (0..labels).map(|_| rng.random_range(0..USERS)).collect();
    let times: Vec<i64> = (0..labels)
        .map(|_| T0 + rng.random_range(0..SPAN_S) * 1000)
        .collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("event_timestamp", utc(), false),
        ])),
        vec![Arc::new(Int64Array::from(users)), utc_nanos(times)?],
    )?;
    write(&dir.join("labels.parquet"), &batch)
}

/// Feature values (missing: `None`).
type Values = Vec<Option<f64>>;
/// (user, time in ms) → something.
type ByKey<T> = HashMap<(i64, i64), T>;

/// A column of `batch` cast to `T`; times as milliseconds.
fn column<T: ArrowPrimitiveType>(
    batch: &RecordBatch,
    name: &str,
) -> anyhow::Result<PrimitiveArray<T>> {
    let mut column = batch
        .column_by_name(name)
        .with_context(|| format!("no column `{name}`"))?
        .clone();
    if matches!(column.data_type(), DataType::Timestamp(..)) {
        column = cast(&column, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
    }
    Ok(cast(&column, &T::DATA_TYPE)?.as_primitive::<T>().clone())
}

/// (user, time in ms) → the 10 features (NaN as missing), from a snapshot.
fn read_output(path: &Path) -> anyhow::Result<(usize, ByKey<Values>)> {
    let names: Vec<String> = VIEWS
        .iter()
        .flat_map(|(v, k)| (0..*k).map(move |i| format!("{v}{i}")))
        .collect();
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path)?)?.build()?;
    let mut rows = 0;
    let mut out = HashMap::new();
    for batch in reader {
        let batch = batch?;
        rows += batch.num_rows();
        let users = column::<Int64Type>(&batch, "user_id")?;
        let times = column::<Int64Type>(&batch, "event_timestamp")?;
        let features = names
            .iter()
            .map(|n| column::<Float64Type>(&batch, n))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for row in 0..batch.num_rows() {
            let values = features
                .iter()
                .map(|f| (f.is_valid(row) && !f.value(row).is_nan()).then(|| f.value(row)))
                .collect();
            out.insert((users.value(row), times.value(row)), values);
        }
    }
    Ok((rows, out))
}

/// Every (user, time) of Feast's output has the same 10 values in Weir's;
/// and every label row Feast left out is one its file store drops: a view
/// with feature rows for the user but none within the TTL (its dask join
/// drops such rows where Feast's other stores, and Weir, keep them with
/// nulls — a left join).
///
/// Where the values differ, Feast must have taken another row with the same
/// event time as Weir's (a tie, which Feast breaks by the created time
/// after an unstable pandas sort; Weir takes the latest created).
fn compare(dir: &Path) -> anyhow::Result<()> {
    let (weir_rows, weir) = read_output(&dir.join("weir.parquet"))?;
    let (feast_rows, feast) = read_output(&dir.join("feast.parquet"))?;
    // Feature columns per view, in order.
    let groups: Vec<std::ops::Range<usize>> = VIEWS
        .iter()
        .scan(0, |start, (_, k)| {
            let range = *start..*start + k;
            *start += k;
            Some(range)
        })
        .collect();
    let mut ties: Option<Vec<ByKey<Vec<Values>>>> = None;
    let (mut different, mut tied, mut missing, mut filled) = (0, 0, 0, 0);
    for (key, values) in &feast {
        filled += values.iter().filter(|v| v.is_some()).count();
        let Some(ours) = weir.get(key) else {
            missing += 1;
            continue;
        };
        if ours == values {
            continue;
        }
        // Explained if, in each view that differs, Feast's values are
        // another row's at the event time of Weir's row.
        let rows = match &mut ties {
            Some(rows) => rows,
            None => ties.insert(view_rows_by_time(dir)?),
        };
        let explained = groups.iter().enumerate().all(|(v, g)| {
            ours[g.clone()] == values[g.clone()]
                || rows[v].values().any(|same_time| {
                    same_time.len() > 1
                        && same_time.iter().any(|r| r[..] == ours[g.clone()])
                        && same_time.iter().any(|r| r[..] == values[g.clone()])
                })
        });
        if explained {
            tied += 1;
        } else {
            different += 1;
        }
    }
    let (mut dropped, mut unexplained) = (0, 0);
    for (key, ours) in &weir {
        if !feast.contains_key(key) {
            dropped += 1;
            if !groups
                .iter()
                .any(|g| ours[g.clone()].iter().all(Option::is_none))
            {
                unexplained += 1;
            }
        }
    }
    println!(
        "\noutputs: weir {weir_rows} rows ({} distinct (user, time)), feast {feast_rows} rows; \
         {} compared, {filled} non-null values: {different} different, {missing} missing in Weir's; \
         {tied} took another row of a tie on event time",
        weir.len(),
        feast.len()
    );
    println!(
        "{dropped} label rows Feast's file store left out, each with a view that has no value within the TTL \
         (Weir keeps them with nulls, a left join); {unexplained} left out otherwise"
    );
    if different > 0 || missing > 0 || unexplained > 0 {
        bail!("Weir's snapshot differs from Feast's");
    }
    println!("the same values");
    Ok(())
}

/// Per view, (user, event time) → the feature values of its rows, for
/// the (user, time)s that have more than one row.
fn view_rows_by_time(dir: &Path) -> anyhow::Result<Vec<ByKey<Vec<Values>>>> {
    let mut out = Vec::new();
    for (name, k) in VIEWS {
        let path = dir.join(format!("{name}.parquet"));
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path)?)?.build()?;
        let mut rows: ByKey<Vec<Values>> = HashMap::new();
        for batch in reader {
            let batch = batch?;
            let users = column::<Int64Type>(&batch, "user_id")?;
            let times = column::<Int64Type>(&batch, "window_end")?;
            let features = (0..k)
                .map(|i| column::<Float64Type>(&batch, &format!("{name}{i}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            for row in 0..batch.num_rows() {
                rows.entry((users.value(row), times.value(row)))
                    .or_default()
                    .push(features.iter().map(|f| Some(f.value(row))).collect());
            }
        }
        rows.retain(|_, same| same.len() > 1);
        out.push(rows);
    }
    Ok(out)
}

/// Waits for a child, sampling its peak RSS; returns its status, its
/// standard output, and the peak (MiB).
async fn wait_sampling(
    mut child: tokio::process::Child,
) -> anyhow::Result<(std::process::ExitStatus, Vec<u8>, Option<f64>)> {
    use tokio::io::AsyncReadExt as _;
    let pid = child.id().context("the child has no pid")?;
    let mut stdout = child.stdout.take().context("the child's stdout")?;
    let reading = tokio::spawn(async move {
        let mut bytes = Vec::new();
        stdout.read_to_end(&mut bytes).await.map(|_| bytes)
    });
    let mut peak = None;
    let status = loop {
        if let Some(rss) = peak_rss_mib(pid) {
            peak = Some(rss);
        }
        tokio::select! {
            status = child.wait() => break status?,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    };
    Ok((status, reading.await??, peak))
}
