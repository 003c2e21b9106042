//! Per-worker state in RocksDB, and the epoch bookkeeping that makes
//! checkpoints exactly-once.
//!
//! Every operator with state has a small id. Its data lives under its own
//! prefix:
//!
//! | key | value |
//! |---|---|
//! | `s` op pane key | committed state of one (pane, key) |
//! | `p` op epoch | a sealed epoch's changes, written when the epoch ended |
//! | `d` op | the last epoch sealed (durable) |
//! | `m` op | the last epoch merged into the committed state |
//! | `o` op epoch | a source's offsets after an epoch |
//! | `w` op | an operator's own committed mark (windows emitted up to) |
//! | `t` op key | a lookup table's latest row of a key |
//! | `k` op key | committed keyed state of a custom operator ([`crate::state`]) |
//!
//! An epoch is sealed by each operator on its own (`p`, `d`); it is
//! committed once every operator of every worker has sealed it, which the
//! runtime learns from timely's frontier. Committing merges the sealed
//! changes into `s` and advances `m` in one write batch. After a crash the
//! workers agree on the last epoch all of them sealed, merge what is sealed
//! up to it, and throw away the rest; the sources restart from the offsets
//! stored with that epoch.

use std::path::Path;

use rocksdb::{DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};

use crate::DataflowError;

/// Id of an operator's state within a worker's store.
pub type OperatorId = u16;

fn key(tag: u8, op: OperatorId, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + rest.len());
    key.push(tag);
    key.extend_from_slice(&op.to_be_bytes());
    key.extend_from_slice(rest);
    key
}

/// Event times sort as unsigned big-endian with the sign bit flipped.
pub fn time_bytes(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

pub(crate) fn time_from_bytes(bytes: &[u8]) -> i64 {
    (u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")) ^ (1 << 63)) as i64
}

fn err(context: &str, error: rocksdb::Error) -> DataflowError {
    DataflowError::State(format!("{context}: {error}"))
}

/// A committed `(key, state)` pair read from an iterator.
pub type StateEntry = (Box<[u8]>, Box<[u8]>);

/// A committed `(key, state)` pair of keyed state.
pub type KeyedEntry = (Vec<u8>, Vec<u8>);

/// A committed `(pane, key, state)` triple.
pub type GroupState = (i64, Vec<u8>, Vec<u8>);

/// One worker's RocksDB.
pub struct Store {
    db: DB,
    write: WriteOptions,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.db.path())
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, DataflowError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        options.increase_parallelism(2);
        // Custom operators and joins mostly look up keys never written (a
        // new request id): a whole-key bloom filter answers those without
        // reading every level-0 file.
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        options.set_block_based_table_factory(&table);
        let db = DB::open(&options, path)
            .map_err(|e| err(&format!("opening state at {}", path.display()), e))?;
        // The write-ahead log is kept (a killed process loses nothing it
        // wrote), without an fsync per write: a crash of the process, not of
        // the machine, is what checkpoints guard against.
        let mut write = WriteOptions::default();
        write.set_sync(false);
        Ok(Self { db, write })
    }

    fn get_u64(&self, key: &[u8]) -> Result<Option<u64>, DataflowError> {
        Ok(self
            .db
            .get(key)
            .map_err(|e| err("reading state", e))?
            .map(|v| u64::from_be_bytes(v.as_slice().try_into().unwrap_or([0; 8]))))
    }

    /// The last epoch `op` sealed.
    pub fn sealed(&self, op: OperatorId) -> Result<Option<u64>, DataflowError> {
        self.get_u64(&key(b'd', op, &[]))
    }

    /// The last epoch merged into `op`'s committed state.
    pub fn committed(&self, op: OperatorId) -> Result<Option<u64>, DataflowError> {
        self.get_u64(&key(b'm', op, &[]))
    }

    /// Stores `op`'s changes of `epoch` (and, for a source, its offsets
    /// after the epoch) and marks the epoch sealed, atomically.
    pub fn seal(
        &self,
        op: OperatorId,
        epoch: u64,
        changes: Option<&[u8]>,
        offsets: Option<&[u8]>,
    ) -> Result<(), DataflowError> {
        let mut batch = WriteBatch::default();
        if let Some(changes) = changes {
            batch.put(key(b'p', op, &epoch.to_be_bytes()), changes);
        }
        if let Some(offsets) = offsets {
            batch.put(key(b'o', op, &epoch.to_be_bytes()), offsets);
        }
        batch.put(key(b'd', op, &[]), epoch.to_be_bytes());
        self.db
            .write_opt(batch, &self.write)
            .map_err(|e| err("sealing an epoch", e))
    }

    /// `op`'s sealed changes of `epoch`.
    pub fn sealed_changes(
        &self,
        op: OperatorId,
        epoch: u64,
    ) -> Result<Option<Vec<u8>>, DataflowError> {
        self.db
            .get(key(b'p', op, &epoch.to_be_bytes()))
            .map_err(|e| err("reading sealed changes", e))
    }

    /// A source's offsets after `epoch`.
    pub fn offsets(&self, op: OperatorId, epoch: u64) -> Result<Option<Vec<u8>>, DataflowError> {
        self.db
            .get(key(b'o', op, &epoch.to_be_bytes()))
            .map_err(|e| err("reading offsets", e))
    }

    /// Commits `epoch` for `op`: the caller's state writes, the removal of
    /// the epoch's sealed changes and of older offsets, and the new
    /// committed mark, in one atomic write.
    pub fn commit(
        &self,
        op: OperatorId,
        epoch: u64,
        writes: impl FnOnce(&mut StateWrites<'_>),
    ) -> Result<(), DataflowError> {
        let mut batch = WriteBatch::default();
        writes(&mut StateWrites {
            op,
            batch: &mut batch,
        });
        batch.delete(key(b'p', op, &epoch.to_be_bytes()));
        if epoch > 0 {
            batch.delete_range(
                key(b'o', op, &0_u64.to_be_bytes()),
                key(b'o', op, &epoch.to_be_bytes()),
            );
        }
        batch.put(key(b'm', op, &[]), epoch.to_be_bytes());
        self.db
            .write_opt(batch, &self.write)
            .map_err(|e| err("committing an epoch", e))
    }

    /// Forgets `op`'s sealed epochs after `epoch` (they never committed).
    pub fn discard_after(&self, op: OperatorId, epoch: Option<u64>) -> Result<(), DataflowError> {
        let from = epoch.map_or(0, |e| e + 1);
        let mut batch = WriteBatch::default();
        for tag in [b'p', b'o'] {
            batch.delete_range(
                key(tag, op, &from.to_be_bytes()),
                key(tag, op, &u64::MAX.to_be_bytes()),
            );
        }
        match epoch {
            Some(epoch) => batch.put(key(b'd', op, &[]), epoch.to_be_bytes()),
            None => batch.delete(key(b'd', op, &[])),
        }
        self.db
            .write_opt(batch, &self.write)
            .map_err(|e| err("discarding uncommitted epochs", e))
    }

    /// Forgets everything of `op` (a job started afresh).
    pub fn reset(&self, op: OperatorId) -> Result<(), DataflowError> {
        let mut batch = WriteBatch::default();
        for tag in [b's', b'p', b'o', b'd', b'm', b'w', b't', b'k'] {
            batch.delete_range(key(tag, op, &[]), key(tag, op + 1, &[]));
        }
        self.db
            .write_opt(batch, &self.write)
            .map_err(|e| err("resetting state", e))
    }

    /// The operator's committed mark, set with [`StateWrites::set_mark`].
    pub fn mark(&self, op: OperatorId) -> Result<Option<Vec<u8>>, DataflowError> {
        self.db
            .get(key(b'w', op, &[]))
            .map_err(|e| err("reading a mark", e))
    }

    /// Committed states of `(pane, key)` pairs (`None` where absent).
    pub fn states(
        &self,
        op: OperatorId,
        groups: &[(i64, &[u8])],
    ) -> Result<Vec<Option<Vec<u8>>>, DataflowError> {
        let keys: Vec<Vec<u8>> = groups
            .iter()
            .map(|(pane, k)| state_key(op, *pane, k))
            .collect();
        self.db
            .multi_get(&keys)
            .into_iter()
            .map(|r| r.map_err(|e| err("reading state", e)))
            .collect()
    }

    /// Committed `(key, state)` pairs of one pane, in key order, read lazily.
    pub fn pane_iter(
        &self,
        op: OperatorId,
        pane: i64,
    ) -> impl Iterator<Item = Result<StateEntry, DataflowError>> + '_ {
        let prefix = key(b's', op, &time_bytes(pane));
        let skip = prefix.len();
        self.db
            .iterator(IteratorMode::From(&prefix, Direction::Forward))
            .map(|item| item.map_err(|e| err("scanning state", e)))
            .take_while(move |item| item.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
            .map(move |item| item.map(|(k, v)| (k[skip..].into(), v)))
    }

    /// Committed `(pane, key, state)` triples with panes in `[from, to)`.
    pub fn states_between(
        &self,
        op: OperatorId,
        from: i64,
        to: i64,
    ) -> Result<Vec<GroupState>, DataflowError> {
        let start = key(b's', op, &time_bytes(from));
        let end = key(b's', op, &time_bytes(to));
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(&start, Direction::Forward))
        {
            let (k, v) = item.map_err(|e| err("scanning state", e))?;
            if k.as_ref() >= end.as_slice() {
                break;
            }
            out.push((time_from_bytes(&k[3..11]), k[11..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Pane starts with committed state in `[from, to)`, in order.
    pub fn panes_between(
        &self,
        op: OperatorId,
        from: i64,
        to: i64,
    ) -> Result<Vec<i64>, DataflowError> {
        let start = key(b's', op, &time_bytes(from));
        let end = key(b's', op, &time_bytes(to));
        let mut panes = Vec::new();
        let mut iter = self.db.raw_iterator();
        iter.seek(&start);
        while iter.valid() {
            let k = iter.key().expect("valid iterator has a key");
            if k >= end.as_slice() {
                break;
            }
            let pane = time_from_bytes(&k[3..11]);
            panes.push(pane);
            // Skip the rest of this pane.
            iter.seek(key(b's', op, &time_bytes(pane + 1)));
        }
        iter.status().map_err(|e| err("scanning panes", e))?;
        Ok(panes)
    }
}

impl Store {
    /// Sets (`Some`) or deletes (`None`) table rows of `op`, in one write.
    pub fn put_table_rows<'a>(
        &self,
        op: OperatorId,
        rows: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> Result<(), DataflowError> {
        let mut batch = WriteBatch::default();
        for (k, row) in rows {
            match row {
                Some(row) => batch.put(key(b't', op, k), row),
                None => batch.delete(key(b't', op, k)),
            }
        }
        self.db
            .write_opt(batch, &self.write)
            .map_err(|e| err("writing a table", e))
    }

    /// Table rows of `op` for `keys` (`None` where absent).
    pub fn table_rows(
        &self,
        op: OperatorId,
        keys: impl IntoIterator<Item = impl AsRef<[u8]>>,
    ) -> Result<Vec<Option<Vec<u8>>>, DataflowError> {
        let keys: Vec<Vec<u8>> = keys
            .into_iter()
            .map(|k| key(b't', op, k.as_ref()))
            .collect();
        self.db
            .multi_get(&keys)
            .into_iter()
            .map(|r| r.map_err(|e| err("reading a table", e)))
            .collect()
    }
}

impl Store {
    /// Committed keyed state of `op` under `k`.
    pub fn keyed(&self, op: OperatorId, k: &[u8]) -> Result<Option<Vec<u8>>, DataflowError> {
        self.db
            .get(key(b'k', op, k))
            .map_err(|e| err("reading keyed state", e))
    }

    /// Committed keyed state of `op` under keys starting with `prefix`, in
    /// key order.
    pub fn keyed_prefix(
        &self,
        op: OperatorId,
        prefix: &[u8],
    ) -> Result<Vec<KeyedEntry>, DataflowError> {
        let start = key(b'k', op, prefix);
        let skip = 3;
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(&start, Direction::Forward))
        {
            let (k, v) = item.map_err(|e| err("scanning keyed state", e))?;
            if !k.starts_with(&start) {
                break;
            }
            out.push((k[skip..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Every operator's committed state, by its stored key: aggregate
    /// states (`s`), lookup tables (`t`) and keyed state (`k`), without the
    /// epoch bookkeeping. Two runs that read the same input to the same
    /// offsets hold the same entries, however often either was restarted.
    pub fn committed_state(&self) -> Result<Vec<KeyedEntry>, DataflowError> {
        let mut out = Vec::new();
        for tag in [b's', b't', b'k'] {
            for item in self
                .db
                .iterator(IteratorMode::From(&[tag], Direction::Forward))
            {
                let (k, v) = item.map_err(|e| err("scanning state", e))?;
                if k.first() != Some(&tag) {
                    break;
                }
                out.push((k.to_vec(), v.to_vec()));
            }
        }
        Ok(out)
    }
}

fn state_key(op: OperatorId, pane: i64, group: &[u8]) -> Vec<u8> {
    let mut rest = Vec::with_capacity(8 + group.len());
    rest.extend_from_slice(&time_bytes(pane));
    rest.extend_from_slice(group);
    key(b's', op, &rest)
}

/// State changes of one commit.
pub struct StateWrites<'a> {
    op: OperatorId,
    batch: &'a mut WriteBatch,
}

impl StateWrites<'_> {
    /// Sets the state of `(pane, key)`.
    pub fn put(&mut self, pane: i64, group: &[u8], state: &[u8]) {
        self.batch.put(state_key(self.op, pane, group), state);
    }

    /// Sets the operator's mark (committed with the state).
    pub fn set_mark(&mut self, mark: &[u8]) {
        self.batch.put(key(b'w', self.op, &[]), mark);
    }

    /// Removes the state of one `(pane, key)`.
    pub fn delete(&mut self, pane: i64, group: &[u8]) {
        self.batch.delete(state_key(self.op, pane, group));
    }

    /// Sets keyed state (see [`Store::keyed`]).
    pub fn put_keyed(&mut self, k: &[u8], state: &[u8]) {
        self.batch.put(key(b'k', self.op, k), state);
    }

    /// Removes keyed state.
    pub fn delete_keyed(&mut self, k: &[u8]) {
        self.batch.delete(key(b'k', self.op, k));
    }

    /// Removes every key's state of a pane.
    pub fn delete_pane(&mut self, pane: i64) {
        self.batch.delete_range(
            key(b's', self.op, &time_bytes(pane)),
            key(b's', self.op, &time_bytes(pane + 1)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_seal_commit_and_discard() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.sealed(1).unwrap(), None);
        store
            .seal(1, 1, Some(b"changes-1"), Some(b"offsets-1"))
            .unwrap();
        store
            .seal(1, 2, Some(b"changes-2"), Some(b"offsets-2"))
            .unwrap();
        assert_eq!(store.sealed(1).unwrap(), Some(2));
        store
            .commit(1, 1, |w| {
                w.put(-5, b"k1", b"s1");
                w.put(10, b"k2", b"s2");
                w.put(10, b"k3", b"s3");
            })
            .unwrap();
        assert_eq!(store.committed(1).unwrap(), Some(1));
        assert_eq!(store.sealed_changes(1, 1).unwrap(), None);
        assert_eq!(
            store.offsets(1, 1).unwrap().as_deref(),
            Some(&b"offsets-1"[..])
        );
        assert_eq!(store.panes_between(1, -100, 100).unwrap(), vec![-5, 10]);
        assert_eq!(store.pane_iter(1, 10).count(), 2);
        let got = store.states(1, &[(10, b"k3"), (10, b"nope")]).unwrap();
        assert_eq!(got, vec![Some(b"s3".to_vec()), None]);

        store.discard_after(1, Some(1)).unwrap();
        assert_eq!(store.sealed(1).unwrap(), Some(1));
        assert_eq!(store.sealed_changes(1, 2).unwrap(), None);
        store.commit(1, 2, |w| w.delete_pane(10)).unwrap();
        assert_eq!(store.panes_between(1, -100, 100).unwrap(), vec![-5]);
        assert_eq!(store.offsets(1, 1).unwrap(), None, "older offsets go");
    }
}
