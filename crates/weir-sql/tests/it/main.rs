//! Feature views against a real broker: the stream and the batch run of the
//! same SQL give the same rows; bad SQL is refused with its place; a view
//! survives a restart.

mod errors;
mod stream_batch;
mod support;
