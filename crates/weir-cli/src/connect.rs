//! Finding Kafka: the configured brokers, a running `weir broker`, or an
//! embedded broker started for this command.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use weir_broker::{BrokerOptions, EmbeddedBroker, Storage};
use weir_bus::{Bus, BusConfig};
use weir_core::Config;

/// A bus, and the in-process broker behind it when this command started one.
pub struct Connection {
    pub bus: Bus,
    /// Where the bus points, for people.
    pub description: String,
    broker: Option<EmbeddedBroker>,
}

impl Connection {
    /// Stops the in-process broker, if this command started one.
    pub async fn close(self) {
        drop(self.bus);
        if let Some(broker) = self.broker {
            // Clients go before their broker does.
            let _ = tokio::task::spawn_blocking(weir_bus::wait_for_dropped_clients).await;
            broker.stop().await;
        }
    }
}

/// The embedded broker's SQLite database under the state directory.
pub fn embedded_storage(config: &Config) -> Storage {
    Storage::Sqlite(config.state_dir.join("broker").join("weir.db"))
}

/// The embedded broker's behaviour as configured.
pub fn broker_options(config: &Config) -> BrokerOptions {
    BrokerOptions {
        auto_create_topics: config.auto_create_topics,
        num_partitions: i32::try_from(config.num_partitions.get()).unwrap_or(i32::MAX),
    }
}

pub fn bus_config(config: &Config, bootstrap: &str) -> BusConfig {
    let mut bus = BusConfig::new(bootstrap);
    bus.max_record_bytes = config.max_record_bytes;
    bus
}

/// Connects as configured; see the module docs.
pub async fn connect(config: &Config) -> anyhow::Result<Connection> {
    if let Some(brokers) = &config.brokers {
        let bus = Bus::connect(bus_config(config, brokers))
            .await
            .with_context(|| format!("connecting to Kafka at {brokers} (WEIR_BROKERS)"))?;
        return Ok(Connection {
            bus,
            description: format!("Kafka at {brokers}"),
            broker: None,
        });
    }
    let address = config.embedded_broker;
    let running = tokio::time::timeout(
        Duration::from_millis(300),
        tokio::net::TcpStream::connect(address),
    )
    .await
    .is_ok_and(|connected| connected.is_ok());
    if running {
        let bus = Bus::connect(bus_config(config, &address.to_string()))
            .await
            .with_context(|| format!("connecting to the broker already running on {address}"))?;
        return Ok(Connection {
            bus,
            description: format!("the broker running on {address}"),
            broker: None,
        });
    }
    let storage = embedded_storage(config);
    let broker = EmbeddedBroker::start_with(address, storage.clone(), broker_options(config))
        .await
        .context("starting the embedded broker (set WEIR_BROKERS to use another Kafka)")?;
    let bus = Bus::connect(bus_config(config, &broker.bootstrap_servers())).await?;
    let Storage::Sqlite(path) = storage else {
        unreachable!("the CLI's embedded broker is durable")
    };
    Ok(Connection {
        bus,
        description: format!("embedded broker on {address} (data in {})", display(&path)),
        broker: Some(broker),
    })
}

fn display(path: &std::path::Path) -> String {
    PathBuf::from(path).display().to_string()
}
