//! Feature views and their versions, as events on `weir.meta`.
//!
//! Applying a view records a **version**: its header, its query, the schema
//! of its output and the topic it writes (`weir.features.<view>.v<N>`).
//! A version is immutable: applying a changed definition records a new
//! version with a new topic, and the old one's results stay as they were;
//! applying the same definition again (same content hash) changes nothing.
//! The registry is the topic: any node rebuilds it by reading `weir.meta`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use weir_bus::{Bus, OutRecord};
use weir_catalog::Record;

use crate::SqlError;
use crate::plan::{Catalog, Plan, PlanOptions, plan_view};
use crate::view::ViewFile;

pub use weir_catalog::view::{ColumnDef, KIND, ViewVersion};

/// A version's output schema, as Arrow types.
pub fn output_schema(version: &ViewVersion) -> Result<SchemaRef, SqlError> {
    let fields = version
        .output
        .iter()
        .map(|c| {
            c.data_type
                .parse::<DataType>()
                .map(|t| Field::new(&c.name, t, c.nullable))
                .map_err(|e| SqlError::Execution(format!("view `{}`: {e}", version.name)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

/// Every recorded version, by view name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    views: BTreeMap<String, Vec<ViewVersion>>,
}

impl Registry {
    /// Reads `weir.meta` to its end.
    pub async fn load(bus: &Bus) -> Result<Self, SqlError> {
        let mut registry = Self::default();
        for payload in bus.read_log(weir_core::topics::META).await? {
            // Other kinds of metadata share the topic.
            if let Some(Record::View(version)) = Record::decode(&payload) {
                registry.add(*version);
            }
        }
        Ok(registry)
    }

    fn add(&mut self, version: ViewVersion) {
        let versions = self.views.entry(version.name.clone()).or_default();
        if versions.iter().all(|v| v.version != version.version) {
            versions.push(version);
            versions.sort_by_key(|v| v.version);
        }
    }

    /// The views' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.views.keys().map(String::as_str)
    }

    /// A view's versions, oldest first.
    pub fn versions(&self, name: &str) -> &[ViewVersion] {
        self.views.get(name).map_or(&[], Vec::as_slice)
    }

    /// A view's latest version.
    pub fn latest(&self, name: &str) -> Option<&ViewVersion> {
        self.versions(name).last()
    }
}

/// Plans a recorded version of a view again (for its batch: a check, a
/// backfill), its job's state under `state_dir`.
pub async fn plan_version(
    bus: &Bus,
    registry: &Registry,
    version: &ViewVersion,
    state_dir: &Path,
) -> Result<Plan, SqlError> {
    plan_view(
        &ViewFile::of_version(version),
        &BusCatalog::new(bus, registry).await?,
        &PlanOptions {
            topic: version.topic.clone(),
            job: version.job.clone(),
            state_dir: state_dir.to_path_buf(),
        },
    )
}

/// Resolves names through the bus (topics, the schema registry) and the
/// view registry.
pub struct BusCatalog<'a> {
    bus: &'a Bus,
    partitions: HashMap<String, i32>,
    views: HashMap<String, (String, SchemaRef)>,
}

impl<'a> BusCatalog<'a> {
    /// A catalog of the bus's topics and the registry's latest versions.
    pub async fn new(bus: &'a Bus, registry: &Registry) -> Result<Self, SqlError> {
        let partitions = bus
            .admin()
            .list_topics()
            .await?
            .into_iter()
            .map(|(name, partitions)| (name, partitions as i32))
            .collect();
        let mut views = HashMap::new();
        for name in registry.names() {
            if let Some(latest) = registry.latest(name) {
                views.insert(
                    name.to_string(),
                    (latest.topic.clone(), output_schema(latest)?),
                );
            }
        }
        Ok(Self {
            bus,
            partitions,
            views,
        })
    }

    /// Makes a view planned now visible to the views planned after it.
    pub fn add_view(&mut self, name: &str, topic: &str, schema: SchemaRef) {
        self.views
            .insert(name.to_string(), (topic.to_string(), schema));
    }
}

impl Catalog for BusCatalog<'_> {
    fn topic_schema(&self, topic: &str) -> Result<SchemaRef, String> {
        weir_dataflow::job::topic_schema(self.bus, topic, None)
            .map_err(|e| e.to_string().trim_start_matches("plan: ").to_string())
    }

    fn partitions(&self, topic: &str) -> Result<i32, String> {
        self.partitions
            .get(topic)
            .copied()
            .ok_or_else(|| format!("topic `{topic}` does not exist"))
    }

    fn view_output(&self, view: &str) -> Result<(String, SchemaRef), String> {
        self.views.get(view).cloned().ok_or_else(|| {
            format!(
                "no feature view `{view}` is applied (apply it first, or in the same directory)"
            )
        })
    }
}

/// What applying a view did.
#[derive(Debug)]
pub struct Applied {
    /// The planned view (its version's topic and job).
    pub plan: Plan,
    /// The version it runs as.
    pub version: ViewVersion,
    /// Whether this apply recorded the version (false: unchanged).
    pub recorded: bool,
}

/// The version `view` would be: the latest if its content is the same,
/// else the next one.
fn next_version(registry: &Registry, view: &ViewFile) -> (u32, bool) {
    match registry.latest(&view.header.name) {
        Some(latest) if latest.hash == view.content_hash() => (latest.version, false),
        Some(latest) => (latest.version + 1, true),
        None => (1, true),
    }
}

/// Plans `views` (in dependency order: a view read by another comes
/// first) and records a version for each that is new or changed. Nothing
/// is recorded unless every view plans.
pub async fn apply(
    bus: &Bus,
    registry: &Registry,
    views: &[ViewFile],
    state_dir: &Path,
) -> Result<Vec<Applied>, SqlError> {
    let mut catalog = BusCatalog::new(bus, registry).await?;
    let mut planned = Vec::new();
    for view in order(views)? {
        let (version, recorded) = next_version(registry, view);
        let name = &view.header.name;
        let topic = weir_core::topics::features(&format!("{name}.v{version}"));
        let job = format!("features-{name}-v{version}");
        let plan = plan_view(
            view,
            &catalog,
            &PlanOptions {
                topic: topic.clone(),
                job: job.clone(),
                state_dir: state_dir.to_path_buf(),
            },
        )?;
        catalog.add_view(name, &topic, plan.output.clone());
        let applied_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as i64;
        let version = ViewVersion {
            kind: KIND.to_string(),
            name: name.clone(),
            version,
            hash: view.content_hash(),
            topic,
            job,
            path: view.path.clone(),
            header: view.header.clone(),
            sql: view.sql.clone(),
            output: plan
                .output
                .fields()
                .iter()
                .map(|f| ColumnDef {
                    name: f.name().clone(),
                    data_type: f.data_type().to_string(),
                    nullable: f.is_nullable(),
                })
                .collect(),
            feature_time: Some(match plan.window {
                Some(_) => weir_catalog::view::WINDOW_END.to_string(),
                None => plan.source.event_time.clone(),
            }),
            applied_at,
        };
        planned.push(Applied {
            plan,
            version,
            recorded,
        });
    }
    let producer = bus.producer()?;
    for applied in planned.iter().filter(|a| a.recorded) {
        let record = Record::View(Box::new(applied.version.clone()));
        producer
            .send_and_wait(
                OutRecord::new(weir_core::topics::META, &record.encode())
                    .key(record.key().as_bytes()),
            )
            .await?;
        if let Some(spec) = applied.plan.pipeline.sink_topic(1) {
            bus.admin().ensure_topic(&spec).await?;
        }
    }
    Ok(planned)
}

/// Views in dependency order: each after the views (of the same apply) it
/// reads.
fn order(views: &[ViewFile]) -> Result<Vec<&ViewFile>, SqlError> {
    let names: HashMap<&str, &ViewFile> =
        views.iter().map(|v| (v.header.name.as_str(), v)).collect();
    let mut ordered: Vec<&ViewFile> = Vec::new();
    let mut visiting: Vec<&str> = Vec::new();
    fn visit<'a>(
        view: &'a ViewFile,
        names: &HashMap<&str, &'a ViewFile>,
        ordered: &mut Vec<&'a ViewFile>,
        visiting: &mut Vec<&'a str>,
    ) -> Result<(), SqlError> {
        let name = view.header.name.as_str();
        if ordered.iter().any(|v| v.header.name == name) {
            return Ok(());
        }
        if visiting.contains(&name) {
            return Err(SqlError::At {
                path: view.path.clone(),
                line: 2,
                column: 1,
                message: format!(
                    "views read each other in a cycle: {} → {name}",
                    visiting.join(" → ")
                ),
            });
        }
        visiting.push(name);
        for source in view.header.sources.values() {
            if let Some(upstream) = source.view.as_deref().and_then(|u| names.get(u)) {
                visit(upstream, names, ordered, visiting)?;
            }
        }
        visiting.pop();
        ordered.push(view);
        Ok(())
    }
    for view in views {
        visit(view, &names, &mut ordered, &mut visiting)?;
    }
    Ok(ordered)
}

/// View files under `path` (a file, or a directory read recursively for
/// `*.sql`), in name order.
pub fn load_views(path: &Path) -> Result<Vec<ViewFile>, SqlError> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else if path.extension().is_some_and(|e| e == "sql") {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    if path.is_dir() {
        walk(path, &mut files).map_err(|e| SqlError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    } else {
        files.push(path.to_path_buf());
    }
    files.iter().map(|f| ViewFile::load(f)).collect()
}
