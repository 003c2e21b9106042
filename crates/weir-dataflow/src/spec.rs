//! Jobs described in TOML, for `weir job run`.
//!
//! ```toml
//! name = "user_spend"
//! checkpoint_interval = "1s"
//!
//! [source]
//! topic = "transactions"       # or: parquet = "history/" (a backfill)
//! event_time = "event_time"    # a column, or "kafka" for the record timestamp
//! lateness = "5s"
//! idle_timeout = "30s"
//! start = "earliest"           # or "latest", when the job has no checkpoint
//! bounded = false              # true: stop at the end offsets seen at start
//! # Without `schema`, the topic's registered Avro schema is used.
//! schema = { user_id = "string", merchant_id = "string", amount = "double", event_time = "long" }
//! # types: see `column_type` (nested: list<T>, map<T>, struct<a: T>; nullable: T?)
//!
//! [lookup]                     # optional: the latest row per key of a table topic
//! topic = "merchants"
//! key = "merchant_id"          # the table's key column
//! on = "merchant_id"           # the stream's column matched with it
//! columns = { category = "merchant_category" }   # table column = output name
//! join = "left"                # or "inner" (the default)
//! schema = { merchant_id = "string", category = "string" }
//!
//! [select]                     # optional: a row transform before the aggregation
//! filter = "amount > 0"
//! columns = ["user_id", "merchant_category", "amount * 100 AS cents", "event_time"]
//!
//! [[operator]]                 # optional, any number: Weir's stateful operators, in order
//! kind = "top_k"               # see `crate::operators` for the kinds and their settings
//! key = "user_id"
//! by = "amount"
//! k = 3
//! window = "1m"
//! time = "event_time"
//!
//! [aggregate]                  # optional: without it, rows go to the sink as they are
//! keys = ["user_id"]
//! window = { hop = { size = "1h", slide = "5m" } }   # or { tumble = "1m" }, { session = "30m" };
//!                                                     # none: a continuous aggregation, emitted as it changes
//! aggregates = { n = "count(*)", avg_cents = "avg(cents)", categories = "count(DISTINCT merchant_category)" }
//! emit = "close"               # or "update": every checkpoint, the windows that changed
//!
//! [sink]
//! topic = "weir.features.user_spend"   # or: parquet = "out/", table = "user_spend.db"
//! key = ["user_id", "window_start"]    # default: the grouping keys and window_start
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{Field, Schema};
use serde::Deserialize;
use toml::Spanned;

use crate::DataflowError;
use crate::aggregate::Emit;
use crate::column_type;
pub use crate::duration::parse_duration;
use crate::interval_join::IntervalJoin;
use crate::lookup::{JoinKind, Lookup};
use crate::pipeline::{
    Aggregation, EventTime, JobSpec, KafkaSource, ParquetSource, Select, Source, Start,
};
use crate::sink::Sink;
use crate::window::Window;

type SchemaFile = BTreeMap<String, Spanned<String>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    name: String,
    #[serde(default)]
    checkpoint_interval: Option<Spanned<String>>,
    source: SourceFile,
    #[serde(default)]
    lookup: Option<LookupFile>,
    #[serde(default)]
    join: Option<JoinFile>,
    #[serde(default)]
    select: Option<SelectFile>,
    #[serde(default)]
    operator: Vec<Spanned<toml::Table>>,
    #[serde(default)]
    aggregate: Option<AggregateFile>,
    sink: SinkFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceFile {
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    parquet: Option<String>,
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
    schema: Option<SchemaFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LookupFile {
    topic: String,
    key: String,
    on: String,
    #[serde(default)]
    columns: BTreeMap<String, String>,
    #[serde(default)]
    join: Option<Spanned<String>>,
    #[serde(default)]
    schema: Option<SchemaFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinFile {
    topic: String,
    event_time: String,
    #[serde(default)]
    lateness: Option<Spanned<String>>,
    #[serde(default)]
    idle_timeout: Option<Spanned<String>>,
    #[serde(default)]
    schema: Option<SchemaFile>,
    on: BTreeMap<String, String>,
    between: Spanned<[String; 2]>,
    #[serde(default)]
    kind: Option<Spanned<String>>,
    #[serde(default)]
    columns: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectFile {
    #[serde(default)]
    filter: Option<String>,
    #[serde(default)]
    columns: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AggregateFile {
    #[serde(default)]
    filter: Option<String>,
    keys: Vec<String>,
    /// None: a continuous aggregation, emitted as it changes.
    #[serde(default)]
    window: Option<WindowFile>,
    aggregates: BTreeMap<String, String>,
    #[serde(default)]
    emit: Option<Spanned<String>>,
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
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    parquet: Option<String>,
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    key: Vec<String>,
}

/// Milliseconds of a duration that may be negative (`-5s`).
fn signed_millis(text: &str) -> Result<i64, String> {
    let (sign, rest) = match text.trim().strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.trim()),
    };
    let ms =
        i64::try_from(parse_duration(rest)?.as_millis()).map_err(|_| "too long".to_string())?;
    Ok(sign * ms)
}

/// Reads a job file; `state_dir` holds the job's state. Relative paths in
/// the file (Parquet, tables) are relative to the file's directory.
pub fn load(path: &Path, state_dir: &Path) -> Result<JobSpec, DataflowError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DataflowError::Plan(format!("{}: {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse_in(&text, state_dir, base)
        .map_err(|e| DataflowError::Plan(format!("{}:{e}", path.display())))
}

/// Parses a job from TOML text. Errors start with `line:column: `.
pub fn parse(text: &str, state_dir: &Path) -> Result<JobSpec, String> {
    parse_in(text, state_dir, Path::new("."))
}

/// `line:column` of a section header, for errors about the whole section.
fn section(text: &str, header: &str) -> String {
    let (line, column) = text
        .find(header)
        .map_or((1, 1), |at| weir_core::config::line_column(text, at));
    format!("{line}:{column}")
}

/// Splits `expr AS name` (any case); a bare column is its own name.
fn select_item(item: &str) -> Result<(String, String), String> {
    let lower = item.to_ascii_lowercase();
    match lower.rfind(" as ") {
        Some(at) => {
            let name = item[at + 4..].trim().trim_matches('"');
            if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                return Err(format!("`{name}` is not a column name"));
            }
            Ok((name.to_string(), item[..at].trim().to_string()))
        }
        None => {
            let name = item.trim();
            if !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                return Err(format!("`{name}` needs a name: write `{name} AS name`"));
            }
            Ok((name.to_string(), format!("\"{name}\"")))
        }
    }
}

fn parse_in(text: &str, state_dir: &Path, base: &Path) -> Result<JobSpec, String> {
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
    let schema_of = |schema: &SchemaFile| -> Result<arrow::datatypes::SchemaRef, String> {
        let fields = schema
            .iter()
            .map(|(name, kind)| {
                column_type::parse(kind.get_ref())
                    .map(|(t, nullable)| Field::new(name, t, nullable))
                    .map_err(|e| at(kind.span(), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(Schema::new(fields)))
    };
    // A topic read with its event time and its timing settings.
    let kafka_source = |topic: &str,
                        event_time: &str,
                        lateness: &Option<Spanned<String>>,
                        idle_timeout: &Option<Spanned<String>>|
     -> Result<KafkaSource, String> {
        let mut kafka = KafkaSource::new(topic, event_time);
        if event_time == "kafka" {
            kafka.event_time = EventTime::Kafka;
        }
        if let Some(lateness) = lateness {
            kafka.lateness = duration(lateness)?;
        }
        if let Some(idle) = idle_timeout {
            kafka.idle_timeout = duration(idle)?;
        }
        Ok(kafka)
    };
    let join_kind = |kind: &Option<Spanned<String>>| match kind {
        None => Ok(JoinKind::Inner),
        Some(kind) => match kind.get_ref().as_str() {
            "inner" => Ok(JoinKind::Inner),
            "left" => Ok(JoinKind::Left),
            other => Err(at(kind.span(), format!("`{other}` is not inner or left"))),
        },
    };
    let source = file.source;
    // The joined stream ends where the source does.
    let source_bounded = source.bounded;
    let source = match (&source.topic, &source.parquet) {
        (Some(topic), None) => {
            let mut kafka = kafka_source(
                topic,
                &source.event_time,
                &source.lateness,
                &source.idle_timeout,
            )?;
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
            kafka.schema = source.schema.as_ref().map(schema_of).transpose()?;
            Source::Kafka(kafka)
        }
        (None, Some(parquet)) => Source::Parquet(ParquetSource {
            path: base.join(parquet),
            event_time: source.event_time.clone(),
        }),
        _ => {
            return Err(format!(
                "{}: [source] needs one of `topic` or `parquet`",
                section(text, "[source]")
            ));
        }
    };
    let lookup = match file.lookup {
        None => None,
        Some(lookup) => Some(Lookup {
            schema: lookup.schema.as_ref().map(schema_of).transpose()?,
            kind: join_kind(&lookup.join)?,
            topic: lookup.topic,
            key: lookup.key,
            on: lookup.on,
            columns: lookup.columns.into_iter().collect(),
        }),
    };
    let join = match file.join {
        None => None,
        Some(join) => {
            let mut right = kafka_source(
                &join.topic,
                &join.event_time,
                &join.lateness,
                &join.idle_timeout,
            )?;
            right.bounded = source_bounded;
            right.schema = join.schema.as_ref().map(schema_of).transpose()?;
            let span = join.between.span();
            let [lower, upper] = join.between.into_inner();
            let bound = |text: &str| {
                signed_millis(text).map_err(|e| at(span.clone(), format!("`between`: {e}")))
            };
            Some(IntervalJoin {
                right,
                on: join.on.into_iter().collect(),
                lower: bound(&lower)?,
                upper: bound(&upper)?,
                kind: join_kind(&join.kind)?,
                columns: join.columns.into_iter().collect(),
            })
        }
    };
    let select = match file.select {
        None => None,
        Some(select) => Some(Select {
            filter: select.filter,
            columns: select
                .columns
                .map(|items| {
                    items
                        .iter()
                        .map(|item| select_item(item.get_ref()).map_err(|e| at(item.span(), e)))
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?,
        }),
    };
    let aggregation = match file.aggregate {
        None => None,
        Some(aggregate) => {
            let window =
                match &aggregate.window {
                    Some(WindowFile::Tumble(size)) => Window::tumbling(duration(size)?)
                        .map_err(|e| at(size.span(), e.to_string()))?,
                    Some(WindowFile::Hop { size, slide }) => {
                        Window::hopping(duration(size)?, duration(slide)?)
                            .map_err(|e| at(slide.span(), e.to_string()))?
                    }
                    Some(WindowFile::Session(gap)) => Window::session(duration(gap)?)
                        .map_err(|e| at(gap.span(), e.to_string()))?,
                    None => Window::Global,
                };
            let emit = match &aggregate.emit {
                None if window.is_global() => Emit::OnUpdate,
                None => Emit::OnClose,
                Some(emit) => match emit.get_ref().as_str() {
                    "close" => Emit::OnClose,
                    "update" => Emit::OnUpdate,
                    other => {
                        return Err(at(emit.span(), format!("`{other}` is not close or update")));
                    }
                },
            };
            Some(Aggregation {
                filter: aggregate.filter,
                keys: aggregate.keys,
                window,
                aggregates: aggregate.aggregates.into_iter().collect(),
                emit,
            })
        }
    };
    let sink = match (file.sink.topic, file.sink.parquet, file.sink.table) {
        (Some(topic), None, None) => Sink::Kafka {
            topic,
            key: file.sink.key,
        },
        (None, Some(dir), None) => Sink::Parquet {
            dir: base.join(dir),
        },
        (None, None, Some(path)) => Sink::Table {
            path: base.join(path),
            key: file.sink.key,
        },
        _ => {
            return Err(format!(
                "{}: [sink] needs one of `topic`, `parquet` or `table`",
                section(text, "[sink]")
            ));
        }
    };
    let operators = file
        .operator
        .into_iter()
        .map(|table| {
            let span = table.span();
            crate::operators::from_toml(table.into_inner()).map_err(|e| at(span, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(JobSpec {
        name: file.name,
        source,
        lookup,
        join,
        select,
        operators,
        aggregation,
        sink,
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
        let Source::Kafka(kafka) = &spec.source else {
            panic!("a Kafka source")
        };
        assert_eq!(kafka.lateness, Duration::from_secs(5));
        let aggregation = spec.aggregation.unwrap();
        assert_eq!(
            aggregation.window,
            Window::hopping(Duration::from_secs(3600), Duration::from_secs(300)).unwrap()
        );
        assert_eq!(aggregation.aggregates.len(), 3);
        let lookup = spec.lookup.unwrap();
        assert_eq!(lookup.kind, JoinKind::Left);
        let columns = spec.select.unwrap().columns.unwrap();
        assert_eq!(
            columns[2],
            ("cents".to_string(), "amount * 100".to_string())
        );
        assert_eq!(
            columns[0],
            ("user_id".to_string(), "\"user_id\"".to_string())
        );
    }

    #[test]
    fn joins_operators_and_windowless_aggregates_parse() {
        let text = r#"
name = "labelled"
[source]
topic = "log"
event_time = "ts"
[join]
topic = "feedback"
event_time = "ts"
on = { request_id = "request_id" }
between = ["-5s", "1h"]
kind = "left"
columns = { label = "label", ts = "label_ts" }
[[operator]]
kind = "top_k"
key = "request_id"
by = "label"
k = 2
window = "1m"
time = "ts"
[aggregate]
keys = ["variant"]
aggregates = { n = "count(*)" }
[sink]
topic = "out"
"#;
        let spec = parse(text, Path::new("/tmp/state")).unwrap();
        let join = spec.join.unwrap();
        assert_eq!((join.lower, join.upper), (-5_000, 3_600_000));
        assert_eq!(join.kind, JoinKind::Left);
        assert_eq!(
            join.on,
            vec![("request_id".to_string(), "request_id".to_string())]
        );
        assert_eq!(
            join.columns,
            vec![
                ("label".to_string(), "label".to_string()),
                ("ts".to_string(), "label_ts".to_string())
            ]
        );
        assert_eq!(spec.operators.len(), 1);
        let aggregation = spec.aggregation.unwrap();
        assert_eq!(aggregation.window, Window::Global);
        assert_eq!(
            aggregation.emit,
            Emit::OnUpdate,
            "a windowless aggregate updates"
        );

        let bad = text.replace("kind = \"top_k\"", "kind = \"top_n\"");
        let error = parse(&bad, Path::new("/tmp")).unwrap_err();
        assert!(error.contains("`top_n` is not an operator kind"), "{error}");
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
