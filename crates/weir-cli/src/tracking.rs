//! `weir experiments`, `weir runs` and `weir models`: the metadata on
//! `weir.meta` from the command line, without a server — the state is
//! rebuilt by reading the topic, and changes (an alias) are events on it.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use weir_core::Config;
use weir_meta::state::{Run, State};

use weir_broker::connect::connect;

#[derive(Parser)]
pub struct ExperimentsArgs {
    #[command(subcommand)]
    command: ExperimentsCommand,
}

#[derive(Subcommand)]
enum ExperimentsCommand {
    /// Every active experiment, with its number of runs.
    List,
}

#[derive(Parser)]
pub struct RunsArgs {
    #[command(subcommand)]
    command: RunsCommand,
}

#[derive(Subcommand)]
enum RunsCommand {
    /// The runs of an experiment (by name), newest first.
    List {
        /// The experiment.
        experiment: String,
    },
    /// One run: info, params, latest metrics, tags, inputs.
    Show {
        /// The run id.
        run: String,
    },
    /// Runs side by side: each param and latest metric in a row.
    Compare {
        /// Run ids.
        #[arg(required = true, num_args = 2..)]
        runs: Vec<String>,
        /// Also write an HTML page here: the table, and each metric's
        /// history as a chart, one line per run.
        #[arg(long, value_name = "FILE.html")]
        plot: Option<std::path::PathBuf>,
    },
    /// Run a training run's job again (its job file: same data version,
    /// split and params) as a new run, and compare the metrics.
    Reproduce {
        /// The run id.
        run: String,
        /// How far a metric may move, relative (absolute below 1), before
        /// the run counts as not reproduced (exit status 1).
        #[arg(long, default_value_t = 1e-9)]
        tolerance: f64,
    },
}

#[derive(Parser)]
pub struct ModelsArgs {
    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Registered models, with their versions and aliases.
    List,
    /// One model's versions: stage, source run, aliases.
    Show {
        /// The model.
        name: String,
    },
    /// Point an alias (`champion`) at a version.
    Alias {
        /// The model.
        name: String,
        /// The alias.
        alias: String,
        /// The version.
        #[arg(value_name = "VERSION")]
        number: u64,
    },
    /// Register the model a training run made as a new version.
    Register {
        /// The run id.
        run: String,
        /// The registered model (created if missing).
        name: String,
    },
}

async fn state(config: &Config) -> anyhow::Result<State> {
    let connection = connect(config).await?;
    // A server's query store, when there is one, saves most of the replay.
    let store = config.state_dir.join(crate::server::STORE_DIR);
    let state = weir_meta::tracker::replay_with_store(&connection.bus, &store).await?;
    connection.close().await;
    Ok(state)
}

#[derive(Parser)]
pub struct LineageArgs {
    /// A run id, `model@version`, `model@alias`, `dataset@version` or
    /// `view@version` (or prefixed: `topic:`, `view:`, `dataset:`, `run:`,
    /// `model:`).
    node: String,
    /// `text`, `json`, `mermaid` or `dot` (Graphviz).
    #[arg(long, default_value = "text")]
    format: String,
}

/// `weir lineage`: up and down the graph from one node.
pub async fn lineage(config: &Config, args: LineageArgs) -> anyhow::Result<ExitCode> {
    let state = state(config).await?;
    let node = weir_meta::lineage::find(&state, &args.node)?;
    print!(
        "{}",
        weir_meta::lineage::render(&state, &node, &args.format)?
    );
    if args.format == "json" {
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn experiments(config: &Config, args: ExperimentsArgs) -> anyhow::Result<ExitCode> {
    let ExperimentsCommand::List = args.command;
    let state = state(config).await?;
    println!("{:<6} {:<30} {:>6}  artifacts", "id", "name", "runs");
    for experiment in state.experiments().filter(|e| !e.deleted) {
        let runs = state
            .runs_of(&experiment.experiment_id)
            .filter(|r| !r.deleted)
            .count();
        println!(
            "{:<6} {:<30} {runs:>6}  {}",
            experiment.experiment_id, experiment.name, experiment.artifact_location
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn runs(config: &Config, args: RunsArgs) -> anyhow::Result<ExitCode> {
    if let RunsCommand::Reproduce { run, tolerance } = &args.command {
        return crate::train::reproduce(config, run, *tolerance).await;
    }
    let state = state(config).await?;
    match args.command {
        RunsCommand::List { experiment } => {
            let experiment = state.experiment_by_name(&experiment)?;
            let mut runs: Vec<&Run> = state
                .runs_of(&experiment.experiment_id)
                .filter(|r| !r.deleted)
                .collect();
            runs.sort_by_key(|r| std::cmp::Reverse(r.start_time));
            println!("{:<32}  {:<24} {:<9} metrics", "run", "name", "status");
            for run in runs {
                let metrics: Vec<String> = run
                    .latest
                    .values()
                    .map(|m| format!("{}={:.4}", m.key, m.value))
                    .collect();
                println!(
                    "{:<32}  {:<24} {:<9} {}",
                    run.run_id,
                    run.run_name,
                    run.status,
                    metrics.join(" ")
                );
            }
        }
        RunsCommand::Show { run } => {
            let run = state.run(&run)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&weir_meta::mlflow_json::run_json(run))?
            );
        }
        RunsCommand::Reproduce { .. } => unreachable!("handled above"),
        RunsCommand::Compare { runs, plot } => {
            let runs: Vec<&Run> = runs
                .iter()
                .map(|id| state.run(id))
                .collect::<Result<_, _>>()?;
            println!("{}", weir_meta::compare::text(&runs));
            if let Some(path) = plot {
                std::fs::write(&path, weir_meta::compare::html(&runs))
                    .with_context(|| path.display().to_string())?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A version's model file: what it takes and gives and needs.
fn print_model_info(info: &weir_meta::event::ModelInfo) {
    let tensors = |specs: &[weir_onnx::TensorSpec]| {
        specs
            .iter()
            .map(|t| format!("{} {}{:?}", t.name, t.dtype, t.shape))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let signature = &info.signature;
    println!(
        "           {} model {} ({} bytes, sha256 {}), {} of `{}` from {} features, classes {:?}",
        info.format,
        info.path,
        info.size,
        &info.sha256[..12.min(info.sha256.len())],
        info.task,
        info.label,
        info.features.len(),
        info.classes
    );
    println!(
        "           inputs {}; outputs {}; opset {}; producer {}",
        tensors(&signature.inputs),
        tensors(&signature.outputs),
        signature.opset().map_or("-".into(), |o| o.to_string()),
        signature.producer
    );
    if !info.dependencies.is_empty() {
        let dependencies: Vec<String> = info
            .dependencies
            .iter()
            .map(|(k, v)| format!("{k}=={v}"))
            .collect();
        println!("           needs {}", dependencies.join(", "));
    }
}

pub async fn models(config: &Config, args: ModelsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ModelsCommand::List => {
            let state = state(config).await?;
            println!("{:<30} {:>8}  aliases", "model", "versions");
            for model in state.models() {
                let aliases: Vec<String> = model
                    .aliases
                    .iter()
                    .map(|(alias, version)| format!("{alias}=v{version}"))
                    .collect();
                println!(
                    "{:<30} {:>8}  {}",
                    model.name,
                    model.versions.len(),
                    aliases.join(" ")
                );
            }
        }
        ModelsCommand::Show { name } => {
            let state = state(config).await?;
            let model = state.model(&name)?;
            println!("{}: {}", model.name, model.description);
            println!(
                "{:>7}  {:<11} {:<32}  {:<12} source",
                "version", "stage", "run", "aliases"
            );
            for version in model.versions.values() {
                let aliases: Vec<&str> = model
                    .aliases
                    .iter()
                    .filter(|(_, v)| **v == version.version)
                    .map(|(a, _)| a.as_str())
                    .collect();
                println!(
                    "{:>7}  {:<11} {:<32}  {:<12} {}",
                    version.version,
                    version.stage,
                    version.run_id,
                    aliases.join(","),
                    version.source
                );
                if let Some(info) = &version.model {
                    print_model_info(info);
                }
            }
        }
        ModelsCommand::Register { run, name } => {
            // A run that kept its model to export later is exported now:
            // that reads its dataset again.
            let session = crate::session::Session::open(config).await?;
            let registered =
                weir_train::register_run_model(session.workspace(), &run, &name, String::new())
                    .await;
            session.close().await;
            let (version, model) = registered?;
            println!("registered {name}@{version} from run {run}");
            print_model_info(&model);
        }
        ModelsCommand::Alias {
            name,
            alias,
            number: version,
        } => {
            let connection = connect(config).await?;
            let tracker =
                weir_meta::Tracker::open_under(&connection.bus, &config.state_dir).await?;
            let result = tracker.set_alias(&name, &alias, version).await;
            tracker.close().await;
            connection.close().await;
            if let Err(error) = result {
                bail!("{name}@{alias}: {error}");
            }
            println!("{name}@{alias} -> version {version}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
