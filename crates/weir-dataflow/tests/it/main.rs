//! The runtime against a real broker and real RocksDB: windowed results
//! equal a brute-force reference, whatever the number of workers.

mod cluster;
mod continuous;
mod dead_letters;
mod files;
mod joins;
mod lookup;
mod memory;
mod nested;
mod operators;
mod support;
mod windows;
