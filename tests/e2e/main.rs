//! End-to-end: the `weir` binary and official clients against a real broker.

mod archive;
mod cli;
mod dataflow;
mod docs;
mod interop;
mod nested;
mod reproduce;
mod setup;
mod snapshot;
mod support;
mod tracking;
mod traffic;
mod tuning;
