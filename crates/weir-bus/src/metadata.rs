//! Metadata fetches asked for by hand, retried while the broker cannot be
//! reached yet.
//!
//! A new client's first request can fail while its connection is made (a
//! busy broker, a reset socket); librdkafka retries most requests itself
//! but not a metadata fetch asked for by hand. Under a loaded test suite
//! the broker has taken several seconds to answer a new connection.

use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// How long a fetch is retried while the broker is unreachable.
const PATIENCE: Duration = Duration::from_secs(20);

/// Runs `fetch` until it answers or fails otherwise than by not reaching a
/// broker, for about [`PATIENCE`] at most (blocking: call it off the async
/// runtime's threads).
pub(crate) fn patiently<T>(
    mut fetch: impl FnMut() -> Result<T, KafkaError>,
) -> Result<T, KafkaError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        match fetch() {
            Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown,
            )) if started.elapsed() < PATIENCE => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            result => return result,
        }
    }
}
