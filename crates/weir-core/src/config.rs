//! Process configuration: defaults, then `weir.toml`, then `WEIR_*` variables.
//!
//! ```toml
//! # weir.toml — every key optional
//! brokers = "kafka-1:9092,kafka-2:9092"   # none: weir starts its embedded broker
//! state_dir = ".weir"
//! embedded_broker = "127.0.0.1:9092"      # where the embedded broker listens
//! registry = "127.0.0.1:8081"             # where the schema registry API listens
//! max_record_bytes = 1048576              # larger records go to the dead-letter topic
//! auto_create_topics = true               # the embedded broker creates a topic a producer asks for
//! num_partitions = 1                      # partitions of a topic created that way
//! ```

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// File name looked up in the working directory (or `WEIR_CONFIG`).
pub const CONFIG_FILE: &str = "weir.toml";

/// How a `weir` process is configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Kafka bootstrap servers. `None` means: use Weir's embedded broker.
    pub brokers: Option<String>,
    /// Where Weir keeps local state (the embedded broker's data, stores).
    pub state_dir: PathBuf,
    /// Address of the embedded broker when no brokers are named.
    pub embedded_broker: SocketAddr,
    /// Address of the schema registry's REST API.
    pub registry: SocketAddr,
    /// Records larger than this go to the dead-letter topic as `oversized`.
    pub max_record_bytes: usize,
    /// Whether the embedded broker creates a topic that a client asks for
    /// and that does not exist, when the client allows it (Apache Kafka's
    /// `auto.create.topics.enable`, on by default there too).
    pub auto_create_topics: bool,
    /// Partitions of a topic the embedded broker creates that way (Kafka's
    /// `num.partitions`).
    pub num_partitions: NonZeroU32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            brokers: None,
            state_dir: PathBuf::from(".weir"),
            embedded_broker: SocketAddr::from(([127, 0, 0, 1], 9092)),
            registry: SocketAddr::from(([127, 0, 0, 1], 8081)),
            max_record_bytes: 1024 * 1024,
            auto_create_topics: true,
            num_partitions: NonZeroU32::MIN,
        }
    }
}

/// A configuration that cannot be read, with the place of the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a wrong type.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A `WEIR_*` variable has a value of the wrong kind.
    #[error("environment variable {name}={value:?}: {message}")]
    Env {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Loads `WEIR_CONFIG` or `./weir.toml` if present, then applies the
    /// `WEIR_BROKERS`, `WEIR_STATE_DIR`, `WEIR_EMBEDDED_BROKER`, `WEIR_REGISTRY`,
    /// `WEIR_MAX_RECORD_BYTES`, `WEIR_AUTO_CREATE_TOPICS` and
    /// `WEIR_NUM_PARTITIONS` variables.
    pub fn load() -> Result<Self, ConfigError> {
        let path = std::env::var_os("WEIR_CONFIG")
            .map_or_else(|| PathBuf::from(CONFIG_FILE), PathBuf::from);
        let mut config = if path.exists() {
            Self::from_file(&path)?
        } else {
            Self::default()
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        Ok(config)
    }

    /// Reads a `weir.toml` file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(path, &text)
    }

    fn from_toml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|error| {
            let (line, column) = error
                .span()
                .map_or((1, 1), |span| line_column(text, span.start));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: error.message().to_string(),
            }
        })
    }

    fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(brokers) = var("WEIR_BROKERS").filter(|b| !b.trim().is_empty()) {
            self.brokers = Some(brokers);
        }
        if let Some(dir) = var("WEIR_STATE_DIR") {
            self.state_dir = PathBuf::from(dir);
        }
        if let Some(value) = var("WEIR_EMBEDDED_BROKER") {
            self.embedded_broker = parse_env("WEIR_EMBEDDED_BROKER", value)?;
        }
        if let Some(value) = var("WEIR_REGISTRY") {
            self.registry = parse_env("WEIR_REGISTRY", value)?;
        }
        if let Some(value) = var("WEIR_MAX_RECORD_BYTES") {
            self.max_record_bytes = parse_env("WEIR_MAX_RECORD_BYTES", value)?;
        }
        if let Some(value) = var("WEIR_AUTO_CREATE_TOPICS") {
            self.auto_create_topics = parse_env("WEIR_AUTO_CREATE_TOPICS", value)?;
        }
        if let Some(value) = var("WEIR_NUM_PARTITIONS") {
            self.num_partitions = parse_env("WEIR_NUM_PARTITIONS", value)?;
        }
        Ok(())
    }
}

fn parse_env<T: std::str::FromStr>(name: &'static str, value: String) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| ConfigError::Env {
        name,
        message: e.to_string(),
        value,
    })
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_environment() {
        let mut config = Config::from_toml(
            Path::new("weir.toml"),
            "brokers = \"k1:9092\"\nmax_record_bytes = 10\n",
        )
        .unwrap();
        assert_eq!(config.brokers.as_deref(), Some("k1:9092"));
        config
            .apply_env(|name| (name == "WEIR_BROKERS").then(|| "k2:9092".to_string()))
            .unwrap();
        assert_eq!(config.brokers.as_deref(), Some("k2:9092"));
        assert_eq!(config.max_record_bytes, 10);
        assert_eq!(config.state_dir, PathBuf::from(".weir"));
        assert!(config.auto_create_topics);
        assert_eq!(config.num_partitions.get(), 1);
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let error = Config::from_toml(Path::new("weir.toml"), "state_dir = \".w\"\nbrokrs = 1\n")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("weir.toml:2:1: "), "{error}");
        assert!(error.contains("brokrs"), "{error}");

        let error = Config::default()
            .apply_env(|name| (name == "WEIR_REGISTRY").then(|| "nowhere".to_string()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("WEIR_REGISTRY=\"nowhere\""), "{error}");
    }
}
