//! Feature view files: a YAML header between `---` lines, then one SQL
//! query.
//!
//! ```sql
//! ---
//! name: user_spend
//! description: Spend per user over the last hour, every five minutes.
//! owner: risk-team
//! tags: [payments, fraud]
//! entity: [user_id]
//! ttl: 2h
//! sources:
//!   transactions: { topic: transactions, event_time: event_time, lateness: 5s }
//! tables:
//!   merchants: { topic: merchants, key: merchant_id }
//! ---
//! SELECT user_id,
//!        count(*) AS n,
//!        avg(amount) AS avg_amount,
//!        count(DISTINCT merchant_id) AS merchants
//! FROM transactions
//! WHERE amount > 0
//! GROUP BY user_id, hop(event_time, INTERVAL '5 minutes', INTERVAL '1 hour')
//! ```
//!
//! A source is a topic (its schema from the registry, or `schema:`), or
//! another view (`view: user_spend`, whose results it reads, with event time
//! `window_end` unless said otherwise). A table is the latest row per key
//! of a topic, joined to a stream on its key.

use std::path::Path;

use weir_catalog::ViewVersion;

use crate::SqlError;

pub use weir_catalog::view::{EmitMode, Header, SourceDef, TableDef};

/// A parsed view file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewFile {
    /// Where it came from (for errors).
    pub path: String,
    /// The header.
    pub header: Header,
    /// The query.
    pub sql: String,
    /// Line of the file where the query starts (1-based).
    pub sql_line: usize,
}

impl ViewFile {
    /// The view file a recorded version was applied from.
    pub fn of_version(version: &ViewVersion) -> Self {
        Self {
            path: version.path.clone(),
            header: version.header.clone(),
            sql: version.sql.clone(),
            sql_line: 1,
        }
    }

    /// Reads a view file.
    pub fn load(path: &Path) -> Result<Self, SqlError> {
        let text = std::fs::read_to_string(path).map_err(|e| SqlError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Parses a view file's text; `path` names it in errors.
    pub fn parse(path: &str, text: &str) -> Result<Self, SqlError> {
        let at = |line: usize, column: usize, message: String| SqlError::At {
            path: path.to_string(),
            line,
            column,
            message,
        };
        let mut lines = text.split_inclusive('\n');
        let first = lines.next().unwrap_or_default();
        if first.trim_end() != "---" {
            return Err(at(
                1,
                1,
                "a feature view starts with a YAML header between `---` lines".into(),
            ));
        }
        let mut yaml = String::new();
        let mut line_no = 1;
        let mut closed = false;
        for line in lines.by_ref() {
            line_no += 1;
            if line.trim_end() == "---" {
                closed = true;
                break;
            }
            yaml.push_str(line);
        }
        if !closed {
            return Err(at(1, 1, "the YAML header has no closing `---`".into()));
        }
        let header: Header = serde_yaml::from_str(&yaml).map_err(|e| {
            let (line, column) = e.location().map_or((2, 1), |l| (l.line() + 1, l.column()));
            at(line, column, format!("header: {e}"))
        })?;
        weir_core::topics::validate(&header.name)
            .map_err(|e| at(2, 1, format!("name `{}`: {e}", header.name)))?;
        if header.sources.is_empty() {
            return Err(at(2, 1, "the header names no `sources`".into()));
        }
        for (name, source) in &header.sources {
            if source.topic.is_some() == source.view.is_some() {
                return Err(at(
                    2,
                    1,
                    format!("source `{name}` needs one of `topic` or `view`"),
                ));
            }
        }
        let sql: String = lines.collect();
        if sql.trim().is_empty() {
            return Err(at(line_no + 1, 1, "no SQL after the header".into()));
        }
        Ok(Self {
            path: path.to_string(),
            header,
            sql,
            sql_line: line_no + 1,
        })
    }

    /// A content hash of the definition (header and query), which names a
    /// version: the same definition is the same version.
    pub fn content_hash(&self) -> String {
        let header = serde_json::to_string(&self.header).expect("header serializes");
        let sql: String = self.sql.split_whitespace().collect::<Vec<_>>().join(" ");
        let bytes = format!("{header}\n{sql}");
        let hash = bytes.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("{hash:016x}")
    }
}

/// Line and column of `needle` in the view's query (case-insensitive), or
/// of the query's start.
fn locate(view: &ViewFile, needle: &str) -> (usize, usize) {
    let haystack = view.sql.to_ascii_lowercase();
    let offset = if needle.is_empty() {
        None
    } else {
        haystack.find(&needle.to_ascii_lowercase())
    };
    // A needle may start with spaces to match whole words: point past them.
    let offset = offset.map(|o| o + (needle.len() - needle.trim_start().len()));
    match offset {
        Some(offset) => {
            let before = &view.sql[..offset];
            let line = before.matches('\n').count();
            let column = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            (view.sql_line + line, column)
        }
        None => (view.sql_line, 1),
    }
}

pub(crate) fn error_at(view: &ViewFile, needle: &str, message: impl Into<String>) -> SqlError {
    let (line, column) = locate(view, needle);
    SqlError::At {
        path: view.path.clone(),
        line,
        column,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_example_parses() {
        let doc = include_str!("view.rs");
        let example: String = doc
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .filter_map(|l| l.strip_prefix("//! "))
            .skip_while(|l| !l.starts_with("```sql"))
            .skip(1)
            .take_while(|l| !l.starts_with("```"))
            .map(|l| format!("{l}\n"))
            .collect();
        let view = ViewFile::parse("example.sql", &example).unwrap();
        assert_eq!(view.header.name, "user_spend");
        assert_eq!(view.header.entity, vec!["user_id"]);
        assert_eq!(view.header.tables["merchants"].key, "merchant_id");
        assert_eq!(view.sql_line, 13);
        assert!(view.sql.starts_with("SELECT user_id"));
    }

    #[test]
    fn header_errors_say_where() {
        let error = ViewFile::parse(
            "v.sql",
            "---\nname: v\nentity: [a]\nsources: 3\n---\nSELECT 1",
        )
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("v.sql:4:"), "{error}");
        let error = ViewFile::parse("v.sql", "SELECT 1")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("v.sql:1:1:"), "{error}");
    }
}
