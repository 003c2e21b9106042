//! Starts `weir broker --memory` on free ports and runs `weir` against it.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// A `weir broker` process (memory storage) and a state directory; both
/// go away when dropped.
pub struct Platform {
    pub kafka: SocketAddr,
    pub registry: SocketAddr,
    pub state: tempfile::TempDir,
    broker: Child,
}

pub use weir_test_support::free_port;

fn wait_for(address: SocketAddr, broker: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(address).is_err() {
        if let Some(status) = broker.try_wait().unwrap() {
            panic!("weir broker exited with {status} before listening on {address}");
        }
        assert!(Instant::now() < deadline, "nothing listens on {address}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Platform {
    pub fn start() -> Self {
        let (kafka, registry) = (free_port(), free_port());
        let state = tempfile::tempdir().unwrap();
        let mut broker = Command::new(WEIR)
            .args(["broker", "--memory", "--listen", &kafka.to_string()])
            .args(["--registry", &registry.to_string()])
            .env("WEIR_STATE_DIR", state.path())
            .env_remove("WEIR_BROKERS")
            .stdout(Stdio::null())
            .spawn()
            .expect("weir broker starts");
        wait_for(kafka, &mut broker);
        wait_for(registry, &mut broker);
        Self {
            kafka,
            registry,
            state,
            broker,
        }
    }

    pub fn registry_url(&self) -> String {
        format!("http://{}", self.registry)
    }

    /// `weir ARGS` pointed at this platform.
    pub fn weir(&self, args: &[&str]) -> Command {
        let mut command = Command::new(WEIR);
        command
            .args(args)
            .env("WEIR_BROKERS", self.kafka.to_string())
            .env("WEIR_STATE_DIR", self.state.path())
            .env("NO_COLOR", "1");
        command
    }

    /// Runs `weir ARGS` with `stdin` as input; fails the test on a non-zero exit.
    pub fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        let output = self.run_unchecked(args, stdin);
        assert!(
            output.status.success(),
            "weir {args:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    pub fn run_unchecked(&self, args: &[&str], stdin: &[u8]) -> Output {
        use std::io::Write as _;
        let mut child = self
            .weir(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }
}

/// A long-running `weir` command (a server), killed when dropped.
pub struct Served {
    pub address: SocketAddr,
    child: Child,
}

impl Served {
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Platform {
    /// Starts `weir ARGS --listen <free port>` and waits until it listens.
    pub fn serve(&self, args: &[&str]) -> Served {
        let address = free_port();
        let mut child = self
            .weir(args)
            .args(["--listen", &address.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(address, &mut child);
        Served { address, child }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.broker.kill();
        let _ = self.broker.wait();
    }
}

/// Lines of stdout parsed as JSON.
pub fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The repository root: where cargo says the crate is when the tests
/// run, not where it was when they were built (a build shared by two
/// checkouts would read the other one's files).
pub fn repo() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../..")
}

/// The test Python environment that `cargo xtask test` builds. A test that
/// needs it fails (never skips) when it is missing.
pub fn python() -> PathBuf {
    let python = std::env::var_os("WEIR_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        panic!("WEIR_PYTHON is not set: run the tests with `cargo xtask test` (it builds the test Python environment), or `cargo xtask setup --python test` and point WEIR_PYTHON at it")
    });
    assert!(
        python.exists(),
        "{} does not exist: run `cargo xtask setup --python test`",
        python.display()
    );
    python
}

/// `GET url` (`http://host:port/path`) over HTTP/1.0: the status and the
/// body.
pub fn http_get(url: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut stream = TcpStream::connect(host).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}
