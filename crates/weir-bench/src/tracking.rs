//! `weir bench tracking`: the same MLflow client workload
//! (`python/bench/mlflow_tracking.py`: runs × 10 params × 20 metrics × 10
//! steps by `log_batch`, then `search_runs` with a filter and an order_by)
//! against `weir server` and against `mlflow server` with its SQLite
//! backend, one after the other on this machine; both servers durable on
//! local disk, each in its own processes, whose peak RSS is sampled. The
//! two servers' search results must be the same.
//!
//! Each server gets the workload twice: through the official client, and
//! as the same requests over plain HTTP — the client's own cost per call
//! (protobuf messages, entity objects) is a floor under both servers'
//! figures, and the plain-HTTP pass shows what is left without it.
//!
//! A server that does no work (canned answers) gets the same two passes:
//! its times are the client's own cost, and so the most any server can be
//! faster than MLflow's through that client.
//!
//! Then each server is stopped (SIGINT) and started again on what it
//! wrote, timed until it accepts connections: Weir from its query store,
//! and Weir rebuilding the store from the whole of `weir.meta`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::free_port;
use crate::hop::peak_rss_mib;

#[derive(clap::Args)]
pub struct Args {
    /// Runs to log.
    #[arg(long, default_value_t = 1000)]
    runs: usize,
    /// Searches to time after logging.
    #[arg(long, default_value_t = 100)]
    searches: usize,
    /// Skip MLflow.
    #[arg(long)]
    no_mlflow: bool,
}

/// What one server did.
struct Figures {
    log_seconds: f64,
    search_seconds: f64,
    peak_rss_mib: f64,
    digest: String,
    matched: u64,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let python = PathBuf::from(std::env::var_os("WEIR_PYTHON").context(
        "WEIR_PYTHON is not set: run `cargo xtask bench tracking` (its Python environment has mlflow)",
    )?);
    println!(
        "weir bench tracking: {} runs × 10 params × 20 metrics × 10 steps by log_batch, then {} filtered, ordered search_runs; the official mlflow client (one process) against each server",
        args.runs, args.searches
    );
    // The embedded broker's SQLite file must sit under the working
    // directory (libsql's URL rules): a state directory named here.
    let state = PathBuf::from(format!(".weir-bench-tracking-{}", std::process::id()));
    let weir = {
        let address = free_port()?;
        let exe = std::env::current_exe()?;
        let command = |extra: &[&str]| -> anyhow::Result<tokio::process::Command> {
            let mut command = tokio::process::Command::new(&exe);
            command
                .args(["server", "--listen", &address.to_string()])
                .args(extra)
                .env("WEIR_STATE_DIR", &state)
                .env("WEIR_EMBEDDED_BROKER", free_port()?.to_string())
                .env_remove("WEIR_BROKERS");
            Ok(command)
        };
        let restarts: &[(&str, &[&str])] = &[
            ("weir server, from its query store", &[]),
            ("weir server, store rebuilt from the log", &["--rebuild"]),
        ];
        let figures = both_ways(&python, &command, address, &args, restarts).await;
        let _ = std::fs::remove_dir_all(&state);
        figures.context("weir server")?
    };
    // The no-op server's searches answer as many runs as Weir's did, on
    // average.
    let page_runs = (weir.0.matched as f64 / args.searches.max(1) as f64).round() as usize;
    let floor = canned_floor(&python, &args, page_runs).await?;
    report_header();
    report("weir server, mlflow client", &weir.0, &args);
    report("weir server, plain HTTP", &weir.1, &args);
    report("no-op server, mlflow client", &floor.0, &args);
    report("no-op server, plain HTTP", &floor.1, &args);
    if args.no_mlflow {
        report_restarts(&weir.2);
        return Ok(ExitCode::SUCCESS);
    }
    let dir = std::env::temp_dir().join(format!("weir-bench-mlflow-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mlflow = {
        let address = free_port()?;
        let command = |_: &[&str]| -> anyhow::Result<tokio::process::Command> {
            let mut command = tokio::process::Command::new(python.with_file_name("mlflow"));
            command
                .args([
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &address.port().to_string(),
                ])
                .arg("--backend-store-uri")
                .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
                .args(["--workers", "1", "--artifacts-destination"])
                .arg(dir.join("artifacts"));
            Ok(command)
        };
        let restarts: &[(&str, &[&str])] = &[("mlflow server (SQLite)", &[])];
        let figures = both_ways(&python, &command, address, &args, restarts).await;
        let _ = std::fs::remove_dir_all(&dir);
        figures.context("mlflow server")?
    };
    report("mlflow server (SQLite), mlflow client", &mlflow.0, &args);
    report("mlflow server (SQLite), plain HTTP", &mlflow.1, &args);
    for (how, weir, mlflow) in [
        ("mlflow client", &weir.0, &mlflow.0),
        ("plain HTTP", &weir.1, &mlflow.1),
    ] {
        println!(
            "weir / mlflow, {how}: logging {:.1}x, search {:.1}x faster (target >= 10x); search results {}",
            mlflow.log_seconds / weir.log_seconds,
            mlflow.search_seconds / weir.search_seconds,
            if weir.digest == mlflow.digest && weir.matched == mlflow.matched {
                format!("identical ({} runs matched)", weir.matched)
            } else {
                format!(
                    "DIFFER (weir {} runs, mlflow {})",
                    weir.matched, mlflow.matched
                )
            }
        );
    }
    println!(
        "peak RSS of the server's processes: weir {:.0} MiB (broker included), mlflow {:.0} MiB",
        weir.0.peak_rss_mib.max(weir.1.peak_rss_mib),
        mlflow.0.peak_rss_mib.max(mlflow.1.peak_rss_mib)
    );
    println!(
        "the most any server can be faster than mlflow's through the mlflow client (a no-op server's times): logging {:.1}x, search {:.1}x; weir reaches {:.0}% and {:.0}% of that",
        mlflow.0.log_seconds / floor.0.log_seconds,
        mlflow.0.search_seconds / floor.0.search_seconds,
        100.0 * floor.0.log_seconds / weir.0.log_seconds,
        100.0 * floor.0.search_seconds / weir.0.search_seconds,
    );
    report_restarts(&[weir.2, mlflow.2].concat());
    Ok(ExitCode::SUCCESS)
}

/// The workload, through the client and over plain HTTP, against a server
/// that does no work ([`serve_canned`]): the client's own cost.
async fn canned_floor(
    python: &Path,
    args: &Args,
    page_runs: usize,
) -> anyhow::Result<(Figures, Figures)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server = tokio::spawn(serve_canned(listener, page_runs));
    let pid = std::process::id();
    let client = workload(python, pid, address, args, "client").await;
    let http = workload(python, pid, address, args, "http").await;
    server.abort();
    let no_rss = |figures: Figures| Figures {
        peak_rss_mib: f64::NAN,
        ..figures
    };
    Ok((
        no_rss(client.context("the no-op server, mlflow client")?),
        no_rss(http.context("the no-op server, plain HTTP")?),
    ))
}

fn report_restarts(restarts: &[(String, f64)]) {
    println!("\nrestart on what the workloads wrote, until it accepts connections:");
    for (name, seconds) in restarts {
        println!("{name:<40} {seconds:>9.2} s");
    }
}

/// A server's restarts: what each was, and its seconds until it accepted
/// connections.
type Restarts = Vec<(String, f64)>;

/// Starts a server (`command` with no extra arguments), runs the workload
/// through the client, then over plain HTTP, and stops it; then starts
/// and stops it once per entry of `restarts` (a name, extra arguments).
async fn both_ways(
    python: &Path,
    command: &dyn Fn(&[&str]) -> anyhow::Result<tokio::process::Command>,
    address: SocketAddr,
    args: &Args,
    restarts: &[(&str, &[&str])],
) -> anyhow::Result<(Figures, Figures, Restarts)> {
    let (mut server, _) = crate::start_listening(command(&[])?, address).await?;
    let pid = server.id().context("the server has no pid")?;
    let client = workload(python, pid, address, args, "client").await;
    let http = workload(python, pid, address, args, "http").await;
    stop(&mut server).await;
    let (client, http) = (client?, http?);
    let mut timed = Vec::new();
    for (name, extra) in restarts {
        let (mut server, seconds) = crate::start_listening(command(extra)?, address).await?;
        stop(&mut server).await;
        timed.push((name.to_string(), seconds));
    }
    Ok((client, http, timed))
}

/// Stops a server as Ctrl-C would (it saves and closes), killing it if it
/// has not exited after a minute.
async fn stop(server: &mut crate::Group) {
    if let Some(pid) = server.id() {
        let _ = tokio::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(60), server.wait())
        .await
        .is_err()
    {
        let _ = server.kill().await;
    }
}

fn report_header() {
    println!(
        "\n{:<40} {:>9} {:>8} {:>11} {:>10} {:>10}",
        "", "log (s)", "runs/s", "search (s)", "ms/search", "peak RSS"
    );
}

fn report(name: &str, figures: &Figures, args: &Args) {
    let (runs, searches) = (args.runs, args.searches);
    let rss = if figures.peak_rss_mib.is_nan() {
        "-".to_string()
    } else {
        format!("{:.0} MiB", figures.peak_rss_mib)
    };
    println!(
        "{name:<40} {:>9.2} {:>8.1} {:>11.2} {:>10.1} {rss:>10}",
        figures.log_seconds,
        runs as f64 / figures.log_seconds,
        figures.search_seconds,
        figures.search_seconds * 1000.0 / searches as f64,
    );
}

/// Runs the workload against the server at `address` (`mode`: `client` or
/// `http`) while sampling the peak RSS of its process tree.
async fn workload(
    python: &Path,
    pid: u32,
    address: SocketAddr,
    args: &Args,
    mode: &str,
) -> anyhow::Result<Figures> {
    let mut client = tokio::process::Command::new(python)
        .arg(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../python/bench/mlflow_tracking.py"),
        )
        .arg(format!("http://{address}"))
        .args([
            args.runs.to_string(),
            args.searches.to_string(),
            mode.to_string(),
        ])
        .env("MLFLOW_DISABLE_TELEMETRY", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut stdout = client.stdout.take().context("the client's stdout")?;
    let reading = tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        let mut bytes = Vec::new();
        stdout.read_to_end(&mut bytes).await.map(|_| bytes)
    });
    let mut peak: f64 = 0.0;
    let status = loop {
        peak = peak.max(tree_peak_rss_mib(pid));
        tokio::select! {
            status = client.wait() => break status?,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    };
    if !status.success() {
        bail!("the {mode} workload failed ({status})");
    }
    let output = reading.await??;
    let report: serde_json::Value = String::from_utf8_lossy(&output)
        .lines()
        .find_map(|line| serde_json::from_str(line).ok())
        .context("the workload printed no report")?;
    Ok(Figures {
        log_seconds: report["log_seconds"].as_f64().unwrap_or(f64::NAN),
        search_seconds: report["search_seconds"].as_f64().unwrap_or(f64::NAN),
        peak_rss_mib: peak,
        digest: report["digest"].as_str().unwrap_or_default().to_string(),
        matched: report["matched"].as_u64().unwrap_or(0),
    })
}

/// The peak RSS of a process and its descendants, summed (MLflow's server
/// is a launcher with a worker process under it). A sum of peaks can only
/// overstate the peak of the sum, for both servers alike.
fn tree_peak_rss_mib(root: u32) -> f64 {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // `pid (name) state ppid …`: the name may hold spaces.
            let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            if let Some(ppid) = after_name
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
            {
                parents.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    tree.iter().filter_map(|pid| peak_rss_mib(*pid)).sum()
}

/// A server of the MLflow calls the workload makes that does no work: each
/// answer is made up at once (runs are not kept; a search answers the same
/// page of `page_runs` runs shaped like the workload's, 20 metrics and 10
/// params each). The workload against it measures the client's own cost, which
/// bounds the ratio any server can reach through that client.
async fn serve_canned(listener: tokio::net::TcpListener, page_runs: usize) -> anyhow::Result<()> {
    // Every handler reads the request's body: hyper closes a connection
    // whose body was left unread, which the client sees as a reset.
    use axum::Json;
    use axum::body::Bytes;
    use axum::routing::post;
    use serde_json::{Value, json};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn info(run_id: &str, name: &str, start: i64, status: &str) -> Value {
        json!({
            "run_id": run_id, "run_uuid": run_id, "run_name": name,
            "experiment_id": "1", "user_id": "", "status": status,
            "start_time": start, "end_time": start + 1000,
            "artifact_uri": format!("mlflow-artifacts:/1/{run_id}/artifacts"),
            "lifecycle_stage": "active",
        })
    }
    let page: Arc<Value> = Arc::new(json!({
        "runs": (0..page_runs as i64).map(|i| {
            let run_id = format!("{i:032x}");
            json!({
                "info": info(&run_id, &format!("run-{i:05}"), 1_700_000_000_000 + i, "FINISHED"),
                "data": {
                    "metrics": (0..20).map(|k| json!({"key": format!("m{k}"), "value": f64::from(k) / 20.0, "timestamp": 1_700_000_000_009_i64 + i, "step": 9})).collect::<Vec<_>>(),
                    "params": (0..10).map(|j| json!({"key": format!("p{j}"), "value": ((i + j) % 5).to_string()})).collect::<Vec<_>>(),
                    "tags": [{"key": "mlflow.runName", "value": format!("run-{i:05}")}],
                },
                "inputs": {},
            })
        }).collect::<Vec<_>>(),
    }));
    let runs = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new()
        .route(
            "/api/2.0/mlflow/experiments/create",
            post(|_: Bytes| async { Json(json!({"experiment_id": "1"})) }),
        )
        .route(
            "/api/2.0/mlflow/runs/create",
            post(move |Json(body): Json<Value>| async move {
                let run_id = format!("{:032x}", runs.fetch_add(1, Ordering::Relaxed));
                let name = body["run_name"].as_str().unwrap_or_default();
                let start = body["start_time"].as_i64().unwrap_or_default();
                Json(json!({"run": {"info": info(&run_id, name, start, "RUNNING"), "data": {}, "inputs": {}}}))
            }),
        )
        .route(
            // The client reads the run before it terminates it.
            "/api/2.0/mlflow/runs/get",
            axum::routing::get(
                |axum::extract::Query(query): axum::extract::Query<
                    std::collections::HashMap<String, String>,
                >| async move {
                    let run_id = query.get("run_id").map_or("", String::as_str);
                    Json(json!({"run": {"info": info(run_id, "", 0, "RUNNING"), "data": {}, "inputs": {}}}))
                },
            ),
        )
        .route(
            "/api/2.0/mlflow/runs/log-batch",
            post(|_: Bytes| async { Json(json!({})) }),
        )
        .route(
            "/api/2.0/mlflow/runs/update",
            post(|Json(body): Json<Value>| async move {
                let run_id = body["run_id"].as_str().unwrap_or_default();
                Json(json!({"run_info": info(run_id, "", 0, "FINISHED")}))
            }),
        )
        .route(
            "/api/2.0/mlflow/runs/search",
            post(move |_: Bytes| {
                let page = page.clone();
                async move { Json(page.as_ref().clone()) }
            }),
        );
    axum::serve(listener, app).await?;
    Ok(())
}
