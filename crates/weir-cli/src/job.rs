//! `weir job run`: a streaming job from a TOML file (see
//! `weir_dataflow::spec`) on this process's workers, or as one process of a
//! timely cluster.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use weir_core::Config;
use weir_dataflow::job::{Cluster, JobHandle, Status, start};

use crate::connect::connect;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Run a job until its bounded source ends or Ctrl-C (which checkpoints
    /// and stops; the next run resumes exactly there).
    Run {
        /// The job file (TOML).
        file: PathBuf,
        /// Worker threads in this process.
        #[arg(short = 'w', long, default_value_t = 1)]
        threads: usize,
        /// This process's index in `--hosts`.
        #[arg(short = 'p', long, default_value_t = 0)]
        process: usize,
        /// `host:port` of every process of a timely cluster, comma-separated.
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        /// Print the job's status this often.
        #[arg(long, value_parser = weir_dataflow::spec::parse_duration, default_value = "5s")]
        status_every: Duration,
    },
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let Command::Run {
        file,
        threads,
        process,
        hosts,
        status_every,
    } = args.command;
    let spec = weir_dataflow::spec::load(&file, &config.state_dir.join("jobs"))?;
    let name = spec.name.clone();
    let connection = connect(config).await?;
    let cluster = Cluster {
        threads,
        process,
        addresses: hosts,
    };
    let handle = start(spec, &connection.bus, cluster)
        .await
        .with_context(|| format!("starting job `{name}`"))?;
    eprintln!("job `{name}` running on {}", connection.description);
    let statuses = supervise(vec![(name, handle)], status_every).await?;
    for (_, status) in statuses {
        println!("{}", serde_json::to_string(&status)?);
    }
    connection.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Runs jobs until they end or Ctrl-C (which checkpoints and stops them),
/// printing their status every `status_every`; returns their last status.
pub async fn supervise(
    jobs: Vec<(String, JobHandle)>,
    status_every: Duration,
) -> anyhow::Result<Vec<(String, Status)>> {
    let jobs = std::sync::Arc::new(std::sync::Mutex::new(jobs));
    let finished = {
        let jobs = jobs.clone();
        tokio::task::spawn_blocking(move || {
            loop {
                let done = jobs
                    .lock()
                    .expect("jobs")
                    .iter()
                    .all(|(_, h)| h.is_finished());
                if done {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    tokio::pin!(finished);
    let mut ticker = tokio::time::interval(status_every);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = &mut finished => break,
            _ = ticker.tick() => {
                for (name, handle) in jobs.lock().expect("jobs").iter() {
                    eprintln!("{name}: {}", serde_json::to_string(&handle.status())?);
                }
            }
            _ = tokio::signal::ctrl_c() => {
                eprintln!("stopping: checkpointing");
                for (_, handle) in jobs.lock().expect("jobs").iter() {
                    handle.stop();
                }
            }
        }
    }
    let jobs = std::mem::take(&mut *jobs.lock().expect("jobs"));
    let mut statuses = Vec::new();
    for (name, handle) in jobs {
        let status = tokio::task::spawn_blocking(move || handle.join())
            .await?
            .with_context(|| format!("job `{name}`"))?;
        statuses.push((name, status));
    }
    Ok(statuses)
}
