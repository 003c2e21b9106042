//! `weir broker`: the embedded broker on its own, with the schema registry
//! API, for other clients (any Kafka client; Confluent serializers).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use weir_broker::{EmbeddedBroker, Storage};
use weir_bus::registry::http;
use weir_bus::{Bus, BusConfig};
use weir_core::Config;

use weir_broker::connect::{broker_options, embedded_storage};

#[derive(clap::Args)]
pub struct Args {
    /// Kafka listener address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Schema registry API address.
    #[arg(long)]
    registry: Option<SocketAddr>,
    /// Keep data in memory only (lost when the broker stops).
    #[arg(long, conflicts_with = "data")]
    memory: bool,
    /// SQLite file for the data (default: `<state dir>/broker/weir.db`).
    #[arg(long)]
    data: Option<PathBuf>,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let address = args.listen.unwrap_or(config.embedded_broker);
    let storage = match (args.memory, args.data) {
        (true, _) => Storage::Memory,
        (false, Some(path)) => Storage::Sqlite(path),
        (false, None) => embedded_storage(config),
    };
    let broker =
        EmbeddedBroker::start_with(address, storage.clone(), broker_options(config)).await?;
    let bus = Bus::connect(BusConfig::configured(broker.bootstrap_servers(), config)).await?;
    let registry_address = args.registry.unwrap_or(config.registry);
    let listener = tokio::net::TcpListener::bind(registry_address)
        .await
        .with_context(|| format!("schema registry API: listening on {registry_address}"))?;
    let data = match &storage {
        Storage::Memory => "in memory".to_string(),
        Storage::Sqlite(path) => format!("in {}", path.display()),
    };
    println!("Kafka API        {address}   (bootstrap.servers; data {data})");
    println!("schema registry  http://{registry_address}");
    println!("Ctrl-C stops.");
    tokio::select! {
        served = http::serve(listener, bus.registry().clone()) => served?,
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(bus);
    // Clients go before their broker does.
    let _ = tokio::task::spawn_blocking(weir_bus::wait_for_dropped_clients).await;
    broker.stop().await;
    Ok(ExitCode::SUCCESS)
}
