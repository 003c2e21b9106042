//! `weir job run` under fire: killed with SIGKILL at random points and
//! restarted, its final results equal a brute-force reference exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::support::Platform;

struct Event {
    user: String,
    merchant: String,
    amount: f64,
    ts: i64,
}

/// A deterministic pseudo-random stream (xorshift), no dependency needed.
fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

fn events(count: usize) -> Vec<Event> {
    let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
    (0..count)
        .map(|i| Event {
            user: format!("u{}", next() % 100),
            merchant: format!("m{}", next() % 25),
            amount: (next() % 100_000) as f64 / 100.0,
            ts: 1_700_000_000_000 + i as i64 * 10 - (next() % 2_000) as i64,
        })
        .collect()
}

const JOB: &str = r#"
name = "crash"
checkpoint_interval = "300ms"

[source]
topic = "crash-in"
event_time = "event_time"
lateness = "5s"
bounded = true
schema = { user_id = "string", merchant_id = "string", amount = "double", event_time = "long" }

[aggregate]
keys = ["user_id"]
window = { hop = { size = "60s", slide = "20s" } }
aggregates = { n = "count(*)", total = "sum(amount)", low = "min(amount)", high = "max(amount)", merchants = "count(DISTINCT merchant_id)", median = "quantile(amount, 0.5)", p90 = "quantile(amount, 0.9)", spread = "histogram(amount, 0, 1000, 8)" }

[sink]
topic = "crash-out"
"#;

fn spawn_job(
    platform: &Platform,
    file: &std::path::Path,
    workers: usize,
    log: &std::path::Path,
) -> Child {
    let workers = workers.to_string();
    platform
        .weir(&[
            "job",
            "run",
            file.to_str().unwrap(),
            "--status-every",
            "1s",
            "-w",
            &workers,
        ])
        // Debug: each commit logs the offsets a restart resumes at.
        .env("RUST_LOG", "weir_dataflow=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// How many records `topic` holds (the sum of its partitions' spans).
fn records_in(platform: &Platform, topic: &str) -> i64 {
    let describe = platform.run(&["topics", "describe", topic], b"");
    let text = String::from_utf8_lossy(&describe.stdout);
    text.lines()
        .find_map(|line| line.strip_prefix("records"))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no record count in `weir topics describe {topic}`:
{text}"
            )
        })
}

/// `{0: 12, 1: 40}` after `marker` in `line`: offsets by partition.
fn offsets_after(line: &str, marker: &str) -> Option<BTreeMap<i32, i64>> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let list = &rest[..rest.find('}')?];
    Some(
        list.split(", ")
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (partition, offset) = pair.split_once(": ").expect("`p: o`");
                (partition.parse().unwrap(), offset.parse().unwrap())
            })
            .collect(),
    )
}

/// What one run's log says of its offsets: where each partition resumed,
/// and the last offsets a commit sealed.
#[derive(Debug, Default)]
struct RunOffsets {
    resumed: BTreeMap<i32, i64>,
    committed: BTreeMap<i32, i64>,
}

fn run_offsets(log: &std::path::Path) -> RunOffsets {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    // The log is coloured: drop the escape sequences.
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            plain.push(c);
        }
    }
    let mut offsets = RunOffsets::default();
    for line in plain.lines() {
        if line.contains("starting at epoch")
            && let Some(resumed) = offsets_after(line, "resume={")
        {
            offsets.resumed.extend(resumed);
        }
        if line.contains("committed")
            && let Some(committed) = offsets_after(line, "offsets=Some({")
        {
            for (partition, offset) in committed {
                let last = offsets.committed.entry(partition).or_insert(offset);
                *last = (*last).max(offset);
            }
        }
    }
    offsets
}

#[test]
fn a_job_killed_at_random_points_ends_with_exact_results() {
    killed_at_random_points(1);
}

#[test]
fn a_two_worker_job_killed_at_random_points_ends_with_exact_results() {
    killed_at_random_points(2);
}

/// Publishes 200,000 events to `crash-in` (3 partitions, keyed by user).
fn publish_events(platform: &Platform, dir: &std::path::Path) -> Vec<Event> {
    let data = events(200_000);
    let input = dir.join("in.jsonl");
    let lines: String = data
        .iter()
        .map(|e| {
            format!(
                "{{\"user_id\":\"{}\",\"merchant_id\":\"{}\",\"amount\":{},\"event_time\":{}}}\n",
                e.user, e.merchant, e.amount, e.ts
            )
        })
        .collect();
    std::fs::write(&input, lines).unwrap();
    platform.run(
        &[
            "publish",
            "crash-in",
            input.to_str().unwrap(),
            "--key",
            "user_id",
            "--partitions",
            "3",
        ],
        b"",
    );
    data
}

/// Kills a `weir job run` with `workers` worker threads at random points
/// at least five times; its final results equal a brute-force reference.
fn killed_at_random_points(workers: usize) {
    let platform = Platform::start();
    let dir = tempfile::tempdir().unwrap();
    let data = publish_events(&platform, dir.path());
    let logs = kill_and_restart(&platform, dir.path(), JOB, workers);
    check_windows(&platform, &data, &logs);
}

/// Runs `job` (TOML) with `workers` worker threads, killing it at
/// pseudo-random points until it has crashed five times, then lets it
/// finish; checks that every restart resumed from its predecessor's last
/// commit and that nothing was dead-lettered. Returns the runs' logs.
fn kill_and_restart(
    platform: &Platform,
    dir: &std::path::Path,
    job: &str,
    workers: usize,
) -> Vec<std::path::PathBuf> {
    let job_file = dir.join("job.toml");
    std::fs::write(&job_file, job).unwrap();
    kill_and_restart_with(
        platform,
        dir,
        "crash-in",
        &format!("{workers} worker(s)"),
        |log| spawn_job(platform, &job_file, workers, log),
    )
}

/// Runs what `spawn` starts (a job's process, logging at debug level to
/// the file it is given), killing it at pseudo-random points until it has
/// crashed five times, then lets it finish; checks that every restart
/// resumed from its predecessor's last commit and that nothing of
/// `source` was dead-lettered. Returns the runs' logs.
pub(crate) fn kill_and_restart_with(
    platform: &Platform,
    dir: &std::path::Path,
    source: &str,
    label: &str,
    spawn: impl Fn(&std::path::Path) -> Child,
) -> Vec<std::path::PathBuf> {
    // Kill the job at pseudo-random points until it has crashed five times
    // mid-stream, then let it finish. The kill points follow the job's
    // progress (the source offsets its commits log), not the clock, so a
    // fast machine cannot finish the job before the fifth crash: a run
    // with n crashes still to come is killed at the latest 0–50 ms after
    // a commit passes 1 / (n + 2) of what was left when it started (and a
    // little more, at random), so at least 2/7 of the source is left for
    // the last run.
    let total = records_in(platform, source);
    let mut crashes = 0;
    let mut delay_state = 7_u64;
    let mut random = move |bound: i64| {
        delay_state = delay_state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1);
        (delay_state >> 33) as i64 % bound.max(1)
    };
    let started = Instant::now();
    let mut logs: Vec<std::path::PathBuf> = Vec::new();
    loop {
        // Where this run starts, as far as the earlier runs' logs tell.
        let mut furthest: BTreeMap<i32, i64> = BTreeMap::new();
        for log in &logs {
            for (partition, offset) in run_offsets(log).committed {
                let last = furthest.entry(partition).or_insert(offset);
                *last = (*last).max(offset);
            }
        }
        let log = dir.join(format!("run-{}.log", logs.len()));
        let mut child = spawn(&log);
        logs.push(log);
        if crashes >= 5 {
            let output = child.wait_with_output().unwrap();
            let log = std::fs::read_to_string(logs.last().unwrap()).unwrap_or_default();
            assert!(output.status.success(), "final run failed:\n{log}");
            break;
        }
        let run = logs.len() - 1;
        let jitter = random(1_000);
        // Every other run dies at its target, so that the restarts have a
        // checkpoint to resume from; the others 0.3–1.1 s after they start
        // or at their target, whichever comes first (they may die before
        // their first commit, while starting).
        let deadline = (run % 2 == 1)
            .then(|| Instant::now() + Duration::from_millis(300 + random(800) as u64));
        let stalled = Instant::now() + Duration::from_secs(60);
        let finished = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if deadline.is_some_and(|at| Instant::now() >= at) {
                break None;
            }
            let now = run_offsets(logs.last().unwrap());
            // Where it resumed: what its workers logged at their start,
            // else what the earlier runs logged.
            let mut resumed = furthest.clone();
            resumed.extend(now.resumed);
            let from: i64 = resumed.values().sum();
            let step = (total - from) / (7 - crashes as i64);
            let target = from + step + step * jitter / 4_000;
            resumed.extend(now.committed);
            let committed: i64 = resumed.values().sum();
            if committed >= target {
                std::thread::sleep(Duration::from_millis(random(50) as u64));
                break None;
            }
            assert!(
                Instant::now() < stalled,
                "run {run} committed {committed} of {total} records in 60 s, short of {target}:\n{}",
                std::fs::read_to_string(logs.last().unwrap()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        match finished.or_else(|| child.try_wait().unwrap()) {
            Some(status) => {
                let log = std::fs::read_to_string(logs.last().unwrap()).unwrap_or_default();
                assert!(status.success(), "job failed:\n{log}");
                break; // finished before we could kill it
            }
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                crashes += 1;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the job makes no progress"
        );
    }
    assert!(
        crashes >= 5,
        "only {crashes} crash(es) happened before the job finished"
    );

    // Each restart resumed where its predecessor's last logged commit left
    // each partition, or later (an epoch every worker sealed commits at the
    // restart; a commit can land between its log line and the kill), and
    // at least three resumed past the start: a job that ignored its
    // checkpoints and read from the start again fails here.
    let runs: Vec<RunOffsets> = logs.iter().map(|log| run_offsets(log)).collect();
    // The furthest commit any earlier run logged, per partition (a run
    // killed before a worker logged its start says nothing of its
    // partitions).
    let mut furthest: BTreeMap<i32, i64> = BTreeMap::new();
    let mut checked = 0;
    for (number, run) in runs.iter().enumerate() {
        for (partition, resumed) in &run.resumed {
            let committed = furthest.get(partition).copied().unwrap_or(0);
            assert!(
                *resumed >= committed,
                "run {number} resumed partition {partition} at {resumed}, before the offset {committed} an earlier run committed"
            );
        }
        if number > 0 && run.resumed.values().any(|offset| *offset > 0) {
            checked += 1;
        }
        for (partition, committed) in &run.committed {
            let last = furthest.entry(*partition).or_insert(*committed);
            *last = (*last).max(*committed);
        }
    }
    let resumed: Vec<i64> = runs.iter().map(|r| r.resumed.values().sum()).collect();
    let committed: Vec<i64> = runs.iter().map(|r| r.committed.values().sum()).collect();
    println!(
        "{label}, {} runs: resumed at {resumed:?} records, last commits logged at {committed:?}",
        runs.len()
    );
    // Three restarts follow a commit by construction.
    assert!(
        checked >= 3,
        "only {checked} restart(s) resumed past offset 0: the test cannot tell a resumption from a restart"
    );

    // Nothing was late or malformed.
    let dlq = format!("weir.dlq.{source}");
    let letters = platform.run(&["tail", &dlq, "--from-beginning"], b"");
    assert!(
        letters.stdout.is_empty(),
        "dead letters:\n{}",
        String::from_utf8_lossy(&letters.stdout)
            .lines()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    logs
}

/// The windowed job's output equals the brute-force reference, and every
/// emission of a window holds the same value.
fn check_windows(platform: &Platform, data: &[Event], logs: &[std::path::PathBuf]) {
    // The output topic, latest value per key (entity + window).
    let tail = platform.run(&["tail", "crash-out", "--from-beginning", "--meta"], b"");
    let mut latest: BTreeMap<String, Json> = BTreeMap::new();
    let mut history: BTreeMap<String, Vec<(i64, Json)>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&tail.stdout).lines() {
        let record: Json = serde_json::from_str(line).unwrap();
        let key = record["key"].as_str().unwrap().to_string();
        history
            .entry(key.clone())
            .or_default()
            .push((record["offset"].as_i64().unwrap(), record["value"].clone()));
        latest.insert(key, record["value"].clone());
    }
    // With `emit = close` a window is emitted once, and again only when a
    // crash replays it: every emission of a window holds the same value
    // (the float sum aside, whose last bits depend on the order of adding).
    let mut emissions = 0;
    for (key, values) in &history {
        emissions += values.len();
        let exact = |value: &Json| {
            let mut value = value.clone();
            value.as_object_mut().map(|v| v.remove("total"));
            value
        };
        let first = exact(&values[0].1);
        assert!(
            values.iter().all(|(_, value)| exact(value) == first),
            "{key} was emitted with different values: {values:?}"
        );
    }
    println!(
        "{} emissions of {} windows: {} replayed by the restarts",
        emissions,
        history.len(),
        emissions - history.len()
    );
    let explain = |key: &str| {
        let runs: Vec<String> = logs
            .iter()
            .map(|log| {
                std::fs::read_to_string(log)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("starting at epoch") || l.contains("resum"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect();
        format!(
            "emissions of {key} (offset, value): {:?}\nruns:\n{}",
            history.get(key),
            runs.join("\n---\n")
        )
    };

    // The reference, by brute force.
    let (size, slide) = (60_000_i64, 20_000_i64);
    let mut reference: BTreeMap<String, (i64, f64, f64, f64, BTreeSet<String>)> = BTreeMap::new();
    // Each window's amounts, for the sketch and the histogram.
    let mut amounts: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for event in data {
        let last = event.ts - event.ts.rem_euclid(slide);
        let mut start = last;
        while start + size > event.ts {
            let key = format!("{}|{start}", event.user);
            amounts.entry(key.clone()).or_default().push(event.amount);
            let entry = reference.entry(key).or_insert((
                0,
                0.0,
                f64::INFINITY,
                f64::NEG_INFINITY,
                BTreeSet::new(),
            ));
            entry.0 += 1;
            entry.1 += event.amount;
            entry.2 = entry.2.min(event.amount);
            entry.3 = entry.3.max(event.amount);
            entry.4.insert(event.merchant.clone());
            start -= slide;
        }
    }
    assert_eq!(
        latest.len(),
        reference.len(),
        "number of (user, window) results"
    );
    for (key, (n, total, low, high, merchants)) in &reference {
        let got = latest
            .get(key)
            .unwrap_or_else(|| panic!("no result for {key}"));
        assert_eq!(
            got["n"].as_i64(),
            Some(*n),
            "{key}: {got}\n{}",
            explain(key)
        );
        assert_eq!(
            got["merchants"].as_i64(),
            Some(merchants.len() as i64),
            "{key}: {got}"
        );
        assert_eq!(got["low"].as_f64(), Some(*low), "{key}: {got}");
        assert_eq!(got["high"].as_f64(), Some(*high), "{key}: {got}");
        let sum = got["total"].as_f64().unwrap();
        assert!(
            (sum - total).abs() <= 1e-9 * total.abs().max(1.0),
            "{key}: {got} vs {total}"
        );
        // The user-defined aggregates: the sketch of all the window's
        // amounts (a record counted twice or lost after a restart changes
        // it), within 1 % of the exact quantile; the histogram's counts.
        let window = &amounts[key];
        let mut sketch = weir_dataflow::udaf::new_sketch();
        window.iter().for_each(|x| sketch.add(*x));
        let mut sorted = window.clone();
        sorted.sort_by(f64::total_cmp);
        for (name, q) in [("median", 0.5), ("p90", 0.9)] {
            let got = got[name].as_f64().unwrap();
            assert_eq!(Some(got), sketch.quantile(q).unwrap(), "{key} {name}");
            let exact = sorted[(q * (sorted.len() - 1) as f64) as usize];
            assert!(
                (got - exact).abs() <= 0.01 * exact + 1e-9,
                "{key} {name}: {got} vs {exact}"
            );
        }
        let mut spread = vec![0_i64; 8];
        for x in window {
            spread[((x / 125.0) as usize).min(7)] += 1;
        }
        assert_eq!(got["spread"], serde_json::json!(spread), "{key}");
    }
}

const TOP_K_JOB: &str = r#"
name = "crash-topk"
checkpoint_interval = "300ms"

[source]
topic = "crash-in"
event_time = "event_time"
lateness = "5s"
bounded = true
schema = { user_id = "string", merchant_id = "string", amount = "double", event_time = "long" }

[[operator]]
kind = "top_k"
key = "user_id"
by = "amount"
k = 3
window = "60s"
time = "event_time"

[sink]
topic = "topk-out"
key = ["key", "window_start", "rank"]
"#;

/// A custom operator (the example `top_k`: keyed value state and a timer
/// per window) killed at random points: its output equals a brute-force
/// reference, and every emission of a (key, window, rank) holds one value.
#[test]
fn a_custom_operator_killed_at_random_points_ends_with_exact_results() {
    let platform = Platform::start();
    let dir = tempfile::tempdir().unwrap();
    let data = publish_events(&platform, dir.path());
    kill_and_restart(&platform, dir.path(), TOP_K_JOB, 2);
    // Every window has been emitted and cleared at the end of the input:
    // what is left (none expected) is the same as without crashes.
    assert_same_state_as_an_uninterrupted_run(
        &platform,
        dir.path(),
        (TOP_K_JOB, "crash-topk", "topk-out"),
        2,
    );

    let tail = platform.run(&["tail", "topk-out", "--from-beginning"], b"");
    let mut emitted: BTreeMap<(String, i64, i64), Vec<f64>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&tail.stdout).lines() {
        let row: Json = serde_json::from_str(line).unwrap();
        let key = (
            row["key"].as_str().unwrap().to_string(),
            row["window_start"].as_i64().unwrap(),
            row["rank"].as_i64().unwrap(),
        );
        emitted
            .entry(key)
            .or_default()
            .push(row["value"].as_f64().unwrap());
    }
    let mut reference: BTreeMap<(String, i64), Vec<f64>> = BTreeMap::new();
    for event in &data {
        let start = event.ts - event.ts.rem_euclid(60_000);
        reference
            .entry((event.user.clone(), start))
            .or_default()
            .push(event.amount);
    }
    let mut expected: BTreeMap<(String, i64, i64), f64> = BTreeMap::new();
    for ((user, start), mut amounts) in reference {
        amounts.sort_by(|a, b| b.total_cmp(a));
        for (rank, amount) in amounts.into_iter().take(3).enumerate() {
            expected.insert((user.clone(), start, rank as i64 + 1), amount);
        }
    }
    let emissions: usize = emitted.values().map(Vec::len).sum();
    for (key, values) in &emitted {
        assert!(
            values.iter().all(|v| v == &values[0]),
            "{key:?} was emitted with different values: {values:?}"
        );
    }
    let latest: BTreeMap<(String, i64, i64), f64> = emitted
        .into_iter()
        .map(|(key, values)| (key, values[0]))
        .collect();
    assert_eq!(
        latest.len(),
        expected.len(),
        "number of (user, window, rank) results"
    );
    assert_eq!(latest, expected);
    println!(
        "top_k: {emissions} emissions of {} (user, window, rank) results: {} replayed by the restarts",
        expected.len(),
        emissions - expected.len()
    );
}

const TOTALS_JOB: &str = r#"
name = "crash-totals"
checkpoint_interval = "300ms"

[source]
topic = "crash-in"
event_time = "event_time"
lateness = "5s"
bounded = true
schema = { user_id = "string", merchant_id = "string", amount = "double", event_time = "long" }

[aggregate]
keys = ["user_id"]
aggregates = { n = "count(*)", low = "min(amount)", high = "max(amount)", spread = "histogram(amount, 0, 1000, 8)" }

[sink]
topic = "totals-out"
"#;

/// Runs `job` (TOML, named `name`, writing to `sink`) once more without a
/// crash, as `{name}-calm` writing to `{sink}-calm`, and checks that each
/// worker's committed state (read from its RocksDB after both ended at the
/// end of the same input) is the same as the crashed run's, entry for
/// entry. A resumption that replayed records into state, lost some, or
/// left an uncommitted epoch's changes behind fails here. Returns the
/// number of entries compared.
fn assert_same_state_as_an_uninterrupted_run(
    platform: &Platform,
    dir: &std::path::Path,
    (job, name, sink): (&str, &str, &str),
    workers: usize,
) -> usize {
    let calm = job
        .replace(
            &format!("name = \"{name}\""),
            &format!("name = \"{name}-calm\""),
        )
        .replace(
            &format!("topic = \"{sink}\""),
            &format!("topic = \"{sink}-calm\""),
        );
    assert_ne!(calm, job, "the job is renamed");
    let file = dir.join("calm.toml");
    std::fs::write(&file, calm).unwrap();
    let workers_arg = workers.to_string();
    platform.run(
        &["job", "run", file.to_str().unwrap(), "-w", &workers_arg],
        b"",
    );
    assert_same_state(platform, name, &format!("{name}-calm"), workers)
}

/// Checks that each worker's committed state of job `crashed` (read from
/// its RocksDB after it ended) is the same as job `calm`'s, entry for
/// entry; returns the number of entries compared.
pub(crate) fn assert_same_state(
    platform: &Platform,
    crashed: &str,
    calm: &str,
    workers: usize,
) -> usize {
    let name = crashed;
    let mut compared = 0;
    for worker in 0..workers {
        let state = |job: &str| {
            let path = platform
                .state
                .path()
                .join("jobs")
                .join(job)
                .join(format!("worker-{worker}"));
            assert!(path.is_dir(), "no state at {}", path.display());
            weir_dataflow::store::Store::open(&path)
                .unwrap()
                .committed_state()
                .unwrap()
        };
        let (crashed, uninterrupted) = (state(crashed), state(calm));
        let first_difference = crashed
            .iter()
            .zip(&uninterrupted)
            .position(|(a, b)| a != b)
            .or((crashed.len() != uninterrupted.len())
                .then(|| crashed.len().min(uninterrupted.len())));
        let hex = |entry: Option<&(Vec<u8>, Vec<u8>)>| {
            entry.map(|(k, v)| {
                let hex =
                    |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
                format!("{} = {}", hex(k), hex(v))
            })
        };
        assert!(
            crashed == uninterrupted,
            "worker {worker}: {} entries after the crashes ({:?}), {} without ({:?}); first difference at entry {first_difference:?}:\n{:?}\n{:?}",
            crashed.len(),
            kinds_of(&crashed),
            uninterrupted.len(),
            kinds_of(&uninterrupted),
            hex(first_difference.and_then(|i| crashed.get(i))),
            hex(first_difference.and_then(|i| uninterrupted.get(i))),
        );
        compared += crashed.len();
    }
    println!("{name}: {compared} committed state entries equal an uninterrupted run's");
    compared
}

/// State entries counted by their tag, operator and (keyed state) name:
/// what a difference is made of.
fn kinds_of(entries: &[(Vec<u8>, Vec<u8>)]) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for (key, _) in entries {
        let (tag, op) = (key[0] as char, u16::from_be_bytes([key[1], key[2]]));
        let name = match tag {
            'k' => {
                let length = key[3] as usize;
                String::from_utf8_lossy(&key[4..4 + length]).into_owned()
            }
            _ => String::new(),
        };
        *kinds.entry(format!("{tag}{op}{name}")).or_default() += 1;
    }
    kinds
}

/// A continuous aggregation (no window: each user's totals over every
/// event) killed at random points: its committed state equals an
/// uninterrupted run's byte for byte (so its aggregates are ones whose
/// state does not depend on the order records arrive in: a float sum, or
/// the quantile sketch that keeps one, differs in its last bits when the
/// partitions interleave otherwise), and the output topic read as a changelog (the
/// latest update of each user) equals the reference; the updates written
/// per user are reported.
#[test]
fn a_continuous_aggregation_killed_at_random_points_keeps_the_state_of_an_uninterrupted_run() {
    let platform = Platform::start();
    let dir = tempfile::tempdir().unwrap();
    let data = publish_events(&platform, dir.path());
    kill_and_restart(&platform, dir.path(), TOTALS_JOB, 2);
    let entries = assert_same_state_as_an_uninterrupted_run(
        &platform,
        dir.path(),
        (TOTALS_JOB, "crash-totals", "totals-out"),
        2,
    );
    // One state entry per user: the totals live in the state, not only in
    // the output.
    let mut reference: BTreeMap<String, (i64, f64, f64, Vec<i64>)> = BTreeMap::new();
    for event in &data {
        let entry = reference.entry(event.user.clone()).or_insert((
            0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            vec![0; 8],
        ));
        entry.0 += 1;
        entry.1 = entry.1.min(event.amount);
        entry.2 = entry.2.max(event.amount);
        entry.3[((event.amount / 125.0) as usize).min(7)] += 1;
    }
    assert_eq!(entries, reference.len(), "state entries, one per user");

    let tail = platform.run(&["tail", "totals-out", "--from-beginning", "--meta"], b"");
    let mut latest: BTreeMap<String, Json> = BTreeMap::new();
    let mut updates = 0;
    for line in String::from_utf8_lossy(&tail.stdout).lines() {
        let record: Json = serde_json::from_str(line).unwrap();
        latest.insert(
            record["key"].as_str().unwrap().to_string(),
            record["value"].clone(),
        );
        updates += 1;
    }
    assert_eq!(latest.len(), reference.len(), "users in the changelog");
    for (user, (n, low, high, spread)) in &reference {
        let got = &latest[user];
        assert_eq!(got["n"].as_i64(), Some(*n), "{user}: {got}");
        assert_eq!(got["low"].as_f64(), Some(*low), "{user}: {got}");
        assert_eq!(got["high"].as_f64(), Some(*high), "{user}: {got}");
        assert_eq!(got["spread"], serde_json::json!(spread), "{user}: {got}");
    }
    println!(
        "totals: {updates} updates for {} users ({:.1} per user, one per user per checkpoint it changed in)",
        reference.len(),
        updates as f64 / reference.len() as f64
    );
}

const JOIN_JOB: &str = r#"
name = "crash-join"
checkpoint_interval = "300ms"

[source]
topic = "crash-in"
event_time = "ts"
lateness = "5s"
bounded = true
schema = { id = "string", variant = "string", ts = "long" }

[join]
topic = "crash-labels"
event_time = "ts"
lateness = "5s"
schema = { id = "string", label = "long", ts = "long" }
on = { id = "id" }
between = ["0s", "10s"]
kind = "left"
columns = { label = "label", ts = "label_ts" }

[sink]
topic = "join-out"
"#;

/// An interval join (left-outer) killed at random points: the distinct
/// rows of its output equal a brute-force reference (the Kafka sink is
/// at-least-once: a replay writes a row again), and no row is emitted both
/// matched and unmatched.
#[test]
fn an_interval_join_killed_at_random_points_ends_with_exact_results() {
    let platform = Platform::start();
    let dir = tempfile::tempdir().unwrap();
    // 100,000 requests over 1,000 s (ids repeat), labels for 90 % of them
    // from 2 s before to 14 s after (the join takes 0 to 10 s), 2 s out of
    // order.
    let mut next = xorshift(0x2545_F491_4F6C_DD1D);
    let base = 1_700_000_000_000_i64;
    let served: Vec<(String, String, i64)> = (0..100_000)
        .map(|i| {
            (
                format!("r{}", next() % 75_000),
                ["a", "b"][(next() % 2) as usize].to_string(),
                base + i * 10 - (next() % 2_000) as i64,
            )
        })
        .collect();
    let mut labels: Vec<(String, i64, i64)> = Vec::new();
    for (id, _, ts) in &served {
        if !next().is_multiple_of(10) {
            labels.push((
                id.clone(),
                (next() % 2) as i64,
                ts - 2_000 + (next() % 16_000) as i64,
            ));
        }
    }
    let mut order: Vec<(i64, usize)> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.2 + (next() % 2_000) as i64, i))
        .collect();
    order.sort();
    let write = |name: &str, lines: Vec<String>| {
        let path = dir.path().join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    };
    let served_file = write(
        "served.jsonl",
        served
            .iter()
            .map(|(id, variant, ts)| format!(r#"{{"id":"{id}","variant":"{variant}","ts":{ts}}}"#))
            .collect(),
    );
    let labels_file = write(
        "labels.jsonl",
        order
            .iter()
            .map(|(_, i)| {
                let (id, label, ts) = &labels[*i];
                format!(r#"{{"id":"{id}","label":{label},"ts":{ts}}}"#)
            })
            .collect(),
    );
    for (topic, file) in [("crash-in", &served_file), ("crash-labels", &labels_file)] {
        platform.run(
            &[
                "publish",
                topic,
                file.to_str().unwrap(),
                "--key",
                "id",
                "--partitions",
                "3",
            ],
            b"",
        );
    }
    kill_and_restart(&platform, dir.path(), JOIN_JOB, 2);
    assert_same_state_as_an_uninterrupted_run(
        &platform,
        dir.path(),
        (JOIN_JOB, "crash-join", "join-out"),
        2,
    );
    let letters = platform.run(&["tail", "weir.dlq.crash-labels", "--from-beginning"], b"");
    assert!(letters.stdout.is_empty(), "labels were dead-lettered");

    // The reference, by id.
    let mut by_id: BTreeMap<&str, Vec<&(String, i64, i64)>> = BTreeMap::new();
    for label in &labels {
        by_id.entry(&label.0).or_default().push(label);
    }
    let mut expected: BTreeMap<(String, i64, Option<i64>), usize> = BTreeMap::new();
    for (id, _, ts) in &served {
        let matches: Vec<_> = by_id
            .get(id.as_str())
            .into_iter()
            .flatten()
            .filter(|l| *ts <= l.2 && l.2 <= ts + 10_000)
            .collect();
        if matches.is_empty() {
            *expected.entry((id.clone(), *ts, None)).or_default() += 1;
        }
        for l in matches {
            *expected.entry((id.clone(), *ts, Some(l.2))).or_default() += 1;
        }
    }
    let tail = platform.run(&["tail", "join-out", "--from-beginning"], b"");
    let mut emitted: BTreeMap<(String, i64, Option<i64>), usize> = BTreeMap::new();
    for line in String::from_utf8_lossy(&tail.stdout).lines() {
        let row: Json = serde_json::from_str(line).unwrap();
        let key = (
            row["id"].as_str().unwrap().to_string(),
            row["ts"].as_i64().unwrap(),
            row["label_ts"].as_i64(),
        );
        *emitted.entry(key).or_default() += 1;
    }
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !emitted.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = emitted
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    // A replay writes rows again, never fewer times than they are due.
    for (key, due) in &expected {
        assert!(emitted[key] >= *due, "{key:?}: {} of {due}", emitted[key]);
    }
    let rows: usize = expected.values().sum();
    let written: usize = emitted.values().sum();
    println!(
        "interval join: {written} rows written for {rows} due: {} replayed by the restarts",
        written - rows
    );
}
