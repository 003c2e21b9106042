//! What serving says about itself, checked against what was done to it:
//! concurrent single-row requests are answered from batches larger than
//! one (the dynamic batcher, observed in `/metrics`); `/metrics` counts
//! each request by protocol and outcome; and slow answers alone (no lag)
//! scale the stream workers up, and quick ones back down.

use std::time::Duration;

use serde_json::json;
use weir_bus::OutRecord;

use crate::{Platform, generate, row, serve, spec};

/// The value of the sample `name{labels}` in Prometheus text.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{name_and_labels}` in\n{text}"))
}

async fn metrics(address: std::net::SocketAddr) -> String {
    let mut connection = weir_serve::client::Connection::open(address, "/metrics")
        .await
        .unwrap();
    let (status, body) = connection.get().await.unwrap();
    assert_eq!(status, 200);
    String::from_utf8(body).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_are_batched_and_counted_by_protocol_and_outcome() {
    let platform = Platform::start().await;
    let data = platform.dir.path().join("clicks.parquet");
    let columns = generate(&data, 1000, 5, "");
    platform.train("clicks", &data, "LogisticRegression").await;
    // One runner that waits up to 20 ms for more requests: concurrent
    // clients' requests meet in its batches.
    let text = "name: batched\nmodel: clicks\nhttp: {listen: 127.0.0.1:0}\n\
                batching: {max_wait_us: 20000, runners: 1, max_batch: 64}\n";
    let (address, stop, task) = serve(&platform, spec(text), Default::default(), None).await;
    let address = address.unwrap();

    let clients: Vec<_> = (0..8)
        .map(|c| {
            let good = json!({"inputs": [{"name": "input", "shape": [1, crate::FEATURES], "datatype": "FP64", "data": row(&columns, c)}]})
                .to_string();
            tokio::spawn(async move {
                let mut connection =
                    weir_serve::client::Connection::open(address, "/v2/models/batched/infer")
                        .await
                        .unwrap();
                for _ in 0..25 {
                    let (status, _) = connection.post(good.as_bytes()).await.unwrap();
                    assert_eq!(status, 200);
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    // Three requests that cannot be answered.
    let mut connection = weir_serve::client::Connection::open(address, "/v2/models/batched/infer")
        .await
        .unwrap();
    for _ in 0..3 {
        let (status, _) = connection.post(b"{\"inputs\": []}").await.unwrap();
        assert_eq!(status, 400);
    }

    let text = metrics(address).await;
    let http = "deployment=\"batched\",protocol=\"http\"";
    assert_eq!(
        sample(
            &text,
            &format!("weir_requests_total{{{http},outcome=\"ok\"}}")
        ),
        200.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("weir_requests_total{{{http},outcome=\"error\"}}")
        ),
        3.0
    );
    let stream = "deployment=\"batched\",protocol=\"stream\"";
    assert_eq!(
        sample(
            &text,
            &format!("weir_requests_total{{{stream},outcome=\"ok\"}}")
        ),
        0.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("weir_request_latency_seconds_count{{{http}}}")
        ),
        203.0
    );
    assert_eq!(
        sample(&text, "weir_rows_total{deployment=\"batched\"}"),
        200.0
    );
    // 200 single-row requests from 8 clients at once: fewer runs than
    // requests, and some run answered several.
    let runs = sample(&text, "weir_batches_total{deployment=\"batched\"}");
    let batched = sample(&text, "weir_batched_requests_total{deployment=\"batched\"}");
    let most = sample(&text, "weir_batch_requests_max{deployment=\"batched\"}");
    assert_eq!(batched, 200.0, "{text}");
    assert!(runs < 200.0, "{runs} runs for 200 requests");
    assert!(most > 1.0, "the largest batch held {most} request(s)");

    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_answers_scale_the_stream_workers_up_and_quick_ones_down() {
    let platform = Platform::start().await;
    let data = platform.dir.path().join("clicks.parquet");
    let columns = generate(&data, 500, 7, "");
    platform.train("clicks", &data, "LogisticRegression").await;
    let name = "slow";
    weir_serve::stream::ensure_topics(&platform.bus, name)
        .await
        .unwrap();
    // Any answer is slower than 1 µs, and no lag is ever near a million:
    // only latency can scale.
    let text = format!(
        "name: {name}\nmodel: clicks\nprotocols: [stream]\n\
         scaling: {{min: 1, max: 3, target_lag: 1000000, target_p99_ms: 0.001, interval_ms: 200, cooldown_s: 1}}\n"
    );
    let (_, stop, task) = serve(&platform, spec(&text), Default::default(), None).await;
    let producer = platform.bus.producer().unwrap();
    let requests = weir_core::topics::requests(name);
    // A trickle for two seconds.
    for i in 0..40usize {
        let body = json!({"inputs": [{"name": "input", "shape": [1, crate::FEATURES], "datatype": "FP64", "data": row(&columns, i)}]});
        producer
            .send(
                OutRecord::new(&requests, body.to_string().as_bytes())
                    .key(format!("r{i}").as_bytes()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then quiet: no answers, no latency, one cooldown after another.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.send(()).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        summary.scaling.iter().max(),
        Some(&3),
        "latency scaled the workers up to the bound: {:?}",
        summary.scaling
    );
    assert_eq!(summary.scaling.first(), Some(&1));
    assert_eq!(
        summary.scaling.last(),
        Some(&1),
        "and quiet scaled them down: {:?}",
        summary.scaling
    );
}
