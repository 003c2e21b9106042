//! How a `weir` process finds Kafka: the brokers it is configured with
//! (`WEIR_BROKERS`), else the embedded broker a running `weir broker`
//! serves on the configured address, else one it starts in-process, its
//! data under the state directory.

use std::time::Duration;

use weir_bus::{Bus, BusConfig, BusError};
use weir_core::Config;

use crate::{BrokerError, BrokerOptions, EmbeddedBroker, Storage};

/// Why Kafka could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The brokers, or the broker running, did not answer.
    #[error("connecting to {target}: {source}")]
    Bus {
        /// Where, for people.
        target: String,
        /// Why.
        source: BusError,
    },
    /// No broker runs and none could be started.
    #[error("starting the embedded broker (set WEIR_BROKERS to use another Kafka): {0}")]
    Broker(#[from] BrokerError),
}

/// A bus, and the in-process broker behind it when this process started one.
pub struct Connection {
    /// The bus.
    pub bus: Bus,
    /// Where the bus points, for people.
    pub description: String,
    broker: Option<EmbeddedBroker>,
}

impl Connection {
    /// Stops the in-process broker, if this process started one, once the
    /// bus's clients are gone.
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

/// Connects as configured; see the module docs.
pub async fn connect(config: &Config) -> Result<Connection, ConnectError> {
    let unreachable = |target: String| move |source| ConnectError::Bus { target, source };
    if let Some(brokers) = &config.brokers {
        let bus = Bus::connect(BusConfig::configured(brokers, config))
            .await
            .map_err(unreachable(format!("Kafka at {brokers} (WEIR_BROKERS)")))?;
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
        let bus = Bus::connect(BusConfig::configured(address.to_string(), config))
            .await
            .map_err(unreachable(format!(
                "the broker already running on {address}"
            )))?;
        return Ok(Connection {
            bus,
            description: format!("the broker running on {address}"),
            broker: None,
        });
    }
    let storage = embedded_storage(config);
    let broker =
        EmbeddedBroker::start_with(address, storage.clone(), broker_options(config)).await?;
    let bus = Bus::connect(BusConfig::configured(broker.bootstrap_servers(), config))
        .await
        .map_err(unreachable(format!("the embedded broker on {address}")))?;
    let Storage::Sqlite(path) = storage else {
        unreachable!("the embedded broker of a state directory is durable")
    };
    Ok(Connection {
        bus,
        description: format!("embedded broker on {address} (data in {})", path.display()),
        broker: Some(broker),
    })
}
