//! `weir bench online`: online feature look-ups over HTTP — 1 and 50
//! entities a request, at several concurrencies — against Weir's online
//! store (RocksDB, `weir features serve`'s routes, in a child process) and
//! Feast's Python feature server (`feast serve`, its SQLite online store,
//! set up by `python/bench/feast_online.py`), on the same values, through
//! the same route (`POST /get-online-features`, which both answer) and the
//! same load generator: closed-loop keep-alive HTTP/1.1 connections in this
//! process, latencies in an HDR histogram. Both servers' answers to one
//! request are compared first.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use serde_json::{Value as Json, json};
use weir_features::online::{OnlineStore, OnlineView};

use crate::hop::peak_rss_mib;
use crate::{SpawnGroup as _, free_port};

#[derive(clap::Args)]
pub struct Args {
    /// Entities in the store.
    #[arg(long, default_value_t = 10_000)]
    entities: usize,
    /// Concurrent connections, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<usize>,
    /// How long each load runs.
    #[arg(long, value_parser = weir_dataflow::spec::parse_duration, default_value = "5s")]
    duration: Duration,
    /// Skip Feast.
    #[arg(long)]
    no_feast: bool,
    /// (internal) serve the store in this directory.
    #[arg(long, hide = true)]
    serve: Option<PathBuf>,
    /// (internal) where to serve it.
    #[arg(long, hide = true)]
    listen: Option<SocketAddr>,
}

const FEATURES: usize = 5;

fn view() -> OnlineView {
    OnlineView {
        name: "users".into(),
        topic: "bench.users".into(),
        entity: vec!["user_id".into()],
        features: (0..FEATURES).map(|k| format!("f{k}")).collect(),
        ttl: None,
        time: "window_end".into(),
        created: None,
    }
}

/// The request body asking for every feature of `count` users from `first`.
fn body(first: usize, count: usize, entities: usize) -> Vec<u8> {
    let ids: Vec<usize> = (0..count).map(|i| (first + i * 37) % entities).collect();
    let features: Vec<String> = (0..FEATURES).map(|k| format!("users:f{k}")).collect();
    serde_json::to_vec(&json!({"features": features, "entities": {"user_id": ids}})).expect("JSON")
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let (Some(dir), Some(listen)) = (&args.serve, args.listen) {
        return serve(dir, listen).await;
    }
    let dir = std::env::temp_dir().join(format!("weir-bench-online-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = compare(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The child: the store in `dir`, served.
async fn serve(dir: &Path, listen: SocketAddr) -> anyhow::Result<ExitCode> {
    let store = Arc::new(OnlineStore::open(dir)?);
    let view = view();
    let served = weir_features::http::Served {
        store,
        views: Arc::new(HashMap::from([(view.name.clone(), view)])),
    };
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, weir_features::http::router(served)).await?;
    Ok(ExitCode::SUCCESS)
}

async fn compare(args: &Args, dir: &Path) -> anyhow::Result<ExitCode> {
    println!(
        "weir bench online: {} users × {FEATURES} features; POST /get-online-features, 1 and 50 users a request, {:?} connections, {:?} each; load generator: keep-alive HTTP/1.1 in this process (it shares the 2 cores)",
        args.entities, args.concurrency, args.duration
    );
    // Weir's store, filled the way the materializer fills it.
    let store_dir = dir.join("weir");
    {
        let store = OnlineStore::open(&store_dir)?;
        let rows: Vec<(i32, i64, Json)> = (0..args.entities)
            .map(|i| {
                let mut row = json!({"user_id": i, "window_end": "2026-01-01T00:00:00Z"});
                for k in 0..FEATURES {
                    row[format!("f{k}")] = json!(((i * 31 + k * 7) % 1000) as f64 / 1000.0);
                }
                (0, i as i64, row)
            })
            .collect();
        store.ingest(&view(), &rows)?;
    }
    let weir_address = free_port()?;
    let weir = tokio::process::Command::new(std::env::current_exe()?)
        .args(["bench", "online", "--serve"])
        .arg(&store_dir)
        .args(["--listen", &weir_address.to_string()])
        .stdout(Stdio::null())
        .spawn_group()?;
    let mut servers = vec![("weir (RocksDB, axum)", weir, weir_address)];
    if !args.no_feast {
        let python = PathBuf::from(std::env::var_os("WEIR_PYTHON").context(
            "WEIR_PYTHON is not set: run `cargo xtask bench online` (its Python environment has Feast), or pass --no-feast",
        )?);
        let repo = dir.join("feast");
        let status = tokio::process::Command::new(&python)
            .arg(
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../../python/bench/feast_online.py"),
            )
            .arg(&repo)
            .arg(args.entities.to_string())
            .stdout(Stdio::null())
            .status()
            .await?;
        if !status.success() {
            bail!("setting up Feast's repository failed ({status})");
        }
        let address = free_port()?;
        let feast = tokio::process::Command::new(python.with_file_name("feast"))
            .args([
                "serve",
                "-h",
                "127.0.0.1",
                "-p",
                &address.port().to_string(),
            ])
            // Its gunicorn restarts a worker every ~1,000 requests by
            // default, dropping the connections: not in a benchmark.
            .args(["--no-access-log", "--max-requests", "100000000"])
            .current_dir(&repo)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn_group()?;
        servers.push(("feast serve (SQLite, Python)", feast, address));
    }
    for (name, server, address) in &mut servers {
        let deadline = Instant::now() + Duration::from_secs(120);
        while tokio::net::TcpStream::connect(*address).await.is_err() {
            if let Some(status) = server.try_wait()? {
                bail!("{name} exited with {status}");
            }
            if Instant::now() > deadline {
                bail!("{name} does not listen on {address}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The same question, the same answer (values by feature, in the
    // request's order of users).
    let probe = body(3, 50, args.entities);
    let mut answers = Vec::new();
    for (name, _, address) in &servers {
        let mut connection =
            weir_serve::client::Connection::open(*address, "/get-online-features").await?;
        let (status, response) = connection.post(&probe).await?;
        if status != 200 {
            bail!(
                "{name}: HTTP {status}: {}",
                String::from_utf8_lossy(&response)
            );
        }
        answers.push(values_by_feature(&serde_json::from_slice(&response)?));
    }
    if answers.len() == 2 {
        if answers[0] != answers[1] {
            bail!(
                "the servers disagree:\nweir:  {:?}\nfeast: {:?}",
                answers[0],
                answers[1]
            );
        }
        println!(
            "both servers give the same {FEATURES} features × 50 users for the probe request\n"
        );
    }
    println!(
        "{:<30} {:>9} {:>6} {:>10} {:>9} {:>9} {:>10}",
        "", "users/req", "conns", "req/s", "p50 ms", "p99 ms", "peak RSS"
    );
    let mut figures = HashMap::new();
    for per_request in [1, 50] {
        for &connections in &args.concurrency {
            for (name, server, address) in &servers {
                let bodies: Vec<Vec<u8>> = (0..connections)
                    .map(|c| body(c * 101, per_request, args.entities))
                    .collect();
                let pid = server.id().context("no pid")?;
                let (rate, latency) = load(*address, bodies, args.duration).await?;
                println!(
                    "{name:<30} {per_request:>9} {connections:>6} {rate:>10.0} {:>9.3} {:>9.3} {:>6.0} MiB",
                    latency.value_at_quantile(0.5) as f64 / 1000.0,
                    latency.value_at_quantile(0.99) as f64 / 1000.0,
                    peak_rss_mib(pid).unwrap_or(f64::NAN)
                );
                figures.insert((*name, per_request, connections), rate);
            }
        }
    }
    if servers.len() == 2 {
        let (weir, feast) = (servers[0].0, servers[1].0);
        for per_request in [1, 50] {
            let ratios: Vec<String> = args
                .concurrency
                .iter()
                .map(|c| {
                    format!(
                        "{c} conns {:.1}x",
                        figures[&(weir, per_request, *c)] / figures[&(feast, per_request, *c)]
                    )
                })
                .collect();
            println!(
                "weir / feast throughput, {per_request} users a request: {} (target >= 10x; p99 target <= 1 ms for 1 user)",
                ratios.join(", ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `{feature: [values…]}` from Feast's column-major response.
fn values_by_feature(response: &Json) -> Vec<(String, Vec<Json>)> {
    let names = response["metadata"]["feature_names"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let results = response["results"].as_array().cloned().unwrap_or_default();
    let mut out: Vec<(String, Vec<Json>)> = names
        .iter()
        .zip(results)
        .map(|(name, result)| {
            let name = name.as_str().unwrap_or_default();
            // `users__f0` or `f0`, as full_feature_names says.
            let short = name.rsplit("__").next().unwrap_or(name).to_string();
            (
                short,
                result["values"].as_array().cloned().unwrap_or_default(),
            )
        })
        .filter(|(name, _)| name != "user_id")
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Closed-loop load on the Feast route (see [`weir_serve::client::load`]).
async fn load(
    address: SocketAddr,
    bodies: Vec<Vec<u8>>,
    duration: Duration,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let load = weir_serve::client::load(address, "/get-online-features", bodies, duration).await?;
    if load.failed > 0 {
        bail!("{} requests failed", load.failed);
    }
    Ok((load.rate, load.latency))
}
