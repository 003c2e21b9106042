//! `weir serve` (a deployment: OIP v2 over HTTP, stream serving, hot swap,
//! request logging) and `weir score` (batch scoring of a Parquet file).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use weir_core::Config;
use weir_meta::artifacts::ArtifactStore;
use weir_serve::server::{Features, Ready};
use weir_serve::spec::Protocol;
use weir_serve::{DeploymentSpec, Registry};

use weir_broker::connect::connect;

#[derive(Parser)]
pub struct ServeArgs {
    /// A deployment spec (YAML, see docs/serving.md; applied first, as
    /// `weir deploy` does), or the name of a deployment applied before.
    spec: Option<PathBuf>,
    /// Serve this registered model (`name@alias`, `name@3`, `name`)
    /// without a spec, or instead of the spec's.
    #[arg(long)]
    model: Option<String>,
    /// The deployment's name, with `--model` (default: the model's name).
    #[arg(long)]
    name: Option<String>,
    /// Where HTTP listens (overrides the spec's `http.listen`).
    #[arg(long)]
    listen: Option<String>,
    /// Where gRPC listens (overrides the spec's `grpc.listen`).
    #[arg(long)]
    grpc_listen: Option<String>,
    /// How requests arrive (overrides the spec's `protocols`): http, grpc,
    /// stream.
    #[arg(long, value_delimiter = ',')]
    protocol: Vec<Protocol>,
    /// Stop after this long (`30s`); default: until Ctrl-C or SIGTERM.
    #[arg(long, value_parser = weir_dataflow::spec::parse_duration)]
    stop_after: Option<Duration>,
}

#[derive(Parser)]
pub struct ScoreArgs {
    /// A registered model (`name@alias`, `name@3`, `name`) or an ONNX
    /// file (with `--features`).
    model: String,
    /// The Parquet (or CSV) file to score.
    input: PathBuf,
    /// Where to write it with the model's outputs added.
    output: PathBuf,
    /// The input's columns, in the model's order (for an ONNX file).
    #[arg(long, value_delimiter = ',')]
    features: Vec<String>,
    /// Scoring threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Rows per chunk.
    #[arg(long, default_value_t = 10_000)]
    chunk_rows: usize,
}

/// What `args` say to serve: a spec file, a deployment applied before (by
/// name), or `--model`, with the flags' overrides.
fn chosen(args: &ServeArgs) -> weir_serve::deploy::Chosen<'_> {
    weir_serve::deploy::Chosen {
        spec: args.spec.as_deref(),
        model: args.model.as_deref(),
        name: args.name.as_deref(),
        listen: args.listen.as_deref(),
        grpc_listen: args.grpc_listen.as_deref(),
        protocols: args.protocol.clone(),
    }
}

/// Records `spec` as the next version of its deployment unless it is the
/// latest; its references must name registered ONNX models. Prints what
/// happened.
pub async fn apply(
    tracker: &weir_meta::Tracker,
    spec: &DeploymentSpec,
    text: &str,
) -> anyhow::Result<u64> {
    let weir_serve::deploy::Deployed {
        version,
        new,
        resolved,
    } = weir_serve::deploy::record(tracker, spec, text).await?;
    println!(
        "deployment `{}` v{version}{} ({})",
        spec.name,
        if new { "" } else { " (unchanged)" },
        resolved.join(", ")
    );
    Ok(version)
}

/// Ctrl-C or SIGTERM, or the time limit.
async fn shutdown(limit: Option<Duration>) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    let limit = async {
        match limit {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = limit => {}
    }
}

pub async fn serve(config: &Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let connection = connect(config).await?;
    let tracker = weir_meta::Tracker::open_under(&connection.bus, &config.state_dir).await?;
    let result = async {
        let bus = &connection.bus;
        let (spec, text) = tracker.read(|state| chosen(&args).resolve(state))?;
        apply(&tracker, &spec, &text).await?;
        let registry = Registry::follow(bus, ArtifactStore::under(&config.state_dir)?).await?;
        let (features, following) = Features::follow(bus, &config.state_dir, &spec).await?;
        let name = spec.name.clone();
        let announce = |ready: &Ready| {
            let mut ways = Vec::new();
            if let Some(http) = ready.http {
                ways.push(format!("http://{http}/v2/models/{name} (OIP v2)"));
            }
            if let Some(grpc) = ready.grpc {
                ways.push(format!(
                    "grpc://{grpc} (OIP v2, inference.GRPCInferenceService)"
                ));
            }
            if spec.protocols.contains(&Protocol::Stream) {
                ways.push(format!(
                    "{} → {}",
                    weir_core::topics::requests(&name),
                    weir_core::topics::predictions(&name)
                ));
            }
            println!(
                "serving `{name}` ({}) on {}; log {}; Ctrl-C stops",
                ready.versions,
                ways.join(" and "),
                weir_core::topics::log(&name)
            );
        };
        let summary = weir_serve::server::serve(
            bus,
            registry,
            spec.clone(),
            features,
            Some(tracker.clone()),
            announce,
            shutdown(args.stop_after),
        )
        .await?;
        following.stop().await;
        println!(
            "stopped `{name}`: {} requests answered, {} failed; {} log records written{}{}",
            summary.requests.0,
            summary.requests.1,
            summary.logged,
            if summary.swaps.is_empty() {
                String::new()
            } else {
                format!("; swapped to {}", summary.swaps.join(", then "))
            },
            if summary.scaling.len() > 1 {
                format!(
                    "; stream workers {}",
                    summary
                        .scaling
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(" → ")
                )
            } else {
                String::new()
            }
        );
        anyhow::Ok(())
    }
    .await;
    tracker.close().await;
    connection.close().await;
    result?;
    Ok(ExitCode::SUCCESS)
}

pub async fn score(config: &Config, args: ScoreArgs) -> anyhow::Result<ExitCode> {
    let mut options = weir_serve::score::ScoreOptions {
        chunk_rows: args.chunk_rows,
        ..Default::default()
    };
    if let Some(threads) = args.threads {
        options.threads = threads;
    }
    let batching = weir_serve::spec::Batching {
        runners: options.threads,
        ..Default::default()
    };
    let (models, features, classes) = if Path::new(&args.model)
        .extension()
        .is_some_and(|e| e == "onnx")
    {
        weir_serve::score::load_file(Path::new(&args.model), args.features.clone(), &batching)?
    } else {
        let connection = connect(config).await?;
        let store = ArtifactStore::under(&config.state_dir)?;
        let loaded =
            weir_serve::score::load_registered(&connection.bus, store, &args.model, batching).await;
        connection.close().await;
        loaded?
    };
    let versions = models.versions();
    let report = weir_serve::score::score(
        models,
        &features,
        &classes,
        &args.input,
        &args.output,
        &options,
    )
    .await?;
    println!(
        "scored {} rows with {versions} in {:.2} s ({:.0} rows/s, {} threads, {} chunks) → {}",
        report.rows,
        report.seconds,
        report.rows as f64 / report.seconds.max(1e-9),
        options.threads,
        report.chunks,
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Parser)]
pub struct DeployArgs {
    /// A deployment spec (YAML, see docs/serving.md).
    spec: PathBuf,
}

/// Records a spec as its deployment's next version: `weir serve NAME`
/// (on any machine) then serves it.
pub async fn deploy(config: &Config, args: DeployArgs) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(&args.spec).with_context(|| args.spec.display().to_string())?;
    let spec = DeploymentSpec::parse(&text, &args.spec.display().to_string())?;
    let connection = connect(config).await?;
    let tracker = weir_meta::Tracker::open_under(&connection.bus, &config.state_dir).await?;
    let result = apply(&tracker, &spec, &text).await;
    tracker.close().await;
    connection.close().await;
    result?;
    println!("serve it with `weir serve {}`", spec.name);
    Ok(ExitCode::SUCCESS)
}

#[derive(Parser)]
pub struct DeploymentsArgs {
    #[command(subcommand)]
    command: DeploymentsCommand,
}

#[derive(clap::Subcommand)]
enum DeploymentsCommand {
    /// Every deployment: its version, what it serves now.
    List,
    /// A deployment's spec, versions and the model versions it has served.
    Describe {
        /// The deployment.
        name: String,
    },
    /// Delete a deployment: its `weir serve` processes stop.
    Delete {
        /// The deployment.
        name: String,
    },
}

pub async fn deployments(config: &Config, args: DeploymentsArgs) -> anyhow::Result<ExitCode> {
    let connection = connect(config).await?;
    let tracker = weir_meta::Tracker::open_under(&connection.bus, &config.state_dir).await?;
    let result = async {
        match args.command {
            DeploymentsCommand::List => {
                let mut rows = vec![[
                    "deployment".to_string(),
                    "version".into(),
                    "models".into(),
                    "serving".into(),
                ]];
                tracker.read(|state| {
                    for d in state.deployments().filter(|d| !d.deleted) {
                        rows.push([
                            d.name.clone(),
                            d.latest().version.to_string(),
                            d.latest().models.join(", "),
                            if d.serving.is_empty() {
                                "-".into()
                            } else {
                                d.serving.join(", ")
                            },
                        ]);
                    }
                });
                crate::features::print_rows(&rows);
            }
            DeploymentsCommand::Describe { name } => {
                let text = tracker.read(|state| -> anyhow::Result<String> {
                    let d = state.deployment(&name)?;
                    let mut out = format!(
                        "deployment {}{}\nversions\n",
                        d.name,
                        if d.deleted { " (deleted)" } else { "" }
                    );
                    for v in d.versions.values() {
                        out.push_str(&format!(
                            "  v{} {} {}\n",
                            v.version,
                            weir_features::online::rfc3339(Some(v.created)),
                            v.models.join(", ")
                        ));
                    }
                    out.push_str("served\n");
                    for (model, since) in &d.served {
                        out.push_str(&format!(
                            "  {model} since {}{}\n",
                            weir_features::online::rfc3339(Some(*since)),
                            if d.serving.contains(model) {
                                " (now)"
                            } else {
                                ""
                            }
                        ));
                    }
                    out.push_str(&format!("spec\n{}", d.latest().spec.trim_end()));
                    Ok(out)
                })?;
                println!("{text}");
            }
            DeploymentsCommand::Delete { name } => {
                tracker.delete_deployment(&name).await?;
                println!("deleted deployment `{name}`");
            }
        }
        anyhow::Ok(())
    }
    .await;
    tracker.close().await;
    connection.close().await;
    result?;
    Ok(ExitCode::SUCCESS)
}
