//! Weir's streaming runtime: jobs that read Kafka topics (or Parquet
//! files), join them with tables and with each other on event time, run
//! custom stateful operators and event-time windowed aggregates, keep their
//! state in RocksDB and write results, with exactly-once state across
//! crashes. Built on timely dataflow; operators exchange Arrow record
//! batches.
//!
//! ```text
//!  Kafka partitions ─▶ source ─▶ [interval join] ─▶ [operators] ─▶ [window aggregate] ─▶ sink ─▶ commit
//!  or Parquet files   decode, event time,   keyed state,   RocksDB state             Kafka, Parquet,
//!   (per worker)      watermark, late → DLQ, timers                                  RocksDB table
//!                     lookup join, transform
//! ```
//!
//! Time in the dataflow is a pair `(epoch, watermark)` ordered as a product:
//! the watermark (event time in ms, less the allowed lateness) closes
//! windows; the epoch counts checkpoints. See [`job`] for how the two make
//! checkpoints consistent, and [`store`] for how state is kept.

pub mod aggregate;
pub mod avro_arrow;
mod avro_batch;
pub mod batch;
pub mod codec;
pub mod column_type;
pub mod decode;
pub mod duration;
mod epochs;
pub mod input;
pub mod interval_join;
pub mod job;
mod kafka;
mod lag;
pub mod lookup;
pub mod operator;
pub mod operators;
pub mod pipeline;
pub mod plan;
pub mod sink;
pub mod source;
pub mod spec;
pub mod state;
pub mod store;
pub mod supervise;
pub mod time;
pub mod transform;
pub mod udaf;
pub mod window;
mod window_operator;

/// What can go wrong in a job, by who is at fault: the job's definition
/// (`Plan`), the data or the engine (`Execution`), the state store
/// (`State`), Kafka (`Bus`).
#[derive(Debug, thiserror::Error)]
pub enum DataflowError {
    /// The job's definition is wrong (unknown column, bad expression).
    #[error("plan: {0}")]
    Plan(String),
    /// Running the job failed.
    #[error("execution: {0}")]
    Execution(String),
    /// The state store failed or holds something unreadable.
    #[error("state: {0}")]
    State(String),
    /// Kafka failed.
    #[error(transparent)]
    Bus(#[from] weir_bus::BusError),
    /// One of several jobs failed.
    #[error("job `{job}`: {cause}")]
    Job {
        /// The job's name.
        job: String,
        /// Why.
        #[source]
        cause: Box<DataflowError>,
    },
}
