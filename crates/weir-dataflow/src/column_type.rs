//! Column types as declared schemas write them (job files, view headers):
//! `string`, `long`, `int`, `double`, `float`, `boolean`, `timestamp`,
//! nested as `list<T>`, `map<T>` (string keys) and `struct<a: T, b: U>`,
//! and any of them nullable with a trailing `?` (`string?`, `list<double?>`).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, TimeUnit};

/// The types a declared schema can name, for error messages.
pub const NAMES: &str =
    "string, long, int, double, float, boolean, timestamp, list<T>, map<T>, struct<a: T, …>, T?";

/// The Arrow type `text` names and whether `?` makes it nullable.
pub fn parse(text: &str) -> Result<(DataType, bool), String> {
    let text = text.trim();
    let (text, nullable) = match text.strip_suffix('?') {
        Some(rest) => (rest.trim_end(), true),
        None => (text, false),
    };
    let data_type = if let Some(inner) = generic(text, "list") {
        let (item, nullable) = parse(inner)?;
        DataType::List(Arc::new(Field::new("item", item, nullable)))
    } else if let Some(inner) = generic(text, "map") {
        let (value, nullable) = parse(inner)?;
        map_of(value, nullable)
    } else if let Some(inner) = generic(text, "struct") {
        let fields = split_top_level(inner)
            .into_iter()
            .map(|member| {
                let (name, kind) = member
                    .split_once(':')
                    .ok_or_else(|| format!("`{member}` in `{text}` is not `name: type`"))?;
                let (data_type, nullable) = parse(kind)?;
                Ok(Field::new(name.trim(), data_type, nullable))
            })
            .collect::<Result<Vec<_>, String>>()?;
        DataType::Struct(Fields::from(fields))
    } else {
        match text {
            "string" => DataType::Utf8,
            "long" | "bigint" => DataType::Int64,
            "int" => DataType::Int32,
            "double" => DataType::Float64,
            "float" => DataType::Float32,
            "boolean" => DataType::Boolean,
            "timestamp" | "timestamp-millis" => DataType::Timestamp(TimeUnit::Millisecond, None),
            _ => return Err(format!("`{text}` is not a type ({NAMES})")),
        }
    };
    Ok((data_type, nullable))
}

/// A map with string keys and `value`s, as streams hold maps (Avro's too).
pub fn map_of(value: DataType, nullable: bool) -> DataType {
    let entries = Field::new(
        "entries",
        DataType::Struct(Fields::from(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("value", value, nullable),
        ])),
        false,
    );
    DataType::Map(Arc::new(entries), false)
}

/// `inner` of `name<inner>`.
fn generic<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.strip_prefix(name)?
        .trim_start()
        .strip_prefix('<')?
        .strip_suffix('>')
}

/// `text` split at the commas outside angle brackets.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(text[start..].trim());
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_nullable_types_parse() {
        assert_eq!(parse("string").unwrap(), (DataType::Utf8, false));
        assert_eq!(parse("double?").unwrap(), (DataType::Float64, true));
        let (list, nullable) = parse("list<double?>").unwrap();
        assert!(!nullable);
        assert_eq!(
            list,
            DataType::List(Arc::new(Field::new("item", DataType::Float64, true)))
        );
        let (tensor, _) = parse("map<struct<shape: list<long>, numbers: list<double>>>?").unwrap();
        let DataType::Map(entries, _) = tensor else {
            panic!("{tensor}")
        };
        let DataType::Struct(kv) = entries.data_type() else {
            panic!()
        };
        let DataType::Struct(members) = kv[1].data_type() else {
            panic!()
        };
        assert_eq!(members.len(), 2);
        assert_eq!(members[1].name(), "numbers");
    }

    #[test]
    fn unknown_types_are_named_in_the_error() {
        let error = parse("list<decimal>").unwrap_err();
        assert!(error.starts_with("`decimal` is not a type"), "{error}");
        assert!(
            parse("struct<a long>")
                .unwrap_err()
                .contains("not `name: type`")
        );
    }
}
