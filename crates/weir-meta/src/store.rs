//! The query store on disk: the state's entities in RocksDB, with the
//! offset of `weir.meta` they were saved at.
//!
//! The log stays the truth; the store saves a node (`weir server`) from
//! replaying all of it when it starts. Each entity — an experiment, a run
//! with its metric history, a model with its versions, a deployment, a
//! lease, an artifact — is a JSON value under its own key, rewritten when
//! an event changes it, so a save costs what changed since the last one,
//! not the size of the state. Every save is one atomic write batch that
//! also records the position: the offset of the next event, the digest
//! of the event before it, and the offsets after it that the state
//! already has (the node's own writes, applied as it made them). A node opening the store checks that
//! digest against the log (a store kept from another log, or from a log
//! that was wiped and rewritten, is dropped and rebuilt by replay), then
//! replays only what the log has after the position.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rocksdb::{DB, IteratorMode, Options, WriteBatch};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::MetaError;
use crate::state::{Entity, State};

/// Where a saved state stands in `weir.meta`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The offset of the next event to apply.
    pub next: i64,
    /// The SHA-256 (hex) of the record at `next - 1`; `None` at offset 0.
    pub last: Option<String>,
    /// Offsets from `next` on whose events the state already has: the
    /// saving node's own, applied as it wrote them, before its follower
    /// read them back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip: Vec<i64>,
}

impl Position {
    /// The start of the log.
    pub const START: Self = Self {
        next: 0,
        last: None,
        skip: Vec::new(),
    };
}

/// The digest a [`Position`] names a record by (a record without a value
/// digests as empty).
pub fn digest(payload: Option<&[u8]>) -> String {
    format!("{:x}", Sha256::digest(payload.unwrap_or_default()))
}

/// A state loaded from the store, and where in the log it stands.
#[derive(Debug)]
pub struct Saved {
    /// The state.
    pub state: State,
    /// Where it stands.
    pub position: Position,
}

/// The store: one RocksDB directory, opened by one process at a time.
pub struct Store {
    db: DB,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

const POSITION: &[u8] = b"position";

fn key(entity: &Entity) -> Vec<u8> {
    match entity {
        Entity::Experiment(id) => format!("x/{id}"),
        Entity::ExperimentRuns(id) => format!("xr/{id}"),
        Entity::Run(id) => format!("r/{id}"),
        Entity::Model(name) => format!("m/{name}"),
        Entity::Deployment(name) => format!("d/{name}"),
        Entity::Lease(key) => format!("l/{key}"),
        Entity::Artifact(path) => format!("a/{path}"),
        Entity::Records => "records".into(),
        Entity::Applied => "applied".into(),
    }
    .into_bytes()
}

fn entity(key: &str) -> Option<Entity> {
    let (kind, name) = key.split_once('/').unwrap_or((key, ""));
    Some(match kind {
        "x" => Entity::Experiment(name.parse().ok()?),
        "xr" => Entity::ExperimentRuns(name.into()),
        "r" => Entity::Run(name.into()),
        "m" => Entity::Model(name.into()),
        "d" => Entity::Deployment(name.into()),
        "l" => Entity::Lease(name.into()),
        "a" => Entity::Artifact(name.into()),
        "records" => Entity::Records,
        "applied" => Entity::Applied,
        _ => return None,
    })
}

impl Store {
    /// Opens (or creates) the store in `path`.
    pub fn open(path: &Path) -> Result<Self, MetaError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        let db = DB::open(&options, path).map_err(|e| {
            MetaError::internal(format!(
                "opening the metadata store {}: {e} (is another `weir server` using it?)",
                path.display()
            ))
        })?;
        Ok(Self {
            db,
            path: path.to_path_buf(),
        })
    }

    /// Opens the store to read it while another process (a running
    /// server) may have it open to write: what it saved by then.
    pub fn open_read_only(path: &Path) -> Result<Self, MetaError> {
        let db = DB::open_for_read_only(&Options::default(), path, false).map_err(|e| {
            MetaError::internal(format!(
                "opening the metadata store {}: {e}",
                path.display()
            ))
        })?;
        Ok(Self {
            db,
            path: path.to_path_buf(),
        })
    }

    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn failed(&self, doing: &str, error: impl std::fmt::Display) -> MetaError {
        MetaError::internal(format!(
            "{doing} the metadata store {}: {error}",
            self.path.display()
        ))
    }

    /// The saved state and its position; `None` when nothing was saved.
    pub fn load(&self) -> Result<Option<Saved>, MetaError> {
        let Some(position) = self
            .db
            .get(POSITION)
            .map_err(|e| self.failed("reading", e))?
        else {
            return Ok(None);
        };
        let position: Position =
            serde_json::from_slice(&position).map_err(|e| self.failed("reading", e))?;
        let mut state = State::default();
        for item in self.db.iterator(IteratorMode::Start) {
            let (key, value) = item.map_err(|e| self.failed("reading", e))?;
            if *key == *POSITION {
                continue;
            }
            let key = String::from_utf8_lossy(&key);
            let Some(entity) = entity(&key) else {
                return Err(self.failed("reading", format!("unknown key `{key}`")));
            };
            state
                .restore(entity, &value)
                .map_err(|e| self.failed("reading", format!("`{key}`: {e}")))?;
        }
        Ok(Some(Saved { state, position }))
    }

    /// Saves the entities `state` changed since its last save, and
    /// `position`, which must be where `state` stands in the log, in one
    /// atomic batch; returns how many entities it wrote. A failed save
    /// leaves the changes to the next one.
    pub(crate) fn save(&self, state: &mut State, position: &Position) -> Result<usize, MetaError> {
        let changed: BTreeSet<Entity> = state.take_changes();
        let mut batch = WriteBatch::default();
        for entity in &changed {
            match state.entity_json(entity) {
                Some(json) => batch.put(key(entity), json),
                None => batch.delete(key(entity)),
            }
        }
        batch.put(
            POSITION,
            serde_json::to_vec(position).expect("positions serialise"),
        );
        if let Err(error) = self.db.write(batch) {
            state.requeue_changes(changed);
            return Err(self.failed("writing", error));
        }
        Ok(changed.len())
    }

    /// Forgets everything saved.
    pub fn clear(&self) -> Result<(), MetaError> {
        let mut batch = WriteBatch::default();
        for item in self.db.iterator(IteratorMode::Start) {
            let (key, _) = item.map_err(|e| self.failed("clearing", e))?;
            batch.delete(key);
        }
        self.db.write(batch).map_err(|e| self.failed("clearing", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entity_key_reads_back_as_its_entity() {
        let entities = [
            Entity::Experiment(12),
            Entity::ExperimentRuns("12".into()),
            Entity::Run("ab12".into()),
            Entity::Model("fraud/scorer".into()),
            Entity::Deployment("fraud".into()),
            Entity::Lease("trial/ab/3".into()),
            Entity::Artifact("1/ab/artifacts/model/model.onnx".into()),
            Entity::Records,
            Entity::Applied,
        ];
        for e in entities {
            let key = String::from_utf8(key(&e)).unwrap();
            assert_eq!(entity(&key), Some(e), "{key}");
        }
        assert_eq!(entity("position"), None);
    }
}
