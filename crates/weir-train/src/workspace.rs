//! A [`Workspace`] opened and owned: the tracker, the datasets and a
//! scratch directory, as a process's training verbs use them.

use std::path::{Path, PathBuf};

use weir_bus::Bus;
use weir_features::datasets::Datasets;
use weir_meta::Tracker;

use crate::TrainError;
use crate::job::Workspace;

/// A tracker and the datasets opened on a bus, and a scratch directory
/// under the state directory: what the training verbs of one process use.
pub struct OpenWorkspace {
    /// Runs, artifacts and the registry.
    pub tracker: Tracker,
    /// Dataset versions.
    pub datasets: Datasets,
    scratch: PathBuf,
}

impl OpenWorkspace {
    /// Replays `weir.meta` for the tracker and the datasets at once; the
    /// tracker's query store and artifacts live under `state_dir`.
    pub async fn open(bus: &Bus, state_dir: &Path) -> Result<Self, TrainError> {
        let (tracker, datasets) = tokio::try_join!(
            async { Ok::<_, TrainError>(Tracker::open_under(bus, state_dir).await?) },
            async { Ok::<_, TrainError>(Datasets::load(bus).await?) },
        )?;
        Ok(Self {
            tracker,
            datasets,
            scratch: state_dir.join("train"),
        })
    }

    /// The workspace jobs borrow.
    pub fn workspace(&self) -> Workspace<'_> {
        Workspace {
            tracker: &self.tracker,
            datasets: &self.datasets,
            scratch: &self.scratch,
            cache: None,
        }
    }

    /// Closes the tracker (its writes are flushed).
    pub async fn close(self) {
        self.tracker.close().await;
    }
}
