//! Leases: nodes that each keep their own state race for the same key, and
//! the log's order picks one winner that every node agrees on.

use std::time::Duration;

use weir_meta::artifacts::ArtifactStore;
use weir_meta::{Tracker, tracker};

use crate::broker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_nodes_agree_on_one_holder_and_a_lapsed_lease_is_free() {
    let (_broker, bus) = broker().await;
    let dir = tempfile::tempdir().unwrap();
    let store = || ArtifactStore::open(dir.path().to_str().unwrap()).unwrap();
    // Two nodes, as two worker processes would be: neither sees the
    // other's writes in its own state.
    let (a, b) = (
        Tracker::open(&bus, store()).await.unwrap(),
        Tracker::open(&bus, store()).await.unwrap(),
    );
    let ttl = Duration::from_secs(30);
    for round in 0..3 {
        let key = format!("trial/race/{round}");
        let (won_a, won_b) = tokio::join!(
            a.take_lease(&bus, &key, "a", ttl),
            b.take_lease(&bus, &key, "b", ttl)
        );
        let (won_a, won_b) = (won_a.unwrap(), won_b.unwrap());
        assert!(won_a != won_b, "round {round}: a {won_a}, b {won_b}");
        let winner = if won_a { "a" } else { "b" };
        let log = tracker::replay(&bus).await.unwrap();
        assert_eq!(log.lease(&key).unwrap().holder, winner);
        // The holder renews; the other still cannot take it.
        let (holder, other, other_name) = if won_a { (&a, &b, "b") } else { (&b, &a, "a") };
        assert!(holder.take_lease(&bus, &key, winner, ttl).await.unwrap());
        assert!(!other.take_lease(&bus, &key, other_name, ttl).await.unwrap());
        // Given up, it is free at once.
        holder.release_lease(&key, winner).await.unwrap();
        assert!(other.take_lease(&bus, &key, other_name, ttl).await.unwrap());
    }

    // A holder that stops renewing loses the lease when it lapses.
    let key = "trial/lapse/0";
    let short = Duration::from_secs(4);
    assert!(a.take_lease(&bus, key, "a", short).await.unwrap());
    // The lease runs from when it was written, before the call returned.
    let started = std::time::Instant::now();
    assert!(!b.take_lease(&bus, key, "b", ttl).await.unwrap());
    tokio::time::sleep(short.saturating_sub(started.elapsed())).await;
    assert!(b.take_lease(&bus, key, "b", ttl).await.unwrap());
    assert_eq!(
        tracker::replay(&bus)
            .await
            .unwrap()
            .lease(key)
            .unwrap()
            .holder,
        "b"
    );
    a.close().await;
    b.close().await;
}
