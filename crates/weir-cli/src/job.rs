//! `weir job run`: a streaming job from a TOML file (see
//! `weir_dataflow::spec`) on this process's workers, or as one process of a
//! timely cluster.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use weir_core::Config;
use weir_dataflow::job::{Cluster, JobHandle, Status, start};

use crate::job_status::LiveStatus;
use weir_broker::connect::connect;

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
        /// Print the job's status as JSON lines this often (when not on a
        /// terminal, or with `--json`).
        #[arg(long, value_parser = weir_dataflow::spec::parse_duration, default_value = "5s")]
        status_every: Duration,
        /// JSON status lines, also on a terminal.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let Command::Run {
        file,
        threads,
        process,
        hosts,
        status_every,
        json,
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
    let output = StatusOutput::new(status_every, json);
    let statuses = supervise(vec![(name, handle)], output).await?;
    if output.live {
        // JSON lines end with the last status already.
        for (name, status) in statuses {
            println!("{}", status_line(&name, &status)?);
        }
    }
    connection.close().await;
    Ok(ExitCode::SUCCESS)
}

/// How a supervisor shows its jobs' status.
#[derive(Debug, Clone, Copy)]
pub struct StatusOutput {
    /// How often a JSON line is printed.
    pub every: Duration,
    /// A live view on stderr rather than JSON lines: stdout is a
    /// terminal and JSON was not asked for.
    pub live: bool,
}

impl StatusOutput {
    /// JSON lines every `every` with `json` or when stdout is not a
    /// terminal; a live view otherwise.
    pub fn new(every: Duration, json: bool) -> Self {
        use std::io::IsTerminal as _;
        Self {
            every,
            live: !json && std::io::stdout().is_terminal(),
        }
    }
}

/// Runs jobs until they end or Ctrl-C (which checkpoints and stops them),
/// showing their status as `output` says; returns their last status.
pub async fn supervise(
    jobs: Vec<(String, JobHandle)>,
    output: StatusOutput,
) -> anyhow::Result<Vec<(String, Status)>> {
    supervise_until(jobs, output, std::future::pending()).await
}

/// [`supervise`], and `until` stops them too, as Ctrl-C does.
pub async fn supervise_until(
    jobs: Vec<(String, JobHandle)>,
    output: StatusOutput,
    until: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Vec<(String, Status)>> {
    let names: Vec<String> = jobs.iter().map(|(name, _)| name.clone()).collect();
    let mut live = if output.live {
        LiveStatus::for_jobs(&names)
    } else {
        Vec::new()
    };
    let mut printed = Ok(());
    let every = if output.live {
        crate::job_status::REDRAW
    } else {
        output.every
    };
    let on_status = |i: usize, name: &str, status: &Status| match live.get_mut(i) {
        Some(line) => line.update(status),
        None => match status_line(name, status) {
            Ok(line) => println!("{line}"),
            Err(error) => printed = Err(error),
        },
    };
    let stop = async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = until => {}
        }
        eprintln!("stopping: checkpointing");
    };
    let statuses = weir_dataflow::supervise::supervise(jobs, every, on_status, stop).await?;
    for line in &mut live {
        line.finish();
    }
    printed?;
    Ok(statuses)
}

/// A job's status as one JSON object, with its name under `job`.
pub fn status_line(name: &str, status: &Status) -> anyhow::Result<String> {
    let mut value = serde_json::to_value(status)?;
    value["job"] = serde_json::Value::String(name.to_string());
    Ok(serde_json::to_string(&value)?)
}
