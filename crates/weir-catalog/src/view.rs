//! Feature view versions: a view as it was applied, recorded on
//! `weir.meta` (kind `feature_view_version`) by `weir features apply`.
//!
//! A version is immutable: applying a changed definition records a new
//! version with a new topic (`weir.features.<view>.v<N>`); applying the
//! same definition again records nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `kind` of a feature view version record.
pub const KIND: &str = "feature_view_version";

/// The column a windowed view's rows are timed by: the end of the window,
/// when its value was complete.
pub const WINDOW_END: &str = "window_end";

/// The column that starts a windowed view's window.
pub const WINDOW_START: &str = "window_start";

/// A stream a view reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceDef {
    /// The topic (or `view`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Another view whose results this one reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
    /// The event time column (`window_end` for a view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
    /// How late a record may be (`5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lateness: Option<String>,
    /// When a silent partition stops holding the watermark (`30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// Column types (`string`, `long`, `double`, ...) when the topic has
    /// no registered schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<BTreeMap<String, String>>,
}

/// A table (latest row per key of a topic) a view joins with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableDef {
    /// The topic.
    pub topic: String,
    /// The key column.
    pub key: String,
    /// Column types, when the topic has no registered schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<BTreeMap<String, String>>,
}

/// When a view emits its windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmitMode {
    /// When a window closes.
    #[default]
    Close,
    /// Every checkpoint, for the windows that changed.
    Update,
}

/// A view's header: the YAML between `---` lines at the top of its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// The view's name (a topic-name fragment).
    pub name: String,
    /// What the features are.
    #[serde(default)]
    pub description: String,
    /// Who answers for them.
    #[serde(default)]
    pub owner: String,
    /// Search tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Entity key columns of the output.
    pub entity: Vec<String>,
    /// How long a value stays fresh (`2h`); none: forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// An output column that orders rows of one entity with the same event
    /// time: the row created last wins (Feast's
    /// `created_timestamp_column`). Without one, the row written last does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_timestamp: Option<String>,
    /// Streams, by the name the SQL uses.
    pub sources: BTreeMap<String, SourceDef>,
    /// Tables, by the name the SQL uses.
    #[serde(default)]
    pub tables: BTreeMap<String, TableDef>,
    /// When windows are emitted.
    #[serde(default)]
    pub emit: EmitMode,
    /// Checkpoint interval of the streaming job (`1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_interval: Option<String>,
}

/// One column of a view's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    /// Name.
    pub name: String,
    /// Arrow type, as Arrow writes it (`Int64`, `Timestamp(ms)`, ...).
    #[serde(rename = "type")]
    pub data_type: String,
    /// Whether it may be null.
    pub nullable: bool,
}

/// A recorded version of a feature view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewVersion {
    /// Always [`KIND`].
    pub kind: String,
    /// The view's name.
    pub name: String,
    /// 1, 2, ...
    pub version: u32,
    /// Content hash of header and query.
    pub hash: String,
    /// Where its results go.
    pub topic: String,
    /// The streaming job's name.
    pub job: String,
    /// The file it came from.
    pub path: String,
    /// The header.
    pub header: Header,
    /// The query.
    pub sql: String,
    /// The output columns.
    pub output: Vec<ColumnDef>,
    /// The output column that times each row: `window_end` for a windowed
    /// view, the source's event time for one without a window. (Versions
    /// recorded before this was written are windowed.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_time: Option<String>,
    /// When it was applied (ms since the epoch).
    pub applied_at: i64,
}

impl ViewVersion {
    /// The output column that times each row (its feature time).
    pub fn feature_time(&self) -> &str {
        self.feature_time.as_deref().unwrap_or(WINDOW_END)
    }

    /// The output columns that are features: neither entity keys nor the
    /// columns that time a row (the window's bounds, the event time, the
    /// created time).
    pub fn features(&self) -> Vec<String> {
        let timing = [
            Some(self.feature_time()),
            self.header.created_timestamp.as_deref(),
            (self.feature_time() == WINDOW_END).then_some(WINDOW_START),
        ];
        self.output
            .iter()
            .map(|c| c.name.clone())
            .filter(|n| !self.header.entity.contains(n) && !timing.contains(&Some(n.as_str())))
            .collect()
    }

    /// The topics it reads: its sources' and its tables'.
    pub fn source_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self
            .header
            .sources
            .values()
            .filter_map(|s| s.topic.clone())
            .collect();
        topics.extend(self.header.tables.values().map(|t| t.topic.clone()));
        topics
    }

    /// The views it reads.
    pub fn parent_views(&self) -> Vec<String> {
        self.header
            .sources
            .values()
            .filter_map(|s| s.view.clone())
            .collect()
    }
}
