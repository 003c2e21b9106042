//! `weir publish`: JSON lines or CSV into a topic.
//!
//! A line that is not a valid record (not JSON, a missing field, a wrong
//! type) is reported as `FILE:LINE:COL: problem` and sent to the topic's
//! dead-letter topic; the other lines are still published. This is the same
//! rule as for streams: bad input never stops the flow and is never dropped
//! silently. With `--strict` the whole input is checked first and nothing is
//! published if any line is bad, for loads that must be all or nothing.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, IsTerminal as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value as Json;
use weir_bus::dead_letter::{DeadLetters, Source};
use weir_bus::registry::SchemaKind;
use weir_bus::{Bus, DeadLetterReason, DecodeError, SchemaType, TopicSpec, WireFormat};
use weir_core::{Config, topics};

use crate::connect::connect;
use crate::input::{InputFormat, Line, csv_records, json_lines};

#[derive(clap::Args)]
pub struct Args {
    /// Topic to publish to (created if missing).
    topic: String,
    /// Input file; stdin when absent or `-`.
    file: Option<PathBuf>,
    /// Input format; by default from the file extension (`.csv` is CSV,
    /// anything else JSON lines).
    #[arg(long, value_enum)]
    format: Option<InputFormat>,
    /// Use this field of each record as the Kafka key.
    #[arg(long)]
    key: Option<String>,
    /// Register this schema (`.avsc`, or a JSON Schema with
    /// `--schema-type json`) for the topic's values, and check every record
    /// against it.
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Kind of the `--schema` file.
    #[arg(long, value_enum, default_value = "avro")]
    schema_type: SchemaTypeArg,
    /// How values go on the wire: Avro (Confluent framing) when the topic has
    /// an Avro schema, else JSON.
    #[arg(long, value_enum)]
    wire: Option<WireArg>,
    /// Partitions of the topic when it has to be created.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Check everything first; publish nothing if any line is bad.
    #[arg(long)]
    strict: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SchemaTypeArg {
    Avro,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum WireArg {
    Avro,
    Json,
}

/// Most records waiting for the broker's acknowledgement at once.
const IN_FLIGHT: usize = 50_000;

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    topics::validate(&args.topic).map_err(anyhow::Error::msg)?;
    let name = args
        .file
        .as_ref()
        .filter(|f| f.as_os_str() != "-")
        .map_or_else(|| "<stdin>".to_string(), |f| f.display().to_string());
    let schema_text = args
        .schema
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        })
        .transpose()?;
    let connection = connect(config).await?;
    let result = publish(&connection.bus, &args, &name, schema_text.as_deref()).await;
    connection.close().await;
    result
}

async fn publish(
    bus: &Bus,
    args: &Args,
    name: &str,
    schema_text: Option<&str>,
) -> anyhow::Result<ExitCode> {
    if bus
        .admin()
        .ensure_topic(&TopicSpec::new(&args.topic, args.partitions))
        .await?
    {
        eprintln!(
            "created topic `{}` with {} partitions",
            args.topic, args.partitions
        );
    }
    if let (Some(text), Some(path)) = (schema_text, &args.schema) {
        let schema_type = match args.schema_type {
            SchemaTypeArg::Avro => SchemaType::Avro,
            SchemaTypeArg::Json => SchemaType::Json,
        };
        let subject = topics::value_subject(&args.topic);
        let registered = bus
            .registry()
            .register(&subject, schema_type, text)
            .await
            .with_context(|| format!("registering {} as `{subject}`", path.display()))?;
        eprintln!(
            "schema `{subject}` version {} (id {})",
            registered.version, registered.schema.id
        );
    }
    let mut publisher = bus.publisher(&args.topic)?;
    match args.wire {
        Some(WireArg::Avro) if publisher.codec().default_format() != WireFormat::Avro => {
            bail!(
                "--wire avro needs an Avro schema for `{}`: pass --schema FILE.avsc",
                args.topic
            );
        }
        Some(WireArg::Json) => publisher = publisher.with_format(WireFormat::Json),
        Some(WireArg::Avro) | None => {}
    }

    let format = args.format.unwrap_or_else(|| match &args.file {
        Some(path)
            if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("csv")) =>
        {
            InputFormat::Csv
        }
        _ => InputFormat::Jsonl,
    });
    let avro_schema = publisher
        .codec()
        .schema()
        .and_then(|schema| match &schema.kind {
            SchemaKind::Avro(avro) => Some(avro.schema),
            SchemaKind::Json(_) => None,
        });
    let open = || -> anyhow::Result<(Box<dyn BufRead + Send>, Option<u64>)> {
        Ok(match &args.file {
            Some(path) if path.as_os_str() != "-" => {
                let file = std::fs::File::open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                let size = file.metadata().ok().map(|m| m.len());
                (Box::new(BufReader::with_capacity(1 << 20, file)), size)
            }
            _ => (Box::new(BufReader::new(std::io::stdin())), None),
        })
    };
    let lines = |reader: Box<dyn BufRead + Send>| -> anyhow::Result<Box<dyn Iterator<Item = std::io::Result<Line>> + Send>> {
        Ok(match format {
            InputFormat::Jsonl => Box::new(json_lines(reader)),
            InputFormat::Csv => Box::new(csv_records(reader, avro_schema)?),
        })
    };

    if args.strict {
        if args.file.is_none() {
            bail!("--strict reads the input twice: give a file, not stdin");
        }
        let (reader, _) = open()?;
        let mut bad = 0;
        for line in lines(reader)? {
            let line = line?;
            if let Err(error) = encode(&publisher, &line, args.key.as_deref()) {
                bad += 1;
                if bad <= 20 {
                    eprintln!("{name}:{}", error.located(line.number));
                }
            }
        }
        if bad > 0 {
            eprintln!(
                "{bad} bad line(s) in {name}: nothing published (--strict). Fix them, or drop --strict to publish the good lines and send the bad ones to {}",
                topics::dlq(&args.topic)
            );
            return Ok(ExitCode::FAILURE);
        }
    }

    let (reader, size) = open()?;
    let progress = progress_bar(size);
    let mut dead_letters = DeadLetters::new(bus);
    let mut in_flight = VecDeque::new();
    let (mut published, mut bad, mut bytes_read) = (0_u64, 0_u64, 0_u64);
    let started = Instant::now();
    for line in lines(reader)? {
        let line = line.with_context(|| format!("reading {name}"))?;
        bytes_read += line.raw.len() as u64 + 1;
        match encode(&publisher, &line, args.key.as_deref()) {
            Ok((key, bytes)) => {
                in_flight.push_back(publisher.send(key.as_deref(), &bytes).await?);
                published += 1;
                if in_flight.len() >= IN_FLIGHT {
                    in_flight.pop_front().expect("non-empty").await?;
                }
            }
            Err(error) => {
                bad += 1;
                progress.suspend(|| eprintln!("{name}:{}", error.located(line.number)));
                let source = Source {
                    topic: &args.topic,
                    partition: -1,
                    offset: line.number as i64,
                    key: None,
                    payload: Some(&line.raw),
                    headers: &[],
                };
                dead_letters.send(source, &error.error).await?;
            }
        }
        if published % 1024 == 0 {
            progress.set_position(bytes_read);
        }
    }
    for delivery in in_flight {
        delivery.await?;
    }
    dead_letters.settle().await?;
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "published {published} records to `{}` in {seconds:.2} s ({:.0} records/s)",
        args.topic,
        published as f64 / seconds.max(1e-9)
    );
    if bad > 0 {
        eprintln!(
            "{bad} bad line(s) sent to {} with their reasons (see them with `weir tail {} --from-beginning`)",
            topics::dlq(&args.topic),
            topics::dlq(&args.topic)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A line that cannot be published, and where in the line the problem is.
struct BadLine {
    column: Option<usize>,
    error: DecodeError,
}

impl BadLine {
    fn located(&self, line: usize) -> String {
        let position = match self.column {
            Some(column) => format!("{line}:{column}"),
            None => line.to_string(),
        };
        format!("{position}: {}", self.error)
    }
}

fn encode(
    publisher: &weir_bus::Publisher,
    line: &Line,
    key_field: Option<&str>,
) -> Result<(Option<Vec<u8>>, Vec<u8>), BadLine> {
    let value = line.value.as_ref().map_err(|e| BadLine {
        column: e.column,
        error: DecodeError::new(DeadLetterReason::BadJson, e.message.clone()),
    })?;
    let key = match key_field {
        None => None,
        Some(field) => Some(key_bytes(value, field).ok_or_else(|| BadLine {
            column: None,
            error: DecodeError {
                reason: DeadLetterReason::MissingField,
                field: Some(field.to_string()),
                message: format!("the key field `{field}` is missing or null"),
            },
        })?),
    };
    let bytes = publisher.encode(value).map_err(|error| BadLine {
        column: None,
        error,
    })?;
    Ok((key, bytes))
}

/// The key of a record: a string field as its text, anything else as JSON.
fn key_bytes(value: &Json, field: &str) -> Option<Vec<u8>> {
    match value.get(field)? {
        Json::Null => None,
        Json::String(text) => Some(text.as_bytes().to_vec()),
        other => Some(other.to_string().into_bytes()),
    }
}

fn progress_bar(size: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match size {
        Some(size) => ProgressBar::new(size).with_style(
            ProgressStyle::with_template(
                "{spinner} publishing [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} publishing {bytes} ({bytes_per_sec})")
                .expect("valid template"),
        ),
    };
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
