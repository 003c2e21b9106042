//! The feature repository against real RocksDB, real Parquet files, a real
//! broker and real HTTP: point-in-time snapshots (Feast's own cases and a
//! brute-force reference), the online store and its routes.

mod datasets;
mod online;
mod snapshot;
