//! Training, tuning, AutoML and evaluation.
//!
//! A training job ([`train`]) reads a dataset version (Parquet), splits it
//! (by time, or at random with a seed — recorded, so the run can be
//! repeated exactly), and hands the parts to a *runtime*: the built-in
//! scikit-learn and LightGBM runtimes, or any command that follows the
//! contract in [`runtime`]. The runtime writes an ONNX model; Weir loads it
//! with ONNX Runtime (the path serving uses), checks it against the
//! framework's own predictions, scores it on the validation and test
//! parts, and records everything as one run on `weir.meta` — params, the
//! split, metrics, artifacts, the dataset it read — and, when asked,
//! registers the model as a version with its signature, opset and
//! dependencies. A failed job is a `FAILED` run with its reason, and
//! nothing registered.
//!
//! Evaluation ([`evaluate()`]) scores a registered version on a dataset,
//! overall and by slice, next to the current champion (a registry alias),
//! applies a promotion gate (and moves the champion alias when asked and
//! passed), and writes an HTML report.
//!
//! Tuning ([`tune`]) publishes trials to `weir.jobs.<experiment>`, which
//! [`tune::worker`] processes run under leases; [`automl`] tunes each model
//! family in turn. [`overrides`] builds a job from a file and fields (the
//! command line's options), [`OpenWorkspace`] opens what jobs work with.

pub mod automl;
pub mod evaluate;
pub mod evaluation;
mod job;
pub mod metrics;
pub mod overrides;
pub mod report;
pub mod runtime;
pub mod spec;
pub mod table;
pub mod tune;
mod workspace;

pub use evaluate::{Evaluation, EvaluationRequest, GateRule, evaluate};
pub use job::{
    JobCache, Outcome, Ran, Reproduction, Workspace, register_run_model, reproduce, run_job,
    run_model, train,
};
pub use spec::{Export, Split, TrainSpec};
pub use workspace::OpenWorkspace;

/// What went wrong in a training or evaluation job.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The job's description is wrong (a missing column, a bad param…).
    #[error("{0}")]
    Invalid(String),
    /// The runtime failed or wrote something unusable.
    #[error("{0}")]
    Runtime(String),
    /// Reading or writing files.
    #[error("{0}")]
    Io(String),
    /// The metadata log or artifact store.
    #[error(transparent)]
    Meta(#[from] weir_meta::MetaError),
    /// ONNX Runtime.
    #[error(transparent)]
    Onnx(#[from] weir_onnx::OnnxError),
    /// Kafka failed.
    #[error(transparent)]
    Bus(#[from] weir_bus::BusError),
    /// Reading the datasets failed.
    #[error(transparent)]
    Features(#[from] weir_features::FeaturesError),
    /// The training runtimes' Python environment is missing.
    #[error(transparent)]
    Setup(#[from] weir_setup::SetupError),
}

impl TrainError {
    pub(crate) fn io(what: impl std::fmt::Display, error: impl std::fmt::Display) -> Self {
        Self::Io(format!("{what}: {error}"))
    }
}
