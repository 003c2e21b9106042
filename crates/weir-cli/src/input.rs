//! Reading records from JSON lines or CSV, each with its line number so an
//! error can say `file:line:col`.

use std::io::BufRead;

use apache_avro::Schema as AvroSchema;
use serde_json::{Map, Value as Json};

/// The format of a `weir publish` input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// One JSON document per line.
    Jsonl,
    /// Comma-separated values with a header row.
    Csv,
}

/// One input record: where it was, its bytes, and its value or what is wrong.
pub struct Line {
    /// 1-based line number.
    pub number: usize,
    /// The line as read (for the dead-letter topic).
    pub raw: Vec<u8>,
    pub value: Result<Json, LineError>,
}

/// A line that is not a record.
pub struct LineError {
    /// 1-based column, when known.
    pub column: Option<usize>,
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
) -> anyhow::Result<impl Iterator<Item = std::io::Result<Line>>> {
    let mut csv = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
    let headers: Vec<String> = csv.headers()?.iter().map(str::to_string).collect();
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
