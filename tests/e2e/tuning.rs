//! Tuning: trials shared by `weir worker` processes through a topic, each
//! recorded once, even when a worker is killed mid-trial or stops.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;

use crate::support::{Platform, repo, stderr};

/// A worker process whose stdout lines arrive on a channel.
struct Worker {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Worker {
    fn start(platform: &Platform, experiment: &str) -> Self {
        let mut child = platform
            .weir(&["worker", "--experiment", experiment])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SPEC: &str = "
experiment: tuning
job:
  dataset: churn@1
  label: churned
  exclude: [signup_ts]
  runtime: {kind: lightgbm}
space:
  n_estimators: {int: [10, 60]}
  num_leaves: {choice: [4, 8, 16]}
search: {method: random, trials: 8, parallel: 8, seed: 3, timeout_s: 240}
";

/// The churn example registered as `churn@1`, and `spec` written to a
/// file (in the directory returned with it).
fn churn_tuning(platform: &Platform, spec: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let data = repo().join("docs/examples/churn.csv");
    platform.run(
        &[
            "datasets",
            "register",
            "churn",
            data.to_str().unwrap(),
            "--entity",
            "customer_id",
        ],
        b"",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tune.yaml");
    std::fs::write(&path, spec).unwrap();
    (dir, path)
}

/// `weir tune spec`, its output piped.
fn start_tuning(platform: &Platform, spec: &std::path::Path) -> Child {
    platform
        .weir(&["tune", spec.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `weir tune` and checks that it reports `trials` trials.
fn tuned(tune: Child, trials: usize) {
    let output = tune.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "weir tune failed: {}",
        stderr(&output)
    );
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(report.contains(&format!(": {trials} trials")), "{report}");
}

#[test]
fn a_worker_killed_mid_trial_has_its_trials_run_by_the_other_each_recorded_once() {
    let platform = Platform::start();
    let (_dir, spec) = churn_tuning(&platform, SPEC);

    let mut doomed = Worker::start(&platform, "tuning");
    let survivor = Worker::start(&platform, "tuning");
    let tune = start_tuning(&platform, &spec);

    // Kill a worker as soon as it starts a trial (SIGKILL: no clean-up).
    let started = loop {
        let line = doomed
            .lines
            .recv_timeout(std::time::Duration::from_secs(180))
            .expect("the worker started a trial");
        if let Some(rest) = line.strip_prefix("worker: trial ")
            && line.ends_with(": running")
        {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();

    tuned(tune, 8);
    // The survivor took over the trial the dead worker was running.
    let lines: Vec<String> = survivor.lines.try_iter().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("worker: trial {started} ("))
                && l.ends_with(": running")),
        "trial {started} was taken over: {lines:?}"
    );

    // Every trial is recorded exactly once as a finished run.
    let runs = platform.run(&["runs", "list", "tuning"], b"");
    let runs = String::from_utf8_lossy(&runs.stdout);
    let mut finished: BTreeMap<String, usize> = BTreeMap::new();
    for line in runs.lines().skip(1) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [_, name, "FINISHED", ..] if name.starts_with("trial-") => {
                *finished.entry(name.to_string()).or_default() += 1
            }
            [_, name, status, ..] if name.starts_with("trial-") => {
                panic!("{name} is {status}: {runs}")
            }
            _ => {}
        }
    }
    let expected: BTreeMap<String, usize> = (0..8).map(|n| (format!("trial-{n}"), 1)).collect();
    assert_eq!(finished, expected, "{runs}");
}

#[test]
fn a_worker_that_stops_after_its_last_trial_has_recorded_every_run() {
    let platform = Platform::start();
    let spec = SPEC
        .replace("trials: 8, parallel: 8", "trials: 3, parallel: 3")
        .replace("timeout_s: 240", "timeout_s: 120");
    let (_dir, spec) = churn_tuning(&platform, &spec);
    let tune = start_tuning(&platform, &spec);
    // A worker records a trial's run while its runtime starts the next
    // one; one that stops after its last trial still records that run.
    let worker = platform
        .weir(&["worker", "--experiment", "tuning", "--max-trials", "3"])
        .output()
        .unwrap();
    assert!(worker.status.success(), "weir worker: {}", stderr(&worker));
    let lines = String::from_utf8_lossy(&worker.stdout);
    assert_eq!(
        lines.lines().filter(|l| l.ends_with(" finished")).count(),
        3,
        "{lines}"
    );
    tuned(tune, 3);
}
