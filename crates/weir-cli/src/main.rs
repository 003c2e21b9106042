//! `weir`: the command line of the Weir event-streaming MLOps platform.
//!
//! Every subcommand talks to Kafka. With no brokers configured
//! (`WEIR_BROKERS` or `brokers` in `weir.toml`), `weir` uses its embedded
//! broker: the one `weir broker` is running, or one it starts in-process
//! with its data under the state directory (`.weir/`).

mod archive;
mod broker;
mod datasets;
mod features;
mod feedback;
mod job;
mod job_status;
mod publish;
mod schemas;
mod serve;
mod server;
mod session;
mod setup;
mod snapshot;
mod sql;
mod tail;
mod topics;
mod tracking;
mod traffic;
mod train;
mod tune;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use weir_core::Config;

/// Weir: publish events, define features, train, serve and monitor models,
/// all through Kafka topics.
#[derive(Parser)]
#[command(name = "weir", version, propagate_version = true)]
struct Cli {
    /// More logging (-v: debug, -vv: trace). `RUST_LOG` also works.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish JSON lines or CSV (a file or stdin) to a topic.
    Publish(publish::Args),
    /// Print a topic's records, decoded.
    Tail(tail::Args),
    /// List, create and describe topics.
    Topics(topics::Args),
    /// Register, list and show schemas; serve the schema registry API.
    Schemas(schemas::Args),
    /// Streaming jobs: windowed aggregations over topics, with state and
    /// exactly-once checkpoints.
    Job(job::Args),
    /// Feature views in SQL: apply (version and run), list, describe,
    /// backfill.
    Features(features::Args),
    /// An ad-hoc SQL query over topics, feature views and Parquet files.
    Sql(sql::Args),
    /// Versioned datasets (tables, files, snapshots): register, list,
    /// search (with the feature views), describe.
    Datasets(datasets::Args),
    /// Archive a topic to Parquet, by date and hour, exactly once.
    Archive(archive::Args),
    /// A point-in-time-correct training set: a label table joined with
    /// feature views as each row's time saw them.
    Snapshot(snapshot::Args),
    /// The metadata server: experiments, runs, models and artifacts over
    /// MLflow's REST API, every change an event on `weir.meta`.
    Server(server::Args),
    /// Experiments on `weir.meta`: list.
    Experiments(tracking::ExperimentsArgs),
    /// Runs on `weir.meta`: list, show, compare.
    Runs(tracking::RunsArgs),
    /// Registered models on `weir.meta`: list, show, alias.
    Models(tracking::ModelsArgs),
    /// What a dataset, run or model version was made from, and what was
    /// made from it: topics, feature views, datasets, runs, models.
    Lineage(tracking::LineageArgs),
    /// Train a model on a dataset version through a runtime (scikit-learn,
    /// LightGBM, any command), check its ONNX export, record the run and
    /// register the model.
    Train(Box<train::TrainArgs>),
    /// Score a registered model on a dataset next to the champion, by
    /// slice, with a promotion gate and an HTML report.
    Evaluate(train::EvaluateArgs),
    /// Tune a training job's params: trials on `weir.jobs.<experiment>`
    /// for `weir worker`s, random, grid or TPE search, the best registered.
    Tune(tune::TuneArgs),
    /// Search model families (linear, boosted trees, random forest, a
    /// small neural network) and their params; register the best.
    Automl(Box<tune::AutomlArgs>),
    /// Run tuning trials from `weir.jobs.<experiment>`, one of any number
    /// of workers in a consumer group.
    Worker(tune::WorkerArgs),
    /// Serve a deployment: registered models over the Open Inference
    /// Protocol (HTTP) and Kafka streams, every request logged.
    Serve(serve::ServeArgs),
    /// Record a deployment spec as its deployment's next version (on
    /// `weir.meta`); `weir serve NAME` serves it.
    Deploy(serve::DeployArgs),
    /// Deployments on `weir.meta`: list, describe, delete.
    Deployments(serve::DeploymentsArgs),
    /// Online experiments on a deployment's traffic (canary, A/B, a
    /// mirror): apply a spec, list, describe, stop.
    Traffic(traffic::TrafficArgs),
    /// Rewards and labels for a deployment's served requests, onto
    /// `weir.feedback.<d>`.
    Feedback(feedback::FeedbackArgs),
    /// Score a Parquet file with a registered model (or an ONNX file).
    Score(serve::ScoreArgs),
    /// Run the embedded Kafka-API broker and the schema registry API for
    /// other clients.
    Broker(broker::Args),
    /// Install what `weir` needs besides itself: ONNX Runtime and the
    /// training runtimes' Python environment (`--check`: say what is missing).
    Setup(setup::Args),
    /// Run the end-to-end demo on the embedded broker.
    Demo(DemoArgs),
    /// Benchmarks: Weir against a raw baseline and the anchor tools.
    Bench(weir_bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            // A closed pipe (`weir tail t | head`) is a normal way to stop.
            if error
                .chain()
                .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
                .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    if let Command::Setup(args) = command {
        // Talks to no broker: it runs before anything is set up.
        return tokio::task::spawn_blocking(move || setup::run(args)).await?;
    }
    let config = Config::load()?;
    match command {
        Command::Publish(args) => publish::run(&config, args).await,
        Command::Tail(args) => tail::run(&config, args).await,
        Command::Topics(args) => topics::run(&config, args).await,
        Command::Schemas(args) => schemas::run(&config, args).await,
        Command::Job(args) => job::run(&config, args).await,
        Command::Features(args) => features::run(&config, args).await,
        Command::Sql(args) => sql::run(&config, args).await,
        Command::Datasets(args) => datasets::run(&config, args).await,
        Command::Archive(args) => archive::run(&config, args).await,
        Command::Snapshot(args) => snapshot::run(&config, args).await,
        Command::Server(args) => server::run(&config, args).await,
        Command::Experiments(args) => tracking::experiments(&config, args).await,
        Command::Runs(args) => tracking::runs(&config, args).await,
        Command::Models(args) => tracking::models(&config, args).await,
        Command::Lineage(args) => tracking::lineage(&config, args).await,
        Command::Train(args) => train::train(&config, *args).await,
        Command::Evaluate(args) => train::evaluate(&config, args).await,
        Command::Tune(args) => tune::tune(&config, args).await,
        Command::Automl(args) => tune::automl(&config, *args).await,
        Command::Worker(args) => tune::worker(&config, args).await,
        Command::Serve(args) => serve::serve(&config, args).await,
        Command::Score(args) => serve::score(&config, args).await,
        Command::Deploy(args) => serve::deploy(&config, args).await,
        Command::Deployments(args) => serve::deployments(&config, args).await,
        Command::Traffic(args) => traffic::run(&config, args).await,
        Command::Feedback(args) => feedback::run(&config, args).await,
        Command::Broker(args) => broker::run(&config, args).await,
        Command::Setup(_) => unreachable!("answered above"),
        Command::Demo(args) => demo(&config, args).await,
        Command::Bench(args) => weir_bench::run(&config, args).await,
    }
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Card transactions to publish.
    #[arg(long, default_value_t = weir_demo::Options::default().events)]
    events: usize,
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = weir_demo::Options::default().seed)]
    seed: u64,
}

/// `weir demo`, on the Kafka this process connects to.
async fn demo(config: &Config, args: DemoArgs) -> anyhow::Result<ExitCode> {
    let options = weir_demo::Options {
        events: args.events,
        seed: args.seed,
    };
    weir_demo::run_connected(config, &options).await?;
    Ok(ExitCode::SUCCESS)
}

fn init_tracing(verbose: u8) {
    // The embedded broker (tansu) logs expected conditions, such as creating
    // a topic that exists, as errors: they show with -v.
    let default = match verbose {
        0 => {
            "warn,tansu_broker=off,tansu_storage=off,tansu_sans_io=off,tansu_service=off,tansu_model=off,tansu_auth=off,tansu_schema=off"
        }
        1 => "info,weir=debug",
        _ => "debug,weir=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

#[cfg(test)]
mod tests {
    /// clap's own checks of the whole command tree (unique argument
    /// names, valid defaults), which it otherwise makes only when a
    /// subcommand is first parsed.
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
