//! `weir serve` (a deployment: OIP v2 over HTTP, stream serving, hot swap,
//! request logging) and `weir score` (batch scoring of a Parquet file).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use weir_core::Config;
use weir_meta::artifacts::ArtifactStore;
use weir_serve::server::{Features, Ready};
use weir_serve::spec::Protocol;
use weir_serve::{DeploymentSpec, Registry};

use crate::connect::connect;

#[derive(Parser)]
pub struct ServeArgs {
    /// A deployment spec (YAML, see docs/serving.md).
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
    /// How requests arrive (overrides the spec's `protocols`): http, stream.
    #[arg(long, value_delimiter = ',')]
    protocol: Vec<String>,
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

pub fn artifacts(config: &Config) -> anyhow::Result<ArtifactStore> {
    let dir = config.state_dir.join("artifacts");
    Ok(ArtifactStore::open(
        dir.to_str().context("the state directory is not UTF-8")?,
    )?)
}

/// Reads the spec, with the flags' overrides.
fn spec(args: &ServeArgs) -> anyhow::Result<DeploymentSpec> {
    let mut spec = match (&args.spec, &args.model) {
        (Some(path), _) => DeploymentSpec::read(path)?,
        (None, Some(model)) => {
            let name = args
                .name
                .clone()
                .unwrap_or_else(|| model.split('@').next().unwrap_or(model).to_string());
            DeploymentSpec::single(&name, model)
        }
        (None, None) => bail!("give a deployment spec, or --model name@alias"),
    };
    if let (Some(_), Some(model)) = (&args.spec, &args.model) {
        spec.model = Some(model.clone());
        spec.models.clear();
    }
    if let Some(listen) = &args.listen {
        spec.http.listen = listen.clone();
    }
    if !args.protocol.is_empty() {
        spec.protocols = args
            .protocol
            .iter()
            .map(|p| match p.as_str() {
                "http" => Ok(Protocol::Http),
                "stream" => Ok(Protocol::Stream),
                other => bail!("--protocol: `{other}` is not http or stream"),
            })
            .collect::<anyhow::Result<_>>()?;
    }
    Ok(spec)
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

/// Stops the online store's follower when dropped.
pub struct Following(Arc<AtomicBool>);

impl Drop for Following {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The views a spec looks up, in a store of the deployment's own
/// (`<state>/serve/<name>/online`), kept up to date from their topics
/// until the returned guard is dropped.
pub async fn features(
    bus: &weir_bus::Bus,
    config: &Config,
    spec: &DeploymentSpec,
) -> anyhow::Result<(Features, Following)> {
    let stop = Arc::new(AtomicBool::new(false));
    if spec.features.is_empty() {
        return Ok((Features::default(), Following(stop)));
    }
    let registry = weir_sql::registry::Registry::load(bus).await?;
    let path = config
        .state_dir
        .join("serve")
        .join(&spec.name)
        .join("online");
    std::fs::create_dir_all(&path)?;
    let (store, views, mut materializer) = crate::features::online(bus, &registry, &path).await?;
    let stopped = stop.clone();
    std::thread::spawn(move || {
        while !stopped.load(Ordering::Relaxed) {
            if let Err(error) = materializer.poll(10_000, Duration::from_millis(200)) {
                tracing::error!(%error, "online store");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    });
    Ok((
        Features {
            views: views.into_iter().map(|(v, _)| v).collect(),
            store: Some(store),
        },
        Following(stop),
    ))
}

pub async fn serve(config: &Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let spec = spec(&args)?;
    let connection = connect(config).await?;
    let result = async {
        let bus = &connection.bus;
        let registry = Registry::follow(bus, artifacts(config)?).await?;
        let (features, _following) = features(bus, config, &spec).await?;
        let name = spec.name.clone();
        let announce = |ready: &Ready| {
            let mut ways = Vec::new();
            if let Some(http) = ready.http {
                ways.push(format!("http://{http}/v2/models/{name} (OIP v2)"));
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
            announce,
            shutdown(args.stop_after),
        )
        .await?;
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
        if args.features.is_empty() {
            bail!("--features: name the input's columns, in the model's order, for an ONNX file");
        }
        let bytes = std::fs::read(&args.model).with_context(|| args.model.clone())?;
        let model =
            weir_serve::runner::LoadedModel::load(args.model.clone(), 0, 1.0, &bytes, &batching)?;
        (
            weir_serve::runner::ModelSet {
                members: vec![model],
                combine: Default::default(),
            },
            args.features.clone(),
            Vec::new(),
        )
    } else {
        let connection = connect(config).await?;
        let loaded = async {
            let registry = Registry::follow(&connection.bus, artifacts(config)?).await?;
            let spec = DeploymentSpec {
                batching,
                ..DeploymentSpec::single("score", &args.model)
            };
            let resolved = registry.resolve_all(&spec)?;
            let models = registry.load(&spec, &resolved).await?;
            let info = resolved[0].info.clone();
            registry.close().await;
            anyhow::Ok((models, info.features, info.classes))
        }
        .await;
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
