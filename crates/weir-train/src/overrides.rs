//! A training job from a file with fields overridden, or from the fields
//! alone: what `weir train`'s options and a notebook's keyword arguments
//! describe.

use std::collections::BTreeMap;

use crate::TrainError;
use crate::spec::{Distributed, Runtime, Split, Task, TrainSpec};

/// Fields that replace a job's (or, with no job, make one: `dataset` and
/// `label` are then needed). `None` and empty leave the job's field alone.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// A dataset version or a Parquet or CSV file.
    pub dataset: Option<String>,
    /// The column to predict.
    pub label: Option<String>,
    /// `sklearn`, `lightgbm` or `command`.
    pub runtime: Option<String>,
    /// The estimator of the `sklearn` runtime.
    pub estimator: String,
    /// The program of the `command` runtime, as one string split on spaces.
    pub command: Option<String>,
    /// Params as `key=value`, the value read as JSON (`100`, `0.1`,
    /// `true`) or else as text; added to the job's.
    pub params: Vec<String>,
    /// The feature columns, in order.
    pub features: Vec<String>,
    /// Columns that are not features; added to the job's.
    pub exclude: Vec<String>,
    /// `classification` or `regression`.
    pub task: Option<String>,
    /// Split by time on this column.
    pub split_by: Option<String>,
    /// Share of rows for validation.
    pub validation: Option<f64>,
    /// Share of rows for test.
    pub test: Option<f64>,
    /// Seed of a random split.
    pub seed: Option<u64>,
    /// The experiment.
    pub experiment: Option<String>,
    /// The run's name.
    pub name: Option<String>,
    /// The registered model the model becomes a version of.
    pub register: Option<String>,
    /// Data-parallel processes.
    pub processes: Option<usize>,
    /// Restarts of all processes after one fails.
    pub restarts: u32,
}

impl Overrides {
    /// `job` with these fields replaced, or the job these fields describe.
    pub fn apply(self, job: Option<TrainSpec>) -> Result<TrainSpec, TrainError> {
        let mut spec = match job {
            Some(job) => job,
            None => {
                let (Some(dataset), Some(label)) = (self.dataset.clone(), self.label.clone())
                else {
                    return Err(invalid(
                        "give a job file, or at least a dataset and a label",
                    ));
                };
                minimal(dataset, label)
            }
        };
        if let Some(dataset) = self.dataset {
            spec.dataset = dataset;
        }
        if let Some(label) = self.label {
            spec.label = label;
        }
        if let Some(runtime) = self.runtime.as_deref() {
            spec.runtime = runtime_named(runtime, self.estimator, self.command)?;
        }
        for param in self.params {
            let (key, value) = param
                .split_once('=')
                .ok_or_else(|| invalid(format!("param `{param}`: not key=value")))?;
            let value: serde_json::Value = serde_json::from_str(value)
                .unwrap_or_else(|_| serde_json::Value::String(value.into()));
            spec.params.insert(key.into(), value);
        }
        if !self.features.is_empty() {
            spec.features = self.features;
        }
        spec.exclude.extend(self.exclude);
        if let Some(task) = self.task {
            spec.task = Some(task.parse::<Task>()?);
        }
        let (validation, test) = spec.split.shares();
        let validation = self.validation.unwrap_or(validation);
        let test = self.test.unwrap_or(test);
        spec.split = match (self.split_by, spec.split) {
            (Some(column), _) | (None, Split::Time { column, .. }) => Split::Time {
                column,
                validation,
                test,
            },
            (None, Split::Random { seed, .. }) => Split::Random {
                validation,
                test,
                seed: self.seed.unwrap_or(seed),
            },
        };
        if let Some(experiment) = self.experiment {
            spec.experiment = experiment;
        }
        if self.name.is_some() {
            spec.name = self.name;
        }
        if self.register.is_some() {
            spec.register = self.register;
        }
        if let Some(processes) = self.processes {
            spec.distributed = Some(Distributed {
                processes,
                restarts: self.restarts,
            });
        }
        Ok(spec)
    }
}

/// A LightGBM job on `dataset` predicting `label`, every other field its
/// default.
fn minimal(dataset: String, label: String) -> TrainSpec {
    TrainSpec {
        experiment: "Default".into(),
        name: None,
        dataset,
        label,
        features: vec![],
        exclude: vec![],
        task: None,
        split: Split::default(),
        runtime: Runtime::Lightgbm,
        params: BTreeMap::new(),
        register: None,
        tolerance: 1e-4,
        tags: BTreeMap::new(),
        distributed: None,
        export: Default::default(),
    }
}

fn runtime_named(
    name: &str,
    estimator: String,
    command: Option<String>,
) -> Result<Runtime, TrainError> {
    match name {
        "sklearn" => Ok(Runtime::Sklearn { estimator }),
        "lightgbm" => Ok(Runtime::Lightgbm),
        "command" => {
            let command = command.ok_or_else(|| invalid("runtime `command` needs a command"))?;
            Ok(Runtime::Command {
                command: command.split_whitespace().map(String::from).collect(),
            })
        }
        other => Err(invalid(format!(
            "runtime `{other}`: not sklearn, lightgbm or command"
        ))),
    }
}

fn invalid(message: impl Into<String>) -> TrainError {
    TrainError::Invalid(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overrides(dataset: &str, label: &str) -> Overrides {
        Overrides {
            dataset: Some(dataset.into()),
            label: Some(label.into()),
            estimator: "LogisticRegression".into(),
            ..Default::default()
        }
    }

    #[test]
    fn fields_alone_make_a_job() {
        let spec = overrides("d@1", "y").apply(None).unwrap();
        assert_eq!((spec.dataset.as_str(), spec.label.as_str()), ("d@1", "y"));
        assert_eq!(spec.runtime, Runtime::Lightgbm);
        let missing = Overrides::default().apply(None).unwrap_err();
        assert!(
            missing.to_string().contains("dataset and a label"),
            "{missing}"
        );
    }

    #[test]
    fn fields_replace_a_jobs_and_params_add_to_them() {
        let mut job = minimal("d".into(), "y".into());
        job.params.insert("a".into(), 1.into());
        let spec = Overrides {
            runtime: Some("sklearn".into()),
            params: vec!["b=0.5".into(), "c=text".into()],
            seed: Some(3),
            test: Some(0.1),
            ..overrides("e", "z")
        }
        .apply(Some(job))
        .unwrap();
        assert_eq!(spec.dataset, "e");
        assert_eq!(
            spec.runtime,
            Runtime::Sklearn {
                estimator: "LogisticRegression".into()
            }
        );
        assert_eq!(spec.params["a"], 1);
        assert_eq!(spec.params["b"], 0.5);
        assert_eq!(spec.params["c"], "text");
        assert_eq!(
            spec.split,
            Split::Random {
                validation: 0.2,
                test: 0.1,
                seed: 3
            }
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let bad = Overrides {
            params: vec!["novalue".into()],
            ..overrides("d", "y")
        };
        assert!(
            bad.apply(None)
                .unwrap_err()
                .to_string()
                .contains("`novalue`")
        );
        let bad = Overrides {
            runtime: Some("xgboost".into()),
            ..overrides("d", "y")
        };
        assert!(
            bad.apply(None)
                .unwrap_err()
                .to_string()
                .contains("`xgboost`")
        );
    }
}
