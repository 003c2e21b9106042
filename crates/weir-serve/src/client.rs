//! A closed-loop HTTP load generator: keep-alive HTTP/1.1 connections
//! that post a body again as soon as its answer arrives, latencies in an
//! HDR histogram. The benchmarks measure every server through it, and the
//! tests drive deployments with it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A keep-alive connection posting to one path.
pub struct Connection {
    stream: tokio::net::TcpStream,
    head: Vec<u8>,
    get: Vec<u8>,
    buffer: Vec<u8>,
}

fn io(message: impl Into<String>) -> std::io::Error {
    std::io::Error::other(message.into())
}

impl Connection {
    /// Connects to `address`, to post to `path`.
    pub async fn open(address: SocketAddr, path: &str) -> std::io::Result<Self> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            head: format!(
                "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n"
            )
            .into_bytes(),
            get: format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").into_bytes(),
            buffer: Vec::with_capacity(16 << 10),
        })
    }

    /// Posts `body`; the status and the response body.
    pub async fn post(&mut self, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        let mut request = self.head.clone();
        request.extend(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        request.extend(body);
        self.exchange(&request).await
    }

    /// Posts `body` with extra `headers`; the status and the response body.
    pub async fn post_with(
        &mut self,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let mut request = self.head.clone();
        for (name, value) in headers {
            request.extend(format!("{name}: {value}\r\n").as_bytes());
        }
        request.extend(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        request.extend(body);
        self.exchange(&request).await
    }

    /// GETs the path; the status and the response body.
    pub async fn get(&mut self) -> std::io::Result<(u16, Vec<u8>)> {
        let request = self.get.clone();
        self.exchange(&request).await
    }

    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        self.stream.write_all(request).await?;
        self.buffer.clear();
        let mut chunk = [0u8; 16 << 10];
        let end = loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io("the server closed the connection"));
            }
            self.buffer.extend(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buffer[..end]).to_ascii_lowercase();
        let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| io("a response without Content-Length"))?;
        while self.buffer.len() < end + length {
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io("the server closed the connection mid-response"));
            }
            self.buffer.extend(&chunk[..n]);
        }
        Ok((status, self.buffer[end..end + length].to_vec()))
    }
}

/// What a load run measured.
#[derive(Debug)]
pub struct Load {
    /// Answers a second (status 200).
    pub rate: f64,
    /// Latencies, µs.
    pub latency: Histogram<u64>,
    /// Answers that were not 200.
    pub failed: u64,
}

/// One connection per body posting it to `path` for `duration`.
pub async fn load(
    address: SocketAddr,
    path: &str,
    bodies: Vec<Vec<u8>>,
    duration: Duration,
) -> std::io::Result<Load> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for body in bodies {
        let path = path.to_string();
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::open(address, &path).await?;
            let mut latency = Histogram::<u64>::new(3).expect("3 significant digits");
            let mut failed = 0u64;
            while Instant::now() < deadline {
                let sent = Instant::now();
                let (status, _) = connection.post(&body).await?;
                if status == 200 {
                    latency
                        .record(sent.elapsed().as_micros() as u64)
                        .map_err(|e| io(e.to_string()))?;
                } else {
                    failed += 1;
                }
            }
            std::io::Result::Ok((latency, failed))
        }));
    }
    let mut all = Histogram::<u64>::new(3).expect("3 significant digits");
    let mut failed = 0;
    for task in tasks {
        let (latency, f) = task.await.map_err(|e| io(e.to_string()))??;
        all.add(latency).map_err(|e| io(e.to_string()))?;
        failed += f;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Load {
        rate: all.len() as f64 / seconds,
        latency: all,
        failed,
    })
}
