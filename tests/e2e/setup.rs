//! The `weir` binary run as a user runs it, without the variables `cargo
//! xtask` sets: it finds the ONNX Runtime library and the training
//! environment where the set-up put them, or says in one line what is
//! missing and which command installs it.

use std::process::{Command, Output};

use crate::support::{Platform, WEIR, repo, stderr};

/// `weir ARGS` with nothing in its environment but what a login shell has
/// and where the platform is.
fn clean(platform: &Platform, args: &[&str]) -> Command {
    let mut command = Command::new(WEIR);
    command
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("WEIR_BROKERS", platform.kafka.to_string())
        .env("WEIR_STATE_DIR", platform.state.path())
        .current_dir(repo());
    if let Some(home) = std::env::var_os("HOME") {
        command.env("HOME", home);
    }
    command
}

/// The churn example's data, by absolute path (the platform's commands run
/// where the test does).
fn churn() -> std::path::PathBuf {
    repo().join("docs/examples/churn.csv")
}

fn succeeds(mut command: Command) -> String {
    let output: Output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_binary_alone_trains_and_serves_with_what_the_set_up_installed() {
    let platform = Platform::start();
    let churn = churn();
    platform.run(
        &[
            "datasets",
            "register",
            "churn",
            churn.to_str().unwrap(),
            "--entity",
            "customer_id",
        ],
        b"",
    );
    let check = succeeds(clean(&platform, &["setup", "--check"]));
    assert!(!check.contains("missing"), "{check}");

    let trained = succeeds(clean(
        &platform,
        &["train", "docs/examples/churn-gbdt.yaml"],
    ));
    assert!(trained.ends_with("registered churn-model@1\n"), "{trained}");

    platform.run(&["models", "alias", "churn-model", "champion", "1"], b"");
    let example = |file: &str| repo().join("docs/examples").join(file);
    let deployment = example("churn-deployment.yaml");
    platform.run(&["deploy", deployment.to_str().unwrap()], b"");
    let requests = example("churn-requests.jsonl");
    platform.run(
        &[
            "publish",
            "weir.requests.churn",
            requests.to_str().unwrap(),
            "--key",
            "id",
        ],
        b"",
    );
    let served = succeeds(clean(
        &platform,
        &[
            "serve",
            "churn",
            "--listen",
            "127.0.0.1:0",
            "--stop-after",
            "5s",
        ],
    ));
    assert!(served.contains("2 requests answered, 1 failed"), "{served}");
}

#[test]
fn without_the_set_up_a_command_says_what_is_missing_and_how_to_install_it() {
    let platform = Platform::start();
    let empty = tempfile::tempdir().unwrap();
    let unset = |args: &[&str]| {
        let mut command = clean(&platform, args);
        command.env("WEIR_CACHE", empty.path());
        command.output().unwrap()
    };
    let check = unset(&["setup", "--check"]);
    assert!(!check.status.success());
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("missing"),
        "{check:?}"
    );

    let churn = churn();
    platform.run(
        &[
            "datasets",
            "register",
            "churn",
            churn.to_str().unwrap(),
            "--entity",
            "customer_id",
        ],
        b"",
    );
    let trained = unset(&["train", "docs/examples/churn-gbdt.yaml"]);
    assert!(!trained.status.success());
    let message = stderr(&trained);
    assert!(
        message.contains("Python environment of the training runtimes")
            && message.contains("run `weir setup`"),
        "{message}"
    );
    assert!(!message.contains("NaN"), "{message}");

    // Trained with the test's own environment, then scored without one.
    let mut train = platform.weir(&["train", "docs/examples/churn-gbdt.yaml"]);
    train.current_dir(repo());
    succeeds(train);
    let out = empty.path().join("scored.parquet");
    let scored = unset(&[
        "score",
        "churn-model@1",
        "docs/examples/churn-holdout.csv",
        out.to_str().unwrap(),
    ]);
    assert!(!scored.status.success());
    let message = stderr(&scored);
    assert!(
        message.contains("ONNX Runtime") && message.contains("run `weir setup`"),
        "{message}"
    );
}
