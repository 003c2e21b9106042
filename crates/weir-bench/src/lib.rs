//! `weir bench`: Weir side by side with a raw baseline (the limit) and the
//! anchor tool in one run, on the same data and machine, reported as
//! ratios. Built in release mode by `cargo xtask bench`. A program rather
//! than a library: it owns its arguments, prints its figures, starts child
//! processes of the `weir` binary it runs in, and fails with `anyhow`
//! errors.

use std::net::SocketAddr;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use weir_broker::EmbeddedBroker;
use weir_core::Config;

mod automl;
mod bus;
mod hop;
mod join;
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
    Bus(bus::Args),
    /// A hopping-window aggregation (1 h every 5 min; count, avg, max per
    /// user) over a pre-loaded topic: a Weir job, a hand-written Rust loop
    /// (the limit) and Quix Streams (the anchor), on the same data.
    Hop(hop::Args),
    /// A stream–stream interval join (1M log records, 1M feedback records,
    /// 90 % matched, out of order): a Weir job, a hand-written Rust loop (the
    /// limit) and Quix Streams' `join_interval` (the anchor).
    Join(join::Args),
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

/// Runs the benchmark `args` name.
pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    match args.what {
        What::Bus(args) => bus::run(config, args).await,
        What::Hop(args) => hop::run(config, args).await,
        What::Join(args) => join::run(config, args).await,
        What::Snapshot(args) => snapshot::run(args).await,
        What::Tracking(args) => tracking::run(args).await,
        What::Online(args) => online::run(args).await,
        What::Automl(args) => automl::run(args).await,
        What::Serve(args) => serve::run(args).await,
    }
}

/// Stops `broker` once the bus clients of this process have gone: one
/// still closing when it stops would log that the broker is down.
pub(crate) async fn stop_broker(broker: EmbeddedBroker) {
    let _ = tokio::task::spawn_blocking(weir_bus::wait_for_dropped_clients).await;
    broker.stop().await;
}

/// The benchmark's broker: the configured Kafka, or an embedded one
/// (memory storage) started in this process, returned to be stopped.
pub(crate) async fn broker(
    config: &weir_core::Config,
) -> anyhow::Result<(String, Option<EmbeddedBroker>)> {
    Ok(match &config.brokers {
        Some(brokers) => (brokers.clone(), None),
        None => {
            let broker = EmbeddedBroker::start_on_free_port(weir_broker::Storage::Memory).await?;
            (broker.bootstrap_servers(), Some(broker))
        }
    })
}

/// Runs an anchor's Python script (`python/bench/<script>`) in the
/// environment `cargo xtask bench` builds, timed from its start to its exit
/// as Weir's child processes are; returns the JSON line it prints, its
/// seconds and its peak RSS.
pub(crate) async fn run_anchor(
    script: &str,
    args: &[String],
) -> anyhow::Result<(serde_json::Value, f64, Option<f64>)> {
    use anyhow::Context as _;
    let python = std::env::var_os("WEIR_PYTHON")
        .map(std::path::PathBuf::from)
        .context("WEIR_PYTHON is not set: run the benchmark with `cargo xtask bench` (it builds the Python environment with the anchors), or pass --no-quix")?;
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../python/bench")
        .join(script);
    let started = std::time::Instant::now();
    let child = tokio::process::Command::new(python)
        .arg(&script)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("no pid")?;
    let (output, rss) = {
        let mut peak = None;
        let wait = child.wait_with_output();
        tokio::pin!(wait);
        loop {
            if let Some(rss) = hop::peak_rss_mib(pid) {
                peak = Some(rss);
            }
            tokio::select! {
                output = &mut wait => break (output?, peak),
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            }
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let report: serde_json::Value = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("{} printed no result ({})", script.display(), output.status))?;
    Ok((report, seconds, rss))
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
