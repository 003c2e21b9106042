//! Windowed aggregation state: one operator instance's (one worker's) share
//! of the keys, independent of timely so that it can be tested alone.
//!
//! Rows update per-**pane** partial aggregates (see [`crate::window`]) held
//! by DataFusion `GroupsAccumulator`s, one set per open epoch. Each epoch
//! moves through three places:
//!
//! ```text
//!   open layer ──seal──▶ sealed (in memory + RocksDB `p`) ──commit──▶ committed state (RocksDB `s`)
//! ```
//!
//! A window is evaluated when the watermark has passed its end and every
//! row that could belong to it is sealed: its panes' committed and sealed
//! partial states are merged (`merge_batch`) and evaluated — the same
//! accumulators and the same merge DataFusion's batch engine runs. A window
//! is evaluated in chunks of keys, reading its panes from RocksDB in key
//! order, so memory does not grow with the number of keys. Expired state is
//! deleted through the epoch in which it expired, and the "windows emitted
//! up to" mark is committed with the epoch, so that a restart emits every
//! window exactly as before.
//!
//! **Session windows** use panes as wide as the gap and keep, per (pane,
//! key), the smallest and largest event time: the events of one pane are
//! always in one session, and two consecutive panes of a key are when the
//! second's first event is less than a gap after the first's last. A
//! session closes when the watermark has passed its last event plus the gap.
//!
//! With [`Emit::OnUpdate`] every window a sealed epoch changed is emitted
//! with its value so far (an upsert by entity and window), instead of once
//! when it closes.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, Int64Array, RecordBatch, TimestampMillisecondArray, UInt32Array,
};
use arrow::compute::{cast, filter_record_batch, take};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;

use crate::DataflowError;
use crate::batch::KeyEncoder;
use crate::codec;
use crate::plan::AggregatePlan;
use crate::store::{OperatorId, Store};
use crate::window::Window;

/// Output column of a window's start.
pub const WINDOW_START: &str = "window_start";
/// Output column of a window's end.
pub const WINDOW_END: &str = "window_end";

/// Groups evaluated at once when a window closes.
const CHUNK: usize = 32_768;

/// When results are emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Emit {
    /// Once per window and key, when the watermark passes the window's end.
    #[default]
    OnClose,
    /// Every checkpoint, for each window and key it changed: the value so
    /// far (an upsert by entity and window).
    OnUpdate,
}

fn df(error: impl std::fmt::Display) -> DataflowError {
    DataflowError::Execution(error.to_string())
}

/// `(pane, key)` groups, looked up without allocating for known keys.
#[derive(Default)]
struct Groups {
    by_pane: HashMap<i64, HashMap<Vec<u8>, usize>>,
    list: Vec<(i64, Vec<u8>)>,
}

impl Groups {
    fn index(&mut self, pane: i64, key: &[u8]) -> usize {
        let keys = self.by_pane.entry(pane).or_default();
        if let Some(&index) = keys.get(key) {
            return index;
        }
        let index = self.list.len();
        keys.insert(key.to_vec(), index);
        self.list.push((pane, key.to_vec()));
        index
    }

    fn len(&self) -> usize {
        self.list.len()
    }
}

/// Smallest and largest event time of a group (session windows).
type Bounds = (i64, i64);

fn widen(a: Bounds, b: Bounds) -> Bounds {
    (a.0.min(b.0), a.1.max(b.1))
}

/// What an epoch deletes when it commits.
#[derive(Default)]
struct Deletions {
    /// Whole panes (tumbling and hopping windows).
    panes: Vec<i64>,
    /// Single `(pane, key)` groups (sessions).
    groups: Vec<(i64, Vec<u8>)>,
}

/// Partial aggregates of one open epoch.
struct Layer {
    groups: Groups,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    bounds: Vec<Bounds>,
    min_time: i64,
    deletions: Deletions,
    /// Windows ending at or before this were emitted in this epoch.
    closed_through: Option<i64>,
}

/// The partial states of a sealed epoch: one row per group, state columns
/// of every aggregate side by side.
struct Sealed {
    groups: Groups,
    states: Vec<ArrayRef>,
    bounds: Vec<Bounds>,
    deletions: Deletions,
    closed_through: Option<i64>,
}

/// Where the partial states of an output group come from.
#[derive(Default)]
struct Contributions {
    /// Committed state bytes (without bounds) and their output group.
    committed: Vec<(Vec<u8>, usize)>,
    /// Rows of sealed epochs' states and their output group.
    sealed: BTreeMap<u64, (Vec<u32>, Vec<usize>)>,
}

impl Contributions {
    fn add_sealed(&mut self, epoch: u64, row: usize, group: usize) {
        let entry = self.sealed.entry(epoch).or_default();
        entry.0.push(row as u32);
        entry.1.push(group);
    }
}

/// An output row: `(window start, window end, key)`.
type OutputGroup = (i64, i64, Vec<u8>);

/// One worker's windowed aggregation.
pub struct WindowAggregator {
    op: OperatorId,
    store: Rc<Store>,
    plan: AggregatePlan,
    window: Window,
    emit: Emit,
    time_column: usize,
    keys: KeyEncoder,
    /// State fields of each aggregate.
    state_fields: Vec<Vec<FieldRef>>,
    /// All state fields, aggregate after aggregate.
    all_state_fields: Vec<FieldRef>,
    output: SchemaRef,
    layers: BTreeMap<u64, Layer>,
    sealed: BTreeMap<u64, Sealed>,
    /// Every window ending at or before this has been emitted.
    closed_through: Option<i64>,
}

impl WindowAggregator {
    /// An aggregator for `plan` over `window`, with event time in column
    /// `time_column` of the input, its state in `store` under `op`.
    pub fn new(
        op: OperatorId,
        store: Rc<Store>,
        plan: AggregatePlan,
        window: Window,
        time_column: usize,
        emit: Emit,
    ) -> Result<Self, DataflowError> {
        if emit == Emit::OnUpdate && matches!(window, Window::Session { .. }) {
            return Err(DataflowError::Plan(
                "session windows are emitted when they close, not on every update".into(),
            ));
        }
        if emit == Emit::OnClose && window.is_global() {
            return Err(DataflowError::Plan(
                "an aggregation without a window never closes: it is emitted as it changes (emit = \"update\")".into(),
            ));
        }
        let keys = KeyEncoder::new(plan.input.clone(), plan.keys.clone()).map_err(df)?;
        let state_fields = plan
            .aggregates
            .iter()
            .map(|a| a.state_fields().map_err(df))
            .collect::<Result<Vec<_>, _>>()?;
        let all_state_fields = state_fields.iter().flatten().cloned().collect();
        Ok(Self {
            op,
            store,
            output: output_schema(&plan, &keys, window),
            plan,
            window,
            emit,
            time_column,
            keys,
            state_fields,
            all_state_fields,
            layers: BTreeMap::new(),
            sealed: BTreeMap::new(),
            closed_through: None,
        })
    }

    /// Schema of emitted results: keys, window start and end, aggregates.
    pub fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    fn is_session(&self) -> bool {
        matches!(self.window, Window::Session { .. })
    }

    fn accumulators(&self) -> Result<Vec<Box<dyn GroupsAccumulator>>, DataflowError> {
        self.plan
            .aggregates
            .iter()
            .map(|a| new_accumulator(a))
            .collect()
    }

    fn layer(&mut self, epoch: u64) -> Result<&mut Layer, DataflowError> {
        if !self.layers.contains_key(&epoch) {
            let layer = Layer {
                groups: Groups::default(),
                accumulators: self.accumulators()?,
                bounds: Vec::new(),
                min_time: i64::MAX,
                deletions: Deletions::default(),
                closed_through: None,
            };
            self.layers.insert(epoch, layer);
        }
        Ok(self.layers.get_mut(&epoch).expect("inserted above"))
    }

    /// Restores after a (re)start: commits the epochs sealed up to
    /// `committed` — the last epoch all workers sealed — and forgets later
    /// ones. `None` starts afresh.
    pub fn recover(&mut self, committed: Option<u64>) -> Result<(), DataflowError> {
        let Some(global) = committed else {
            return self.store.reset(self.op);
        };
        let first = self.store.committed(self.op)?.map_or(0, |m| m + 1);
        for epoch in first..=global {
            if let Some(bytes) = self.store.sealed_changes(self.op, epoch)? {
                let sealed = self.decode_sealed(&bytes)?;
                self.sealed.insert(epoch, sealed);
            }
            self.commit(epoch)?;
        }
        self.store.discard_after(self.op, Some(global))?;
        self.closed_through = match self.store.mark(self.op)? {
            None => None,
            Some(bytes) => {
                Some(i64::from_be_bytes(bytes.as_slice().try_into().map_err(
                    |_| DataflowError::State("corrupt window mark".into()),
                )?))
            }
        };
        Ok(())
    }

    /// Adds a batch of rows that arrived in `epoch`.
    pub fn update(&mut self, epoch: u64, batch: &RecordBatch) -> Result<(), DataflowError> {
        let batch = match &self.plan.filter {
            Some(filter) => {
                let keep = filter
                    .evaluate(batch)
                    .and_then(|v| v.into_array(batch.num_rows()))
                    .map_err(df)?;
                let keep = keep
                    .as_any()
                    .downcast_ref::<arrow::array::BooleanArray>()
                    .ok_or_else(|| DataflowError::Plan("the filter is not a boolean".into()))?;
                filter_record_batch(batch, keep).map_err(df)?
            }
            None => batch.clone(),
        };
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let times = event_times(batch.column(self.time_column))?;
        let rows = self.keys.rows(&batch).map_err(df)?;
        let args = self
            .plan
            .aggregates
            .iter()
            .map(|aggregate| {
                aggregate
                    .expressions()
                    .iter()
                    .map(|e| {
                        e.evaluate(&batch)
                            .and_then(|v| v.into_array(batch.num_rows()))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(df)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (window, session) = (self.window, self.is_session());
        let layer = self.layer(epoch)?;
        let mut group_indices = Vec::with_capacity(batch.num_rows());
        for (i, &t) in times.iter().enumerate() {
            let group = layer.groups.index(window.pane_of(t), rows.row(i).as_ref());
            if session {
                if group == layer.bounds.len() {
                    layer.bounds.push((t, t));
                } else {
                    layer.bounds[group] = widen(layer.bounds[group], (t, t));
                }
            }
            group_indices.push(group);
            layer.min_time = layer.min_time.min(t);
        }
        let total = layer.groups.len();
        for (accumulator, args) in layer.accumulators.iter_mut().zip(&args) {
            accumulator
                .update_batch(args, &group_indices, None, total)
                .map_err(df)?;
        }
        Ok(())
    }

    /// Seals `epoch`: its partial states become immutable and durable.
    /// With [`Emit::OnUpdate`], returns the current value of every window
    /// the epoch changed.
    pub fn seal(&mut self, epoch: u64) -> Result<Option<RecordBatch>, DataflowError> {
        let sealed = match self.layers.remove(&epoch) {
            Some(mut layer) => {
                let mut states = Vec::new();
                // An accumulator without groups may return no arrays at all.
                if layer.groups.len() > 0 {
                    for accumulator in &mut layer.accumulators {
                        states.extend(accumulator.state(EmitTo::All).map_err(df)?);
                    }
                }
                Sealed {
                    groups: layer.groups,
                    states,
                    bounds: layer.bounds,
                    deletions: layer.deletions,
                    closed_through: layer.closed_through,
                }
            }
            None => Sealed {
                groups: Groups::default(),
                states: Vec::new(),
                bounds: Vec::new(),
                deletions: Deletions::default(),
                closed_through: None,
            },
        };
        let bytes = self.encode_sealed(&sealed)?;
        self.store.seal(self.op, epoch, Some(&bytes), None)?;
        let touched: Vec<(i64, Vec<u8>)> = if self.emit == Emit::OnUpdate {
            sealed.groups.list.clone()
        } else {
            Vec::new()
        };
        self.sealed.insert(epoch, sealed);
        if touched.is_empty() {
            return Ok(None);
        }
        self.updates(&touched).map(Some)
    }

    /// The current value of every window not closed yet (update mode, after
    /// a restart: updates emitted before the crash may have been lost).
    pub fn open_windows(&self) -> Result<Vec<RecordBatch>, DataflowError> {
        if self.emit != Emit::OnUpdate {
            return Ok(Vec::new());
        }
        let low = self
            .closed_through
            .map_or(i64::MIN, |c| c.saturating_sub(self.window.size()));
        let touched: Vec<(i64, Vec<u8>)> = self
            .store
            .states_between(self.op, low, i64::MAX)?
            .into_iter()
            .map(|(pane, key, _)| (pane, key))
            .collect();
        let mut results = Vec::new();
        for chunk in touched.chunks(CHUNK) {
            results.push(self.updates(chunk)?);
        }
        Ok(results)
    }

    /// The current value of every open window holding one of `touched`.
    fn updates(&self, touched: &[(i64, Vec<u8>)]) -> Result<RecordBatch, DataflowError> {
        let after = self.closed_through.unwrap_or(i64::MIN);
        let size = self.window.size();
        let mut index: HashMap<(i64, &[u8]), usize> = HashMap::new();
        let mut groups: Vec<OutputGroup> = Vec::new();
        for (pane, key) in touched {
            for start in self.window.windows_of(*pane) {
                if start + size > after {
                    index.entry((start, key)).or_insert_with(|| {
                        groups.push((start, start + size, key.clone()));
                        groups.len() - 1
                    });
                }
            }
        }
        // Every (pane, key) the groups need, from the committed state and
        // the sealed epochs.
        let mut wanted: Vec<(i64, &[u8], usize)> = Vec::new();
        for (group, (start, _, key)) in groups.iter().enumerate() {
            for pane in self.window.panes_of_window(*start) {
                wanted.push((pane, key.as_slice(), group));
            }
        }
        let lookups: Vec<(i64, &[u8])> = wanted.iter().map(|(p, k, _)| (*p, *k)).collect();
        let mut contributions = Contributions::default();
        for (state, (_, _, group)) in self
            .store
            .states(self.op, &lookups)?
            .into_iter()
            .zip(&wanted)
        {
            if let Some(state) = state {
                contributions.committed.push((state, *group));
            }
        }
        for (epoch, sealed) in &self.sealed {
            for (pane, key, group) in &wanted {
                if let Some(row) = sealed.groups.by_pane.get(pane).and_then(|k| k.get(*key)) {
                    contributions.add_sealed(*epoch, *row, *group);
                }
            }
        }
        self.evaluate(&groups, contributions)
    }

    /// Commits `epoch` (sealed by every worker): merges its partial states
    /// into the committed state and applies its deletions.
    pub fn commit(&mut self, epoch: u64) -> Result<(), DataflowError> {
        let Some(sealed) = self.sealed.remove(&epoch) else {
            return self.store.commit(self.op, epoch, |_| {});
        };
        let groups: Vec<(i64, &[u8])> = sealed
            .groups
            .list
            .iter()
            .map(|(pane, key)| (*pane, key.as_slice()))
            .collect();
        let session = self.is_session();
        let mut merged_rows = Vec::new();
        if !groups.is_empty() {
            let existing = self.store.states(self.op, &groups)?;
            let mut accumulators = self.accumulators()?;
            let mut bounds = sealed.bounds.clone();
            let mut present = Vec::new();
            let mut stored_rows = Vec::new();
            for (i, state) in existing.iter().enumerate() {
                if let Some(state) = state {
                    let (stored_bounds, state) = split_bounds(state, session)?;
                    if let Some(b) = stored_bounds {
                        bounds[i] = widen(bounds[i], b);
                    }
                    present.push(i);
                    stored_rows.push(state);
                }
            }
            let stored = codec::decode_rows(stored_rows, &self.all_state_fields)?;
            self.merge_into(&mut accumulators, &stored, &present, groups.len())?;
            let identity: Vec<usize> = (0..groups.len()).collect();
            self.merge_into(&mut accumulators, &sealed.states, &identity, groups.len())?;
            let mut states = Vec::new();
            for accumulator in &mut accumulators {
                states.extend(accumulator.state(EmitTo::All).map_err(df)?);
            }
            for row in 0..groups.len() {
                let mut bytes = Vec::new();
                if let Some((min, max)) = bounds.get(row).filter(|_| session) {
                    bytes.extend_from_slice(&min.to_le_bytes());
                    bytes.extend_from_slice(&max.to_le_bytes());
                }
                codec::encode_row(&states, row, &mut bytes)?;
                merged_rows.push(bytes);
            }
        }
        self.store.commit(self.op, epoch, |writes| {
            for ((pane, key), state) in groups.iter().zip(&merged_rows) {
                writes.put(*pane, key, state);
            }
            for pane in &sealed.deletions.panes {
                writes.delete_pane(*pane);
            }
            for (pane, key) in &sealed.deletions.groups {
                writes.delete(*pane, key);
            }
            if let Some(mark) = sealed.closed_through {
                writes.set_mark(&mark.to_be_bytes());
            }
        })
    }

    fn merge_into(
        &self,
        accumulators: &mut [Box<dyn GroupsAccumulator>],
        states: &[ArrayRef],
        group_indices: &[usize],
        total: usize,
    ) -> Result<(), DataflowError> {
        if group_indices.is_empty() {
            return Ok(());
        }
        let mut column = 0;
        for (accumulator, fields) in accumulators.iter_mut().zip(&self.state_fields) {
            let slice = &states[column..column + fields.len()];
            accumulator
                .merge_batch(slice, group_indices, total)
                .map_err(df)?;
            column += fields.len();
        }
        Ok(())
    }

    /// The event time up to which windows can be evaluated: the watermark,
    /// held back by rows of open (unsealed) epochs.
    pub fn closable(&self, watermark: i64) -> i64 {
        self.layers
            .values()
            .map(|layer| layer.min_time)
            .fold(watermark, i64::min)
    }

    /// Evaluates every window ending at or before `limit` not yet emitted.
    /// The close belongs to `epoch`: its deletions and the new "emitted up
    /// to" mark commit with it, so `epoch` must be the latest epoch whose
    /// data the limit depends on (a restart before it commits closes those
    /// windows again). Results come in batches of at most a few tens of
    /// thousands of rows.
    pub fn close(&mut self, epoch: u64, limit: i64) -> Result<Vec<RecordBatch>, DataflowError> {
        if self.window.is_global() {
            // It never closes, not even at the end of a bounded input: a
            // later run goes on from its state.
            return Ok(Vec::new());
        }
        let after = self.closed_through.unwrap_or(i64::MIN);
        if limit <= after {
            return Ok(Vec::new());
        }
        if self.is_session() {
            // A session scan reads all open sessions: do it once per gap of
            // event time, or at the end.
            let gap = self.window.size();
            if limit != i64::MAX
                && self.closed_through.is_some()
                && limit < after.saturating_add(gap)
            {
                return Ok(Vec::new());
            }
            return self.close_sessions(epoch, after, limit);
        }
        let size = self.window.size();
        // Panes that may hold rows of the windows now closing.
        let low = after.saturating_sub(size);
        let mut panes: Vec<i64> = self.store.panes_between(self.op, low, limit)?;
        for sealed in self.sealed.values() {
            panes.extend(
                sealed
                    .groups
                    .by_pane
                    .keys()
                    .filter(|p| **p >= low && **p < limit),
            );
        }
        panes.sort_unstable();
        panes.dedup();
        let mut starts: Vec<i64> = panes
            .iter()
            .flat_map(|p| self.window.windows_of(*p))
            .filter(|s| s + size > after && s + size <= limit)
            .collect();
        starts.sort_unstable();
        starts.dedup();

        let mut results = Vec::new();
        if self.emit == Emit::OnClose {
            for &start in &starts {
                self.evaluate_window(start, &mut results)?;
            }
        }
        let expired: Vec<i64> = panes
            .into_iter()
            .filter(|p| self.window.pane_expired(*p, limit))
            .collect();
        let last_end = starts.last().map(|s| s + size);
        self.mark_closed(epoch, after, limit, last_end)?
            .deletions
            .panes
            .extend(expired);
        Ok(results)
    }

    /// Records how far windows are closed, now and in `epoch`'s layer
    /// (which the caller adds its deletions to): through `limit`, or, at
    /// the end of input (an infinite limit), through the end of the last
    /// window closed — windows after it are still to come if the input
    /// goes on in a later run.
    fn mark_closed(
        &mut self,
        epoch: u64,
        after: i64,
        limit: i64,
        last_end: Option<i64>,
    ) -> Result<&mut Layer, DataflowError> {
        let mark = if limit == i64::MAX {
            last_end.map_or(after, |end| end.max(after))
        } else {
            limit
        };
        self.closed_through = Some(mark);
        let layer = self.layer(epoch)?;
        layer.closed_through = Some(mark);
        Ok(layer)
    }

    /// Evaluates the window starting at `start`, key chunk by key chunk:
    /// its panes are read from RocksDB in key order and merged with the
    /// sealed epochs' states.
    fn evaluate_window(
        &self,
        start: i64,
        results: &mut Vec<RecordBatch>,
    ) -> Result<(), DataflowError> {
        let end = start + self.window.size();
        let panes: Vec<i64> = self.window.panes_of_window(start).collect();
        let mut committed: Vec<_> = panes
            .iter()
            .map(|p| self.store.pane_iter(self.op, *p).peekable())
            .collect();
        // Sealed rows of the window's panes, in key order.
        let mut sealed: Vec<(&[u8], u64, usize)> = Vec::new();
        for (epoch, s) in &self.sealed {
            for pane in &panes {
                if let Some(keys) = s.groups.by_pane.get(pane) {
                    sealed.extend(keys.iter().map(|(k, row)| (k.as_slice(), *epoch, *row)));
                }
            }
        }
        sealed.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut sealed = sealed.into_iter().peekable();

        let mut groups: Vec<OutputGroup> = Vec::new();
        let mut contributions = Contributions::default();
        loop {
            // The smallest key among the panes' next entries.
            let mut next: Option<Vec<u8>> = sealed.peek().map(|(k, _, _)| k.to_vec());
            for iter in &mut committed {
                match iter.peek() {
                    Some(Ok((key, _))) if next.as_deref().is_none_or(|n| key.as_ref() < n) => {
                        next = Some(key.to_vec());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) => {
                        return Err(iter.next().expect("peeked").expect_err("an error"));
                    }
                    None => {}
                }
            }
            let Some(key) = next else { break };
            let group = groups.len();
            for iter in &mut committed {
                if matches!(iter.peek(), Some(Ok((k, _))) if k.as_ref() == key.as_slice()) {
                    let (_, state) = iter.next().expect("peeked")?;
                    contributions.committed.push((state.into_vec(), group));
                }
            }
            while sealed.peek().is_some_and(|(k, _, _)| *k == key.as_slice()) {
                let (_, epoch, row) = sealed.next().expect("peeked");
                contributions.add_sealed(epoch, row, group);
            }
            groups.push((start, end, key));
            if groups.len() == CHUNK {
                results.push(self.evaluate(&groups, std::mem::take(&mut contributions))?);
                groups.clear();
            }
        }
        if !groups.is_empty() {
            results.push(self.evaluate(&groups, contributions)?);
        }
        Ok(())
    }

    /// Emits the sessions that ended at or before `limit` (and after
    /// `after`), and deletes their state.
    fn close_sessions(
        &mut self,
        epoch: u64,
        after: i64,
        limit: i64,
    ) -> Result<Vec<RecordBatch>, DataflowError> {
        let gap = self.window.size();
        // Every (pane, key) before `limit`, with its bounds and where its
        // states are: committed bytes, or rows of sealed epochs.
        #[derive(Default)]
        struct Part {
            bounds: Option<Bounds>,
            committed: Option<Vec<u8>>,
            sealed: Vec<(u64, usize)>,
        }
        let mut parts: BTreeMap<(Vec<u8>, i64), Part> = BTreeMap::new();
        for (pane, key, state) in self.store.states_between(self.op, i64::MIN, limit)? {
            let (bounds, state) = split_bounds(&state, true)?;
            let part = parts.entry((key, pane)).or_default();
            part.bounds = bounds;
            part.committed = Some(state.to_vec());
        }
        for (epoch, sealed) in &self.sealed {
            for (row, (pane, key)) in sealed.groups.list.iter().enumerate() {
                if *pane >= limit {
                    continue;
                }
                let part = parts.entry((key.clone(), *pane)).or_default();
                let b = sealed.bounds[row];
                part.bounds = Some(part.bounds.map_or(b, |a| widen(a, b)));
                part.sealed.push((*epoch, row));
            }
        }
        // Chains of a key's panes, in time order (the map is sorted by key,
        // then pane).
        let mut groups: Vec<OutputGroup> = Vec::new();
        let mut contributions = Contributions::default();
        let mut deleted: Vec<(i64, Vec<u8>)> = Vec::new();
        let mut results = Vec::new();
        let mut results_end: Option<i64> = None;
        let mut chain: Vec<(i64, Part)> = Vec::new();
        let mut chain_key: Option<Vec<u8>> = None;
        let mut chain_bounds: Bounds = (0, 0);
        let flush_chain = |key: &[u8],
                           chain: &mut Vec<(i64, Part)>,
                           bounds: Bounds,
                           groups: &mut Vec<OutputGroup>,
                           contributions: &mut Contributions,
                           deleted: &mut Vec<(i64, Vec<u8>)>| {
            let end = bounds.1 + gap;
            if chain.is_empty() || end > limit {
                chain.clear();
                return;
            }
            if end > after {
                let group = groups.len();
                groups.push((bounds.0, end, key.to_vec()));
                for (_, part) in chain.iter_mut() {
                    if let Some(state) = part.committed.take() {
                        contributions.committed.push((state, group));
                    }
                    for (epoch, row) in &part.sealed {
                        contributions.add_sealed(*epoch, *row, group);
                    }
                }
            }
            deleted.extend(chain.drain(..).map(|(pane, _)| (pane, key.to_vec())));
        };
        for ((key, pane), part) in parts {
            let Some(bounds) = part.bounds else {
                continue;
            };
            let same_key = chain_key.as_deref() == Some(key.as_slice());
            if same_key && bounds.0 - chain_bounds.1 < gap {
                chain_bounds = widen(chain_bounds, bounds);
                chain.push((pane, part));
                continue;
            }
            if let Some(previous) = chain_key.take() {
                flush_chain(
                    &previous,
                    &mut chain,
                    chain_bounds,
                    &mut groups,
                    &mut contributions,
                    &mut deleted,
                );
            }
            if groups.len() >= CHUNK {
                results_end = results_end.max(groups.iter().map(|(_, end, _)| *end).max());
                results.push(self.evaluate(&groups, std::mem::take(&mut contributions))?);
                groups.clear();
            }
            chain_key = Some(key);
            chain_bounds = bounds;
            chain.push((pane, part));
        }
        if let Some(previous) = chain_key.take() {
            flush_chain(
                &previous,
                &mut chain,
                chain_bounds,
                &mut groups,
                &mut contributions,
                &mut deleted,
            );
        }
        let last_end = groups.iter().map(|(_, end, _)| *end).max();
        if !groups.is_empty() {
            results.push(self.evaluate(&groups, contributions)?);
        }
        let last_end = results_end.into_iter().chain(last_end).max();
        self.mark_closed(epoch, after, limit, last_end)?
            .deletions
            .groups
            .extend(deleted);
        Ok(results)
    }

    /// Merges the contributions of each output group and evaluates them.
    fn evaluate(
        &self,
        groups: &[OutputGroup],
        contributions: Contributions,
    ) -> Result<RecordBatch, DataflowError> {
        let total = groups.len();
        let mut accumulators = self.accumulators()?;
        let (rows, indices): (Vec<Vec<u8>>, Vec<usize>) =
            contributions.committed.into_iter().unzip();
        let stored = codec::decode_rows(rows.iter().map(Vec::as_slice), &self.all_state_fields)?;
        self.merge_into(&mut accumulators, &stored, &indices, total)?;
        for (epoch, (rows, group_indices)) in &contributions.sealed {
            let rows = UInt32Array::from(rows.clone());
            let states = self.sealed[epoch]
                .states
                .iter()
                .map(|column| take(column.as_ref(), &rows, None).map_err(df))
                .collect::<Result<Vec<_>, _>>()?;
            self.merge_into(&mut accumulators, &states, group_indices, total)?;
        }

        let mut columns = self
            .keys
            .columns(groups.iter().map(|(_, _, key)| key.as_slice()))
            .map_err(df)?;
        if !self.window.is_global() {
            columns.push(Arc::new(TimestampMillisecondArray::from_iter_values(
                groups.iter().map(|(start, _, _)| *start),
            )));
            columns.push(Arc::new(TimestampMillisecondArray::from_iter_values(
                groups.iter().map(|(_, end, _)| *end),
            )));
        }
        for (accumulator, field) in accumulators
            .iter_mut()
            .zip(self.output.fields().iter().skip(columns.len()))
        {
            let values = accumulator.evaluate(EmitTo::All).map_err(df)?;
            columns.push(if values.data_type() == field.data_type() {
                values
            } else {
                cast(&values, field.data_type()).map_err(df)?
            });
        }
        RecordBatch::try_new(self.output.clone(), columns).map_err(df)
    }

    fn encode_sealed(&self, sealed: &Sealed) -> Result<Vec<u8>, DataflowError> {
        let mut fields = vec![
            Field::new("pane", DataType::Int64, false),
            Field::new("key", DataType::Binary, false),
            Field::new("tmin", DataType::Int64, false),
            Field::new("tmax", DataType::Int64, false),
        ];
        fields.extend(
            self.all_state_fields
                .iter()
                .enumerate()
                .map(|(i, f)| Field::new(format!("s{i}"), f.data_type().clone(), true)),
        );
        let rows = sealed.groups.list.len();
        let bound = |i: usize, which: fn(&Bounds) -> i64| sealed.bounds.get(i).map_or(0, which);
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(
                sealed.groups.list.iter().map(|(p, _)| *p),
            )),
            Arc::new(BinaryArray::from_iter_values(
                sealed.groups.list.iter().map(|(_, k)| k.as_slice()),
            )),
            Arc::new(Int64Array::from_iter_values(
                (0..rows).map(|i| bound(i, |b| b.0)),
            )),
            Arc::new(Int64Array::from_iter_values(
                (0..rows).map(|i| bound(i, |b| b.1)),
            )),
        ];
        if sealed.states.is_empty() {
            columns.extend(
                self.all_state_fields
                    .iter()
                    .map(|f| arrow::array::new_empty_array(f.data_type())),
            );
        } else {
            columns.extend(sealed.states.iter().cloned());
        }
        let schema = Arc::new(Schema::new(fields));
        let columns = columns
            .into_iter()
            .zip(schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c)
                } else {
                    cast(&c, f.data_type()).map_err(df)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let batch = RecordBatch::try_new(schema, columns).map_err(df)?;
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(sealed.deletions.panes.len() as u32).to_le_bytes());
        for pane in &sealed.deletions.panes {
            bytes.extend_from_slice(&pane.to_le_bytes());
        }
        bytes.extend_from_slice(&(sealed.deletions.groups.len() as u32).to_le_bytes());
        for (pane, key) in &sealed.deletions.groups {
            bytes.extend_from_slice(&pane.to_le_bytes());
            bytes.extend_from_slice(&(key.len() as u32).to_le_bytes());
            bytes.extend_from_slice(key);
        }
        match sealed.closed_through {
            Some(mark) => {
                bytes.push(1);
                bytes.extend_from_slice(&mark.to_le_bytes());
            }
            None => bytes.push(0),
        }
        bytes.extend(crate::batch::to_ipc(&batch).map_err(df)?);
        Ok(bytes)
    }

    fn decode_sealed(&self, bytes: &[u8]) -> Result<Sealed, DataflowError> {
        let corrupt = || DataflowError::State("corrupt sealed epoch".into());
        let mut input = bytes;
        let mut read = |n: usize| -> Result<&[u8], DataflowError> {
            if input.len() < n {
                return Err(corrupt());
            }
            let (head, rest) = input.split_at(n);
            input = rest;
            Ok(head)
        };
        let count = u32::from_le_bytes(read(4)?.try_into().map_err(|_| corrupt())?) as usize;
        let mut deletions = Deletions::default();
        for _ in 0..count {
            deletions.panes.push(i64::from_le_bytes(
                read(8)?.try_into().map_err(|_| corrupt())?,
            ));
        }
        let count = u32::from_le_bytes(read(4)?.try_into().map_err(|_| corrupt())?) as usize;
        for _ in 0..count {
            let pane = i64::from_le_bytes(read(8)?.try_into().map_err(|_| corrupt())?);
            let length = u32::from_le_bytes(read(4)?.try_into().map_err(|_| corrupt())?) as usize;
            deletions.groups.push((pane, read(length)?.to_vec()));
        }
        let closed_through = match read(1)?[0] {
            1 => Some(i64::from_le_bytes(
                read(8)?.try_into().map_err(|_| corrupt())?,
            )),
            _ => None,
        };
        let batch = crate::batch::from_ipc(input).map_err(df)?;
        let column = |i: usize| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(corrupt)
        };
        let (panes, tmin, tmax) = (column(0)?, column(2)?, column(3)?);
        let keys = batch
            .column(1)
            .as_any()
            .downcast_ref::<BinaryArray>()
            .ok_or_else(corrupt)?;
        let mut groups = Groups::default();
        let mut bounds = Vec::new();
        for i in 0..batch.num_rows() {
            groups.index(panes.value(i), keys.value(i));
            if self.is_session() {
                bounds.push((tmin.value(i), tmax.value(i)));
            }
        }
        let states = self
            .all_state_fields
            .iter()
            .zip(batch.columns().iter().skip(4))
            .map(|(field, column)| {
                if column.data_type() == field.data_type() {
                    Ok(column.clone())
                } else {
                    cast(column, field.data_type()).map_err(df)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Sealed {
            groups,
            states,
            bounds,
            deletions,
            closed_through,
        })
    }
}

/// The output schema of an aggregation: keys, window start and end (not
/// for the global window), and the aggregates under their names.
fn output_schema(plan: &AggregatePlan, keys: &KeyEncoder, window: Window) -> SchemaRef {
    let mut fields: Vec<FieldRef> = keys.fields();
    let window_columns: &[&str] = match window.is_global() {
        true => &[],
        false => &[WINDOW_START, WINDOW_END],
    };
    for name in window_columns {
        fields.push(Arc::new(Field::new(
            *name,
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        )));
    }
    for (aggregate, name) in plan.aggregates.iter().zip(&plan.names) {
        fields.push(Arc::new(aggregate.field().as_ref().clone().with_name(name)));
    }
    Arc::new(Schema::new(fields))
}

/// The schema results of `plan` have (see [`WindowAggregator::output_schema`]).
pub fn result_schema(plan: &AggregatePlan, window: Window) -> Result<SchemaRef, DataflowError> {
    let keys = KeyEncoder::new(plan.input.clone(), plan.keys.clone()).map_err(df)?;
    Ok(output_schema(plan, &keys, window))
}

/// Splits stored state bytes into the session bounds (if sessions) and
/// the encoded aggregate states.
fn split_bounds(bytes: &[u8], session: bool) -> Result<(Option<Bounds>, &[u8]), DataflowError> {
    if !session {
        return Ok((None, bytes));
    }
    if bytes.len() < 16 {
        return Err(DataflowError::State("corrupt session state".into()));
    }
    let min = i64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let max = i64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    Ok((Some((min, max)), &bytes[16..]))
}

/// A `GroupsAccumulator` for an aggregate: DataFusion's specialised one
/// when it has one, else its row accumulator behind the standard adapter.
fn new_accumulator(
    aggregate: &Arc<AggregateFunctionExpr>,
) -> Result<Box<dyn GroupsAccumulator>, DataflowError> {
    if aggregate.groups_accumulator_supported() {
        return aggregate.create_groups_accumulator().map_err(df);
    }
    let aggregate = aggregate.clone();
    Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
        aggregate.create_accumulator()
    })))
}

/// Event times in milliseconds from an integer or timestamp column.
pub fn event_times(column: &ArrayRef) -> Result<Vec<i64>, DataflowError> {
    let millis: ArrayRef = match column.data_type() {
        DataType::Int64 => column.clone(),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            cast(column, &DataType::Int64).map_err(df)?
        }
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => {
            let ms = cast(column, &DataType::Timestamp(TimeUnit::Millisecond, None)).map_err(df)?;
            cast(&ms, &DataType::Int64).map_err(df)?
        }
        DataType::Int32 | DataType::UInt32 | DataType::UInt64 => {
            cast(column, &DataType::Int64).map_err(df)?
        }
        other => {
            return Err(DataflowError::Plan(format!(
                "an event time must be a timestamp or milliseconds since the epoch, not {other}"
            )));
        }
    };
    let values = millis
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("cast to Int64");
    if values.null_count() > 0 {
        return Err(DataflowError::Execution("a row has no event time".into()));
    }
    Ok(values.values().to_vec())
}
