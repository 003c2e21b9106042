//! The online store: the latest value of every feature view per entity, in
//! RocksDB, for low-latency look-ups by serving.
//!
//! It consumes the views' topics (`weir.features.<view>.v<N>`): each
//! record is a window's result, or, for a view without a window, a row
//! timed by its event time. The store keeps an entity's rows by their time
//! (`window_end`, or the event time); between records of the same time (a
//! view writes a window again after a restart, or on every update), the
//! one created last when the view declares a created timestamp, else the
//! one at the later offset. An entity's records share a key, so they are
//! in one partition and their offsets compare. The rows and the offsets they were read up
//! to are written in one RocksDB write batch, so a restart goes on exactly
//! where it was, and reading any part of the topic again changes nothing.
//!
//! A look-up as of `now` answers with the entity's latest window that has
//! **ended** by `now` — what a training snapshot takes for a row at `now`
//! (the latest feature row with event time ≤ its time), so serving and
//! training see the same values. A view that emits updates writes windows
//! that end in the future (a 1 h window every 5 min has 12 open at once,
//! the furthest holding only the last 5 minutes): they wait in the store
//! until they end. Windows more than a day older than an entity's newest
//! one are dropped.
//!
//! | key | value |
//! |---|---|
//! | `r` view `\0` entity `\0` window end (8 bytes, ordered) | offset (8 bytes), then the row as JSON |
//! | `o` topic `\0` partition | the next offset to read |
//!
//! A look-up of an entity with no window ended by `now` gives `null` and
//! `NOT_FOUND`; one whose window is older than the view's TTL gives `null`
//! and `OUTSIDE_MAX_AGE` — never an error.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use rocksdb::{DB, Options, WriteBatch};
use serde::Serialize;
use serde_json::Value as Json;

use weir_catalog::ViewVersion;

use crate::FeaturesError;

/// What a look-up found for one entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// A row, within the TTL.
    Present,
    /// No row for the entity.
    NotFound,
    /// The row is older than the view's TTL.
    OutsideMaxAge,
}

/// A view as the online store serves it.
#[derive(Debug, Clone)]
pub struct OnlineView {
    /// The view's name (what look-ups ask for).
    pub name: String,
    /// The topic its rows come from.
    pub topic: String,
    /// Its entity key columns, in order.
    pub entity: Vec<String>,
    /// Its feature columns.
    pub features: Vec<String>,
    /// How long a value stays fresh (`None`: forever).
    pub ttl: Option<Duration>,
    /// The column that times each row: `window_end` for a windowed view,
    /// the event time for a view without a window.
    pub time: String,
    /// The column that orders an entity's rows with the same time (the
    /// row created last wins); without one, the row written last does.
    pub created: Option<String>,
}

impl OnlineView {
    /// A recorded view version as the online store (and a snapshot) reads
    /// it: its entity, its features, its TTL and the columns that time its
    /// rows.
    pub fn of(version: &ViewVersion) -> Result<Self, FeaturesError> {
        Ok(Self {
            name: version.name.clone(),
            topic: version.topic.clone(),
            entity: version.header.entity.clone(),
            features: version.features(),
            ttl: version
                .header
                .ttl
                .as_deref()
                .map(weir_dataflow::spec::parse_duration)
                .transpose()
                .map_err(|message| FeaturesError::View {
                    view: version.name.clone(),
                    message: format!("ttl: {message}"),
                })?,
            time: version.feature_time().to_string(),
            created: version.header.created_timestamp.clone(),
        })
    }

    /// How a row ranks among its entity's rows of the same time: by its
    /// created time (when the view has one), then by offset.
    fn rank(&self, offset: i64, row: &Json) -> Rank {
        let created = self
            .created
            .as_ref()
            .and_then(|column| row.get(column))
            .and_then(event_millis)
            .unwrap_or(i64::MIN);
        (created, offset)
    }
}

/// A row's rank among rows of the same time: `(created ms, offset)`, the
/// last wins.
type Rank = (i64, i64);

/// One entity's values of the features asked for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Found {
    /// The values, in the order asked (`null` unless present).
    pub values: Vec<Json>,
    /// The row's event time (its window's end, ms), if present.
    pub event_time: Option<i64>,
    /// Whether it was found and fresh.
    pub status: Status,
}

/// The online store.
pub struct OnlineStore {
    db: DB,
}

impl std::fmt::Debug for OnlineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnlineStore")
            .field("path", &self.db.path())
            .finish()
    }
}

fn state(error: impl std::fmt::Display) -> FeaturesError {
    FeaturesError::Online(error.to_string())
}

/// The text of an entity key value: strings as they are, numbers and
/// booleans as JSON writes them.
pub fn key_text(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn row_key(view: &str, entity: &[String]) -> Vec<u8> {
    let mut key =
        Vec::with_capacity(2 + view.len() + entity.iter().map(|e| e.len() + 1).sum::<usize>());
    key.push(b'r');
    key.extend_from_slice(view.as_bytes());
    key.push(0);
    for (i, part) in entity.iter().enumerate() {
        if i > 0 {
            key.push(0x1f);
        }
        key.extend_from_slice(part.as_bytes());
    }
    key
}

fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut key = vec![b'o'];
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

/// Milliseconds of a window bound as the views write it: an RFC 3339 time
/// (`2023-11-14T22:13:20`, UTC when it has no zone) or milliseconds.
pub fn event_millis(value: &Json) -> Option<i64> {
    match value {
        Json::Number(n) => n.as_i64(),
        Json::String(text) => arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(text)
            .ok()
            .map(|ns| ns / 1_000_000),
        _ => None,
    }
}

/// A time (ms) in RFC 3339, UTC, as Feast writes timestamps (the epoch
/// when there is none).
pub fn rfc3339(ms: Option<i64>) -> String {
    chrono::DateTime::from_timestamp_millis(ms.unwrap_or(0))
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// How long an entity's windows are kept behind its newest one.
const KEEP_BEHIND_MS: i64 = 86_400_000;

/// The key of an entity's window ending at `end`: the entity's row key,
/// `\0`, and `end` with its sign bit flipped, so keys sort by time.
fn window_key(prefix: &[u8], end: i64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 9);
    key.extend_from_slice(prefix);
    key.push(0);
    key.extend_from_slice(&((end as u64) ^ (1 << 63)).to_be_bytes());
    key
}

/// The window end a window key ends with.
fn window_end(key: &[u8]) -> Option<i64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some((u64::from_be_bytes(tail) ^ (1 << 63)) as i64)
}

/// The offset a stored window starts with.
fn stored_offset(bytes: &[u8]) -> Result<i64, FeaturesError> {
    bytes
        .get(0..8)
        .and_then(|b| b.try_into().ok())
        .map(i64::from_be_bytes)
        .ok_or_else(|| state("a corrupt row"))
}

impl OnlineStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, FeaturesError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        let db = DB::open(&options, path).map_err(|e| state(format!("{}: {e}", path.display())))?;
        Ok(Self { db })
    }

    /// The next offset to read of a topic's partition.
    pub fn offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, FeaturesError> {
        Ok(self
            .db
            .get(offset_key(topic, partition))
            .map_err(state)?
            .map(|v| i64::from_be_bytes(v.as_slice().try_into().unwrap_or([0; 8]))))
    }

    /// Applies records of `view`'s topic (`(partition, offset, row)`):
    /// each row replaces its entity's unless that one is later; the
    /// offsets go with them. Returns the rows kept.
    pub fn ingest(
        &self,
        view: &OnlineView,
        records: &[(i32, i64, Json)],
    ) -> Result<usize, FeaturesError> {
        // Per (entity, time), the record that ranks last; per entity, its
        // newest time.
        let mut latest: HashMap<Vec<u8>, (Rank, i64, &Json)> = HashMap::new();
        let mut newest: HashMap<Vec<u8>, i64> = HashMap::new();
        let mut next: HashMap<i32, i64> = HashMap::new();
        for (partition, offset, row) in records {
            let next = next.entry(*partition).or_default();
            *next = (*next).max(offset + 1);
            let entity: Option<Vec<String>> = view
                .entity
                .iter()
                .map(|k| row.get(k).filter(|v| !v.is_null()).map(key_text))
                .collect();
            let (Some(entity), Some(end)) = (entity, row.get(&view.time).and_then(event_millis))
            else {
                continue; // not a row of this view
            };
            let prefix = row_key(&view.name, &entity);
            let newest = newest.entry(prefix.clone()).or_insert(end);
            *newest = (*newest).max(end);
            let rank = view.rank(*offset, row);
            let entry = latest
                .entry(window_key(&prefix, end))
                .or_insert((rank, *offset, row));
            if rank > entry.0 {
                *entry = (rank, *offset, row);
            }
        }
        let keys: Vec<&Vec<u8>> = latest.keys().collect();
        let stored = self.db.multi_get(&keys);
        let mut batch = WriteBatch::default();
        let mut kept = 0;
        for (key, stored) in keys.iter().zip(stored) {
            let (rank, offset, row) = latest[*key];
            let newer = match stored.map_err(state)? {
                Some(bytes) => {
                    let stored_offset = stored_offset(&bytes)?;
                    let stored_row: Json = serde_json::from_slice(&bytes[8..]).map_err(state)?;
                    view.rank(stored_offset, &stored_row) < rank
                }
                None => true,
            };
            if newer {
                let mut value = Vec::with_capacity(64);
                value.extend(offset.to_be_bytes());
                value.extend(serde_json::to_vec(row).expect("JSON serializes"));
                batch.put(key, value);
                kept += 1;
            }
        }
        for (prefix, end) in newest {
            // No look-up can want these: a newer window ended before them.
            batch.delete_range(
                window_key(&prefix, i64::MIN),
                window_key(&prefix, end - KEEP_BEHIND_MS),
            );
        }
        for (partition, offset) in next {
            // Offsets only move forward (a replay of old records leaves them).
            if self
                .offset(&view.topic, partition)?
                .is_none_or(|stored| stored < offset)
            {
                batch.put(offset_key(&view.topic, partition), offset.to_be_bytes());
            }
        }
        self.db.write(batch).map_err(state)?;
        Ok(kept)
    }

    /// The `features` of `view` for each entity (its key values in the
    /// view's entity order), as of `now` (ms) for the TTL.
    pub fn get(
        &self,
        view: &OnlineView,
        entities: &[Vec<String>],
        features: &[String],
        now: i64,
    ) -> Result<Vec<Found>, FeaturesError> {
        for feature in features {
            if !view.features.contains(feature) {
                return Err(FeaturesError::UnknownFeature {
                    view: view.name.clone(),
                    feature: feature.clone(),
                    known: view.features.join(", "),
                });
            }
        }
        let mut out = Vec::with_capacity(entities.len());
        // One iterator for every entity: the latest window ending by `now`
        // is the last key at or before (entity, now).
        let mut windows = self.db.raw_iterator();
        for entity in entities {
            let missing = |status| Found {
                values: vec![Json::Null; features.len()],
                event_time: None,
                status,
            };
            let prefix = row_key(&view.name, entity);
            windows.seek_for_prev(window_key(&prefix, now));
            let found = match (windows.key(), windows.value()) {
                (Some(key), Some(value))
                    if key.len() == prefix.len() + 9
                        && key.starts_with(&prefix)
                        && key[prefix.len()] == 0 =>
                {
                    window_end(key).map(|end| (end, value))
                }
                _ => None,
            };
            windows.status().map_err(state)?;
            let Some((time, value)) = found else {
                out.push(missing(Status::NotFound));
                continue;
            };
            if view
                .ttl
                .is_some_and(|ttl| now - time > ttl.as_millis() as i64)
            {
                let mut found = missing(Status::OutsideMaxAge);
                found.event_time = Some(time);
                out.push(found);
                continue;
            }
            let row: Json = serde_json::from_slice(&value[8..]).map_err(state)?;
            out.push(Found {
                values: features
                    .iter()
                    .map(|f| row.get(f).cloned().unwrap_or(Json::Null))
                    .collect(),
                event_time: Some(time),
                status: Status::Present,
            });
        }
        Ok(out)
    }
}
