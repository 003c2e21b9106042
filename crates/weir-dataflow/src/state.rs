//! Keyed state of custom operators ([`crate::operator`]): values, maps,
//! lists and event-time timers under a name and a key, in RocksDB, sealed
//! and committed with the job's epochs.
//!
//! ```text
//!  writes ─▶ open layer (epoch e) ──seal──▶ sealed layers (memory + RocksDB `p`) ──commit──▶ RocksDB `k`
//! ```
//!
//! Reads look at the open layer, then the sealed layers newest first, then
//! the committed state. The runtime hands an operator its input one epoch
//! after another, so the newest epoch holds the newest write. After a crash
//! the layers sealed up to the epoch every worker sealed are committed and
//! later ones forgotten, as for every other operator ([`crate::store`]).
//!
//! Timers are kept in state too (so they checkpoint with it) and mirrored
//! in memory, ordered by time, to find the ones due at a watermark.

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::rc::Rc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::DataflowError;
use crate::store::{KeyedEntry, OperatorId, Store, time_bytes};

/// Changes of one epoch: a key's new value, or `None` where it was removed.
/// Ordered, so that a commit writes RocksDB in key order.
type Layer = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The state name timers are kept under (no operator's name starts with a
/// NUL).
const TIMERS: &str = "\0timers";

/// `len(name) name len(key) key sub`: one name's keys sort together, and
/// one key's map entries after its prefix.
fn state_key(name: &str, key: &[u8], sub: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + name.len() + key.len() + sub.len());
    out.push(u8::try_from(name.len()).expect("state names are under 256 bytes"));
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(sub);
    out
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, DataflowError> {
    bincode::serialize(value).map_err(|e| DataflowError::State(format!("encoding state: {e}")))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DataflowError> {
    bincode::deserialize(bytes).map_err(|e| DataflowError::State(format!("decoding state: {e}")))
}

/// One worker's keyed state of one operator.
#[derive(Debug)]
pub struct KeyedState {
    op: OperatorId,
    store: Rc<Store>,
    open_epoch: u64,
    open: Layer,
    sealed_through: u64,
    sealed: BTreeMap<u64, Layer>,
    timers: BTreeSet<(i64, Vec<u8>)>,
}

impl KeyedState {
    /// Restores `op`'s state after a (re)start: commits what was sealed up
    /// to `committed` (the last epoch every worker sealed) and forgets the
    /// rest; `None` starts afresh.
    pub(crate) fn recover(
        op: OperatorId,
        store: Rc<Store>,
        committed: Option<u64>,
    ) -> Result<Self, DataflowError> {
        let mut state = Self {
            op,
            store,
            open_epoch: committed.map_or(1, |e| e + 1),
            open: Layer::new(),
            sealed_through: committed.unwrap_or(0),
            sealed: BTreeMap::new(),
            timers: BTreeSet::new(),
        };
        let Some(committed) = committed else {
            state.store.reset(op)?;
            return Ok(state);
        };
        let first = state.store.committed(op)?.map_or(0, |m| m + 1);
        for epoch in first..=committed {
            state.commit(epoch)?;
        }
        state.store.discard_after(op, Some(committed))?;
        let prefix = state_key(TIMERS, &[], &[]);
        // The timers' prefix without the key length: every key's timers.
        let prefix = &prefix[..prefix.len() - 4];
        for (k, _) in state.store.keyed_prefix(op, prefix)? {
            let rest = &k[prefix.len()..];
            let len = u32::from_be_bytes(rest[..4].try_into().expect("a key length")) as usize;
            let key = rest[4..4 + len].to_vec();
            let time = crate::store::time_from_bytes(&rest[4 + len..]);
            state.timers.insert((time, key));
        }
        Ok(state)
    }

    /// The last epoch sealed.
    pub(crate) fn sealed_through(&self) -> u64 {
        self.sealed_through
    }

    /// Moves writes to `epoch`, sealing the epochs before it.
    pub(crate) fn begin(&mut self, epoch: u64) -> Result<(), DataflowError> {
        if epoch > self.open_epoch {
            self.seal_through(epoch - 1)?;
        }
        Ok(())
    }

    /// Seals every epoch up to `through`: its changes become durable (not
    /// yet visible after a crash: that takes a commit).
    pub(crate) fn seal_through(&mut self, through: u64) -> Result<(), DataflowError> {
        for epoch in self.sealed_through + 1..=through {
            let layer = if epoch == self.open_epoch {
                std::mem::take(&mut self.open)
            } else {
                Layer::new()
            };
            let changes = if layer.is_empty() {
                None
            } else {
                Some(encode(&layer)?)
            };
            self.store.seal(self.op, epoch, changes.as_deref(), None)?;
            if !layer.is_empty() {
                self.sealed.insert(epoch, layer);
            }
            self.sealed_through = epoch;
        }
        self.open_epoch = self.open_epoch.max(through + 1);
        Ok(())
    }

    /// Writes `epoch`'s sealed changes into the committed state (every
    /// worker has sealed it).
    pub(crate) fn commit(&mut self, epoch: u64) -> Result<(), DataflowError> {
        let layer = match self.sealed.remove(&epoch) {
            Some(layer) => Some(layer),
            None => self
                .store
                .sealed_changes(self.op, epoch)?
                .map(|bytes| decode::<Layer>(&bytes))
                .transpose()?,
        };
        self.store.commit(self.op, epoch, |writes| {
            for (k, v) in layer.iter().flatten() {
                match v {
                    Some(v) => writes.put_keyed(k, v),
                    None => writes.delete_keyed(k),
                }
            }
        })
    }

    /// Decodes the current value of `k` (without copying it out of a layer).
    fn read<T: DeserializeOwned>(&self, k: &[u8]) -> Result<Option<T>, DataflowError> {
        let layered = std::iter::once(&self.open)
            .chain(self.sealed.values().rev())
            .find_map(|layer| layer.get(k));
        match layered {
            Some(value) => value.as_deref().map(decode).transpose(),
            None => self
                .store
                .keyed(self.op, k)?
                .as_deref()
                .map(decode)
                .transpose(),
        }
    }

    fn put(&mut self, k: Vec<u8>, v: Option<Vec<u8>>) {
        self.open.insert(k, v);
    }

    /// Current `(key, value)` pairs under `prefix`, in key order.
    fn scan(&self, prefix: &[u8]) -> Result<Vec<KeyedEntry>, DataflowError> {
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = self
            .store
            .keyed_prefix(self.op, prefix)?
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        for layer in self.sealed.values().chain(std::iter::once(&self.open)) {
            for (k, v) in layer.range(prefix.to_vec()..) {
                if !k.starts_with(prefix) {
                    break;
                }
                merged.insert(k.clone(), v.clone());
            }
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    /// Sets a timer for `key` at event time `time`.
    pub(crate) fn set_timer(&mut self, key: &[u8], time: i64) {
        self.put(state_key(TIMERS, key, &time_bytes(time)), Some(Vec::new()));
        self.timers.insert((time, key.to_vec()));
    }

    /// Removes a timer.
    pub(crate) fn delete_timer(&mut self, key: &[u8], time: i64) {
        if self.timers.remove(&(time, key.to_vec())) {
            self.put(state_key(TIMERS, key, &time_bytes(time)), None);
        }
    }

    /// Takes the timers due at `watermark` (at or before it), earliest first.
    pub(crate) fn due_timers(&mut self, watermark: i64) -> Vec<(i64, Vec<u8>)> {
        let mut due = Vec::new();
        while let Some(first) = self.timers.first() {
            if first.0 > watermark {
                break;
            }
            let (time, key) = self.timers.pop_first().expect("non-empty");
            self.put(state_key(TIMERS, &key, &time_bytes(time)), None);
            due.push((time, key));
        }
        due
    }

    /// Timers set and not yet fired.
    pub fn pending_timers(&self) -> usize {
        self.timers.len()
    }
}

/// One value per key.
pub struct ValueState<'a, T> {
    state: &'a mut KeyedState,
    name: &'a str,
    kind: PhantomData<T>,
}

impl<T: Serialize + DeserializeOwned> ValueState<'_, T> {
    /// The key's value.
    pub fn get(&self, key: &[u8]) -> Result<Option<T>, DataflowError> {
        self.state.read(&state_key(self.name, key, &[]))
    }

    /// Sets the key's value.
    pub fn set(&mut self, key: &[u8], value: &T) -> Result<(), DataflowError> {
        let bytes = encode(value)?;
        self.state.put(state_key(self.name, key, &[]), Some(bytes));
        Ok(())
    }

    /// Removes the key's value.
    pub fn clear(&mut self, key: &[u8]) {
        self.state.put(state_key(self.name, key, &[]), None);
    }
}

/// A map per key.
pub struct MapState<'a, K, V> {
    state: &'a mut KeyedState,
    name: &'a str,
    kind: PhantomData<(K, V)>,
}

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> MapState<'_, K, V> {
    fn entry_key(&self, key: &[u8], entry: &K) -> Result<Vec<u8>, DataflowError> {
        Ok(state_key(self.name, key, &encode(entry)?))
    }

    /// The value of `entry` in the key's map.
    pub fn get(&self, key: &[u8], entry: &K) -> Result<Option<V>, DataflowError> {
        self.state.read(&self.entry_key(key, entry)?)
    }

    /// Sets `entry` in the key's map.
    pub fn insert(&mut self, key: &[u8], entry: &K, value: &V) -> Result<(), DataflowError> {
        let k = self.entry_key(key, entry)?;
        self.state.put(k, Some(encode(value)?));
        Ok(())
    }

    /// Removes `entry` from the key's map.
    pub fn remove(&mut self, key: &[u8], entry: &K) -> Result<(), DataflowError> {
        let k = self.entry_key(key, entry)?;
        self.state.put(k, None);
        Ok(())
    }

    /// The key's entries, in the order of their encoded bytes.
    pub fn entries(&self, key: &[u8]) -> Result<Vec<(K, V)>, DataflowError> {
        let prefix = state_key(self.name, key, &[]);
        self.state
            .scan(&prefix)?
            .into_iter()
            .map(|(k, v)| Ok((decode(&k[prefix.len()..])?, decode(&v)?)))
            .collect()
    }

    /// Removes the key's whole map.
    pub fn clear(&mut self, key: &[u8]) -> Result<(), DataflowError> {
        let prefix = state_key(self.name, key, &[]);
        for (k, _) in self.state.scan(&prefix)? {
            self.state.put(k, None);
        }
        Ok(())
    }
}

/// A list per key (kept as one value: for short lists).
pub struct ListState<'a, T> {
    value: ValueState<'a, Vec<T>>,
}

impl<T: Serialize + DeserializeOwned> ListState<'_, T> {
    /// The key's list (empty when none).
    pub fn get(&self, key: &[u8]) -> Result<Vec<T>, DataflowError> {
        Ok(self.value.get(key)?.unwrap_or_default())
    }

    /// Appends to the key's list.
    pub fn push(&mut self, key: &[u8], item: T) -> Result<(), DataflowError> {
        let mut list = self.get(key)?;
        list.push(item);
        self.value.set(key, &list)
    }

    /// Replaces the key's list.
    pub fn set(&mut self, key: &[u8], list: &Vec<T>) -> Result<(), DataflowError> {
        self.value.set(key, list)
    }

    /// Removes the key's list.
    pub fn clear(&mut self, key: &[u8]) {
        self.value.clear(key);
    }
}

impl KeyedState {
    /// A value per key, under `name`.
    pub fn value<'a, T>(&'a mut self, name: &'a str) -> ValueState<'a, T> {
        ValueState {
            state: self,
            name,
            kind: PhantomData,
        }
    }

    /// A map per key, under `name`.
    pub fn map<'a, K, V>(&'a mut self, name: &'a str) -> MapState<'a, K, V> {
        MapState {
            state: self,
            name,
            kind: PhantomData,
        }
    }

    /// A list per key, under `name`.
    pub fn list<'a, T>(&'a mut self, name: &'a str) -> ListState<'a, T> {
        ListState {
            value: self.value(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_see_the_newest_write_and_restarts_see_the_committed_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Rc::new(Store::open(dir.path()).unwrap());
        let mut state = KeyedState::recover(7, store.clone(), None).unwrap();
        state.value::<u32>("n").set(b"a", &1).unwrap();
        state
            .map::<String, f64>("m")
            .insert(b"a", &"x".into(), &1.5)
            .unwrap();
        state
            .map::<String, f64>("m")
            .insert(b"a", &"y".into(), &2.5)
            .unwrap();
        state.set_timer(b"a", 100);
        state.list::<u8>("l").push(b"a", 1).unwrap();
        state.begin(2).unwrap(); // seals epoch 1
        state.list::<u8>("l").push(b"a", 2).unwrap();
        assert_eq!(state.list::<u8>("l").get(b"a").unwrap(), vec![1, 2]);
        state.value::<u32>("n").set(b"a", &2).unwrap();
        state
            .map::<String, f64>("m")
            .remove(b"a", &"x".into())
            .unwrap();
        assert_eq!(state.value::<u32>("n").get(b"a").unwrap(), Some(2));
        assert_eq!(
            state.map::<String, f64>("m").entries(b"a").unwrap(),
            vec![("y".to_string(), 2.5)]
        );
        state.commit(1).unwrap();
        state.seal_through(2).unwrap(); // sealed, never committed

        // A restart at epoch 1 sees epoch 1's writes and not epoch 2's.
        drop(state);
        let mut state = KeyedState::recover(7, store, Some(1)).unwrap();
        assert_eq!(state.value::<u32>("n").get(b"a").unwrap(), Some(1));
        assert_eq!(
            state.map::<String, f64>("m").entries(b"a").unwrap().len(),
            2
        );
        assert_eq!(state.value::<u32>("n").get(b"b").unwrap(), None);
        assert_eq!(state.list::<u8>("l").get(b"a").unwrap(), vec![1]);
        assert_eq!(state.due_timers(99), vec![]);
        assert_eq!(state.due_timers(100), vec![(100, b"a".to_vec())]);
        assert_eq!(state.pending_timers(), 0);
    }
}
