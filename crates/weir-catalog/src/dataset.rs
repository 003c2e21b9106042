//! Dataset versions: named, versioned data — a table, a set of files, or
//! a training snapshot — recorded on `weir.meta` (kind `dataset_version`)
//! by `weir-features` with its files' hashes and its lineage.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::Reference;

/// The `kind` of a dataset version record.
pub const KIND: &str = "dataset_version";

/// One file of a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Where it is (a path or URI).
    pub uri: String,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
    /// Anything known about it (a label, a caption, a sample rate…).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, Json>,
}

/// A feature view version a dataset was made from, read up to `offsets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewInput {
    /// The view.
    pub name: String,
    /// Its version.
    pub version: u32,
    /// The topic its rows were read from.
    pub topic: String,
    /// Per partition, the offset read up to (exclusive).
    pub offsets: BTreeMap<i32, i64>,
}

/// What a dataset was made from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    /// Feature view versions, with the offsets read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<ViewInput>,
    /// Input files (a snapshot's label table), with their hashes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileEntry>,
    /// Parent datasets, `name@version`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datasets: Vec<String>,
}

impl Lineage {
    /// The parent datasets that name a version, as `(name, version)`.
    pub fn parent_datasets(&self) -> Vec<(String, u32)> {
        self.datasets
            .iter()
            .filter_map(|d| d.parse::<Reference>().ok())
            .filter_map(|r| Some((r.number_as::<u32>().ok()??, r.name)))
            .map(|(version, name)| (name, version))
            .collect()
    }
}

/// A column of a table dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its Arrow type, as text.
    pub r#type: String,
}

/// One immutable version of a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetVersion {
    /// Always [`KIND`].
    pub kind: String,
    /// The dataset's name.
    pub name: String,
    /// 1, 2, …
    pub version: u32,
    /// SHA-256 over its files' hashes and its lineage: same content, same
    /// hash.
    pub hash: String,
    /// `parquet`, `csv`, or `files` (unstructured).
    pub format: String,
    /// What it is.
    #[serde(default)]
    pub description: String,
    /// Who answers for it.
    #[serde(default)]
    pub owner: String,
    /// Tags to find it by.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Its entity key columns, if it is keyed.
    #[serde(default)]
    pub entity: Vec<String>,
    /// Its columns, for a table.
    #[serde(default)]
    pub schema: Vec<Column>,
    /// Rows, for a table.
    #[serde(default)]
    pub rows: Option<u64>,
    /// Its files.
    pub files: Vec<FileEntry>,
    /// What it was made from.
    #[serde(default)]
    pub lineage: Lineage,
    /// When this version was registered (ms since the epoch).
    pub created: i64,
}

impl DatasetVersion {
    /// `name@version`.
    pub fn reference(&self) -> Reference {
        Reference::version(&self.name, u64::from(self.version))
    }
}
