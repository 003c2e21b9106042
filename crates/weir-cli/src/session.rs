//! What the training verbs work with: the connection and the workspace
//! on it, opened together and closed in order.

use weir_broker::connect::{Connection, connect};
use weir_core::Config;
use weir_train::{OpenWorkspace, Workspace};

/// An open session.
pub(crate) struct Session {
    pub(crate) connection: Connection,
    pub(crate) open: OpenWorkspace,
}

impl Session {
    pub(crate) async fn open(config: &Config) -> anyhow::Result<Self> {
        Self::on(config, connect(config).await?).await
    }

    /// The session on a connection made already.
    pub(crate) async fn on(config: &Config, connection: Connection) -> anyhow::Result<Self> {
        let open = OpenWorkspace::open(&connection.bus, &config.state_dir).await?;
        Ok(Self { connection, open })
    }

    pub(crate) fn workspace(&self) -> Workspace<'_> {
        self.open.workspace()
    }

    pub(crate) async fn close(self) {
        self.open.close().await;
        self.connection.close().await;
    }
}
