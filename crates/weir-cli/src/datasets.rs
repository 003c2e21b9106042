//! `weir datasets`: register, list, search and describe versioned datasets
//! (tables, unstructured files, snapshots) — and search feature views with
//! them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use weir_core::Config;
use weir_features::datasets::{Datasets, Query, Registration, register};
use weir_sql::registry::Registry;

use crate::features::print_rows;
use weir_broker::connect::connect;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Register a version of a dataset: files or directories (Parquet or
    /// CSV tables, or any files: images, text, audio). Same content: no new
    /// version.
    Register {
        /// The dataset's name.
        name: String,
        /// Its files, or directories (read recursively).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// What it is.
        #[arg(long, default_value = "")]
        description: String,
        /// Who answers for it.
        #[arg(long, default_value = "")]
        owner: String,
        /// A tag (repeat for several).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// An entity key column (repeat for several).
        #[arg(long)]
        entity: Vec<String>,
        /// Per-file metadata: JSON lines, each with `file` (the path as
        /// registered) and any other fields.
        #[arg(long)]
        metadata: Option<PathBuf>,
    },
    /// The datasets, latest versions.
    List,
    /// Datasets and feature views by words, tag, entity or owner.
    Search {
        /// Words in the name, description or tags.
        text: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        #[arg(long)]
        entity: Option<String>,
        #[arg(long)]
        owner: Option<String>,
    },
    /// A dataset version in full (JSON): files, hashes, schema, lineage.
    Describe {
        /// `name` (the latest version) or `name@N`.
        dataset: weir_catalog::Reference,
    },
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let connection = connect(config).await?;
    let result = command(&connection.bus, args).await;
    connection.close().await;
    result
}

async fn command(bus: &weir_bus::Bus, args: Args) -> anyhow::Result<ExitCode> {
    let datasets = Datasets::load(bus).await?;
    match args.command {
        Command::Register {
            name,
            paths,
            description,
            owner,
            tags,
            entity,
            metadata,
        } => {
            let metadata = match metadata {
                Some(path) => weir_features::datasets::read_metadata(&path)?,
                None => BTreeMap::new(),
            };
            let registration = Registration {
                name,
                paths,
                description,
                owner,
                tags,
                entity,
                metadata,
                lineage: Default::default(),
            };
            let (version, recorded) = register(bus, &datasets, registration).await?;
            println!(
                "{} v{} ({}): {} file(s), {}{}",
                version.name,
                version.version,
                if recorded { "recorded" } else { "unchanged" },
                version.files.len(),
                version.format,
                version
                    .rows
                    .map(|rows| format!(", {rows} rows"))
                    .unwrap_or_default()
            );
        }
        Command::List => {
            let mut rows = vec![[
                "DATASET".to_string(),
                "VERSION".into(),
                "FORMAT".into(),
                "FILES".into(),
                "ROWS".into(),
                "OWNER".into(),
                "TAGS".into(),
                "DESCRIPTION".into(),
            ]];
            for version in datasets.search(&Query::default()) {
                rows.push([
                    version.name.clone(),
                    version.version.to_string(),
                    version.format.clone(),
                    version.files.len().to_string(),
                    version.rows.map_or("-".into(), |r| r.to_string()),
                    version.owner.clone(),
                    version.tags.join(","),
                    version.description.clone(),
                ]);
            }
            if rows.len() == 1 {
                println!("no datasets (weir datasets register NAME FILES…)");
            } else {
                print_rows(&rows);
            }
        }
        Command::Search {
            text,
            tag,
            entity,
            owner,
        } => {
            let query = Query {
                text,
                tag,
                entity,
                owner,
            };
            let mut rows = vec![[
                "KIND".to_string(),
                "NAME".into(),
                "VERSION".into(),
                "ENTITY".into(),
                "OWNER".into(),
                "TAGS".into(),
                "DESCRIPTION".into(),
            ]];
            let registry = Registry::load(bus).await?;
            for name in registry.names() {
                let view = registry.latest(name).expect("a version");
                let h = &view.header;
                if query.matches(name, &h.description, &h.owner, &h.tags, &h.entity) {
                    rows.push([
                        "feature view".into(),
                        name.to_string(),
                        view.version.to_string(),
                        h.entity.join(","),
                        h.owner.clone(),
                        h.tags.join(","),
                        h.description.clone(),
                    ]);
                }
            }
            for version in datasets.search(&query) {
                rows.push([
                    "dataset".into(),
                    version.name.clone(),
                    version.version.to_string(),
                    version.entity.join(","),
                    version.owner.clone(),
                    version.tags.join(","),
                    version.description.clone(),
                ]);
            }
            if rows.len() == 1 {
                println!("nothing matches");
            } else {
                print_rows(&rows);
            }
        }
        Command::Describe { dataset } => {
            let Some(version) = datasets.find(&dataset) else {
                bail!("no dataset `{dataset}` (weir datasets list)");
            };
            println!("{}", serde_json::to_string_pretty(version)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
