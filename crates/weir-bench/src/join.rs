//! `weir bench join`: one stream–stream interval join three ways on the
//! same topics.
//!
//! A log topic (one record per served request, `r<i>`, 10 ms apart) and a
//! feedback topic (a label for 90 % of the requests, 0 to 30 s after them,
//! and as many again for requests never served), both out of order by up
//! to 5 s. The join: log ⋈ feedback on the request id with the feedback's
//! time 0 to 60 s after the log's, inner.
//!
//! 1. **Weir**: `weir job run` with a `[join]`, in a child process (1
//!    worker), from the broker to a topic; peak RSS from `/proc`.
//! 2. **Hand loop** (the limit): one thread, rdkafka, serde_json, a
//!    `HashMap` per side and a heap of expiries, joined rows to a topic.
//! 3. **Quix Streams** (the anchor), `python/bench/quix_join.py`: its
//!    `join_interval` (a true interval join, with the same bounds).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use weir_bus::{Bus, BusConfig, OutRecord, TopicSpec};
use weir_core::Config;

use crate::hop::{Figure, count_records, run_child, tempdir};
use crate::spread::Spread;

#[derive(clap::Args)]
pub struct Args {
    /// Log records (the feedback topic gets as many).
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Quix Streams is slow: it joins topics of its own with this many log
    /// records (and feedback records), made the same way.
    #[arg(long)]
    quix_events: Option<usize>,
    /// Skip Quix Streams.
    #[arg(long)]
    no_quix: bool,
    /// Rounds: each runs every side once, in turns; every side is reported
    /// as the median of its rounds with the lowest and highest.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

const T0: i64 = 1_700_000_000_000;
/// The join takes feedback from 0 to this many ms after the log record.
const UPPER: i64 = 60_000;
/// As the job's sources allow: records are out of order by up to 5 s.
const LATENESS: i64 = 6_000;

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let (bootstrap, broker) = crate::broker(config).await?;
    let bus = Bus::connect(BusConfig::configured(bootstrap.clone(), config)).await?;
    let log = format!("bench.join.log.{}", std::process::id());
    let feedback = format!("bench.join.feedback.{}", std::process::id());
    for topic in [&log, &feedback] {
        bus.admin().create_topic(&TopicSpec::new(topic, 1)).await?;
        bus.admin()
            .create_topic(&TopicSpec::new(format!("{topic}-hand"), 1))
            .await?;
    }
    println!(
        "weir bench join: {} log records 10 ms apart, {} feedback records (90 % of the requests labelled 0–30 s later, the rest never served), both out of order by up to 5 s; inner interval join on the request id, feedback 0–60 s after the log",
        args.events, args.events
    );
    let started = Instant::now();
    let expected = load(&bus, &log, &feedback, args.events).await?;
    println!(
        "loaded both topics in {:.1} s (1 partition each, {}); {expected} pairs join\n",
        started.elapsed().as_secs_f64(),
        if broker.is_some() {
            "embedded broker, memory storage, in this process"
        } else {
            "the configured Kafka"
        }
    );

    // Quix Streams' own, smaller topics (made the same way), read whole.
    let quix_topics = match args.no_quix {
        true => None,
        false => {
            let events = args.quix_events.unwrap_or(args.events);
            let (log, feedback) = (format!("{log}-q"), format!("{feedback}-q"));
            for topic in [&log, &feedback] {
                bus.admin().create_topic(&TopicSpec::new(topic, 1)).await?;
            }
            let expected = load(&bus, &log, &feedback, events).await?;
            Some((log, feedback, events, expected))
        }
    };
    let mut rounds = Vec::new();
    for number in 1..=args.rounds.max(1) {
        let weir = run_weir(config, &bootstrap, &log, &feedback).await?;
        let hand = {
            let (bootstrap, log, feedback, events) = (
                bootstrap.clone(),
                log.clone(),
                feedback.clone(),
                2 * args.events,
            );
            tokio::task::spawn_blocking(move || hand_loop(&bootstrap, &log, &feedback, events))
                .await??
        };
        let quix = match &quix_topics {
            None => None,
            Some((log, feedback, events, _)) => {
                Some(run_quix(&bootstrap, log, feedback, 2 * events).await?)
            }
        };
        println!(
            "round {number}: weir {:.0} events/s ({} joined), hand loop {:.0} events/s ({} joined){}",
            weir.0.events_per_second(),
            weir.1,
            hand.0.events_per_second(),
            hand.1,
            match (&quix, &quix_topics) {
                (Some(q), Some((_, _, _, expected))) => format!(
                    ", quix streams {:.0} events/s ({} joined of {expected} due in its {} records)",
                    q.0.events_per_second(),
                    q.1,
                    q.0.events
                ),
                _ => String::new(),
            }
        );
        anyhow::ensure!(
            weir.1 == expected && hand.1 == expected,
            "the joins disagree: {expected} pairs expected, Weir wrote {}, the hand loop {}",
            weir.1,
            hand.1
        );
        rounds.push((weir.0, hand.0, quix.map(|q| q.0)));
    }
    println!();
    report(&rounds);
    drop(bus);
    if let Some(broker) = broker {
        crate::stop_broker(broker).await;
    }
    Ok(ExitCode::SUCCESS)
}

type Round = (Figure, Figure, Option<Figure>);
/// A side of the report: its name and its figure in a round.
type Side<'a> = (&'a str, &'a dyn Fn(&Round) -> Option<&Figure>);

fn report(rounds: &[Round]) {
    println!(
        "{} round(s); each figure: median [lowest–highest]\n{:<44} {:>28} {:>18} {:>22}",
        rounds.len(),
        "",
        "events/s",
        "peak RSS MiB",
        "vs hand loop"
    );
    let rate = |f: &Figure| f.events_per_second();
    let sides: [Side<'_>; 3] = [
        ("weir job (1 worker, child process)", &|r| Some(&r.0)),
        ("hand loop (1 thread, HashMap, in process)", &|r| Some(&r.1)),
        ("quix streams join_interval (child process)", &|r| {
            r.2.as_ref()
        }),
    ];
    for (name, side) in sides {
        let spread = |precision: usize, figure: &dyn Fn(&Round) -> Option<f64>| {
            Spread::of(rounds.iter().filter_map(figure))
                .map_or("-".to_string(), |s| format!("{s:.precision$}"))
        };
        println!(
            "{name:<44} {:>28} {:>18} {:>22}",
            spread(0, &|r| side(r).map(rate)),
            spread(0, &|r| side(r).and_then(|f| f.rss_mib)),
            spread(2, &|r| side(r).map(|f| rate(f) / rate(&r.1))),
        );
    }
    println!();
    if let Some(spread) = Spread::of(rounds.iter().map(|r| rate(&r.0) / rate(&r.1))) {
        println!("weir / hand loop: {spread:.2}  (target >= 0.7)");
    }
    if let Some(spread) = Spread::of(
        rounds
            .iter()
            .filter_map(|r| Some(rate(&r.0) / rate(r.2.as_ref()?))),
    ) {
        println!("weir / quix streams: {spread:.2}");
    }
    println!(
        "Ratios are taken round by round. The Weir and Quix processes are timed from their start to their exit, the hand loop from its first read; the hand loop's RSS is not measured (it shares this process with the broker)."
    );
}

/// Loads both topics; returns how many (log, feedback) pairs join.
async fn load(bus: &Bus, log: &str, feedback: &str, events: usize) -> anyhow::Result<u64> {
    let mut rng = StdRng::seed_from_u64(11);
    let mut logs: Vec<(i64, String)> = Vec::with_capacity(events);
    let mut labels: Vec<(i64, String)> = Vec::with_capacity(events);
    let mut expected = 0;
    for i in 0..events {
        let ts = T0 + i as i64 * 10;
        let id = format!("r{i}");
        logs.push((
            ts,
            format!(
                "{{\"request_id\":\"{id}\",\"variant\":\"{}\",\"latency_us\":{},\"ts\":{ts}}}",
                ["a", "b"][rng.random_range(0..2)],
                rng.random_range(100..5_000)
            ),
        ));
        let (id, ts) = if rng.random_range(0..10) < 9 {
            expected += 1;
            (id, ts + rng.random_range(0..30_000))
        } else {
            (format!("x{i}"), ts + rng.random_range(0..30_000))
        };
        labels.push((
            ts,
            format!(
                "{{\"request_id\":\"{id}\",\"label\":{},\"ts\":{ts}}}",
                rng.random_range(0..2)
            ),
        ));
    }
    for (topic, mut records) in [(log, logs), (feedback, labels)] {
        // Out of order by up to 5 s.
        records.sort_by_cached_key(|(ts, _)| ts + rng.random_range(0..5_000));
        let producer = bus.producer()?;
        let mut pending = std::collections::VecDeque::new();
        for (_, value) in &records {
            let id = &value[15..value[15..].find('"').expect("an id") + 15];
            pending.push_back(
                producer
                    .send(OutRecord::new(topic, value.as_bytes()).key(id.as_bytes()))
                    .await?,
            );
            if pending.len() > 100_000 {
                pending.pop_front().expect("non-empty").await?;
            }
        }
        for delivery in pending {
            delivery.await?;
        }
    }
    Ok(expected)
}

/// The Weir job; its figure and the rows it wrote.
async fn run_weir(
    config: &Config,
    bootstrap: &str,
    log: &str,
    feedback: &str,
) -> anyhow::Result<(Figure, u64)> {
    let dir = tempdir()?;
    let job = dir.join("join.toml");
    let out = format!(
        "{log}-weir-{}",
        std::time::UNIX_EPOCH.elapsed()?.as_millis()
    );
    std::fs::write(
        &job,
        format!(
            r#"name = "bench-join"
checkpoint_interval = "1s"

[source]
topic = "{log}"
event_time = "ts"
lateness = "{LATENESS}ms"
bounded = true
schema = {{ request_id = "string", variant = "string", latency_us = "long", ts = "long" }}

[join]
topic = "{feedback}"
event_time = "ts"
lateness = "{LATENESS}ms"
schema = {{ request_id = "string", label = "long", ts = "long" }}
on = {{ request_id = "request_id" }}
between = ["0s", "{UPPER}ms"]
columns = {{ label = "label", ts = "label_ts" }}

[sink]
topic = "{out}"
"#
        ),
    )?;
    let args = [
        "job".into(),
        "run".into(),
        job.into_os_string(),
        "--status-every".into(),
        "1h".into(),
    ];
    let mut figure = run_child(config, bootstrap, log, &args, &dir).await?;
    figure.events += count_records(bootstrap, feedback)?;
    let joined = count_records(bootstrap, &out)? as u64;
    Ok((figure, joined))
}

#[derive(Deserialize)]
struct Keyed<'a> {
    #[serde(borrow)]
    request_id: std::borrow::Cow<'a, str>,
    ts: i64,
}

/// The limit: one thread, both topics, a `HashMap` per side and a heap of
/// expiries; the same join, rows to a topic. Returns its figure and rows.
fn hand_loop(
    bootstrap: &str,
    log: &str,
    feedback: &str,
    events: usize,
) -> anyhow::Result<(Figure, u64)> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-hand-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        // As every Weir consumer has it (weir_bus::consumer_config): no
        // 1 s pause each time the prefetch queue fills.
        .set("fetch.queue.backoff.ms", "10")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(log, 0, Offset::Beginning)?;
    assignment.add_partition_offset(feedback, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .create()?;
    let out = format!("{log}-hand");
    let started = Instant::now();
    // Rows of each side by id: (ts, payload).
    let mut lefts: HashMap<String, Vec<(i64, Vec<u8>)>> = HashMap::new();
    let mut rights: HashMap<String, Vec<(i64, Vec<u8>)>> = HashMap::new();
    // (expires at, side, id): a row goes once the watermark passes it.
    let mut expiries: BinaryHeap<Reverse<(i64, bool, String)>> = BinaryHeap::new();
    let (mut log_max, mut feedback_max) = (i64::MIN, i64::MIN);
    let (mut read, mut joined) = (0, 0_u64);
    let mut send = |left: &[u8], right: &[u8]| {
        // The log record's fields and the label's, as the job writes them.
        let mut row = left[..left.len() - 1].to_vec();
        let label: serde_json::Value = serde_json::from_slice(right).expect("parsed before");
        row.extend_from_slice(
            format!(
                ",\"label\":{},\"label_ts\":{}}}",
                label["label"], label["ts"]
            )
            .as_bytes(),
        );
        let mut record: BaseRecord<'_, (), [u8]> = BaseRecord::to(&out).payload(&row);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        joined += 1;
    };
    while read < events {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        read += 1;
        let Some(payload) = message.payload() else {
            continue;
        };
        let Ok(row) = serde_json::from_slice::<Keyed<'_>>(payload) else {
            continue;
        };
        let id = row.request_id.to_string();
        if message.topic() == log {
            log_max = log_max.max(row.ts);
            for (t, right) in rights.get(&id).into_iter().flatten() {
                if row.ts <= *t && *t <= row.ts + UPPER {
                    send(payload, right);
                }
            }
            lefts
                .entry(id.clone())
                .or_default()
                .push((row.ts, payload.to_vec()));
            expiries.push(Reverse((row.ts + UPPER, true, id)));
        } else {
            feedback_max = feedback_max.max(row.ts);
            for (t, left) in lefts.get(&id).into_iter().flatten() {
                if *t <= row.ts && row.ts <= *t + UPPER {
                    send(left, payload);
                }
            }
            rights
                .entry(id.clone())
                .or_default()
                .push((row.ts, payload.to_vec()));
            expiries.push(Reverse((row.ts, false, id)));
        }
        let watermark = log_max.min(feedback_max).saturating_sub(LATENESS);
        while let Some(Reverse((at, _, _))) = expiries.peek() {
            if *at >= watermark {
                break;
            }
            let Reverse((at, left, id)) = expiries.pop().expect("peeked");
            let side = if left { &mut lefts } else { &mut rights };
            if let Some(rows) = side.get_mut(&id) {
                let bound = if left { at - UPPER } else { at };
                rows.retain(|(t, _)| *t != bound);
                if rows.is_empty() {
                    side.remove(&id);
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;
    Ok((
        Figure {
            events: read,
            seconds: started.elapsed().as_secs_f64(),
            rss_mib: None,
        },
        joined,
    ))
}

/// Quix Streams on `events` records (both topics), timed as the Weir job
/// is: from its start to its exit. Returns its figure and joined rows.
async fn run_quix(
    bootstrap: &str,
    log: &str,
    feedback: &str,
    events: usize,
) -> anyhow::Result<(Figure, u64)> {
    let args = [bootstrap, log, feedback, &events.to_string()].map(String::from);
    let (report, seconds, rss_mib) = crate::run_anchor("quix_join.py", &args).await?;
    Ok((
        Figure {
            events: report["events"].as_u64().unwrap_or(0) as usize,
            seconds,
            rss_mib,
        },
        report["joined"].as_u64().unwrap_or(0),
    ))
}
