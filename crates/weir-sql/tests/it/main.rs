//! Feature views against a real broker: the case files give their rows
//! (stream and batch) or their errors (with their place); the stream and
//! the batch of the same SQL give the same rows on many events; a view
//! survives a restart.

mod cases;
mod stream_batch;
mod support;
