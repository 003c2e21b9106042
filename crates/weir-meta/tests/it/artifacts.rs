//! Artifacts over HTTP: bytes back as written, stored once by content; no
//! spelling of a path reaches outside the store, symlinks included.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use weir_meta::Tracker;
use weir_meta::artifacts::ArtifactStore;

use crate::broker;

/// One HTTP/1.1 request; the status and the body.
async fn request(
    address: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = std::str::from_utf8(&response[9..12])
        .unwrap()
        .parse()
        .unwrap();
    (status, response[split + 4..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_read_back_and_cannot_escape() {
    let (_broker, bus) = broker().await;
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"do not serve").unwrap();
    let store = root.path().join("store");
    let tracker = Tracker::open(&bus, ArtifactStore::open(store.to_str().unwrap()).unwrap())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, weir_meta::server::router(tracker)).await });
    let base = "/api/2.0/mlflow-artifacts/artifacts";

    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    for path in ["1/r/artifacts/model.onnx", "1/r/artifacts/copy/model.onnx"] {
        let (status, _) = request(address, "PUT", &format!("{base}/{path}"), &bytes).await;
        assert_eq!(status, 200);
        let (status, body) = request(address, "GET", &format!("{base}/{path}"), b"").await;
        assert_eq!(status, 200);
        assert!(body == bytes, "{path} reads back as written");
    }
    let blobs = walk(&store.join("blobs"));
    assert_eq!(blobs.len(), 1, "the same bytes are stored once: {blobs:?}");

    // A symlink planted in the store, and every spelling of a way out.
    std::os::unix::fs::symlink(outside.path(), store.join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.path(), store.join("blobs").join("escape")).unwrap();
    for path in [
        "escape/secret",
        "blobs/escape/secret",
        "1/r/artifacts/../../escape/secret",
        "..%2F..%2Fsecret",
        "1/%2e%2e/%2e%2e/escape/secret",
        "1/r/%252e%252e/secret",
        "%2Fetc%2Fpasswd",
        "1\\..\\..\\secret",
    ] {
        let (status, body) = request(address, "GET", &format!("{base}/{path}"), b"").await;
        assert!(
            status == 400 || status == 404,
            "{path}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        assert!(!body.windows(12).any(|w| w == b"do not serve"), "{path}");
        // A PUT either is refused or names a key of the store's index
        // (`escape/secret` is just a name there): never a file outside.
        request(address, "PUT", &format!("{base}/{path}"), b"x").await;
    }
    assert_eq!(
        std::fs::read(outside.path().join("secret")).unwrap(),
        b"do not serve"
    );
    assert_eq!(walk(outside.path()).len(), 1, "nothing was written outside");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            files.extend(walk(&entry.path()));
        } else if kind.is_file() {
            files.push(entry.path());
        }
    }
    files
}
