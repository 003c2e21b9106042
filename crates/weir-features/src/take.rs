//! Taking a training snapshot of feature views as they are on the bus:
//! each view version's rows read from its topic (with the offsets read,
//! and the order they were written in for ties), joined point-in-time
//! with a label table ([`crate::snapshot`]), and the result registered as
//! a dataset version whose lineage names the view versions, their offsets
//! and the label table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::Int64Array;
use arrow::datatypes::{DataType, Field};
use weir_bus::Bus;
use weir_catalog::{At, Reference};
use weir_dataflow::batch::with_columns;
use weir_sql::registry::{Registry, output_schema};

use crate::FeaturesError;
use crate::datasets::{
    DatasetVersion, Datasets, FileEntry, Lineage, Registration, ViewInput, hash_file, register,
};
use crate::online::OnlineView;
use crate::snapshot::{SnapshotOptions, SnapshotStats, ViewRows, snapshot};

/// A snapshot to take.
#[derive(Debug, Clone)]
pub struct SnapshotRequest {
    /// The label table (Parquet or CSV).
    pub labels: PathBuf,
    /// The views: their latest versions, or the versions named.
    pub views: Vec<Reference>,
    /// The snapshot file (Parquet).
    pub out: PathBuf,
    /// Name feature columns `view__feature`.
    pub full_feature_names: bool,
    /// Memory the join may use before it spills.
    pub memory: usize,
    /// The dataset it is registered as.
    pub name: String,
    /// Where intermediate files go (removed after).
    pub scratch: PathBuf,
}

impl SnapshotRequest {
    /// A snapshot of `views` for the rows of `labels`, named `name` (else
    /// after `out`'s file name, or the label table's) and written to `out`
    /// (else `<state_dir>/snapshots/<name>.parquet`); 1 GiB for the join,
    /// features named as in their views.
    pub fn new(
        labels: PathBuf,
        views: Vec<Reference>,
        name: Option<String>,
        out: Option<PathBuf>,
        state_dir: &Path,
    ) -> Result<Self, FeaturesError> {
        let snapshots = state_dir.join("snapshots");
        let stem = |path: &Path| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .ok_or_else(|| failed(format!("{}: no file name", path.display())))
        };
        let name = match (name, &out) {
            (Some(name), _) => name,
            (None, Some(out)) => stem(out)?,
            (None, None) => stem(&labels)?,
        };
        let out = match out {
            Some(out) => out,
            None => {
                std::fs::create_dir_all(&snapshots)
                    .map_err(|e| failed(format!("{}: {e}", snapshots.display())))?;
                snapshots.join(&name).with_extension("parquet")
            }
        };
        Ok(Self {
            labels,
            views,
            out,
            full_feature_names: false,
            memory: 1 << 30,
            name,
            scratch: snapshots.join(format!("scratch-{}", std::process::id())),
        })
    }
}

fn failed(error: impl std::fmt::Display) -> FeaturesError {
    FeaturesError::Snapshot(error.to_string())
}

/// Takes the snapshot `request` asks for and registers it as a version of
/// a dataset.
pub async fn take_snapshot(
    bus: &Bus,
    request: &SnapshotRequest,
) -> Result<(SnapshotStats, DatasetVersion), FeaturesError> {
    let registry = Registry::load(bus).await.map_err(failed)?;
    let mut versions = Vec::new();
    for reference in &request.views {
        let known = registry.versions(&reference.name);
        // Views have versions, not aliases.
        let version = match reference.number_as::<u32>().map_err(failed)? {
            Some(number) => known.iter().find(|v| v.version == number),
            None if reference.at == At::Latest => known.last(),
            None => None,
        };
        let version = version.ok_or_else(|| {
            failed(format!(
                "no feature view `{reference}` (weir features list)"
            ))
        })?;
        versions.push(version.clone());
    }
    let scratch = &request.scratch;
    std::fs::create_dir_all(scratch).map_err(|e| failed(format!("{}: {e}", scratch.display())))?;
    let result = async {
        let mut views = Vec::new();
        let mut inputs = Vec::new();
        for version in &versions {
            let (rows, input) = view_rows(bus, version, scratch).await?;
            views.push(rows);
            inputs.push(input);
        }
        let options = SnapshotOptions {
            full_feature_names: request.full_feature_names,
            memory_limit: request.memory,
            scratch: scratch.join("join"),
        };
        let stats = snapshot(&request.labels, &views, &request.out, &options).await?;
        Ok::<_, FeaturesError>((stats, inputs))
    }
    .await;
    let _ = std::fs::remove_dir_all(scratch);
    let (stats, inputs) = result?;
    let (sha256, bytes) = hash_file(&request.labels)?;
    let mut entity: Vec<String> = Vec::new();
    for key in versions.iter().flat_map(|v| &v.header.entity) {
        if !entity.contains(key) {
            entity.push(key.clone());
        }
    }
    let registration = Registration {
        name: request.name.clone(),
        paths: vec![request.out.clone()],
        description: format!(
            "training snapshot of {} with {}",
            request.labels.display(),
            request
                .views
                .iter()
                .map(Reference::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        entity,
        lineage: Lineage {
            views: inputs,
            files: vec![FileEntry {
                uri: request.labels.display().to_string(),
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

/// A view version's rows, from its topic, in a Parquet file under
/// `scratch`, with the order they were written in (for ties); and the
/// offsets read, for the snapshot's lineage.
async fn view_rows(
    bus: &Bus,
    version: &weir_catalog::ViewVersion,
    scratch: &Path,
) -> Result<(ViewRows, ViewInput), FeaturesError> {
    let served = OnlineView::of(version)?;
    let schema = output_schema(version).map_err(failed)?;
    let rows = weir_sql::batch::read_topic(bus, &version.topic, schema)
        .await
        .map_err(failed)?;
    let mut offsets = BTreeMap::new();
    for &(partition, offset) in rows.origins.iter().flatten() {
        let next = offsets.entry(partition).or_insert(0);
        *next = (*next).max(offset + 1);
    }
    let mut written = Vec::new();
    for (batch, origins) in rows.batches.iter().zip(&rows.origins) {
        // Offsets order the rows of a partition, and an entity's rows are
        // in one partition (the topic is keyed by entity).
        let created = Int64Array::from_iter_values(origins.iter().map(|(_, offset)| *offset));
        let created = (
            Field::new("__created", DataType::Int64, false),
            Arc::new(created) as _,
        );
        written.push(with_columns(batch, [created]).map_err(failed)?);
    }
    if written.is_empty() {
        return Err(failed(format!(
            "`{}` v{} has no rows yet (is it running? weir features apply)",
            version.name, version.version
        )));
    }
    let path = scratch.join(format!("{}-v{}.parquet", version.name, version.version));
    weir_sql::batch::write_parquet(&path, &written[0].schema(), &written).map_err(failed)?;
    let input = ViewInput {
        name: version.name.clone(),
        version: version.version,
        topic: version.topic.clone(),
        offsets,
    };
    let rows = ViewRows {
        name: version.name.clone(),
        entity: served.entity,
        features: served.features,
        ttl: served.ttl,
        time: served.time,
        created: served.created,
        files: vec![path],
    };
    Ok((rows, input))
}
