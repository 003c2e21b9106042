//! `weir snapshot`: a point-in-time-correct training set — a label table
//! joined with feature views as each row's time saw them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use weir_core::Config;
use weir_features::datasets::{
    DatasetVersion, Datasets, FileEntry, Lineage, Registration, ViewInput, hash_file, register,
};
use weir_features::snapshot::{SnapshotOptions, SnapshotStats, ViewRows, snapshot};
use weir_sql::registry::Registry;

use crate::connect::connect;

#[derive(clap::Args)]
pub struct Args {
    /// The label table (Parquet or CSV): entity key columns,
    /// `event_timestamp`, and any label columns.
    labels: PathBuf,
    /// A feature view (`name`, or `name@version`); repeat for several.
    #[arg(long = "view", required = true)]
    views: Vec<String>,
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
    let out = match &args.out {
        Some(out) => out.clone(),
        None => {
            // Named after the snapshot, or else its label table.
            let stem = match &args.name {
                Some(name) => std::ffi::OsString::from(name),
                None => args
                    .labels
                    .file_stem()
                    .context("the label table's file name")?
                    .to_owned(),
            };
            let dir = config.state_dir.join("snapshots");
            std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
            dir.join(stem).with_extension("parquet")
        }
    };
    let name = match &args.name {
        Some(name) => name.clone(),
        None => out
            .file_stem()
            .context("the snapshot's file name")?
            .to_string_lossy()
            .into_owned(),
    };
    let request = Request {
        labels: &args.labels,
        views: &args.views,
        out: &out,
        full_feature_names: args.full_feature_names,
        memory: args.memory,
        name: &name,
    };
    let (stats, dataset) = take_snapshot(config, bus, request).await?;
    eprintln!(
        "{} rows, {} columns → {}; dataset {} v{}",
        stats.rows,
        stats.columns.len(),
        out.display(),
        dataset.name,
        dataset.version
    );
    if args.show > 0 {
        let preview = first_rows(&out, args.show)?;
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

/// A snapshot to take.
pub struct Request<'a> {
    /// The label table.
    pub labels: &'a Path,
    /// The views: `name` or `name@version`.
    pub views: &'a [String],
    /// The snapshot file.
    pub out: &'a Path,
    /// Name feature columns `view__feature`.
    pub full_feature_names: bool,
    /// Memory the join may use before it spills.
    pub memory: usize,
    /// The dataset it is registered as.
    pub name: &'a str,
}

/// Takes a snapshot of the label table with the views named, reading each
/// view's rows from its topic, and registers it as a version of a dataset,
/// with the view versions and offsets and the label table as its lineage.
pub async fn take_snapshot(
    config: &Config,
    bus: &weir_bus::Bus,
    request: Request<'_>,
) -> anyhow::Result<(SnapshotStats, DatasetVersion)> {
    let Request {
        labels,
        views: references,
        out,
        full_feature_names,
        memory,
        name,
    } = request;
    let registry = Registry::load(bus).await?;
    let scratch = config
        .state_dir
        .join("snapshots")
        .join(format!("scratch-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| scratch.display().to_string())?;
    let result = async {
        let mut views = Vec::new();
        let mut inputs = Vec::new();
        for reference in references {
            let (rows, input) = view_rows(bus, &registry, reference, &scratch).await?;
            views.push(rows);
            inputs.push(input);
        }
        let options = SnapshotOptions {
            full_feature_names,
            memory_limit: memory,
            scratch: scratch.join("join"),
        };
        let stats = snapshot(labels, &views, out, &options).await?;
        Ok::<_, anyhow::Error>((stats, inputs))
    }
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    let (stats, inputs) = result?;
    let (sha256, bytes) = hash_file(labels)?;
    let entity: Vec<String> = views_entity(&registry, references);
    let registration = Registration {
        name: name.to_string(),
        paths: vec![out.to_path_buf()],
        description: format!(
            "training snapshot of {} with {}",
            labels.display(),
            references.join(", ")
        ),
        entity,
        lineage: Lineage {
            views: inputs,
            files: vec![FileEntry {
                uri: labels.display().to_string(),
                sha256,
                bytes,
                metadata: Default::default(),
            }],
            datasets: Vec::new(),
        },
        ..Default::default()
    };
    let datasets = Datasets::load(bus).await?;
    let (dataset, _) = register(bus, &datasets, registration).await?;
    Ok((stats, dataset))
}

/// The entity keys of the views named, in order, without repeats.
fn views_entity(registry: &Registry, references: &[String]) -> Vec<String> {
    let mut keys = Vec::new();
    for reference in references {
        let name = reference
            .split_once('@')
            .map_or(reference.as_str(), |(n, _)| n);
        for key in registry
            .latest(name)
            .map(|v| v.header.entity.clone())
            .unwrap_or_default()
        {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    keys
}

/// A view version's rows, from its topic, in a Parquet file under
/// `scratch`, with the order they were written in (for ties); and the
/// offsets read, for the snapshot's lineage.
async fn view_rows(
    bus: &weir_bus::Bus,
    registry: &Registry,
    reference: &str,
    scratch: &Path,
) -> anyhow::Result<(ViewRows, ViewInput)> {
    let (name, number) = match reference.split_once('@') {
        Some((name, n)) => {
            let n = n
                .trim_start_matches('v')
                .parse::<u32>()
                .with_context(|| format!("`{reference}`: the version is a number"))?;
            (name, Some(n))
        }
        None => (reference, None),
    };
    let versions = registry.versions(name);
    let version = match number {
        Some(n) => versions.iter().find(|v| v.version == n),
        None => versions.last(),
    };
    let Some(version) = version else {
        bail!("no feature view `{reference}` (weir features list)");
    };
    let served = crate::features::online_view(version)?;
    let rows = weir_sql::batch::read_topic(bus, &version.topic, version.schema()?).await?;
    let mut offsets = std::collections::BTreeMap::new();
    for &(partition, offset) in rows.origins.iter().flatten() {
        let next = offsets.entry(partition).or_insert(0);
        *next = (*next).max(offset + 1);
    }
    let mut written = Vec::new();
    for (batch, origins) in rows.batches.iter().zip(&rows.origins) {
        let mut fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("__created", DataType::Int64, false));
        let mut columns = batch.columns().to_vec();
        // Offsets order the rows of a partition, and an entity's rows are
        // in one partition (the topic is keyed by entity).
        columns.push(Arc::new(Int64Array::from_iter_values(
            origins.iter().map(|(_, offset)| *offset),
        )));
        written.push(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?);
    }
    if written.is_empty() {
        bail!(
            "`{name}` v{} has no rows yet (is it running? weir features apply)",
            version.version
        );
    }
    let path = scratch.join(format!("{name}-v{}.parquet", version.version));
    crate::sql::write_parquet(&path, &written[0].schema(), &written)?;
    let input = ViewInput {
        name: name.to_string(),
        version: version.version,
        topic: version.topic.clone(),
        offsets,
    };
    let rows = ViewRows {
        name: name.to_string(),
        entity: served.entity,
        features: served.features,
        ttl: served.ttl,
        files: vec![path],
    };
    Ok((rows, input))
}
