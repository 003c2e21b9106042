//! `weir bench serve`: model serving over the Open Inference Protocol v2
//! on HTTP, one row a request, at several concurrencies. It runs in one go
//! and on the same model:
//! - Weir, in a child process: the deployment with its request log
//!   written to an embedded broker (in the same child, on the same cores),
//!   as a deployment runs; and once more without the log, to show its cost;
//! - MLServer 1.7.1 with mlserver-sklearn, serving the original
//!   scikit-learn model, as the anchors measured it (`parallel_workers: 0`);
//! - a raw ONNX Runtime `run` loop, one row a call (the limit);
//! - a no-op OIP server (axum, as Weir's; it reads each request and
//!   answers a made-up response): the round trip's own cost here, which
//!   bounds what any server on this stack can do at one connection.
//!
//! The model is the anchors' GradientBoostingClassifier (100 trees of
//! depth 3, 30 features), exported with skl2onnx for Weir. Every server
//! passes through the same closed-loop HTTP/1.1 load generator (keep-alive
//! connections, latencies in an HDR histogram). The generator runs in this
//! process and shares the 2 cores. Both servers' labels for the same rows
//! are checked against scikit-learn's first.
//!
//! Then batch scoring of `--rows` rows (Parquet, 30 float features):
//! `weir score`'s pipeline vs raw ONNX Runtime over the same chunks held
//! in memory, on the same number of threads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use arrow::array::{ArrayRef, Float32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::Value as Json;
use weir_onnx::{Model, SessionOptions};
use weir_serve::deployment::ModelColumns;
use weir_serve::runner::{LoadedModel, ModelSet};
use weir_serve::spec::Batching;

use crate::{SpawnGroup as _, free_port};

#[derive(clap::Args)]
pub struct Args {
    /// Concurrent connections, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    concurrency: Vec<usize>,
    /// How long each load runs.
    #[arg(long, value_parser = weir_dataflow::spec::parse_duration, default_value = "5s")]
    duration: Duration,
    /// Rows for batch scoring (0: skip it).
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Skip MLServer.
    #[arg(long)]
    no_mlserver: bool,
    /// (internal) serve the model in this directory.
    #[arg(long, hide = true)]
    serve: Option<PathBuf>,
    /// (internal) where to serve it.
    #[arg(long, hide = true)]
    listen: Option<SocketAddr>,
    /// (internal) serve it without the request log.
    #[arg(long, hide = true)]
    unlogged: bool,
    /// (internal) serve a no-op OIP server at `--listen`.
    #[arg(long, hide = true)]
    noop: bool,
}

const FEATURES: usize = 30;
const INFER: &str = "/v2/models/gbdt/infer";
/// The no-op server's name in the table.
const NOOP: &str = "no-op OIP server (axum, no work)";

fn columns() -> ModelColumns {
    ModelColumns {
        features: (0..FEATURES).map(|k| format!("f{k}")).collect(),
        classes: vec!["0".into(), "1".into()],
        task: "classification".into(),
    }
}

fn models(dir: &Path, runners: usize) -> anyhow::Result<ModelSet> {
    let bytes = std::fs::read(dir.join("gbdt.onnx"))?;
    let batching = Batching {
        runners,
        ..Default::default()
    };
    Ok(ModelSet {
        members: vec![LoadedModel::load(
            "gbdt@1".into(),
            1,
            1.0,
            &bytes,
            &batching,
        )?],
        combine: Default::default(),
        stacker: None,
    })
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let (true, Some(listen)) = (args.noop, args.listen) {
        return serve_noop(listen).await;
    }
    if let (Some(dir), Some(listen)) = (&args.serve, args.listen) {
        return serve(dir, listen, !args.unlogged).await;
    }
    let dir = std::env::temp_dir().join(format!("weir-bench-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = compare(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The child: the deployment, logging to an embedded broker of its own
/// (or not logging).
async fn serve(dir: &Path, listen: SocketAddr, logged: bool) -> anyhow::Result<ExitCode> {
    let broker =
        weir_broker::EmbeddedBroker::start_on_free_port(weir_broker::Storage::Memory).await?;
    let bus = weir_bus::Bus::connect(weir_bus::BusConfig::new(broker.bootstrap_servers())).await?;
    let spec = weir_serve::DeploymentSpec::parse(
        &format!(
            "name: gbdt\nmodel: gbdt@1\nbatching: {{max_batch: 64, max_wait_us: 0, runners: 2, intra_threads: 1}}\nlogging: {{enabled: {logged}}}\n"
        ),
        "bench",
    )?;
    let deployment = weir_serve::Deployment::from_models(
        spec.clone(),
        models(dir, spec.batching.runners)?,
        columns(),
        &[],
        None,
        Some(&bus),
    )
    .await?;
    let router = weir_serve::oip::router(Arc::new(deployment));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(
        axum::serve::ListenerExt::tap_io(listener, weir_serve::server::nodelay),
        router,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// The child for the floor: an OIP server (axum, as Weir's) that reads
/// each request and answers a made-up one-row response, with no decoding,
/// model or log. Its rate at one connection is what this machine's round
/// trip allows any server on this HTTP stack.
async fn serve_noop(listen: SocketAddr) -> anyhow::Result<ExitCode> {
    use axum::body::Bytes;
    use axum::routing::{get, post};
    const ANSWER: &str = r#"{"model_name":"gbdt","model_version":"1","id":"","outputs":[{"name":"label","datatype":"INT64","shape":[1],"data":[0]},{"name":"probabilities","datatype":"FP32","shape":[1,2],"data":[0.5,0.5]}]}"#;
    let app = axum::Router::new()
        .route("/v2/health/ready", get(|| async { "" }))
        .route(
            INFER,
            // The body is read: a server that left it unread would close
            // the connection.
            post(|_: Bytes| async { ([("content-type", "application/json")], ANSWER) }),
        );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(
        axum::serve::ListenerExt::tap_io(listener, weir_serve::server::nodelay),
        app,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_ready(address: SocketAddr, child: &mut tokio::process::Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the server exited ({status})");
        }
        if let Ok(mut c) = weir_serve::client::Connection::open(address, "/v2/health/ready").await
            && let Ok((200, _)) = c.get().await
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{address} was not ready in 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A server's labels for the check rows.
async fn labels(address: SocketAddr, check: &Json) -> anyhow::Result<Vec<i64>> {
    let mut connection = weir_serve::client::Connection::open(address, INFER).await?;
    let mut labels = Vec::new();
    for row in check["x"].as_array().context("check rows")? {
        let body = serde_json::json!({"inputs": [{"name": "input-0", "shape": [1, FEATURES], "datatype": "FP32", "data": row}]});
        let (status, answer) = connection.post(body.to_string().as_bytes()).await?;
        let answer: Json = serde_json::from_slice(&answer)?;
        if status != 200 {
            bail!("HTTP {status}: {answer}");
        }
        let outputs = answer["outputs"].as_array().context("outputs")?;
        let label = outputs
            .iter()
            .find(|o| o["name"] == "label" || o["name"] == "predict")
            .or(outputs.first())
            .context("a label output")?;
        labels.push(label["data"][0].as_f64().context("a number")? as i64);
    }
    Ok(labels)
}

fn ms(histogram: &Histogram<u64>, q: f64) -> f64 {
    histogram.value_at_quantile(q) as f64 / 1000.0
}

/// Raw ONNX Runtime: `threads` threads, each with its own session, one row
/// a call, for `duration`. Calls a second and the calls' latencies.
fn raw_loop(
    dir: &Path,
    threads: usize,
    duration: Duration,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let bytes = std::fs::read(dir.join("gbdt.onnx"))?;
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let bytes = bytes.clone();
            std::thread::spawn(move || -> anyhow::Result<Histogram<u64>> {
                let model = Model::load(
                    &bytes,
                    &SessionOptions {
                        intra_threads: Some(1),
                    },
                )?;
                let mut rng = StdRng::seed_from_u64(t as u64);
                let rows: Vec<Vec<f32>> = (0..256)
                    .map(|_| {
                        (0..FEATURES)
                            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
                            .collect()
                    })
                    .collect();
                let mut latency = Histogram::<u64>::new(3)?;
                let mut i = 0;
                while started.elapsed() < duration {
                    let call = Instant::now();
                    model.predict(&rows[i % rows.len()], 1)?;
                    latency.record(call.elapsed().as_nanos() as u64 / 1000)?;
                    i += 1;
                }
                Ok(latency)
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new(3)?;
    for handle in handles {
        all.add(handle.join().expect("a raw loop thread")?)?;
    }
    Ok((all.len() as f64 / started.elapsed().as_secs_f64(), all))
}

/// `rows` random rows of 30 float features, in Parquet.
fn scoring_data(path: &Path, rows: usize) -> anyhow::Result<()> {
    let schema = Arc::new(Schema::new(
        (0..FEATURES)
            .map(|k| Field::new(format!("f{k}"), DataType::Float32, false))
            .collect::<Vec<_>>(),
    ));
    let mut writer = ArrowWriter::try_new(std::fs::File::create(path)?, schema.clone(), None)?;
    let mut rng = StdRng::seed_from_u64(11);
    let mut written = 0;
    while written < rows {
        let n = (rows - written).min(100_000);
        let arrays: Vec<ArrayRef> = (0..FEATURES)
            .map(|_| {
                Arc::new(Float32Array::from_iter_values(
                    (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0),
                )) as ArrayRef
            })
            .collect();
        writer.write(&RecordBatch::try_new(schema.clone(), arrays)?)?;
        written += n;
    }
    writer.close()?;
    Ok(())
}

type Chunks = Arc<Vec<(Vec<f32>, usize)>>;

/// The file's rows as feature matrices of `chunk` rows, in memory.
fn chunks_of(data: &Path, chunk: usize) -> anyhow::Result<Chunks> {
    let features = columns().features;
    let mut chunks = Vec::new();
    let reader = weir_features::snapshot::read_table_file(data).map_err(anyhow::Error::msg)?;
    for batch in reader {
        let batch = batch?;
        let mut start = 0;
        while start < batch.num_rows() {
            let n = chunk.min(batch.num_rows() - start);
            chunks.push((
                weir_serve::score::matrix(&batch.slice(start, n), &features)?,
                n,
            ));
            start += n;
        }
    }
    Ok(Arc::new(chunks))
}

/// Raw ONNX Runtime over the chunks: `threads` threads with a session
/// each take them in turn. Rows a second.
fn raw_batches(dir: &Path, chunks: &Chunks, threads: usize) -> anyhow::Result<f64> {
    let bytes = std::fs::read(dir.join("gbdt.onnx"))?;
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (chunks, bytes) = (Arc::clone(chunks), bytes.clone());
            std::thread::spawn(move || -> anyhow::Result<usize> {
                let model = Model::load(
                    &bytes,
                    &SessionOptions {
                        intra_threads: Some(1),
                    },
                )?;
                let mut rows = 0;
                for (matrix, n) in chunks.iter().skip(t).step_by(threads) {
                    model.predict(matrix, *n)?;
                    rows += n;
                }
                Ok(rows)
            })
        })
        .collect();
    let mut rows = 0;
    for handle in handles {
        rows += handle.join().expect("a raw batch thread")?;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// Weir's runner pool over the same chunks (two in flight per thread, as
/// `weir score` keeps them). Rows a second.
async fn runner_batches(dir: &Path, chunks: &Chunks, threads: usize) -> anyhow::Result<f64> {
    let batching = Batching {
        runners: threads,
        max_batch: 10_000,
        ..Default::default()
    };
    let runner = Arc::new(weir_serve::runner::Runner::start(
        models(dir, threads)?,
        FEATURES,
        &batching,
    ));
    let started = Instant::now();
    let mut in_flight = std::collections::VecDeque::new();
    let mut rows = 0;
    for (matrix, n) in chunks.iter() {
        let runner = runner.clone();
        let (matrix, n) = (matrix.clone(), *n);
        in_flight.push_back(tokio::spawn(async move { runner.predict(matrix, n).await }));
        rows += n;
        if in_flight.len() >= threads * 2 {
            in_flight.pop_front().expect("in flight").await??;
        }
    }
    for task in in_flight {
        task.await??;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

async fn compare(args: &Args, dir: &Path) -> anyhow::Result<ExitCode> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "weir bench serve: GradientBoostingClassifier (100 trees, depth 3, {FEATURES} features); OIP v2 REST, 1 row a request; {:?} connections, {:?} each; {cores} cores shared with the load generator (keep-alive HTTP/1.1, this process)",
        args.concurrency, args.duration
    );
    let python = PathBuf::from(std::env::var_os("WEIR_PYTHON").context(
        "WEIR_PYTHON is not set: run `cargo xtask bench serve` (its Python environment has MLServer and skl2onnx)",
    )?);
    let mlserver_http = free_port()?;
    let status = tokio::process::Command::new(&python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../python/bench/serve_setup.py"))
        .arg(dir)
        .arg(mlserver_http.port().to_string())
        .arg(free_port()?.port().to_string())
        .arg(free_port()?.port().to_string())
        .stdout(Stdio::null())
        .status()
        .await?;
    if !status.success() {
        bail!("training and exporting the model failed ({status})");
    }
    let body = std::fs::read(dir.join("body.json"))?;
    let check: Json = serde_json::from_slice(&std::fs::read(dir.join("check.json"))?)?;
    let expected: Vec<i64> = serde_json::from_value(check["label"].clone())?;

    // The limit: ONNX Runtime's run, one row a call.
    println!(
        "\n{:<34} {:>6} {:>11} {:>8} {:>8} {:>8}",
        "server", "conns", "requests/s", "mean ms", "p50 ms", "p99 ms"
    );
    let mut raw = Vec::new();
    for threads in [1, cores] {
        let (rate, latency) = tokio::task::spawn_blocking({
            let dir = dir.to_path_buf();
            let duration = args.duration;
            move || raw_loop(&dir, threads, duration)
        })
        .await??;
        println!(
            "{:<34} {:>6} {:>11.0} {:>8.3} {:>8.3} {:>8.3}",
            format!("raw ort run, {threads} thread(s)"),
            "-",
            rate,
            latency.mean() / 1000.0,
            ms(&latency, 0.5),
            ms(&latency, 0.99)
        );
        raw.push(rate);
    }
    let raw_best = raw.iter().cloned().fold(0.0, f64::max);

    let weir_address = free_port()?;
    let weir = tokio::process::Command::new(std::env::current_exe()?)
        .args(["bench", "serve", "--serve"])
        .arg(dir)
        .args(["--listen", &weir_address.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_group()?;
    let unlogged_address = free_port()?;
    let unlogged = tokio::process::Command::new(std::env::current_exe()?)
        .args(["bench", "serve", "--unlogged", "--serve"])
        .arg(dir)
        .args(["--listen", &unlogged_address.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_group()?;
    let noop_address = free_port()?;
    let noop = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "bench",
            "serve",
            "--noop",
            "--listen",
            &noop_address.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_group()?;
    let mut servers = vec![
        ("weir serve (ort, axum, logged)", weir, weir_address),
        (
            "weir serve, log off (for the cost)",
            unlogged,
            unlogged_address,
        ),
        (NOOP, noop, noop_address),
    ];
    if !args.no_mlserver {
        let mlserver = tokio::process::Command::new(python.with_file_name("mlserver"))
            .arg("start")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn_group()?;
        servers.push((
            "mlserver 1.7.1 (sklearn, 0 workers)",
            mlserver,
            mlserver_http,
        ));
    }
    let mut results: Vec<(String, usize, f64, f64)> = Vec::new();
    for (name, child, address) in &mut servers {
        wait_ready(*address, child).await?;
        let got = labels(*address, &check).await?;
        if got != expected && *name != NOOP {
            bail!("{name} labels {got:?}, scikit-learn {expected:?}");
        }
        for &c in &args.concurrency {
            let load =
                weir_serve::client::load(*address, INFER, vec![body.clone(); c], args.duration)
                    .await?;
            if load.failed > 0 {
                bail!("{name}: {} requests failed", load.failed);
            }
            println!(
                "{:<34} {:>6} {:>11.0} {:>8.3} {:>8.3} {:>8.3}",
                name,
                c,
                load.rate,
                load.latency.mean() / 1000.0,
                ms(&load.latency, 0.5),
                ms(&load.latency, 0.99)
            );
            results.push((name.to_string(), c, load.rate, ms(&load.latency, 0.99)));
        }
    }
    drop(servers);

    println!("\nratios (targets: ≥ 10× MLServer; p99 ≤ 2 ms at 8 connections; ≥ 0.7 of raw ort):");
    for &c in &args.concurrency {
        let of = |prefix: &str| {
            results
                .iter()
                .find(|(n, k, _, _)| n.starts_with(prefix) && *k == c)
                .map(|r| (r.2, r.3))
        };
        let Some((weir_rate, weir_p99)) = of("weir") else {
            continue;
        };
        let versus = of("mlserver")
            .map(|(rate, _)| format!("{:.1}× MLServer", weir_rate / rate))
            .unwrap_or_default();
        let ceiling = of("mlserver")
            .zip(of(NOOP))
            .map(|((mlserver, _), (noop, _))| {
                format!(
                    "; the no-op server {:.1}× MLServer, weir {:.0}% of it",
                    noop / mlserver,
                    100.0 * weir_rate / noop
                )
            })
            .unwrap_or_default();
        println!(
            "  {c:>3} connections: weir {weir_rate:.0} requests/s, {versus}, {:.2} of raw ort ({raw_best:.0} runs/s), p99 {weir_p99:.2} ms{ceiling}",
            weir_rate / raw_best
        );
    }

    if args.rows > 0 {
        let data = dir.join("score.parquet");
        scoring_data(&data, args.rows)?;
        let options = weir_serve::score::ScoreOptions {
            chunk_rows: 10_000,
            threads: cores,
        };
        let out = dir.join("scored.parquet");
        let report = weir_serve::score::score(
            models(dir, options.threads)?,
            &columns().features,
            &columns().classes,
            &data,
            &out,
            &options,
        )
        .await?;
        let weir_rate = report.rows as f64 / report.seconds;
        let chunks = chunks_of(&data, 10_000)?;
        let raw_rate = tokio::task::spawn_blocking({
            let (dir, chunks) = (dir.to_path_buf(), chunks.clone());
            move || raw_batches(&dir, &chunks, cores)
        })
        .await??;
        let runner_rate = runner_batches(dir, &chunks, cores).await?;
        println!(
            "\nbatch scoring, {} rows, chunks of 10,000, {cores} threads (target ≥ 0.8 of raw ort over the same batches):",
            report.rows
        );
        println!("  raw ort, chunks in memory          {raw_rate:>10.0} rows/s");
        println!(
            "  weir runners, chunks in memory     {runner_rate:>10.0} rows/s  {:.2} of raw",
            runner_rate / raw_rate
        );
        println!(
            "  weir score, Parquet in and out     {weir_rate:>10.0} rows/s  {:.2} of raw ({:.2} s)",
            weir_rate / raw_rate,
            report.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}
