//! `weir sql`: an ad-hoc batch query, run by DataFusion, over topics (read
//! to their end and decoded with their registered schema), feature views
//! (by name: the latest version's results) and Parquet files (by path).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::parquet::arrow::ArrowWriter;
use weir_core::Config;
use weir_sql::registry::Registry;

use crate::connect::connect;

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
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let connection = connect(config).await?;
    let result = query(&connection.bus, args).await;
    connection.close().await;
    result
}

async fn query(bus: &weir_bus::Bus, args: Args) -> anyhow::Result<ExitCode> {
    {
        let context = weir_sql::batch::context().enable_url_table();
        let state = context.state();
        let statement = state
            .sql_to_statement(&args.query, &datafusion::config::Dialect::Generic)
            .map_err(|e| anyhow::anyhow!("{}", e.strip_backtrace()))?;
        let references = state
            .resolve_table_references(&statement)
            .map_err(|e| anyhow::anyhow!("{}", e.strip_backtrace()))?;
        let registry = Registry::load(bus).await?;
        let topics: Vec<String> = bus
            .admin()
            .list_topics()
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        for reference in references {
            let name = reference.table().to_string();
            if Path::new(&name).exists() {
                continue; // a file: DataFusion reads it
            }
            let (topic, schema) = if let Some(view) = registry.latest(&name) {
                (view.topic.clone(), view.schema()?)
            } else if topics.contains(&name) {
                let view = registry
                    .names()
                    .filter_map(|n| registry.versions(n).iter().find(|v| v.topic == name))
                    .next();
                let schema = match view {
                    Some(view) => view.schema()?,
                    None => weir_dataflow::job::topic_schema(bus, &name, None)?,
                };
                (name.clone(), schema)
            } else {
                bail!("`{name}` is no topic, feature view or file");
            };
            let rows = weir_sql::batch::read_topic(bus, &topic, schema.clone()).await?;
            let mut batches = rows.batches;
            if batches.is_empty() {
                batches.push(RecordBatch::new_empty(schema.clone()));
            }
            context.register_table(
                reference,
                Arc::new(MemTable::try_new(schema, vec![batches])?),
            )?;
        }
        let frame = context
            .sql(&args.query)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.strip_backtrace()))?;
        let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.strip_backtrace()))?;
        match (args.format, &args.out) {
            (Format::Parquet, None) => bail!("--format parquet needs --out FILE"),
            (Format::Parquet, Some(out)) => {
                let rows = write_parquet(out, &schema, &batches)?;
                eprintln!("{rows} rows → {}", out.display());
            }
            (format, out) => {
                let mut sink: Box<dyn std::io::Write> = match out {
                    Some(path) => Box::new(
                        std::fs::File::create(path).with_context(|| path.display().to_string())?,
                    ),
                    None => Box::new(std::io::stdout().lock()),
                };
                write_text(&mut sink, format, &batches)?;
                sink.flush()?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
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

/// Writes `batches` to a Parquet file; returns the number of rows.
pub fn write_parquet(
    path: &Path,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> anyhow::Result<usize> {
    let file = std::fs::File::create(path).with_context(|| path.display().to_string())?;
    let mut writer = ArrowWriter::try_new(file, schema.clone(), None)?;
    let mut rows = 0;
    for batch in batches {
        rows += batch.num_rows();
        writer.write(batch)?;
    }
    writer.close()?;
    Ok(rows)
}
