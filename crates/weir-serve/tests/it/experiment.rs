//! Experiments on a deployment's traffic, as serving follows them on
//! `weir.control.<d>`: a sticky A/B split keeps each user on one model
//! across two serving replicas, splits users by the weights and logs each
//! request's variant and propensity; stopping it gives the traffic back to
//! the deployment's own model without a restart; a mirror answers a copy
//! of each request into the log only; feedback posted to a deployment
//! lands on `weir.feedback.<d>`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use weir_serve::routing::{Candidate, Kind, Mirror, Routing, Sticky};

use crate::{FEATURES, Platform, generate, row, serve, spec};

const DEPLOYMENT: &str = "name: clicks\nmodel: clicks@champion\nhttp: {listen: 127.0.0.1:0}\nbatching: {max_wait_us: 200}\n";

/// Two versions of `clicks` (the champion is the first) and the
/// deployment applied; returns the versions and the data's columns.
async fn two_versions(platform: &Platform) -> (u64, u64, Vec<Vec<f64>>) {
    let data = platform.dir.path().join("clicks.parquet");
    let columns = generate(&data, 1500, 4, "");
    let first = platform.train("clicks", &data, "LogisticRegression").await;
    let second = platform
        .train("clicks", &data, "HistGradientBoostingClassifier")
        .await;
    platform
        .tracker
        .set_alias("clicks", "champion", first)
        .await
        .unwrap();
    platform
        .tracker
        .apply_deployment("clicks", DEPLOYMENT, vec!["clicks@champion".into()])
        .await
        .unwrap();
    (first, second, columns)
}

fn body(id: &str, columns: &[Vec<f64>], i: usize) -> Vec<u8> {
    json!({"id": id, "inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP64", "data": row(columns, i)}]})
        .to_string()
        .into_bytes()
}

/// Posts `body` with `headers`; the answering version.
async fn post(address: SocketAddr, body: &[u8], headers: &[(&str, &str)]) -> String {
    let mut connection = weir_serve::client::Connection::open(address, "/v2/models/clicks/infer")
        .await
        .unwrap();
    let (status, answer) = connection.post_with(body, headers).await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let answer: Json = serde_json::from_slice(&answer).unwrap();
    answer["model_version"].as_str().unwrap().to_string()
}

/// Log records by request id, once `count` are there.
async fn logged(platform: &Platform, count: usize) -> BTreeMap<String, Json> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let records: BTreeMap<String, Json> = platform
            .read_all("weir.log.clicks")
            .await
            .into_iter()
            .collect();
        if records.len() >= count || Instant::now() > deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sticky_ab_test_keeps_each_user_on_one_model_across_replicas_and_splits_by_weight() {
    let platform = Platform::start().await;
    let (first, second, columns) = two_versions(&platform).await;
    // Published before the replicas start: each applies it as it starts.
    let ab = Routing {
        experiment: "clicks-ab".into(),
        version: 1,
        kind: Kind::Ab,
        candidates: vec![
            Candidate {
                model: format!("clicks@{first}"),
                weight: 3.0,
            },
            Candidate {
                model: format!("clicks@{second}"),
                weight: 1.0,
            },
        ],
        default: format!("clicks@{first}"),
        mirror: None,
        sticky: Some(Sticky::Header("X-User".into())),
        stopped: false,
        allocated: false,
        at: 0,
    };
    weir_serve::control::publish(&platform.bus, "clicks", &ab)
        .await
        .unwrap();
    let (a, stop_a, task_a) = serve(&platform, spec(DEPLOYMENT), Default::default(), None).await;
    let (b, stop_b, task_b) = serve(&platform, spec(DEPLOYMENT), Default::default(), None).await;
    let replicas = [a.unwrap(), b.unwrap()];

    // 400 users, three requests each, to the replicas in turn.
    let users = 400;
    let mut answered: BTreeMap<String, String> = BTreeMap::new();
    for user in 0..users {
        for n in 0..3 {
            let id = format!("u{user}-{n}");
            let version = post(
                replicas[(user + n) % 2],
                &body(&id, &columns, user),
                &[("X-User", &format!("u{user}"))],
            )
            .await;
            answered.insert(id, version);
        }
    }
    let log = logged(&platform, users * 3).await;
    assert_eq!(log.len(), users * 3, "one log record per request");
    let mut on_second = 0;
    for user in 0..users {
        let records: Vec<&Json> = (0..3).map(|n| &log[&format!("u{user}-{n}")]).collect();
        let variant = records[0]["variant"].as_str().unwrap();
        for (n, record) in records.iter().enumerate() {
            assert_eq!(
                record["variant"], records[0]["variant"],
                "user u{user} moved between models"
            );
            // The caller got the answer of the model its variant names.
            assert_eq!(
                format!("clicks@{}", answered[&format!("u{user}-{n}")]),
                variant
            );
            assert_eq!(record["models"].as_str(), Some(variant));
        }
        let propensity = records[0]["propensity"].as_f64().unwrap();
        if variant == format!("clicks@{second}") {
            on_second += 1;
            assert_eq!(propensity, 0.25);
        } else {
            assert_eq!(variant, format!("clicks@{first}"));
            assert_eq!(propensity, 0.75);
        }
    }
    // A quarter of the users, within five standard deviations (±43 of 400).
    let expected = users as f64 * 0.25;
    let sigma = (users as f64 * 0.25 * 0.75).sqrt();
    println!("{on_second} of {users} users on the challenger (expected {expected})");
    assert!(
        (on_second as f64 - expected).abs() <= 5.0 * sigma,
        "{on_second} of {users} users on the challenger, expected {expected} ± {:.0}",
        5.0 * sigma
    );

    // Stopped: the deployment's own model answers again, without a restart.
    let stopped = Routing {
        version: 2,
        stopped: true,
        allocated: false,
        ..ab
    };
    weir_serve::control::publish(&platform.bus, "clicks", &stopped)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    for replica in replicas {
        // A user on the challenger comes back to the champion.
        let user = (0..users)
            .find(|u| log[&format!("u{u}-0")]["variant"] == json!(format!("clicks@{second}")))
            .unwrap();
        loop {
            let version = post(
                replica,
                &body("after", &columns, user),
                &[("X-User", &format!("u{user}"))],
            )
            .await;
            if version == first.to_string() {
                break;
            }
            assert!(Instant::now() < deadline, "the stop did not apply in 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for stop in [stop_a, stop_b] {
        stop.send(()).unwrap();
    }
    for task in [task_a, task_b] {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mirror_answers_a_copy_of_each_request_into_the_log_only() {
    let platform = Platform::start().await;
    let (first, second, columns) = two_versions(&platform).await;
    let (address, stop, task) = serve(&platform, spec(DEPLOYMENT), Default::default(), None).await;
    let address = address.unwrap();
    // Applied while serving.
    let canary = Routing {
        experiment: "clicks-shadow".into(),
        version: 1,
        kind: Kind::Canary,
        candidates: vec![Candidate {
            model: format!("clicks@{first}"),
            weight: 1.0,
        }],
        default: format!("clicks@{first}"),
        mirror: Some(Mirror {
            model: format!("clicks@{second}"),
            percent: 100.0,
        }),
        sticky: None,
        stopped: false,
        allocated: false,
        at: 0,
    };
    weir_serve::control::publish(&platform.bus, "clicks", &canary)
        .await
        .unwrap();
    // Once routed by the experiment, requests are logged with its variant.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        post(address, &body("probe", &columns, 0), &[]).await;
        let log = logged(&platform, 0).await;
        if log
            .values()
            .any(|r| r["variant"] == json!(format!("clicks@{first}")))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the routing did not apply in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = 50;
    for i in 0..requests {
        let version = post(address, &body(&format!("r{i}"), &columns, i), &[]).await;
        assert_eq!(
            version,
            first.to_string(),
            "the caller gets the default's answer"
        );
    }
    stop.send(()).unwrap();
    let summary = task.await.unwrap();
    let log = logged(&platform, 0).await;
    for i in 0..requests {
        let answered = &log[&format!("r{i}")];
        assert_eq!(answered["variant"], json!(format!("clicks@{first}")));
        assert_eq!(answered["propensity"].as_f64(), Some(1.0));
        let shadow = log
            .get(&format!("r{i}:shadow"))
            .unwrap_or_else(|| panic!("no mirror record for r{i}"));
        assert_eq!(shadow["variant"], json!(format!("shadow:clicks@{second}")));
        assert_eq!(shadow["models"], json!(format!("clicks@{second}")));
        assert!(shadow["error"].is_null(), "{shadow}");
        assert!(!shadow["outputs"].as_object().unwrap().is_empty());
    }
    println!("{} log records written", summary.logged);
}

/// Posts `body` to `path`; the status and the answer.
async fn post_to(address: SocketAddr, path: &str, body: &[u8]) -> (u16, Json) {
    let mut connection = weir_serve::client::Connection::open(address, path)
        .await
        .unwrap();
    let (status, answer) = connection.post_with(body, &[]).await.unwrap();
    (status, serde_json::from_slice(&answer).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn feedback_posted_to_a_deployment_lands_on_its_topic_in_its_registered_schema() {
    let platform = Platform::start().await;
    let (_, _, columns) = two_versions(&platform).await;
    let (address, stop, task) = serve(&platform, spec(DEPLOYMENT), Default::default(), None).await;
    let address = address.unwrap();
    post(address, &body("r1", &columns, 0), &[]).await;
    let route = "/v2/models/clicks/feedback";

    let (status, answer) = post_to(
        address,
        route,
        br#"[{"request_id": "r1", "reward": 1}, {"request_id": "r2", "label": "1", "timestamp": 1700000000000}]"#,
    )
    .await;
    assert_eq!((status, answer), (200, json!({"accepted": 2})));
    let (status, answer) = post_to(address, route, br#"{"request_id": "r3", "reward": 0.5}"#).await;
    assert_eq!((status, answer), (200, json!({"accepted": 1})));

    // Bad feedback is refused whole, naming the record and the field.
    for (bad, expected) in [
        (
            &br#"[{"request_id": "r4", "reward": 1}, {"request_id": "r5"}]"#[..],
            "feedback: [1]: give a `reward`, a `label` or both",
        ),
        (
            br#"{"request_id": "r4", "reward": "yes"}"#,
            "feedback: invalid type: string \"yes\", expected f64",
        ),
        (
            br#"{"request_id": "r4", "rewrad": 1}"#,
            "feedback: unknown field `rewrad`",
        ),
        (b"reward=1", "feedback: expected value at line 1 column 1"),
    ] {
        let (status, answer) = post_to(address, route, bad).await;
        assert_eq!(status, 400, "{answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.starts_with(expected), "{error}");
    }
    let (status, answer) = post_to(address, "/v2/models/other/feedback", b"{}").await;
    assert_eq!(status, 404, "{answer}");

    stop.send(()).unwrap();
    task.await.unwrap();
    // Read back with the schema registered for the topic.
    let records: BTreeMap<String, Json> = platform
        .read_all("weir.feedback.clicks")
        .await
        .into_iter()
        .collect();
    assert_eq!(records.len(), 3, "{records:?}");
    assert_eq!(records["r1"]["reward"], json!(1.0));
    assert!(records["r1"]["label"].is_null());
    assert!(records["r1"]["timestamp"].as_i64().unwrap() > 1_700_000_000_000);
    assert_eq!(records["r2"]["label"], json!("1"));
    assert!(records["r2"]["reward"].is_null());
    assert_eq!(records["r2"]["timestamp"], json!(1_700_000_000_000_i64));
    assert_eq!(records["r3"]["reward"], json!(0.5));
    let subject = platform
        .bus
        .registry()
        .latest("weir.feedback.clicks-value")
        .unwrap();
    assert!(subject.schema.text.contains("\"Feedback\""));
}
