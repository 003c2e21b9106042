//! The write path and the reads.
//!
//! A write is a closure that looks at the state and returns the event it
//! means (or refuses). Writers take turns: the event is applied to the
//! state, which checks it, and queued to `weir.meta` in the same turn, so
//! the log holds events in the order they were applied. The caller then
//! waits, outside the turn, for the broker's acknowledgement: a reply
//! never promises a change the log does not have. Should the log refuse
//! one, the tracker stops taking writes — its state is ahead of the log —
//! and a restart rebuilds it from the log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use weir_bus::{Bus, OutRecord, Producer};

use crate::MetaError;
use crate::artifacts::ArtifactStore;
use crate::event::Event;
use crate::state::State;

/// Experiments, runs, models and artifacts: the state, the log and the
/// artifact store.
#[derive(Clone)]
pub struct Tracker {
    inner: Arc<Inner>,
}

struct Inner {
    state: RwLock<State>,
    /// Writers' turns.
    turn: tokio::sync::Mutex<()>,
    producer: Producer,
    artifacts: ArtifactStore,
    broken: AtomicBool,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker").finish_non_exhaustive()
    }
}

/// Reads `weir.meta` to its end into a state.
pub async fn replay(bus: &Bus) -> Result<State, MetaError> {
    let mut state = State::default();
    let log = bus
        .read_log(weir_core::topics::META)
        .await
        .map_err(|e| MetaError::internal(format!("reading {}: {e}", weir_core::topics::META)))?;
    for (index, payload) in log.iter().enumerate() {
        match Event::decode(payload) {
            Ok(Some(event)) => {
                // A refused event was refused when it was written too, and
                // never reached the log; one here means a second writer.
                if let Err(error) = state.apply(&event) {
                    tracing::warn!(index, %error, "skipping a metadata event that does not apply");
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(index, %error, "skipping an unreadable metadata event"),
        }
    }
    Ok(state)
}

impl Tracker {
    /// Rebuilds the state from `weir.meta` and opens the artifact store.
    pub async fn open(bus: &Bus, artifacts: ArtifactStore) -> Result<Self, MetaError> {
        let state = replay(bus).await?;
        tracing::info!(
            events = state.applied(),
            "metadata state rebuilt from the log"
        );
        // Each write waits for its event: send it now rather than linger
        // for a batch (the bus's default is tuned for throughput).
        let mut config = bus.config().clone();
        config.overrides.push(("linger.ms".into(), "0".into()));
        let producer = Producer::new(&config)
            .map_err(|e| MetaError::internal(format!("creating a producer: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                state: RwLock::new(state),
                turn: tokio::sync::Mutex::new(()),
                producer,
                artifacts,
                broken: AtomicBool::new(false),
            }),
        })
    }

    /// Reads the state.
    pub fn read<T>(&self, read: impl FnOnce(&State) -> T) -> T {
        read(&self.inner.state.read().expect("state lock"))
    }

    /// The artifact store.
    pub fn artifacts(&self) -> &ArtifactStore {
        &self.inner.artifacts
    }

    /// A copy of the state (for comparing nodes).
    pub fn snapshot(&self) -> State {
        self.read(State::clone)
    }

    /// Makes the change `decide` returns, once the log has it. `decide`
    /// may refuse, and so may [`State::apply`]; either way nothing changes.
    pub async fn write<T>(
        &self,
        decide: impl FnOnce(&State) -> Result<(Event, T), MetaError>,
    ) -> Result<T, MetaError> {
        let pending = {
            let _turn = self.inner.turn.lock().await;
            if self.inner.broken.load(Ordering::SeqCst) {
                return Err(MetaError::internal(
                    "the metadata log refused an earlier change; restart the server to rebuild from weir.meta",
                ));
            }
            let (event, answer) = {
                let mut state = self.inner.state.write().expect("state lock");
                let (event, answer) = decide(&state)?;
                state.apply(&event)?;
                (event, answer)
            };
            let payload = serde_json::to_vec(&event).expect("events serialise");
            let key = event.subject();
            let queued = self
                .inner
                .producer
                .send(OutRecord::new(weir_core::topics::META, &payload).key(key.as_bytes()))
                .await;
            match queued {
                Ok(pending) => (pending, answer),
                Err(error) => return Err(self.break_with(error)),
            }
        };
        let (pending, answer) = pending;
        pending.await.map_err(|e| self.break_with(e))?;
        Ok(answer)
    }

    fn break_with(&self, error: impl std::fmt::Display) -> MetaError {
        self.inner.broken.store(true, Ordering::SeqCst);
        tracing::error!(%error, "the metadata log refused a change; no more writes");
        MetaError::internal(format!("appending to {}: {error}", weir_core::topics::META))
    }
}
