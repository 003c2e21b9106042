//! `weir sql`: an ad-hoc batch query, run by DataFusion, over topics (read
//! to their end and decoded with their schema, inferred for JSON topics
//! without one), feature views (by name: the latest version's results) and
//! Parquet files (by path); see `weir_sql::adhoc`.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use arrow::array::RecordBatch;
use weir_core::Config;

use weir_broker::connect::connect;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
    Parquet,
}

#[derive(clap::Args)]
pub struct Args {
    /// The query. Name a topic (quote names with dots:
    /// "weir.features.user_spend.v1"), a feature view, or a Parquet file
    /// ('out/part.parquet').
    query: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Write to this file instead of stdout (required for parquet).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Read a topic with this Avro schema, over any other
    /// (`TOPIC=FILE.avsc`; repeatable).
    #[arg(long = "schema", value_name = "TOPIC=FILE", value_parser = topic_schema_file)]
    schemas: Vec<(String, PathBuf)>,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let mut declared = HashMap::new();
    for (topic, file) in &args.schemas {
        let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
        let avro = apache_avro::Schema::parse_str(&text)
            .with_context(|| format!("{}: not an Avro schema", file.display()))?;
        declared.insert(topic.clone(), weir_dataflow::decode::arrow_schema(&avro)?);
    }
    let connection = connect(config).await?;
    let result = weir_sql::adhoc::query(&connection.bus, &args.query, &declared).await;
    connection.close().await;
    let result = result?;
    for note in &result.notes {
        eprintln!("note: {note}");
    }
    match (args.format, &args.out) {
        (Format::Parquet, None) => bail!("--format parquet needs --out FILE"),
        (Format::Parquet, Some(out)) => {
            let rows = weir_sql::batch::write_parquet(out, &result.schema, &result.batches)?;
            eprintln!("{rows} rows → {}", out.display());
        }
        (format, out) => {
            let mut sink: Box<dyn std::io::Write> = match out {
                Some(path) => Box::new(
                    std::fs::File::create(path).with_context(|| path.display().to_string())?,
                ),
                None => Box::new(std::io::stdout().lock()),
            };
            write_text(&mut sink, format, &result.batches)?;
            sink.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `TOPIC=FILE`.
fn topic_schema_file(text: &str) -> Result<(String, PathBuf), String> {
    let (topic, file) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not TOPIC=FILE.avsc"))?;
    Ok((topic.to_string(), PathBuf::from(file)))
}

fn write_text(
    out: &mut dyn std::io::Write,
    format: Format,
    batches: &[RecordBatch],
) -> anyhow::Result<()> {
    match format {
        Format::Table => writeln!(
            out,
            "{}",
            arrow::util::pretty::pretty_format_batches(batches)?
        )?,
        Format::Json => {
            let mut writer = arrow::json::LineDelimitedWriter::new(out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
        Format::Csv => {
            let mut writer = arrow_csv::Writer::new(out);
            for batch in batches {
                writer.write(batch)?;
            }
        }
        Format::Parquet => unreachable!("written to a file"),
    }
    Ok(())
}
