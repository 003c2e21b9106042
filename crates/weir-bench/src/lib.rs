//! `weir bench`: Weir side by side with a raw baseline (the limit) and the
//! anchor tool in one run, on the same data and machine, reported as
//! ratios. Built in release mode by `cargo xtask bench`. A program rather
//! than a library: it owns its arguments, prints its figures, starts child
//! processes of the `weir` binary it runs in, and fails with `anyhow`
//! errors.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value as Json, json};
use weir_broker::{EmbeddedBroker, Storage};
use weir_bus::{Bus, BusConfig, ConsumerOptions, SchemaType, StartFrom, TopicSpec};
use weir_core::Config;

mod automl;
mod hop;
mod online;
mod serve;
mod snapshot;
mod spread;
mod tracking;

/// `weir bench`'s arguments.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Produce then consume records through the bus (Avro codec, dead-letter
    /// checks) and through a raw rdkafka loop with the same settings.
    Bus(BusArgs),
    /// A hopping-window aggregation (1 h every 5 min; count, avg, max per
    /// user) over a pre-loaded topic: a Weir job, a hand-written Rust loop
    /// (the limit) and Quix Streams (the anchor), on the same data.
    Hop(hop::Args),
    /// A point-in-time training snapshot (label rows × 10 features from 3
    /// views) by Weir and by Feast's `get_historical_features`, on the same
    /// files, with the outputs compared.
    Snapshot(snapshot::Args),
    /// MLflow's tracking workload (runs with params and metrics by
    /// `log_batch`, then filtered, ordered searches) through the official
    /// client, against `weir server` and `mlflow server` (SQLite).
    Tracking(tracking::Args),
    /// Online feature look-ups over HTTP (1 and 50 entities a request,
    /// under concurrency): Weir's online store vs `feast serve`.
    Online(online::Args),
    /// Model serving over OIP v2 HTTP at several concurrencies (Weir vs
    /// MLServer vs a raw ONNX Runtime loop), and batch scoring of 1M rows.
    Serve(serve::Args),
    /// Hyper-parameter tuning of LightGBM (TPE, same space, data, split
    /// and trial budget): `weir tune` with worker processes vs Optuna.
    Automl(automl::Args),
}

#[derive(clap::Args)]
struct BusArgs {
    /// Records per run.
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Approximate record size in bytes.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Partitions of the benchmark topics.
    #[arg(long, default_value_t = 1)]
    partitions: i32,
}

/// Runs the benchmark `args` name.
pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    match args.what {
        What::Bus(args) => bench_bus(config, args).await,
        What::Hop(args) => hop::run(config, args).await,
        What::Snapshot(args) => snapshot::run(args).await,
        What::Tracking(args) => tracking::run(args).await,
        What::Online(args) => online::run(args).await,
        What::Automl(args) => automl::run(args).await,
        What::Serve(args) => serve::run(args).await,
    }
}

const BENCH_SCHEMA: &str = r#"{
  "type": "record", "name": "BenchEvent", "namespace": "weir.bench",
  "fields": [
    {"name": "id", "type": "long"},
    {"name": "user_id", "type": "string"},
    {"name": "merchant_id", "type": "string"},
    {"name": "amount", "type": "double"},
    {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "note", "type": "string"}
  ]
}"#;

/// Most records awaiting acknowledgement at once, in both loops.
const IN_FLIGHT: usize = 100_000;

struct Figure {
    records: usize,
    bytes: usize,
    seconds: f64,
}

impl Figure {
    fn records_per_second(&self) -> f64 {
        self.records as f64 / self.seconds
    }
    fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e6
    }
}

async fn bench_bus(config: &Config, args: BusArgs) -> anyhow::Result<ExitCode> {
    let (bootstrap, broker, where_) = match &config.brokers {
        Some(brokers) => (brokers.clone(), None, format!("Kafka at {brokers}")),
        None => {
            let broker = EmbeddedBroker::start_on_free_port(Storage::Memory).await?;
            (
                broker.bootstrap_servers(),
                Some(broker),
                "the embedded broker (memory storage, in this process)".to_string(),
            )
        }
    };
    let bus = Bus::connect(BusConfig::configured(bootstrap.clone(), config)).await?;
    let run_id = std::process::id();
    let raw_topic = format!("bench.raw.{run_id}");
    let bus_topic = format!("bench.bus.{run_id}");
    for topic in [&raw_topic, &bus_topic] {
        bus.admin()
            .create_topic(&TopicSpec::new(topic.as_str(), args.partitions))
            .await?;
    }
    bus.registry()
        .register(
            &format!("{bus_topic}-value"),
            SchemaType::Avro,
            BENCH_SCHEMA,
        )
        .await?;
    let publisher = bus.publisher(&bus_topic)?;
    // A pool of distinct events, cycled, so generating data is not measured.
    let pool: Vec<Json> = (0..1024).map(|i| event(i, args.size)).collect();
    let avro_size = publisher.encode(&pool[0])?.len();
    let payload = vec![b'x'; avro_size];
    println!(
        "weir bench bus: {} records of {avro_size} bytes, {} partition(s), {where_}",
        args.records, args.partitions
    );
    println!(
        "(raw = rdkafka with the bus's settings and pre-encoded bytes; bus = Avro encoding with schema checks, decoding, dead-letter checks)\n"
    );

    let raw_produce = raw_produce(&bus, &raw_topic, &payload, args.records).await?;
    let bus_produce = {
        let started = Instant::now();
        let mut in_flight = VecDeque::with_capacity(IN_FLIGHT);
        let mut bytes = 0;
        for i in 0..args.records {
            let encoded = publisher.encode(&pool[i % pool.len()])?;
            bytes += encoded.len();
            in_flight.push_back(publisher.send(None, &encoded).await?);
            if in_flight.len() >= IN_FLIGHT {
                in_flight.pop_front().expect("non-empty").await?;
            }
        }
        for delivery in in_flight {
            delivery.await?;
        }
        Figure {
            records: args.records,
            bytes,
            seconds: started.elapsed().as_secs_f64(),
        }
    };
    let raw_consume = raw_consume(&bus, &raw_topic, args.partitions, args.records).await?;
    let bus_consume = {
        let mut consumer = bus.consumer(
            &[bus_topic.as_str()],
            ConsumerOptions {
                start: StartFrom::Beginning,
                read_only: true,
                ..Default::default()
            },
        )?;
        let started = Instant::now();
        let (mut records, mut amount) = (0, 0.0);
        while records < args.records {
            let record = consumer
                .next()
                .await?
                .context("the bus consumer stopped early")?;
            if let weir_bus::Value::Avro(apache_avro::types::Value::Record(fields)) = &record.value
                && let Some((_, apache_avro::types::Value::Double(x))) = fields.get(3)
            {
                amount += x;
            }
            records += 1;
        }
        anyhow::ensure!(amount > 0.0, "decoded values carry the data");
        anyhow::ensure!(
            consumer.dead_letters().total() == 0,
            "no record was rejected"
        );
        Figure {
            records,
            bytes: records * avro_size,
            seconds: started.elapsed().as_secs_f64(),
        }
    };

    println!(
        "{:<18} {:>12} {:>9} {:>14}",
        "", "records/s", "MB/s", "ratio to raw"
    );
    for (name, figure, ratio_to) in [
        ("produce  raw", &raw_produce, None),
        ("produce  weir bus", &bus_produce, Some(&raw_produce)),
        ("consume  raw", &raw_consume, None),
        ("consume  weir bus", &bus_consume, Some(&raw_consume)),
    ] {
        let ratio = ratio_to.map_or(String::new(), |raw| {
            format!(
                "{:.2}",
                figure.records_per_second() / raw.records_per_second()
            )
        });
        println!(
            "{name:<18} {:>12.0} {:>9.1} {ratio:>14}",
            figure.records_per_second(),
            figure.megabytes_per_second()
        );
    }
    let end_to_end = |p: &Figure, c: &Figure| p.records as f64 / (p.seconds + c.seconds);
    println!(
        "\nproduce + consume: bus {:.0} records/s, raw {:.0} records/s, ratio {:.2} (target >= 0.90)",
        end_to_end(&bus_produce, &bus_consume),
        end_to_end(&raw_produce, &raw_consume),
        end_to_end(&bus_produce, &bus_consume) / end_to_end(&raw_produce, &raw_consume)
    );
    drop(publisher);
    drop(bus);
    if let Some(broker) = broker {
        stop_broker(broker).await;
    }
    Ok(ExitCode::SUCCESS)
}

fn event(i: usize, size: usize) -> Json {
    let base = json!({
        "id": i, "user_id": format!("u{:05}", i % 10_000), "merchant_id": format!("m{:03}", i % 200),
        "amount": 1.0 + (i % 977) as f64 * 0.37, "event_time": 1_700_000_000_000_i64 + i as i64,
    });
    // Pad the note so the Avro record is about `size` bytes.
    let used = 8 + 7 + 5 + 8 + 6 + 2;
    let mut event = base;
    event["note"] = json!("n".repeat(size.saturating_sub(used + 5)));
    event
}

async fn raw_produce(
    bus: &Bus,
    topic: &str,
    payload: &[u8],
    records: usize,
) -> anyhow::Result<Figure> {
    let producer: FutureProducer = weir_bus::producer_config(bus.config()).create()?;
    let started = Instant::now();
    let mut in_flight = VecDeque::with_capacity(IN_FLIGHT);
    for _ in 0..records {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).payload(payload);
        let future = loop {
            match producer.send_result(record) {
                Ok(future) => break future,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((error, _)) => return Err(error.into()),
            }
        };
        in_flight.push_back(future);
        if in_flight.len() >= IN_FLIGHT {
            let _ = in_flight
                .pop_front()
                .expect("non-empty")
                .await?
                .map_err(|(e, _)| e)?;
        }
    }
    for future in in_flight {
        let _ = future.await?.map_err(|(e, _)| e)?;
    }
    Ok(Figure {
        records,
        bytes: records * payload.len(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

async fn raw_consume(
    bus: &Bus,
    topic: &str,
    partitions: i32,
    records: usize,
) -> anyhow::Result<Figure> {
    let consumer: StreamConsumer =
        weir_bus::consumer_config(bus.config(), &format!("bench-raw-{}", std::process::id()))
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let started = Instant::now();
    let (mut count, mut bytes) = (0, 0);
    while count < records {
        let message = consumer.recv().await?;
        bytes += message.payload().map_or(0, <[u8]>::len);
        count += 1;
    }
    Ok(Figure {
        records: count,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Stops `broker` once the bus clients of this process have gone: one
/// still closing when it stops would log that the broker is down.
pub(crate) async fn stop_broker(broker: EmbeddedBroker) {
    let _ = tokio::task::spawn_blocking(weir_bus::wait_for_dropped_clients).await;
    broker.stop().await;
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A child process leading a process group of its own: when this is
/// dropped, every process of the group is killed — a Python server's
/// workers (gunicorn's, uvicorn's) too, which a kill of the child alone
/// would leave running.
pub(crate) struct Group(tokio::process::Child);

impl Group {
    /// Spawns `command` as the leader of a new process group.
    pub(crate) fn spawn(command: &mut tokio::process::Command) -> std::io::Result<Self> {
        command
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map(Self)
    }
}

/// `command.spawn_group()`: [`Group::spawn`].
pub(crate) trait SpawnGroup {
    /// Spawns the command as the leader of a new process group.
    fn spawn_group(&mut self) -> std::io::Result<Group>;
}

impl SpawnGroup for tokio::process::Command {
    fn spawn_group(&mut self) -> std::io::Result<Group> {
        Group::spawn(self)
    }
}

impl std::ops::Deref for Group {
    type Target = tokio::process::Child;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Group {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Starts a server (as a process group) and waits until it accepts
/// connections on `address`; returns it and the seconds that took.
pub(crate) async fn start_listening(
    mut command: tokio::process::Command,
    address: SocketAddr,
) -> anyhow::Result<(Group, f64)> {
    let started = Instant::now();
    let mut server = Group::spawn(command.stdout(Stdio::null()).stderr(Stdio::null()))
        .context("starting the server")?;
    let deadline = started + Duration::from_secs(180);
    while tokio::net::TcpStream::connect(address).await.is_err() {
        if let Some(status) = server.try_wait()? {
            bail!("exited with {status} before listening on {address}");
        }
        if Instant::now() > deadline {
            bail!("nothing listens on {address} after 180 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((server, started.elapsed().as_secs_f64()))
}
