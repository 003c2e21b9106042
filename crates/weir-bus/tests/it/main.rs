//! weir-bus against a real broker (the embedded one, in memory, on a free port).

mod codecs;
mod dead_letters;
mod groups;
mod producing;
mod registry;
mod support;
