use rdkafka::error::KafkaError;

use crate::registry::RegistryError;

/// Errors of the bus, grouped by who is at fault: the user's input
/// (`InvalidTopic`, `UnknownTopic`, `InvalidOption`), the outside world
/// (`Kafka`, `Timeout`), or a component that stopped (`Closed`).
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Kafka (the client or a broker) refused or failed an operation.
    #[error("{context}: {source}")]
    Kafka {
        /// What the bus was doing.
        context: String,
        /// The client's error.
        source: KafkaError,
    },
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A background task the bus relies on has stopped.
    #[error("{0} has stopped")]
    Closed(String),
    /// A schema registry operation failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The topic name is not legal.
    #[error("{0}")]
    InvalidTopic(String),
    /// The topic does not exist.
    #[error("topic `{0}` does not exist")]
    UnknownTopic(String),
    /// An option that does not make sense.
    #[error("{0}")]
    InvalidOption(String),
    /// Reading an input failed.
    #[error("{context}: {source}")]
    Input {
        /// What was being read.
        context: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl BusError {
    pub(crate) fn kafka(context: impl Into<String>, source: KafkaError) -> Self {
        Self::Kafka {
            context: context.into(),
            source,
        }
    }
}
