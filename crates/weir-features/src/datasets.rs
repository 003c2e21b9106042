//! Datasets: named, versioned data — a table (Parquet or CSV files), a set
//! of unstructured files (images, text, audio: any bytes), or a training
//! snapshot — with owner, tags, description, entity keys, schema, per-file
//! content hashes and metadata, and lineage (the feature view versions and
//! offsets, and the files, it was made from).
//!
//! Each version is an event on `weir.meta` (kind `dataset_version`), like
//! the feature views' versions: the registry is the topic, and any node
//! rebuilds it by reading it. A version is immutable; registering the same
//! content again records nothing, changed content is the next version.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sha2::{Digest as _, Sha256};
use weir_bus::{Bus, OutRecord};

use crate::FeaturesError;

/// The `kind` of a dataset version event on `weir.meta`.
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

/// What to register.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    /// The dataset's name.
    pub name: String,
    /// Files, or directories read recursively.
    pub paths: Vec<PathBuf>,
    /// What it is.
    pub description: String,
    /// Who answers for it.
    pub owner: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Entity key columns.
    pub entity: Vec<String>,
    /// Per-file metadata, by path as given (or as found under a directory).
    pub metadata: BTreeMap<String, BTreeMap<String, Json>>,
    /// What it was made from.
    pub lineage: Lineage,
}

/// What to look for (every given part must match).
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Words in the name, description or tags (case-insensitive).
    pub text: Option<String>,
    /// A tag.
    pub tag: Option<String>,
    /// An entity key column.
    pub entity: Option<String>,
    /// An owner.
    pub owner: Option<String>,
}

impl Query {
    /// Whether a thing with these attributes matches.
    pub fn matches(
        &self,
        name: &str,
        description: &str,
        owner: &str,
        tags: &[String],
        entity: &[String],
    ) -> bool {
        let text = self.text.as_ref().is_none_or(|text| {
            let haystack = format!("{name} {description} {}", tags.join(" ")).to_lowercase();
            text.to_lowercase()
                .split_whitespace()
                .all(|word| haystack.contains(word))
        });
        text && self.tag.as_ref().is_none_or(|t| tags.contains(t))
            && self.entity.as_ref().is_none_or(|e| entity.contains(e))
            && self.owner.as_ref().is_none_or(|o| o == owner)
    }
}

/// The datasets registered on `weir.meta`.
#[derive(Debug, Clone, Default)]
pub struct Datasets {
    versions: BTreeMap<String, Vec<DatasetVersion>>,
}

fn fail(error: impl std::fmt::Display) -> FeaturesError {
    FeaturesError::Datasets(error.to_string())
}

impl Datasets {
    /// Reads `weir.meta` to its end.
    pub async fn load(bus: &Bus) -> Result<Self, FeaturesError> {
        let mut datasets = Self::default();
        for payload in bus.read_log(weir_core::topics::META).await.map_err(fail)? {
            // Other kinds of metadata share the topic.
            let Some(version) = serde_json::from_slice::<DatasetVersion>(&payload)
                .ok()
                .filter(|v| v.kind == KIND)
            else {
                continue;
            };
            let versions = datasets.versions.entry(version.name.clone()).or_default();
            if versions.iter().all(|v| v.version != version.version) {
                versions.push(version);
                versions.sort_by_key(|v| v.version);
            }
        }
        Ok(datasets)
    }

    /// The datasets' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.versions.keys().map(String::as_str)
    }

    /// A dataset's versions, oldest first.
    pub fn versions(&self, name: &str) -> &[DatasetVersion] {
        self.versions.get(name).map_or(&[], Vec::as_slice)
    }

    /// `name` (latest version) or `name@N`.
    pub fn find(&self, reference: &str) -> Option<&DatasetVersion> {
        match reference.split_once('@') {
            Some((name, n)) => {
                let n: u32 = n.trim_start_matches('v').parse().ok()?;
                self.versions(name).iter().find(|v| v.version == n)
            }
            None => self.versions(reference).last(),
        }
    }

    /// The latest version of each dataset that matches.
    pub fn search(&self, query: &Query) -> Vec<&DatasetVersion> {
        self.versions
            .values()
            .filter_map(|versions| versions.last())
            .filter(|v| query.matches(&v.name, &v.description, &v.owner, &v.tags, &v.entity))
            .collect()
    }
}

/// SHA-256 of a file, hex, and its size.
pub fn hash_file(path: &Path) -> Result<(String, u64), FeaturesError> {
    let mut file =
        std::fs::File::open(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 16];
    let mut bytes = 0;
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(|e| fail(format!("{}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    Ok((hex(&hasher.finalize()), bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The files of `paths`: files as given, directories read recursively, in
/// name order.
fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>, FeaturesError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| fail(format!("{}: {e}", path.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            files.extend(collect(&entries)?);
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            return Err(fail(format!(
                "{}: no such file or directory",
                path.display()
            )));
        }
    }
    Ok(files)
}

/// The schema and rows of a table's files, if they all are Parquet or all
/// CSV: (`format`, columns, rows).
fn table_shape(files: &[PathBuf]) -> Result<(String, Vec<Column>, Option<u64>), FeaturesError> {
    let extension = |p: &PathBuf| {
        p.extension()
            .and_then(|e| e.to_str())
            .map(str::to_lowercase)
    };
    let all =
        |ext: &str| !files.is_empty() && files.iter().all(|f| extension(f).as_deref() == Some(ext));
    let columns = |schema: &arrow::datatypes::Schema| {
        schema
            .fields()
            .iter()
            .map(|f| Column {
                name: f.name().clone(),
                r#type: f.data_type().to_string(),
            })
            .collect::<Vec<_>>()
    };
    if all("parquet") {
        let mut rows = 0;
        let mut schema = None;
        for path in files {
            let file =
                std::fs::File::open(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
            let reader =
                datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                    file,
                )
                .map_err(|e| fail(format!("{}: {e}", path.display())))?;
            rows += reader.metadata().file_metadata().num_rows() as u64;
            let this = columns(reader.schema());
            match &schema {
                None => schema = Some(this),
                Some(first) if *first != this => {
                    return Err(fail(format!(
                        "{}: its columns differ from the first file's",
                        path.display()
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(("parquet".into(), schema.unwrap_or_default(), Some(rows)))
    } else if all("csv") {
        let file = std::fs::File::open(&files[0])
            .map_err(|e| fail(format!("{}: {e}", files[0].display())))?;
        let (schema, _) = arrow_csv::reader::Format::default()
            .with_header(true)
            .infer_schema(file, Some(1_000))
            .map_err(|e| fail(format!("{}: {e}", files[0].display())))?;
        Ok(("csv".into(), columns(&schema), None))
    } else {
        Ok(("files".into(), Vec::new(), None))
    }
}

/// Registers a version of a dataset: hashes its files, reads a table's
/// schema, and records a new version on `weir.meta` unless the latest has
/// the same content. Returns the version and whether it is new.
pub async fn register(
    bus: &Bus,
    known: &Datasets,
    registration: Registration,
) -> Result<(DatasetVersion, bool), FeaturesError> {
    if registration.name.is_empty()
        || !registration
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        return Err(fail(format!(
            "`{}` is not a dataset name (letters, digits, `_`, `-`, `.`)",
            registration.name
        )));
    }
    let paths = collect(&registration.paths)?;
    if paths.is_empty() {
        return Err(fail(format!("`{}` has no files", registration.name)));
    }
    let mut files = Vec::with_capacity(paths.len());
    let mut metadata = registration.metadata.clone();
    for path in &paths {
        let (sha256, bytes) = hash_file(path)?;
        let uri = path.display().to_string();
        files.push(FileEntry {
            metadata: metadata.remove(&uri).unwrap_or_default(),
            uri,
            sha256,
            bytes,
        });
    }
    if let Some(unknown) = metadata.keys().next() {
        return Err(fail(format!(
            "metadata for `{unknown}`, which is not one of the dataset's files"
        )));
    }
    let (format, schema, rows) = table_shape(&paths)?;
    for key in &registration.entity {
        if format != "files" && !schema.iter().any(|c| &c.name == key) {
            return Err(fail(format!(
                "entity key `{key}` is not a column ({})",
                schema
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    // The content: each file's hash and metadata, and the lineage.
    let mut hasher = Sha256::new();
    for file in &files {
        hasher.update(file.sha256.as_bytes());
        hasher.update(serde_json::to_vec(&file.metadata).expect("JSON"));
    }
    hasher.update(serde_json::to_vec(&registration.lineage).expect("JSON"));
    let hash = hex(&hasher.finalize());
    let latest = known.versions(&registration.name).last();
    let same = |v: &DatasetVersion| {
        v.hash == hash
            && v.description == registration.description
            && v.owner == registration.owner
            && v.tags == registration.tags
            && v.entity == registration.entity
    };
    if let Some(latest) = latest.filter(|v| same(v)) {
        return Ok((latest.clone(), false));
    }
    let version = DatasetVersion {
        kind: KIND.into(),
        name: registration.name.clone(),
        version: latest.map_or(1, |v| v.version + 1),
        hash,
        format,
        description: registration.description,
        owner: registration.owner,
        tags: registration.tags,
        entity: registration.entity,
        schema,
        rows,
        files,
        lineage: registration.lineage,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    };
    let key = format!("dataset/{}/v{}", version.name, version.version);
    let value = serde_json::to_vec(&version).expect("a version serializes");
    bus.producer()
        .map_err(fail)?
        .send_and_wait(OutRecord::new(weir_core::topics::META, &value).key(key.as_bytes()))
        .await
        .map_err(fail)?;
    Ok((version, true))
}
