//! The stateful operator API: where platform logic (a drift sketch, a
//! bandit posterior, an alert rule) runs as part of a job, as Arroyo's
//! operators and Flink's `KeyedProcessFunction` do.
//!
//! An [`Operator`] gets its input as Arrow batches, and the watermark as it
//! advances; it keeps what it needs in keyed state ([`Context::value`],
//! [`Context::map`], [`Context::list`]) and sets event-time timers
//! ([`Context::set_timer`]); what it emits ([`Context::emit`]) goes on to
//! the next operator or the sink. Rows are routed to workers by the key
//! columns its [`OperatorFactory`] names, so one worker sees every row of a
//! key.
//!
//! The runtime makes it exactly-once: input is handed over one epoch after
//! another (batches of a later epoch wait until the earlier ones are done,
//! as Flink aligns checkpoint barriers), state written in an epoch is
//! sealed and committed with it ([`crate::state`]), and output produced
//! while handling an epoch belongs to it. A watermark is handed over after
//! every row received before it, in the latest epoch under way when it was
//! seen, as the window operator closes windows: a restart before that epoch
//! commits sees the watermark again.
//! At the end of a bounded input the watermark is `i64::MAX`: every timer
//! fires.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use timely::order::Product;

use crate::DataflowError;
use crate::state::{KeyedState, ListState, MapState, ValueState};
use crate::time::Time;

/// Custom logic with keyed state, run on every worker.
pub trait Operator {
    /// Handles a batch of rows (those of this worker's keys).
    fn process(&mut self, batch: &RecordBatch, ctx: &mut Context<'_>) -> Result<(), DataflowError>;

    /// Handles a timer of `key` set for event time `time`, once the
    /// watermark reached it.
    fn on_timer(
        &mut self,
        _key: &[u8],
        _time: i64,
        _ctx: &mut Context<'_>,
    ) -> Result<(), DataflowError> {
        Ok(())
    }

    /// Called when the watermark advanced, after the timers it made due.
    fn on_watermark(
        &mut self,
        _watermark: i64,
        _ctx: &mut Context<'_>,
    ) -> Result<(), DataflowError> {
        Ok(())
    }
}

/// Makes an [`Operator`] for each worker and says how it fits in a job.
pub trait OperatorFactory: Send + Sync + std::fmt::Debug {
    /// Names the operator in logs and errors.
    fn name(&self) -> &str;

    /// Input columns that route rows: all rows with the same values reach
    /// the same worker. Empty: rows stay on the worker that read them.
    fn key_columns(&self) -> Vec<String>;

    /// The schema of the rows it emits, given its input's; errors name
    /// what is wrong with the input.
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, DataflowError>;

    /// A fresh operator for one worker.
    fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>, DataflowError>;

    /// How far (ms) behind the watermark the event times of what it emits
    /// can be: the runtime holds its output watermark back by that much, so
    /// that windows after it wait for its rows.
    fn watermark_delay(&self) -> i64 {
        0
    }
}

/// What an operator reaches while it handles input: its state, timers, the
/// watermark and its output.
pub struct Context<'a> {
    state: &'a mut KeyedState,
    output: &'a mut Vec<RecordBatch>,
    watermark: Option<i64>,
    input: usize,
}

impl Context<'_> {
    /// Which input the batch being processed came from (0, or 1 for the
    /// second input of a two-input operator such as a join).
    pub fn input(&self) -> usize {
        self.input
    }

    /// A value per key, under `name`.
    pub fn value<'a, T>(&'a mut self, name: &'a str) -> ValueState<'a, T> {
        self.state.value(name)
    }

    /// A map per key, under `name`.
    pub fn map<'a, K, V>(&'a mut self, name: &'a str) -> MapState<'a, K, V> {
        self.state.map(name)
    }

    /// A list per key, under `name`.
    pub fn list<'a, T>(&'a mut self, name: &'a str) -> ListState<'a, T> {
        self.state.list(name)
    }

    /// Calls [`Operator::on_timer`] for `key` once the watermark reaches
    /// `time` (setting the same timer twice calls it once).
    pub fn set_timer(&mut self, key: &[u8], time: i64) {
        self.state.set_timer(key, time);
    }

    /// Removes a timer set before.
    pub fn delete_timer(&mut self, key: &[u8], time: i64) {
        self.state.delete_timer(key, time);
    }

    /// The watermark handed over so far (`None` before the first).
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// Sends rows on, in the operator's output schema.
    pub fn emit(&mut self, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.output.push(batch);
        }
    }
}

enum Event {
    Rows(usize, RecordBatch),
    Watermark(i64),
}

/// Runs one worker's operator: orders its input by epoch, hands over
/// watermarks, seals its state.
pub(crate) struct OperatorRunner {
    name: String,
    operator: Box<dyn Operator>,
    state: KeyedState,
    queue: BTreeMap<u64, Vec<Event>>,
    watermark: Option<i64>,
    queued_watermark: Option<i64>,
    /// Set when the job stops: the frontier then moves without the
    /// stopped sources' watermarks, which must not be handed over.
    stopping: Arc<AtomicBool>,
    /// See [`OperatorFactory::watermark_delay`].
    watermark_delay: u64,
}

/// Output batches with the epoch each belongs to.
pub(crate) type Emitted = Vec<(u64, RecordBatch)>;

impl OperatorRunner {
    pub(crate) fn new(
        name: String,
        operator: Box<dyn Operator>,
        state: KeyedState,
        stopping: Arc<AtomicBool>,
        watermark_delay: i64,
    ) -> Self {
        Self {
            name,
            operator,
            state,
            queue: BTreeMap::new(),
            watermark: None,
            queued_watermark: None,
            stopping,
            watermark_delay: u64::try_from(watermark_delay).unwrap_or(0),
        }
    }

    /// The keyed state (for commits).
    pub(crate) fn state(&mut self) -> &mut KeyedState {
        &mut self.state
    }

    /// Takes the batches that arrived (with their epochs and inputs) and
    /// the input frontier (of every input); returns what the operator
    /// emitted and where the output capability goes next (`None`: the
    /// input is over).
    pub(crate) fn step(
        &mut self,
        arrived: Vec<(u64, usize, RecordBatch)>,
        frontier: &[Time],
    ) -> Result<(Emitted, Option<Time>), DataflowError> {
        for (epoch, input, batch) in arrived {
            self.queue
                .entry(epoch)
                .or_default()
                .push(Event::Rows(input, batch));
        }
        let Some(min_epoch) = frontier.iter().map(|t| t.outer).min() else {
            // The input is over: what is queued is all there is. `finish`
            // seals the last epoch.
            let emitted = self.drain(u64::MAX)?;
            return Ok((emitted, None));
        };
        let max_epoch = frontier.iter().map(|t| t.outer).max().expect("non-empty");
        let min_watermark = frontier.iter().map(|t| t.inner).min().expect("non-empty");
        let watermark = i64::try_from(min_watermark).unwrap_or(i64::MAX);
        if !self.stopping.load(Ordering::SeqCst) && self.queued_watermark < Some(watermark) {
            self.queued_watermark = Some(watermark);
            // After every row received before it: rows of a later epoch
            // (from a worker ahead) may be queued already, and handed over
            // after the watermark they would set timers it should have
            // fired — at the end of the input, timers nothing fires again.
            let at = self
                .queue
                .last_key_value()
                .map_or(max_epoch, |(&queued, _)| queued.max(max_epoch));
            self.queue
                .entry(at)
                .or_default()
                .push(Event::Watermark(watermark));
        }
        let emitted = self.drain(min_epoch)?;
        if min_epoch > 0 {
            self.state.seal_through(min_epoch - 1)?;
        }
        // The output's watermark goes no further than the one handed over:
        // one still queued may fire timers that emit rows behind it.
        let handed = match self.watermark {
            Some(i64::MAX) => u64::MAX,
            Some(watermark) => u64::try_from(watermark).unwrap_or(0),
            None => 0,
        };
        let held_back = match min_watermark.min(handed) {
            u64::MAX => u64::MAX, // the end of the input
            watermark => watermark.saturating_sub(self.watermark_delay),
        };
        Ok((emitted, Some(Product::new(min_epoch, held_back))))
    }

    /// Hands over the queued input of epochs up to `through`, in order.
    fn drain(&mut self, through: u64) -> Result<Emitted, DataflowError> {
        let mut emitted = Vec::new();
        while let Some(entry) = self.queue.first_entry() {
            if *entry.key() > through {
                break;
            }
            let (epoch, events) = entry.remove_entry();
            // Input of an epoch already sealed (it reached a restarted job
            // late) is handed over in the epoch under way.
            let epoch = epoch.max(self.state.sealed_through() + 1);
            self.state.begin(epoch)?;
            let mut output = Vec::new();
            for event in events {
                match event {
                    Event::Rows(input, batch) => self.process(input, &batch, &mut output)?,
                    Event::Watermark(watermark) => self.advance(watermark, &mut output)?,
                }
            }
            emitted.extend(output.into_iter().map(|batch| (epoch, batch)));
        }
        Ok(emitted)
    }

    fn process(
        &mut self,
        input: usize,
        batch: &RecordBatch,
        output: &mut Vec<RecordBatch>,
    ) -> Result<(), DataflowError> {
        let mut ctx = Context {
            state: &mut self.state,
            output,
            watermark: self.watermark,
            input,
        };
        self.operator
            .process(batch, &mut ctx)
            .map_err(|e| self.failed(e))
    }

    fn advance(
        &mut self,
        watermark: i64,
        output: &mut Vec<RecordBatch>,
    ) -> Result<(), DataflowError> {
        self.watermark = Some(watermark);
        // A timer may set another one already due: fire until none is.
        loop {
            let due = self.state.due_timers(watermark);
            if due.is_empty() {
                break;
            }
            for (time, key) in due {
                let mut ctx = Context {
                    state: &mut self.state,
                    output,
                    watermark: Some(watermark),
                    input: 0,
                };
                self.operator
                    .on_timer(&key, time, &mut ctx)
                    .map_err(|e| self.failed(e))?;
            }
        }
        let mut ctx = Context {
            state: &mut self.state,
            output,
            watermark: Some(watermark),
            input: 0,
        };
        self.operator
            .on_watermark(watermark, &mut ctx)
            .map_err(|e| self.failed(e))
    }

    /// The end of the job: seals every epoch up to `last`. (The input was
    /// handed over when the frontier emptied; the end of a bounded input
    /// came before that, as a watermark at the end of time.)
    pub(crate) fn finish(&mut self, last: u64) -> Result<(), DataflowError> {
        debug_assert!(
            self.queue.is_empty(),
            "input left after the frontier emptied"
        );
        self.state.begin(last)?;
        self.state.seal_through(last)
    }

    fn failed(&self, error: DataflowError) -> DataflowError {
        DataflowError::Execution(format!("operator `{}`: {error}", self.name))
    }
}
