//! MLflow's search language: filter strings such as
//! `metrics.rmse < 0.9 and params.model = 'lgbm' and tags."team" LIKE 'ml%'`,
//! `order_by` clauses such as ``metrics.`val loss` DESC``, and page tokens.
//!
//! A filter is comparisons joined by `AND` (MLflow has no `OR`). Each
//! names a field — `metrics.`/`metric.`, `params.`/`param.`, `tags.`/`tag.`,
//! `attributes.`/`attribute.`/`attr.`/`run.` and a key, bare or quoted with
//! backticks or double quotes — a comparator and a value: a number for
//! metrics and numeric attributes (`=`, `!=`, `<`, `<=`, `>`, `>=`), a
//! quoted string for the rest (`=`, `!=`, `LIKE`, `ILIKE`, `IN (…)`,
//! `NOT IN (…)`). What a search runs over — runs, experiments, models,
//! versions — says which attributes exist and which are numbers
//! ([`Searchable`]).

use std::cmp::Ordering;

use base64::Engine as _;

use crate::MetaError;

/// What a field's prefix names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// `metrics.`
    Metric,
    /// `params.`
    Param,
    /// `tags.`
    Tag,
    /// `attributes.`
    Attribute,
}

/// A field: its kind and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Its kind.
    pub kind: FieldKind,
    /// Its key.
    pub key: String,
}

/// A field's value in one thing searched.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue<'a> {
    /// A number.
    Number(f64),
    /// Text.
    Text(&'a str),
}

/// Something searchable: runs, experiments, registered models, versions.
pub trait Searchable {
    /// Whether `key` is an attribute, and if so whether it is a number.
    fn attribute(key: &str) -> Option<AttributeType>;
    /// The value of `field`, if this thing has it.
    fn value(&self, field: &Field) -> Option<FieldValue<'_>>;
    /// Whether a thing without a tag passes `tags.k != 'v'`: no for runs
    /// (MLflow joins), yes for registered models (MLflow's client appends
    /// ``tag.`mlflow.prompt.is_prompt` != 'true'`` to every model search).
    fn missing_tag_differs() -> bool {
        false
    }
}

/// An attribute's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeType {
    /// Compared as numbers.
    Number,
    /// Compared as text.
    Text,
}

#[derive(Debug, Clone, PartialEq)]
enum Comparison {
    Number(NumberOp, f64),
    Text(TextOp, String),
    In(bool, Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum NumberOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum TextOp {
    Eq,
    Ne,
    Like,
    ILike,
}

/// A parsed filter: every clause must hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    clauses: Vec<(Field, Comparison)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Backticked(String),
    Op(&'static str),
    Open,
    Close,
    Comma,
}

fn invalid(text: &str, why: impl std::fmt::Display) -> MetaError {
    MetaError::invalid(format!("Invalid filter '{text}': {why}"))
}

fn tokens(text: &str) -> Result<Vec<Token>, MetaError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Token::Open);
                i += 1;
            }
            ')' => {
                out.push(Token::Close);
                i += 1;
            }
            ',' => {
                out.push(Token::Comma);
                i += 1;
            }
            '\'' | '"' | '`' => {
                let end = chars[i + 1..].iter().position(|&d| d == c).ok_or_else(|| {
                    invalid(
                        text,
                        format!("a quote {c} at character {} is never closed", i + 1),
                    )
                })?;
                let inner: String = chars[i + 1..i + 1 + end].iter().collect();
                out.push(if c == '`' {
                    Token::Backticked(inner)
                } else {
                    Token::Quoted(inner)
                });
                i += end + 2;
            }
            '=' => {
                out.push(Token::Op("="));
                i += 1;
            }
            '!' | '<' | '>' => {
                let two = chars.get(i + 1) == Some(&'=');
                let op = match (c, two) {
                    ('!', true) => "!=",
                    ('<', true) => "<=",
                    ('>', true) => ">=",
                    ('<', false) => "<",
                    ('>', false) => ">",
                    _ => {
                        return Err(invalid(
                            text,
                            format!("unexpected '!' at character {}", i + 1),
                        ));
                    }
                };
                out.push(Token::Op(op));
                i += if two { 2 } else { 1 };
            }
            _ => {
                let start = i;
                while i < chars.len()
                    && !chars[i].is_whitespace()
                    && !"()=,!<>'\"`".contains(chars[i])
                {
                    i += 1;
                }
                // A key quoted after its prefix: metrics.`a b`, tags."x".
                let word: String = chars[start..i].iter().collect();
                out.push(Token::Word(word));
            }
        }
    }
    Ok(out)
}

/// Parses `entity.key` from a word and, if the word ends at the dot, the
/// quoted key after it.
fn field_of<S: Searchable>(
    text: &str,
    word: &str,
    rest: &mut std::iter::Peekable<std::vec::IntoIter<Token>>,
) -> Result<Field, MetaError> {
    // A bare attribute name (`name LIKE 'x%'`, as experiment and model
    // searches are written).
    if !word.contains('.') && S::attribute(word).is_some() {
        return Ok(Field {
            kind: FieldKind::Attribute,
            key: word.to_string(),
        });
    }
    let (prefix, key) = word.split_once('.').ok_or_else(|| {
        invalid(
            text,
            format!("'{word}': columns are written 'attributes.<key>', 'metrics.<key>', 'params.<key>' or 'tags.<key>'"),
        )
    })?;
    let key = if key.is_empty() {
        match rest.next() {
            Some(Token::Quoted(key) | Token::Backticked(key)) => key,
            _ => return Err(invalid(text, format!("'{word}' has no key"))),
        }
    } else {
        key.to_string()
    };
    let kind = match prefix.to_ascii_lowercase().as_str() {
        "metric" | "metrics" => FieldKind::Metric,
        "param" | "params" | "parameter" | "parameters" => FieldKind::Param,
        "tag" | "tags" => FieldKind::Tag,
        "attribute" | "attributes" | "attr" | "run" => FieldKind::Attribute,
        other => {
            return Err(invalid(
                text,
                format!("'{other}' is not one of attributes, metrics, params, tags"),
            ));
        }
    };
    if kind == FieldKind::Attribute && S::attribute(&key).is_none() {
        return Err(invalid(
            text,
            format!("'{key}' is not a searchable attribute"),
        ));
    }
    Ok(Field { kind, key })
}

fn is_numeric<S: Searchable>(field: &Field) -> bool {
    match field.kind {
        FieldKind::Metric => true,
        FieldKind::Attribute => S::attribute(&field.key) == Some(AttributeType::Number),
        FieldKind::Param | FieldKind::Tag => false,
    }
}

impl Filter {
    /// Parses a filter string for things of type `S`; an empty string
    /// matches everything.
    pub fn parse<S: Searchable>(text: &str) -> Result<Self, MetaError> {
        let mut filter = Filter::default();
        let mut tokens = tokens(text)?.into_iter().peekable();
        while let Some(first) = tokens.next() {
            let Token::Word(word) = first else {
                return Err(invalid(text, format!("expected a column, found {first:?}")));
            };
            let field = field_of::<S>(text, &word, &mut tokens)?;
            let op = match tokens.next() {
                Some(Token::Op(op)) => op.to_string(),
                Some(Token::Word(word)) => {
                    let upper = word.to_ascii_uppercase();
                    if upper == "NOT" {
                        match tokens.next() {
                            Some(Token::Word(w)) if w.eq_ignore_ascii_case("IN") => "NOT IN".into(),
                            _ => return Err(invalid(text, "NOT must be followed by IN")),
                        }
                    } else {
                        upper
                    }
                }
                other => {
                    return Err(invalid(
                        text,
                        format!("expected a comparator after '{word}', found {other:?}"),
                    ));
                }
            };
            let comparison = if is_numeric::<S>(&field) {
                let value = match tokens.next() {
                    Some(Token::Word(number)) => number.parse::<f64>().map_err(|_| {
                        invalid(
                            text,
                            format!("expected a numeric value for '{word}', found '{number}'"),
                        )
                    })?,
                    Some(Token::Quoted(number)) if field.kind == FieldKind::Attribute => {
                        number.parse::<f64>().map_err(|_| {
                            invalid(
                                text,
                                format!("expected a numeric value for '{word}', found '{number}'"),
                            )
                        })?
                    }
                    other => {
                        return Err(invalid(
                            text,
                            format!("expected a numeric value for '{word}', found {other:?}"),
                        ));
                    }
                };
                let op = match op.as_str() {
                    "=" => NumberOp::Eq,
                    "!=" => NumberOp::Ne,
                    "<" => NumberOp::Lt,
                    "<=" => NumberOp::Le,
                    ">" => NumberOp::Gt,
                    ">=" => NumberOp::Ge,
                    other => {
                        return Err(invalid(
                            text,
                            format!(
                                "invalid comparator '{other}' for '{word}': not one of '=', '!=', '<', '<=', '>', '>='"
                            ),
                        ));
                    }
                };
                Comparison::Number(op, value)
            } else if op == "IN" || op == "NOT IN" {
                if tokens.next() != Some(Token::Open) {
                    return Err(invalid(text, format!("{op} needs a list in parentheses")));
                }
                let mut values = Vec::new();
                loop {
                    match tokens.next() {
                        Some(Token::Quoted(value)) => values.push(value),
                        other => {
                            return Err(invalid(
                                text,
                                format!(
                                    "expected a quoted value in the {op} list, found {other:?}"
                                ),
                            ));
                        }
                    }
                    match tokens.next() {
                        Some(Token::Comma) => continue,
                        Some(Token::Close) => break,
                        other => {
                            return Err(invalid(
                                text,
                                format!("expected ',' or ')' in the {op} list, found {other:?}"),
                            ));
                        }
                    }
                }
                Comparison::In(op == "IN", values)
            } else {
                let value = match tokens.next() {
                    Some(Token::Quoted(value)) => value,
                    other => {
                        return Err(invalid(
                            text,
                            format!(
                                "the value for '{word}' must be a string in quotes, found {other:?}"
                            ),
                        ));
                    }
                };
                let op = match op.as_str() {
                    "=" => TextOp::Eq,
                    "!=" => TextOp::Ne,
                    "LIKE" => TextOp::Like,
                    "ILIKE" => TextOp::ILike,
                    other => {
                        return Err(invalid(
                            text,
                            format!(
                                "invalid comparator '{other}' for '{word}': not one of '=', '!=', 'LIKE', 'ILIKE', 'IN', 'NOT IN'"
                            ),
                        ));
                    }
                };
                Comparison::Text(op, value)
            };
            filter.clauses.push((field, comparison));
            match tokens.next() {
                None => break,
                Some(Token::Word(and)) if and.eq_ignore_ascii_case("AND") => {
                    if tokens.peek().is_none() {
                        return Err(invalid(text, "nothing after AND"));
                    }
                }
                Some(other) => {
                    return Err(invalid(
                        text,
                        format!(
                            "expected AND between comparisons, found {other:?} (MLflow's filters have no OR)"
                        ),
                    ));
                }
            }
        }
        Ok(filter)
    }

    /// Whether `thing` passes every clause; a missing field fails (as in
    /// MLflow's SQL, where it is a NULL).
    pub fn matches<S: Searchable>(&self, thing: &S) -> bool {
        self.clauses.iter().all(|(field, comparison)| {
            let Some(value) = thing.value(field) else {
                return field.kind == FieldKind::Tag
                    && S::missing_tag_differs()
                    && matches!(comparison, Comparison::Text(TextOp::Ne, _));
            };
            match (comparison, value) {
                (Comparison::Number(op, wanted), FieldValue::Number(have)) => {
                    let (have, wanted) = (have, *wanted);
                    match op {
                        NumberOp::Eq => have == wanted,
                        NumberOp::Ne => have != wanted,
                        NumberOp::Lt => have < wanted,
                        NumberOp::Le => have <= wanted,
                        NumberOp::Gt => have > wanted,
                        NumberOp::Ge => have >= wanted,
                    }
                }
                (Comparison::Text(op, wanted), FieldValue::Text(have)) => match op {
                    TextOp::Eq => have == wanted,
                    TextOp::Ne => have != wanted,
                    TextOp::Like => like(have, wanted, false),
                    TextOp::ILike => like(have, wanted, true),
                },
                (Comparison::In(inside, values), FieldValue::Text(have)) => {
                    values.iter().any(|v| v == have) == *inside
                }
                _ => false,
            }
        })
    }
}

/// SQL's `LIKE`: `%` is any run of characters, `_` any one.
pub fn like(text: &str, pattern: &str, ignore_case: bool) -> bool {
    let fold = |s: &str| -> Vec<char> {
        if ignore_case {
            s.to_lowercase().chars().collect()
        } else {
            s.chars().collect()
        }
    };
    let (text, pattern) = (fold(text), fold(pattern));
    // Classic wildcard matching with one backtrack point per `%`.
    let (mut t, mut p) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == '%' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && (pattern[p] == '_' || pattern[p] == text[t]) {
            t += 1;
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '%')
}

/// One `order_by` clause.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderBy {
    /// The field.
    pub field: Field,
    /// Ascending.
    pub ascending: bool,
}

impl OrderBy {
    /// Parses `field [ASC|DESC]`.
    pub fn parse<S: Searchable>(text: &str) -> Result<Self, MetaError> {
        let bad =
            |why: String| MetaError::invalid(format!("Invalid order_by clause '{text}': {why}"));
        let mut tokens = tokens(text)?.into_iter().peekable();
        let Some(Token::Word(word)) = tokens.next() else {
            return Err(bad("it must start with a column".into()));
        };
        let field = field_of::<S>(text, &word, &mut tokens).map_err(|e| bad(e.message))?;
        let ascending = match tokens.next() {
            None => true,
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("ASC") => true,
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("DESC") => false,
            Some(other) => return Err(bad(format!("expected ASC or DESC, found {other:?}"))),
        };
        if let Some(other) = tokens.next() {
            return Err(bad(format!("unexpected {other:?} at the end")));
        }
        Ok(Self { field, ascending })
    }

    /// Compares two things by this clause; a thing without the field comes
    /// last either way, NaN after every number.
    pub fn compare<S: Searchable>(&self, a: &S, b: &S) -> Ordering {
        match (a.value(&self.field), b.value(&self.field)) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => {
                let order = match (x, y) {
                    (FieldValue::Number(x), FieldValue::Number(y)) => {
                        match (x.is_nan(), y.is_nan()) {
                            (true, true) => Ordering::Equal,
                            (true, false) => return Ordering::Greater,
                            (false, true) => return Ordering::Less,
                            (false, false) => x.total_cmp(&y),
                        }
                    }
                    (FieldValue::Text(x), FieldValue::Text(y)) => x.cmp(y),
                    (FieldValue::Number(_), FieldValue::Text(_)) => Ordering::Less,
                    (FieldValue::Text(_), FieldValue::Number(_)) => Ordering::Greater,
                };
                if self.ascending {
                    order
                } else {
                    order.reverse()
                }
            }
        }
    }
}

/// Sorts by `order_by` clauses (then by `fallback`), keeps those from the
/// page token's offset, at most `max_results`, and says where the next page
/// starts.
pub fn page<'a, S: Searchable>(
    mut things: Vec<&'a S>,
    order_by: &[OrderBy],
    fallback: impl Fn(&S, &S) -> Ordering,
    max_results: usize,
    page_token: Option<&str>,
) -> Result<(Vec<&'a S>, Option<String>), MetaError> {
    let offset = match page_token {
        Some(token) if !token.is_empty() => decode_token(token)?,
        _ => 0,
    };
    things.sort_by(|a, b| {
        order_by
            .iter()
            .map(|clause| clause.compare(*a, *b))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| fallback(a, b))
    });
    let total = things.len();
    let end = offset.saturating_add(max_results).min(total);
    let page = things
        .into_iter()
        .skip(offset)
        .take(end.saturating_sub(offset))
        .collect();
    let next = (end < total).then(|| encode_token(end));
    Ok((page, next))
}

/// A page token: base64 of `{"offset": N}`, as MLflow's SQL store writes it.
pub fn encode_token(offset: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{{\"offset\": {offset}}}"))
}

/// The offset in a page token.
pub fn decode_token(token: &str) -> Result<usize, MetaError> {
    let bad = || {
        MetaError::invalid(format!(
            "Invalid page token, could not base64-decode: '{token}'"
        ))
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token)
        .map_err(|_| bad())?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    json.get("offset")
        .and_then(serde_json::Value::as_u64)
        .map(|n| n as usize)
        .ok_or_else(|| {
            MetaError::invalid(format!("Invalid page token '{token}': it has no offset"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Thing {
        metric: Option<f64>,
        param: &'static str,
        status: &'static str,
    }

    impl Searchable for Thing {
        fn attribute(key: &str) -> Option<AttributeType> {
            match key {
                "status" => Some(AttributeType::Text),
                "start_time" => Some(AttributeType::Number),
                _ => None,
            }
        }
        fn value(&self, field: &Field) -> Option<FieldValue<'_>> {
            match field.kind {
                FieldKind::Metric if field.key == "acc" => self.metric.map(FieldValue::Number),
                FieldKind::Param if field.key == "model" => Some(FieldValue::Text(self.param)),
                FieldKind::Attribute if field.key == "status" => {
                    Some(FieldValue::Text(self.status))
                }
                _ => None,
            }
        }
    }

    fn thing(metric: Option<f64>, param: &'static str) -> Thing {
        Thing {
            metric,
            param,
            status: "FINISHED",
        }
    }

    #[test]
    fn filters_combine_with_and() {
        let filter = Filter::parse::<Thing>(
            "metrics.acc > 0.5 and params.model = 'lgbm' AND attributes.status != 'FAILED'",
        )
        .unwrap();
        assert!(filter.matches(&thing(Some(0.7), "lgbm")));
        assert!(!filter.matches(&thing(Some(0.4), "lgbm")));
        assert!(!filter.matches(&thing(Some(0.7), "linear")));
        assert!(
            !filter.matches(&thing(None, "lgbm")),
            "a missing metric fails"
        );
        let quoted =
            Filter::parse::<Thing>("metric.`acc` >= 0.7 and param.\"model\" LIKE 'lg%'").unwrap();
        assert!(quoted.matches(&thing(Some(0.7), "lgbm")));
        let listed = Filter::parse::<Thing>("params.model NOT IN ('a', 'lgbm')").unwrap();
        assert!(!listed.matches(&thing(Some(0.7), "lgbm")));
    }

    #[test]
    fn bad_filters_name_the_problem() {
        for (filter, says) in [
            ("metrics.acc > 'x'", "numeric value"),
            ("params.model > 'a'", "invalid comparator '>'"),
            ("params.model = lgbm", "in quotes"),
            ("acc > 1", "columns are written"),
            ("foo.acc > 1", "'foo' is not one of"),
            ("attributes.colour = 'red'", "not a searchable attribute"),
            ("metrics.acc > 1 or metrics.acc < 0", "expected AND"),
            ("params.model = 'a", "never closed"),
        ] {
            let error = Filter::parse::<Thing>(filter).unwrap_err();
            assert!(error.message.contains(says), "{filter}: {}", error.message);
        }
    }

    #[test]
    fn like_matches_sql_wildcards() {
        assert!(like("lightgbm", "light%", false));
        assert!(like("lightgbm", "%gb_", false));
        assert!(!like("lightgbm", "LIGHT%", false));
        assert!(like("lightgbm", "LIGHT%", true));
        assert!(like("a%b", "a%", false));
        assert!(!like("abc", "a_", false));
    }

    #[test]
    fn pages_cover_everything_once() {
        let things: Vec<Thing> = (0..25).map(|i| thing(Some(i as f64), "m")).collect();
        let order = [OrderBy::parse::<Thing>("metrics.acc DESC").unwrap()];
        let mut seen = Vec::new();
        let mut token = None;
        loop {
            let (page, next) = page(
                things.iter().collect(),
                &order,
                |_, _| Ordering::Equal,
                10,
                token.as_deref(),
            )
            .unwrap();
            seen.extend(page.iter().map(|t| t.metric.unwrap()));
            match next {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, (0..25).rev().map(|i| i as f64).collect::<Vec<_>>());
    }
}
