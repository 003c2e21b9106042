//! Hot swap under load: while clients keep posting, a new version is
//! trained and the alias the deployment follows moves to it; the
//! deployment switches without a failed request. The versions it served
//! are recorded on `weir.meta` (lineage), and deleting the deployment
//! stops it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value as Json, json};

use crate::{Platform, generate, row, serve, spec};

#[tokio::test(flavor = "multi_thread")]
async fn moving_the_alias_swaps_the_model_without_failing_a_request() {
    let platform = Platform::start().await;
    let data = platform.dir.path().join("clicks.parquet");
    let columns = generate(&data, 1500, 4, "");
    let first = platform.train("clicks", &data, "LogisticRegression").await;
    platform
        .tracker
        .set_alias("clicks", "champion", first)
        .await
        .unwrap();
    // Applied on weir.meta, so what it serves is recorded for lineage.
    let text = "name: clicks\nmodel: clicks@champion\nhttp: {listen: 127.0.0.1:0}\nbatching: {max_wait_us: 200}\n";
    let (version, new) = platform
        .tracker
        .apply_deployment("clicks", text, vec!["clicks@champion".into()])
        .await
        .unwrap();
    assert_eq!((version, new), (1, true));
    let (address, _stop, task) = serve(
        &platform,
        spec(text),
        Default::default(),
        Some(platform.tracker.clone()),
    )
    .await;
    let address = address.unwrap();

    // Four clients post without pause until told to stop.
    let done = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let done = done.clone();
        let body = json!({"inputs": [{"name": "input", "shape": [1, crate::FEATURES], "datatype": "FP64", "data": row(&columns, c)}]})
            .to_string()
            .into_bytes();
        clients.push(tokio::spawn(async move {
            let mut connection =
                weir_serve::client::Connection::open(address, "/v2/models/clicks/infer")
                    .await
                    .unwrap();
            let (mut ok, mut failed, mut versions) = (0u64, 0u64, BTreeSet::new());
            while !done.load(Ordering::Relaxed) {
                let (status, body) = connection.post(&body).await.unwrap();
                if status == 200 {
                    ok += 1;
                    let answer: Json = serde_json::from_slice(&body).unwrap();
                    versions.insert(answer["model_version"].as_str().unwrap().to_string());
                } else {
                    failed += 1;
                }
            }
            (ok, failed, versions)
        }));
    }

    // Under that load: train another version and move the alias.
    let second = platform
        .train("clicks", &data, "HistGradientBoostingClassifier")
        .await;
    platform
        .tracker
        .set_alias("clicks", "champion", second)
        .await
        .unwrap();
    // Let the clients see the new version for a while.
    let mut served_second = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let metadata = get_json(address, "/v2/models/clicks").await;
        if metadata["versions"][0].as_str() == Some(second.to_string().as_str()) {
            served_second = true;
            break;
        }
    }
    assert!(served_second, "the deployment moved to version {second}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    done.store(true, Ordering::Relaxed);
    let (mut ok, mut failed, mut versions) = (0, 0, BTreeSet::new());
    for client in clients {
        let (o, f, v) = client.await.unwrap();
        ok += o;
        failed += f;
        versions.extend(v);
    }
    // Deleting the deployment stops its server.
    platform.tracker.delete_deployment("clicks").await.unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("a deleted deployment stops")
        .unwrap();
    assert_eq!(failed, 0, "no request failed during the swap");
    assert!(ok > 100, "the load ran ({ok} requests)");
    assert_eq!(
        versions,
        BTreeSet::from([first.to_string(), second.to_string()]),
        "answers came from both versions"
    );
    assert_eq!(summary.swaps, [format!("clicks@{second}")]);
    assert_eq!(summary.requests, (ok, 0));

    // Both versions served, recorded: lineage runs from the runs through
    // the model versions to the deployment.
    platform.tracker.read(|state| {
        let deployment = state.deployment("clicks").unwrap();
        assert!(deployment.deleted);
        let served: Vec<&String> = deployment.served.keys().collect();
        assert_eq!(
            served,
            [&format!("clicks@{first}"), &format!("clicks@{second}")]
        );
        let graph = weir_meta::lineage::Graph::of(state);
        let node = weir_meta::lineage::find(state, "deployment:clicks").unwrap();
        let (upstream, _) = graph.around(&node);
        assert!(
            upstream
                .iter()
                .any(|(from, _)| *from == weir_meta::lineage::Node::Model("clicks".into(), second)),
            "{upstream:?}"
        );
        assert!(
            upstream
                .iter()
                .any(|(from, _)| matches!(from, weir_meta::lineage::Node::Run(_)))
        );
    });
}

/// A GET over a fresh connection; the JSON body.
async fn get_json(address: std::net::SocketAddr, path: &str) -> Json {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8(response).unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap()
}
