//! The metadata store against a real broker, a real artifact directory and
//! real HTTP: concurrent writers and a replay agree; artifact paths cannot
//! leave the store.

mod artifacts;
mod keep_alive;
mod lease;
mod replay;
mod store;

use weir_broker::{EmbeddedBroker, Storage};
use weir_bus::{Bus, BusConfig};

/// A broker (memory storage) and a bus to it.
pub async fn broker() -> (EmbeddedBroker, Bus) {
    let broker = EmbeddedBroker::start_on_free_port(Storage::Memory)
        .await
        .unwrap();
    let bus = Bus::connect(BusConfig::new(broker.bootstrap_servers()))
        .await
        .unwrap();
    (broker, bus)
}
