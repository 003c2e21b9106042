//! The runtime contract: how Weir runs what trains a model.
//!
//! A runtime is a command. Weir runs it with these variables set:
//!
//! | variable | what it holds |
//! |---|---|
//! | `WEIR_TRAIN_PATH` | the training rows, Parquet: the feature columns and the label |
//! | `WEIR_VALIDATION_PATH` | the validation rows, same columns |
//! | `WEIR_TEST_PATH` | the test rows, same columns |
//! | `WEIR_FEATURES` | the feature columns, in the model's input order (a JSON list) |
//! | `WEIR_LABEL` | the label column |
//! | `WEIR_TASK` | `classification` or `regression` |
//! | `WEIR_CLASSES` | a classifier's classes, in score order (a JSON list) |
//! | `WEIR_PARAMS` | the job's params (a JSON object) |
//! | `WEIR_SEED` | a seed for anything random |
//! | `WEIR_OUTPUT_DIR` | where it writes what it made (empty at start) |
//!
//! It must write `$WEIR_OUTPUT_DIR/model.onnx`: one `float32` input of
//! shape `[N, features]`, and for a classifier a `float32` output of class
//! probabilities `[N, classes]` (named `probabilities` if there are
//! several float outputs), for a regressor `[N, 1]` or `[N]`. It may write
//! `metrics.json` (`{"name": number}`, logged with the run),
//! `dependencies.json` (`{"package": "version"}`, kept with the model
//! version), and `validation_scores.parquet` (its own scores of the
//! validation rows, columns `score_0`, `score_1`, …: Weir checks the ONNX
//! model gives the same). Everything else it writes is kept as the run's
//! artifacts. It fails by exiting non-zero; the last lines it printed are
//! the run's failure reason.
//!
//! The built-in runtimes (`sklearn`, `lightgbm`) are `python/runtime.py`
//! run by the managed Python environment (`WEIR_PYTHON`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::TrainError;
use crate::spec::Runtime;

/// The built-in runtimes' script.
const SCRIPT: &str = include_str!("../python/runtime.py");

/// What the runtime is given.
#[derive(Debug, Clone)]
pub struct Contract {
    /// Training, validation and test rows.
    pub parts: [PathBuf; 3],
    /// Feature columns.
    pub features: Vec<String>,
    /// Label column.
    pub label: String,
    /// `classification` or `regression`.
    pub task: String,
    /// A classifier's classes.
    pub classes: Vec<String>,
    /// Params.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Seed.
    pub seed: u64,
    /// Where it writes.
    pub output: PathBuf,
}

/// The Python the built-in runtimes use: `WEIR_PYTHON`, else `python3`.
pub fn python() -> PathBuf {
    std::env::var_os("WEIR_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| "python3".into())
}

/// Runs `runtime` under the contract; its output (stdout and stderr) goes
/// to `log`. Errors carry the last lines it printed.
pub async fn run(runtime: &Runtime, contract: &Contract, log: &Path) -> Result<(), TrainError> {
    let (program, args): (PathBuf, Vec<String>) = match runtime {
        Runtime::Sklearn { estimator } => (
            python(),
            vec![
                "-c".into(),
                SCRIPT.into(),
                "sklearn".into(),
                estimator.clone(),
            ],
        ),
        Runtime::Lightgbm => (
            python(),
            vec!["-c".into(), SCRIPT.into(), "lightgbm".into()],
        ),
        Runtime::Command { command } => {
            let (program, args) = command
                .split_first()
                .ok_or_else(|| TrainError::Invalid("runtime: `command` is empty".into()))?;
            (program.into(), args.to_vec())
        }
    };
    let log_file = std::fs::File::create(log).map_err(|e| TrainError::io(log.display(), e))?;
    let err_file = log_file
        .try_clone()
        .map_err(|e| TrainError::io(log.display(), e))?;
    let [train, validation, test] = &contract.parts;
    let status = tokio::process::Command::new(&program)
        .args(&args)
        .env("WEIR_TRAIN_PATH", train)
        .env("WEIR_VALIDATION_PATH", validation)
        .env("WEIR_TEST_PATH", test)
        .env("WEIR_FEATURES", json(&contract.features))
        .env("WEIR_LABEL", &contract.label)
        .env("WEIR_TASK", &contract.task)
        .env("WEIR_CLASSES", json(&contract.classes))
        .env("WEIR_PARAMS", json(&contract.params))
        .env("WEIR_SEED", contract.seed.to_string())
        .env("WEIR_OUTPUT_DIR", &contract.output)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(err_file)
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| {
            TrainError::Runtime(format!("runtime {}: cannot start: {e}", program.display()))
        })?;
    if !status.success() {
        return Err(TrainError::Runtime(format!(
            "runtime {} exited with {status}: {}",
            runtime.describe(),
            tail(log, 5)
        )));
    }
    Ok(())
}

/// The last `lines` non-empty lines of a file, joined with ` | `.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let last: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    last[last.len().saturating_sub(lines)..].join(" | ")
}

/// One JSON text, for an environment variable.
fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("JSON of plain values")
}
