//! `weir server`: the metadata server — experiments, runs, the model
//! registry and artifacts — speaking MLflow's REST API, so the official
//! `mlflow` client (`mlflow.set_tracking_uri("http://…")`) works unchanged.
//! Every change is an event on `weir.meta`. The server keeps its state in
//! a RocksDB query store with the log offset it stands at, so a restart
//! replays only the events written since; an empty store, or one saved
//! from another log, is rebuilt from the whole topic.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use weir_core::Config;
use weir_meta::Tracker;
use weir_meta::artifacts::ArtifactStore;
use weir_meta::store::Store;

use weir_broker::connect::connect;

/// The query store's directory under the state directory, by default.
pub const STORE_DIR: &str = "meta-store";

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
    /// The query store (RocksDB). Default: `meta-store/` under the state
    /// directory.
    #[arg(long)]
    store: Option<PathBuf>,
    /// Drop what the query store has and rebuild it from the whole log.
    #[arg(long)]
    rebuild: bool,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let connection = connect(config).await?;
    let location = args.artifacts.unwrap_or_else(|| {
        PathBuf::from(&config.state_dir)
            .join("artifacts")
            .display()
            .to_string()
    });
    let artifacts = ArtifactStore::open(&location)?;
    let store_dir = args
        .store
        .unwrap_or_else(|| PathBuf::from(&config.state_dir).join(STORE_DIR));
    let store = Store::open(&store_dir)?;
    if args.rebuild {
        store.clear()?;
    }
    let started = std::time::Instant::now();
    let (tracker, restored) = Tracker::open_with_store(&connection.bus, artifacts, store).await?;
    match &restored.rebuilt {
        None => eprintln!(
            "state: {} events from the store in {}, {} more replayed from {} ({:.2} s)",
            restored.from_store,
            store_dir.display(),
            restored.from_log,
            weir_core::topics::META,
            started.elapsed().as_secs_f64()
        ),
        Some(why) => {
            let why = if args.rebuild {
                "--rebuild"
            } else {
                why.as_str()
            };
            eprintln!(
                "state: {} events replayed from {} into a new store in {} ({why}; {:.2} s)",
                restored.from_log,
                weir_core::topics::META,
                store_dir.display(),
                started.elapsed().as_secs_f64()
            );
        }
    }
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
