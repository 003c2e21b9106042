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
//! accumulators and the same merge DataFusion's batch engine runs. Expired
//! panes are deleted through the epoch in which they expired, and the
//! "windows emitted up to" mark is committed with the epoch, so that a
//! restart emits every window exactly as before.

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
use crate::store::{OperatorId, PaneStates, Store};
use crate::window::Window;

/// Output column of a window's start.
pub const WINDOW_START: &str = "window_start";
/// Output column of a window's end.
pub const WINDOW_END: &str = "window_end";

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

/// Partial aggregates of one open epoch.
struct Layer {
    groups: Groups,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    min_time: i64,
    expired: Vec<i64>,
    /// Results emitted while this epoch was the earliest open one.
    outputs: Vec<RecordBatch>,
}

/// The partial states of a sealed epoch: one row per group, state columns
/// of every aggregate side by side.
struct Sealed {
    groups: Groups,
    states: Vec<ArrayRef>,
    expired: Vec<i64>,
    closed_through: Option<i64>,
    outputs: Vec<RecordBatch>,
}

/// One worker's windowed aggregation.
pub struct WindowAggregator {
    op: OperatorId,
    store: Rc<Store>,
    plan: AggregatePlan,
    window: Window,
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
    ) -> Result<Self, DataflowError> {
        if matches!(window, Window::Session { .. }) {
            return Err(DataflowError::Plan(
                "session windows are not supported by the windowed aggregator yet".into(),
            ));
        }
        let keys = KeyEncoder::new(plan.input.clone(), plan.keys.clone()).map_err(df)?;
        let state_fields = plan
            .aggregates
            .iter()
            .map(|a| a.state_fields().map_err(df))
            .collect::<Result<Vec<_>, _>>()?;
        let all_state_fields = state_fields.iter().flatten().cloned().collect();
        let mut fields: Vec<FieldRef> = keys.fields();
        for name in [WINDOW_START, WINDOW_END] {
            fields.push(Arc::new(Field::new(
                name,
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            )));
        }
        for (aggregate, name) in plan.aggregates.iter().zip(&plan.names) {
            fields.push(Arc::new(aggregate.field().as_ref().clone().with_name(name)));
        }
        Ok(Self {
            op,
            store,
            output: Arc::new(Schema::new(fields)),
            plan,
            window,
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

    fn accumulators(&self) -> Result<Vec<Box<dyn GroupsAccumulator>>, DataflowError> {
        self.plan
            .aggregates
            .iter()
            .map(|a| new_accumulator(a))
            .collect()
    }

    /// Restores after a (re)start, first half: loads the epochs sealed up to
    /// `committed` — the epoch all workers sealed — and returns the results
    /// they emitted, which the caller writes to the sink (they may have
    /// been lost with the crash) before calling
    /// [`WindowAggregator::finish_recovery`]. `None` starts afresh.
    pub fn recover(&mut self, committed: Option<u64>) -> Result<Vec<RecordBatch>, DataflowError> {
        let Some(global) = committed else {
            self.store.reset(self.op)?;
            return Ok(Vec::new());
        };
        let mut outputs = Vec::new();
        let first = self.store.committed(self.op)?.map_or(0, |m| m + 1);
        for epoch in first..=global {
            if let Some(bytes) = self.store.sealed_changes(self.op, epoch)? {
                let sealed = self.decode_sealed(&bytes)?;
                outputs.extend(sealed.outputs.iter().cloned());
                self.sealed.insert(epoch, sealed);
            }
        }
        Ok(outputs)
    }

    /// Restores after a (re)start, second half: commits the loaded epochs
    /// and forgets later ones.
    pub fn finish_recovery(&mut self, committed: Option<u64>) -> Result<(), DataflowError> {
        let Some(global) = committed else {
            return Ok(());
        };
        let first = self.store.committed(self.op)?.map_or(0, |m| m + 1);
        for epoch in first..=global {
            self.commit(epoch)?;
        }
        self.store.discard_after(self.op, Some(global))?;
        self.closed_through = self.store_closed_through()?;
        Ok(())
    }

    fn store_closed_through(&self) -> Result<Option<i64>, DataflowError> {
        let Some(bytes) = self.store.mark(self.op)? else {
            return Ok(None);
        };
        Ok(Some(i64::from_be_bytes(
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| DataflowError::State("corrupt window mark".into()))?,
        )))
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
        if !self.layers.contains_key(&epoch) {
            let layer = Layer {
                groups: Groups::default(),
                accumulators: self.accumulators()?,
                min_time: i64::MAX,
                expired: Vec::new(),
                outputs: Vec::new(),
            };
            self.layers.insert(epoch, layer);
        }
        let layer = self.layers.get_mut(&epoch).expect("inserted above");
        let mut group_indices = Vec::with_capacity(batch.num_rows());
        for (i, t) in times.iter().enumerate() {
            group_indices.push(
                layer
                    .groups
                    .index(self.window.pane_of(*t), rows.row(i).as_ref()),
            );
            layer.min_time = layer.min_time.min(*t);
        }
        let total = layer.groups.len();
        for (aggregate, accumulator) in self.plan.aggregates.iter().zip(&mut layer.accumulators) {
            let args = aggregate
                .expressions()
                .iter()
                .map(|e| {
                    e.evaluate(&batch)
                        .and_then(|v| v.into_array(batch.num_rows()))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(df)?;
            accumulator
                .update_batch(&args, &group_indices, None, total)
                .map_err(df)?;
        }
        Ok(())
    }

    /// Seals `epoch`: its partial states become immutable and durable.
    pub fn seal(&mut self, epoch: u64) -> Result<(), DataflowError> {
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
                    expired: layer.expired,
                    closed_through: self.closed_through,
                    outputs: layer.outputs,
                }
            }
            None => Sealed {
                groups: Groups::default(),
                states: Vec::new(),
                expired: Vec::new(),
                closed_through: self.closed_through,
                outputs: Vec::new(),
            },
        };
        let bytes = self.encode_sealed(&sealed)?;
        self.store.seal(self.op, epoch, Some(&bytes), None)?;
        self.sealed.insert(epoch, sealed);
        Ok(())
    }

    /// Commits `epoch` (sealed by every worker): merges its partial states
    /// into the committed state and applies its pane deletions.
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
        let mut merged_rows = Vec::new();
        if !groups.is_empty() {
            let existing = self.store.states(self.op, &groups)?;
            let mut accumulators = self.accumulators()?;
            let present: Vec<usize> = (0..existing.len())
                .filter(|i| existing[*i].is_some())
                .collect();
            let stored = codec::decode_rows(
                present
                    .iter()
                    .map(|i| existing[*i].as_deref().expect("present")),
                &self.all_state_fields,
            )?;
            self.merge_into(&mut accumulators, &stored, &present, groups.len())?;
            let identity: Vec<usize> = (0..groups.len()).collect();
            self.merge_into(&mut accumulators, &sealed.states, &identity, groups.len())?;
            let mut states = Vec::new();
            for accumulator in &mut accumulators {
                states.extend(accumulator.state(EmitTo::All).map_err(df)?);
            }
            for row in 0..groups.len() {
                let mut bytes = Vec::new();
                codec::encode_row(&states, row, &mut bytes)?;
                merged_rows.push(bytes);
            }
        }
        self.store.commit(self.op, epoch, |writes| {
            for ((pane, key), state) in groups.iter().zip(&merged_rows) {
                writes.put(*pane, key, state);
            }
            for pane in &sealed.expired {
                writes.delete_pane(*pane);
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

    /// Evaluates every window ending at or before `limit` not yet emitted;
    /// pane deletions go into `epoch` (the earliest open epoch).
    pub fn close(&mut self, epoch: u64, limit: i64) -> Result<Option<RecordBatch>, DataflowError> {
        let size = self.window.size();
        let after = self.closed_through.unwrap_or(i64::MIN);
        if limit <= after {
            return Ok(None);
        }
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

        let result = if starts.is_empty() {
            None
        } else {
            Some(self.evaluate(&starts)?)
        };
        self.closed_through = Some(limit);

        let expired: Vec<i64> = panes
            .into_iter()
            .filter(|p| self.window.pane_expired(*p, limit))
            .collect();
        if !expired.is_empty() || result.is_some() {
            if !self.layers.contains_key(&epoch) {
                let layer = Layer {
                    groups: Groups::default(),
                    accumulators: self.accumulators()?,
                    min_time: i64::MAX,
                    expired: Vec::new(),
                    outputs: Vec::new(),
                };
                self.layers.insert(epoch, layer);
            }
            let layer = self.layers.get_mut(&epoch).expect("inserted above");
            layer.expired.extend(expired);
            // Results are part of the epoch: if the process dies before the
            // sink has flushed them, recovery writes them again.
            layer.outputs.extend(result.iter().cloned());
        }
        Ok(result)
    }

    /// Every window's result at the end of input (sealed and committed
    /// state only: seal the open epochs first).
    pub fn close_all(&mut self, epoch: u64) -> Result<Option<RecordBatch>, DataflowError> {
        self.close(epoch, i64::MAX)
    }

    fn evaluate(&self, starts: &[i64]) -> Result<RecordBatch, DataflowError> {
        // Groups of the output: (window start, key).
        let mut groups: HashMap<(i64, Vec<u8>), usize> = HashMap::new();
        let mut group_list: Vec<(i64, Vec<u8>)> = Vec::new();
        // Contributions: committed rows and sealed rows, each with its group.
        let mut committed_rows: Vec<Vec<u8>> = Vec::new();
        let mut committed_groups: Vec<usize> = Vec::new();
        let mut sealed_rows: BTreeMap<u64, (Vec<u32>, Vec<usize>)> = BTreeMap::new();
        let mut pane_cache: HashMap<i64, PaneStates> = HashMap::new();
        for &start in starts {
            for pane in self.window.panes_of_window(start) {
                let states = match pane_cache.entry(pane) {
                    std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                    std::collections::hash_map::Entry::Vacant(entry) => {
                        entry.insert(self.store.pane(self.op, pane)?)
                    }
                };
                for (key, state) in states.iter() {
                    let group = group_of(&mut groups, &mut group_list, start, key);
                    committed_rows.push(state.clone());
                    committed_groups.push(group);
                }
                for (epoch, sealed) in &self.sealed {
                    if let Some(keys) = sealed.groups.by_pane.get(&pane) {
                        let entry = sealed_rows.entry(*epoch).or_default();
                        for (key, row) in keys {
                            let group = group_of(&mut groups, &mut group_list, start, key);
                            entry.0.push(*row as u32);
                            entry.1.push(group);
                        }
                    }
                }
            }
        }
        let total = group_list.len();
        let mut accumulators = self.accumulators()?;
        let stored = codec::decode_rows(
            committed_rows.iter().map(Vec::as_slice),
            &self.all_state_fields,
        )?;
        self.merge_into(&mut accumulators, &stored, &committed_groups, total)?;
        for (epoch, (rows, group_indices)) in &sealed_rows {
            let indices = UInt32Array::from(rows.clone());
            let states = self.sealed[epoch]
                .states
                .iter()
                .map(|column| take(column.as_ref(), &indices, None).map_err(df))
                .collect::<Result<Vec<_>, _>>()?;
            self.merge_into(&mut accumulators, &states, group_indices, total)?;
        }

        let mut columns = self
            .keys
            .columns(group_list.iter().map(|(_, key)| key.as_slice()))
            .map_err(df)?;
        let size = self.window.size();
        columns.push(Arc::new(TimestampMillisecondArray::from_iter_values(
            group_list.iter().map(|(start, _)| *start),
        )));
        columns.push(Arc::new(TimestampMillisecondArray::from_iter_values(
            group_list.iter().map(|(start, _)| start + size),
        )));
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
        ];
        fields.extend(
            self.all_state_fields
                .iter()
                .enumerate()
                .map(|(i, f)| Field::new(format!("s{i}"), f.data_type().clone(), true)),
        );
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(
                sealed.groups.list.iter().map(|(p, _)| *p),
            )),
            Arc::new(BinaryArray::from_iter_values(
                sealed.groups.list.iter().map(|(_, k)| k.as_slice()),
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
        bytes.extend_from_slice(&(sealed.expired.len() as u32).to_le_bytes());
        for pane in &sealed.expired {
            bytes.extend_from_slice(&pane.to_le_bytes());
        }
        match sealed.closed_through {
            Some(mark) => {
                bytes.push(1);
                bytes.extend_from_slice(&mark.to_le_bytes());
            }
            None => bytes.push(0),
        }
        let states = crate::batch::to_ipc(&batch).map_err(df)?;
        bytes.extend_from_slice(&(states.len() as u32).to_le_bytes());
        bytes.extend(states);
        bytes.extend_from_slice(&(sealed.outputs.len() as u32).to_le_bytes());
        for output in &sealed.outputs {
            let encoded = crate::batch::to_ipc(output).map_err(df)?;
            bytes.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
            bytes.extend(encoded);
        }
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
        let mut expired = Vec::with_capacity(count);
        for _ in 0..count {
            expired.push(i64::from_le_bytes(
                read(8)?.try_into().map_err(|_| corrupt())?,
            ));
        }
        let closed_through = match read(1)?[0] {
            1 => Some(i64::from_le_bytes(
                read(8)?.try_into().map_err(|_| corrupt())?,
            )),
            _ => None,
        };
        let length = u32::from_le_bytes(read(4)?.try_into().map_err(|_| corrupt())?) as usize;
        let batch = crate::batch::from_ipc(read(length)?).map_err(df)?;
        let count = u32::from_le_bytes(read(4)?.try_into().map_err(|_| corrupt())?) as usize;
        let mut outputs = Vec::with_capacity(count);
        for _ in 0..count {
            let length = u32::from_le_bytes(read(4)?.try_into().map_err(|_| corrupt())?) as usize;
            outputs.push(crate::batch::from_ipc(read(length)?).map_err(df)?);
        }
        let panes = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(corrupt)?;
        let keys = batch
            .column(1)
            .as_any()
            .downcast_ref::<BinaryArray>()
            .ok_or_else(corrupt)?;
        let mut groups = Groups::default();
        for i in 0..batch.num_rows() {
            groups.index(panes.value(i), keys.value(i));
        }
        let states = self
            .all_state_fields
            .iter()
            .zip(batch.columns().iter().skip(2))
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
            expired,
            closed_through,
            outputs,
        })
    }
}

fn group_of(
    groups: &mut HashMap<(i64, Vec<u8>), usize>,
    list: &mut Vec<(i64, Vec<u8>)>,
    start: i64,
    key: &[u8],
) -> usize {
    *groups.entry((start, key.to_vec())).or_insert_with(|| {
        list.push((start, key.to_vec()));
        list.len() - 1
    })
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
