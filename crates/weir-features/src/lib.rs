//! Weir's feature repository: what feature views produce, served online
//! and taken offline.
//!
//! - [`online`]: the online store — the latest value per entity of every
//!   view, in RocksDB, idempotent under replay, with TTL — and
//!   [`materialize`], which keeps it up to date from the views' topics,
//!   on a thread of its own with [`follow`];
//! - [`http`]: look-ups over HTTP, Weir's own route and Feast's
//!   `/get-online-features`;
//! - [`snapshot`]: point-in-time-correct training snapshots: a label table
//!   joined with each feature as it was known at each row's time; and
//!   [`take`], which reads the views' rows from the bus for one and
//!   registers the result as a dataset version with its lineage;
//! - [`archive`]: topics archived to Parquet by date and hour, exactly
//!   once (files named by offset range);
//! - [`datasets`]: named, versioned datasets — tables, unstructured files,
//!   snapshots — with their lineage, as events on `weir.meta`.

pub mod archive;
pub mod datasets;
pub mod follow;
pub mod http;
pub mod materialize;
pub mod online;
pub mod snapshot;
pub mod take;

/// What can go wrong in the feature repository.
#[derive(Debug, thiserror::Error)]
pub enum FeaturesError {
    /// The online store failed.
    #[error("online store: {0}")]
    Online(String),
    /// A view's recorded definition cannot be served.
    #[error("view `{view}`: {message}")]
    View {
        /// The view.
        view: String,
        /// What is wrong.
        message: String,
    },
    /// No such view is served.
    #[error("no feature view `{0}` is served")]
    UnknownView(String),
    /// The view has no such feature.
    #[error("`{view}` has no feature `{feature}` (it has {known})")]
    UnknownFeature {
        /// The view.
        view: String,
        /// The feature asked for.
        feature: String,
        /// The features it has.
        known: String,
    },
    /// A label table is unusable.
    #[error("{path}: {message}")]
    Labels {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Registering or reading datasets failed.
    #[error("datasets: {0}")]
    Datasets(String),
    /// Taking a snapshot failed.
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// Archiving a topic failed.
    #[error("archive: {0}")]
    Archive(String),
}
