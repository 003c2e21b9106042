//! The model registry as serving sees it: the metadata state, kept up to
//! date by following `weir.meta`, and the model files from the artifact
//! store. A deployment resolves its references (`name@alias`) here, and
//! hears when one of them moves.

use std::sync::{Arc, RwLock};

use futures::TryStreamExt as _;
use tokio::sync::watch;
use weir_bus::Bus;
use weir_meta::artifacts::ArtifactStore;
use weir_meta::event::ModelInfo;
use weir_meta::state::State;

use crate::ServeError;
use crate::runner::{LoadedModel, ModelSet};
use crate::spec::{Batching, DeploymentSpec};

/// A resolved reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The model's name.
    pub name: String,
    /// The version the reference points at now.
    pub version: u64,
    /// Its model file.
    pub info: ModelInfo,
}

/// The followed registry.
pub struct Registry {
    state: Arc<RwLock<State>>,
    artifacts: ArtifactStore,
    changes: watch::Receiver<u64>,
    follower: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(follower) = &self.follower {
            follower.abort();
        }
    }
}

fn meta_error(e: impl std::fmt::Display) -> ServeError {
    ServeError::Internal(format!("reading {}: {e}", weir_core::topics::META))
}

impl Registry {
    /// Replays `weir.meta`, then follows it.
    pub async fn follow(bus: &Bus, artifacts: ArtifactStore) -> Result<Self, ServeError> {
        let (state, mut consumer) = weir_meta::tracker::follow(bus).await.map_err(meta_error)?;
        let applied = state.applied();
        let state = Arc::new(RwLock::new(state));
        let (notify, changes) = watch::channel(applied);
        let following = state.clone();
        let follower = tokio::spawn(async move {
            while let Ok(Some(record)) = consumer.next_raw().await {
                let Some(payload) = record.payload else {
                    continue;
                };
                let mut state = following.write().expect("state lock");
                state.apply_record(&payload);
                let _ = notify.send(state.applied());
            }
        });
        Ok(Self {
            state,
            artifacts,
            changes,
            follower: Some(follower),
        })
    }

    /// Stops following and waits until the follower's consumer is closed:
    /// call it before stopping a broker this process runs.
    pub async fn close(mut self) {
        if let Some(follower) = self.follower.take() {
            follower.abort();
            let _ = follower.await;
        }
    }

    /// Changes to watch: the count of events applied.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Reads the state.
    pub fn read<T>(&self, read: impl FnOnce(&State) -> T) -> T {
        read(&self.state.read().expect("state lock"))
    }

    /// What `reference` points at now.
    pub fn resolve(&self, reference: &str) -> Result<Resolved, ServeError> {
        self.read(|state| {
            let (model, version) = state
                .version_by_reference(reference)
                .map_err(|e| ServeError::NotFound(e.to_string()))?;
            let info = version.model.clone().ok_or_else(|| {
                ServeError::Model(format!(
                    "{}@{} has no ONNX model Weir made (register one with `weir train --register` or `weir models register`)",
                    model.name, version.version
                ))
            })?;
            Ok(Resolved {
                name: model.name.clone(),
                version: version.version,
                info,
            })
        })
    }

    /// What each of the spec's references (members, then the stacker)
    /// points at now.
    pub fn resolve_all(&self, spec: &DeploymentSpec) -> Result<Vec<Resolved>, ServeError> {
        spec.references().iter().map(|r| self.resolve(r)).collect()
    }

    /// Loads the models `resolved` (the spec's references, in order).
    pub async fn load(
        &self,
        spec: &DeploymentSpec,
        resolved: &[Resolved],
    ) -> Result<ModelSet, ServeError> {
        let mut members = Vec::new();
        let weights = spec.members().into_iter().map(|m| m.weight).chain([1.0]);
        for (weight, resolved) in weights.zip(resolved) {
            let reference = format!("{}@{}", resolved.name, resolved.version);
            let chunks: Vec<bytes::Bytes> = self
                .artifacts
                .get(&resolved.info.sha256)
                .await
                .map_err(|e| ServeError::Model(format!("{reference}: {e}")))?
                .try_collect()
                .await
                .map_err(|e| ServeError::Model(format!("{reference}: {e}")))?;
            let bytes = chunks.concat();
            let batching: Batching = spec.batching.clone();
            let version = resolved.version;
            let loaded = tokio::task::spawn_blocking(move || {
                LoadedModel::load(reference, version, weight, &bytes, &batching)
            })
            .await
            .map_err(|e| ServeError::Internal(e.to_string()))??;
            members.push(loaded);
        }
        let stacker = if spec.stacker.is_some() {
            members.pop()
        } else {
            None
        };
        Ok(ModelSet {
            members,
            combine: spec.combine,
            stacker,
        })
    }
}
