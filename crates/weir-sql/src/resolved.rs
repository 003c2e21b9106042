//! The streams and tables a view reads, resolved against the catalog: the
//! topic, its record schema and, for a stream, its event time.

use std::time::Duration;

use arrow::datatypes::SchemaRef;

/// A stream the query reads, resolved.
#[derive(Debug, Clone)]
pub struct ResolvedSource {
    /// The name the SQL uses.
    pub name: String,
    /// The topic.
    pub topic: String,
    /// Its record schema.
    pub schema: SchemaRef,
    /// The event time column.
    pub event_time: String,
    /// Allowed lateness.
    pub lateness: Duration,
    /// Idle timeout.
    pub idle_timeout: Duration,
}

/// A table the query joins, resolved.
#[derive(Debug, Clone)]
pub struct ResolvedTable {
    /// The name the SQL uses.
    pub name: String,
    /// The topic.
    pub topic: String,
    /// Its record schema.
    pub schema: SchemaRef,
    /// Its key column.
    pub key: String,
}
