//! The online store: the latest window per entity from a real topic, the
//! same store after a replay, TTL, and both HTTP routes over real TCP.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use weir_bus::{Bus, OutRecord, TopicSpec};
use weir_features::http::{Served, router};
use weir_features::materialize::Materializer;
use weir_features::online::{OnlineStore, OnlineView, Status};

fn view(ttl: Option<Duration>) -> OnlineView {
    OnlineView {
        name: "driver_stats".into(),
        topic: "weir.features.driver_stats.v1".into(),
        entity: vec!["driver_id".into()],
        features: vec!["conv_rate".into(), "avg_daily_trips".into()],
        ttl,
        time: "window_end".into(),
        created: None,
    }
}

/// A window's result, as a view writes it.
fn row(driver: i64, end: &str, conv: f64, trips: i64) -> Value {
    json!({"driver_id": driver, "window_start": "2024-01-02T00:00:00", "window_end": end,
           "conv_rate": conv, "avg_daily_trips": trips})
}

/// Publishes `rows`; returns them as read back: (partition, offset, row).
async fn publish(bus: &Bus, topic: &str, rows: &[Value]) -> Vec<(i32, i64, Value)> {
    bus.admin()
        .ensure_topic(&TopicSpec::new(topic, 2))
        .await
        .unwrap();
    let producer = bus.producer().unwrap();
    let mut records = Vec::new();
    for row in rows {
        let bytes = serde_json::to_vec(row).unwrap();
        // Keyed as a view keys its rows: entity and window.
        let key = format!("{}|{}", row["driver_id"], row["window_end"]);
        let delivery = producer
            .send_and_wait(OutRecord::new(topic, &bytes).key(key.as_bytes()))
            .await
            .unwrap();
        records.push((delivery.partition, delivery.offset, row.clone()));
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_keeps_the_latest_window_and_a_replay_changes_nothing() {
    let weir_test_support::Harness { bus, broker, dir } = weir_test_support::Harness::start().await;
    let v = view(None);
    // Windows out of order, and a repeated window (the later write wins).
    let rows = vec![
        row(1001, "2024-01-02T10:00:00", 0.5, 10),
        row(1002, "2024-01-02T11:30:00", 0.1, 30),
        row(1001, "2024-01-02T09:00:00", 0.25, 5),
        row(1002, "2024-01-02T11:30:00", 0.2, 31),
        Value::String("not a row".into()),
    ];
    let records = publish(&bus, &v.topic, &rows).await;
    let entities = vec![
        vec!["1001".to_string()],
        vec!["9999".to_string()],
        vec!["1002".to_string()],
    ];
    let features = vec!["conv_rate".to_string(), "avg_daily_trips".to_string()];
    let mut seen = Vec::new();
    for store_dir in ["a", "b"] {
        let store = Arc::new(OnlineStore::open(&dir.path().join(store_dir)).unwrap());
        let mut materializer =
            Materializer::new(bus.config(), store.clone(), vec![(v.clone(), 2)]).unwrap();
        assert_eq!(materializer.catch_up().unwrap(), rows.len());
        // Read again from the stored offsets: nothing new.
        assert_eq!(materializer.catch_up().unwrap(), 0);
        let found = store.get(&v, &entities, &features, AFTER).unwrap();
        assert_eq!(found[0].values, vec![json!(0.5), json!(10)]);
        assert_eq!(found[0].status, Status::Present);
        assert_eq!(found[0].event_time, Some(1_704_189_600_000));
        assert_eq!(found[1].status, Status::NotFound);
        assert_eq!(found[1].values, vec![Value::Null, Value::Null]);
        assert_eq!(found[2].status, Status::Present);
        seen.push(found);
        // Reading any of the topic again changes nothing: the old value of
        // 1002's window stays behind the newer one.
        for part in [&records[..], &records[..2], &records[3..4]] {
            store.ingest(&v, part).unwrap();
            assert_eq!(
                store.get(&v, &entities, &features, AFTER).unwrap(),
                seen[seen.len() - 1]
            );
        }
        assert_eq!(seen[seen.len() - 1][2].values, vec![json!(0.2), json!(31)]);
    }
    // Two stores fed from the topic agree (the partitions' order may differ,
    // the result may not).
    assert_eq!(seen[0], seen[1]);
    broker.stop().await;
}

/// 2024-01-03T00:00:00Z: after every window of these tests has ended.
const AFTER: i64 = 1_704_240_000_000;

/// A view that emits updates writes windows that end later than now (a
/// 1 h window every 5 min: twelve open at once). A look-up as of a time
/// answers with the latest window ended by then — what a training snapshot
/// takes for that time — never one still open.
#[test]
fn windows_that_have_not_ended_wait_until_they_end() {
    let dir = tempfile::tempdir().unwrap();
    let store = OnlineStore::open(dir.path()).unwrap();
    let v = view(None);
    let at = |text: &str| weir_features::online::event_millis(&json!(text)).unwrap();
    // Windows ending 10:00, 10:05 (updated later at a higher offset), 10:10.
    store
        .ingest(
            &v,
            &[
                (0, 0, row(1001, "2024-01-02T10:00:00", 0.1, 10)),
                (0, 1, row(1001, "2024-01-02T10:05:00", 0.2, 20)),
                (0, 2, row(1001, "2024-01-02T10:10:00", 0.3, 30)),
                (0, 3, row(1001, "2024-01-02T10:05:00", 0.25, 25)),
            ],
        )
        .unwrap();
    let features = vec!["avg_daily_trips".to_string()];
    let entity = vec![vec!["1001".to_string()]];
    let look = |now: &str| {
        let found = store
            .get(&v, &entity, &features, at(now))
            .unwrap()
            .remove(0);
        (found.status, found.values[0].clone(), found.event_time)
    };
    assert_eq!(
        look("2024-01-02T09:59:59").0,
        Status::NotFound,
        "nothing has ended yet"
    );
    assert_eq!(
        look("2024-01-02T10:00:00"),
        (Status::Present, json!(10), Some(at("2024-01-02T10:00:00")))
    );
    assert_eq!(
        look("2024-01-02T10:07:00").1,
        json!(25),
        "the ended 10:05 window, its latest update"
    );
    assert_eq!(look("2024-01-02T11:00:00").1, json!(30));
    // A replay of old records changes nothing; windows a day behind the
    // newest are dropped.
    store
        .ingest(&v, &[(0, 1, row(1001, "2024-01-02T10:05:00", 0.2, 20))])
        .unwrap();
    assert_eq!(look("2024-01-02T10:07:00").1, json!(25));
    store
        .ingest(&v, &[(0, 4, row(1001, "2024-01-03T12:00:00", 0.9, 90))])
        .unwrap();
    assert_eq!(
        look("2024-01-02T10:07:00").0,
        Status::NotFound,
        "dropped: a day behind"
    );
    assert_eq!(look("2024-01-03T12:00:00").1, json!(90));
}

#[test]
fn values_older_than_the_ttl_are_null_with_a_status() {
    let dir = tempfile::tempdir().unwrap();
    let store = OnlineStore::open(dir.path()).unwrap();
    let v = view(Some(Duration::from_secs(3_600)));
    store
        .ingest(&v, &[(0, 0, row(1001, "2024-01-02T10:00:00", 0.5, 10))])
        .unwrap();
    let at = |now: i64| {
        store
            .get(&v, &[vec!["1001".into()]], &["conv_rate".into()], now)
            .unwrap()[0]
            .clone()
    };
    let end = 1_704_189_600_000;
    assert_eq!(
        at(end + 3_600_000).status,
        Status::Present,
        "exactly the TTL old"
    );
    let old = at(end + 3_600_001);
    assert_eq!(
        (old.status, old.values[0].clone()),
        (Status::OutsideMaxAge, Value::Null)
    );
    let error = store
        .get(&v, &[vec!["1001".into()]], &["conv".into()], end)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("`conv`") && error.contains("conv_rate"),
        "{error}"
    );
}

/// One HTTP/1.1 request over TCP; returns the status and the JSON body.
async fn post(address: std::net::SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let body = serde_json::to_vec(body).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8(response).unwrap();
    let status: u16 = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_and_feast_routes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(OnlineStore::open(dir.path()).unwrap());
    let v = view(None);
    store
        .ingest(
            &v,
            &[
                (0, 0, row(1001, "2024-01-02T10:00:00", 0.75, 20)),
                (0, 1, row(1002, "2024-01-02T11:30:00.250", 0.1, 30)),
            ],
        )
        .unwrap();
    let served = Served {
        store,
        views: Arc::new(HashMap::from([(v.name.clone(), v.clone())])),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(served)).await });

    // Feast's literal example (its feature server, captured): column-major,
    // the key column first.
    let request = json!({"features": ["driver_stats:conv_rate", "driver_stats:avg_daily_trips"],
                         "entities": {"driver_id": [1001, 9999, 1002]}});
    let (status, body) = post(address, "/get-online-features", &request).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"results": [
            {"values": [1001, 9999, 1002], "statuses": ["PRESENT", "PRESENT", "PRESENT"],
             "event_timestamps": ["1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z"]},
            {"values": [0.75, null, 0.1], "statuses": ["PRESENT", "NOT_FOUND", "PRESENT"],
             "event_timestamps": ["2024-01-02T10:00:00Z", "1970-01-01T00:00:00Z", "2024-01-02T11:30:00.250Z"]},
            {"values": [20, null, 30], "statuses": ["PRESENT", "NOT_FOUND", "PRESENT"],
             "event_timestamps": ["2024-01-02T10:00:00Z", "1970-01-01T00:00:00Z", "2024-01-02T11:30:00.250Z"]}],
         "metadata": {"feature_names": ["driver_id", "conv_rate", "avg_daily_trips"]}})
    );
    let full = json!({"features": ["driver_stats:conv_rate"], "entities": {"driver_id": [1001]}, "full_feature_names": true});
    let (_, body) = post(address, "/get-online-features", &full).await;
    assert_eq!(
        body["metadata"]["feature_names"],
        json!(["driver_id", "driver_stats__conv_rate"])
    );

    // Weir's route: one result per entity.
    let (status, body) = post(address, "/v1/features/online", &request).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["results"][0]["features"]["driver_stats:conv_rate"]["value"],
        json!(0.75)
    );
    assert_eq!(
        body["results"][1]["features"]["driver_stats:conv_rate"]["status"],
        json!("NOT_FOUND")
    );
    assert_eq!(
        body["results"][2]["features"]["driver_stats:avg_daily_trips"]["event_time"],
        json!("2024-01-02T11:30:00.250Z")
    );

    // Mistakes are 400s that say what is wrong.
    let cases = [
        (
            json!({"features": ["nope:x"], "entities": {"driver_id": [1]}}),
            "nope",
        ),
        (
            json!({"features": ["driver_stats:x"], "entities": {"driver_id": [1]}}),
            "`x`",
        ),
        (
            json!({"features": ["driver_stats:conv_rate"], "entities": {"user": [1]}}),
            "driver_id",
        ),
        (
            json!({"features": ["conv_rate"], "entities": {"driver_id": [1]}}),
            "view:feature",
        ),
        (
            json!({"features": ["driver_stats:conv_rate"], "entities": {"driver_id": [1, 2], "x": [1]}}),
            "same number",
        ),
    ];
    for (request, says) in cases {
        let (status, body) = post(address, "/v1/features/online", &request).await;
        assert_eq!(status, 400, "{request}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(says),
            "{request}: {body}"
        );
    }
    // An unknown route is a 404 that names it.
    let (status, body) = post(address, "/v1/nowhere", &json!({"x": 1})).await;
    assert_eq!(
        (status, body),
        (404, json!({"error": "no route POST /v1/nowhere"}))
    );
}
