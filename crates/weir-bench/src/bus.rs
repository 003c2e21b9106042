//! `weir bench bus`: records produced then consumed through the bus (Avro
//! encoding with schema checks; decoding with dead-letter checks) and
//! through a raw rdkafka loop with the same client settings and
//! pre-encoded bytes, the same rounds for each. A third consumer is the
//! raw loop decoding the bus's Avro records into Arrow batches as the
//! dataflow's sources do (`weir_dataflow::decode::RecordDecoder`, 4,096
//! records a batch).

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value as Json, json};
use weir_bus::{Bus, BusConfig, ConsumerOptions, SchemaType, StartFrom, TopicSpec};
use weir_core::Config;

use crate::spread::Spread;
use crate::stop_broker;

/// `weir bench bus`'s arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Records per run.
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Approximate record size in bytes.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Partitions of the benchmark topics.
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// Rounds: every side runs once a round, and each figure is reported
    /// as the median of its rounds with the lowest and highest.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
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
    seconds: f64,
}

impl Figure {
    fn records_per_second(&self) -> f64 {
        self.records as f64 / self.seconds
    }
}

/// Runs `args.rounds` rounds on one broker, each on fresh topics: raw
/// produce, bus produce, raw consume, bus consume, in that order.
pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    if args.rounds == 0 {
        bail!("--rounds: at least 1");
    }
    let (bootstrap, broker) = crate::broker(config).await?;
    let where_ = match &broker {
        Some(_) => "the embedded broker (memory storage, in this process)".to_string(),
        None => format!("Kafka at {bootstrap}"),
    };
    let bus = Bus::connect(BusConfig::configured(bootstrap.clone(), config)).await?;
    // A pool of distinct events, cycled, so generating data is not measured.
    let pool: Vec<Json> = (0..1024).map(|i| event(i, args.size)).collect();
    let mut rounds = Vec::with_capacity(args.rounds);
    for number in 1..=args.rounds {
        let round = round(&bus, &args, &pool, number).await?;
        if number == 1 {
            println!(
                "weir bench bus: {} records of {} bytes, {} partition(s), {} round(s), {where_}",
                args.records, round.avro_size, args.partitions, args.rounds
            );
            println!(
                "(raw = rdkafka with the bus's settings and pre-encoded bytes; bus = Avro encoding with schema checks, decoding, dead-letter checks)\n"
            );
        }
        println!(
            "round {number}: produce raw {:.0}/s bus {:.0}/s, consume raw {:.0}/s bus {:.0}/s into Arrow {:.0}/s",
            round.raw_produce.records_per_second(),
            round.bus_produce.records_per_second(),
            round.raw_consume.records_per_second(),
            round.bus_consume.records_per_second(),
            round.arrow_consume.records_per_second(),
        );
        rounds.push(round);
    }

    println!(
        "\nmedian [lowest–highest] of {} round(s):\n{:<18} {:>30} {:>24}",
        rounds.len(),
        "",
        "records/s",
        "ratio to raw"
    );
    let spread = |figure: fn(&Round) -> f64| {
        Spread::of(rounds.iter().map(figure)).expect("at least one round")
    };
    let lines: [(&str, RoundFigure, Option<RoundFigure>); 5] = [
        ("produce  raw", |r| r.raw_produce.records_per_second(), None),
        (
            "produce  weir bus",
            |r| r.bus_produce.records_per_second(),
            Some(|r| r.bus_produce.records_per_second() / r.raw_produce.records_per_second()),
        ),
        ("consume  raw", |r| r.raw_consume.records_per_second(), None),
        (
            "consume  weir bus",
            |r| r.bus_consume.records_per_second(),
            Some(|r| r.bus_consume.records_per_second() / r.raw_consume.records_per_second()),
        ),
        (
            "consume  into Arrow",
            |r| r.arrow_consume.records_per_second(),
            Some(|r| r.arrow_consume.records_per_second() / r.raw_consume.records_per_second()),
        ),
    ];
    for (name, figure, ratio) in lines {
        let ratio = ratio.map_or(String::new(), |ratio| format!("{:.2}", spread(ratio)));
        println!(
            "{name:<18} {:>30} {ratio:>24}",
            format!("{:.0}", spread(figure))
        );
    }
    println!(
        "\nconsume into Arrow batches / raw consume: {:.2} (target >= 0.90)",
        spread(|r| r.arrow_consume.records_per_second() / r.raw_consume.records_per_second()),
    );
    println!(
        "produce + consume: bus {:.0} records/s, raw {:.0} records/s, ratio {:.2} (target >= 0.90)",
        spread(|r| end_to_end(&r.bus_produce, &r.bus_consume)),
        spread(|r| end_to_end(&r.raw_produce, &r.raw_consume)),
        spread(|r| end_to_end(&r.bus_produce, &r.bus_consume)
            / end_to_end(&r.raw_produce, &r.raw_consume)),
    );
    drop(bus);
    if let Some(broker) = broker {
        stop_broker(broker).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// A figure of a round.
type RoundFigure = fn(&Round) -> f64;

/// Records a second through producing then consuming them.
fn end_to_end(produce: &Figure, consume: &Figure) -> f64 {
    produce.records as f64 / (produce.seconds + consume.seconds)
}

/// One round's four figures.
struct Round {
    avro_size: usize,
    raw_produce: Figure,
    bus_produce: Figure,
    raw_consume: Figure,
    bus_consume: Figure,
    arrow_consume: Figure,
}

async fn round(bus: &Bus, args: &Args, pool: &[Json], number: usize) -> anyhow::Result<Round> {
    let run_id = std::process::id();
    let raw_topic = format!("bench.raw.{run_id}.{number}");
    let bus_topic = format!("bench.bus.{run_id}.{number}");
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
    let avro_size = publisher.encode(&pool[0])?.len();
    let payload = vec![b'x'; avro_size];

    let raw_produce = raw_produce(bus, &raw_topic, &payload, args.records).await?;
    let bus_produce = {
        let started = Instant::now();
        let mut in_flight = VecDeque::with_capacity(IN_FLIGHT);
        for i in 0..args.records {
            let encoded = publisher.encode(&pool[i % pool.len()])?;
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
            seconds: started.elapsed().as_secs_f64(),
        }
    };
    // Every consumer reads the same bytes: the bus's Avro records.
    let raw_consume = raw_consume(bus, &bus_topic, args.partitions, args.records).await?;
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
            seconds: started.elapsed().as_secs_f64(),
        }
    };
    let arrow_consume = arrow_consume(bus, &bus_topic, args.partitions, args.records).await?;
    Ok(Round {
        avro_size,
        raw_produce,
        bus_produce,
        raw_consume,
        bus_consume,
        arrow_consume,
    })
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
    let mut count = 0;
    while count < records {
        let message = consumer.recv().await?;
        std::hint::black_box(message.payload());
        count += 1;
    }
    Ok(Figure {
        records: count,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The raw loop, decoding the records into Arrow batches as a dataflow
/// source does: the messages of a batch are held as rdkafka lends them
/// (copying each out with `detach` cost more than decoding it).
async fn arrow_consume(
    bus: &Bus,
    topic: &str,
    partitions: i32,
    records: usize,
) -> anyhow::Result<Figure> {
    const BATCH: usize = 4096;
    let schema = weir_dataflow::pipeline::topic_schema(bus, topic, None)?;
    let decoder = weir_dataflow::decode::RecordDecoder::new(schema, Some(bus.codec(topic)));
    anyhow::ensure!(
        decoder.decodes_avro_in_batches(),
        "the bench schema decodes with arrow-avro"
    );
    let consumer: StreamConsumer =
        weir_bus::consumer_config(bus.config(), &format!("bench-arrow-{}", std::process::id()))
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let started = Instant::now();
    let (mut count, mut amount) = (0, 0.0);
    let mut pending = Vec::with_capacity(BATCH);
    while count < records {
        let message = consumer.recv().await?;
        pending.push(message);
        if pending.len() == BATCH || count + pending.len() == records {
            let payloads: Vec<Option<&[u8]>> = pending.iter().map(|m| m.payload()).collect();
            let decoded = decoder.decode(&payloads)?;
            anyhow::ensure!(decoded.rejected.is_empty(), "no record was rejected");
            let amounts = decoded
                .batch
                .column_by_name("amount")
                .context("an amount column")?;
            amount += arrow::compute::sum(
                amounts
                    .as_any()
                    .downcast_ref::<arrow::array::Float64Array>()
                    .context("amounts are doubles")?,
            )
            .unwrap_or(0.0);
            count += decoded.batch.num_rows();
            pending.clear();
        }
    }
    anyhow::ensure!(amount > 0.0, "decoded values carry the data");
    Ok(Figure {
        records: count,
        seconds: started.elapsed().as_secs_f64(),
    })
}
