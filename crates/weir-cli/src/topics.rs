//! `weir topics`: list, create, describe.

use std::process::ExitCode;

use anyhow::Context as _;
use weir_bus::TopicSpec;
use weir_core::Config;

use weir_broker::connect::connect;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// List topics with their partitions (the default).
    List,
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Number of partitions.
        #[arg(short, long, default_value_t = 3)]
        partitions: i32,
        /// Replication factor (the broker's default when absent).
        #[arg(long)]
        replication: Option<i32>,
        /// A topic config, `KEY=VALUE` (repeatable), e.g. `cleanup.policy=compact`.
        #[arg(short, long = "config", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
    },
    /// Partitions, leaders, offsets and configs of a topic.
    Describe {
        /// Topic name.
        name: String,
    },
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let connection = connect(config).await?;
    let admin = connection.bus.admin();
    let result = async {
        match args.command.unwrap_or(Command::List) {
            Command::List => {
                let topics = admin.list_topics().await?;
                let width = topics
                    .iter()
                    .map(|(n, _)| n.len())
                    .max()
                    .unwrap_or(5)
                    .max(5);
                println!("{:<width$}  PARTITIONS", "TOPIC");
                for (name, partitions) in topics {
                    println!("{name:<width$}  {partitions}");
                }
            }
            Command::Create {
                name,
                partitions,
                replication,
                configs,
            } => {
                let mut spec = TopicSpec::new(&name, partitions);
                spec.replication = replication;
                for (key, value) in configs {
                    spec = spec.config(key, value);
                }
                admin
                    .create_topic(&spec)
                    .await
                    .with_context(|| format!("creating `{name}`"))?;
                println!("created `{name}` with {partitions} partition(s)");
            }
            Command::Describe { name } => {
                let info = admin.describe_topic(&name).await?;
                println!("topic      {}", info.name);
                println!("records    {}", info.records());
                println!("partitions {}", info.partitions.len());
                println!("  PARTITION  LEADER  LOW  HIGH");
                for p in &info.partitions {
                    println!(
                        "  {:>9}  {:>6}  {:>3}  {:>4}",
                        p.id, p.leader, p.low, p.high
                    );
                }
                if !info.configs.is_empty() {
                    println!("configs");
                    for (key, value) in &info.configs {
                        println!("  {key}={value}");
                    }
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    connection.close().await;
    result.map(|()| ExitCode::SUCCESS)
}
