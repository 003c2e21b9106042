//! `weir runs reproduce`: a run's job run again exits 0 when its metrics
//! come back the same, and 1 when they move beyond the tolerance (a model
//! fitted without a seed).

use crate::support::{Platform, repo, stderr};

/// Trains on the churn example with `params`; the run's id.
fn train(platform: &Platform, params: &[&str]) -> String {
    let churn = repo().join("docs/examples/churn.csv");
    let mut args = vec![
        "train",
        "--dataset",
        churn.to_str().unwrap(),
        "--label",
        "churned",
        "--exclude",
        "signup_ts",
        "--exclude",
        "customer_id",
        "--runtime",
        "sklearn",
        "--estimator",
        "SGDClassifier",
        "--param",
        "loss=\"log_loss\"",
        "--param",
        "max_iter=5",
        "--experiment",
        "reproduce",
    ];
    for param in params {
        args.extend(["--param", param]);
    }
    let output = platform.run(&args, b"");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    stdout
        .strip_prefix("run ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no run id in {stdout}"))
        .to_string()
}

#[test]
fn a_run_reproduces_or_says_which_metrics_moved() {
    let platform = Platform::start();
    let seeded = train(&platform, &[]);
    let again = platform.run_unchecked(&["runs", "reproduce", &seeded], b"");
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{text}\n{}", stderr(&again));
    assert!(text.contains("metrics reproduced"), "{text}");

    // Without a seed, each fit shuffles the rows its own way.
    let unseeded = train(&platform, &["random_state=null"]);
    let again = platform.run_unchecked(&["runs", "reproduce", &unseeded], b"");
    let text = String::from_utf8_lossy(&again.stdout);
    assert_eq!(again.status.code(), Some(1), "{text}\n{}", stderr(&again));
    assert!(
        text.contains("metrics differ beyond 1e-9: ") && text.contains("log_loss"),
        "{text}"
    );
    // A tolerance wide enough lets it pass.
    let loose =
        platform.run_unchecked(&["runs", "reproduce", &unseeded, "--tolerance", "1e9"], b"");
    assert!(loose.status.success(), "{}", stderr(&loose));
}
