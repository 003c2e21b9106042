//! What every Weir crate shares: the names of platform topics ([`topics`]),
//! the configuration a `weir` process runs with ([`Config`]), and where Weir
//! keeps its state and caches ([`paths`]).
//!
//! This crate has no I/O beyond reading the configuration file and no heavy
//! dependencies, so every other crate can depend on it.

pub mod config;
pub mod paths;
pub mod topics;

pub use config::{Config, ConfigError};
