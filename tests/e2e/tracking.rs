//! `weir server` against the official `mlflow` client (pinned in the test
//! Python environment): everything it writes reads back equal, bad
//! requests get MLflow's error codes, and a second server (its query
//! store as the first left it when killed, the rest replayed from
//! `weir.meta`) and a third that rebuilds its store from the whole log
//! answer the same.

use std::process::{Command, Output};

use crate::support::{Platform, http_get, python, repo, stderr};

/// The state the script printed: its last line (the client prints "View
/// run at …" lines of its own before it).
fn printed_state(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout.lines().last().unwrap_or_default().to_string()
}

fn mlflow(mode: &str, url: &str) -> Output {
    let output = Command::new(python())
        .arg(repo().join("tests/python/mlflow_client.py"))
        .args([mode, url])
        // A failed call fails now rather than after minutes of retries.
        .env("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        .env("MLFLOW_DISABLE_TELEMETRY", "true")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "mlflow_client.py {mode} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    output
}

/// Each "View run NAME at: URL" line the client printed leads, through the
/// page at `/` (the URL's fragment names the page), to the run's page with
/// its params and metrics.
fn the_clients_run_links_lead_to_the_run(written: &Output) {
    // The client prints them where its logger writes.
    let stdout = format!(
        "{}{}",
        String::from_utf8_lossy(&written.stdout),
        stderr(written)
    );
    let links: Vec<&str> = stdout
        .lines()
        .filter_map(|l| {
            l.split_once("View run ")
                .and_then(|(_, r)| r.split_once(" at: "))
        })
        .map(|(_, url)| url.trim())
        .collect();
    assert!(
        !links.is_empty(),
        "the client printed no run links:\n{stdout}"
    );
    for link in links {
        let (server, fragment) = link.split_once("/#").expect("a link with a fragment");
        let (status, home) = http_get(&format!("{server}/"));
        assert_eq!(status, 200, "{home}");
        assert!(home.contains("location.hash"), "{home}");
        assert!(
            home.contains(">churn<"),
            "the experiments are listed: {home}"
        );
        let (status, page) = http_get(&format!("{server}{fragment}"));
        assert_eq!(status, 200, "{link}: {page}");
        let run_id = fragment.rsplit('/').next().unwrap();
        assert!(page.contains(run_id), "{page}");
        assert!(
            page.contains("<h2>Parameters</h2>") && page.contains("<h2>Metrics</h2>"),
            "{page}"
        );
    }
    let (status, _) = http_get(&format!(
        "{}/experiments/1/runs/no-such-run",
        links_server(&stdout)
    ));
    assert_eq!(status, 404);
}

fn links_server(stdout: &str) -> String {
    let at = stdout.find(" at: http://").expect("a link") + " at: ".len();
    let link = stdout[at..].split_whitespace().next().unwrap();
    link.split_once("/#").unwrap().0.to_string()
}

#[test]
fn the_mlflow_client_works_unchanged_and_a_replayed_server_answers_the_same() {
    let platform = Platform::start();
    let artifacts = tempfile::tempdir().unwrap();
    let store = artifacts.path().to_str().unwrap();
    let first = platform.serve(&["server", "--artifacts", store]);
    let written = mlflow("write", &first.url());
    the_clients_run_links_lead_to_the_run(&written);
    mlflow("errors", &first.url());
    let before = mlflow("read", &first.url());
    assert_eq!(
        printed_state(&written),
        printed_state(&before),
        "the bad requests changed nothing"
    );
    drop(first);

    // A new node on the query store the killed one saved last, plus the
    // events weir.meta has since.
    let second = platform.serve(&["server", "--artifacts", store]);
    let after = mlflow("read", &second.url());
    assert!(printed_state(&after).contains("\"churn-model\""));
    assert_eq!(printed_state(&before), printed_state(&after));
    drop(second);

    // The store dropped and rebuilt from the whole log: the same answers.
    let third = platform.serve(&["server", "--artifacts", store, "--rebuild"]);
    let rebuilt = mlflow("read", &third.url());
    assert_eq!(printed_state(&before), printed_state(&rebuilt));
    drop(third);

    // The same metadata from the command line, without a server.
    let stdout =
        |args: &[&str]| String::from_utf8_lossy(&platform.run(args, b"").stdout).into_owned();
    let runs = stdout(&["runs", "list", "churn"]);
    assert!(
        ["trial-0", "trial-1", "trial-2", "auc=0.9000"]
            .iter()
            .all(|s| runs.contains(s)),
        "{runs}"
    );
    let ids: Vec<&str> = runs
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids.len(), 3, "{runs}");
    let page = tempfile::NamedTempFile::with_suffix(".html").unwrap();
    let mut compare = vec!["runs", "compare"];
    compare.extend(&ids);
    compare.extend(["--plot", page.path().to_str().unwrap()]);
    let table = stdout(&compare);
    assert!(
        table.contains("params.lr") && table.contains("metrics.auc"),
        "{table}"
    );
    let html = std::fs::read_to_string(page.path()).unwrap();
    // A chart per metric (acc, auc, loss), a line per run in each.
    assert_eq!(html.matches("<svg").count(), 3, "{html}");
    assert_eq!(html.matches("<polyline").count(), 9, "{html}");
    assert!(html.contains("trial-2"));
    let experiments = stdout(&["experiments", "list"]);
    assert!(
        experiments.contains("churn") && experiments.contains("Default"),
        "{experiments}"
    );
    let model = stdout(&["models", "show", "churn-model"]);
    assert!(
        model.contains("Production") && model.contains("Archived") && model.contains("champion"),
        "{model}"
    );
    platform.run(&["models", "alias", "churn-model", "challenger", "2"], b"");
    let models = stdout(&["models", "list"]);
    assert!(
        models.contains("challenger=v2") && models.contains("champion=v1"),
        "{models}"
    );
    let refused = platform.run_unchecked(&["models", "alias", "churn-model", "v9", "1"], b"");
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("reserved"),
        "{}",
        stderr(&refused)
    );
}
