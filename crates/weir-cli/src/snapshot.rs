//! `weir snapshot`: a point-in-time-correct training set — a label table
//! joined with feature views as each row's time saw them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use arrow::array::RecordBatch;
use weir_catalog::Reference;
use weir_core::Config;
use weir_features::take::{SnapshotRequest, take_snapshot};

use weir_broker::connect::connect;

#[derive(clap::Args)]
pub struct Args {
    /// The label table (Parquet or CSV): entity key columns,
    /// `event_timestamp`, and any label columns.
    labels: PathBuf,
    /// A feature view (`name`, or `name@version`); repeat for several.
    #[arg(long = "view", required = true)]
    views: Vec<Reference>,
    /// The snapshot (Parquet); default `<state>/snapshots/<name>.parquet`
    /// (`--name`, or else the label table's file name).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Name feature columns `view__feature`.
    #[arg(long)]
    full_feature_names: bool,
    /// Memory the join may use before it spills to disk.
    #[arg(long, default_value_t = 1 << 30)]
    memory: usize,
    /// Rows of the snapshot to print.
    #[arg(long, default_value_t = 10)]
    show: usize,
    /// The dataset it is registered as (default: the file's name).
    #[arg(long)]
    name: Option<String>,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let connection = connect(config).await?;
    let result = take(config, &connection.bus, args).await;
    connection.close().await;
    result
}

async fn take(config: &Config, bus: &weir_bus::Bus, args: Args) -> anyhow::Result<ExitCode> {
    let request = SnapshotRequest {
        full_feature_names: args.full_feature_names,
        memory: args.memory,
        ..SnapshotRequest::new(
            args.labels,
            args.views,
            args.name,
            args.out,
            &config.state_dir,
        )?
    };
    let out = &request.out;
    let (stats, dataset) = take_snapshot(bus, &request).await?;
    eprintln!(
        "{} rows, {} columns → {}; dataset {}",
        stats.rows,
        stats.columns.len(),
        out.display(),
        dataset.reference()
    );
    if args.show > 0 {
        let preview = first_rows(out, args.show)?;
        println!("{}", arrow::util::pretty::pretty_format_batches(&preview)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// The first `n` rows of a Parquet file.
pub fn first_rows(path: &Path, n: usize) -> anyhow::Result<Vec<RecordBatch>> {
    let file = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let reader =
        datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?
            .with_limit(n)
            .with_batch_size(n.max(1))
            .build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}
