//! Keeps the online store up to date: a consumer of the views' topics that
//! writes their rows, with the offsets they were read up to, into the
//! store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value as Json;
use weir_bus::BusConfig;

use crate::FeaturesError;
use crate::online::{OnlineStore, OnlineView};

/// Reads the views' topics into the store.
pub struct Materializer {
    store: Arc<OnlineStore>,
    consumer: BaseConsumer,
    /// The view of each topic.
    views: HashMap<String, OnlineView>,
    /// End offsets when [`Materializer::catch_up`] began.
    ends: HashMap<(String, i32), i64>,
    next: HashMap<(String, i32), i64>,
}

fn kafka(error: impl std::fmt::Display) -> FeaturesError {
    FeaturesError::Online(format!("reading the views' topics: {error}"))
}

impl Materializer {
    /// Starts reading each view's topic (`partitions` each) where the store
    /// left it.
    pub fn new(
        bus: &BusConfig,
        store: Arc<OnlineStore>,
        views: Vec<(OnlineView, i32)>,
    ) -> Result<Self, FeaturesError> {
        let consumer: BaseConsumer = weir_bus::consumer_config(bus, "weir-online")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(kafka)?;
        let mut assignment = TopicPartitionList::new();
        let mut next = HashMap::new();
        let mut by_topic = HashMap::new();
        for (view, partitions) in views {
            for partition in 0..partitions {
                let offset = store.offset(&view.topic, partition)?.unwrap_or(0);
                assignment
                    .add_partition_offset(&view.topic, partition, Offset::Offset(offset))
                    .map_err(kafka)?;
                next.insert((view.topic.clone(), partition), offset);
            }
            by_topic.insert(view.topic.clone(), view);
        }
        consumer.assign(&assignment).map_err(kafka)?;
        Ok(Self {
            store,
            consumer,
            views: by_topic,
            ends: HashMap::new(),
            next,
        })
    }

    /// Reads up to `max` records (waiting up to `wait` for the first) and
    /// writes them; returns how many records were read.
    pub fn poll(&mut self, max: usize, wait: Duration) -> Result<usize, FeaturesError> {
        let mut by_topic: HashMap<String, Vec<(i32, i64, Json)>> = HashMap::new();
        let mut read = 0;
        let mut timeout = wait;
        while read < max {
            let Some(message) = self.consumer.poll(timeout) else {
                break;
            };
            timeout = Duration::ZERO;
            let message = message.map_err(kafka)?;
            read += 1;
            self.next.insert(
                (message.topic().to_string(), message.partition()),
                message.offset() + 1,
            );
            // A row that is not JSON is not one of a view's: skip it.
            let row = message
                .payload()
                .and_then(|p| serde_json::from_slice::<Json>(p).ok())
                .unwrap_or(Json::Null);
            by_topic
                .entry(message.topic().to_string())
                .or_default()
                .push((message.partition(), message.offset(), row));
        }
        for (topic, records) in by_topic {
            if let Some(view) = self.views.get(&topic) {
                self.store.ingest(view, &records)?;
            }
        }
        Ok(read)
    }

    /// Reads every topic to the end it has now.
    pub fn catch_up(&mut self) -> Result<usize, FeaturesError> {
        self.ends.clear();
        for (topic, partition) in self.next.keys() {
            let (_, high) = self
                .consumer
                .fetch_watermarks(topic, *partition, Duration::from_secs(10))
                .map_err(kafka)?;
            self.ends.insert((topic.clone(), *partition), high);
        }
        let mut read = 0;
        while self
            .ends
            .iter()
            .any(|(k, end)| self.next.get(k).is_some_and(|n| n < end))
        {
            read += self.poll(10_000, Duration::from_millis(200))?;
        }
        Ok(read)
    }
}
