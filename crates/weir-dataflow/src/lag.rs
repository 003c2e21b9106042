//! How far behind an unbounded Kafka source is: its partitions' end
//! offsets, asked of the broker once a second on a thread of its own, so
//! that a slow answer neither holds up the worker nor is cut short (a
//! request abandoned after a short wait is a warning in librdkafka's log).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

/// How often the end offsets are asked for.
const INTERVAL: Duration = Duration::from_secs(1);

/// How long one answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The latest end offset known of each partition, kept up to date in the
/// background until dropped.
pub(crate) struct EndOffsets {
    latest: Arc<Mutex<BTreeMap<i32, i64>>>,
    stop: Arc<AtomicBool>,
}

impl EndOffsets {
    /// Starts asking for the end offsets of `partitions` of `topic`.
    pub(crate) fn start(
        consumer: Arc<BaseConsumer<weir_bus::QuietEof>>,
        topic: String,
        partitions: Vec<i32>,
    ) -> Self {
        let latest = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (known, stopped) = (latest.clone(), stop.clone());
        // Not joined on drop: an answer under way may take a while, and
        // the thread ends by itself after it.
        std::thread::Builder::new()
            .name(format!("weir-lag-{topic}"))
            .spawn(move || {
                while !stopped.load(Ordering::SeqCst) {
                    let next = Instant::now() + INTERVAL;
                    for &partition in &partitions {
                        if let Ok((_, high)) =
                            consumer.fetch_watermarks(&topic, partition, ANSWER_TIMEOUT)
                        {
                            known.lock().expect("end offsets").insert(partition, high);
                        }
                    }
                    while Instant::now() < next && !stopped.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
            .expect("spawning a thread");
        Self { latest, stop }
    }

    /// The latest end offset known of `partition`.
    pub(crate) fn get(&self, partition: i32) -> Option<i64> {
        self.latest
            .lock()
            .expect("end offsets")
            .get(&partition)
            .copied()
    }
}

impl Drop for EndOffsets {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
