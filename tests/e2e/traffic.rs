//! `weir traffic allocate`: a bandit's allocator job over the real broker —
//! its weights follow the rewards, and killed at random points it publishes
//! what an uninterrupted run does, from the same committed state.
//! `weir traffic analyze`: an experiment's analysis finds a better
//! candidate and no difference between equals, its decision rules
//! promote and roll back through the registry, and its guardrails roll
//! back a slow or failing canary; its off-policy estimates are Open
//! Bandit Pipeline's.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use weir_bus::{Bus, BusConfig};
use weir_serve::feedback::{Feedback, Writer};
use weir_serve::log::{Channel, LogEntry, Logger, Tensor};
use weir_serve::routing::{Candidate, Kind, Routing};
use weir_traffic::analysis::{Decision, Verdict};

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
    let propensities = vec![1.0 / 3.0; served.len()];
    publish_logged(bus, deployment, served, &propensities, rewards).await;
}

/// [`publish`], each request logged with its propensity.
async fn publish_logged(
    bus: &Bus,
    deployment: &str,
    served: &[Served],
    propensities: &[f64],
    rewards: &[(String, f64, i64)],
) {
    let logger = Logger::start(bus, deployment).await.unwrap();
    for ((id, arm, ts), propensity) in served.iter().zip(propensities) {
        logger
            .log(LogEntry {
                request_id: id.clone(),
                models: ARMS[*arm].into(),
                variant: ARMS[*arm].into(),
                propensity: *propensity,
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

/// A canary between `m@1` (the default) and `m@2` on `deployment`,
/// applied at `BASE`.
fn canary(experiment: &str) -> Routing {
    Routing {
        kind: Kind::Canary,
        candidates: ARMS[..2]
            .iter()
            .map(|model| Candidate {
                model: model.to_string(),
                weight: 1.0,
            })
            .collect(),
        ..first_routing(experiment)
    }
}

/// Runs `weir traffic analyze` over what the topics hold and reads back
/// what it published.
fn analyze(
    platform: &Platform,
    runtime: &tokio::runtime::Runtime,
    bus: &Bus,
    dir: &Path,
    experiment: &str,
    deployment: &str,
) -> Vec<weir_traffic::analysis::AnalysisRow> {
    let path = dir.join(format!("{experiment}.yaml"));
    std::fs::write(
        &path,
        format!(
            "name: {experiment}\ndeployment: {deployment}\nkind: canary\ncandidates:\n  - {{model: m@1, weight: 1}}\n  - {{model: m@2, weight: 1}}\nreward: {{window: 1m, lateness: 1s}}\nanalysis: {{every: 10s}}\n"
        ),
    )
    .unwrap();
    let log = dir.join(format!("{experiment}.log"));
    let status = platform
        .weir(&[
            "traffic",
            "analyze",
            path.to_str().unwrap(),
            "--bounded",
            "-w",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    runtime
        .block_on(weir_traffic::analysis::read(bus, deployment, experiment, 1))
        .unwrap()
}

/// The analysis of a canary over the real broker: 40,000 requests split
/// evenly, every one rewarded 0–3 s later. Against a default converting
/// at 10 %, a candidate at 13 % (a lift of 0.3) is found better, its
/// interval holds the true lift, and its verdict holds once reached; an
/// equal candidate stays undecided. Requests served before the experiment
/// was applied do not count (the rewards counted are exactly the
/// experiment's), and feedback for unknown requests is counted apart.
#[test]
fn an_analysis_finds_the_better_candidate_and_no_difference_between_equals() {
    let platform = Platform::start();
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let bus = runtime.block_on(bus(&platform));
    let mut next = xorshift(0x5851_F42D_4C95_7F2D);
    for (deployment, rates) in [("lifted", [0.10, 0.13]), ("equal", [0.10, 0.10])] {
        // Before the experiment: m@2 answered 2,000 requests, none
        // converted.
        let mut served: Vec<Served> = (0..2_000)
            .map(|i| (format!("early{i}"), 1, BASE - 60_000 + i as i64 * 10))
            .collect();
        let mut rewards: Vec<(String, f64, i64)> = served
            .iter()
            .map(|(id, _, ts)| (id.clone(), 0.0, ts + 500))
            .collect();
        let mut counted = [(0_u64, 0.0_f64); 2];
        for i in 0..40_000 {
            let (id, arm, ts) = (format!("r{i}"), i % 2, BASE + i as i64 * 10);
            let reward = f64::from(u8::from((next() % 10_000) as f64 / 10_000.0 < rates[arm]));
            counted[arm].0 += 1;
            counted[arm].1 += reward;
            rewards.push((id.clone(), reward, ts + (next() % 3_000) as i64));
            served.push((id, arm, ts));
        }
        rewards.extend((0..100).map(|i| (format!("ghost{i}"), 1.0, BASE + i * 1_000)));
        rewards.sort_by_key(|r| r.2);
        let experiment = format!("compare-{deployment}");
        runtime.block_on(async {
            weir_serve::control::publish(&bus, deployment, &canary(&experiment))
                .await
                .unwrap();
            publish(&bus, deployment, &served, &rewards).await;
        });
        let rows = analyze(
            &platform,
            &runtime,
            &bus,
            dir.path(),
            &experiment,
            deployment,
        );
        let candidate: Vec<_> = rows.iter().filter(|r| r.variant == "m@2").collect();
        let last = *candidate.last().unwrap_or_else(|| {
            panic!(
                "no rows for the candidate: {rows:?}\n{}",
                std::fs::read_to_string(dir.path().join(format!("{experiment}.log")))
                    .unwrap_or_default()
            )
        });
        let default = rows.iter().rev().find(|r| r.variant == "m@1").unwrap();
        println!(
            "{deployment}: {} ticks; last: default n {} mean {:.4}, candidate n {} mean {:.4} lift {:?} [{:?}, {:?}] p {:?} {:?}",
            candidate.len(),
            default.n,
            default.mean,
            last.n,
            last.mean,
            last.lift,
            last.low,
            last.high,
            last.p_value,
            last.verdict
        );
        // A tick every 10 s over the 403 s the rewards span.
        assert!(candidate.len() >= 40, "{} ticks", candidate.len());
        assert_eq!((default.n, last.n), (counted[0].0, counted[1].0));
        assert!((last.mean - counted[1].1 / counted[1].0 as f64).abs() < 1e-12);
        assert_eq!(last.unmatched, 100);
        let (low, high) = (last.low.unwrap(), last.high.unwrap());
        let truth = rates[1] / rates[0] - 1.0;
        assert!(
            low <= truth && truth <= high,
            "{truth} outside [{low}, {high}]"
        );
        // The intervals only narrow, so a verdict holds.
        for pair in candidate.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if let (Some(a_low), Some(b_low)) = (a.low, b.low) {
                assert!(b_low >= a_low && b.high.unwrap() <= a.high.unwrap());
                assert!(b.p_value.unwrap() <= a.p_value.unwrap());
            }
        }
        let routing = canary(&experiment);
        let text = weir_traffic::report::table(&routing, &rows);
        let html = weir_traffic::report::html(&routing, std::slice::from_ref(&routing), &rows);
        assert!(html.contains("lift of m@2 over m@1") && html.contains("<polyline"));
        if deployment == "lifted" {
            assert_eq!(last.verdict, Verdict::Better);
            assert!(last.p_value.unwrap() <= 0.05);
            assert_eq!(text[2][6], "better", "{text:?}");
        } else {
            assert_eq!(last.verdict, Verdict::Undecided);
            assert!(last.p_value.unwrap() > 0.05);
        }
    }
}

/// A deployment `deployment` serving `<deployment>-model@champion`
/// (version 1; version 2 registered beside it), and a canary
/// `experiment` between the two applied to it with `extra` in its spec.
/// Returns the model's name and the spec's path.
fn canary_on_a_deployment(
    platform: &Platform,
    runtime: &tokio::runtime::Runtime,
    tracker: &weir_meta::Tracker,
    dir: &Path,
    deployment: &str,
    experiment: &str,
    extra: &str,
) -> (String, std::path::PathBuf) {
    let model = format!("{deployment}-model");
    // Versions registered with their metadata only: nothing here serves
    // them (the log is written as serving writes it).
    let info = weir_meta::event::ModelInfo {
        format: "onnx".into(),
        path: format!("{model}/model.onnx"),
        sha256: String::new(),
        size: 0,
        signature: weir_catalog::Signature {
            inputs: Vec::new(),
            outputs: Vec::new(),
            opsets: Vec::new(),
            ir_version: 9,
            producer: "none".into(),
        },
        features: vec!["x".into()],
        label: "y".into(),
        task: "classification".into(),
        classes: Vec::new(),
        dependencies: Default::default(),
    };
    runtime.block_on(async {
        for _ in 0..2 {
            tracker
                .register_version(
                    &model,
                    format!("models:/{model}"),
                    "run".into(),
                    String::new(),
                    Some(info.clone()),
                )
                .await
                .unwrap();
        }
        tracker.set_alias(&model, "champion", 1).await.unwrap();
        tracker
            .apply_deployment(
                deployment,
                &format!("name: {deployment}\nmodels: [{model}@champion]\n"),
                vec![format!("{model}@champion")],
            )
            .await
            .unwrap();
    });
    let path = dir.join(format!("{experiment}.yaml"));
    std::fs::write(
        &path,
        format!(
            "name: {experiment}\ndeployment: {deployment}\nkind: canary\ncandidates:\n  - {{model: {model}@champion, weight: 1}}\n  - {{model: {model}@2, weight: 1}}\nreward: {{window: 1m, lateness: 1s}}\nanalysis: {{every: 10s}}\n{extra}"
        ),
    )
    .unwrap();
    platform.run(&["traffic", "apply", path.to_str().unwrap()], b"");
    (model, path)
}

/// Logs `requests` requests on `deployment` from now on, 10 ms apart,
/// alternating between `arms`; `outcome(arm, i)` gives each one's latency
/// (µs), error and reward (with its delay, ms), whose feedback is then
/// published.
fn serve(
    runtime: &tokio::runtime::Runtime,
    bus: &Bus,
    deployment: &str,
    arms: &[String; 2],
    requests: usize,
    mut outcome: impl FnMut(usize, usize) -> (i64, Option<String>, Option<(f64, i64)>),
) {
    let start = weir_core::now_ms();
    let logger = runtime.block_on(Logger::start(bus, deployment)).unwrap();
    let mut rewards = Vec::new();
    for i in 0..requests {
        let (id, arm, ts) = (format!("r{i}"), i % 2, start + i as i64 * 10);
        let (latency_us, error, reward) = outcome(arm, i);
        runtime.block_on(logger.log(LogEntry {
            request_id: id.clone(),
            models: arms[arm].clone(),
            variant: arms[arm].clone(),
            propensity: 0.5,
            channel: Channel::Http,
            timestamp: ts,
            latency_us,
            rows: 1,
            inputs: vec![("x".into(), Tensor::numbers(vec![1.0]))],
            features: Vec::new(),
            outputs: vec![("y".into(), Tensor::numbers(vec![0.5]))],
            error,
        }));
        if let Some((reward, delay)) = reward {
            rewards.push(Feedback {
                request_id: id,
                reward: Some(reward),
                label: None,
                timestamp: Some(ts + delay),
            });
        }
    }
    runtime.block_on(async {
        logger.close().await.unwrap();
        rewards.sort_by_key(|f| f.timestamp);
        Writer::start(bus, deployment)
            .await
            .unwrap()
            .write(&rewards)
            .await
            .unwrap();
    });
}

/// Decision rules over the real broker and registry: a canary of
/// `<d>-model@2` against the deployment's champion (`@1`), 20,000
/// requests split evenly, every one rewarded 0–3 s later. A candidate
/// converting at 14 % against 10 % is promoted by `weir traffic analyze`
/// itself (the alias moves to version 2, the experiment stops), one at
/// 6 % rolled back (the alias stays, the experiment stops); each decision
/// is taken once, at the first tick with enough evidence, and recorded
/// with it on `weir.meta`; read again, it does nothing more.
#[test]
fn decision_rules_promote_a_better_candidate_and_roll_back_a_worse_one() {
    let platform = Platform::start();
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let bus = runtime.block_on(bus(&platform));
    let tracker = runtime
        .block_on(weir_meta::Tracker::open_under(&bus, dir.path()))
        .unwrap();
    let mut next = xorshift(0x1405_7B7E_F767_814F);
    for (deployment, rates, decision) in [
        ("promoted", [0.10, 0.14], Decision::Promote),
        ("rolled", [0.10, 0.06], Decision::Rollback),
    ] {
        let (model, path) = canary_on_a_deployment(
            &platform,
            &runtime,
            &tracker,
            dir.path(),
            deployment,
            &format!("decide-{deployment}"),
            "decision: {promote: true, rollback: true, min_rewards: 500}\n",
        );
        let experiment = format!("decide-{deployment}");
        let arms = [format!("{model}@1"), format!("{model}@2")];
        serve(&runtime, &bus, deployment, &arms, 20_000, |arm, _| {
            let converted = (next() % 10_000) as f64 / 10_000.0 < rates[arm];
            let delay = (next() % 3_000) as i64;
            (900, None, Some((f64::from(u8::from(converted)), delay)))
        });
        let output = platform.run(
            &["traffic", "analyze", path.to_str().unwrap(), "--bounded"],
            b"",
        );
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        let err = String::from_utf8_lossy(&output.stderr).into_owned();
        let rows = runtime
            .block_on(weir_traffic::analysis::read(
                &bus,
                deployment,
                &experiment,
                1,
            ))
            .unwrap();
        let decided: Vec<_> = rows.iter().filter(|r| r.decision.is_some()).collect();
        println!("{deployment}: {out}\n{err}");
        assert_eq!(decided.len(), 1, "{rows:?}");
        let evidence = decided[0];
        assert_eq!(evidence.decision, Some(decision));
        assert_eq!(evidence.variant, arms[1]);
        assert!(evidence.n >= 500 && evidence.p_value.unwrap() <= 0.05);
        // Decided at the first tick that allowed it.
        let before: Vec<_> = rows
            .iter()
            .filter(|r| r.variant == arms[1] && r.at < evidence.at)
            .collect();
        assert!(
            before
                .iter()
                .all(|r| r.n < 500 || !matches!(r.verdict, Verdict::Better | Verdict::Worse)),
            "{before:?}"
        );
        let state = runtime.block_on(weir_meta::tracker::replay(&bus)).unwrap();
        let champion = state
            .model(&model)
            .unwrap()
            .aliases
            .get("champion")
            .copied();
        let run = {
            let id = &state
                .experiment_by_name(weir_traffic::TRACKING_EXPERIMENT)
                .unwrap()
                .experiment_id;
            // The version applied is a run of its own, with its routing.
            let applied = state
                .runs_of(id)
                .find(|r| r.run_name == format!("{experiment}-v1"))
                .expect("the version's run");
            assert_eq!(applied.params["experiment_version"], "1");
            assert_eq!(applied.params["kind"], "canary");
            assert_eq!(
                applied.params["candidates"],
                format!("{model}@1=1, {model}@2=1"),
                "{:?}",
                applied.params
            );
            assert_eq!(applied.tags["weir.traffic.event"], "applied");
            state
                .runs_of(id)
                .find(|r| {
                    r.params.get("experiment") == Some(&experiment)
                        && r.params.contains_key("decision")
                })
                .cloned()
                .expect("the decision's run")
        };
        match decision {
            Decision::Promote => {
                assert!(
                    out.contains(&format!("decided: promoted {model}@2")),
                    "{out}"
                );
                assert_eq!(champion, Some(2));
                assert_eq!(run.params["decision"], "promote");
            }
            Decision::Rollback => {
                assert!(out.contains("decided: rolled back"), "{out}");
                assert_eq!(champion, Some(1));
                assert_eq!(run.params["decision"], "rollback");
            }
        }
        assert!(run.latest["p_value"].value <= 0.05);
        assert_eq!(run.latest["candidate_rewards"].value, evidence.n as f64);
        let experiment_now = runtime
            .block_on(weir_traffic::experiments::find(&bus, &state, &experiment))
            .unwrap();
        assert!(!experiment_now.running());
        // The decision read again does nothing more, and the analysis of
        // an experiment that ended is refused.
        let again = runtime
            .block_on(weir_traffic::decide::settle(
                &bus,
                &tracker,
                &weir_traffic::spec::ExperimentSpec::read(&path).unwrap(),
                1,
            ))
            .unwrap();
        assert!(again.is_none(), "{again:?}");
        let refused = platform.run_unchecked(
            &["traffic", "analyze", path.to_str().unwrap(), "--bounded"],
            b"",
        );
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("is not running"),
            "{refused:?}"
        );
    }
    runtime.block_on(tracker.close());
}

/// Guardrails over the real broker and registry: canaries of
/// `<d>-model@2` against the champion, 4,000 requests each. A candidate
/// answering in 40 ms where the limit is 20 ms is rolled back, as is one
/// failing 6 % of its requests where the limit is 2 %; the default's own
/// figures do not count against it, and a candidate within the limits is
/// left running. The rollback is recorded with its evidence.
#[test]
fn guardrails_roll_back_a_slow_or_failing_canary_and_leave_a_sound_one() {
    let platform = Platform::start();
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let bus = runtime.block_on(bus(&platform));
    let tracker = runtime
        .block_on(weir_meta::Tracker::open_under(&bus, dir.path()))
        .unwrap();
    // (deployment, candidate's latency µs, its error every n requests, the
    // breach expected)
    let cases: [(&str, i64, usize, Option<&str>); 3] = [
        ("slow", 40_000, 0, Some("latency p99")),
        ("failing", 1_000, 16, Some("error rate")),
        ("sound", 1_000, 0, None),
    ];
    for (deployment, latency, fail_every, breach) in cases {
        let experiment = format!("guard-{deployment}");
        let (model, path) = canary_on_a_deployment(
            &platform,
            &runtime,
            &tracker,
            dir.path(),
            deployment,
            &experiment,
            "guardrails: {latency_p99_ms: 20, error_rate: 0.02, min_requests: 500}\n",
        );
        let arms = [format!("{model}@1"), format!("{model}@2")];
        serve(&runtime, &bus, deployment, &arms, 4_000, |arm, i| {
            // The default is slow and failing itself: only the candidate's
            // figures count.
            match arm {
                0 => (30_000, (i % 10 == 0).then(|| "default failed".into()), None),
                _ => (
                    latency,
                    (fail_every > 0 && i % (2 * fail_every) == 1).then(|| "failed".into()),
                    Some((0.0, 100)),
                ),
            }
        });
        let output = platform.run(
            &["traffic", "analyze", path.to_str().unwrap(), "--bounded"],
            b"",
        );
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        let rows = runtime
            .block_on(weir_traffic::guardrails::read(
                &bus,
                deployment,
                &experiment,
                1,
            ))
            .unwrap();
        let candidate: Vec<_> = rows.iter().filter(|r| r.variant == arms[1]).collect();
        let last = candidate.last().expect("guardrail rows");
        println!(
            "{deployment}: {} ticks; candidate {} requests, error rate {:.4}, p99 {:?} ms; {out}",
            candidate.len(),
            last.requests,
            last.error_rate,
            last.latency_p99_ms
        );
        assert_eq!(last.requests, 2_000);
        let state = runtime.block_on(weir_meta::tracker::replay(&bus)).unwrap();
        let running = runtime
            .block_on(weir_traffic::experiments::find(&bus, &state, &experiment))
            .unwrap()
            .running();
        let decided: Vec<_> = candidate.iter().filter(|r| r.decision.is_some()).collect();
        match breach {
            Some(what) => {
                assert_eq!(decided.len(), 1, "{candidate:?}");
                assert_eq!(decided[0].decision, Some(Decision::Rollback));
                let said = decided[0].breach.as_deref().unwrap_or_default();
                assert!(said.starts_with(what), "{said}");
                // At the first tick it was allowed to: every look before
                // had fewer than `min_requests`.
                let allowed = candidate
                    .iter()
                    .find(|r| r.requests >= 500)
                    .expect("a tick with enough requests");
                assert_eq!(decided[0].at, allowed.at, "{candidate:?}");
                assert!(
                    out.contains("decided: rolled back") && out.contains(what),
                    "{out}"
                );
                assert!(!running);
                let id = &state
                    .experiment_by_name(weir_traffic::TRACKING_EXPERIMENT)
                    .unwrap()
                    .experiment_id;
                let run = state
                    .runs_of(id)
                    .find(|r| {
                        r.params.get("experiment") == Some(&experiment)
                            && r.params.contains_key("decision")
                    })
                    .expect("the decision's run");
                assert_eq!(run.params["evidence"], "guardrail");
                assert!(run.latest.contains_key("candidate_latency_p99_ms"));
            }
            None => {
                assert!(decided.is_empty(), "{candidate:?}");
                assert!(!out.contains("decided"), "{out}");
                assert!(running);
                let p99 = last.latency_p99_ms.unwrap();
                // 1 ms, within the sketch's 1 % error.
                assert!((p99 - 1.0).abs() <= 0.011, "{p99}");
            }
        }
    }
    runtime.block_on(tracker.close());
}

/// The analysis's off-policy estimates over the real broker, against Open
/// Bandit Pipeline on the same logged requests. The logging policy moved
/// (m@2 had 50 %, then 80 %, then 20 % of the traffic, as a bandit's
/// weights move) while both variants converted twice as often in the
/// middle third: each variant's naive mean over-counts the third it had
/// most of, the estimates of "all traffic to it" do not. IPS, SNIPS and
/// DR equal obp's (`InverseProbabilityWeighting`,
/// `SelfNormalizedInverseProbabilityWeighting`, `DoublyRobust` with each
/// variant's mean reward as the reward model) to 1e-9, and IPS and DR hold
/// the true values within four standard errors.
#[test]
fn off_policy_estimates_are_open_bandit_pipelines() {
    let platform = Platform::start();
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let bus = runtime.block_on(bus(&platform));
    let mut next = xorshift(0x2545_F491_4F6C_DD1D);
    let mut uniform = move || (next() % 1_000_000) as f64 / 1_000_000.0;
    // Per third: m@2's share of the traffic, and each variant's rate.
    let thirds = [
        (0.5, [0.10, 0.12]),
        (0.8, [0.20, 0.24]),
        (0.2, [0.10, 0.12]),
    ];
    let truth: Vec<f64> = (0..2)
        .map(|arm| thirds.iter().map(|t| t.1[arm]).sum::<f64>() / 3.0)
        .collect();
    let (mut served, mut propensities, mut rewards) = (Vec::new(), Vec::new(), Vec::new());
    let mut csv = String::from("action,reward,pscore\n");
    for i in 0..30_000 {
        let (share, rates) = thirds[i / 10_000];
        let arm = usize::from(uniform() < share);
        let propensity = if arm == 1 { share } else { 1.0 - share };
        let reward = f64::from(u8::from(uniform() < rates[arm]));
        let (id, ts) = (format!("r{i}"), BASE + i as i64 * 10);
        rewards.push((id.clone(), reward, ts + (uniform() * 3_000.0) as i64));
        served.push((id, arm, ts));
        propensities.push(propensity);
        csv.push_str(&format!("{arm},{reward},{propensity}\n"));
    }
    rewards.sort_by_key(|r| r.2);
    let experiment = "ope-compare";
    runtime.block_on(async {
        weir_serve::control::publish(&bus, "ope", &canary(experiment))
            .await
            .unwrap();
        publish_logged(&bus, "ope", &served, &propensities, &rewards).await;
    });
    let rows = analyze(&platform, &runtime, &bus, dir.path(), experiment, "ope");

    let logged = dir.path().join("logged.csv");
    std::fs::write(&logged, csv).unwrap();
    let output = std::process::Command::new(crate::support::python())
        .arg(crate::support::repo().join("tests/python/obp_ope.py"))
        .arg(&logged)
        .arg("2")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "obp_ope.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let obp: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    for (arm, model) in ARMS[..2].iter().enumerate() {
        let last = rows
            .iter()
            .rev()
            .find(|r| r.variant == *model)
            .unwrap_or_else(|| panic!("no rows for {model}: {rows:?}"));
        let count = served.iter().filter(|s| s.1 == arm).count() as u64;
        assert_eq!(last.n, count, "{model}: every request's reward counted");
        let theirs = &obp[arm.to_string()];
        let ours = [
            ("ips", last.ips, last.ips_se),
            ("snips", last.snips, last.snips_se),
            ("dr", last.dr, last.dr_se),
        ];
        println!(
            "{model}: true value {:.4}, naive mean {:.4}; ips {:?} ± {:?}, snips {:?} ± {:?}, dr {:?} ± {:?}; obp {theirs}",
            truth[arm],
            last.mean,
            last.ips,
            last.ips_se,
            last.snips,
            last.snips_se,
            last.dr,
            last.dr_se
        );
        for (name, value, error) in ours {
            let value = value.unwrap_or_else(|| panic!("{model}: no {name}"));
            let error = error.unwrap_or_else(|| panic!("{model}: no {name} standard error"));
            let reference = theirs[name].as_f64().unwrap();
            assert!(
                (value - reference).abs() <= 1e-9 * reference.abs().max(1.0),
                "{model} {name}: Weir {value}, obp {reference}"
            );
            if name != "snips" {
                assert!(
                    (value - truth[arm]).abs() < 4.0 * error,
                    "{model} {name}: {value} ± {error} is far from the true {}",
                    truth[arm]
                );
            }
        }
    }
}
