//! What the training verbs work with: the bus, the tracker, the datasets
//! and a scratch directory, opened together and closed in order.

use std::path::PathBuf;

use weir_core::Config;
use weir_features::datasets::Datasets;
use weir_train::Workspace;

use weir_broker::connect::{Connection, connect};

/// An open session.
pub(crate) struct Session {
    pub(crate) connection: Connection,
    pub(crate) tracker: weir_meta::Tracker,
    datasets: Datasets,
    scratch: PathBuf,
}

impl Session {
    pub(crate) async fn open(config: &Config) -> anyhow::Result<Self> {
        Self::on(config, connect(config).await?).await
    }

    /// The session on a connection made already.
    pub(crate) async fn on(config: &Config, connection: Connection) -> anyhow::Result<Self> {
        // Both replay weir.meta: at once.
        let (tracker, datasets) = tokio::try_join!(
            async {
                anyhow::Ok(
                    weir_meta::Tracker::open_under(&connection.bus, &config.state_dir).await?,
                )
            },
            async { anyhow::Ok(Datasets::load(&connection.bus).await?) },
        )?;
        Ok(Self {
            connection,
            tracker,
            datasets,
            scratch: config.state_dir.join("train"),
        })
    }

    pub(crate) fn workspace(&self) -> Workspace<'_> {
        Workspace {
            tracker: &self.tracker,
            datasets: &self.datasets,
            scratch: &self.scratch,
            cache: None,
        }
    }

    pub(crate) async fn close(self) {
        self.tracker.close().await;
        self.connection.close().await;
    }
}
