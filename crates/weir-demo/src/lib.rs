//! `weir demo`: the end-to-end loop, stage by stage, one per component,
//! on whatever Kafka the `weir` binary connected to (its embedded broker by
//! default). A program rather than a library: it prints as it goes and
//! fails with `anyhow` errors, and the binary only connects and calls
//! [`run`].
//!
//! Stage 1 (the bus): a stream of card transactions, with malformed records
//! mixed in as a buggy producer would send them, is published to
//! `transactions` in Avro, read back by a consumer group, and the bad
//! records end up in `weir.dlq.transactions` with their reasons.
//!
//! Stage 2 (features in SQL, on the dataflow runtime): the feature views of
//! `topologies/features/` — spend per user over the last hour every five
//! minutes, and card sessions per user — are applied (versioned in
//! `weir.meta`), run as streaming jobs over `transactions` with their state
//! in RocksDB and exactly-once checkpoints, and the stream's results are
//! compared with the same SQL run by DataFusion as a batch over the topic's
//! history: identical.
//!
//! Stage 3 (the feature repository): the views' topics are read into the
//! online store (RocksDB) and a few users' latest features looked up; one
//! transaction in ten becomes a labelled row, and a point-in-time-correct
//! training snapshot joins each with the features known at its time.
//!
//! Stage 4 (metadata): the snapshot job is recorded as a run on
//! `weir.meta` — the dataset it made, its params and metrics — and the
//! lineage from the `transactions` topic through the feature views and the
//! dataset to the run is printed.
//!
//! Stage 5 (training and evaluation): a LightGBM model trained on the
//! snapshot (split by time), its ONNX export checked through ONNX Runtime
//! and registered as a version of `demo-large`; evaluated on the rows its
//! training held out (the latest fifth) against the current champion, and
//! promoted if the gate passes.
//!
//! Stage 6 (serving): `topologies/deployments/demo-large.yaml` serves the
//! champion over the Open Inference Protocol (HTTP) and a Kafka stream; a
//! request carries only a user id, the features are looked up in the
//! online store; every request and response is logged to
//! `weir.log.demo-large` in Avro.
//!
//! Stage 7 (online experimentation): a challenger is trained and
//! registered as `demo-large@challenger`; the A/B test of
//! `topologies/experiments/demo-ab.yaml` splits the users between it and
//! the champion, sticky by user, while the deployment serves; simulated
//! feedback (conversions) is posted to the deployment; the experiment's
//! analysis job compares the challenger with the champion on the log met
//! with the feedback (an always-valid sequential test), and a challenger
//! shown better is promoted: the alias moves, the experiment stops.
//!
//! Stage 8 (bandit): `topologies/experiments/demo-bandit.yaml` puts the new
//! champion against the version before it; the allocator job runs in the
//! background while rounds of requests are served and their simulated
//! conversions posted, and the weights it publishes to
//! `weir.control.demo-large`, which serving follows, move the traffic to
//! the better model; then the experiment stops.
//!
//! Each later component adds its stage here. Safe to run twice: the topic
//! and schema are reused, the consumer group resumes at its committed
//! offsets, so each run reads (and dead-letters) only its own records, an
//! unchanged view keeps its version, and the views recompute their windows
//! over the whole topic.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value as Json, json};
use weir_bus::dead_letter::{self, describe};
use weir_bus::{Bus, ConsumerOptions, OutRecord, SchemaType, StartFrom, TopicSpec};
use weir_core::{Config, topics};

/// The demo's event schema (also in `schemas/`).
pub const CARD_TRANSACTION_SCHEMA: &str = include_str!("../../../schemas/card_transaction.avsc");
const TOPIC: &str = "transactions";
const GROUP: &str = "weir-demo";

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Card transactions to publish.
    pub events: usize,
    /// Seed of the synthetic data.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            events: 20_000,
            seed: 7,
        }
    }
}

/// Connects to the Kafka `config` names (the embedded broker by default)
/// and runs the demo on it.
pub async fn run_connected(config: &Config, options: &Options) -> anyhow::Result<()> {
    println!("weir demo: the end-to-end loop\n");
    let connection = weir_broker::connect::connect(config).await?;
    println!("Kafka: {}\n", connection.description);
    let result = run(&connection.bus, config, options).await;
    connection.close().await;
    result
}

/// Runs the demo's stages on `bus`, its state under `config`'s state
/// directory, printing as it goes.
pub async fn run(bus: &Bus, config: &Config, options: &Options) -> anyhow::Result<()> {
    bus_stage(bus, options, config).await?;
    features_stage(bus, config).await?;
    let snapshot = repository_stage(bus, config).await?;
    let dataset = snapshot.dataset.reference().to_string();
    metadata_stage(bus, config, snapshot).await?;
    training_stage(bus, config, &dataset).await?;
    serving_stage(bus, config).await?;
    experiment_stage(bus, config, &dataset).await?;
    bandit_stage(bus, config).await?;
    println!(
        "\nNext: `weir tail {TOPIC} -n 3`, `weir tail {} --from-beginning`, `weir features get user_spend u0000`,\n      `weir features serve` (HTTP look-ups), `weir sql \"SELECT * FROM user_spend LIMIT 5\"`,\n      `weir runs list demo`, `weir lineage dataset:demo-training@1`, `weir server` (for the mlflow client),\n      `weir models show demo-large`, `weir evaluate demo-large@1` (on the rows its training held out),\n      `weir serve demo-large`, `weir tail {} -n 1`, `weir lineage deployment:demo-large`,\n      `weir traffic describe demo-ab`, `weir tail weir.feedback.demo-large -n 3`,\n      `weir traffic describe demo-bandit`, `weir tail weir.control.demo-large --from-beginning`",
        topics::dlq(TOPIC),
        topics::log("demo-large")
    );
    Ok(())
}

async fn bus_stage(bus: &Bus, args: &Options, config: &Config) -> anyhow::Result<()> {
    println!("[1] bus: publish events, read them back, dead-letter the bad ones");
    bus.admin()
        .ensure_topic(&TopicSpec::new(TOPIC, 3))
        .await
        .context("creating the demo topic")?;
    let registered = bus
        .registry()
        .register(
            &topics::value_subject(TOPIC),
            SchemaType::Avro,
            CARD_TRANSACTION_SCHEMA,
        )
        .await?;
    println!(
        "    topic `{TOPIC}` (3 partitions), schema `{}` v{} (id {})",
        topics::value_subject(TOPIC),
        registered.version,
        registered.schema.id
    );

    // Publish: good records through the codec, bad ones as raw bytes, the
    // way a misbehaving producer would write them.
    let publisher = bus.publisher(TOPIC)?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    // Event time goes on from where the last run's events ended, so that a
    // run soon after another does not publish events older than those
    // already in the topic (they would be late for the stream jobs).
    let clock = config.state_dir.join("demo-clock");
    let last_end: i64 = std::fs::read_to_string(&clock)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(i64::MIN);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let start_time = (now - args.events as i64 * 25).max(last_end.saturating_add(1_000));
    std::fs::create_dir_all(&config.state_dir)?;
    std::fs::write(&clock, (start_time + args.events as i64 * 25).to_string())?;
    let malformed = malformed_records(registered.schema.id);
    let mut bad_at: BTreeMap<usize, usize> = BTreeMap::new();
    for index in 0..malformed.len() {
        bad_at.insert(rng.random_range(0..args.events.max(1)), index);
    }
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(args.events);
    for i in 0..args.events {
        let event = transaction(&mut rng, i, start_time);
        let key = event["user_id"].as_str().expect("user_id").to_string();
        let bytes = publisher.encode(&event)?;
        deliveries.push(publisher.send(Some(key.as_bytes()), &bytes).await?);
        if let Some(&index) = bad_at.get(&i) {
            let (_, payload) = &malformed[index];
            let record = OutRecord::new(TOPIC, payload).key(b"bad-producer");
            deliveries.push(publisher.producer().send(record).await?);
        }
    }
    let sent = deliveries.len();
    for delivery in deliveries {
        delivery.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "    published {} transactions + {} malformed records in {seconds:.2} s ({:.0} records/s)",
        args.events,
        bad_at.len(),
        sent as f64 / seconds
    );

    // Read back as consumer group `weir-demo`: a pipeline stage that keeps going.
    let started = Instant::now();
    let mut consumer = bus.consumer(
        &[TOPIC],
        ConsumerOptions {
            group: Some(GROUP.into()),
            start: StartFrom::Committed,
            until_end: true,
            read_only: false,
            ..Default::default()
        },
    )?;
    let mut per_partition: BTreeMap<i32, u64> = BTreeMap::new();
    let mut spend: HashMap<String, f64> = HashMap::new();
    let mut good = 0_u64;
    while let Some(record) = consumer.next().await? {
        good += 1;
        *per_partition.entry(record.partition).or_default() += 1;
        let value = record.value.to_json();
        if let (Some(user), Some(amount)) = (value["user_id"].as_str(), value["amount"].as_f64()) {
            *spend.entry(user.to_string()).or_default() += amount;
        }
    }
    consumer.commit().await?;
    let dead = consumer.dead_letters();
    println!(
        "    read back {good} records in {:.2} s as group `{GROUP}`; {} dead letters",
        started.elapsed().as_secs_f64(),
        dead.total()
    );
    let partitions: Vec<String> = per_partition
        .iter()
        .map(|(p, n)| format!("p{p}: {n}"))
        .collect();
    println!("    per partition: {}", partitions.join(", "));
    let reasons: Vec<String> = dead
        .by_reason()
        .iter()
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    println!("    dead letters by reason: {}", reasons.join(", "));
    let mut top: Vec<(String, f64)> = spend.into_iter().collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top: Vec<String> = top
        .iter()
        .take(3)
        .map(|(user, total)| format!("{user} {total:.2}"))
        .collect();
    println!("    top spenders: {}", top.join(", "));

    show_dead_letters(bus, dead.total() as i64).await
}

/// The demo's feature views (also in `topologies/features/`).
const VIEWS: [(&str, &str); 2] = [
    (
        "topologies/features/user_spend.sql",
        include_str!("../../../topologies/features/user_spend.sql"),
    ),
    (
        "topologies/features/user_sessions.sql",
        include_str!("../../../topologies/features/user_sessions.sql"),
    ),
];

async fn features_stage(bus: &Bus, config: &Config) -> anyhow::Result<()> {
    println!(
        "\n[2] features in SQL: views applied, run as streams (RocksDB state, exactly-once), checked against a batch"
    );
    let views = VIEWS
        .iter()
        .map(|(path, text)| weir_sql::ViewFile::parse(path, text))
        .collect::<Result<Vec<_>, _>>()?;
    let known = weir_sql::registry::Registry::load(bus).await?;
    let state = config.state_dir.join("jobs");
    let applied = weir_sql::registry::apply(bus, &known, &views, &state).await?;
    let started = Instant::now();
    let mut jobs = Vec::new();
    for a in &applied {
        println!(
            "    {} v{} {} → `{}` ({})",
            a.version.name,
            a.version.version,
            if a.recorded { "recorded" } else { "unchanged" },
            a.version.topic,
            a.version.header.description
        );
        // The demo recomputes its features over the whole topic each run,
        // so that the stream can be compared with the batch.
        let _ = std::fs::remove_dir_all(state.join(&a.version.job));
        let mut pipeline = a.plan.pipeline.clone();
        pipeline.set_bounded(true);
        jobs.push(
            weir_dataflow::job::run(pipeline, bus, weir_dataflow::job::Cluster::local(2)).await?,
        );
    }
    let mut records = 0;
    for (a, job) in applied.iter().zip(jobs) {
        let status = tokio::task::spawn_blocking(move || job.join()).await??;
        records = records.max(status.records_in);
        println!(
            "    {}: {} rows to `{}`, {} late",
            a.version.name, status.records_out, a.version.topic, status.late
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "    {} views over {records} records in {seconds:.2} s (2 workers each)",
        applied.len()
    );
    let spend = applied
        .iter()
        .find(|a| a.version.name == "user_spend")
        .context("the user_spend view")?;
    let comparison = weir_sql::batch::check(bus, &spend.plan, &spend.version.header.entity).await?;
    println!(
        "    stream = batch for user_spend: {} ({} rows from the stream, {} from DataFusion over the topic's history)",
        if comparison.identical() {
            "identical"
        } else {
            "DIFFERENT"
        },
        comparison.stream_rows,
        comparison.batch_rows
    );
    if !comparison.identical() {
        anyhow::bail!("the stream and the batch differ: {comparison:?}");
    }
    // The busiest hour: the largest count among the results.
    let mut reader = bus.consumer(
        &[&spend.version.topic],
        ConsumerOptions {
            start: StartFrom::Beginning,
            until_end: true,
            read_only: true,
            ..Default::default()
        },
    )?;
    let mut best: Option<Json> = None;
    while let Some(record) = reader.next().await? {
        let value = record.value.to_json();
        if best
            .as_ref()
            .is_none_or(|b| value["n"].as_i64() > b["n"].as_i64())
        {
            best = Some(value);
        }
    }
    if let Some(best) = best {
        println!(
            "    busiest user-hour: {} from {} — {} payments, {:.2} in all, at {} merchants",
            best["user_id"].as_str().unwrap_or("?"),
            best["window_start"].as_str().unwrap_or("?"),
            best["n"],
            best["total"].as_f64().unwrap_or(0.0),
            best["merchants"]
        );
    }
    Ok(())
}

/// What stage 3 made: the snapshot dataset, its rows, how long it took.
struct Snapshot {
    dataset: weir_features::datasets::DatasetVersion,
    rows: u64,
    started_ms: i64,
    seconds: f64,
}

async fn repository_stage(bus: &Bus, config: &Config) -> anyhow::Result<Snapshot> {
    println!(
        "\n[3] feature repository: online look-ups from RocksDB, a point-in-time training snapshot"
    );
    let started = Instant::now();
    let (online, _) =
        weir_features::follow::Online::catch_up(bus, None, &config.state_dir.join("online"))
            .await?;
    println!(
        "    online store: {} views read from their topics into {} in {:.2} s",
        online.views.len(),
        config.state_dir.join("online").display(),
        started.elapsed().as_secs_f64()
    );
    let spend = online.view("user_spend").context("the user_spend view")?;
    let users = ["u0000", "u0001", "u0002", "nobody"];
    let keys: Vec<Vec<String>> = users.iter().map(|u| vec![u.to_string()]).collect();
    let features = ["n".to_string(), "total".to_string()];
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let started = Instant::now();
    let found = online.store.get(spend, &keys, &features, now)?;
    let took = started.elapsed();
    for (user, found) in users.iter().zip(&found) {
        println!(
            "    user_spend[{user}]: n = {}, total = {} ({}{})",
            found.values[0],
            found.values[1]
                .as_f64()
                .map_or("null".into(), |t| format!("{t:.2}")),
            json!(found.status).as_str().unwrap_or("?"),
            found
                .event_time
                .map(|t| format!(
                    ", the hour ending {}",
                    weir_features::online::rfc3339(Some(t))
                ))
                .unwrap_or_default()
        );
    }
    println!(
        "    ({} look-ups in {} µs, in process; `weir features serve` answers the same over HTTP, Feast's route too)",
        users.len(),
        took.as_micros()
    );

    // Labels: one transaction in ten, labelled "large" (over 200), at its
    // own time — a model would predict it from the features known then.
    // (The malformed records were dead-lettered in stage 1; the decoder
    // leaves them out.)
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("user_id", arrow::datatypes::DataType::Utf8, true),
        arrow::datatypes::Field::new("amount", arrow::datatypes::DataType::Float64, true),
        arrow::datatypes::Field::new("event_time", arrow::datatypes::DataType::Int64, true),
    ]));
    let transactions = weir_sql::batch::read_topic(bus, TOPIC, schema).await?;
    let dir = config.state_dir.join("demo");
    std::fs::create_dir_all(&dir)?;
    let labels = dir.join("labels.csv");
    let mut csv = String::from("user_id,event_timestamp,large\n");
    let mut index = 0_usize;
    for batch in &transactions.batches {
        let users = arrow::array::cast::as_string_array(batch.column(0));
        let amounts = arrow::array::cast::as_primitive_array::<arrow::datatypes::Float64Type>(
            batch.column(1),
        );
        let times =
            arrow::array::cast::as_primitive_array::<arrow::datatypes::Int64Type>(batch.column(2));
        for row in 0..batch.num_rows() {
            index += 1;
            if index.is_multiple_of(10) {
                csv.push_str(&format!(
                    "{},{},{}\n",
                    users.value(row),
                    times.value(row),
                    u8::from(amounts.value(row) > 200.0)
                ));
            }
        }
    }
    std::fs::write(&labels, csv)?;
    let started = Instant::now();
    let started_ms = weir_core::now_ms();
    let views = vec![
        weir_catalog::Reference::latest("user_spend"),
        weir_catalog::Reference::latest("user_sessions"),
    ];
    let request = weir_features::take::SnapshotRequest {
        full_feature_names: true,
        memory: 256 << 20,
        ..weir_features::take::SnapshotRequest::new(
            labels.clone(),
            views,
            Some("demo-training".into()),
            None,
            &config.state_dir,
        )?
    };
    let out = request.out.clone();
    let (stats, dataset) = weir_features::take::take_snapshot(bus, &request).await?;
    let seconds = started.elapsed().as_secs_f64();
    let mut with_spend = 0;
    let file = std::fs::File::open(&out)?;
    for batch in
        datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?
            .build()?
    {
        let batch = batch?;
        let column = batch
            .column_by_name("user_spend__n")
            .context("the snapshot's user_spend__n")?;
        with_spend += column.len() - column.null_count();
    }
    println!(
        "    snapshot: {} labelled transactions × {} features → {} in {seconds:.2} s",
        stats.rows,
        stats.columns.len() - 3,
        out.display()
    );
    println!(
        "    registered as dataset {} v{}, with its lineage: {}",
        dataset.name,
        dataset.version,
        dataset
            .lineage
            .views
            .iter()
            .map(|v| format!("{} v{} up to offsets {:?}", v.name, v.version, v.offsets))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "    {with_spend} rows have a user_spend value (a window that ended by their time); the rest came before any did: nulls, nothing from the future"
    );
    Ok(Snapshot {
        rows: stats.rows as u64,
        dataset,
        started_ms,
        seconds,
    })
}

/// Stage 4: the snapshot job recorded as a run on `weir.meta` (what it
/// read, its params and metrics), and the lineage from topic to run.
async fn metadata_stage(bus: &Bus, config: &Config, snapshot: Snapshot) -> anyhow::Result<()> {
    use weir_meta::event::{KeyValue, Metric};
    println!("\n[4] metadata: the snapshot recorded as a run (experiment `demo`), and its lineage");
    let tracker = weir_meta::Tracker::open_under(bus, &config.state_dir).await?;
    let dataset = format!("{}@{}", snapshot.dataset.name, snapshot.dataset.version);
    let ended = snapshot.started_ms + (snapshot.seconds * 1000.0) as i64;
    let param = |key: &str, value: String| KeyValue {
        key: key.into(),
        value,
    };
    let metric = |key: &str, value: f64| Metric {
        key: key.into(),
        value,
        timestamp: ended,
        step: 0,
    };
    let (run_id, _) = tracker
        .record_run(weir_meta::tracker::RunReport {
            experiment: "demo".into(),
            run_name: "demo-snapshot".into(),
            start_time: snapshot.started_ms,
            end_time: ended,
            params: vec![
                param("views", "user_spend,user_sessions".into()),
                param("dataset", dataset.clone()),
            ],
            metrics: vec![
                metric("rows", snapshot.rows as f64),
                metric("seconds", snapshot.seconds),
                metric("rows_per_second", snapshot.rows as f64 / snapshot.seconds),
            ],
            tags: vec![],
            datasets: vec![(dataset, snapshot.dataset.hash.clone(), "training".into())],
            ..Default::default()
        })
        .await?;
    println!("    run {run_id}: params views, dataset; metrics rows, seconds, rows_per_second");
    let lineage = tracker.read(|state| {
        weir_meta::lineage::render(
            state,
            &weir_meta::lineage::Node::Run(run_id.clone()),
            "text",
        )
    })?;
    tracker.close().await;
    for line in lineage.lines() {
        println!("    {line}");
    }
    println!(
        "    (`weir server` serves the same to the mlflow client: `mlflow.search_runs(experiment_names=[\"demo\"])`)"
    );
    Ok(())
}

/// Prints the dead letters of this run (the last ones of the topic).
async fn show_dead_letters(bus: &Bus, count: i64) -> anyhow::Result<()> {
    let dlq = topics::dlq(TOPIC);
    if count == 0 {
        return Ok(());
    }
    let (low, high) = bus.admin().watermarks(&dlq, 0).await?;
    let mut reader = bus.consumer(
        &[&dlq],
        ConsumerOptions {
            start: StartFrom::Offsets(vec![(dlq.clone(), 0, (high - count).max(low))]),
            until_end: true,
            read_only: true,
            ..Default::default()
        },
    )?;
    println!("    `{dlq}` holds {} record(s); this run's:", high - low);
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Some(letter) = reader.next_raw().await? {
        let headers: BTreeMap<String, String> = describe(&letter.headers).into_iter().collect();
        let get = |name: &str| headers.get(name).map_or("", String::as_str);
        let field = match get(dead_letter::FIELD) {
            "" => String::new(),
            field => format!(" field `{field}`"),
        };
        println!(
            "      {}/{}@{}: {}{field}: {}",
            get(dead_letter::TOPIC),
            get(dead_letter::PARTITION),
            get(dead_letter::OFFSET),
            get(dead_letter::REASON),
            get(dead_letter::ERROR)
        );
        if Instant::now() > deadline {
            break;
        }
    }
    Ok(())
}

/// One synthetic card transaction: a few heavy users, skewed amounts (each
/// user spends on a scale of their own, so their history says something
/// about their next purchase), event times slightly out of order (as they
/// arrive from many terminals).
pub fn transaction(rng: &mut StdRng, index: usize, start_time: i64) -> Json {
    let user = (rng.random::<f64>().powi(2) * 1000.0) as u32;
    let merchant = rng.random_range(0..200);
    let scale = 0.2 + 1.6 * f64::from(user.wrapping_mul(7919) % 100) / 100.0;
    let amount = (rng.random::<f64>().powi(3) * 500.0 * scale + 1.0) * 100.0;
    let jitter = rng.random_range(0..2_000);
    json!({
        "transaction_id": format!("t{index:08}"),
        "user_id": format!("u{user:04}"),
        "merchant_id": format!("m{merchant:03}"),
        "amount": amount.round() / 100.0,
        "currency": "EUR",
        "event_time": start_time + index as i64 * 25 - jitter,
    })
}

/// Records a buggy producer might send, each with the reason it must fail.
fn malformed_records(schema_id: u32) -> Vec<(&'static str, Vec<u8>)> {
    let mut unknown_id = vec![0];
    unknown_id.extend_from_slice(&(schema_id + 10_000).to_be_bytes());
    unknown_id.extend_from_slice(b"\x02x");
    let mut truncated = vec![0];
    truncated.extend_from_slice(&schema_id.to_be_bytes());
    truncated.extend_from_slice(b"\x10t000");
    let mut records = Vec::new();
    for _ in 0..3 {
        records.push((
            "bad-json",
            br#"{"transaction_id": "x", "amount": 12.5"#.to_vec(),
        ));
        records.push((
            "missing-field",
            br#"{"transaction_id": "x", "user_id": "u1", "amount": 3.0, "event_time": 1}"#.to_vec(),
        ));
        records.push((
            "wrong-type",
            br#"{"transaction_id": "x", "user_id": "u1", "merchant_id": "m1", "amount": "12.50 EUR", "event_time": 1}"#
                .to_vec(),
        ));
        records.push(("unknown-schema-id", unknown_id.clone()));
        records.push(("bad-avro", truncated.clone()));
    }
    records
}

/// The share of the snapshot, its latest rows, that training holds out and
/// evaluation scores.
const HELD_OUT: f64 = 0.2;

/// Stage 5: a model trained on the snapshot, registered, evaluated against
/// the champion and promoted if it passes the gate.
/// A LightGBM run of `trees` trees on the snapshot, split by time (the
/// latest rows held out), registered as a version of `demo-large`.
fn train_spec(dataset: &str, name: &str, trees: u32) -> weir_train::TrainSpec {
    use weir_train::spec::{Runtime, Split};
    weir_train::TrainSpec {
        experiment: "demo".into(),
        name: Some(name.into()),
        dataset: dataset.into(),
        label: "large".into(),
        features: vec![],
        exclude: vec![],
        task: None,
        split: Split::Time {
            column: weir_features::snapshot::EVENT_TIMESTAMP.into(),
            validation: 0.2,
            test: HELD_OUT,
        },
        runtime: Runtime::Lightgbm,
        params: [("n_estimators".to_string(), json!(trees))].into(),
        register: Some("demo-large".into()),
        tolerance: 1e-4,
        tags: Default::default(),
        distributed: None,
        export: Default::default(),
    }
}

async fn training_stage(bus: &Bus, config: &Config, dataset: &str) -> anyhow::Result<()> {
    println!(
        "\n[5] training: LightGBM on {dataset} through ONNX, registered, evaluated against the champion"
    );
    let open = weir_train::OpenWorkspace::open(bus, &config.state_dir).await?;
    let workspace = open.workspace();
    let spec = train_spec(dataset, "demo-lightgbm", 100);
    let outcome = weir_train::train(&spec, workspace).await?;
    if let Some(reason) = outcome.failure {
        open.close().await;
        anyhow::bail!("training failed (run {}): {reason}", outcome.run_id);
    }
    let metric = |key: &str| outcome.metrics.get(key).copied().unwrap_or(f64::NAN);
    let (name, version) = outcome.version.clone().context("registered")?;
    println!(
        "    run {}: {} training rows, test ROC AUC {:.3}, log loss {:.3}; ONNX matches LightGBM to {:.1e}",
        outcome.run_id,
        metric("train_rows"),
        metric("test_roc_auc"),
        metric("test_log_loss"),
        metric("onnx_max_abs_diff"),
    );
    if let Some(model) = &outcome.model {
        println!(
            "    registered {name}@{version}: {} features → {} ({} bytes, opset {})",
            model.features.len(),
            model
                .signature
                .outputs
                .iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            model.size,
            model.signature.opset().unwrap_or_default()
        );
    }
    // On the rows its training held out (the test part of its time split):
    // the rows it trained on would flatter it.
    let request = weir_train::EvaluationRequest {
        model: format!("{name}@{version}"),
        dataset: None,
        slice: None,
        champion: "champion".into(),
        gate: vec![],
        experiment: "demo-evaluations".into(),
        promote: true,
    };
    let evaluation = weir_train::evaluate(&request, workspace).await?;
    println!(
        "    evaluated on the {} rows its training held out (the latest {:.0} % by {}) against {}: gate {} ({})",
        evaluation.rows,
        HELD_OUT * 100.0,
        weir_features::snapshot::EVENT_TIMESTAMP,
        evaluation
            .champion
            .as_ref()
            .map_or("no champion yet", |c| c.model.as_str()),
        evaluation.gate.verdict.as_str(),
        evaluation.gate.reasons.join("; ")
    );
    if evaluation.promoted {
        println!("    {name}@champion → version {version}");
    }
    open.close().await;
    Ok(())
}

/// The demo's experiment (also in `topologies/experiments/`).
const EXPERIMENT: &str = include_str!("../../../topologies/experiments/demo-ab.yaml");

/// Stage 7: a challenger trained, A/B tested against the champion on the
/// deployment's traffic with simulated feedback, and promoted.
async fn experiment_stage(bus: &Bus, config: &Config, dataset: &str) -> anyhow::Result<()> {
    println!(
        "\n[7] online experiment: a challenger A/B tested against the champion, sticky by user, with simulated feedback"
    );
    // The challenger: the same data, a smaller forest.
    let open = weir_train::OpenWorkspace::open(bus, &config.state_dir).await?;
    let spec = train_spec(dataset, "demo-challenger", 30);
    let outcome = weir_train::train(&spec, open.workspace()).await;
    open.close().await;
    let outcome = outcome?;
    if let Some(reason) = outcome.failure {
        anyhow::bail!("training failed (run {}): {reason}", outcome.run_id);
    }
    let (name, version) = outcome.version.clone().context("registered")?;
    let tracker = weir_meta::Tracker::open_under(bus, &config.state_dir).await?;
    tracker.set_alias(&name, "challenger", version).await?;
    println!("    registered {name}@{version} (LightGBM, 30 trees) as {name}@challenger");

    // A run cut short may have left an experiment running on the
    // deployment: the demo owns it.
    let state = tracker.snapshot();
    for left in weir_traffic::experiments::list(bus, &state).await? {
        if left.deployment == "demo-large" && left.running() {
            weir_traffic::experiments::stop(bus, &state, &left.routing.experiment).await?;
            println!(
                "    experiment {} was left running by an earlier run: stopped",
                left.routing.experiment
            );
        }
    }
    let origin = "topologies/experiments/demo-ab.yaml";
    let experiment = weir_traffic::spec::ExperimentSpec::parse(EXPERIMENT, origin)?;
    let applied = weir_traffic::experiments::apply(bus, &tracker, &experiment, origin).await?;
    let routing = &applied.routing;
    println!(
        "    experiment {} v{} on {}: {}, sticky by user_id (weir.control.{})",
        routing.experiment,
        routing.version,
        experiment.deployment,
        routing
            .candidates
            .iter()
            .zip(routing.shares())
            .map(|(c, share)| format!("{} {:.0} %", c.model, share * 100.0))
            .collect::<Vec<_>>()
            .join(", "),
        experiment.deployment
    );

    let mut deployment =
        weir_serve::DeploymentSpec::parse(DEPLOYMENT, "topologies/deployments/demo-large.yaml")?;
    deployment.http.listen = "127.0.0.1:0".into();
    let serving = Serving::start(bus, config, &deployment, &tracker).await?;
    // Eight requests from each of 300 users; each user keeps one model.
    let run = weir_core::now_ms();
    let mut connection =
        weir_serve::client::Connection::open(serving.address, "/v2/models/demo-large/infer")
            .await?;
    let mut models: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    let mut answered = Vec::new();
    for round in 0..8 {
        for user in (0..300).map(|u| format!("u{u:04}")) {
            let id = format!("ab-{run}-{user}-{round}");
            let (status, answer) = connection
                .post(request_body(Some(&id), &user).as_bytes())
                .await?;
            let answer: Json = serde_json::from_slice(&answer)?;
            anyhow::ensure!(status == 200, "HTTP {status}: {answer}");
            let model = format!("{name}@{}", answer["model_version"].as_str().unwrap_or("?"));
            models.entry(user).or_default().insert(model.clone());
            answered.push((id, model));
        }
    }
    let sticky = models.values().all(|m| m.len() == 1);
    // Simulated feedback: an answer of the challenger converts with
    // probability 0.3, one of the champion with 0.15.
    let challenger = format!("{name}@{version}");
    let mut rng = StdRng::seed_from_u64(run as u64);
    let feedback: Vec<Json> = answered
        .iter()
        .map(|(id, model)| {
            let rate = if *model == challenger { 0.3 } else { 0.15 };
            json!({"request_id": id, "reward": if rng.random_bool(rate) { 1.0 } else { 0.0 }})
        })
        .collect();
    post_feedback(serving.address, feedback).await?;
    let summary = serving.stop().await?;
    println!(
        "    {} requests from 300 users, each user on one model: {}; {} logged with their variant and propensity",
        answered.len(),
        if sticky { "yes" } else { "NO" },
        summary.logged
    );
    println!(
        "    simulated feedback (a conversion with probability 0.3 on the challenger, 0.15 on the champion) posted to /v2/models/demo-large/feedback → weir.feedback.demo-large"
    );

    // The evidence: the analysis job over the log met with the feedback.
    let running = weir_traffic::rewards::Running {
        state_dir: config.state_dir.join("jobs"),
        bounded: true,
        checkpoint_every: Duration::from_secs(1),
        cluster: weir_dataflow::job::Cluster::local(1),
    };
    let started = weir_traffic::analysis::start(bus, &experiment, running).await?;
    let job = started.name.clone();
    tokio::task::spawn_blocking(move || started.job.join()).await??;
    let rows = weir_traffic::analysis::read(
        bus,
        &experiment.deployment,
        &experiment.name,
        routing.version,
    )
    .await?;
    println!(
        "    analysis job `{job}`: weir.feedback.demo-large ⋈ weir.log.demo-large, each candidate against the champion with an always-valid test → weir.analysis.demo-large"
    );
    let table = weir_traffic::report::table(routing, &rows);
    let widths: Vec<usize> = (0..table[0].len())
        .map(|c| {
            table
                .iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &table {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("      {}", cells.join("  ").trim_end());
    }
    // The decision rules (promote when better, roll back when worse),
    // carried out with their evidence on weir.meta.
    let decided = weir_traffic::decide::settle(bus, &tracker, &experiment, routing.version).await;
    let decided = match decided {
        Ok(Some(decided)) => format!(
            "{} (the evidence: run {} of `{}` on weir.meta)",
            decided.outcome,
            decided.run_id,
            weir_traffic::TRACKING_EXPERIMENT
        ),
        Ok(None) => {
            match weir_traffic::experiments::stop(bus, &tracker.snapshot(), "demo-ab").await {
                Ok(_) => "undecided: the experiment stopped, the champion stays".to_string(),
                Err(error) => {
                    tracker.close().await;
                    return Err(error.into());
                }
            }
        }
        Err(error) => {
            tracker.close().await;
            return Err(error.into());
        }
    };
    tracker.close().await;
    println!("    decision: {decided}");
    Ok(())
}

/// The demo's bandit (also in `topologies/experiments/`).
const BANDIT: &str = include_str!("../../../topologies/experiments/demo-bandit.yaml");

/// Stage 8: a bandit between the champion and the version before it, its
/// weights moved by the allocator job from simulated conversions while the
/// deployment serves.
async fn bandit_stage(bus: &Bus, config: &Config) -> anyhow::Result<()> {
    println!(
        "\n[8] bandit: the champion against demo-large@1, the traffic moved by the allocator job from simulated conversions"
    );
    let tracker = weir_meta::Tracker::open_under(bus, &config.state_dir).await?;
    let origin = "topologies/experiments/demo-bandit.yaml";
    let experiment = weir_traffic::spec::ExperimentSpec::parse(BANDIT, origin)?;
    let applied = weir_traffic::experiments::apply(bus, &tracker, &experiment, origin).await?;
    let champion = applied.routing.candidates[0].model.clone();
    println!(
        "    experiment {} v{}: {} and {}, Thompson sampling, new weights every second (weir.control.demo-large)",
        applied.routing.experiment,
        applied.routing.version,
        champion,
        applied.routing.candidates[1].model
    );
    let mut deployment =
        weir_serve::DeploymentSpec::parse(DEPLOYMENT, "topologies/deployments/demo-large.yaml")?;
    deployment.http.listen = "127.0.0.1:0".into();
    let serving = Serving::start(bus, config, &deployment, &tracker).await?;
    let running = weir_traffic::rewards::Running {
        state_dir: config.state_dir.join("jobs"),
        bounded: false,
        checkpoint_every: Duration::from_secs(1),
        cluster: weir_dataflow::job::Cluster::local(1),
    };
    let started = weir_traffic::allocator::start(bus, &experiment, running).await?;
    let (job, allocator) = (started.name, started.job);
    // The traffic starts once the allocator has read what the topics hold
    // (earlier runs' too): the wait for each round's weights is then the
    // loop's own delay.
    let caught_up = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let status = allocator.status();
            let read = |partitions: &BTreeMap<i32, weir_dataflow::job::PartitionStatus>| {
                !partitions.is_empty() && partitions.values().all(|p| p.lag == 0)
            };
            if read(&status.partitions) && read(&status.joined_partitions) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    caught_up.context("the allocator did not read the feedback and the log within 60 s")?;
    println!(
        "    allocator job `{job}` running: weir.feedback.demo-large ⋈ weir.log.demo-large → weights"
    );

    let mut infer =
        weir_serve::client::Connection::open(serving.address, "/v2/models/demo-large/infer")
            .await?;
    let (_, from) = weir_serve::control::history(bus, "demo-large").await?;
    let mut control = weir_serve::control::reader(bus, "demo-large", from)?;
    let run = weir_core::now_ms();
    let mut rng = StdRng::seed_from_u64(run as u64 ^ 0x5EED);
    for round in 0..6 {
        // 60 requests from random users; an answer of the champion converts
        // with probability 0.3, one of demo-large@1 with 0.1.
        let mut feedback = Vec::new();
        let mut on_champion = 0;
        for i in 0..60 {
            let id = format!("bandit-{run}-{round}-{i}");
            let user = format!("u{:04}", rng.random_range(0..200));
            let (status, answer) = infer
                .post(request_body(Some(&id), &user).as_bytes())
                .await?;
            let answer: Json = serde_json::from_slice(&answer)?;
            anyhow::ensure!(status == 200, "HTTP {status}: {answer}");
            let model = format!(
                "demo-large@{}",
                answer["model_version"].as_str().unwrap_or("?")
            );
            let rate = if model == champion { 0.3 } else { 0.1 };
            on_champion += usize::from(model == champion);
            feedback.push(
                json!({"request_id": id, "reward": if rng.random_bool(rate) { 1.0 } else { 0.0 }}),
            );
        }
        // The round's feedback, observed now: the tick after this time
        // takes all of it. (Stamped by the route on arrival instead, a
        // tick could fall between the stamps and a later reading of the
        // clock, and the weights waited for below would never come.)
        let observed = weir_core::now_ms();
        for record in &mut feedback {
            record["timestamp"] = json!(observed);
        }
        post_feedback(serving.address, feedback).await?;
        // The weights of the first tick after this round's feedback, read
        // as serving reads them.
        let weights = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let Some(record) = control.next_raw().await? else {
                    anyhow::bail!("weir.control.demo-large ended");
                };
                let routing = weir_serve::routing::Routing::from_bytes(
                    record.payload.as_deref().unwrap_or_default(),
                )?;
                if routing.experiment == "demo-bandit" && routing.allocated && routing.at > observed
                {
                    return anyhow::Ok(routing.shares());
                }
            }
        })
        .await
        .with_context(|| {
            format!("the allocator published no weights within 20 s of round {round}'s feedback")
        })??;
        println!(
            "    round {}: {on_champion} of 60 requests answered by {champion}; weights now {champion} {:.0} %, demo-large@1 {:.0} %",
            round + 1,
            weights[0] * 100.0,
            weights[1] * 100.0
        );
    }
    allocator.stop();
    tokio::task::spawn_blocking(move || allocator.join()).await??;
    let summary = serving.stop().await?;
    let state = tracker.snapshot();
    let stopped = weir_traffic::experiments::stop(bus, &state, "demo-bandit").await?;
    tracker.close().await;
    println!(
        "    {} requests logged; the allocator stopped at its checkpoint, experiment demo-bandit {}",
        summary.logged,
        match stopped {
            Some((_, routing)) => format!("v{} stopped", routing.version),
            None => "had stopped".into(),
        }
    );
    Ok(())
}

/// Posts `feedback` records to the deployment's feedback route.
async fn post_feedback(address: std::net::SocketAddr, feedback: Vec<Json>) -> anyhow::Result<()> {
    let mut route =
        weir_serve::client::Connection::open(address, "/v2/models/demo-large/feedback").await?;
    let (status, answer) = route
        .post(Json::Array(feedback).to_string().as_bytes())
        .await?;
    anyhow::ensure!(
        status == 200,
        "feedback: HTTP {status}: {}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

/// A request for a user's prediction: only `user_id`, the features are
/// looked up.
fn request_body(id: Option<&str>, user: &str) -> String {
    let mut body =
        json!({"inputs": [{"name": "user_id", "shape": [1], "datatype": "BYTES", "data": [user]}]});
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    body.to_string()
}

/// The demo's deployment served in the background.
struct Serving {
    address: std::net::SocketAddr,
    versions: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<weir_serve::server::Summary, weir_serve::ServeError>>,
    following: weir_features::follow::Following,
}

impl Serving {
    /// Serves `spec` (recorded already) until [`Serving::stop`].
    async fn start(
        bus: &Bus,
        config: &Config,
        spec: &weir_serve::DeploymentSpec,
        tracker: &weir_meta::Tracker,
    ) -> anyhow::Result<Self> {
        let registry = weir_serve::Registry::follow(
            bus,
            weir_meta::artifacts::ArtifactStore::under(&config.state_dir)?,
        )
        .await?;
        let (features, following) =
            weir_serve::server::Features::follow(bus, &config.state_dir, spec).await?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = {
            let bus = bus.clone();
            let spec = spec.clone();
            let tracker = tracker.clone();
            tokio::spawn(async move {
                weir_serve::server::serve(
                    &bus,
                    registry,
                    spec,
                    features,
                    Some(tracker),
                    move |ready| {
                        let _ = ready_tx.send((ready.http, ready.versions.clone()));
                    },
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
            })
        };
        let (address, versions) = ready_rx.await.context("the deployment did not start")?;
        Ok(Self {
            address: address.context("no HTTP address")?,
            versions,
            stop,
            server,
            following,
        })
    }

    /// Stops serving once what was asked is answered and logged.
    async fn stop(self) -> anyhow::Result<weir_serve::server::Summary> {
        let _ = self.stop.send(());
        let summary = self.server.await??;
        self.following.stop().await;
        Ok(summary)
    }
}

/// The demo's deployment (also in `topologies/deployments/`).
const DEPLOYMENT: &str = include_str!("../../../topologies/deployments/demo-large.yaml");

/// Stage 6: the champion served over HTTP and the stream, its features
/// looked up by user, every request logged.
async fn serving_stage(bus: &Bus, config: &Config) -> anyhow::Result<()> {
    println!(
        "\n[6] serving: demo-large@champion over HTTP (OIP v2) and a stream, features looked up by user"
    );
    let mut spec =
        weir_serve::DeploymentSpec::parse(DEPLOYMENT, "topologies/deployments/demo-large.yaml")?;
    // A free port: the demo must not collide with a `weir serve` running.
    spec.http.listen = "127.0.0.1:0".into();
    let tracker = weir_meta::Tracker::open_under(bus, &config.state_dir).await?;
    let deployed = weir_serve::deploy::record(&tracker, &spec, DEPLOYMENT).await?;
    println!(
        "    deployment `{}` v{}{} ({})",
        spec.name,
        deployed.version,
        if deployed.new { "" } else { " (unchanged)" },
        deployed.resolved.join(", ")
    );
    let serving = Serving::start(bus, config, &spec, &tracker).await?;
    let address = serving.address;
    println!(
        "    serving {} on http://{address}/v2/models/demo-large",
        serving.versions
    );

    // HTTP: one request per user, all features looked up.
    let users: Vec<String> = (0..20).map(|u| format!("u{:04}", u * 7)).collect();
    let body = |user: &str| request_body(None, user);
    let mut connection =
        weir_serve::client::Connection::open(address, "/v2/models/demo-large/infer").await?;
    let started = Instant::now();
    let mut shown = 0;
    for user in &users {
        let (status, answer) = connection.post(body(user).as_bytes()).await?;
        let answer: Json = serde_json::from_slice(&answer)?;
        anyhow::ensure!(status == 200, "HTTP {status}: {answer}");
        if shown < 3 {
            let output = |name: &str| {
                answer["outputs"]
                    .as_array()
                    .and_then(|o| o.iter().find(|o| o["name"] == name))
                    .map(|o| o["data"].clone())
                    .unwrap_or(Json::Null)
            };
            println!(
                "    {user}: P(large) {:.3} → {}",
                output("probabilities")[1].as_f64().unwrap_or(f64::NAN),
                output("prediction")[0]
            );
            shown += 1;
        }
    }
    println!(
        "    {} HTTP requests in {} ms",
        users.len(),
        started.elapsed().as_millis()
    );

    // The stream: the same requests through weir.requests.demo-large.
    let requests = topics::requests(&spec.name);
    let producer = bus.producer()?;
    for (i, user) in users.iter().enumerate() {
        let id = format!("demo-{}-{i}", weir_core::now_ms());
        producer
            .send_and_wait(OutRecord::new(&requests, body(user).as_bytes()).key(id.as_bytes()))
            .await?;
    }
    let group = weir_serve::stream::group(&spec.name);
    let deadline = Instant::now() + Duration::from_secs(60);
    while bus.lag(&group, &requests).await? > 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the stream requests were not answered in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let summary = serving.stop().await?;
    tracker.close().await;
    println!(
        "    {} stream requests answered on {}; {} requests logged to {} (Avro)",
        summary.stream.0,
        topics::predictions(&spec.name),
        summary.logged,
        topics::log(&spec.name)
    );
    Ok(())
}
