//! `weir publish`: JSON lines or CSV into a topic.
//!
//! A line that is not a valid record (not JSON, a missing field, a wrong
//! type) is reported as `FILE:LINE:COL: problem` and sent to the topic's
//! dead-letter topic; the other lines are still published. This is the same
//! rule as for streams: bad input never stops the flow and is never dropped
//! silently. With `--strict` the whole input is checked first and nothing is
//! published if any line is bad, for loads that must be all or nothing.

use std::io::{BufRead, BufReader, IsTerminal as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressStyle};
use weir_bus::ingest::{Format, check_lines, publish_lines, records};
use weir_bus::{Bus, SchemaType, TopicSpec, WireFormat};
use weir_core::{Config, topics};

use weir_broker::connect::connect;

#[derive(clap::Args)]
pub struct Args {
    /// Topic to publish to (created if missing).
    topic: String,
    /// Input file; stdin when absent or `-`.
    file: Option<PathBuf>,
    /// Input format; by default from the file extension (`.csv` is CSV,
    /// anything else JSON lines).
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
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
enum FormatArg {
    /// One JSON document per line.
    Jsonl,
    /// Comma-separated values with a header row.
    Csv,
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

    let format = match args.format {
        Some(FormatArg::Jsonl) => Format::JsonLines,
        Some(FormatArg::Csv) => Format::Csv,
        None => Format::of_path(args.file.as_deref()),
    };
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

    if args.strict {
        if args.file.is_none() {
            bail!("--strict reads the input twice: give a file, not stdin");
        }
        let (reader, _) = open()?;
        let lines = records(reader, format, &publisher)?;
        let bad = check_lines(&publisher, lines, args.key.as_deref())?;
        for (line, error) in bad.iter().take(20) {
            eprintln!("{name}:{}", error.located(*line));
        }
        if !bad.is_empty() {
            eprintln!(
                "{} bad line(s) in {name}: nothing published (--strict). Fix them, or drop --strict to publish the good lines and send the bad ones to {}",
                bad.len(),
                topics::dlq(&args.topic)
            );
            return Ok(ExitCode::FAILURE);
        }
    }

    let (reader, size) = open()?;
    let progress = progress_bar(size);
    let started = Instant::now();
    let published = publish_lines(
        bus,
        &publisher,
        records(reader, format, &publisher)?,
        args.key.as_deref(),
        |line, error| progress.suspend(|| eprintln!("{name}:{}", error.located(line))),
        |bytes| progress.set_position(bytes),
    )
    .await
    .with_context(|| format!("publishing {name}"))?;
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "published {} records to `{}` in {seconds:.2} s ({:.0} records/s)",
        published.records,
        args.topic,
        published.records as f64 / seconds.max(1e-9)
    );
    if published.bad > 0 {
        eprintln!(
            "{} bad line(s) sent to {} with their reasons (see them with `weir tail {} --from-beginning`)",
            published.bad,
            topics::dlq(&args.topic),
            topics::dlq(&args.topic)
        );
    }
    Ok(ExitCode::SUCCESS)
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
