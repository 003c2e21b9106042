//! The embedded broker against the real Kafka client (librdkafka).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use weir_broker::{EmbeddedBroker, Storage};

async fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            [&NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(results[0].is_ok(), "{results:?}");
}

async fn produce(bootstrap: &str, topic: &str, count: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for i in 0..count {
        let key = format!("k{i}");
        let value = format!("v{i}");
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload(&value),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }
}

fn read_all(bootstrap: &str, topic: &str, expected: usize) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut values = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while values.len() < expected && std::time::Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.unwrap();
            values.push(String::from_utf8(message.payload().unwrap().to_vec()).unwrap());
        }
    }
    values.sort();
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_broker_serves_a_kafka_client() {
    let broker = EmbeddedBroker::start_on_free_port(Storage::Memory)
        .await
        .unwrap();
    let bootstrap = broker.bootstrap_servers();
    create_topic(&bootstrap, "t", 3).await;
    produce(&bootstrap, "t", 30).await;
    let bootstrap2 = bootstrap.clone();
    let values = tokio::task::spawn_blocking(move || read_all(&bootstrap2, "t", 30))
        .await
        .unwrap();
    assert_eq!(values.len(), 30);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_broker_keeps_data_across_restarts() {
    // tansu resolves SQLite paths against the working directory: keep the
    // database in a temporary folder under it.
    let dir = tempfile::Builder::new()
        .prefix(".broker-test-")
        .tempdir_in(".")
        .unwrap();
    let storage = Storage::Sqlite(dir.path().join("broker.db"));

    let broker = EmbeddedBroker::start_on_free_port(storage.clone())
        .await
        .unwrap();
    let address = broker.address();
    create_topic(&broker.bootstrap_servers(), "durable", 2).await;
    produce(&broker.bootstrap_servers(), "durable", 20).await;
    broker.stop().await;

    let broker = EmbeddedBroker::start(address, storage).await.unwrap();
    let bootstrap = broker.bootstrap_servers();
    let values = tokio::task::spawn_blocking(move || read_all(&bootstrap, "durable", 20))
        .await
        .unwrap();
    let mut expected: Vec<String> = (0..20).map(|i| format!("v{i}")).collect();
    expected.sort();
    assert_eq!(values, expected);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_a_clear_error() {
    let broker = EmbeddedBroker::start_on_free_port(Storage::Memory)
        .await
        .unwrap();
    let error = EmbeddedBroker::start(broker.address(), Storage::Memory)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains(&broker.address().to_string()), "{error}");
    broker.stop().await;
}

/// A consumer that starts or goes on inside a batch (a resumed checkpoint,
/// a response cut short by its size limit) reads every later record once,
/// in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_from_inside_a_batch_skips_nothing() {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
    use rdkafka::{Offset, TopicPartitionList};

    let broker = EmbeddedBroker::start_on_free_port(Storage::Memory)
        .await
        .unwrap();
    let bootstrap = broker.bootstrap_servers();
    create_topic(&bootstrap, "batches", 1).await;
    const RECORDS: i64 = 60_000;
    // Two big batches, then small ones: a fetch from inside a big batch
    // goes on over many small ones in the same response.
    let value = "x".repeat(100);
    for (records, batch) in [(20_000, "10000"), (RECORDS - 20_000, "200")] {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("linger.ms", "100")
            .set("batch.num.messages", batch)
            .set("batch.size", "4000000")
            .create()
            .unwrap();
        for i in 0..records {
            let key = i.to_string();
            producer
                .send(BaseRecord::to("batches").key(&key).payload(&value))
                .map_err(|(e, _)| e)
                .unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }

    for start in [0, 4_096, 12_345, 19_990, 41_000] {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "inside-a-batch")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset("batches", 0, Offset::Offset(start))
            .unwrap();
        consumer.assign(&assignment).unwrap();
        let mut next = start;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while next < RECORDS {
            assert!(std::time::Instant::now() < deadline, "stuck at {next}");
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                let offset = message.unwrap().offset();
                assert_eq!(
                    offset, next,
                    "from {start}: expected offset {next}, got {offset}"
                );
                next += 1;
            }
        }
    }
}

/// A fetch waiting for records is answered when one is produced, as
/// Kafka's long poll is, not when its wait ends (tansu's own fetch sleeps
/// the whole `fetch.wait.max.ms` out, whatever it found).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_fetch_is_answered_when_a_record_comes() {
    use rdkafka::{Offset, TopicPartitionList};

    let broker = EmbeddedBroker::start_on_free_port(Storage::Memory)
        .await
        .unwrap();
    let bootstrap = broker.bootstrap_servers();
    create_topic(&bootstrap, "waits", 1).await;
    const WAIT: Duration = Duration::from_secs(20);
    let reader = bootstrap.clone();
    let read = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &reader)
            .set("group.id", "long-poll")
            .set("fetch.wait.max.ms", WAIT.as_millis().to_string())
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset("waits", 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&assignment).unwrap();
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + 3 * WAIT;
        while seen.len() < 3 && std::time::Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                seen.push((message.unwrap().offset(), std::time::Instant::now()));
            }
        }
        seen
    });
    // Each record is produced while the reader's fetch waits on an empty
    // partition.
    let mut produced = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        produce(&bootstrap, "waits", 1).await;
        produced.push(std::time::Instant::now());
    }
    let seen = read.await.unwrap();
    assert_eq!(
        seen.iter().map(|(offset, _)| *offset).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    for ((offset, at), sent) in seen.iter().zip(&produced) {
        let after = at.saturating_duration_since(*sent);
        assert!(
            after < WAIT / 4,
            "record {offset} was read {after:?} after it was produced: the fetch waited out its {WAIT:?}"
        );
    }
    broker.stop().await;
}

/// On the SQLite engine (Weir's default), whose partitions' offset stages
/// the broker keeps between produces: a consumer that has read to the end
/// of every partition and waits gets each record as it is produced, partition
/// after partition, round after round — a kept stage that missed a produce
/// would leave its record unread until the fetch's wait ran out. Produces
/// to another topic meanwhile change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_reader_of_sqlite_partitions_gets_every_record_as_it_comes() {
    use rdkafka::{Offset, TopicPartitionList};

    let dir = tempfile::Builder::new()
        .prefix(".broker-test-")
        .tempdir_in(".")
        .unwrap();
    let broker = EmbeddedBroker::start_on_free_port(Storage::Sqlite(dir.path().join("broker.db")))
        .await
        .unwrap();
    let bootstrap = broker.bootstrap_servers();
    const PARTITIONS: i32 = 4;
    const ROUNDS: i32 = 5;
    create_topic(&bootstrap, "rounds", PARTITIONS).await;
    create_topic(&bootstrap, "elsewhere", 1).await;
    const WAIT: Duration = Duration::from_secs(20);
    let (sent, mut read) = tokio::sync::mpsc::unbounded_channel();
    let reader = bootstrap.clone();
    let reading = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &reader)
            .set("group.id", "rounds")
            .set("fetch.wait.max.ms", WAIT.as_millis().to_string())
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            assignment
                .add_partition_offset("rounds", partition, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let deadline = std::time::Instant::now() + 2 * WAIT;
        let mut count = 0;
        while count < PARTITIONS * ROUNDS && std::time::Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(50)) {
                let message = message.unwrap();
                let _ = sent.send((message.partition(), message.offset()));
                count += 1;
            }
        }
    });
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let send = |topic: &'static str, partition: i32| {
        producer.send(
            FutureRecord::to(topic)
                .partition(partition)
                .payload("x")
                .key("k"),
            Duration::from_secs(5),
        )
    };
    // Round 0 starts the reader on every partition (a new consumer looks
    // its partitions' offsets up one by one, and a lookup may queue behind
    // a waiting fetch on the same connection).
    for partition in 0..PARTITIONS {
        send("rounds", partition).await.unwrap();
    }
    let mut first: Vec<_> = Vec::new();
    for _ in 0..PARTITIONS {
        first.push(
            tokio::time::timeout(2 * WAIT, read.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    first.sort();
    assert_eq!(first, (0..PARTITIONS).map(|p| (p, 0)).collect::<Vec<_>>());
    for round in 1..ROUNDS {
        for partition in 0..PARTITIONS {
            send("elsewhere", 0).await.unwrap();
            send("rounds", partition).await.unwrap();
            let got = tokio::time::timeout(WAIT / 4, read.recv()).await;
            assert_eq!(
                got.ok().flatten(),
                Some((partition, i64::from(round))),
                "round {round}, partition {partition}: not read within {:?} of being produced",
                WAIT / 4
            );
        }
    }
    reading.await.unwrap();
    broker.stop().await;
}

/// How many partitions `topic` has, by the client's metadata; `None` when
/// the broker does not know it.
fn partitions_of(bootstrap: &str, topic: &str) -> Option<usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    // A metadata request for all topics never creates one.
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(5))
        .unwrap();
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_creates_a_topic_by_producing_to_it_with_the_default_partitions() {
    let options = weir_broker::BrokerOptions {
        auto_create_topics: true,
        num_partitions: 3,
    };
    let broker = EmbeddedBroker::start_with(
        weir_broker::free_local_address().unwrap(),
        Storage::Memory,
        options,
    )
    .await
    .unwrap();
    let bootstrap = broker.bootstrap_servers();
    assert_eq!(partitions_of(&bootstrap, "made-on-use"), None);
    produce(&bootstrap, "made-on-use", 12).await;
    assert_eq!(partitions_of(&bootstrap, "made-on-use"), Some(3));
    let reader = bootstrap.clone();
    let values = tokio::task::spawn_blocking(move || read_all(&reader, "made-on-use", 12))
        .await
        .unwrap();
    assert_eq!(values.len(), 12, "{values:?}");

    // A consumer's metadata request does not create what it subscribes
    // to (librdkafka's `allow.auto.create.topics` is off for consumers).
    let reader = bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &reader)
            .set("group.id", "only-reader")
            .create()
            .unwrap();
        consumer.subscribe(&["only-read"]).unwrap();
        let until = std::time::Instant::now() + Duration::from_millis(1500);
        while std::time::Instant::now() < until {
            let _ = consumer.poll(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    assert_eq!(partitions_of(&bootstrap, "only-read"), None);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auto_creation_off_a_produce_to_a_new_topic_fails() {
    let options = weir_broker::BrokerOptions {
        auto_create_topics: false,
        ..Default::default()
    };
    let broker = EmbeddedBroker::start_with(
        weir_broker::free_local_address().unwrap(),
        Storage::Memory,
        options,
    )
    .await
    .unwrap();
    let bootstrap = broker.bootstrap_servers();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("message.timeout.ms", "2000")
        .create()
        .unwrap();
    let sent = producer
        .send(
            FutureRecord::to("not-made").key("k").payload("v"),
            Duration::from_secs(5),
        )
        .await;
    assert!(sent.is_err(), "{sent:?}");
    assert_eq!(partitions_of(&bootstrap, "not-made"), None);
    drop(producer);
    broker.stop().await;
}
