//! The checkpoint protocol every worker follows: which operators seal
//! epochs, how the workers agree on the last epoch they all sealed (at a
//! restart and at the end), where sources resume, and how a worker commits.
//! See [`crate::job`] for the design and [`crate::store`] for the layout.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Mutex;

use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Input, Inspect, Probe};

use crate::DataflowError;
use crate::aggregate::WindowAggregator;
use crate::operator::OperatorRunner;
use crate::pipeline::{Pipeline, Status};
use crate::sink::SinkState;
use crate::source::Checkpoint;
use crate::store::{OperatorId, Store};
use crate::transform::Transform;

pub(crate) const SOURCE_OP: OperatorId = 1;
pub(crate) const WINDOW_OP: OperatorId = 2;
pub(crate) const SINK_OP: OperatorId = 3;
pub(crate) const LOOKUP_OP: OperatorId = 4;
/// The interval join's second source, and the join.
pub(crate) const RIGHT_SOURCE_OP: OperatorId = 5;
pub(crate) const JOIN_OP: OperatorId = 6;
/// Custom operators are `OPERATOR_OPS + i`, in the order of the job.
pub(crate) const OPERATOR_OPS: OperatorId = 16;

/// The operators of `pipeline` that seal epochs.
pub(crate) fn sealing_ops(pipeline: &Pipeline) -> Vec<OperatorId> {
    let mut ops = vec![SOURCE_OP, SINK_OP];
    if pipeline.aggregate.is_some() {
        ops.push(WINDOW_OP);
    }
    if pipeline.join.is_some() {
        ops.extend([RIGHT_SOURCE_OP, JOIN_OP]);
    }
    ops.extend((0..pipeline.operators.len()).map(|i| OPERATOR_OPS + i as OperatorId));
    ops
}

/// What every worker says at an agreement: the first and last epoch all
/// its operators sealed, and whether it is stopping.
type Said = (Option<u64>, Option<u64>, bool);

/// Exchanges `local` with every worker (a broadcast) and returns what all
/// of them said.
pub(crate) fn agree(worker: &mut timely::worker::Worker, local: Said) -> Vec<Said> {
    let seen: Rc<RefCell<Vec<Said>>> = Rc::new(RefCell::new(Vec::new()));
    let collected = seen.clone();
    let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
        let (input, stream) = scope.new_input::<Vec<Said>>();
        let (probe, _) = stream
            .broadcast()
            .inspect(move |value| collected.borrow_mut().push(*value))
            .probe();
        (input, probe)
    });
    input.send(local);
    input.advance_to(1);
    drop(input);
    while !probe.done() {
        worker.step();
    }
    let values = seen.borrow().clone();
    debug_assert_eq!(values.len(), worker.peers());
    values
}

/// The last epoch every operator of every worker sealed.
pub(crate) fn agree_on_committed(
    worker: &mut timely::worker::Worker,
    local: Option<u64>,
) -> Option<u64> {
    agree(worker, (local, local, false))
        .into_iter()
        .map(|(sealed, _, _)| sealed)
        .collect::<Option<Vec<u64>>>()
        .and_then(|v| v.into_iter().min())
}

/// What the operators of one worker share (they run on its thread).
pub(crate) struct WorkerShared {
    pub(crate) store: Rc<Store>,
    pub(crate) ops: Vec<OperatorId>,
    pub(crate) aggregator: Option<RefCell<WindowAggregator>>,
    pub(crate) join: Option<RefCell<OperatorRunner>>,
    pub(crate) operators: Vec<RefCell<OperatorRunner>>,
    pub(crate) sink: RefCell<SinkState>,
    pub(crate) committed: RefCell<Option<u64>>,
    /// Set once the end of a bounded input reached this worker's sink.
    pub(crate) drained: Rc<Cell<bool>>,
}

impl WorkerShared {
    /// This worker's sources: the job's, and an interval join's.
    fn source_ops(&self) -> impl Iterator<Item = OperatorId> + use<> {
        std::iter::once(SOURCE_OP).chain(self.join.is_some().then_some(RIGHT_SOURCE_OP))
    }

    /// The last epoch every operator of this worker sealed.
    pub(crate) fn sealed(&self) -> Result<Option<u64>, DataflowError> {
        local_sealed(&self.store, &self.ops)
    }
}

pub(crate) fn local_sealed(
    store: &Store,
    ops: &[OperatorId],
) -> Result<Option<u64>, DataflowError> {
    Ok(sealed_epochs(store, ops)?
        .into_iter()
        .collect::<Option<Vec<u64>>>()
        .and_then(|v| v.into_iter().min()))
}

/// The last epoch each operator of this worker sealed.
pub(crate) fn sealed_epochs(
    store: &Store,
    ops: &[OperatorId],
) -> Result<Vec<Option<u64>>, DataflowError> {
    ops.iter().map(|op| store.sealed(*op)).collect()
}

/// Where a source resumes after a (re)start: the offsets stored with the
/// last epoch every worker sealed (`committed`), or the start.
pub(crate) fn resume_source(
    store: &Store,
    op: OperatorId,
    committed: Option<u64>,
) -> Result<Checkpoint, DataflowError> {
    let Some(epoch) = committed else {
        store.reset(op)?;
        return Ok(Checkpoint::default());
    };
    let pending = store.committed(op)?.is_none_or(|m| m < epoch);
    let checkpoint = store
        .offsets(op, epoch)?
        .map(|bytes| serde_json::from_slice(&bytes))
        .transpose()
        .map_err(|e| DataflowError::State(format!("stored offsets: {e}")))?
        .ok_or_else(|| {
            DataflowError::State(format!(
                "no offsets stored with epoch {epoch}, the last one every worker sealed"
            ))
        })?;
    if pending {
        store.commit(op, epoch, |_| {})?;
    }
    store.discard_after(op, Some(epoch))?;
    Ok(checkpoint)
}

/// After the dataflow: every operator of every worker seals one last
/// epoch — at the end of a bounded input, with every window still open
/// closed in it — and all commit it together.
///
/// The commit operator commits epochs while the job runs; at the end a
/// worker whose input ended early has not sealed the epochs others went on
/// to, so the workers agree on a last epoch instead.
pub(crate) fn finish(
    worker: &mut timely::worker::Worker,
    shared: &WorkerShared,
    stopping: bool,
    post: Option<&Transform>,
    status: &Mutex<Status>,
) -> Result<(), DataflowError> {
    let sealed = sealed_epochs(&shared.store, &shared.ops)?;
    let local_max = sealed.iter().flatten().copied().max();
    let said = agree(worker, (None, local_max, stopping));
    let stopping = said.iter().any(|(_, _, stopping)| *stopping);
    let last = said
        .iter()
        .filter_map(|(_, max, _)| *max)
        .max()
        .unwrap_or(0)
        + 1;
    {
        let mut sink = shared.sink.borrow_mut();
        if let Some(aggregator) = &shared.aggregator {
            let mut aggregator = aggregator.borrow_mut();
            let window_sealed = shared.store.sealed(WINDOW_OP)?.unwrap_or(0);
            let mut results = Vec::new();
            for epoch in window_sealed + 1..last {
                results.extend(aggregator.seal(epoch)?);
            }
            if !stopping {
                // The input is over: every window closes.
                results.extend(aggregator.close(last, i64::MAX)?);
            }
            results.extend(aggregator.seal(last)?);
            for batch in &results {
                let batch = match post {
                    Some(post) => post.apply(batch)?,
                    None => batch.clone(),
                };
                if batch.num_rows() > 0 {
                    sink.write(last, &batch)?;
                    status.lock().expect("status").records_out += batch.num_rows() as u64;
                }
            }
        }
        for operator in shared.join.iter().chain(&shared.operators) {
            operator.borrow_mut().finish(last)?;
        }
        sink.seal(last)?;
        for op in shared.source_ops() {
            seal_ended_source(&shared.store, op, last)?;
        }
    }
    // Every worker has sealed `last` once every worker says so.
    agree(worker, (Some(last), Some(last), false));
    commit_through(shared, last, status)
}

/// Seals a source that ended (its input read to the end, or the job
/// stopping) for every epoch up to `through`: it reads nothing more, so its
/// last offsets hold for them. Without this a worker whose partitions ended
/// early would keep the last epoch every worker sealed at its end, while
/// the others commit later epochs and drop the offsets of earlier ones.
pub(crate) fn seal_ended_source(
    store: &Store,
    op: OperatorId,
    through: u64,
) -> Result<(), DataflowError> {
    let sealed = store.sealed(op)?;
    if sealed.is_some_and(|e| e >= through) {
        return Ok(());
    }
    let offsets = match sealed {
        Some(epoch) => store.offsets(op, epoch)?,
        None => None,
    };
    for epoch in sealed.map_or(1, |e| e + 1)..=through {
        store.seal(op, epoch, None, offsets.as_deref())?;
    }
    Ok(())
}

/// Commits every epoch up to `done` that this worker's operators sealed.
pub(crate) fn commit_through(
    shared: &WorkerShared,
    done: u64,
    status: &Mutex<Status>,
) -> Result<(), DataflowError> {
    // The frontier passed `done`, so a source that has not sealed it let
    // go of its capability: it has ended.
    for op in shared.source_ops() {
        seal_ended_source(&shared.store, op, done)?;
    }
    let Some(sealed) = shared.sealed()? else {
        return Ok(());
    };
    let target = done.min(sealed);
    let last = *shared.committed.borrow();
    let first = last.map_or(1, |l| l + 1);
    if target < first {
        return Ok(());
    }
    let mut sink = shared.sink.borrow_mut();
    for epoch in first..=target {
        if let Some(aggregator) = &shared.aggregator {
            aggregator.borrow_mut().commit(epoch)?;
        }
        for operator in shared.join.iter().chain(&shared.operators) {
            operator.borrow_mut().state().commit(epoch)?;
        }
        sink.commit(epoch)?;
        for op in shared.source_ops() {
            shared.store.commit(op, epoch, |_| {})?;
        }
    }
    *shared.committed.borrow_mut() = Some(target);
    status.lock().expect("status").committed_epoch = Some(target);
    if tracing::enabled!(tracing::Level::DEBUG) {
        // Where a restart will resume: the crash tests check it does.
        let offsets: Option<Checkpoint> = shared
            .store
            .offsets(SOURCE_OP, target)?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let status = status.lock().expect("status");
        tracing::debug!(
            epoch = target,
            offsets = ?offsets.map(|c| c.source),
            records_in = status.records_in,
            records_out = status.records_out,
            dead_letters = status.dead_letters,
            watermark = status.watermark,
            "committed"
        );
    }
    Ok(())
}
