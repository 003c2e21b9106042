//! End-to-end: the `weir` binary and official clients against a real broker.

mod cli;
mod interop;
mod support;
