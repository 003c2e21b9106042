//! `weir schemas`: register, list, show; `serve` runs the registry's REST
//! API (Confluent Schema Registry compatible) for other clients.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use weir_bus::SchemaType;
use weir_bus::registry::http;
use weir_core::{Config, topics};

use weir_broker::connect::connect;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Register a schema file under a subject (`<topic>-value` for a topic's values).
    Register {
        /// Subject, e.g. `transactions-value`.
        #[arg(required_unless_present = "topic")]
        subject: Option<String>,
        /// Register for this topic's values instead of naming a subject.
        #[arg(long, conflicts_with = "subject")]
        topic: Option<String>,
        /// Schema file (`.avsc`, or a JSON Schema with `--type json`).
        #[arg(long, short)]
        file: PathBuf,
        /// Kind of schema.
        #[arg(long = "type", value_enum, default_value = "avro")]
        schema_type: TypeArg,
    },
    /// List subjects with their latest version and id.
    List,
    /// Print a schema: a subject's version (latest by default) or an id.
    Show {
        /// Subject.
        #[arg(required_unless_present = "id")]
        subject: Option<String>,
        /// Version of the subject: a number or `latest`.
        #[arg(
            id = "subject_version",
            value_name = "VERSION",
            default_value = "latest"
        )]
        version: String,
        /// Global schema id instead of a subject.
        #[arg(long, conflicts_with = "subject")]
        id: Option<u32>,
    },
    /// Serve the schema registry REST API (what `weir broker` also does).
    Serve {
        /// Address to listen on.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TypeArg {
    Avro,
    Json,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let connection = connect(config).await?;
    let registry = connection.bus.registry();
    let result = async {
        match args.command {
            Command::Register {
                subject,
                topic,
                file,
                schema_type,
            } => {
                let subject = subject.unwrap_or_else(|| {
                    topics::value_subject(&topic.expect("clap requires a subject or a topic"))
                });
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let schema_type = match schema_type {
                    TypeArg::Avro => SchemaType::Avro,
                    TypeArg::Json => SchemaType::Json,
                };
                let registered = registry
                    .register(&subject, schema_type, &text)
                    .await
                    .with_context(|| {
                        format!("{}: registering under `{subject}`", file.display())
                    })?;
                println!(
                    "`{subject}` version {} has id {}",
                    registered.version, registered.schema.id
                );
            }
            Command::List => {
                println!("{:<40} {:>7} {:>6}  TYPE", "SUBJECT", "VERSION", "ID");
                for subject in registry.subjects() {
                    if let Some(latest) = registry.latest(&subject) {
                        println!(
                            "{subject:<40} {:>7} {:>6}  {:?}",
                            latest.version, latest.schema.id, latest.schema.schema_type
                        );
                    }
                }
            }
            Command::Show {
                subject,
                version,
                id,
            } => {
                let schema = match (id, subject) {
                    (Some(id), _) => registry
                        .by_id(id)
                        .with_context(|| format!("no schema has id {id}"))?,
                    (None, Some(subject)) => registry.version(&subject, &version)?.schema,
                    (None, None) => unreachable!("clap requires a subject or an id"),
                };
                match serde_json::from_str::<serde_json::Value>(&schema.text) {
                    Ok(json) => println!("{}", serde_json::to_string_pretty(&json)?),
                    Err(_) => println!("{}", schema.text),
                }
            }
            Command::Serve { listen } => {
                let address = listen.unwrap_or(config.registry);
                let listener = tokio::net::TcpListener::bind(address)
                    .await
                    .with_context(|| format!("listening on {address}"))?;
                println!(
                    "schema registry API on http://{address} (Kafka: {})",
                    connection.description
                );
                tokio::select! {
                    served = http::serve(listener, registry.clone()) => served?,
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    connection.close().await;
    result.map(|()| ExitCode::SUCCESS)
}
