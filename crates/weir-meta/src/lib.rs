//! Weir's metadata: experiments and runs (params, metrics, tags, the data
//! they read), registered models and their versions, aliases and stages,
//! and artifacts — each change an event on `weir.meta`.
//!
//! ```text
//!  mlflow client ──HTTP──▶ server ──▶ Tracker ──event──▶ weir.meta
//!                                       │ apply               │ replay
//!                                       ▼                     ▼
//!                                     State ◀──────────── any other node
//! ```
//!
//! - [`event`]: the events, one `kind` each, in Avro on `weir.meta`
//!   (`schemas/meta_event.avsc`) next to the feature views' and datasets'
//!   JSON events;
//! - [`state`]: the materialised query store, which applies events in log
//!   order; replaying the topic on another node gives the same state;
//! - [`store`]: that state's entities saved in RocksDB with the log
//!   position they stand at, so a server restarts by replaying only what
//!   the log has since;
//! - [`search`]: MLflow's filter strings, `order_by` and page tokens;
//! - [`lineage`]: topics → feature view versions → datasets → runs →
//!   model versions, from the same log;
//! - [`artifacts`]: a content-addressed artifact store on any
//!   `object_store` URL (a local directory by default), whose paths cannot
//!   escape it;
//! - [`tracker`]: the write path (validate, apply, append, wait for the
//!   broker's acknowledgement) and the reads;
//! - [`server`]: the MLflow REST API (tracking, model registry, artifact
//!   proxy) over axum, so the official `mlflow` client works unchanged.

pub mod artifacts;
pub mod compare;
pub mod event;
pub mod lineage;
pub mod mlflow_json;
mod pages;
pub mod records;
pub mod search;
pub mod server;
pub mod state;
pub mod store;
pub mod tracker;

pub use tracker::Tracker;

/// MLflow's error codes, with the HTTP status MLflow answers them with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 404: no such experiment, run, model, version, alias or artifact.
    ResourceDoesNotExist,
    /// 400: a name that is taken.
    ResourceAlreadyExists,
    /// 400: a value that is not allowed.
    InvalidParameterValue,
    /// 400: a request that cannot be read.
    BadRequest,
    /// 500: the thing is in a state that does not allow this.
    InvalidState,
    /// 500: our fault (the broker or the artifact store failed).
    InternalError,
}

impl ErrorCode {
    /// The code as MLflow spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ResourceDoesNotExist => "RESOURCE_DOES_NOT_EXIST",
            Self::ResourceAlreadyExists => "RESOURCE_ALREADY_EXISTS",
            Self::InvalidParameterValue => "INVALID_PARAMETER_VALUE",
            Self::BadRequest => "BAD_REQUEST",
            Self::InvalidState => "INVALID_STATE",
            Self::InternalError => "INTERNAL_ERROR",
        }
    }

    /// The HTTP status MLflow gives it (`mlflow/exceptions.py`).
    pub fn http_status(self) -> u16 {
        match self {
            Self::ResourceDoesNotExist => 404,
            Self::ResourceAlreadyExists | Self::InvalidParameterValue | Self::BadRequest => 400,
            Self::InvalidState | Self::InternalError => 500,
        }
    }
}

/// What can go wrong: an MLflow error code and a message naming the thing.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct MetaError {
    /// The code.
    pub code: ErrorCode,
    /// What is wrong, naming the experiment, run, key or path.
    pub message: String,
}

impl MetaError {
    /// A `RESOURCE_DOES_NOT_EXIST`.
    pub fn missing(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ResourceDoesNotExist, message)
    }

    /// An `INVALID_PARAMETER_VALUE`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidParameterValue, message)
    }

    /// A `RESOURCE_ALREADY_EXISTS`.
    pub fn exists(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ResourceAlreadyExists, message)
    }

    /// An `INTERNAL_ERROR`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InternalError, message)
    }

    /// An error with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
