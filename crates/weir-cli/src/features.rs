//! `weir features`: feature views in SQL — apply (plan, version, run),
//! list, describe, backfill, check — and their latest values, online
//! (serve, get).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use weir_core::Config;
use weir_dataflow::job::Cluster;
use weir_features::follow::Online;
use weir_features::online::rfc3339;
use weir_sql::registry::{self, Registry};

use crate::job::{StatusOutput, supervise};
use weir_broker::connect::connect;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Plan feature views (a `.sql` file or a directory of them), record a
    /// new version of each new or changed one, and run them as streaming
    /// jobs until Ctrl-C (which checkpoints; the next apply resumes).
    Apply {
        /// A view file, or a directory read recursively for `*.sql`.
        path: PathBuf,
        /// Only plan and record; run nothing.
        #[arg(long)]
        no_run: bool,
        /// Run to the current end of the sources, then stop (a backfill of
        /// the stream, or a test).
        #[arg(long)]
        until_end: bool,
        /// Worker threads per view.
        #[arg(short = 'w', long, default_value_t = 1)]
        threads: usize,
        /// Print the jobs' status as JSON lines this often (when not on a
        /// terminal, or with `--json`).
        #[arg(long, value_parser = weir_dataflow::spec::parse_duration, default_value = "5s")]
        status_every: Duration,
        /// JSON status lines, also on a terminal.
        #[arg(long)]
        json: bool,
    },
    /// The views, their latest versions and where their features go.
    List,
    /// A view: header, query, output schema, versions.
    Describe {
        /// The view's name.
        view: String,
        /// A version other than the latest.
        #[arg(value_name = "VERSION")]
        number: Option<u32>,
    },
    /// Serve the views' latest values over HTTP (`POST /v1/features/online`
    /// and Feast's `POST /get-online-features`), kept up to date from their
    /// topics in the online store, until Ctrl-C.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:6566")]
        listen: std::net::SocketAddr,
    },
    /// The latest values of a view for one entity (its key values in the
    /// view's entity order), from the online store brought up to date.
    Get {
        /// The view's name.
        view: String,
        /// The entity's key values.
        #[arg(required = true)]
        entity: Vec<String>,
    },
    /// Compare a view's stream results (its topic) with the same SQL run as
    /// a batch over its source's history: training/serving skew, checked.
    Check {
        /// The view's name.
        view: String,
    },
    /// Compute a view over history as a batch (DataFusion over the source
    /// topic read to its end) and write the rows to Parquet.
    Backfill {
        /// The view's name.
        view: String,
        /// Only events at or after this time (ms since the epoch or RFC 3339).
        #[arg(long, value_parser = parse_time)]
        from: Option<i64>,
        /// Only events before this time.
        #[arg(long, value_parser = parse_time)]
        to: Option<i64>,
        /// The Parquet file (default: `<view>.v<N>.parquet`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// A time as milliseconds since the epoch, from a number or RFC 3339.
fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(text)
        .map(|ns| ns / 1_000_000)
        .map_err(|_| {
            format!("`{text}` is neither milliseconds since the epoch nor an RFC 3339 time")
        })
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let connection = connect(config).await?;
    let result = command(config, &connection, args).await;
    connection.close().await;
    result
}

async fn command(
    config: &Config,
    connection: &weir_broker::connect::Connection,
    args: Args,
) -> anyhow::Result<ExitCode> {
    let bus = &connection.bus;
    match args.command {
        Command::Apply {
            path,
            no_run,
            until_end,
            threads,
            status_every,
            json,
        } => {
            let views = registry::load_views(&path)?;
            if views.is_empty() {
                bail!("no feature views (*.sql) in {}", path.display());
            }
            let known = Registry::load(bus).await?;
            let applied =
                registry::apply(bus, &known, &views, &config.state_dir.join("jobs")).await?;
            for a in &applied {
                println!(
                    "{} v{} {} → {}",
                    a.version.name,
                    a.version.version,
                    if a.recorded {
                        "(recorded)"
                    } else {
                        "(unchanged)"
                    },
                    a.version.topic
                );
            }
            if no_run {
                return Ok(ExitCode::SUCCESS);
            }
            let mut jobs = Vec::new();
            for a in applied {
                let mut pipeline = a.plan.pipeline;
                if until_end {
                    pipeline.set_bounded(true);
                }
                let name = format!("{} v{}", a.version.name, a.version.version);
                let handle = weir_dataflow::job::run(pipeline, bus, Cluster::local(threads))
                    .await
                    .with_context(|| format!("starting {name}"))?;
                jobs.push((name, handle));
            }
            eprintln!(
                "running {} view(s) on {} (Ctrl-C stops)",
                jobs.len(),
                connection.description
            );
            for (name, status) in supervise(jobs, StatusOutput::new(status_every, json)).await? {
                println!(
                    "{name}: {} records in, {} rows out, {} late, {} dead letters",
                    status.records_in, status.records_out, status.late, status.dead_letters
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List => {
            let registry = Registry::load(bus).await?;
            let mut rows = vec![[
                "VIEW".to_string(),
                "VERSION".into(),
                "ENTITY".into(),
                "OWNER".into(),
                "TAGS".into(),
                "TOPIC".into(),
                "DESCRIPTION".into(),
            ]];
            for name in registry.names() {
                let latest = registry.latest(name).expect("a version");
                rows.push([
                    name.to_string(),
                    latest.version.to_string(),
                    latest.header.entity.join(","),
                    latest.header.owner.clone(),
                    latest.header.tags.join(","),
                    latest.topic.clone(),
                    latest.header.description.clone(),
                ]);
            }
            if rows.len() == 1 {
                println!("no feature views (weir features apply FILE)");
            } else {
                print_rows(&rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Describe {
            view,
            number: version,
        } => {
            let registry = Registry::load(bus).await?;
            let versions = registry.versions(&view);
            let chosen = match version {
                Some(n) => versions.iter().find(|v| v.version == n),
                None => versions.last(),
            };
            let Some(v) = chosen else {
                bail!(
                    "no feature view `{view}`{}",
                    version.map(|n| format!(" v{n}")).unwrap_or_default()
                );
            };
            println!(
                "view        {} v{} (of {})",
                v.name,
                v.version,
                versions.len()
            );
            println!("description {}", v.header.description);
            println!("owner       {}", v.header.owner);
            println!("tags        {}", v.header.tags.join(", "));
            println!("entity      {}", v.header.entity.join(", "));
            println!("ttl         {}", v.header.ttl.as_deref().unwrap_or("none"));
            println!("topic       {}", v.topic);
            println!("job         {}", v.job);
            println!("file        {}", v.path);
            println!("hash        {}", v.hash);
            for (name, source) in &v.header.sources {
                let from = source
                    .topic
                    .clone()
                    .or_else(|| source.view.clone().map(|u| format!("view {u}")))
                    .unwrap_or_default();
                println!("source      {name}: {from}");
            }
            for (name, table) in &v.header.tables {
                println!("table       {name}: {} (key {})", table.topic, table.key);
            }
            println!("columns");
            for c in &v.output {
                println!(
                    "  {:<24} {}{}",
                    c.name,
                    c.data_type,
                    if c.nullable { "" } else { " not null" }
                );
            }
            println!("versions");
            for other in versions {
                println!("  v{} {} {}", other.version, other.hash, other.topic);
            }
            println!("sql\n{}", v.sql.trim_end());
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { listen } => {
            // Followed while serving.
            let (online, following) =
                Online::follow(bus, None, &config.state_dir.join("online")).await?;
            let served = online.served();
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            eprintln!(
                "serving {} view(s) on http://{listen} (POST /v1/features/online, POST /get-online-features); Ctrl-C stops",
                served.views.len()
            );
            axum::serve(listener, weir_features::http::router(served))
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
            following.stop().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { view, entity } => {
            let names = [view.clone()];
            let (online, _) =
                Online::catch_up(bus, Some(&names), &config.state_dir.join("online")).await?;
            let (served, found) = online.latest(&view, entity, weir_core::now_ms())?;
            let values: serde_json::Map<String, serde_json::Value> = served
                .features
                .iter()
                .cloned()
                .zip(found.values.iter().cloned())
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "status": found.status,
                    "event_time": found.event_time.map(|t| rfc3339(Some(t))),
                    "values": values,
                })
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { view } => {
            let registry = Registry::load(bus).await?;
            let Some(version) = registry.latest(&view) else {
                bail!("no feature view `{view}`");
            };
            let plan =
                registry::plan_version(bus, &registry, version, &config.state_dir.join("jobs"))
                    .await?;
            let comparison = weir_sql::batch::check(bus, &plan, &version.header.entity).await?;
            println!(
                "{} v{}: stream {} rows, batch {} rows; {} only in the batch, {} only in the stream, {} different",
                version.name,
                version.version,
                comparison.stream_rows,
                comparison.batch_rows,
                comparison.missing.len(),
                comparison.extra.len(),
                comparison.different.len()
            );
            for (key, what) in comparison.different.iter().take(5) {
                println!("  {key}: {what}");
            }
            Ok(if comparison.identical() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Backfill {
            view,
            from,
            to,
            out,
        } => {
            let registry = Registry::load(bus).await?;
            let Some(version) = registry.latest(&view) else {
                bail!("no feature view `{view}`");
            };
            let plan =
                registry::plan_version(bus, &registry, version, &config.state_dir.join("jobs"))
                    .await?;
            let rows = weir_sql::batch::backfill(bus, &plan, from, to).await?;
            let out = out.unwrap_or_else(|| {
                PathBuf::from(format!("{}.v{}.parquet", version.name, version.version))
            });
            let schema = rows.first().map_or(plan.output.clone(), |b| b.schema());
            let count = weir_sql::batch::write_parquet(&out, &schema, &rows)?;
            println!(
                "{count} rows of {} v{} → {}",
                version.name,
                version.version,
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints rows as aligned columns.
pub fn print_rows<const N: usize>(rows: &[[String; N]]) {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}
