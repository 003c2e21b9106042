//! The set-up Weir's crates' tests share, and only tests (a
//! dev-dependency): a real broker in memory with a bus connected to it and
//! a scratch directory ([`Harness`]); a free port ([`free_port`]).

use std::net::{SocketAddr, TcpListener};

use weir_broker::{EmbeddedBroker, Storage};
use weir_bus::{Bus, BusConfig, ConsumerOptions, OutRecord, Record, StartFrom, TopicSpec};

/// A broker in memory, a bus connected to it and a scratch directory; all
/// stop or go when dropped (the bus first).
pub struct Harness {
    /// The bus.
    pub bus: Bus,
    /// The broker the bus talks to.
    pub broker: EmbeddedBroker,
    /// A scratch directory, removed when dropped.
    pub dir: tempfile::TempDir,
}

impl Harness {
    /// Starts a broker on a free port and connects a bus to it.
    pub async fn start() -> Self {
        Self::start_with(|config| config).await
    }

    /// As [`Harness::start`], the bus configured by `configure`.
    pub async fn start_with(configure: impl FnOnce(BusConfig) -> BusConfig) -> Self {
        let broker = EmbeddedBroker::start_on_free_port(Storage::Memory)
            .await
            .expect("the embedded broker starts");
        let bus = Bus::connect(configure(BusConfig::new(broker.bootstrap_servers())))
            .await
            .expect("the bus connects");
        let dir = tempfile::tempdir().expect("a scratch directory");
        Self { bus, broker, dir }
    }

    /// Creates `name` with `partitions` partitions.
    pub async fn topic(&self, name: &str, partitions: i32) {
        self.bus
            .admin()
            .create_topic(&TopicSpec::new(name, partitions))
            .await
            .expect("the topic is created");
    }

    /// `topic` read from the beginning to its end, decoded.
    pub async fn read_all(&self, topic: &str) -> Vec<Record> {
        let mut consumer = self
            .bus
            .consumer(
                &[topic],
                ConsumerOptions {
                    start: StartFrom::Beginning,
                    until_end: true,
                    ..Default::default()
                },
            )
            .expect("a consumer");
        let mut records = Vec::new();
        while let Some(record) = consumer.next().await.expect("a record") {
            records.push(record);
        }
        consumer
            .settle_dead_letters()
            .await
            .expect("dead letters settle");
        records
    }

    /// Produces `payload` as it is (no codec) to `topic`.
    pub async fn produce_raw(&self, topic: &str, key: Option<&str>, payload: &[u8]) {
        self.bus
            .producer()
            .expect("a producer")
            .send_and_wait(OutRecord::new(topic, payload).maybe_key(key.map(str::as_bytes)))
            .await
            .expect("the record is delivered");
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}
