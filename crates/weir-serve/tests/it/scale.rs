//! Autoscaling: a burst of stream requests scales the workers up, within
//! the spec's bounds, and the quiet after it scales them back down.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use weir_bus::OutRecord;

use crate::{Platform, generate, row, serve, spec};

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_scales_the_stream_workers_up_then_down() {
    let platform = Platform::start().await;
    let data = platform.dir.path().join("clicks.parquet");
    let columns = generate(&data, 1000, 6, "");
    platform.train("clicks", &data, "LogisticRegression").await;
    let name = "burst";
    weir_serve::stream::ensure_topics(&platform.bus, name)
        .await
        .unwrap();

    // The burst waits in the topic before the deployment starts.
    let producer = platform.bus.producer().unwrap();
    let requests = weir_core::topics::requests(name);
    let mut pending = Vec::new();
    for i in 0..3000usize {
        let body = json!({"inputs": [{"name": "input", "shape": [1, crate::FEATURES], "datatype": "FP64", "data": row(&columns, i % 1000)}]});
        pending.push(
            producer
                .send(
                    OutRecord::new(&requests, body.to_string().as_bytes())
                        .key(format!("r{i}").as_bytes()),
                )
                .await
                .unwrap(),
        );
    }
    for delivery in pending {
        delivery.await.unwrap();
    }

    let spec = spec(&format!(
        "name: {name}\nmodel: clicks\nprotocols: [stream]\n\
         scaling: {{min: 1, max: 3, target_lag: 200, interval_ms: 200, cooldown_s: 1}}\n"
    ));
    let (_, stop, task) = serve(&platform, spec, Default::default(), None).await;
    let predictions = weir_core::topics::predictions(name);
    let mut answered = HashSet::new();
    for _ in 0..240 {
        answered = platform
            .read_all(&predictions)
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        if answered.len() >= 3000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(answered.len(), 3000, "every request answered");
    // Quiet: the workers go back down one cooldown at a time.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let lag = platform
        .bus
        .lag(&weir_serve::stream::group(name), &requests)
        .await
        .unwrap();
    stop.send(()).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .unwrap()
        .unwrap();
    let most = *summary.scaling.iter().max().unwrap();
    assert!(
        most > 1,
        "the burst scaled the workers up: {:?}",
        summary.scaling
    );
    assert!(most <= 3, "within the bounds: {:?}", summary.scaling);
    assert_eq!(summary.scaling.first(), Some(&1));
    assert_eq!(
        summary.scaling.last(),
        Some(&1),
        "and back down: {:?}",
        summary.scaling
    );
    assert_eq!(lag, 0, "everything answered was committed");
}
