//! Records from files (`weir publish`): JSON lines or CSV read with each
//! line's number, encoded for a topic, published, and the lines that are
//! not valid records sent to the topic's dead-letter topic with their
//! reason — reported as `line:col: problem` — while the others go on: bad
//! input never stops the flow and is never dropped silently.

use std::collections::VecDeque;
use std::io::BufRead;

use apache_avro::Schema as AvroSchema;
use serde_json::{Map, Value as Json};

use crate::dead_letter::{DeadLetters, Source};
use crate::{Bus, BusError, DeadLetterReason, DecodeError, Publisher};

/// How an input's records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON document per line.
    JsonLines,
    /// Comma-separated values with a header row.
    Csv,
}

impl Format {
    /// The format a file's extension says: `.csv` is CSV, anything else
    /// (stdin too) JSON lines.
    pub fn of_path(path: Option<&std::path::Path>) -> Self {
        match path.and_then(|p| p.extension()) {
            Some(extension) if extension.eq_ignore_ascii_case("csv") => Format::Csv,
            _ => Format::JsonLines,
        }
    }
}

/// Input records, each with its line.
pub type Lines = Box<dyn Iterator<Item = std::io::Result<Line>> + Send>;

/// The records of `reader`, written in `format`, for `publisher`'s topic
/// (CSV cells are typed by the topic's Avro schema, when it has one).
pub fn records(
    reader: impl BufRead + Send + 'static,
    format: Format,
    publisher: &Publisher,
) -> std::io::Result<Lines> {
    Ok(match format {
        Format::JsonLines => Box::new(json_lines(reader)),
        Format::Csv => {
            let schema = publisher
                .codec()
                .schema()
                .and_then(|schema| match &schema.kind {
                    crate::registry::SchemaKind::Avro(avro) => Some(avro.schema),
                    crate::registry::SchemaKind::Json(_) => None,
                });
            Box::new(csv_records(reader, schema)?)
        }
    })
}

/// The lines that could not be published, with their numbers; nothing is
/// published.
pub fn check_lines(
    publisher: &Publisher,
    lines: Lines,
    key_field: Option<&str>,
) -> std::io::Result<Vec<(usize, BadLine)>> {
    let mut bad = Vec::new();
    for line in lines {
        let line = line?;
        if let Err(error) = encode(publisher, &line, key_field) {
            bad.push((line.number, error));
        }
    }
    Ok(bad)
}

/// One input record: where it was, its bytes, and its value or what is wrong.
#[derive(Debug)]
pub struct Line {
    /// 1-based line number.
    pub number: usize,
    /// The line as read (for the dead-letter topic).
    pub raw: Vec<u8>,
    /// The record, or why the line is not one.
    pub value: Result<Json, LineError>,
}

/// A line that is not a record.
#[derive(Debug)]
pub struct LineError {
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// Reads JSON lines: one document per line, blank lines skipped.
pub fn json_lines(reader: impl BufRead) -> impl Iterator<Item = std::io::Result<Line>> {
    reader.split(b'\n').enumerate().filter_map(|(index, line)| {
        let line = match line {
            Ok(line) => line,
            Err(error) => return Some(Err(error)),
        };
        let trimmed = line.strip_suffix(b"\r").unwrap_or(&line);
        if trimmed.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let value = serde_json::from_slice::<Json>(trimmed).map_err(|e| LineError {
            column: Some(e.column()),
            message: format!("not JSON: {e}"),
        });
        Some(Ok(Line {
            number: index + 1,
            raw: trimmed.to_vec(),
            value,
        }))
    })
}

/// Reads CSV with a header row. Values are typed by the topic's Avro schema
/// when there is one (`int`, `long`, `float`, `double`, `boolean`, `string`,
/// nullable unions: an empty cell is null); otherwise numbers and booleans
/// are recognised and everything else stays a string.
pub fn csv_records(
    reader: impl std::io::Read,
    schema: Option<&AvroSchema>,
) -> std::io::Result<impl Iterator<Item = std::io::Result<Line>>> {
    let mut csv = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
    let headers: Vec<String> = csv
        .headers()
        .map_err(std::io::Error::other)?
        .iter()
        .map(str::to_string)
        .collect();
    let field_types: Vec<Option<AvroSchema>> = headers
        .iter()
        .map(|name| match schema {
            Some(AvroSchema::Record(record)) => record
                .lookup
                .get(name)
                .map(|&i| record.fields[i].schema.clone()),
            _ => None,
        })
        .collect();
    Ok(csv.into_byte_records().map(move |record| {
        let record = record.map_err(std::io::Error::other)?;
        let number = record.position().map_or(0, |p| p.line() as usize);
        let mut raw = Vec::new();
        {
            let mut writer = csv::Writer::from_writer(&mut raw);
            writer
                .write_byte_record(&record)
                .map_err(std::io::Error::other)?;
        }
        while raw.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            raw.pop();
        }
        let value = if record.len() != headers.len() {
            Err(LineError {
                column: None,
                message: format!(
                    "{} fields where the header has {}",
                    record.len(),
                    headers.len()
                ),
            })
        } else {
            let mut object = Map::new();
            let mut error = None;
            for ((name, cell), field_type) in headers.iter().zip(&record).zip(&field_types) {
                match std::str::from_utf8(cell) {
                    Ok(text) => {
                        object.insert(name.clone(), typed_cell(text, field_type.as_ref()));
                    }
                    Err(_) => {
                        error = Some(LineError {
                            column: None,
                            message: format!("field `{name}` is not UTF-8"),
                        });
                        break;
                    }
                }
            }
            error.map_or(Ok(Json::Object(object)), Err)
        };
        Ok(Line { number, raw, value })
    }))
}

fn typed_cell(text: &str, field_type: Option<&AvroSchema>) -> Json {
    use AvroSchema as S;
    let inferred = || -> Json {
        if let Ok(n) = text.parse::<i64>() {
            return Json::from(n);
        }
        if let Ok(x) = text.parse::<f64>()
            && x.is_finite()
        {
            return Json::from(x);
        }
        match text {
            "true" => Json::Bool(true),
            "false" => Json::Bool(false),
            _ => Json::String(text.to_string()),
        }
    };
    match field_type {
        None => {
            if text.is_empty() {
                Json::Null
            } else {
                inferred()
            }
        }
        Some(S::String | S::Uuid(_) | S::Bytes | S::Enum(_)) => Json::String(text.to_string()),
        Some(S::Union(union)) => {
            if text.is_empty() && union.variants().iter().any(|v| matches!(v, S::Null)) {
                return Json::Null;
            }
            let non_null: Vec<&AvroSchema> = union
                .variants()
                .iter()
                .filter(|v| !matches!(v, S::Null))
                .collect();
            match non_null.as_slice() {
                [single] => typed_cell(text, Some(single)),
                _ => inferred(),
            }
        }
        // Numbers, booleans, timestamps: parsed, and left as text when they
        // do not parse so that the schema check names the field.
        Some(_) => inferred(),
    }
}

/// A line that cannot be published, and where in the line the problem is.
#[derive(Debug)]
pub struct BadLine {
    /// 1-based column of the problem, when known.
    pub column: Option<usize>,
    /// What is wrong, as the dead letter says it.
    pub error: DecodeError,
}

impl BadLine {
    /// `line:col: problem` (the caller adds the file).
    pub fn located(&self, line: usize) -> String {
        let position = match self.column {
            Some(column) => format!("{line}:{column}"),
            None => line.to_string(),
        };
        format!("{position}: {}", self.error)
    }
}

/// A line's key (the value of `key_field`, when given) and its value,
/// encoded for `publisher`'s topic.
pub fn encode(
    publisher: &Publisher,
    line: &Line,
    key_field: Option<&str>,
) -> Result<(Option<Vec<u8>>, Vec<u8>), BadLine> {
    let value = line.value.as_ref().map_err(|e| BadLine {
        column: e.column,
        error: DecodeError::new(DeadLetterReason::BadJson, e.message.clone()),
    })?;
    let key = match key_field {
        None => None,
        Some(field) => Some(key_bytes(value, field).ok_or_else(|| BadLine {
            column: None,
            error: DecodeError {
                reason: DeadLetterReason::MissingField,
                field: Some(field.to_string()),
                message: format!("the key field `{field}` is missing or null"),
            },
        })?),
    };
    let bytes = publisher.encode(value).map_err(|error| BadLine {
        column: None,
        error,
    })?;
    Ok((key, bytes))
}

/// The key of a record: a string field as its text, anything else as JSON.
fn key_bytes(value: &Json, field: &str) -> Option<Vec<u8>> {
    match value.get(field)? {
        Json::Null => None,
        Json::String(text) => Some(text.as_bytes().to_vec()),
        other => Some(other.to_string().into_bytes()),
    }
}

/// What publishing lines did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// Records published.
    pub records: u64,
    /// Lines sent to the dead-letter topic.
    pub bad: u64,
}

/// Most records awaiting acknowledgement at once.
const IN_FLIGHT: usize = 100_000;

/// Publishes `lines` with `publisher` (keyed by `key_field`): each good
/// line as a record of the topic, each bad one to its dead-letter topic
/// (its offset the line's number), after `on_bad` is told of it. `on_read`
/// is told the bytes read so far, now and then.
pub async fn publish_lines(
    bus: &Bus,
    publisher: &Publisher,
    lines: impl Iterator<Item = std::io::Result<Line>>,
    key_field: Option<&str>,
    mut on_bad: impl FnMut(usize, &BadLine),
    mut on_read: impl FnMut(u64),
) -> Result<Published, BusError> {
    let topic = publisher.codec().topic().to_string();
    let mut dead_letters = DeadLetters::new(bus);
    let mut in_flight = VecDeque::new();
    let mut published = Published::default();
    let mut bytes_read = 0_u64;
    for line in lines {
        let line = line.map_err(|source| BusError::Input {
            context: "reading the input".into(),
            source,
        })?;
        bytes_read += line.raw.len() as u64 + 1;
        match encode(publisher, &line, key_field) {
            Ok((key, bytes)) => {
                in_flight.push_back(publisher.send(key.as_deref(), &bytes).await?);
                published.records += 1;
                if in_flight.len() >= IN_FLIGHT {
                    in_flight.pop_front().expect("non-empty").await?;
                }
            }
            Err(error) => {
                published.bad += 1;
                on_bad(line.number, &error);
                let source = Source {
                    topic: &topic,
                    partition: -1,
                    offset: line.number as i64,
                    key: None,
                    payload: Some(&line.raw),
                    headers: &[],
                };
                dead_letters.send(source, &error.error).await?;
            }
        }
        if published.records % 1024 == 0 {
            on_read(bytes_read);
        }
    }
    for delivery in in_flight {
        delivery.await?;
    }
    dead_letters.settle().await?;
    Ok(published)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_lines_keep_their_numbers() {
        let input = b"{\"a\": 1}\n\n{\"a\": \n{\"a\": 3}\r\n";
        let lines: Vec<Line> = json_lines(&input[..]).map(Result::unwrap).collect();
        assert_eq!(
            lines.iter().map(|l| l.number).collect::<Vec<_>>(),
            [1, 3, 4]
        );
        assert_eq!(lines[0].value.as_ref().ok(), Some(&json!({"a": 1})));
        let error = lines[1].value.as_ref().err().unwrap();
        assert!(error.column.is_some());
        assert_eq!(lines[2].raw, b"{\"a\": 3}");
    }

    #[test]
    fn csv_cells_are_typed_by_the_schema() {
        let schema = AvroSchema::parse_str(
            r#"{"type": "record", "name": "R", "fields": [
                {"name": "id", "type": "string"},
                {"name": "n", "type": "long"},
                {"name": "note", "type": ["null", "string"]}]}"#,
        )
        .unwrap();
        let input = "id,n,note\n007,5,\n008,x,hi\n1,2\n";
        let lines: Vec<Line> = csv_records(input.as_bytes(), Some(&schema))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            lines[0].value.as_ref().ok(),
            Some(&json!({"id": "007", "n": 5, "note": null}))
        );
        assert_eq!(
            lines[1].value.as_ref().ok(),
            Some(&json!({"id": "008", "n": "x", "note": "hi"}))
        );
        assert_eq!(lines[1].number, 3);
        assert!(lines[2].value.is_err());
        // Without a schema: inferred.
        let lines: Vec<Line> = csv_records("a,b,c\n1,2.5,yes\n".as_bytes(), None)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            lines[0].value.as_ref().ok(),
            Some(&json!({"a": 1, "b": 2.5, "c": "yes"}))
        );
    }
}
