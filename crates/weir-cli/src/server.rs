//! `weir server`: the metadata server — experiments, runs, the model
//! registry and artifacts — speaking MLflow's REST API, so the official
//! `mlflow` client (`mlflow.set_tracking_uri("http://…")`) works unchanged.
//! Every change is an event on `weir.meta`; the server rebuilds its state
//! from that topic when it starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use weir_core::Config;
use weir_meta::Tracker;
use weir_meta::artifacts::ArtifactStore;

use crate::connect::connect;

#[derive(Parser)]
pub struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:5000")]
    listen: SocketAddr,
    /// The artifact store: a directory, or an s3://, gs://, az:// URL
    /// (credentials from the environment). Default: `artifacts/` under
    /// the state directory.
    #[arg(long)]
    artifacts: Option<String>,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let connection = connect(config).await?;
    let location = args.artifacts.unwrap_or_else(|| {
        PathBuf::from(&config.state_dir)
            .join("artifacts")
            .display()
            .to_string()
    });
    let store = ArtifactStore::open(&location)?;
    let tracker = Tracker::open(&connection.bus, store).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    eprintln!(
        "metadata server (MLflow REST API) on http://{} — events on {} via {}, artifacts in {location}; Ctrl-C stops",
        args.listen,
        weir_core::topics::META,
        connection.description
    );
    axum::serve(listener, weir_meta::server::router(tracker.clone()))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    tracker.close().await;
    connection.close().await;
    Ok(ExitCode::SUCCESS)
}
