//! The windowed aggregation as a dataflow operator: seals the epochs its
//! input frontier has left, closes the windows the watermark has passed,
//! and says how far its output capability may move.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::RecordBatch;
use timely::order::Product;

use crate::DataflowError;
use crate::batch::Batch;
use crate::epochs::WorkerShared;
use crate::time::Time;

/// The window operator's logic around the aggregator: seal epochs the
/// input frontier has left, close windows the watermark has passed, and
/// say how far the output capability may move.
pub(crate) struct WindowOp {
    pub(crate) shared: Rc<WorkerShared>,
    pub(crate) sealed_through: u64,
    pub(crate) max_epoch_seen: u64,
    /// The epoch closes belong to: the latest in the frontier so far.
    pub(crate) close_epoch: u64,
    /// Set when the job stops: sources then let go of their capabilities
    /// one by one, and the frontier moves on without their watermarks.
    pub(crate) stopping: Arc<AtomicBool>,
}

impl WindowOp {
    /// Takes the batches that arrived (with their epochs) and the input
    /// frontier; returns the updates of sealed epochs, the windows closed
    /// (emitted at `(close_epoch, watermark)`), and where the output
    /// capability goes next (`None`: release it, the input is over).
    #[allow(clippy::type_complexity)]
    pub(crate) fn step(
        &mut self,
        arrived: Vec<(u64, Batch)>,
        frontier: &[Time],
    ) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>, Option<Time>), DataflowError> {
        let mut aggregator = self
            .shared
            .aggregator
            .as_ref()
            .expect("a windowed job")
            .borrow_mut();
        for (epoch, batch) in arrived {
            self.max_epoch_seen = self.max_epoch_seen.max(epoch);
            aggregator.update(epoch, &batch.0)?;
        }
        let mut results = Vec::new();
        if frontier.is_empty() {
            // Input over: the job is stopping, or a bounded source ended
            // (then `finish` closes every window).
            for epoch in self.sealed_through + 1..=self.max_epoch_seen {
                results.extend(aggregator.seal(epoch)?);
            }
            self.sealed_through = self.max_epoch_seen.max(self.sealed_through);
            return Ok((results, Vec::new(), None));
        }
        let min_epoch = frontier.iter().map(|t| t.outer).min().expect("non-empty");
        let max_epoch = frontier.iter().map(|t| t.outer).max().expect("non-empty");
        let min_watermark = frontier.iter().map(|t| t.inner).min().expect("non-empty");
        self.max_epoch_seen = self.max_epoch_seen.max(max_epoch);
        for epoch in self.sealed_through + 1..min_epoch {
            results.extend(aggregator.seal(epoch)?);
            self.sealed_through = epoch;
        }
        // The watermark may come from a source already in a later epoch:
        // a close belongs to the latest epoch in the frontier, so that a
        // restart before that epoch commits closes the windows again.
        self.close_epoch = self.close_epoch.max(max_epoch);
        // A stopping job leaves its windows open: the flag is set before
        // any source lets go, so no close sees a frontier without them.
        if self.stopping.load(Ordering::SeqCst) {
            return Ok((
                results,
                Vec::new(),
                Some(Product::new(min_epoch, min_watermark)),
            ));
        }
        let limit = aggregator.closable(i64::try_from(min_watermark).unwrap_or(i64::MAX));
        let closed = aggregator.close(self.close_epoch, limit)?;
        Ok((
            results,
            closed,
            Some(Product::new(min_epoch, min_watermark)),
        ))
    }
}
