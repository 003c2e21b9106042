//! `weir traffic`: online experiments on a deployment's traffic (canary,
//! sticky A/B, a mirror) — apply a spec, list, describe, stop, promote.

use std::path::PathBuf;
use std::process::ExitCode;

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
                let applied = experiments::apply(bus, &state, &spec, &origin).await?;
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
