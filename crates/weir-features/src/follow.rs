//! The online store of a set of views, caught up with their topics, and a
//! follower that keeps it up to date on a thread of its own until it is
//! stopped: what `weir features serve|get` and serving's look-ups use.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use weir_bus::Bus;
use weir_sql::registry::Registry;

use crate::FeaturesError;
use crate::materialize::Materializer;
use crate::online::{Found, OnlineStore, OnlineView};

/// An online store and the views it serves.
#[derive(Debug, Clone)]
pub struct Online {
    /// The store.
    pub store: Arc<OnlineStore>,
    /// The views, each the latest version of its name.
    pub views: Vec<OnlineView>,
}

impl Online {
    /// The store at `path` brought up to date with the latest version of
    /// `names` (every view recorded on `weir.meta` when `None`), and the
    /// materializer that reads on where it stopped.
    pub async fn catch_up(
        bus: &Bus,
        names: Option<&[String]>,
        path: &Path,
    ) -> Result<(Self, Materializer), FeaturesError> {
        let registry = Registry::load(bus)
            .await
            .map_err(|e| FeaturesError::Online(format!("reading the views: {e}")))?;
        let mut views = Vec::new();
        for name in registry.names() {
            if names.is_some_and(|wanted| !wanted.iter().any(|w| w == name)) {
                continue;
            }
            let version = registry.latest(name).expect("a view has a version");
            let partitions = bus
                .admin()
                .partitions(&version.topic)
                .await
                .map_err(|e| FeaturesError::Online(e.to_string()))?;
            views.push((OnlineView::of(version)?, partitions));
        }
        std::fs::create_dir_all(path)
            .map_err(|e| FeaturesError::Online(format!("{}: {e}", path.display())))?;
        let store = Arc::new(OnlineStore::open(path)?);
        let mut materializer = Materializer::new(bus.config(), store.clone(), views.clone())?;
        let (read, materializer) = tokio::task::spawn_blocking(move || {
            materializer.catch_up().map(|read| (read, materializer))
        })
        .await
        .map_err(|e| FeaturesError::Online(e.to_string()))??;
        tracing::info!(read, path = %path.display(), "online store up to date");
        let online = Self {
            store,
            views: views.into_iter().map(|(view, _)| view).collect(),
        };
        Ok((online, materializer))
    }

    /// As [`Online::catch_up`], then followed until the returned guard is
    /// stopped or dropped.
    pub async fn follow(
        bus: &Bus,
        names: Option<&[String]>,
        path: &Path,
    ) -> Result<(Self, Following), FeaturesError> {
        let (online, materializer) = Self::catch_up(bus, names, path).await?;
        Ok((online, Following::start(materializer)))
    }

    /// The view named `name`.
    pub fn view(&self, name: &str) -> Option<&OnlineView> {
        self.views.iter().find(|v| v.name == name)
    }

    /// The latest values of view `name` for one entity (its key values in
    /// the view's entity order), as of `now` (ms).
    pub fn latest(
        &self,
        name: &str,
        entity: Vec<String>,
        now: i64,
    ) -> Result<(&OnlineView, Found), FeaturesError> {
        let view = self
            .view(name)
            .ok_or_else(|| FeaturesError::UnknownView(name.to_string()))?;
        if entity.len() != view.entity.len() {
            return Err(FeaturesError::View {
                view: name.to_string(),
                message: format!(
                    "keyed by {} value(s) ({}), given {}",
                    view.entity.len(),
                    view.entity.join(", "),
                    entity.len()
                ),
            });
        }
        let mut found = self.store.get(view, &[entity], &view.features, now)?;
        Ok((view, found.remove(0)))
    }

    /// The store and views as the HTTP server serves them.
    pub fn served(self) -> crate::http::Served {
        crate::http::Served {
            store: self.store,
            views: Arc::new(
                self.views
                    .into_iter()
                    .map(|v| (v.name.clone(), v))
                    .collect(),
            ),
        }
    }
}

/// The follower of an online store's topics: told to stop when dropped;
/// [`Following::stop`] also waits until it has (and its consumer is gone).
#[derive(Debug)]
pub struct Following {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Following {
    /// Nothing to follow.
    pub fn none() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(true)),
            thread: None,
        }
    }

    fn start(mut materializer: Materializer) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("weir-online-follow".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    if let Err(error) = materializer.poll(10_000, Duration::from_millis(200)) {
                        tracing::error!(%error, "online store");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            })
            .expect("a thread for the online store's follower");
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the follower and waits for it: before its broker stops, or
    /// its consumer logs the broker's going as errors.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
