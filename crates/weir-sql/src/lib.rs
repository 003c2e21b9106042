//! Weir's SQL: feature views written in SQL, planned by DataFusion, run as
//! streaming jobs on the dataflow runtime — and the same SQL run as a batch
//! query over history with DataFusion, giving the same values for every
//! entity and window.
//!
//! ```text
//!  view.sql ─parse─▶ header + SQL ─DataFusion─▶ LogicalPlan ─┬─ stream: Pipeline (weir-dataflow) ─▶ weir.features.<view>.v<N>
//!                                                             └─ batch: DataFusion over Parquet / a topic read to its end
//! ```
//!
//! - [`view`]: the file format (YAML header, one query);
//! - [`functions`]: the window functions `tumble`, `hop`, `session`;
//! - [`plan`]: SQL to a [`Plan`]: the physical pipeline of the stream, the
//!   pieces the batch reuses, and errors that name the construct and its
//!   `file:line:col`;
//! - `stream_join`: a join of two streams, bounded in event time, as the
//!   runtime's interval join;
//! - [`batch`]: the same plan over history;
//! - [`registry`]: views and their versions, as events on `weir.meta`;
//! - [`adhoc`]: ad-hoc batch queries over views, topics and files (`weir sql`).

pub mod adhoc;
pub mod batch;
mod expr;
pub mod functions;
pub mod plan;
pub mod registry;
pub mod resolved;
mod stream_join;
pub mod view;

pub use plan::{Catalog, Plan, plan_view};
pub use view::ViewFile;

/// What can go wrong with SQL.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// A problem at a place in a file.
    #[error("{path}:{line}:{column}: {message}")]
    At {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A file could not be read.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// A query failed while running.
    #[error("{0}")]
    Execution(String),
    /// The runtime refused or failed the job.
    #[error(transparent)]
    Dataflow(#[from] weir_dataflow::DataflowError),
    /// Kafka failed.
    #[error(transparent)]
    Bus(#[from] weir_bus::BusError),
}

impl From<datafusion::error::DataFusionError> for SqlError {
    fn from(error: datafusion::error::DataFusionError) -> Self {
        SqlError::Execution(error.to_string())
    }
}
