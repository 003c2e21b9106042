//! The metadata store against a real broker, a real artifact directory and
//! real HTTP: concurrent writers and a replay agree; artifact paths cannot
//! leave the store.

mod artifacts;
mod keep_alive;
mod lease;
mod replay;
mod store;

use weir_broker::EmbeddedBroker;
use weir_bus::Bus;

/// A broker (memory storage) and a bus to it.
pub async fn broker() -> (EmbeddedBroker, Bus) {
    let harness = weir_test_support::Harness::start().await;
    (harness.broker, harness.bus)
}
