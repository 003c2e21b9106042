//! A deployment, served: HTTP, gRPC and stream workers started, the registry
//! watched for moved aliases, the stream workers scaled, and everything
//! stopped cleanly (requests answered, the log written out).
//!
//! The scaling policy, checked every `interval_ms`:
//! - **up**: the workers wanted are `ceil(lag / target_lag)` — the
//!   requests the group has yet to commit, per worker — plus one while
//!   the stream's p99 latency over the interval is above `target_p99_ms`,
//!   within `min..=max`; more wanted than running starts them at once;
//! - **down**: one worker stops when fewer were wanted for `cooldown_s`
//!   in a row, so a burst's tail does not flap the group.
//!
//! Lag is what KEDA's Kafka scaler reads too (`lagThreshold` per replica):
//! the same signal scales replicas across machines (see
//! `docs/serving.md`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::serve::ListenerExt as _;
use tokio::sync::watch;
use weir_bus::Bus;
use weir_features::follow::{Following, Online};
use weir_features::online::{OnlineStore, OnlineView};

use crate::ServeError;
use crate::deployment::Deployment;
use crate::log::Channel;
use crate::registry::Registry;
use crate::spec::{DeploymentSpec, Protocol, Scaling};
use crate::stream::{self, StreamCounts};

/// What is up once serving starts.
#[derive(Debug, Clone)]
pub struct Ready {
    /// Where HTTP listens.
    pub http: Option<SocketAddr>,
    /// Where gRPC listens.
    pub grpc: Option<SocketAddr>,
    /// The versions serving.
    pub versions: String,
}

/// What serving did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Requests answered and failed, every protocol.
    pub requests: (u64, u64),
    /// Stream requests answered and rejected.
    pub stream: (u64, u64),
    /// Log records written.
    pub logged: u64,
    /// The versions swapped in, in order.
    pub swaps: Vec<String>,
    /// The stream workers' count after each change.
    pub scaling: Vec<usize>,
}

/// The feature views a deployment may look up.
#[derive(Default)]
pub struct Features {
    /// The views.
    pub views: Vec<OnlineView>,
    /// The store holding them (kept up to date by the caller).
    pub store: Option<Arc<OnlineStore>>,
}

impl Features {
    /// The views `spec` looks up, in a store of the deployment's own
    /// (`<state>/serve/<name>/online`), kept up to date from their topics
    /// until the returned guard is stopped or dropped.
    pub async fn follow(
        bus: &weir_bus::Bus,
        state_dir: &std::path::Path,
        spec: &crate::DeploymentSpec,
    ) -> Result<(Self, Following), ServeError> {
        if spec.features.is_empty() {
            return Ok((Self::default(), Following::none()));
        }
        let path = state_dir.join("serve").join(&spec.name).join("online");
        let (online, following) = Online::follow(bus, None, &path)
            .await
            .map_err(|e| ServeError::Internal(format!("the online store: {e}")))?;
        Ok((
            Self {
                views: online.views,
                store: Some(online.store),
            },
            following,
        ))
    }
}

/// Answers go out as soon as they are written (no Nagle delay).
pub fn nodelay(stream: &mut tokio::net::TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "TCP_NODELAY");
    }
}

/// Serves `spec` until `shutdown` resolves, or until the deployment is
/// deleted on `weir.meta`. With a `recorder`, the model versions it
/// serves (at the start and after each swap) are recorded there, for
/// lineage; the deployment must have been applied.
pub async fn serve(
    bus: &Bus,
    registry: Registry,
    spec: DeploymentSpec,
    features: Features,
    recorder: Option<weir_meta::Tracker>,
    on_ready: impl FnOnce(&Ready),
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, ServeError> {
    let deployment = Arc::new(
        Deployment::start(
            spec.clone(),
            &registry,
            &features.views,
            features.store,
            Some(bus),
        )
        .await?,
    );
    let (stop, stopped) = watch::channel(false);

    // Experiments: the routing last published on the control topic, before
    // the first request is taken, then each change to it.
    let registry = Arc::new(registry);
    let following = crate::control::apply_latest(bus, &deployment, &registry).await?;
    let router = tokio::spawn(crate::control::follow(
        bus.clone(),
        deployment.clone(),
        registry.clone(),
        following,
        stopped.clone(),
    ));

    // HTTP.
    let mut http = None;
    let mut address = None;
    if spec.protocols.contains(&Protocol::Http) {
        let listener = tokio::net::TcpListener::bind(&spec.http.listen)
            .await
            .map_err(|e| ServeError::Spec(format!("http.listen {}: {e}", spec.http.listen)))?;
        address = Some(
            listener
                .local_addr()
                .map_err(|e| ServeError::Internal(e.to_string()))?,
        );
        let router = crate::oip::router(deployment.clone());
        let mut stopped = stopped.clone();
        http = Some(tokio::spawn(async move {
            axum::serve(listener.tap_io(nodelay), router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        }));
    }

    // gRPC.
    let mut grpc = None;
    let mut grpc_address = None;
    if spec.protocols.contains(&Protocol::Grpc) {
        let listener = tokio::net::TcpListener::bind(&spec.grpc.listen)
            .await
            .map_err(|e| ServeError::Spec(format!("grpc.listen {}: {e}", spec.grpc.listen)))?;
        grpc_address = Some(
            listener
                .local_addr()
                .map_err(|e| ServeError::Internal(e.to_string()))?,
        );
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let service = crate::grpc::service(deployment.clone());
        let mut stopped = stopped.clone();
        grpc = Some(tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        }));
    }

    // Stream workers and their scaler.
    let counts = Arc::new(StreamCounts::default());
    let mut scaler = None;
    if spec.protocols.contains(&Protocol::Stream) {
        stream::ensure_topics(bus, &spec.name).await?;
        scaler = Some(tokio::spawn(scale(
            bus.clone(),
            deployment.clone(),
            counts.clone(),
            spec.scaling.clone(),
            stopped.clone(),
        )));
    }

    let record = {
        let name = spec.name.clone();
        move |references: Vec<String>| {
            let recorder = recorder.clone();
            let name = name.clone();
            async move {
                if let Some(recorder) = recorder
                    && let Err(error) = recorder.deployment_serving(&name, references).await
                {
                    tracing::warn!(%error, "recording what the deployment serves");
                }
            }
        }
    };
    record(deployment.references()).await;

    // Hot swap: when the registry changes, see whether a reference moved;
    // and whether the deployment was deleted.
    let (deleted_tx, deleted) = tokio::sync::oneshot::channel::<()>();

    let swapper = {
        let deployment = deployment.clone();
        let registry = registry.clone();
        let mut changes = registry.changes();
        let mut stopped = stopped.clone();
        let record = record.clone();
        tokio::spawn(async move {
            let mut swaps = Vec::new();
            let mut deleted_tx = Some(deleted_tx);
            loop {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { break },
                    _ = stopped.wait_for(|s| *s) => break,
                }
                let gone = registry
                    .read(|state| state.deployment(deployment.name()).is_ok_and(|d| d.deleted));
                if gone && let Some(tx) = deleted_tx.take() {
                    tracing::info!(deployment = deployment.name(), "deleted: stopping");
                    let _ = tx.send(());
                }
                match deployment.refresh(&registry).await {
                    Ok(Some(versions)) => {
                        tracing::info!(deployment = deployment.name(), %versions, "swapped in");
                        record(deployment.references()).await;
                        swaps.push(versions);
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::error!(%error, "the new version cannot serve; the old one goes on")
                    }
                }
            }
            swaps
        })
    };

    on_ready(&Ready {
        http: address,
        grpc: grpc_address,
        versions: deployment.versions(),
    });
    // The swapper dropping its sender (it stopped following the log) is
    // no deletion: serving goes on.
    let deleted = async {
        if deleted.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = deleted => {}
    }
    let _ = stop.send(true);
    let mut summary = Summary::default();
    if let Some(http) = http {
        http.await
            .map_err(|e| ServeError::Internal(e.to_string()))?
            .map_err(|e| ServeError::Internal(format!("HTTP: {e}")))?;
    }
    if let Some(grpc) = grpc {
        grpc.await
            .map_err(|e| ServeError::Internal(e.to_string()))?
            .map_err(|e| ServeError::Internal(format!("gRPC: {e}")))?;
    }
    if let Some(scaler) = scaler {
        summary.scaling = scaler
            .await
            .map_err(|e| ServeError::Internal(e.to_string()))??;
    }
    summary.swaps = swapper.await.unwrap_or_default();
    match router.await {
        Ok(Err(error)) => tracing::error!(%error, "following the experiments' routing"),
        Err(error) => tracing::error!(%error, "the routing follower panicked"),
        Ok(Ok(())) => {}
    }
    if let Ok(registry) = Arc::try_unwrap(registry) {
        registry.close().await;
    }
    summary.stream = counts.get();
    summary.requests = deployment.metrics().totals();
    let deployment = Arc::try_unwrap(deployment)
        .map_err(|_| ServeError::Internal("the deployment is still in use".into()))?;
    summary.logged = deployment.close().await?;
    Ok(summary)
}

/// A stream worker: its stop signal and its task.
type Worker = (
    watch::Sender<bool>,
    tokio::task::JoinHandle<Result<(), ServeError>>,
);

/// Runs the stream workers, between `scaling.min` and `scaling.max`, until
/// `stopped`; returns the worker count after each change.
async fn scale(
    bus: Bus,
    deployment: Arc<Deployment>,
    counts: Arc<StreamCounts>,
    scaling: Scaling,
    mut stopped: watch::Receiver<bool>,
) -> Result<Vec<usize>, ServeError> {
    let requests = weir_core::topics::requests(deployment.name());
    let group = stream::group(deployment.name());
    let mut workers: Vec<Worker> = Vec::new();
    let start = |workers: &mut Vec<_>| {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(stream::worker(
            bus.clone(),
            deployment.clone(),
            counts.clone(),
            stopped,
        ));
        workers.push((stop, task));
    };
    let mut history = Vec::new();
    for _ in 0..scaling.min {
        start(&mut workers);
    }
    history.push(workers.len());
    let mut last_needed = Instant::now();
    let interval = Duration::from_millis(scaling.interval_ms.max(10));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopped.wait_for(|s| *s) => break,
        }
        // A worker that failed is reported; the policy below starts
        // another if fewer than `min` are left.
        let mut alive = Vec::with_capacity(workers.len());
        for (stop, task) in workers.drain(..) {
            if !task.is_finished() {
                alive.push((stop, task));
                continue;
            }
            match task.await {
                Ok(Err(error)) => tracing::error!(%error, "a stream worker failed"),
                Err(error) => tracing::error!(%error, "a stream worker panicked"),
                Ok(Ok(())) => {}
            }
        }
        workers = alive;
        let lag = match bus.lag(&group, &requests).await {
            Ok(lag) => lag,
            Err(error) => {
                tracing::warn!(%error, "reading the consumer lag");
                continue;
            }
        };
        let p99 = deployment.metrics().latency_ms(Channel::Stream, 0.99);
        deployment.metrics().reset_latency(Channel::Stream);
        let wanted = desired(&scaling, lag, p99, workers.len());
        let before = workers.len();
        if wanted >= workers.len() {
            last_needed = Instant::now();
        }
        if wanted > workers.len() {
            while workers.len() < wanted {
                start(&mut workers);
            }
        } else if wanted < workers.len()
            && last_needed.elapsed() >= Duration::from_secs_f64(scaling.cooldown_s)
        {
            let (stop, task) = workers.pop().expect("a worker");
            let _ = stop.send(true);
            if let Ok(Err(error)) = task.await {
                tracing::error!(%error, "a stream worker failed");
            }
            last_needed = Instant::now();
        }
        if workers.len() != before {
            tracing::info!(
                lag,
                p99_ms = p99,
                workers = workers.len(),
                "scaled the stream workers"
            );
            history.push(workers.len());
        }
    }
    for (stop, _) in &workers {
        let _ = stop.send(true);
    }
    for (_, task) in workers {
        match task.await {
            Ok(Err(error)) => tracing::error!(%error, "a stream worker failed"),
            Err(error) => tracing::error!(%error, "a stream worker panicked"),
            Ok(Ok(())) => {}
        }
    }
    Ok(history)
}

/// The workers the policy wants.
pub fn desired(scaling: &Scaling, lag: i64, p99_ms: f64, running: usize) -> usize {
    let by_lag = (lag.max(0) as f64 / scaling.target_lag.max(1) as f64).ceil() as usize;
    let by_latency = if p99_ms > scaling.target_p99_ms {
        running + 1
    } else {
        0
    };
    by_lag.max(by_latency).clamp(scaling.min, scaling.max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_follows_lag_and_latency_within_bounds() {
        let scaling = Scaling {
            min: 1,
            max: 4,
            target_lag: 100,
            target_p99_ms: 50.0,
            interval_ms: 1000,
            cooldown_s: 5.0,
        };
        assert_eq!(desired(&scaling, 0, 1.0, 1), 1);
        assert_eq!(desired(&scaling, 250, 1.0, 1), 3);
        assert_eq!(desired(&scaling, 10_000, 1.0, 1), 4);
        assert_eq!(desired(&scaling, 0, 80.0, 2), 3);
    }
}
