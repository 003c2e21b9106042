//! Stream serving over a real broker: every request in gets one
//! prediction out and one log record, matched by request id; bad requests
//! get an error record and go to the dead-letter topic, and the stream
//! goes on. A feature look-up graph logs the online store's values.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value as Json, json};
use weir_bus::OutRecord;
use weir_features::online::{OnlineStore, OnlineView};
use weir_onnx::{Model, SessionOptions};
use weir_serve::deployment::{Data, Input, Request};
use weir_serve::log::Channel;

use crate::{Platform, generate, row, serve, spec};

#[tokio::test(flavor = "multi_thread")]
async fn every_request_gets_one_prediction_and_one_log_record() {
    let platform = Platform::start().await;
    let data = platform.dir.path().join("clicks.parquet");
    let columns = generate(&data, 1500, 2, "");
    platform.train("clicks", &data, "LogisticRegression").await;
    let name = "clicks-stream";
    let spec = spec(&format!(
        "name: {name}\nmodel: clicks\nprotocols: [stream]\npostprocess: {{threshold: 0.5, labels: [no, yes]}}\n"
    ));
    let (_, stop, task) = serve(&platform, spec, Default::default(), None).await;

    // 300 requests of 1 to 3 rows, and three bad ones among them.
    let producer = platform.bus.producer().unwrap();
    let requests = weir_core::topics::requests(name);
    let mut expected = HashMap::new();
    for i in 0..300usize {
        let rows = 1 + i % 3;
        let data: Vec<f64> = (0..rows).flat_map(|r| row(&columns, i + r)).collect();
        let body = json!({"inputs": [{"name": "input", "shape": [rows, crate::FEATURES], "datatype": "FP64", "data": data}]});
        let id = format!("req-{i}");
        producer
            .send_and_wait(
                OutRecord::new(&requests, body.to_string().as_bytes()).key(id.as_bytes()),
            )
            .await
            .unwrap();
        expected.insert(id, rows);
        if i % 100 == 50 {
            let bad: [&[u8]; 3] = [
                b"{not json",
                br#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#,
                br#"{"inputs":[]}"#,
            ];
            let bad = bad[i / 100];
            producer
                .send_and_wait(OutRecord::new(&requests, bad).key(format!("bad-{i}").as_bytes()))
                .await
                .unwrap();
        }
    }

    // Wait for all 303 answers.
    let predictions = weir_core::topics::predictions(name);
    let mut answers = Vec::new();
    for _ in 0..120 {
        answers = platform.read_all(&predictions).await;
        if answers.len() >= 303 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.send(()).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answers.len(), 303, "one answer per request");
    let mut errors = 0;
    for (id, answer) in &answers {
        if id.starts_with("bad-") {
            assert!(answer["error"].is_string(), "{answer}");
            errors += 1;
            continue;
        }
        let rows = expected
            .remove(id)
            .unwrap_or_else(|| panic!("an unexpected or repeated answer to {id}"));
        assert_eq!(answer["id"], id.as_str());
        assert_eq!(answer["model_name"], name, "{answer}");
        let prediction = answer["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "prediction")
            .unwrap();
        assert_eq!(prediction["shape"], json!([rows]));
        assert!(
            prediction["data"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l == "yes" || l == "no")
        );
    }
    assert!(expected.is_empty());
    assert_eq!(
        errors,
        3,
        "{:?}",
        answers
            .iter()
            .filter(|(_, a)| a["error"].is_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(summary.stream, (300, 3));

    // The bad ones are in the dead-letter topic, unchanged, with the reason.
    let dead = platform.read_raw(&weir_core::topics::dlq(&requests)).await;
    assert_eq!(dead.len(), 3);
    for record in &dead {
        assert!(record.key.as_deref().unwrap().starts_with(b"bad-"));
        let header = |name: &str| {
            record
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| String::from_utf8_lossy(v).to_string())
                .unwrap()
        };
        assert_eq!(header(weir_bus::dead_letter::REASON), "rejected");
        assert!(!header(weir_bus::dead_letter::ERROR).is_empty());
    }
    assert_eq!(dead[0].payload.as_deref(), Some(&b"{not json"[..]));

    // One log record per request that decoded (the one that is not JSON
    // never reached the model), keyed by request id.
    let log = platform.read_all(&weir_core::topics::log(name)).await;
    assert_eq!(log.len(), 302);
    assert_eq!(summary.logged, 302);
    let mut ids: Vec<&str> = log.iter().map(|(k, _)| k.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 302, "no request logged twice");
    let (_, first) = log.iter().find(|(k, _)| k == "req-0").unwrap();
    assert_eq!(first["protocol"], "STREAM");
    assert_eq!(first["models"], "clicks@1");
    assert_eq!(first["rows"], 1);
    assert!(first["latency_us"].as_i64().unwrap() > 0);
    assert_eq!(
        first["inputs"]["input"]["shape"],
        json!([1, crate::FEATURES])
    );
    assert_eq!(
        first["outputs"]["prediction"]["strings"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(first["error"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_feature_look_up_graph_serves_and_logs_the_online_stores_values() {
    let platform = Platform::start().await;
    let data = platform.dir.path().join("stats.parquet");
    // The model takes `stats__x0`, `stats__x1` (a view's features, as a
    // snapshot names them) and `x2..x5` from the request.
    let columns = generate(&data, 1500, 3, "stats__");
    platform
        .train("clicks", &data, "HistGradientBoostingClassifier")
        .await;

    // The online store holds the view's latest window per user.
    let view = OnlineView {
        name: "stats".into(),
        topic: "weir.features.stats.v1".into(),
        entity: vec!["user_id".into()],
        features: vec!["x0".into(), "x1".into(), "n".into()],
        ttl: None,
        time: "window_end".into(),
        created: None,
    };
    let store = Arc::new(OnlineStore::open(&platform.dir.path().join("online")).unwrap());
    let records: Vec<(i32, i64, Json)> = (0..10)
        .map(|i| {
            (
                0,
                i as i64,
                json!({"user_id": format!("u{i}"), "window_end": 1_000 + i, "x0": columns[0][i], "x1": columns[1][i], "n": 3}),
            )
        })
        .collect();
    store.ingest(&view, &records).unwrap();

    let spec = spec(
        "name: stats\nmodel: clicks\nfeatures:\n  - view: stats\n    entity: [user_id]\npreprocess:\n  fill: {x5: 0.25}\n",
    );
    let registry = platform.registry().await;
    let deployment =
        weir_serve::Deployment::start(spec, &registry, &[view], Some(store), Some(&platform.bus))
            .await
            .unwrap();
    let plan = deployment.plan();
    assert!(plan["stats__x0"].contains("view `stats`"), "{plan:?}");
    assert!(plan["x2"].contains("request"), "{plan:?}");

    // Three known users and one the store has never seen; x5 left out
    // (filled).
    let users = ["u1", "u4", "u7", "nobody"];
    let mut inputs = vec![Input {
        name: "user_id".into(),
        shape: vec![4],
        data: Data::Text(users.iter().map(|u| u.to_string()).collect()),
    }];
    for (j, column) in columns.iter().enumerate().take(5).skip(2) {
        inputs.push(Input {
            name: format!("x{j}"),
            shape: vec![4],
            data: Data::Num(vec![column[1], column[4], column[7], 0.5]),
        });
    }
    let response = deployment
        .infer(
            Request {
                id: Some("lookup-1".into()),
                inputs,
                outputs: vec!["probabilities".into()],
                route_key: None,
            },
            Channel::Http,
        )
        .await
        .unwrap();
    assert_eq!(response.outputs.len(), 1);

    // The same rows, built by hand, through ONNX Runtime directly.
    let model = Model::load(
        &platform.model_bytes("clicks", 1).await,
        &SessionOptions::default(),
    )
    .unwrap();
    let mut matrix = Vec::new();
    for i in [1usize, 4, 7] {
        let mut values = row(&columns, i);
        values[5] = 0.25;
        matrix.extend(values.iter().map(|&x| x as f32));
    }
    matrix.extend([f32::NAN, f32::NAN, 0.5, 0.5, 0.5, 0.25]);
    let direct = model.predict(&matrix, 4).unwrap();
    let (expected, _) = direct.scores().unwrap();
    let served = response.outputs[0].as_f64().unwrap();
    for (a, b) in served.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-7, "{a} vs {b}");
    }
    assert_eq!(deployment.close().await.unwrap(), 1);

    // The log record holds what the store gave, NaN for the unknown user.
    let log = platform.read_all(&weir_core::topics::log("stats")).await;
    assert_eq!(log.len(), 1);
    let features = &log[0].1["features"];
    let x0: Vec<Json> = features["stats__x0"]["numbers"].as_array().unwrap().clone();
    assert_eq!(x0[0].as_f64().unwrap(), columns[0][1]);
    assert_eq!(x0[2].as_f64().unwrap(), columns[0][7]);
    assert!(
        x0[3].is_null() || x0[3].as_f64().is_none_or(f64::is_nan),
        "{x0:?}"
    );
    assert_eq!(log[0].1["inputs"]["user_id"]["strings"], json!(users));
}
