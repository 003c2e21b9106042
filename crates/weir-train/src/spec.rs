//! What a training job is: a YAML file (`weir train job.yaml`), or the same
//! fields from the command line.
//!
//! ```yaml
//! experiment: fraud
//! name: gbdt-baseline          # the run's name (optional)
//! dataset: demo-training@1     # a dataset version, or a Parquet or CSV file
//! label: large
//! exclude: [user_id]           # columns that are not features
//! split: {by: random, validation: 0.2, test: 0.2, seed: 7}
//! runtime: {kind: sklearn, estimator: HistGradientBoostingClassifier}
//! params: {max_iter: 200, learning_rate: 0.05}
//! register: fraud-model        # register the model as a version of it
//! distributed: {processes: 2}  # data-parallel (lightgbm or a command)
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// A training job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// The experiment its run goes to (created if missing).
    #[serde(default = "default_experiment")]
    pub experiment: String,
    /// The run's name; generated if none.
    #[serde(default)]
    pub name: Option<String>,
    /// A dataset version (`name@version`, `name` for its latest) or a
    /// Parquet or CSV file.
    pub dataset: String,
    /// The column to predict.
    pub label: String,
    /// The feature columns, in the model's input order. When empty: every
    /// numeric or boolean column but the label, the dataset's entity keys,
    /// its time columns and `exclude`.
    #[serde(default)]
    pub features: Vec<String>,
    /// Columns that are not features.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// `classification` or `regression`; when absent, a text, boolean or
    /// integer label is classification and a floating-point one regression.
    #[serde(default)]
    pub task: Option<Task>,
    /// How the rows are split.
    #[serde(default)]
    pub split: Split,
    /// What trains the model.
    pub runtime: Runtime,
    /// The runtime's params (the estimator's, for the built-in ones).
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Registers the model as a new version of this registered model.
    #[serde(default)]
    pub register: Option<String>,
    /// Largest difference allowed between the ONNX model's scores and the
    /// framework's on the validation rows.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// Tags of the run (a tuning trial's parent run and number…).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Data-parallel training: the runtime runs as several processes,
    /// each on its share of the training rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distributed: Option<Distributed>,
    /// When the model is exported to ONNX (`onnx`: by the job; `deferred`:
    /// when it is registered — built-in runtimes only; tuning trials).
    #[serde(default, skip_serializing_if = "Export::is_onnx")]
    pub export: Export,
}

/// When a job's model is exported to ONNX.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Export {
    /// By the job: the run holds `model.onnx`, checked against the
    /// framework's scores and scored by ONNX Runtime.
    #[default]
    Onnx,
    /// When the model is registered. The built-in runtime keeps the fitted
    /// model (pickled) with its scores of the validation and test rows,
    /// which the run's metrics are computed from; registering exports and
    /// checks it. A search exports only the model it keeps.
    Deferred,
}

impl Export {
    fn is_onnx(&self) -> bool {
        *self == Export::Onnx
    }

    /// Checks a job with `runtime` can export this way.
    pub fn check(self, runtime: &Runtime, distributed: bool) -> Result<(), TrainError> {
        if self == Export::Deferred && (distributed || matches!(runtime, Runtime::Command { .. })) {
            return Err(TrainError::Invalid(format!(
                "export: deferred is for the built-in runtimes in one process; runtime {}{} exports by itself",
                runtime.describe(),
                if distributed { " (distributed)" } else { "" }
            )));
        }
        Ok(())
    }
}

/// A data-parallel job's processes (see [`crate::runtime`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distributed {
    /// How many processes (ranks); at least 2.
    pub processes: usize,
    /// How many times all of them are started again after one fails (0:
    /// one failure fails the job).
    #[serde(default)]
    pub restarts: u32,
}

impl Distributed {
    /// Checks it can run `runtime`.
    pub fn check(&self, runtime: &Runtime) -> Result<(), TrainError> {
        if !(2..=64).contains(&self.processes) {
            return Err(TrainError::Invalid(format!(
                "distributed: processes is {}; between 2 and 64",
                self.processes
            )));
        }
        if let Runtime::Sklearn { .. } = runtime {
            return Err(TrainError::Invalid(
                "distributed: scikit-learn estimators train in one process; use the lightgbm runtime or a command"
                    .into(),
            ));
        }
        Ok(())
    }
}

fn default_experiment() -> String {
    "Default".into()
}

fn default_tolerance() -> f64 {
    1e-4
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// A class, with a score per class.
    Classification,
    /// A number.
    Regression,
}

impl Task {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Classification => "classification",
            Task::Regression => "regression",
        }
    }
}

impl std::str::FromStr for Task {
    type Err = TrainError;

    fn from_str(text: &str) -> Result<Self, TrainError> {
        match text {
            "classification" => Ok(Task::Classification),
            "regression" => Ok(Task::Regression),
            other => Err(TrainError::Invalid(format!(
                "task `{other}`: classification or regression"
            ))),
        }
    }
}

/// How rows are split into training, validation and test parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "lowercase", deny_unknown_fields)]
pub enum Split {
    /// Shuffled with a seed.
    Random {
        /// Share of the rows for validation.
        validation: f64,
        /// Share for test.
        test: f64,
        /// The shuffle's seed.
        seed: u64,
    },
    /// Ordered by a time column: the latest rows are the test part, the
    /// ones before them validation — no training row is later than a test
    /// row, as in production.
    Time {
        /// The column to order by.
        column: String,
        /// Share of the rows for validation.
        validation: f64,
        /// Share for test.
        test: f64,
    },
}

impl Default for Split {
    fn default() -> Self {
        Split::Random {
            validation: 0.2,
            test: 0.2,
            seed: 7,
        }
    }
}

impl Split {
    /// The validation and test shares.
    pub fn shares(&self) -> (f64, f64) {
        match self {
            Split::Random {
                validation, test, ..
            }
            | Split::Time {
                validation, test, ..
            } => (*validation, *test),
        }
    }

    /// Checks the shares leave rows to train on.
    pub fn check(&self) -> Result<(), TrainError> {
        let (validation, test) = self.shares();
        let share = |s: f64| (0.0..1.0).contains(&s);
        if !share(validation) || !share(test) || validation + test >= 1.0 {
            return Err(TrainError::Invalid(format!(
                "split: validation ({validation}) and test ({test}) must be shares in [0, 1) that leave rows to train on"
            )));
        }
        Ok(())
    }

    /// A one-line description (`random 0.2/0.2 seed 7`).
    pub fn describe(&self) -> String {
        match self {
            Split::Random {
                validation,
                test,
                seed,
            } => format!("random validation {validation} test {test} seed {seed}"),
            Split::Time {
                column,
                validation,
                test,
            } => format!("time by {column} validation {validation} test {test}"),
        }
    }
}

/// What trains the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Runtime {
    /// A scikit-learn estimator, by class name, exported with skl2onnx.
    Sklearn {
        /// `HistGradientBoostingClassifier`, `LogisticRegression`,
        /// `RandomForestRegressor`, … (any estimator scikit-learn lists).
        estimator: String,
    },
    /// LightGBM, trained through its own API (it takes LightGBM's params
    /// and their aliases, scikit-learn's wrapper names included), exported
    /// with onnxmltools.
    Lightgbm,
    /// Any command that follows the runtime contract ([`crate::runtime`]).
    Command {
        /// The program and its arguments.
        command: Vec<String>,
    },
}

impl Runtime {
    /// Its name, as recorded (`sklearn:LogisticRegression`, `lightgbm`,
    /// `command:python train.py`).
    pub fn describe(&self) -> String {
        match self {
            Runtime::Sklearn { estimator } => format!("sklearn:{estimator}"),
            Runtime::Lightgbm => "lightgbm".into(),
            Runtime::Command { command } => format!("command:{}", command.join(" ")),
        }
    }
}

impl TrainSpec {
    /// Reads a job from YAML; errors name the field and its line.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, TrainError> {
        from_yaml(text, origin)
    }
}

/// Reads a job file; errors say `origin:line:col: what`.
pub(crate) fn from_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &str,
) -> Result<T, TrainError> {
    serde_yaml::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(":{}:{}", l.line(), l.column()))
            .unwrap_or_default();
        TrainError::Invalid(format!("{origin}{at}: {e}"))
    })
}
