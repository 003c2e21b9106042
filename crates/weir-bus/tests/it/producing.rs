use std::time::{Duration, Instant};

use weir_bus::OutRecord;

use crate::support::Harness;

/// An idempotent producer's first send waits for its producer id, which
/// librdkafka asks for 500 ms after the client starts (1 s if no broker is
/// up by then) unless a metadata response comes first while a broker is
/// up: `Producer::new` asks for metadata at once, twice. With no request,
/// each first send here took 500 ms or more; with one, the first
/// producer's did in about half of the runs.
#[tokio::test]
async fn a_new_producers_first_send_does_not_wait_for_the_producer_id_timer() {
    let harness = Harness::start().await;
    harness.topic("first-sends", 1).await;
    for attempt in 0..3 {
        let started = Instant::now();
        let producer = harness.bus.producer().unwrap();
        producer
            .send_and_wait(OutRecord::new("first-sends", b"x"))
            .await
            .unwrap();
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(450),
            "producer {attempt}: the first send was acknowledged {took:?} after the producer started"
        );
    }
}
