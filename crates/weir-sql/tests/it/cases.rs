//! Feature-view cases as files (`tests/cases/*.case`), run against a real
//! broker: each holds one or more views, the records of their topics, and
//! either the rows the view must give — checked for the stream and for
//! the batch alike — or the error applying it must give, with its place.
//! `docs/sql.md` describes the format; a newcomer adds a case by adding a
//! file.
//!
//! ```text
//! # What the case checks (comment lines before the first section).
//! ## view                         the view file (YAML header, query); repeatable
//! ---
//! name: spend
//! ...
//! ---
//! SELECT ...
//! ## topic transactions 2         records of a topic (partitions, default 1):
//! u1 | {"user_id": "u1", ...}     `KEY | JSON`, `KEY | null` (a tombstone) or JSON
//! ## rows                         the last view's rows: a header naming the
//! user_id, n, window_start        columns compared, then one row a line,
//! u1, 2, 2023-11-14T22:13:00      values as Arrow prints them, `null` for null
//!                                 (a view without a window: its stream's
//!                                 latest row per entity)
//! ## late                         records the stream dead-lettered as late
//! 1
//! ## error                        or: applying fails, at LINE:COL of the
//! 7:17: cnt                       last view's file, with this in the message
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::Value as Json;
use weir_sql::registry::{self, Registry};

use crate::support::{Harness, publish};

/// A topic's records as a case gives them: the topic, its partitions, and
/// `(key, value)` records (`None`: a tombstone).
type Topic = (String, i32, Vec<(String, Option<Json>)>);

/// A parsed case file.
#[derive(Debug, Default)]
struct Case {
    name: String,
    views: Vec<String>,
    topics: Vec<Topic>,
    rows: Option<(Vec<String>, Vec<Vec<String>>)>,
    late: Option<u64>,
    error: Option<(usize, usize, String)>,
}

fn parse(path: &Path) -> Result<Case, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut case = Case {
        name: path.file_stem().unwrap().to_string_lossy().into_owned(),
        ..Default::default()
    };
    let mut sections: Vec<(String, usize, Vec<&str>)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if let Some(head) = line.strip_prefix("## ") {
            sections.push((head.trim().to_string(), n + 1, Vec::new()));
        } else if let Some((_, _, body)) = sections.last_mut() {
            body.push(line);
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            return Err(format!(
                "line {}: text before the first `## ` section",
                n + 1
            ));
        }
    }
    for (head, line, body) in sections {
        let at = |message: String| format!("line {line}: {message}");
        let words: Vec<&str> = head.split_whitespace().collect();
        let content = || body.iter().copied().filter(|l| !l.trim().is_empty());
        match words.as_slice() {
            ["view"] => case.views.push(body.join("\n") + "\n"),
            ["topic", topic, rest @ ..] => {
                let partitions = match rest {
                    [] => 1,
                    [n] => n
                        .parse()
                        .map_err(|_| at(format!("`{n}` is no partition count")))?,
                    _ => return Err(at("`## topic NAME [PARTITIONS]`".into())),
                };
                let mut records = Vec::new();
                for record in content() {
                    let (key, value) = match record.split_once(" | ") {
                        Some((key, value)) => (key.trim().to_string(), value.trim()),
                        None => (String::new(), record.trim()),
                    };
                    let value = match value {
                        "null" => None,
                        json => Some(
                            serde_json::from_str(json).map_err(|e| at(format!("`{json}`: {e}")))?,
                        ),
                    };
                    records.push((key, value));
                }
                case.topics.push((topic.to_string(), partitions, records));
            }
            ["rows"] => {
                let mut lines = content();
                let header = cells(lines.next().ok_or_else(|| at("no header".into()))?);
                let rows: Vec<Vec<String>> = lines.map(cells).collect();
                if let Some(bad) = rows.iter().find(|r| r.len() != header.len()) {
                    return Err(at(format!("a row of {} values: {bad:?}", bad.len())));
                }
                case.rows = Some((header, rows));
            }
            ["late"] => {
                let n = content().next().unwrap_or_default().trim();
                case.late = Some(n.parse().map_err(|_| at(format!("`{n}` is no count")))?);
            }
            ["error"] => {
                let spec = content().next().unwrap_or_default();
                let parsed = spec.split_once(": ").and_then(|(place, says)| {
                    let (line, column) = place.split_once(':')?;
                    Some((line.parse().ok()?, column.parse().ok()?, says.to_string()))
                });
                case.error =
                    Some(parsed.ok_or_else(|| at(format!("`{spec}` is not LINE:COL: text")))?);
            }
            _ => return Err(at(format!("unknown section `## {head}`"))),
        }
    }
    if case.views.is_empty() {
        return Err("no `## view`".into());
    }
    if case.rows.is_some() == case.error.is_some() {
        return Err("a case has `## rows` or `## error`, one of them".into());
    }
    Ok(case)
}

fn cells(line: &str) -> Vec<String> {
    line.split(',').map(|c| c.trim().to_string()).collect()
}

/// Each row's values of `columns`, as Arrow prints them.
fn printed(batches: &[RecordBatch], columns: &[String]) -> Result<Vec<Vec<String>>, String> {
    let options = FormatOptions::default().with_null("null");
    let mut rows = Vec::new();
    for batch in batches {
        let formatters = columns
            .iter()
            .map(|name| {
                let column = batch.column_by_name(name).ok_or_else(|| {
                    let names: Vec<&String> = batch
                        .schema_ref()
                        .fields()
                        .iter()
                        .map(|f| f.name())
                        .collect();
                    format!("no column `{name}` (the output has {names:?})")
                })?;
                ArrayFormatter::try_new(column.as_ref(), &options).map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, String>>()?;
        for row in 0..batch.num_rows() {
            rows.push(
                formatters
                    .iter()
                    .map(|f| f.value(row).to_string())
                    .collect(),
            );
        }
    }
    Ok(rows)
}

/// The `columns` of the last row of each `key` (a changelog's current
/// state), in the order the keys first came.
fn latest_per_key(
    batches: &[RecordBatch],
    key: &[String],
    columns: &[String],
) -> Result<Vec<Vec<String>>, String> {
    let keys = printed(batches, key)?;
    let rows = printed(batches, columns)?;
    let mut latest: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for (k, row) in keys.into_iter().zip(rows) {
        match latest.iter_mut().find(|(seen, _)| *seen == k) {
            Some((_, current)) => *current = row,
            None => latest.push((k, row)),
        }
    }
    Ok(latest.into_iter().map(|(_, row)| row).collect())
}

/// Two printed values agree: equal text, or numbers within 1e-9 relative.
fn same(a: &str, b: &str) -> bool {
    a == b
        || matches!((a.parse::<f64>(), b.parse::<f64>()), (Ok(x), Ok(y))
            if (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0))
}

/// `got` holds the `want` rows, in any order, and no others.
fn compare(what: &str, want: &[Vec<String>], got: &[Vec<String>]) -> Result<(), String> {
    let mut left: Vec<&Vec<String>> = got.iter().collect();
    let mut missing = Vec::new();
    for row in want {
        match left
            .iter()
            .position(|g| g.iter().zip(row).all(|(a, b)| same(a, b)))
        {
            Some(i) => {
                left.remove(i);
            }
            None => missing.push(row.join(", ")),
        }
    }
    if missing.is_empty() && left.is_empty() {
        return Ok(());
    }
    let extra: Vec<String> = left.iter().map(|r| r.join(", ")).collect();
    Err(format!(
        "{what}: expected and missing:\n    {}\n  given and not expected:\n    {}",
        missing.join("\n    "),
        extra.join("\n    ")
    ))
}

async fn run(case: &Case, dir: &Path) -> Result<(), String> {
    let h = Harness::start().await;
    let mut paths = Vec::new();
    for (i, view) in case.views.iter().enumerate() {
        let last = i + 1 == case.views.len();
        let name = if last {
            case.name.clone()
        } else {
            format!("{}.{i}", case.name)
        };
        let path = dir.join(format!("{name}.sql"));
        std::fs::write(&path, view).map_err(|e| e.to_string())?;
        paths.push(path);
    }
    for (topic, partitions, records) in &case.topics {
        publish(&h.bus, topic, *partitions, records).await;
    }
    let views = paths
        .iter()
        .map(|p| weir_sql::ViewFile::load(p))
        .collect::<Result<Vec<_>, _>>();
    let applied = match views {
        Err(error) => Err(error),
        Ok(views) => {
            let known = Registry::load(&h.bus).await.map_err(|e| e.to_string())?;
            registry::apply(&h.bus, &known, &views, &h.state()).await
        }
    };
    let tested = paths.last().expect("a view");
    if let Some((line, column, says)) = &case.error {
        let error = match applied {
            Ok(_) => return Err("applied, but an error was expected".into()),
            Err(error) => error.to_string(),
        };
        let place = format!("{}:{line}:{column}: ", tested.display());
        if !error.starts_with(&place) || !error.contains(says.as_str()) {
            return Err(format!("expected `{place}… {says} …`, got `{error}`"));
        }
        // Refused before anything was recorded.
        let recorded = Registry::load(&h.bus).await.map_err(|e| e.to_string())?;
        if let Some(name) = recorded.names().next() {
            return Err(format!("refused, yet `{name}` was recorded"));
        }
        return Ok(());
    }
    let applied = applied.map_err(|e| format!("applying: {e}"))?;
    let (header, want) = case.rows.as_ref().expect("rows or an error");
    // Upstream views first: each reads the one before's results.
    let mut late = 0;
    let mut written = 0;
    let mut last = None;
    for path in &paths {
        let name = weir_sql::ViewFile::load(path).unwrap().header.name;
        let view = applied
            .iter()
            .find(|a| a.version.name == name)
            .expect("every view applied");
        let plan = &view.plan;
        // Each stream's rows the job accepted (not dead-lettered as late).
        let mut topics = vec![&plan.source];
        topics.extend(plan.joined.iter().filter(|j| j.topic != plan.source.topic));
        let mut dlq_from = Vec::new();
        for source in &topics {
            dlq_from.push(h.dlq_end(&source.topic).await);
        }
        let status = h.run_to_end(plan).await;
        late = status.late;
        written = status.records_out;
        let mut accepted = Vec::new();
        for (source, from) in topics.iter().zip(dlq_from) {
            let dead = h.dead_letters(&source.topic, from).await;
            let history = weir_sql::batch::read_topic(&h.bus, &source.topic, source.schema.clone())
                .await
                .map_err(|e| e.to_string())?;
            accepted.push(
                history
                    .filter(|p, o| !dead.contains(&(p, o)))
                    .map_err(|e| e.to_string())?,
            );
        }
        let mut inputs = weir_sql::batch::Inputs::read(&h.bus, plan, accepted.remove(0))
            .await
            .map_err(|e| e.to_string())?;
        if let Some(joined) = accepted.pop() {
            inputs.joined = joined;
        }
        let batch = weir_sql::batch::run(plan, inputs)
            .await
            .map_err(|e| format!("the batch: {e}"))?;
        let stream = weir_sql::batch::read_topic(&h.bus, &plan.topic, plan.output.clone())
            .await
            .map_err(|e| e.to_string())?;
        let continuous = plan
            .pipeline
            .aggregate
            .as_ref()
            .is_some_and(|a| a.window.is_global());
        let entity = view.version.header.entity.clone();
        last = Some((stream.batches, batch, continuous.then_some(entity)));
    }
    let (stream, batch, upserts) = last.expect("a view ran");
    let mut failures = Vec::new();
    for (what, batches) in [("the stream", &stream), ("the batch", &batch)] {
        let rows = match (&upserts, what) {
            // Updates: the topic read as a changelog, the latest per key.
            (Some(entity), "the stream") => latest_per_key(batches, entity, header),
            _ => printed(batches, header),
        };
        match rows {
            Ok(got) => {
                if let Err(e) = compare(what, want, &got) {
                    // Where a stream's row went missing: in the job (it
                    // wrote fewer) or after it (the topic holds fewer).
                    let held: usize = batches.iter().map(RecordBatch::num_rows).sum();
                    failures.push(match what {
                        "the stream" => format!(
                            "{e}\n  (the job wrote {written} rows; the output topic holds {held})"
                        ),
                        _ => e,
                    });
                }
            }
            Err(e) => failures.push(format!("{what}: {e}")),
        }
    }
    if let Some(expected) = case.late
        && expected != late
    {
        failures.push(format!("{late} records were late, not {expected}"));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n  "))
    }
}

/// The view sections of case file `name`.
pub fn views_of(name: &str) -> Vec<String> {
    let path = cases_dir().join(format!("{name}.case"));
    parse(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .views
}

/// `tests/cases` of this crate: where cargo says the crate is when the
/// tests run, not where it was when they were built (a build shared by
/// two checkouts would read the other one's files).
fn cases_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/cases")
}

/// How long one case may take.
const CASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The case files, or only those whose name contains `WEIR_CASE` when it
/// is set (to run one while writing it).
fn case_files() -> Vec<PathBuf> {
    let dir = cases_dir();
    let only = std::env::var("WEIR_CASE").ok();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "case"))
        .filter(|p| {
            only.as_deref()
                .is_none_or(|only| p.file_stem().unwrap().to_string_lossy().contains(only))
        })
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_file_gives_its_rows_or_its_error() {
    let files = case_files();
    match std::env::var("WEIR_CASE") {
        Ok(only) => assert!(!files.is_empty(), "no case file's name has `{only}`"),
        Err(_) => assert!(files.len() >= 40, "{} case files", files.len()),
    }
    let dir = tempfile::tempdir().unwrap();
    // Two at a time: each case has a broker and a two-worker job of its own.
    let mut failures = BTreeMap::new();
    for pair in files.chunks(2) {
        let runs = pair.iter().map(|file| {
            let dir = dir.path().to_path_buf();
            async move {
                let outcome = match parse(file) {
                    // A case that hangs fails alone.
                    Ok(case) => tokio::time::timeout(CASE_TIMEOUT, run(&case, &dir))
                        .await
                        .unwrap_or_else(|_| Err(format!("no answer within {CASE_TIMEOUT:?}"))),
                    Err(e) => Err(format!("cannot read the case: {e}")),
                };
                (file.clone(), outcome)
            }
        });
        for (file, outcome) in futures::future::join_all(runs).await {
            eprintln!(
                "case {}: {}",
                file.display(),
                if outcome.is_ok() { "ok" } else { "FAILED" }
            );
            if let Err(e) = outcome {
                failures.insert(file.display().to_string(), e);
            }
        }
    }
    let report: Vec<String> = failures
        .iter()
        .map(|(file, e)| format!("{file}:\n  {e}"))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        files.len(),
        report.join("\n")
    );
}

#[test]
fn a_wrong_expected_row_fails_its_case() {
    let want = vec![vec!["u1".to_string(), "2".to_string()]];
    assert!(compare("x", &want, &want).is_ok());
    let got = vec![vec!["u1".to_string(), "3".to_string()]];
    let error = compare("the stream", &want, &got).unwrap_err();
    assert!(
        error.contains("u1, 2") && error.contains("u1, 3"),
        "{error}"
    );
    // Floats agree to 1e-9 relative, not beyond.
    assert!(same("0.30000000000000004", "0.3"));
    assert!(!same("0.3001", "0.3"));
    // An extra row fails too.
    let more = vec![want[0].clone(), got[0].clone()];
    assert!(compare("x", &want, &more).is_err());
}
