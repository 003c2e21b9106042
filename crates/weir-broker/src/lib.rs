//! Weir's embedded broker: a Kafka-API broker ([tansu]) served from our own
//! tokio runtime, so `weir` needs no separate Kafka install; and
//! [`connect`], how a process finds Kafka: the configured brokers, a
//! running `weir broker`, or this broker started in-process.
//!
//! When no brokers are configured, `weir` starts one of these in-process —
//! durable (SQLite) under the state directory for the demo and the CLI,
//! in memory for tests — and talks to it through the ordinary Kafka client,
//! exactly as it would talk to Apache Kafka. `weir broker` runs one on its
//! own for other clients.
//!
//! ```no_run
//! # async fn demo() -> Result<(), weir_broker::BrokerError> {
//! use weir_broker::{EmbeddedBroker, Storage};
//! let broker = EmbeddedBroker::start_on_free_port(Storage::Memory).await?;
//! println!("bootstrap.servers={}", broker.bootstrap_servers());
//! broker.stop().await;
//! # Ok(()) }
//! ```
//!
//! Why tansu 0.6.0 and not its renamed successor nisshi 0.8.1: nisshi adds
//! Kafka transactions and fixes several panics, but it depends on `rama`
//! 0.4, which needs Rust 1.96, and the toolchain here is 1.95. Weir does not
//! rely on transactions (exactly-once is state and offsets in one RocksDB
//! write plus idempotent keyed outputs), and it avoids the requests that
//! tansu 0.6.0 does not implement (`DeleteRecords`, incremental config
//! append/subtract). Moving to nisshi is a one-crate change.
//!
//! [tansu]: https://github.com/tansu-io/tansu

use std::net::{SocketAddr, TcpListener};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

mod auto_create;
pub mod connect;
mod fetch;
mod storage;

use rama::{Context, Service};
use tansu_broker::coordinator::group::administrator::Controller;
use tansu_storage::{BrokerRegistrationRequest, Storage as _, StorageContainer};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::auto_create::AutoCreateTopics;
use crate::fetch::LongPollFetch;
use crate::storage::PatchedStorage;

const NODE_ID: i32 = 111;
const CLUSTER_ID: &str = "weir";
/// How often the storage applies retention and compaction (tansu's default).
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(600);

/// Where the broker keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// In memory: gone when the broker stops (tests).
    Memory,
    /// A SQLite database file: survives restarts (demo, CLI).
    Sqlite(PathBuf),
}

/// How the broker behaves, beyond where it listens and keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerOptions {
    /// Create a topic that a client asks for and that does not exist, when
    /// the client allows it (Kafka's `auto.create.topics.enable`; a
    /// producer's metadata request allows it, a consumer's only when told
    /// to).
    pub auto_create_topics: bool,
    /// Partitions of a topic created that way (Kafka's `num.partitions`).
    pub num_partitions: i32,
}

impl Default for BrokerOptions {
    /// Kafka's defaults: topics are created on first use, with one partition.
    fn default() -> Self {
        Self {
            auto_create_topics: true,
            num_partitions: 1,
        }
    }
}

/// Errors starting the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The address is taken, or the storage cannot be opened.
    #[error("cannot start the embedded broker on {address}: {message}")]
    Start {
        /// Listener address.
        address: SocketAddr,
        /// What went wrong.
        message: String,
    },
    /// The SQLite path cannot be expressed for the broker.
    #[error("{0}")]
    StoragePath(String),
}

/// A running in-process broker. Stops when [`EmbeddedBroker::stop`] is called
/// or when dropped.
#[derive(Debug)]
pub struct EmbeddedBroker {
    address: SocketAddr,
    storage: Storage,
    task: Option<JoinHandle<()>>,
    cancellation: CancellationToken,
}

impl EmbeddedBroker {
    /// Starts a broker listening on `address`, with the default options.
    pub async fn start(address: SocketAddr, storage: Storage) -> Result<Self, BrokerError> {
        Self::start_with(address, storage, BrokerOptions::default()).await
    }

    /// Starts a broker listening on `address`.
    pub async fn start_with(
        address: SocketAddr,
        storage: Storage,
        options: BrokerOptions,
    ) -> Result<Self, BrokerError> {
        let start_error = |message: String| BrokerError::Start { address, message };
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| start_error(e.to_string()))?;
        let advertised =
            Url::parse(&format!("tcp://{address}")).expect("a socket address is a URL");
        let storage_url = storage_url(&storage)?;
        let cancellation = CancellationToken::new();
        // A broker that just stopped on the same SQLite file may still be
        // letting go of it (its tasks are dropped asynchronously): retry.
        let deadline = Instant::now() + Duration::from_secs(10);
        let container = loop {
            let built = StorageContainer::builder()
                .cluster_id(CLUSTER_ID)
                .node_id(NODE_ID)
                .advertised_listener(advertised.clone())
                .storage(storage_url.clone())
                .schema_registry(None)
                .lake_house(None)
                .cancellation(cancellation.clone())
                .silent(true)
                .build()
                .await;
            match built {
                Ok(container) => break container,
                Err(error)
                    if format!("{error:?}").contains("database is locked")
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => return Err(start_error(format!("{error:?}"))),
            }
        };
        if let Storage::Sqlite(path) = &storage {
            index_headers(path).await.map_err(start_error)?;
        }
        let engine = PatchedStorage::new(container);
        engine
            .register_broker(BrokerRegistrationRequest {
                broker_id: NODE_ID,
                cluster_id: CLUSTER_ID.to_string(),
                incarnation_id: uuid::Uuid::new_v4(),
                rack: None,
            })
            .await
            .map_err(|e| start_error(format!("{e:?}")))?;
        let groups =
            Controller::with_storage(engine.clone()).map_err(|e| start_error(format!("{e:?}")))?;
        let task = tokio::spawn(serve(
            listener,
            engine,
            groups,
            options,
            cancellation.clone(),
        ));
        tracing::info!(%address, ?storage, "embedded broker started");
        Ok(Self {
            address,
            storage,
            task: Some(task),
            cancellation,
        })
    }

    /// Starts a broker on a free port of 127.0.0.1 (tests, throw-away runs).
    pub async fn start_on_free_port(storage: Storage) -> Result<Self, BrokerError> {
        let mut last = None;
        // Another process may take the port between our probe and the
        // broker's bind: try a few.
        for _ in 0..5 {
            let address = free_local_address().map_err(|e| BrokerError::Start {
                address: SocketAddr::from(([127, 0, 0, 1], 0)),
                message: e.to_string(),
            })?;
            match Self::start(address, storage.clone()).await {
                Ok(broker) => return Ok(broker),
                Err(error) => last = Some(error),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// The listener address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `bootstrap.servers` for clients.
    pub fn bootstrap_servers(&self) -> String {
        self.address.to_string()
    }

    /// The storage.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Stops the broker and waits until its listener and storage are released.
    pub async fn stop(mut self) {
        self.cancellation.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        // Connections close with the aborted task set; wait until the port
        // can be listened on again, as the broker itself binds it (with
        // SO_REUSEADDR: connections closing in TIME_WAIT do not hold it).
        for _ in 0..50 {
            if tokio::net::TcpListener::bind(self.address).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(address = %self.address, "embedded broker stopped");
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.cancellation.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// tansu's accept loop (`Broker::listen`) without its console output (it
/// prints to stdout and draws spinners unless built through its builder,
/// which cannot take a wrapped storage engine): one service per connection,
/// periodic storage maintenance (retention, compaction), until cancelled.
async fn serve(
    listener: tokio::net::TcpListener,
    storage: PatchedStorage,
    groups: Controller<PatchedStorage>,
    options: BrokerOptions,
    cancellation: CancellationToken,
) {
    let mut connections = JoinSet::new();
    let mut maintenance = tokio::time::interval(MAINTENANCE_INTERVAL);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "embedded broker: accept failed");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = match services(groups.clone(), storage.clone(), options) {
                    Ok(service) => service,
                    Err(error) => {
                        tracing::error!(?error, "embedded broker: cannot serve a connection");
                        continue;
                    }
                };
                connections.spawn(async move {
                    if let Err(error) = service.serve(Context::default(), stream).await {
                        tracing::debug!(%peer, ?error, "embedded broker: connection closed");
                    }
                });
            }
            _ = maintenance.tick() => {
                let storage = storage.clone();
                connections.spawn(async move {
                    if let Err(error) = storage.maintain(SystemTime::now()).await {
                        tracing::debug!(?error, "embedded broker: maintenance");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = cancellation.cancelled() => break,
        }
    }
    connections.shutdown().await;
}

/// tansu's services for one connection (`tansu_broker::service::services`)
/// with fetches answered as soon as records are there ([`LongPollFetch`])
/// and topics created on first use ([`AutoCreateTopics`], unless turned off).
fn services(
    groups: Controller<PatchedStorage>,
    storage: PatchedStorage,
    options: BrokerOptions,
) -> Result<impl Service<(), tokio::net::TcpStream, Error = tansu_broker::Error>, tansu_broker::Error>
{
    use rama::Layer as _;
    use tansu_broker::service::{auth, coordinator, storage as routes};
    use tansu_service::{
        BytesFrameLayer, FrameRouteService, TcpBytesLayer, TcpContext, TcpContextLayer,
    };
    let produced = storage.produced();
    let route = routes::services(
        FrameRouteService::<(), tansu_broker::Error>::builder(),
        storage.clone(),
    )
    .and_then(|builder| coordinator::services(builder, groups))
    .and_then(auth::services)
    .and_then(|builder| builder.build().map_err(Into::into))?;
    Ok((
        TcpContextLayer::new(TcpContext::default().cluster_id(Some(CLUSTER_ID.into()))),
        TcpBytesLayer::default(),
        BytesFrameLayer::default(),
    )
        .into_layer(AutoCreateTopics {
            inner: LongPollFetch {
                inner: route,
                produced,
            },
            storage,
            options,
        }))
}

/// tansu's SQLite schema has no index on record headers, and its fetch
/// reads the headers of every record it returns by (partition, offset):
/// without an index each fetch scans every header of every topic, so
/// fetches slow down as dead letters (which carry headers) pile up.
async fn index_headers(path: &Path) -> Result<(), String> {
    let fail = |e: libsql::Error| format!("indexing {}: {e}", path.display());
    let database = libsql::Builder::new_local(path)
        .build()
        .await
        .map_err(fail)?;
    let connection = database.connect().map_err(fail)?;
    connection
        .execute(
            "create index if not exists weir_header_record on header (topition, offset_id)",
            (),
        )
        .await
        .map_err(fail)?;
    Ok(())
}

/// A port of 127.0.0.1 that was free a moment ago.
pub fn free_local_address() -> std::io::Result<SocketAddr> {
    TcpListener::bind(("127.0.0.1", 0))?.local_addr()
}

/// tansu resolves a SQLite URL as *working directory + host + path*, so an
/// absolute path cannot be given directly: express it relative to the
/// working directory. The URL's host takes the first component; `..`
/// components are only allowed there (URL paths drop them).
fn storage_url(storage: &Storage) -> Result<Url, BrokerError> {
    let path = match storage {
        Storage::Memory => return Ok(Url::parse("memory://tansu/").expect("valid URL")),
        Storage::Sqlite(path) => path,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            BrokerError::StoragePath(format!("cannot create {}: {e}", parent.display()))
        })?;
    }
    let cwd = std::env::current_dir()
        .map_err(|e| BrokerError::StoragePath(format!("no working directory: {e}")))?;
    let relative = relative_to(&cwd, path);
    let components: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let (host, rest) = components
        .split_first()
        .ok_or_else(|| BrokerError::StoragePath("empty SQLite path".into()))?;
    if rest.iter().any(|c| c == "..") || rest.is_empty() {
        return Err(BrokerError::StoragePath(format!(
            "the embedded broker's SQLite file {} must be inside the working directory {} \
             or one level above it (set WEIR_STATE_DIR to a folder there)",
            path.display(),
            cwd.display()
        )));
    }
    Url::parse(&format!("sqlite://{host}/{}", rest.join("/")))
        .map_err(|e| BrokerError::StoragePath(format!("SQLite path {}: {e}", path.display())))
}

/// `path` relative to `base` (both made absolute against `base`).
fn relative_to(base: &Path, path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    let (base, target) = (normal_components(base), normal_components(&absolute));
    let common = base.iter().zip(&target).take_while(|(a, b)| a == b).count();
    let mut relative = PathBuf::new();
    for _ in common..base.len() {
        relative.push("..");
    }
    for component in &target[common..] {
        relative.push(component.as_os_str());
    }
    relative
}

fn normal_components(path: &Path) -> Vec<Component<'_>> {
    path.components()
        .filter(|c| *c != Component::CurDir)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        let base = Path::new("/work/main");
        assert_eq!(
            relative_to(base, Path::new(".weir/b.db")),
            PathBuf::from(".weir/b.db")
        );
        assert_eq!(
            relative_to(base, Path::new("/work/main/.weir/b.db")),
            PathBuf::from(".weir/b.db")
        );
        assert_eq!(
            relative_to(base, Path::new("/work/x/b.db")),
            PathBuf::from("../x/b.db")
        );
        assert_eq!(
            relative_to(base, Path::new("/tmp/x/b.db")),
            PathBuf::from("../../tmp/x/b.db")
        );
    }
}
