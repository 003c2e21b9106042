//! The examples in `docs/` run: every `$ weir ...` line of a page, in order,
//! against a fresh broker, from the repository root.

use crate::support::{Platform, python, repo, stderr};

/// A command line's words, as a shell splits them (double quotes group).
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

fn run_page(page: &str) -> Vec<(String, std::process::Output)> {
    run_page_on(&Platform::start(), page)
}

/// Runs a page's `$ weir` lines on `platform`.
fn run_page_on(platform: &Platform, page: &str) -> Vec<(String, std::process::Output)> {
    let text = std::fs::read_to_string(repo().join("docs").join(page)).unwrap();
    let mut outputs = Vec::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("$ weir ")) {
        let args = words(line);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = platform.weir(&args).current_dir(repo()).output().unwrap();
        assert!(
            output.status.success(),
            "docs/{page}: `weir {line}` failed:\n{}",
            stderr(&output)
        );
        outputs.push((line.to_string(), output));
    }
    assert!(!outputs.is_empty(), "docs/{page} has no `$ weir` examples");
    outputs
}

/// The output of the page's first line that starts with `prefix`.
fn output_of<'a>(
    outputs: &'a [(String, std::process::Output)],
    prefix: &str,
) -> &'a std::process::Output {
    outputs
        .iter()
        .find(|(line, _)| line.starts_with(prefix))
        .map(|(_, output)| output)
        .unwrap_or_else(|| panic!("no `weir {prefix}…` line on the page"))
}

/// Its standard output, as text.
fn stdout_of(outputs: &[(String, std::process::Output)], prefix: &str) -> String {
    String::from_utf8_lossy(&output_of(outputs, prefix).stdout).into_owned()
}

#[test]
fn bus_page() {
    let outputs = run_page("bus.md");
    let find = |prefix: &str| output_of(&outputs, prefix);
    let published = stderr(find("publish"));
    assert!(published.contains("published 5 records"), "{published}");
    assert!(
        published.contains("transactions.jsonl:4: missing-field at `merchant_id`"),
        "{published}"
    );
    assert!(published.contains("transactions.jsonl:6:"), "{published}");
    let letters = String::from_utf8_lossy(&find("tail weir.dlq").stdout).into_owned();
    assert_eq!(letters.lines().count(), 2, "{letters}");
    assert!(letters.contains(r#""reason":"missing-field""#), "{letters}");
    let first_two =
        String::from_utf8_lossy(&find("tail transactions --from-beginning").stdout).into_owned();
    assert_eq!(first_two.lines().count(), 2);
}

#[test]
fn sql_page() {
    let outputs = run_page("sql.md");
    let find = |prefix: &str| stdout_of(&outputs, prefix);
    let applied = find("features apply");
    assert!(
        applied.contains("spend_per_minute v1 (recorded) → weir.features.spend_per_minute.v1"),
        "{applied}"
    );
    assert!(applied.contains("categories v1 (recorded)"), "{applied}");
    let list = find("features list");
    assert!(
        list.contains("spend_per_minute") && list.contains("categories"),
        "{list}"
    );
    let described = find("features describe");
    assert!(
        described.contains("table       merchants: merchants (key merchant_id)"),
        "{described}"
    );
    let checked = find("features check");
    assert!(
        checked.contains("0 only in the batch, 0 only in the stream, 0 different"),
        "{checked}"
    );
    // u1: 12.5 + 3.2 + 7.0; u2: 80.0 + 19.9 (the bad lines were dead-lettered).
    let spend = find("sql \"SELECT user_id, n");
    let rows: Vec<&str> = spend
        .lines()
        .filter(|l| l.starts_with("| u") && !l.contains("user_id"))
        .collect();
    assert_eq!(rows.len(), 2, "{spend}");
    assert!(
        rows[0].contains("u1") && rows[0].contains("| 3 ") && rows[0].contains("22.7"),
        "{spend}"
    );
    assert!(
        rows[1].contains("u2") && rows[1].contains("| 2 ") && rows[1].contains("99.9"),
        "{spend}"
    );
    let categories = find("sql --format json");
    assert_eq!(
        categories.lines().collect::<Vec<_>>(),
        vec![
            r#"{"user_id":"u1","categories":2,"grocery":15.7}"#,
            r#"{"user_id":"u2","categories":2,"grocery":19.9}"#
        ],
        "{categories}"
    );
    // A JSON topic with no schema: read with one inferred from its records,
    // which the command says.
    let (line, inferred) = outputs
        .iter()
        .find(|(line, _)| line.contains("FROM merchants"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&inferred.stdout);
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("| "))
        .map(|l| {
            l.split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["category", "merchants"],
            vec!["fuel", "1"],
            vec!["grocery", "2"],
            vec!["travel", "1"],
        ],
        "{line}: {stdout}"
    );
    let notes = stderr(inferred);
    assert!(
        notes.contains(
            "note: `merchants`: schema inferred from its first 4 record(s) \
             (category Utf8, merchant_id Utf8, name Utf8)"
        ),
        "{notes}"
    );
    // The join of two streams: the stream agrees with the batch, r1 and r3
    // are labelled, r2 (70 s late) and r4 show with nulls.
    let checked = find("features check labelled_requests");
    assert!(
        checked.contains("0 only in the batch, 0 only in the stream, 0 different"),
        "{checked}"
    );
    let per_variant = find("sql \"SELECT variant");
    let rows: Vec<Vec<&str>> = per_variant
        .lines()
        .filter(|l| l.starts_with("| "))
        .map(|l| {
            l.split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["variant", "served", "labelled"],
            vec!["a", "2", "2"],
            vec!["b", "2", "0"],
        ],
        "{per_variant}"
    );
}

#[test]
fn features_page() {
    let outputs = run_page("features.md");
    let out = |prefix: &str| stdout_of(&outputs, prefix);
    // The page's outputs, as it shows them.
    assert_eq!(
        out("features get spend_per_minute u1").trim(),
        r#"{"event_time":"2023-11-14T22:14:00Z","status":"PRESENT","values":{"largest":12.5,"n":3,"total":22.7}}"#
    );
    assert_eq!(
        out("features get spend_per_minute u9").trim(),
        r#"{"event_time":null,"status":"NOT_FOUND","values":{"largest":null,"n":null,"total":null}}"#
    );
    let archived = out("archive transactions");
    assert!(
        archived.starts_with("transactions: ") && archived.contains(" files"),
        "{archived}"
    );
    let snapshot = out("snapshot docs/examples/labels.csv");
    let rows: Vec<Vec<&str>> = snapshot
        .lines()
        .filter(|l| l.starts_with("| u") && !l.contains("user_id"))
        .map(|l| {
            l.split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["u1", "2023-11-14T22:13:30", "0"],
            vec!["u1", "2023-11-14T22:14:00", "1", "3", "22.7", "12.5"],
            vec!["u2", "2023-11-14T22:20:00", "0", "2", "99.9", "80.0"],
            vec!["u9", "2023-11-14T22:20:00", "1"],
        ],
        "{snapshot}"
    );
    let registered = out("datasets register clicks");
    assert_eq!(registered.trim(), "clicks v1 (recorded): 1 file(s), csv");
    let list = out("datasets list");
    assert!(
        list.contains("clicks-training  1") && list.contains("parquet"),
        "{list}"
    );
    let found = out("datasets search --entity user_id");
    for kind_and_name in ["feature view  spend_per_minute", "dataset       clicks "] {
        assert!(found.contains(kind_and_name), "{kind_and_name}: {found}");
    }
    let described: serde_json::Value =
        serde_json::from_str(&out("datasets describe clicks-training")).unwrap();
    assert_eq!(described["rows"], 4);
    assert_eq!(described["lineage"]["views"][0]["name"], "spend_per_minute");
    assert_eq!(described["lineage"]["views"][0]["version"], 1);
    assert_eq!(
        described["lineage"]["files"][0]["uri"],
        "docs/examples/labels.csv"
    );
    // A view without a window: each row timed by its event time, a tie on
    // it won by the row created last, the TTL's bound inclusive.
    let drivers = out("snapshot docs/examples/driver_labels.csv");
    let rows: Vec<Vec<&str>> = drivers
        .lines()
        .filter(|l| l.starts_with("| d") && !l.contains("driver"))
        .map(|l| {
            l.split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["d1", "2023-11-14T23:30:00", "1", "0.5", "10"],
            vec!["d1", "2023-11-15T00:00:00", "0", "0.62", "12"],
            vec!["d2", "2023-11-15T00:00:00", "1", "0.81", "4"],
            vec!["d2", "2023-11-15T00:00:01", "1"],
        ],
        "{drivers}"
    );
}

/// The page's notebook session: its `$ weir` lines take a snapshot, then
/// its Python block runs against `weir server` with the official mlflow
/// client and prints what the page says it prints.
#[test]
fn tracking_page() {
    let platform = Platform::start();
    run_page_on(&platform, "tracking.md");
    let text = std::fs::read_to_string(repo().join("docs/tracking.md")).unwrap();
    let block = |fence: &str| {
        let start = text.find(fence).unwrap() + fence.len();
        text[start..start + text[start..].find("```").unwrap()].to_string()
    };
    let script = tempfile::NamedTempFile::with_suffix(".py").unwrap();
    std::fs::write(script.path(), block("```python\n")).unwrap();
    let artifacts = tempfile::tempdir().unwrap();
    let server = platform.serve(&["server", "--artifacts", artifacts.path().to_str().unwrap()]);
    let output = std::process::Command::new(python())
        .arg(script.path())
        .current_dir(repo())
        .env("MLFLOW_TRACKING_URI", server.url())
        .env("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        .env("MLFLOW_DISABLE_TELEMETRY", "true")
        .env("WEIR_STATE_DIR", platform.state.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the notebook failed:\n{}",
        stderr(&output)
    );
    let printed: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.starts_with('\u{1f3c3}') && !l.starts_with('\u{1f9ea}'))
        .map(str::to_string)
        .collect();
    let expected: Vec<String> = block("It prints:\n\n```text\n")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(printed, expected);
}

/// The training page: a dataset, two training jobs (a job file and flags),
/// an evaluation that promotes the better model, a data-parallel job,
/// tuning and AutoML.
#[test]
fn training_page() {
    let outputs = run_page("training.md");
    let out = |prefix: &str| stdout_of(&outputs, prefix);
    let first = out("train docs/examples/churn-gbdt.yaml");
    assert!(
        first.contains("240 rows train / 80 validation / 80 test"),
        "{first}"
    );
    assert!(first.ends_with("registered churn-model@1\n"), "{first}");
    let evaluation = out("evaluate churn-model@2");
    assert!(evaluation.contains("(300 labelled rows)"), "{evaluation}");
    assert!(evaluation.contains("gate: passed"), "{evaluation}");
    assert!(evaluation.contains("slice basic:"), "{evaluation}");
    let models = out("models show churn-model");
    let version_2 = models
        .lines()
        .find(|l| l.trim_start().starts_with("2 "))
        .unwrap();
    assert!(version_2.contains("champion"), "{models}");
    assert!(models.contains("producer skl2onnx"), "{models}");
    assert!(models.contains("needs lightgbm==4.7.0"), "{models}");
    let parallel = out(
        "train --dataset churn@1 --label churned --runtime lightgbm --exclude signup_ts --param n_estimators=40",
    );
    assert!(
        parallel.contains("\n  data-parallel: 2 processes, 1 attempt(s)\n"),
        "{parallel}"
    );
    let tuned = out("tune docs/examples/churn-tune.yaml");
    assert!(
        tuned.contains("(experiment churn-tuning): 8 trials"),
        "{tuned}"
    );
    assert!(
        tuned.ends_with("registered the best trial's model as churn-model@3\n"),
        "{tuned}"
    );
    let automl = out("automl --dataset churn@1");
    for family in ["linear ", "gbdt ", "forest ", "mlp "] {
        assert!(automl.contains(&format!("\n{family}")), "{automl}");
    }
    assert!(
        automl.contains("\ntest (the winner only): roc_auc "),
        "{automl}"
    );
    assert!(automl.ends_with("registered churn-automl@1\n"), "{automl}");
}

#[test]
fn serving_page() {
    let outputs = run_page("serving.md");
    let out = |prefix: &str| stdout_of(&outputs, prefix);
    let deployed = out("deploy docs/examples/churn-deployment.yaml");
    assert!(
        deployed.starts_with("deployment `churn` v1 (churn-model@champion → churn-model@1)"),
        "{deployed}"
    );
    let served = out("serve churn");
    assert!(
        served.contains("deployment `churn` v1 (unchanged)"),
        "{served}"
    );
    assert!(
        served.contains("serving `churn` (churn-model@1)"),
        "{served}"
    );
    assert!(
        served.contains("2 requests answered, 1 failed; 3 log records written"),
        "{served}"
    );
    let predictions = out("tail weir.predictions.churn");
    assert!(predictions.contains(r#""id":"q1""#), "{predictions}");
    assert!(
        predictions.contains(r#""data":["churns","stays"]"#),
        "{predictions}"
    );
    assert!(
        predictions.contains("input `monthly_charges` is missing"),
        "{predictions}"
    );
    let listed = out("deployments list");
    assert!(
        listed.contains("churn-model@champion  churn-model@1"),
        "{listed}"
    );
    let lineage = out("lineage deployment:churn");
    assert!(lineage.contains("model churn-model@1"), "{lineage}");
    let scored = out("score churn-model@champion");
    assert!(
        scored.starts_with("scored 300 rows with churn-model@1"),
        "{scored}"
    );
}

#[test]
fn experiments_page() {
    // It continues the serving page's example.
    let platform = Platform::start();
    run_page_on(&platform, "serving.md");
    let outputs = run_page_on(&platform, "experiments.md");
    let out = |prefix: &str| stdout_of(&outputs, prefix);
    let applied = out("traffic apply");
    assert!(
        applied.starts_with(
            "experiment churn-ab v1 on churn: churn-model@1 50.0%, churn-model@2 50.0%"
        ),
        "{applied}"
    );
    let listed = out("traffic list");
    assert!(
        listed.contains("churn-ab") && listed.contains("running"),
        "{listed}"
    );
    let described = out("traffic describe");
    assert!(
        described.contains("sticky by the input `customer_id`"),
        "{described}"
    );
    let served = out("serve churn");
    assert!(served.contains("40 requests answered"), "{served}");
    // Both models answered, each with its propensity.
    let split = out("sql");
    let serve_log = stderr(output_of(&outputs, "serve churn"));
    for variant in ["churn-model@1", "churn-model@2"] {
        assert!(split.contains(variant), "{split}\n{serve_log}");
    }
    assert!(split.contains("0.5"), "{split}");
    let published = out("feedback publish");
    assert!(
        published.starts_with("published 40 feedback records to weir.feedback.churn"),
        "{published}"
    );
    // The log meets the feedback by request id: every request, its
    // reward on the model that answered it.
    let joined = out("sql \"SELECT l.variant");
    let (mut rewarded, mut conversions) = (0, 0.0);
    for row in joined.lines().filter(|l| l.starts_with("| churn-model@")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        rewarded += cells[2].parse::<i64>().unwrap();
        conversions += cells[3].parse::<f64>().unwrap();
    }
    assert_eq!((rewarded, conversions), (40, 10.0), "{joined}");
    // Any Kafka client publishes feedback with the registered schema:
    // Confluent's Python serializer, then `weir tail` decodes it.
    let mut producer = std::process::Command::new(python())
        .arg(repo().join("tests/python/confluent_avro.py"))
        .args([
            "produce-json",
            &platform.kafka.to_string(),
            &platform.registry_url(),
            "weir.feedback.churn",
            "request_id",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = producer.stdin.take().unwrap();
        stdin
            .write_all(br#"{"request_id": "py1", "reward": 1.0, "label": null, "timestamp": 1700000000000}"#)
            .unwrap();
    }
    assert!(
        producer.wait().unwrap().success(),
        "confluent_avro.py failed"
    );
    let tail = platform.run(&["tail", "weir.feedback.churn", "--from-beginning"], b"");
    let feedback = String::from_utf8_lossy(&tail.stdout).into_owned();
    // The A/B test's 40, the Python one, the bandit's 60.
    assert_eq!(feedback.lines().count(), 101, "{feedback}");
    assert!(
        feedback.contains(r#""request_id":"py1","reward":1.0"#),
        "{feedback}"
    );
    let promoted = out("traffic promote");
    assert!(
        promoted.starts_with(
            "churn-model@champion moved from version 1 to version 2; experiment churn-ab v2 stopped"
        ),
        "{promoted}"
    );
    // The deployment now serves the candidate as its own model.
    let serves = outputs
        .iter()
        .filter(|(line, _)| line.starts_with("serve churn"))
        .map(|(_, output)| String::from_utf8_lossy(&output.stdout).into_owned())
        .nth(1)
        .expect("a second serve");
    assert!(
        serves.contains("serving `churn` (churn-model@2)"),
        "{serves}"
    );
    let stopped = out("traffic stop");
    assert!(
        stopped.starts_with("experiment churn-ab had stopped already"),
        "{stopped}"
    );
    // The bandit: applied at half each, its weights then moved by the
    // allocator from the rewards of the requests it served.
    let applied = out("traffic apply docs/examples/churn-bandit.yaml");
    assert!(
        applied.starts_with(
            "experiment churn-bandit v1 on churn: churn-model@2 50.0%, churn-model@1 50.0%"
        ),
        "{applied}"
    );
    let allocated = stderr(output_of(&outputs, "traffic allocate"));
    assert!(
        allocated.contains("allocator `allocator-churn-bandit-v1`"),
        "{allocated}"
    );
    let described = out("traffic describe churn-bandit");
    let version: u64 = described
        .strip_prefix("experiment churn-bandit v")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{described}"));
    assert!(version > 1, "no allocated weights: {described}");
    assert!(
        described.contains("(running) on churn, Bandit"),
        "{described}"
    );
    // The analysis of the same experiment: both variants, the candidate
    // compared with the default (60 rewards are too few to decide).
    let analyzed = stderr(output_of(&outputs, "traffic analyze"));
    assert!(
        analyzed.contains("analysis `analysis-churn-bandit-v1`"),
        "{analyzed}"
    );
    let report = out("traffic report churn-bandit");
    assert!(
        report.starts_with("experiment churn-bandit v1 (running) on churn"),
        "{report}"
    );
    for variant in ["churn-model@2", "churn-model@1"] {
        assert!(report.contains(variant), "{report}");
    }
    assert!(
        report.contains("default") && report.contains("undecided"),
        "{report}"
    );
    let stopped = out("traffic stop churn-bandit");
    assert!(
        stopped.starts_with(&format!("experiment churn-bandit v{} stopped", version + 1)),
        "{stopped}"
    );
}

/// The Weir crates a manifest's `[dependencies]` name.
fn weir_dependencies(manifest: &str) -> Vec<String> {
    let mut in_dependencies = false;
    let mut found = Vec::new();
    for line in manifest.lines() {
        if line.starts_with('[') {
            in_dependencies = line.trim() == "[dependencies]";
        } else if in_dependencies && line.starts_with("weir-") {
            let name = line.split(['.', ' ', '=']).next().unwrap_or_default();
            found.push(name.to_string());
        }
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn architecture_page_lists_each_crates_dependencies() {
    let page = std::fs::read_to_string(repo().join("docs/architecture.md")).unwrap();
    let listed: Vec<(String, Vec<String>)> = page
        .lines()
        .filter_map(|line| line.split_once('→'))
        .map(|(name, deps)| {
            let mut deps: Vec<String> = deps
                .split_whitespace()
                .filter(|d| *d != "(none)")
                .map(String::from)
                .collect();
            deps.sort();
            (name.trim().to_string(), deps)
        })
        .collect();
    let mut crates = Vec::new();
    for entry in std::fs::read_dir(repo().join("crates")).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("name = \""))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap()
            .to_string();
        crates.push((name, weir_dependencies(&text)));
    }
    crates.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(
        sorted, crates,
        "docs/architecture.md against crates/*/Cargo.toml"
    );
    // Top down: a crate depends only on crates listed after it.
    for (i, (name, deps)) in listed.iter().enumerate() {
        for dep in deps {
            assert!(
                listed[i + 1..].iter().any(|(other, _)| other == dep),
                "{name} depends on {dep}, which is not listed below it"
            );
        }
    }
}

#[test]
fn dataflow_page() {
    let outputs = run_page("dataflow.md");
    let rows: Vec<serde_json::Value> = stdout_of(&outputs, "tail top-spend")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let got: Vec<(String, i64, f64)> = rows
        .iter()
        .map(|row| {
            (
                row["key"].as_str().unwrap().to_string(),
                row["rank"].as_i64().unwrap(),
                row["value"].as_f64().unwrap(),
            )
        })
        .collect();
    // Each user's largest amounts of the one minute the page's
    // transactions fall in (the malformed line is left out by publish).
    let mut expected = vec![
        ("u1".to_string(), 1, 12.5),
        ("u1".to_string(), 2, 7.0),
        ("u1".to_string(), 3, 3.2),
        ("u2".to_string(), 1, 80.0),
        ("u2".to_string(), 2, 19.9),
        ("u3".to_string(), 1, 45.0),
    ];
    let mut got = got;
    got.sort_by(|a, b| a.partial_cmp(b).unwrap());
    expected.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(got, expected);
    assert!(
        rows.iter()
            .all(|row| row["window_start"] == 1_699_999_980_000_i64)
    );

    // Each user's spend so far: the last update of a user holds its totals.
    let mut so_far = std::collections::BTreeMap::new();
    for line in stdout_of(&outputs, "tail spend-so-far").lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(row.get("window_start").is_none(), "{row}");
        let total = (row["total"].as_f64().unwrap() * 100.0).round() / 100.0;
        so_far.insert(
            row["user_id"].as_str().unwrap().to_string(),
            (row["n"].as_i64().unwrap(), total),
        );
    }
    let expected: std::collections::BTreeMap<String, (i64, f64)> = [
        ("u1".to_string(), (3, 22.7)),
        ("u2".to_string(), (2, 99.9)),
        ("u3".to_string(), (1, 45.0)),
    ]
    .into();
    assert_eq!(so_far, expected);

    // The served requests with their labels, left-outer.
    let mut labelled: Vec<(String, Option<i64>)> = stdout_of(&outputs, "tail labelled")
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                row["request_id"].as_str().unwrap().to_string(),
                row["label"].as_i64(),
            )
        })
        .collect();
    labelled.sort();
    assert_eq!(
        labelled,
        vec![
            ("r1".to_string(), Some(1)),
            ("r2".to_string(), None),
            ("r3".to_string(), Some(0)),
            ("r4".to_string(), None),
        ]
    );
}
