//! `weir archive`: a topic's records into Parquet files partitioned by date
//! and hour, exactly once (the offline store's raw history; see
//! `weir_features::archive`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use weir_core::Config;
use weir_features::archive::{ArchiveOptions, archive};

use weir_broker::connect::connect;

#[derive(Parser)]
pub struct Args {
    /// The topic.
    topic: String,
    /// Where the archive is (default: `archive/` under the state directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// A file closes at this many records.
    #[arg(long, default_value_t = 100_000)]
    roll_rows: usize,
    /// A file closes once it has been open this long.
    #[arg(long, value_parser = weir_dataflow::spec::parse_duration, default_value = "60s")]
    roll_after: Duration,
    /// Stop at the topic's end (else follow it; Ctrl-C stops, closing the
    /// open files).
    #[arg(long)]
    until_end: bool,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let connection = connect(config).await?;
    let dir = args.dir.unwrap_or_else(|| config.state_dir.join("archive"));
    let options = ArchiveOptions {
        roll_rows: args.roll_rows,
        roll_after: args.roll_after,
        until_end: args.until_end,
    };
    if !args.until_end {
        eprintln!(
            "archiving {} into {} (date=…/hour=…); Ctrl-C stops",
            args.topic,
            dir.join(&args.topic).display()
        );
    }
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let result = archive(&connection.bus, &args.topic, &dir, &options, stop).await;
    connection.close().await;
    let stats = result?;
    println!(
        "{}: {} records in {} files; next offsets {:?}",
        args.topic, stats.records, stats.files, stats.next
    );
    Ok(ExitCode::SUCCESS)
}
