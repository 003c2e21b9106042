//! `weir bench hop`: one windowed aggregation three ways on the same topic.
//!
//! 1. **Weir**: `weir job run` in a child process (1 worker), reading the
//!    topic to its end and writing results to a topic; its peak RSS is read
//!    from `/proc`.
//! 2. **Hand loop** (the limit): one thread, rdkafka consumer, serde_json,
//!    a `HashMap` of (user, window) → (count, sum, max), results to a topic.
//! 3. **Quix Streams** (the anchor), `python/bench/quix_hop.py`, in the
//!    Python environment `cargo xtask bench` builds.
//!
//! Data as in `shared/anchors/gen_txn.py`: JSON transactions keyed by user,
//! event time advancing 10 ms per event, amounts exponential (mean 40).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use weir_bus::{Bus, BusConfig, OutRecord, TopicSpec};
use weir_core::Config;

use crate::spread::Spread;

#[derive(clap::Args)]
pub struct Args {
    /// Events in the topic.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Distinct users.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Events Quix Streams processes (it is slow: ~3k events/s here).
    #[arg(long)]
    quix_events: Option<usize>,
    /// Skip Quix Streams.
    #[arg(long)]
    no_quix: bool,
    /// Also run the query as a SQL feature view (stream), and as a batch
    /// over the same events in Parquet (DataFusion, and DuckDB when the
    /// Python environment has it).
    #[arg(long)]
    sql: bool,
    /// Rounds: each runs every side once, in turns (the Weir job, the SQL
    /// view with `--sql`, the hand loop, Quix Streams), so that a slow spell
    /// of the machine falls on all of them; every side is reported as the
    /// median of its rounds with the lowest and highest.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// The benchmark's query as a feature view.
fn sql_view(topic: &str) -> String {
    format!(
        "---\nname: bench_hop\nentity: [user_id]\ncheckpoint_interval: 1s\nsources:\n  events: {{ topic: \"{topic}\", event_time: ts, schema: {{ user_id: string, merchant_id: string, amount: double, ts: long }} }}\n---\n{SQL_QUERY}"
    )
}

const SQL_QUERY: &str = "SELECT user_id, count(*) AS count, avg(amount) AS avg_amount, max(amount) AS max_amount\nFROM events\nGROUP BY user_id, hop(ts, INTERVAL '5 minutes', INTERVAL '1 hour')\n";

const HOUR: i64 = 3_600_000;
const SLIDE: i64 = 300_000;
const T0: i64 = 1_700_000_000_000;

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let (bootstrap, broker) = crate::broker(config).await?;
    let bus = Bus::connect(BusConfig::configured(bootstrap.clone(), config)).await?;
    let topic = format!("bench.hop.{}", std::process::id());
    bus.admin().create_topic(&TopicSpec::new(&topic, 1)).await?;
    println!(
        "weir bench hop: {} JSON events, {} users, 10 ms apart; hopping window 1 h every 5 min; count, avg, max of amount per user",
        args.events, args.users
    );
    let started = Instant::now();
    load(&bus, &topic, args.events, args.users).await?;
    println!(
        "loaded the topic in {:.1} s ({} on 1 partition)\n",
        started.elapsed().as_secs_f64(),
        if broker.is_some() {
            "embedded broker, memory storage, in this process"
        } else {
            "the configured Kafka"
        }
    );

    // The hand loop's producer does not create its topic.
    bus.admin()
        .create_topic(&TopicSpec::new(format!("{topic}-hand"), 1))
        .await?;
    let mut rounds = Vec::new();
    for number in 1..=args.rounds.max(1) {
        let round = Round {
            weir: run_weir(config, &bootstrap, &topic).await?,
            sql: match args.sql {
                true => Some(run_sql(config, &bootstrap, &topic).await?),
                false => None,
            },
            hand: {
                let (bootstrap, topic, events) = (bootstrap.clone(), topic.clone(), args.events);
                tokio::task::spawn_blocking(move || hand_loop(&bootstrap, &topic, events)).await??
            },
            quix: match args.no_quix {
                true => None,
                false => {
                    let events = args.quix_events.unwrap_or(args.events);
                    Some(run_quix(&bootstrap, &topic, events).await?)
                }
            },
        };
        println!("round {number}: {}", round.describe());
        rounds.push(round);
    }
    println!();
    report(&rounds);
    if args.sql {
        batch(&bus, &topic).await?;
    }
    drop(bus);
    if let Some(broker) = broker {
        crate::stop_broker(broker).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// One round: every side once.
struct Round {
    weir: Figure,
    sql: Option<Figure>,
    hand: Figure,
    quix: Option<Figure>,
}

impl Round {
    fn sides(&self) -> Vec<(&'static str, &Figure)> {
        let mut sides = vec![("weir job (1 worker, child process)", &self.weir)];
        if let Some(sql) = &self.sql {
            sides.push(("weir SQL view (1 worker, child process)", sql));
        }
        sides.push(("hand loop (1 thread, HashMap, in process)", &self.hand));
        if let Some(quix) = &self.quix {
            sides.push(("quix streams (.final(), child process)", quix));
        }
        sides
    }

    fn describe(&self) -> String {
        self.sides()
            .iter()
            .map(|(name, figure)| {
                let name = name.split(" (").next().unwrap_or(name);
                format!("{name} {:.0} events/s", figure.events_per_second())
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Each side's median over the rounds with its lowest and highest, and
/// the ratios taken round by round.
fn report(rounds: &[Round]) {
    println!(
        "{} round(s); each figure: median [lowest–highest]\n{:<44} {:>28} {:>18} {:>22}",
        rounds.len(),
        "",
        "events/s",
        "peak RSS MiB",
        "vs hand loop"
    );
    let spread = |precision: usize, figure: &dyn Fn(&Round) -> Option<f64>| {
        Spread::of(rounds.iter().filter_map(figure))
            .map_or("-".to_string(), |s| format!("{s:.precision$}"))
    };
    for (i, (name, _)) in rounds[0].sides().iter().enumerate() {
        let side = |round: &Round| round.sides()[i].1.events_per_second();
        println!(
            "{name:<44} {:>28} {:>18} {:>22}",
            spread(0, &|r| Some(side(r))),
            spread(0, &|r| r.sides()[i].1.rss_mib),
            spread(2, &|r| Some(side(r) / r.hand.events_per_second())),
        );
    }
    let ratio = |name: &str, target: &str, figure: &dyn Fn(&Round) -> Option<f64>| {
        if let Some(spread) = Spread::of(rounds.iter().filter_map(figure)) {
            println!("{name}: {spread:.2}  ({target})");
        }
    };
    let rate = |f: &Figure| f.events_per_second();
    println!();
    ratio("weir / quix streams", "target >= 20x per core", &|r| {
        Some(rate(&r.weir) / rate(r.quix.as_ref()?))
    });
    ratio("weir / hand loop", "target >= 0.5", &|r| {
        Some(rate(&r.weir) / rate(&r.hand))
    });
    ratio("weir SQL view / weir job", "target >= 0.9", &|r| {
        Some(rate(r.sql.as_ref()?) / rate(&r.weir))
    });
    ratio(
        "weir SQL view / quix streams",
        "target >= 20x per core",
        &|r| Some(rate(r.sql.as_ref()?) / rate(r.quix.as_ref()?)),
    );
    println!(
        "Ratios are taken round by round. The machine's cores are shared by the broker, the job and librdkafka's threads; \
         the Weir and Quix processes are timed from their start to their exit, the hand loop from its first read."
    );
}

pub(crate) struct Figure {
    pub(crate) events: usize,
    pub(crate) seconds: f64,
    pub(crate) rss_mib: Option<f64>,
}

impl Figure {
    pub(crate) fn events_per_second(&self) -> f64 {
        self.events as f64 / self.seconds
    }
}

async fn load(bus: &Bus, topic: &str, events: usize, users: usize) -> anyhow::Result<()> {
    let producer = bus.producer()?;
    let mut rng = StdRng::seed_from_u64(7);
    let mut pending = std::collections::VecDeque::new();
    for i in 0..events {
        let user = format!("u{}", rng.random_range(0..users));
        // Exponential with mean 40, two decimals.
        let amount = (-(1.0 - rng.random::<f64>()).ln() * 40.0 * 100.0).round() / 100.0;
        let value = format!(
            "{{\"user_id\":\"{user}\",\"merchant_id\":\"m{}\",\"amount\":{amount},\"ts\":{}}}",
            rng.random_range(0..500),
            T0 + i as i64 * 10
        );
        pending.push_back(
            producer
                .send(OutRecord::new(topic, value.as_bytes()).key(user.as_bytes()))
                .await?,
        );
        if pending.len() > 100_000 {
            pending.pop_front().expect("non-empty").await?;
        }
    }
    for delivery in pending {
        delivery.await?;
    }
    Ok(())
}

/// Peak RSS of a running process so far, from `/proc`.
pub(super) fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Waits for a child, sampling its peak RSS until it exits.
async fn wait_sampling(
    mut child: tokio::process::Child,
) -> anyhow::Result<(std::process::ExitStatus, Option<f64>)> {
    let pid = child.id().context("the child has no pid")?;
    let mut peak = None;
    loop {
        if let Some(rss) = peak_rss_mib(pid) {
            peak = Some(rss);
        }
        tokio::select! {
            status = child.wait() => return Ok((status?, peak)),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

async fn run_weir(config: &Config, bootstrap: &str, topic: &str) -> anyhow::Result<Figure> {
    let dir = tempdir()?;
    let job = dir.join("hop.toml");
    std::fs::write(
        &job,
        format!(
            r#"name = "bench-hop"
checkpoint_interval = "1s"

[source]
topic = "{topic}"
event_time = "ts"
bounded = true
schema = {{ user_id = "string", merchant_id = "string", amount = "double", ts = "long" }}

[aggregate]
keys = ["user_id"]
window = {{ hop = {{ size = "1h", slide = "5m" }} }}
aggregates = {{ count = "count(*)", avg_amount = "avg(amount)", max_amount = "max(amount)" }}

[sink]
topic = "{topic}-weir"
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
    run_child(config, bootstrap, topic, &args, &dir).await
}

/// Runs `weir ARGS` in a child process on the benchmark's broker, with its
/// state in `dir`; the figure is the topic's records over the child's time.
pub(crate) async fn run_child(
    config: &Config,
    bootstrap: &str,
    topic: &str,
    args: &[std::ffi::OsString],
    dir: &std::path::Path,
) -> anyhow::Result<Figure> {
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let child = tokio::process::Command::new(exe)
        .args(args)
        .env("WEIR_BROKERS", bootstrap)
        .env("WEIR_STATE_DIR", dir)
        .env("WEIR_MAX_RECORD_BYTES", config.max_record_bytes.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let (status, rss) = wait_sampling(child).await?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!(
            "`weir {}` failed ({status})",
            args.first()
                .map_or(String::new(), |a| a.to_string_lossy().into_owned())
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(Figure {
        events: count_records(bootstrap, topic)?,
        seconds,
        rss_mib: rss,
    })
}

/// The same query as a SQL feature view, applied and run to the end in a
/// child process (`weir features apply --until-end`).
async fn run_sql(config: &Config, bootstrap: &str, topic: &str) -> anyhow::Result<Figure> {
    let dir = tempdir()?.join("sql");
    std::fs::create_dir_all(&dir)?;
    let view = dir.join("bench_hop.sql");
    std::fs::write(&view, sql_view(topic))?;
    let args = [
        "features".into(),
        "apply".into(),
        view.into_os_string(),
        "--until-end".into(),
        "--status-every".into(),
        "1h".into(),
    ];
    run_child(config, bootstrap, topic, &args, &dir).await
}

/// The query as a batch over the events in Parquet: DataFusion (Weir's
/// batch path) and, when the Python environment has it, DuckDB.
async fn batch(bus: &Bus, topic: &str) -> anyhow::Result<()> {
    let view = weir_sql::ViewFile::parse("bench_hop.sql", &sql_view(topic))?;
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("user_id", arrow::datatypes::DataType::Utf8, true),
        arrow::datatypes::Field::new("merchant_id", arrow::datatypes::DataType::Utf8, true),
        arrow::datatypes::Field::new("amount", arrow::datatypes::DataType::Float64, true),
        arrow::datatypes::Field::new("ts", arrow::datatypes::DataType::Int64, true),
    ]));
    let rows = weir_sql::batch::read_topic(bus, topic, schema.clone()).await?;
    let dir = tempdir()?;
    let parquet = dir.join("events.parquet");
    let events = weir_sql::batch::write_parquet(&parquet, &schema, &rows.batches)?;
    drop(rows);
    let registry = weir_sql::registry::Registry::default();
    let catalog = weir_sql::registry::BusCatalog::new(bus, &registry).await?;
    let plan = weir_sql::plan_view(
        &view,
        &catalog,
        &weir_sql::plan::PlanOptions {
            topic: format!("{topic}-batch"),
            job: "bench-hop-batch".into(),
            state_dir: dir.clone(),
        },
    )?;
    let started = Instant::now();
    let file = std::fs::File::open(&parquet)?;
    let input: Vec<arrow::array::RecordBatch> =
        datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?
            .build()?
            .collect::<Result<_, _>>()?;
    let inputs = weir_sql::batch::Inputs {
        source: input,
        ..Default::default()
    };
    let results = weir_sql::batch::run(&plan, inputs).await?;
    let seconds = started.elapsed().as_secs_f64();
    let windows: usize = results.iter().map(|b| b.num_rows()).sum();
    println!(
        "\nbatch, the same query over {events} events in Parquet:\n{:<34} {:>8.2} s {:>12.0} events/s  ({windows} windows)",
        "weir batch (DataFusion, 2 cores)",
        seconds,
        events as f64 / seconds
    );
    if let Some(python) = std::env::var_os("WEIR_PYTHON") {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../python/bench/duckdb_hop.py");
        let output = tokio::process::Command::new(python)
            .arg(&script)
            .arg(&parquet)
            .output()
            .await?;
        match String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        {
            Some(report) => {
                let seconds = report["seconds"].as_f64().unwrap_or(f64::NAN);
                println!(
                    "{:<34} {:>8.2} s {:>12.0} events/s  ({} windows)",
                    "duckdb (python, 2 threads)",
                    seconds,
                    events as f64 / seconds,
                    report["windows"]
                );
            }
            None => println!(
                "duckdb: not run ({})",
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .last()
                    .unwrap_or("no output")
            ),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

pub(crate) fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("weir-bench-hop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub(crate) fn count_records(bootstrap: &str, topic: &str) -> anyhow::Result<usize> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let (low, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10))?;
    Ok((high - low) as usize)
}

#[derive(Deserialize)]
struct Transaction<'a> {
    #[serde(borrow)]
    user_id: std::borrow::Cow<'a, str>,
    amount: f64,
    ts: i64,
}

/// The limit: one thread, no framework.
fn hand_loop(bootstrap: &str, topic: &str, events: usize) -> anyhow::Result<Figure> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-hand-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        // As every Weir consumer has it (weir_bus::consumer_config): no
        // 1 s pause each time the prefetch queue fills.
        .set("fetch.queue.backoff.ms", "10")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .create()?;
    let out = format!("{topic}-hand");
    let started = Instant::now();
    // (user, window start) -> (count, sum, max)
    let mut windows: HashMap<(String, i64), (u64, f64, f64)> = HashMap::new();
    let mut watermark = i64::MIN;
    let mut next_close = i64::MIN;
    let mut read = 0;
    let emit = |windows: &mut HashMap<(String, i64), (u64, f64, f64)>,
                up_to: i64|
     -> anyhow::Result<()> {
        let closed: Vec<(String, i64)> = windows
            .keys()
            .filter(|(_, s)| s + HOUR <= up_to)
            .cloned()
            .collect();
        for key in closed {
            let (count, sum, max) = windows.remove(&key).expect("present");
            let value = format!(
                "{{\"user_id\":\"{}\",\"window_start\":{},\"count\":{count},\"avg_amount\":{},\"max_amount\":{max}}}",
                key.0,
                key.1,
                sum / count as f64
            );
            let record_key = format!("{}|{}", key.0, key.1);
            let mut record = BaseRecord::to(&out).key(&record_key).payload(&value);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
        Ok(())
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
        let Ok(event) = serde_json::from_slice::<Transaction<'_>>(payload) else {
            continue;
        };
        let last = event.ts - event.ts.rem_euclid(SLIDE);
        let mut start = last;
        while start + HOUR > event.ts {
            let entry = windows
                .entry((event.user_id.to_string(), start))
                .or_insert((0, 0.0, f64::MIN));
            entry.0 += 1;
            entry.1 += event.amount;
            entry.2 = entry.2.max(event.amount);
            start -= SLIDE;
        }
        watermark = watermark.max(event.ts);
        if watermark >= next_close {
            emit(&mut windows, watermark)?;
            next_close = watermark - watermark.rem_euclid(SLIDE) + SLIDE;
        }
    }
    emit(&mut windows, i64::MAX)?;
    producer.flush(Duration::from_secs(60))?;
    Ok(Figure {
        events: read,
        seconds: started.elapsed().as_secs_f64(),
        rss_mib: None,
    })
}

/// Quix Streams on `events` events in a child process, timed as the Weir
/// job is: from its start to its exit.
async fn run_quix(bootstrap: &str, topic: &str, events: usize) -> anyhow::Result<Figure> {
    let args = [bootstrap, topic, &events.to_string(), "final"].map(String::from);
    let (report, seconds, rss_mib) = crate::run_anchor("quix_hop.py", &args).await?;
    Ok(Figure {
        events: report["events"].as_u64().unwrap_or(0) as usize,
        seconds,
        rss_mib,
    })
}
