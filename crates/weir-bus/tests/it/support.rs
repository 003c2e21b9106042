use serde_json::{Value as Json, json};
use weir_broker::{EmbeddedBroker, Storage};
use weir_bus::{Bus, BusConfig, ConsumerOptions, OutRecord, Record, StartFrom, TopicSpec};

pub const TXN_SCHEMA: &str = r#"{
  "type": "record", "name": "CardTransaction", "namespace": "weir.test",
  "fields": [
    {"name": "user", "type": "string"},
    {"name": "merchant", "type": "string"},
    {"name": "amount", "type": "double"},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}
  ]
}"#;

/// A broker in memory and a bus connected to it; both stop when dropped.
pub struct Harness {
    pub bus: Bus,
    pub broker: EmbeddedBroker,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(|config| config).await
    }

    pub async fn start_with(configure: impl FnOnce(BusConfig) -> BusConfig) -> Self {
        let broker = EmbeddedBroker::start_on_free_port(Storage::Memory)
            .await
            .expect("embedded broker starts");
        let bus = Bus::connect(configure(BusConfig::new(broker.bootstrap_servers())))
            .await
            .expect("bus connects");
        Self { bus, broker }
    }

    pub async fn topic(&self, name: &str, partitions: i32) {
        self.bus
            .admin()
            .create_topic(&TopicSpec::new(name, partitions))
            .await
            .unwrap();
    }

    /// Reads `topic` from the beginning to its end.
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
            .unwrap();
        let mut records = Vec::new();
        while let Some(record) = consumer.next().await.unwrap() {
            records.push(record);
        }
        consumer.settle_dead_letters().await.unwrap();
        records
    }

    pub async fn produce_raw(&self, topic: &str, key: Option<&str>, payload: &[u8]) {
        self.bus
            .producer()
            .unwrap()
            .send_and_wait(OutRecord::new(topic, payload).maybe_key(key.map(str::as_bytes)))
            .await
            .unwrap();
    }
}

pub fn txn(i: usize) -> Json {
    json!({
        "user": format!("u{}", i % 7),
        "merchant": format!("m{}", i % 5),
        "amount": i as f64 * 1.25,
        "ts": 1_700_000_000_000_i64 + i as i64 * 1000,
    })
}
