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

use serde_json::Value as Json;
use sha2::{Digest as _, Sha256};
use weir_bus::{Bus, OutRecord};
use weir_catalog::{At, Record, Reference};

use crate::FeaturesError;

pub use weir_catalog::dataset::{Column, DatasetVersion, FileEntry, KIND, Lineage, ViewInput};

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
            let Some(Record::Dataset(version)) = Record::decode(&payload) else {
                continue;
            };
            let version = *version;
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

    /// The version `reference` names: `name` (the latest) or `name@N`
    /// (datasets have no aliases).
    pub fn find(&self, reference: &Reference) -> Option<&DatasetVersion> {
        let versions = self.versions(&reference.name);
        match &reference.at {
            At::Latest => versions.last(),
            At::Version(n) => versions.iter().find(|v| u64::from(v.version) == *n),
            At::Alias(_) => None,
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

/// Per-file metadata from a JSON-lines file: each line an object with
/// `file` (the path of a file as registered) and any other fields.
pub fn read_metadata(
    path: &Path,
) -> Result<BTreeMap<String, BTreeMap<String, Json>>, FeaturesError> {
    let invalid = |message: String| FeaturesError::Datasets(message);
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(format!("reading {}: {e}", path.display())))?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let mut fields: BTreeMap<String, Json> = serde_json::from_str(line)
            .map_err(|e| invalid(format!("{at}:{}: not a JSON object: {e}", e.column())))?;
        let Some(Json::String(file)) = fields.remove("file") else {
            return Err(invalid(format!(
                "{at}: no `file` field (the path of a file as registered)"
            )));
        };
        out.insert(file, fields);
    }
    Ok(out)
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
    let record = Record::Dataset(Box::new(version.clone()));
    bus.producer()
        .map_err(fail)?
        .send_and_wait(
            OutRecord::new(weir_core::topics::META, &record.encode()).key(record.key().as_bytes()),
        )
        .await
        .map_err(fail)?;
    Ok((version, true))
}
