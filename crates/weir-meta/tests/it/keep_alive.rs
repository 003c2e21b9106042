//! A request the server answers without reading its body leaves the
//! connection open. hyper closes a keep-alive connection whose request body
//! was not read, and a client that reuses it before it sees the close (the
//! MLflow client did, after `logged-models/search`) fails with "connection
//! closed without response".

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use weir_meta::Tracker;
use weir_meta::artifacts::ArtifactStore;

use crate::broker;

/// Sends one request on `stream` and reads its response: the status and
/// whether the server said it will close.
async fn exchange(
    stream: &mut BufReader<TcpStream>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, bool) {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.get_mut().write_all(head.as_bytes()).await.unwrap();
    stream.get_mut().write_all(body.as_bytes()).await.unwrap();
    let mut status_line = String::new();
    stream.read_line(&mut status_line).await.unwrap();
    assert!(
        !status_line.is_empty(),
        "{method} {path}: the connection was closed without a response"
    );
    let status = status_line[9..12].parse().unwrap();
    let (mut length, mut closes) = (0, false);
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        if let Some(value) = line.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
        closes |= line == "connection: close";
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.unwrap();
    (status, closes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_answered_without_its_body_leaves_the_connection_open() {
    let (_broker, bus) = broker().await;
    let root = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open(root.path().to_str().unwrap()).unwrap();
    let tracker = Tracker::open(&bus, store).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, weir_meta::server::router(tracker)).await });

    let mut stream = BufReader::new(TcpStream::connect(address).await.unwrap());
    let filter = r#"{"experiment_ids": ["1"], "filter": "name = 'x'"}"#;
    for (method, path, body, expected) in [
        ("POST", "/api/2.0/mlflow/logged-models/search", filter, 200),
        ("POST", "/api/2.0/mlflow/no-such-endpoint", filter, 404),
        ("PUT", "/api/2.0/mlflow/runs/get", filter, 405),
        ("GET", "/api/2.0/mlflow/experiments/get", filter, 400),
        (
            "PUT",
            "/api/2.0/mlflow-artifacts/artifacts/1/..%2F..%2Fx",
            "bytes",
            400,
        ),
        ("GET", "/health", "", 200),
    ] {
        let (status, closes) = exchange(&mut stream, method, path, body).await;
        assert_eq!(status, expected, "{method} {path}");
        assert!(!closes, "{method} {path}: the server closes the connection");
    }
}
