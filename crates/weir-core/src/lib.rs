//! What every Weir crate shares: the names of platform topics ([`topics`]),
//! the configuration a `weir` process runs with ([`Config`]), and the
//! clock events are timed by ([`now_ms`]). (Where
//! the set-up installs ONNX Runtime and the Python environments is
//! `weir-setup`'s.)
//!
//! This crate has no I/O beyond reading the configuration file and no heavy
//! dependencies, so every other crate can depend on it.

pub mod config;
pub mod topics;

pub use config::{Config, ConfigError};

/// Milliseconds since the Unix epoch, now: how every event on the platform's
/// topics is timed.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
