//! `weir traffic allocate`: a bandit's allocator job over the real broker —
//! its weights follow the rewards, and killed at random points it publishes
//! what an uninterrupted run does, from the same committed state.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use weir_bus::{Bus, BusConfig};
use weir_serve::feedback::{Feedback, Writer};
use weir_serve::log::{Channel, LogEntry, Logger, Tensor};
use weir_serve::routing::{Candidate, Kind, Routing};

use crate::dataflow::{assert_same_state, kill_and_restart_with};
use crate::support::Platform;

const ARMS: [&str; 3] = ["m@1", "m@2", "m@3"];
const BASE: i64 = 1_700_000_000_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn bus(platform: &Platform) -> Bus {
    Bus::connect(BusConfig::new(platform.kafka.to_string()))
        .await
        .unwrap()
}

fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// A bandit experiment's first routing: every arm an equal weight.
fn first_routing(experiment: &str) -> Routing {
    Routing {
        experiment: experiment.into(),
        version: 1,
        kind: Kind::Bandit,
        candidates: ARMS
            .iter()
            .map(|model| Candidate {
                model: model.to_string(),
                weight: 1.0,
            })
            .collect(),
        default: ARMS[0].into(),
        mirror: None,
        sticky: None,
        stopped: false,
        allocated: false,
        at: BASE,
    }
}

fn spec(dir: &Path, experiment: &str, deployment: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{experiment}.yaml"));
    let candidates: String = ARMS
        .iter()
        .map(|model| format!("  - {{model: {model}, weight: 1}}\n"))
        .collect();
    std::fs::write(
        &path,
        format!(
            "name: {experiment}\ndeployment: {deployment}\nkind: bandit\ncandidates:\n{candidates}{extra}"
        ),
    )
    .unwrap();
    path
}

/// A served request: id, the arm that answered, when.
type Served = (String, usize, i64);

/// Logs `served` to `weir.log.<deployment>` as serving does, and their
/// rewards (id, reward, when) to `weir.feedback.<deployment>`.
async fn publish(bus: &Bus, deployment: &str, served: &[Served], rewards: &[(String, f64, i64)]) {
    let logger = Logger::start(bus, deployment).await.unwrap();
    for (id, arm, ts) in served {
        logger
            .log(LogEntry {
                request_id: id.clone(),
                models: ARMS[*arm].into(),
                variant: ARMS[*arm].into(),
                propensity: 1.0 / 3.0,
                channel: Channel::Http,
                timestamp: *ts,
                latency_us: 900,
                rows: 1,
                inputs: vec![("x".into(), Tensor::numbers(vec![1.0]))],
                features: Vec::new(),
                outputs: vec![("y".into(), Tensor::numbers(vec![0.5]))],
                error: None,
            })
            .await;
    }
    logger.close().await.unwrap();
    let feedback: Vec<Feedback> = rewards
        .iter()
        .map(|(id, reward, ts)| Feedback {
            request_id: id.clone(),
            reward: Some(*reward),
            label: None,
            timestamp: Some(*ts),
        })
        .collect();
    Writer::start(bus, deployment)
        .await
        .unwrap()
        .write(&feedback)
        .await
        .unwrap();
}

/// The routings of `experiment` on `weir.control.<deployment>`, by
/// version (a replay writes a version again: the same routing).
async fn routings(bus: &Bus, deployment: &str, experiment: &str) -> BTreeMap<u64, Routing> {
    let (history, _) = weir_serve::control::history(bus, deployment).await.unwrap();
    let mut by_version = BTreeMap::new();
    for routing in history.into_iter().filter(|r| r.experiment == experiment) {
        if let Some(seen) = by_version.insert(routing.version, routing.clone()) {
            assert_eq!(
                seen, routing,
                "version {} written twice, differently",
                routing.version
            );
        }
    }
    by_version
}

fn allocate(platform: &Platform, spec: &Path, extra: &[&str], log: &Path) -> Child {
    platform
        .weir(&[
            "traffic",
            "allocate",
            spec.to_str().unwrap(),
            "--status-every",
            "1s",
        ])
        .args(extra)
        .env("RUST_LOG", "weir_dataflow=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// The first dead letters of the deployment's log and feedback, if any.
fn dead_letters(platform: &Platform, deployment: &str) -> String {
    let mut letters = String::new();
    for topic in ["log", "feedback"] {
        let dlq = format!("weir.dlq.weir.{topic}.{deployment}");
        let tail = platform.run_unchecked(&["tail", &dlq, "--from-beginning", "--meta"], b"");
        for line in String::from_utf8_lossy(&tail.stdout).lines().take(3) {
            letters.push_str(&format!("{dlq}: {line}\n"));
        }
    }
    letters
}

/// The share of each arm in `routing`.
fn shares(routing: &Routing) -> Vec<f64> {
    routing.shares()
}

/// Three arms converting at 5 %, 6 % and 9 %: 150,000 requests over
/// 1,500 s of event time, a third each, and their rewards 0–3 s later (a tenth of
/// them never come). The allocator (Thompson sampling, new weights every
/// 10 s of event time) is SIGKILLed at random points; its routings equal
/// an uninterrupted run's version for version, its committed state is the
/// same, and its last weights favour the best arm.
#[test]
fn a_bandit_allocator_killed_at_random_points_publishes_what_an_uninterrupted_run_does() {
    let platform = Platform::start();
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let bus = runtime.block_on(bus(&platform));
    let rates = [0.05, 0.06, 0.09];
    let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
    let served: Vec<Served> = (0..150_000)
        .map(|i| (format!("r{i}"), i % 3, BASE + i as i64 * 10))
        .collect();
    let mut rewards: Vec<(String, f64, i64)> = Vec::new();
    for (id, arm, ts) in &served {
        if next().is_multiple_of(10) {
            continue; // never comes
        }
        let converted = (next() % 10_000) as f64 / 10_000.0 < rates[*arm];
        let at = ts + (next() % 3_000) as i64;
        rewards.push((id.clone(), f64::from(u8::from(converted)), at));
    }
    rewards.sort_by_key(|r| r.2);
    runtime.block_on(async {
        weir_serve::control::publish(&bus, "bandit", &first_routing("explore"))
            .await
            .unwrap();
        publish(&bus, "bandit", &served, &rewards).await;
    });
    let policy = "policy: {algorithm: thompson, floor: 0.02, every: 10s}\nreward: {window: 1m, lateness: 1s}\n";
    let crashed = spec(dir.path(), "explore", "bandit", policy);
    kill_and_restart_with(
        &platform,
        dir.path(),
        "weir.feedback.bandit",
        "allocator",
        |log| {
            allocate(
                &platform,
                &crashed,
                &["--bounded", "-w", "2", "--checkpoint-every", "300ms"],
                log,
            )
        },
    );
    // The same experiment once more, uninterrupted, as `explore-calm`.
    runtime.block_on(async {
        weir_serve::control::publish(&bus, "bandit", &first_routing("explore-calm"))
            .await
            .unwrap();
    });
    let calm = spec(dir.path(), "explore-calm", "bandit", policy);
    let log = dir.path().join("calm.log");
    let status = allocate(&platform, &calm, &["--bounded", "-w", "2"], &log)
        .wait()
        .unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let entries = assert_same_state(
        &platform,
        "allocator-explore-v1",
        "allocator-explore-calm-v1",
        2,
    );
    assert!(entries > 0, "no state");

    let (crashed, calm) = runtime.block_on(async {
        (
            routings(&bus, "bandit", "explore").await,
            routings(&bus, "bandit", "explore-calm").await,
        )
    });
    // A tick every 10 s of the 1,503 s the rewards span.
    assert!(calm.len() > 145, "{} routings", calm.len());
    assert_eq!(
        crashed.keys().collect::<Vec<_>>(),
        calm.keys().collect::<Vec<_>>(),
        "versions"
    );
    for ((version, a), b) in crashed.iter().zip(calm.values()) {
        let plain = |r: &Routing| (r.at, r.candidates.clone());
        assert_eq!(plain(a), plain(b), "version {version}");
    }
    let last = calm.values().next_back().unwrap();
    let weights = shares(last);
    println!(
        "allocator: {} routings; the last (v{}) gives {:?}",
        calm.len(),
        last.version,
        weights
    );
    assert!(weights[2] > 0.9, "{weights:?}");
    assert!(weights.iter().all(|w| *w >= 0.02 - 1e-12), "{weights:?}");
}

/// A closed loop over the real broker, as serving and users make it, in
/// real time: each round of 1,000 requests is split by the weights the
/// running allocator last published, the requests are logged and their
/// rewards published 50 ms later (arms converting at 10 %, 20 % and 40 %),
/// and the allocator answers with weights that take them in. Within 15
/// rounds the best arm takes most of the traffic; stopping the experiment
/// then stops the allocator.
#[test]
fn a_running_allocator_moves_the_traffic_to_the_best_arm() {
    let platform = Platform::start();
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let bus = runtime.block_on(bus(&platform));
    runtime.block_on(async {
        weir_serve::control::publish(&bus, "loop", &first_routing("converge"))
            .await
            .unwrap();
        // The topics exist before the allocator reads them.
        publish(&bus, "loop", &[], &[]).await;
    });
    let spec = spec(
        dir.path(),
        "converge",
        "loop",
        "policy: {algorithm: thompson, floor: 0.02, every: 1s}\nreward: {window: 1m, lateness: 500ms}\n",
    );
    let log = dir.path().join("allocator.log");
    let mut allocator = allocate(&platform, &spec, &[], &log);
    let rates = [0.1, 0.2, 0.4];
    let mut next = xorshift(0x2545_F491_4F6C_DD1D);
    let mut routing = first_routing("converge");
    let mut served_per_arm = [0_usize; 3];
    let mut waits = Vec::new();
    for round in 0..15 {
        let shares = shares(&routing);
        let (mut served, mut rewards) = (Vec::new(), Vec::new());
        // Requests stamped as they are served: 1,000 over 100 ms.
        let start = weir_core::now_ms();
        for i in 0..1_000 {
            let ts = start + i / 10;
            let unit = (next() >> 11) as f64 / (1_u64 << 53) as f64;
            let arm = weir_serve::routing::pick(&shares, unit);
            served_per_arm[arm] += 1;
            let id = format!("q{round}-{i}");
            let converted = (next() % 10_000) as f64 / 10_000.0 < rates[arm];
            rewards.push((id.clone(), f64::from(u8::from(converted)), ts + 50));
            served.push((id, arm, ts));
        }
        runtime.block_on(publish(&bus, "loop", &served, &rewards));
        let published = Instant::now();
        // The weights of the first tick after the round's last reward.
        let last_reward = rewards.last().unwrap().2;
        let deadline = published + Duration::from_secs(30);
        loop {
            let latest = runtime.block_on(routings(&bus, "loop", "converge"));
            if let Some(newest) = latest.values().next_back()
                && newest.at > last_reward
            {
                routing = newest.clone();
                waits.push(published.elapsed().as_millis());
                break;
            }
            assert!(
                allocator.try_wait().unwrap().is_none(),
                "the allocator ended:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            assert!(
                Instant::now() < deadline,
                "no weights after round {round} in 30 s:\n{}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default(),
                dead_letters(&platform, "loop")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Stopping the experiment stops its allocator, at a checkpoint.
    let stop = Routing {
        version: routing.version + 1,
        stopped: true,
        allocated: false,
        ..first_routing("converge")
    };
    runtime
        .block_on(weir_serve::control::publish(&bus, "loop", &stop))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = allocator.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            allocator.kill().unwrap();
            panic!(
                "the allocator went on after its experiment stopped:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let letters = dead_letters(&platform, "loop");
    assert!(letters.is_empty(), "{letters}");
    let weights = shares(&routing);
    println!(
        "closed loop: last weights {weights:?} (v{}), requests per arm {served_per_arm:?}, ms from the rewards to their weights {waits:?}",
        routing.version
    );
    assert!(weights[2] > 0.8, "{weights:?}");
    assert!(
        served_per_arm[2] > served_per_arm[0] + served_per_arm[1],
        "{served_per_arm:?}"
    );
}
