//! Jobs described in TOML, for `weir job run`.
//!
//! ```toml
//! name = "user_spend"
//! checkpoint_interval = "1s"
//!
//! [source]
//! topic = "transactions"
//! event_time = "event_time"    # a column, or "kafka" for the record timestamp
//! lateness = "5s"
//! idle_timeout = "30s"
//! start = "earliest"           # or "latest", when the job has no checkpoint
//! bounded = false              # true: stop at the end offsets seen at start
//! # Without `schema`, the topic's registered Avro schema is used.
//! schema = { user_id = "string", merchant_id = "string", amount = "double", event_time = "long" }
//!
//! [aggregate]
//! filter = "amount > 0"
//! keys = ["user_id"]
//! window = { hop = { size = "1h", slide = "5m" } }   # or { tumble = "1m" }
//! aggregates = { n = "count(*)", avg_amount = "avg(amount)", max_amount = "max(amount)" }
//!
//! [sink]
//! topic = "weir.features.user_spend"
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use serde::Deserialize;
use toml::Spanned;

use crate::DataflowError;
use crate::job::{Aggregation, EventTime, JobSpec, KafkaSource, Sink, Start};
use crate::window::Window;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    name: String,
    #[serde(default)]
    checkpoint_interval: Option<Spanned<String>>,
    source: SourceFile,
    aggregate: AggregateFile,
    sink: SinkFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceFile {
    topic: String,
    event_time: String,
    #[serde(default)]
    lateness: Option<Spanned<String>>,
    #[serde(default)]
    idle_timeout: Option<Spanned<String>>,
    #[serde(default)]
    start: Option<Spanned<String>>,
    #[serde(default)]
    bounded: bool,
    #[serde(default)]
    schema: Option<BTreeMap<String, Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AggregateFile {
    #[serde(default)]
    filter: Option<String>,
    keys: Vec<String>,
    window: WindowFile,
    aggregates: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum WindowFile {
    Tumble(Spanned<String>),
    Hop {
        size: Spanned<String>,
        slide: Spanned<String>,
    },
    Session(Spanned<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SinkFile {
    topic: String,
}

/// Parses a duration such as `250ms`, `5s`, `10m`, `1h`, `2d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit (ms, s, m, h, d)"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a whole number"))?;
    let ms = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "`{other}` in `{text}` is not a unit (ms, s, m, h, d)"
            ));
        }
    };
    Ok(Duration::from_millis(number * ms))
}

fn data_type(name: &str) -> Option<DataType> {
    Some(match name {
        "string" => DataType::Utf8,
        "long" | "bigint" => DataType::Int64,
        "int" => DataType::Int32,
        "double" => DataType::Float64,
        "float" => DataType::Float32,
        "boolean" => DataType::Boolean,
        "timestamp" | "timestamp-millis" => DataType::Timestamp(TimeUnit::Millisecond, None),
        _ => return None,
    })
}

/// Reads a job file; `state_dir` holds the job's state.
pub fn load(path: &Path, state_dir: &Path) -> Result<JobSpec, DataflowError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DataflowError::Plan(format!("{}: {e}", path.display())))?;
    parse(&text, state_dir).map_err(|e| DataflowError::Plan(format!("{}:{e}", path.display())))
}

/// Parses a job from TOML text. Errors start with `line:column: `.
pub fn parse(text: &str, state_dir: &Path) -> Result<JobSpec, String> {
    let file: JobFile = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |span| {
            weir_core::config::line_column(text, span.start)
        });
        format!("{line}:{column}: {}", e.message())
    })?;
    let at = |span: std::ops::Range<usize>, message: String| {
        let (line, column) = weir_core::config::line_column(text, span.start);
        format!("{line}:{column}: {message}")
    };
    let duration =
        |value: &Spanned<String>| parse_duration(value.get_ref()).map_err(|e| at(value.span(), e));
    let source = file.source;
    let mut kafka = KafkaSource::new(&source.topic, &source.event_time);
    if source.event_time == "kafka" {
        kafka.event_time = EventTime::Kafka;
    }
    if let Some(lateness) = &source.lateness {
        kafka.lateness = duration(lateness)?;
    }
    if let Some(idle) = &source.idle_timeout {
        kafka.idle_timeout = duration(idle)?;
    }
    kafka.start = match &source.start {
        None => Start::Earliest,
        Some(start) => match start.get_ref().as_str() {
            "earliest" => Start::Earliest,
            "latest" => Start::Latest,
            other => {
                return Err(at(
                    start.span(),
                    format!("`{other}` is not earliest or latest"),
                ));
            }
        },
    };
    kafka.bounded = source.bounded;
    if let Some(schema) = source.schema {
        let fields = schema
            .iter()
            .map(|(name, kind)| {
                data_type(kind.get_ref()).map(|t| Field::new(name, t, false)).ok_or_else(|| {
                    at(
                        kind.span(),
                        format!(
                            "`{}` is not a type (string, long, int, double, float, boolean, timestamp)",
                            kind.get_ref()
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        kafka.schema = Some(Arc::new(Schema::new(fields)));
    }
    let window = match &file.aggregate.window {
        WindowFile::Tumble(size) => {
            Window::tumbling(duration(size)?).map_err(|e| at(size.span(), e.to_string()))?
        }
        WindowFile::Hop { size, slide } => Window::hopping(duration(size)?, duration(slide)?)
            .map_err(|e| at(slide.span(), e.to_string()))?,
        WindowFile::Session(gap) => {
            Window::session(duration(gap)?).map_err(|e| at(gap.span(), e.to_string()))?
        }
    };
    Ok(JobSpec {
        name: file.name,
        source: kafka,
        aggregation: Aggregation {
            filter: file.aggregate.filter,
            keys: file.aggregate.keys,
            window,
            aggregates: file.aggregate.aggregates.into_iter().collect(),
        },
        sink: Sink::Kafka {
            topic: file.sink.topic,
        },
        checkpoint_interval: match &file.checkpoint_interval {
            Some(interval) => duration(interval)?,
            None => Duration::from_secs(1),
        },
        state_dir: state_dir.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_example_parses() {
        let doc = include_str!("spec.rs");
        let example: String = doc
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .filter_map(|l| l.strip_prefix("//! "))
            .skip_while(|l| !l.starts_with("```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("```"))
            .collect::<Vec<_>>()
            .join("\n");
        let spec = parse(&example, Path::new("/tmp/state")).unwrap();
        assert_eq!(spec.name, "user_spend");
        assert_eq!(spec.source.lateness, Duration::from_secs(5));
        assert_eq!(
            spec.aggregation.window,
            Window::hopping(Duration::from_secs(3600), Duration::from_secs(300)).unwrap()
        );
        assert_eq!(spec.aggregation.aggregates.len(), 3);
    }

    #[test]
    fn errors_say_where() {
        let error = parse("name = 1\n", Path::new("/tmp")).unwrap_err();
        assert!(error.starts_with("1:8:"), "{error}");
        let file = "name = \"j\"\n[source]\ntopic = \"t\"\nevent_time = \"ts\"\nlateness = \"5 parsecs\"\n\
                    [aggregate]\nkeys = []\nwindow = { tumble = \"1m\" }\naggregates = { n = \"count(*)\" }\n\
                    [sink]\ntopic = \"o\"\n";
        let error = parse(file, Path::new("/tmp")).unwrap_err();
        assert!(error.starts_with("5:12:"), "{error}");
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5 parsecs").is_err());
    }
}
