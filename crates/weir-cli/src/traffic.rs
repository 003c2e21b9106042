//! `weir traffic`: online experiments on a deployment's traffic (canary,
//! sticky A/B, bandit, a mirror) — apply a spec, list, describe, stop,
//! promote, run a bandit's allocator job and an experiment's analysis
//! job, and report where the candidates stand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use weir_broker::connect::connect;
use weir_core::Config;
use weir_serve::routing::{Routing, Sticky};
use weir_traffic::experiments;
use weir_traffic::spec::ExperimentSpec;

#[derive(Parser)]
pub struct TrafficArgs {
    #[command(subcommand)]
    command: TrafficCommand,
}

#[derive(Subcommand)]
enum TrafficCommand {
    /// Check an experiment spec (YAML, see docs/experiments.md) against
    /// the registry and route its deployment's traffic by it; serving
    /// applies it without a restart.
    Apply {
        /// The spec.
        spec: PathBuf,
    },
    /// Every experiment, by deployment, with its latest version.
    List,
    /// One experiment: its candidates pinned to versions, their shares,
    /// its mirror and how it routes.
    Describe {
        /// The experiment.
        name: String,
    },
    /// Stop an experiment: its deployment serves its own model again.
    Stop {
        /// The experiment.
        name: String,
    },
    /// Promote a candidate: move the alias the deployment serves to its
    /// version and stop the experiment; serving swaps without a restart.
    Promote {
        /// The experiment.
        name: String,
        /// The candidate (a registry reference); needed only when more
        /// than one candidate is not the default.
        candidate: Option<String>,
    },
    /// Run a bandit experiment's allocator: a dataflow job that joins the
    /// deployment's feedback with its log and publishes new weights from
    /// the rewards, until Ctrl-C (which checkpoints; the next run resumes
    /// there) or the experiment ends.
    Allocate {
        /// The experiment's spec (its policy and reward settings).
        spec: PathBuf,
        #[command(flatten)]
        job: JobArgs,
    },
    /// Run an experiment's analysis: a dataflow job that compares each
    /// candidate with the default on the rewards, with a sequential test
    /// that may be read at any time, into weir.analysis.<deployment>
    /// (`weir traffic report` reads it); runs as `allocate` does.
    Analyze {
        /// The experiment's spec (its analysis and reward settings).
        spec: PathBuf,
        #[command(flatten)]
        job: JobArgs,
    },
    /// Where each candidate stands against the default, from the latest
    /// analysis; `--html` writes the report with its plots.
    Report {
        /// The experiment.
        name: String,
        /// Also write the report as HTML here.
        #[arg(long)]
        html: Option<PathBuf>,
    },
}

/// How an experiment's job runs.
#[derive(clap::Args)]
struct JobArgs {
    /// Stop at the end of what the feedback and log topics hold now.
    #[arg(long)]
    bounded: bool,
    /// Worker threads.
    #[arg(short = 'w', long, default_value_t = 1)]
    threads: usize,
    /// How often its state and offsets are checkpointed.
    #[arg(long, value_parser = weir_dataflow::spec::parse_duration, default_value = "1s")]
    checkpoint_every: Duration,
    /// Print the job's status as JSON lines this often (when not on a
    /// terminal, or with `--json`).
    #[arg(long, value_parser = weir_dataflow::spec::parse_duration, default_value = "5s")]
    status_every: Duration,
    /// JSON status lines, also on a terminal.
    #[arg(long)]
    json: bool,
}

fn shares(routing: &Routing) -> String {
    routing
        .candidates
        .iter()
        .zip(routing.shares())
        .map(|(c, share)| format!("{} {:.1}%", c.model, share * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn run(config: &Config, args: TrafficArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TrafficCommand::Allocate { spec, job } => {
            return run_job(config, &spec, Job::Allocator, job).await;
        }
        TrafficCommand::Analyze { spec, job } => {
            return run_job(config, &spec, Job::Analysis, job).await;
        }
        _ => {}
    }
    // A bad spec is refused before anything is connected to.
    let spec = match &args.command {
        TrafficCommand::Apply { spec } => {
            Some((ExperimentSpec::read(spec)?, spec.display().to_string()))
        }
        _ => None,
    };
    let connection = connect(config).await?;
    let store = config.state_dir.join(crate::server::STORE_DIR);
    let result = async {
        let state = weir_meta::tracker::replay_with_store(&connection.bus, &store).await?;
        let bus = &connection.bus;
        match args.command {
            TrafficCommand::Apply { .. } => {
                let (spec, origin) = spec.expect("read above");
                let tracker = weir_meta::Tracker::open_under(bus, &config.state_dir).await?;
                let applied = experiments::apply(bus, &tracker, &spec, &origin).await?;
                tracker.close().await;
                let routing = &applied.routing;
                if applied.new {
                    println!(
                        "experiment {} v{} on {}: {}",
                        routing.experiment,
                        routing.version,
                        spec.deployment,
                        shares(routing)
                    );
                } else {
                    println!(
                        "experiment {} v{} on {}: unchanged",
                        routing.experiment, routing.version, spec.deployment
                    );
                }
            }
            TrafficCommand::List => {
                let mut rows = vec![[
                    "experiment".to_string(),
                    "deployment".into(),
                    "version".into(),
                    "state".into(),
                    "candidates".into(),
                ]];
                for e in experiments::list(bus, &state).await? {
                    rows.push([
                        e.routing.experiment.clone(),
                        e.deployment.clone(),
                        e.routing.version.to_string(),
                        if e.running() { "running" } else { "stopped" }.into(),
                        shares(&e.routing),
                    ]);
                }
                crate::features::print_rows(&rows);
            }
            TrafficCommand::Describe { name } => {
                let e = experiments::find(bus, &state, &name).await?;
                let r = &e.routing;
                println!(
                    "experiment {} v{} ({}) on {}, {:?}, since {}",
                    r.experiment,
                    r.version,
                    if e.running() { "running" } else { "stopped" },
                    e.deployment,
                    r.kind,
                    weir_features::online::rfc3339(Some(r.at))
                );
                println!("candidates");
                for (c, share) in r.candidates.iter().zip(r.shares()) {
                    let default = if c.model == r.default {
                        " (default)"
                    } else {
                        ""
                    };
                    println!(
                        "  {} weight {} share {:.1}%{default}",
                        c.model,
                        c.weight,
                        share * 100.0
                    );
                }
                if let Some(mirror) = &r.mirror {
                    println!("mirror\n  {} {}% of requests", mirror.model, mirror.percent);
                }
                match &r.sticky {
                    Some(Sticky::Key(column)) => println!("sticky by the input `{column}`"),
                    Some(Sticky::Header(name)) => println!("sticky by the header `{name}`"),
                    None => println!("routed at random"),
                }
            }
            TrafficCommand::Promote { name, candidate } => {
                let tracker = weir_meta::Tracker::open_under(bus, &config.state_dir).await?;
                let promoted =
                    experiments::promote(bus, &tracker, &name, candidate.as_deref()).await;
                tracker.close().await;
                let p = promoted?;
                let from = p.from.map_or("nothing".to_string(), |v| format!("version {v}"));
                println!(
                    "{} moved from {from} to version {}; experiment {} v{} stopped: `{}` serves {} as its own model",
                    p.alias, p.to, p.routing.experiment, p.routing.version, p.deployment, p.alias
                );
            }
            TrafficCommand::Allocate { .. } | TrafficCommand::Analyze { .. } => {
                unreachable!("handled above")
            }
            TrafficCommand::Report { name, html } => {
                let e = experiments::find(bus, &state, &name).await?;
                let rows =
                    weir_traffic::analysis::read(bus, &e.deployment, &name, e.applied.version)
                        .await?;
                println!(
                    "experiment {} v{} ({}) on {}",
                    name,
                    e.applied.version,
                    if e.running() { "running" } else { "stopped" },
                    e.deployment
                );
                match rows.last() {
                    None => println!(
                        "no analysis yet: run `weir traffic analyze` with the experiment's spec"
                    ),
                    Some(last) => {
                        println!(
                            "as of {} ({} feedback records met no request)",
                            weir_features::online::rfc3339(Some(last.at)),
                            last.unmatched
                        );
                        crate::features::print_rows(&weir_traffic::report::table(
                            &e.applied, &rows,
                        ));
                    }
                }
                let guarded = weir_traffic::guardrails::read(
                    bus,
                    &e.deployment,
                    &name,
                    e.applied.version,
                )
                .await?;
                if !guarded.is_empty() {
                    println!("guardrails");
                    crate::features::print_rows(&weir_traffic::report::guardrail_table(
                        &e.applied, &guarded,
                    ));
                }
                if let Some(path) = html {
                    let (history, _) = weir_serve::control::history(bus, &e.deployment).await?;
                    let history: Vec<Routing> = history
                        .into_iter()
                        .filter(|h| h.experiment == name && h.version >= e.applied.version)
                        .collect();
                    std::fs::write(
                        &path,
                        weir_traffic::report::html(&e.applied, &history, &rows),
                    )?;
                    println!("report written to {}", path.display());
                }
            }
            TrafficCommand::Stop { name } => match experiments::stop(bus, &state, &name).await? {
                Some((deployment, r)) => println!(
                    "experiment {} v{} stopped: `{deployment}` serves its own model ({}) again",
                    r.experiment, r.version, r.default
                ),
                None => println!("experiment {name} had stopped already"),
            },
        }
        anyhow::Ok(())
    }
    .await;
    connection.close().await;
    result?;
    Ok(ExitCode::SUCCESS)
}

/// An experiment's jobs.
#[derive(Clone, Copy)]
enum Job {
    Allocator,
    Analysis,
}

/// `weir traffic allocate` and `analyze`: the experiment's job, supervised
/// as `weir job run` supervises a job, until Ctrl-C or the experiment ends.
async fn run_job(
    config: &Config,
    file: &std::path::Path,
    which: Job,
    args: JobArgs,
) -> anyhow::Result<ExitCode> {
    let spec = ExperimentSpec::read(file)?;
    let running = weir_traffic::rewards::Running {
        state_dir: config.state_dir.join("jobs"),
        bounded: args.bounded,
        checkpoint_every: args.checkpoint_every,
        cluster: weir_dataflow::job::Cluster::local(args.threads),
    };
    let connection = connect(config).await?;
    let bus = &connection.bus;
    let started = match which {
        Job::Allocator => weir_traffic::allocator::start(bus, &spec, running.clone()).await,
        Job::Analysis => weir_traffic::analysis::start(bus, &spec, running.clone()).await,
    };
    // An analysis runs the experiment's guardrails beside it.
    let guarded = match (&started, which, &spec.guardrails) {
        (Ok(_), Job::Analysis, Some(_)) => {
            Some(weir_traffic::guardrails::start(bus, &spec, running).await)
        }
        _ => None,
    };
    let (started, guardian) = match (started, guarded.transpose()) {
        (Ok(started), Ok(guardian)) => (started, guardian),
        (Err(error), _) | (_, Err(error)) => {
            connection.close().await;
            return Err(error.into());
        }
    };
    let name = started.name;
    let (what, topic) = match which {
        Job::Allocator => ("allocator", weir_core::topics::control(&spec.deployment)),
        Job::Analysis => ("analysis", weir_core::topics::analysis(&spec.deployment)),
    };
    eprintln!(
        "{what} `{name}` of experiment `{}` running on {}: results to {topic}",
        spec.name, connection.description
    );
    let mut jobs = vec![(name, started.job)];
    if let Some(guardian) = guardian {
        eprintln!(
            "guardrails `{}` running: results to {}",
            guardian.name,
            weir_core::topics::guardrails(&spec.deployment)
        );
        jobs.push((guardian.name, guardian.job));
    }
    let output = crate::job::StatusOutput::new(args.status_every, args.json);
    // An analysis with decision rules or guardrails carries its decision
    // out as soon as it is made; the experiment then stops, and so do the
    // jobs.
    let decides = spec.decision.is_some() || spec.guardrails.is_some();
    let tracker = match which {
        Job::Analysis if decides => {
            Some(weir_meta::Tracker::open_under(bus, &config.state_dir).await?)
        }
        _ => None,
    };
    let version = started.version;
    // Set once the jobs are over: the decisions then take a last look.
    let ended = std::sync::atomic::AtomicBool::new(false);
    let decided_now = tokio::sync::Notify::new();
    let decisions = async {
        let tracker = tracker.as_ref()?;
        let decided = weir_traffic::decide::follow(bus, tracker, &spec, version, &ended).await;
        if decided.is_some() {
            decided_now.notify_one();
        }
        decided
    };
    // The experiment stopped or was applied again (a decision carried out
    // stops it too): what the jobs compute would be about an experiment
    // that no longer runs.
    let superseded = async {
        match started.superseded.await {
            Ok(()) => eprintln!(
                "experiment `{}` stopped or was applied again: the {what} stops",
                spec.name
            ),
            Err(error) => {
                tracing::warn!(%error, "following the control topic failed");
                std::future::pending::<()>().await;
            }
        }
    };
    let stop = async {
        tokio::select! {
            () = superseded => {}
            () = decided_now.notified() => {}
        }
    };
    // The decisions run beside the jobs, not under their stop: one under
    // way when the jobs end finishes (its record on weir.meta).
    let supervised = async {
        let statuses = crate::job::supervise_until(jobs, output, stop).await;
        ended.store(true, std::sync::atomic::Ordering::SeqCst);
        statuses
    };
    let (statuses, decided) = tokio::join!(supervised, decisions);
    if let Some(decided) = decided {
        println!(
            "decided: {} (run {} of `{}` on weir.meta)",
            decided.outcome,
            decided.run_id,
            weir_traffic::TRACKING_EXPERIMENT
        );
    }
    if let Some(tracker) = tracker {
        tracker.close().await;
    }
    connection.close().await;
    if output.live {
        for (name, status) in statuses? {
            println!("{}", crate::job::status_line(&name, &status)?);
        }
    } else {
        statuses?;
    }
    Ok(ExitCode::SUCCESS)
}
