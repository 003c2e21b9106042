//! `weir tail`: print a topic's records as JSON lines.
//!
//! Like `tail`: the last records (`-n`, per partition) by default,
//! everything with `--from-beginning`, and new records as they come with
//! `--follow`. Records are decoded with the topic's schema (Avro with
//! Confluent framing from any producer, or JSON). A dead-letter topic is
//! printed raw, with the reason headers. `tail` only reads: a record it
//! cannot decode is reported on stderr, never dead-lettered.

use std::io::Write as _;
use std::process::ExitCode;

use weir_bus::dead_letter;
use weir_bus::{Bus, ConsumerOptions, StartFrom};
use weir_core::{Config, topics};

use weir_broker::connect::connect;

#[derive(clap::Args)]
pub struct Args {
    /// Topic to read.
    topic: String,
    /// Start at the beginning of every partition.
    #[arg(long, conflicts_with = "lines")]
    from_beginning: bool,
    /// Keep printing new records until interrupted.
    #[arg(short, long)]
    follow: bool,
    /// Start this many records before the end of each partition.
    #[arg(short = 'n', long, default_value_t = 10)]
    lines: i64,
    /// Stop after printing this many records.
    #[arg(long)]
    max: Option<u64>,
    /// Read as a member of this consumer group and commit what was printed.
    #[arg(long)]
    group: Option<String>,
    /// Print topic, partition, offset, timestamp and key with each value.
    #[arg(long)]
    meta: bool,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let connection = connect(config).await?;
    let result = tail(&connection.bus, &args).await;
    connection.close().await;
    result.map(|()| ExitCode::SUCCESS)
}

async fn tail(bus: &Bus, args: &Args) -> anyhow::Result<()> {
    let start = if args.group.is_some() {
        StartFrom::Committed
    } else if args.from_beginning {
        StartFrom::Beginning
    } else {
        let info = bus.admin().describe_topic(&args.topic).await?;
        StartFrom::Offsets(
            info.partitions
                .iter()
                .map(|p| (args.topic.clone(), p.id, (p.high - args.lines).max(p.low)))
                .collect(),
        )
    };
    let mut consumer = bus.consumer(
        &[&args.topic],
        ConsumerOptions {
            group: args.group.clone(),
            start,
            until_end: !args.follow,
            read_only: true,
            ..Default::default()
        },
    )?;
    let dead_letter_topic = topics::dlq_source(&args.topic).is_some();
    let mut stdout = std::io::stdout().lock();
    let mut printed = 0_u64;
    while args.max.is_none_or(|max| printed < max) {
        let line = if dead_letter_topic {
            match consumer.next_raw().await? {
                Some(record) => dead_letter::to_json(&record),
                None => break,
            }
        } else {
            match consumer.next().await? {
                Some(record) => record.to_json(args.meta),
                None => break,
            }
        };
        writeln!(stdout, "{line}")?;
        printed += 1;
        if args.follow {
            stdout.flush()?;
        }
    }
    stdout.flush()?;
    if args.group.is_some() {
        consumer.commit().await?;
    }
    let skipped = consumer.dead_letters().total();
    if skipped > 0 {
        eprintln!(
            "{skipped} record(s) could not be decoded and were skipped (see the warnings above)"
        );
    }
    Ok(())
}
