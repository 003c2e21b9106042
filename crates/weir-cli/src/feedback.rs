//! `weir feedback publish`: rewards and labels for a deployment's served
//! requests, as JSON lines, onto `weir.feedback.<deployment>`.

use std::io::BufReader;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use weir_broker::connect::connect;
use weir_core::Config;
use weir_serve::feedback::{self, Feedback};

#[derive(Parser)]
pub struct FeedbackArgs {
    #[command(subcommand)]
    command: FeedbackCommand,
}

#[derive(Subcommand)]
enum FeedbackCommand {
    /// Publish feedback: one JSON object per line, `{"request_id": …,
    /// "reward": 1}` or with a `label`, and optionally its `timestamp`
    /// (ms; default now). Every line is checked first: nothing is
    /// published if one is bad.
    Publish {
        /// The deployment whose requests it is about.
        deployment: String,
        /// JSON lines; stdin when absent or `-`.
        file: Option<PathBuf>,
    },
}

/// The feedback in `file` (stdin when absent or `-`), every line checked.
fn read(file: Option<&PathBuf>) -> anyhow::Result<Vec<Feedback>> {
    Ok(match file.filter(|f| f.as_os_str() != "-") {
        Some(path) => {
            let opened =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            feedback::read_lines(BufReader::new(opened), &path.display().to_string())?
        }
        None => feedback::read_lines(std::io::stdin().lock(), "<stdin>")?,
    })
}

pub async fn run(config: &Config, args: FeedbackArgs) -> anyhow::Result<ExitCode> {
    let FeedbackCommand::Publish { deployment, file } = args.command;
    let items = read(file.as_ref())?;
    let connection = connect(config).await?;
    let store = config.state_dir.join(crate::server::STORE_DIR);
    let result = async {
        let state = weir_meta::tracker::replay_with_store(&connection.bus, &store).await?;
        if !state.deployment(&deployment).is_ok_and(|d| !d.deleted) {
            bail!("no deployment `{deployment}` (apply it with `weir deploy` first)");
        }
        let writer = feedback::Writer::start(&connection.bus, &deployment).await?;
        let published = writer.write(&items).await?;
        println!(
            "published {published} feedback records to {}",
            weir_core::topics::feedback(&deployment)
        );
        anyhow::Ok(())
    }
    .await;
    connection.close().await;
    result?;
    Ok(ExitCode::SUCCESS)
}
