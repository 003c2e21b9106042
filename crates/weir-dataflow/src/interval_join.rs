//! Stream–stream interval join on event time: a row `a` of the job's
//! source meets every row `b` of a second topic with the same key and
//! `a.t + lower <= b.t <= a.t + upper` — the shape of
//! `... JOIN b ON a.k = b.k AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '1' HOUR`.
//!
//! Both sides wait in keyed state ([`crate::state`], RocksDB, sealed with
//! the epochs) until no row of the other side can still match them: a left
//! row until the watermark passes `a.t + upper`, a right row until it
//! passes `b.t - lower`. A pair is emitted when its second row arrives. In
//! a left-outer join a left row that met nobody by then is emitted with
//! nulls, so "served but never labelled" shows. Rows later than their
//! source's allowed lateness are dead-lettered by the source, counted as
//! late. The output's event time is the left row's, which can be up to
//! `upper` behind the watermark when it is emitted: the join holds its
//! output watermark back by that much, so windows after it stay open for
//! its rows.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};

use crate::DataflowError;
use crate::aggregate::event_times;
use crate::batch::KeyEncoder;
use crate::input::{KafkaSource, Source};
use crate::lookup::JoinKind;
use crate::operator::{Context, Operator};

/// An interval join, as its author writes it.
#[derive(Debug, Clone)]
pub struct IntervalJoin {
    /// The right side: a second topic, read like the job's source.
    pub right: KafkaSource,
    /// `(left column, right column)` pairs that must be equal.
    pub on: Vec<(String, String)>,
    /// Bounds of `b.t - a.t`, in ms, inclusive.
    pub lower: i64,
    /// See `lower`.
    pub upper: i64,
    /// Inner, or left-outer.
    pub kind: JoinKind,
    /// Right columns in the output, `(column, output name)`; empty: every
    /// right column that is not a join key, under its own name.
    pub columns: Vec<(String, String)>,
}

/// An interval join planned against the schemas of both sides.
#[derive(Debug, Clone)]
pub struct IntervalJoinPlan {
    /// What was asked for.
    pub spec: IntervalJoin,
    /// Rows of the left side (the job's source, after a lookup).
    pub left: SchemaRef,
    /// Rows of the right side's topic.
    pub right: SchemaRef,
    /// Key columns of each side.
    pub left_keys: Vec<usize>,
    /// See `left_keys`.
    pub right_keys: Vec<usize>,
    left_time: usize,
    right_time: usize,
    right_columns: Vec<usize>,
    /// Left columns, then the right columns asked for.
    pub output: SchemaRef,
}

fn plan_error(message: String) -> DataflowError {
    DataflowError::Plan(format!("join: {message}"))
}

impl IntervalJoinPlan {
    /// Plans `spec` between rows of `left` (event time `left_time`) and the
    /// right topic's rows `right`.
    pub fn new(
        spec: IntervalJoin,
        left: SchemaRef,
        left_time: &str,
        right: SchemaRef,
    ) -> Result<Self, DataflowError> {
        if spec.on.is_empty() {
            return Err(plan_error("`on` needs at least one pair of columns".into()));
        }
        if spec.lower > spec.upper {
            return Err(plan_error(format!(
                "the lower bound ({} ms) is after the upper one ({} ms)",
                spec.lower, spec.upper
            )));
        }
        let column = |schema: &SchemaRef, side: &str, name: &str| {
            schema
                .index_of(name)
                .map_err(|_| plan_error(format!("`{name}` is not a column of the {side} side")))
        };
        let mut left_keys = Vec::new();
        let mut right_keys = Vec::new();
        for (l, r) in &spec.on {
            let (li, ri) = (column(&left, "left", l)?, column(&right, "right", r)?);
            let (lt, rt) = (left.field(li).data_type(), right.field(ri).data_type());
            if lt != rt {
                return Err(plan_error(format!(
                    "`{l}` is {lt} and `{r}` is {rt}: join keys must have the same type"
                )));
            }
            left_keys.push(li);
            right_keys.push(ri);
        }
        let right_source = Source::Kafka(spec.right.clone());
        let right_time = column(&right, "right", right_source.event_time_column())?;
        let left_time = column(&left, "left", left_time)?;
        let named: Vec<(String, String)> = if spec.columns.is_empty() {
            right
                .fields()
                .iter()
                .enumerate()
                .filter(|(i, _)| !right_keys.contains(i))
                .map(|(_, f)| (f.name().clone(), f.name().clone()))
                .collect()
        } else {
            spec.columns.clone()
        };
        let mut fields: Vec<Field> = left.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut right_columns = Vec::new();
        for (name, output) in &named {
            let i = column(&right, "right", name)?;
            if fields.iter().any(|f| f.name() == output) {
                return Err(plan_error(format!(
                    "the right column `{name}` would be named `{output}`, which the left side has: name it in `columns` (`{name} = \"other\"`)"
                )));
            }
            let nullable = right.field(i).is_nullable() || spec.kind == JoinKind::Left;
            fields.push(Field::new(
                output,
                right.field(i).data_type().clone(),
                nullable,
            ));
            right_columns.push(i);
        }
        Ok(Self {
            spec,
            left,
            right,
            left_keys,
            right_keys,
            left_time,
            right_time,
            right_columns,
            output: Arc::new(Schema::new(fields)),
        })
    }

    /// How far behind the watermark the output's event times can be.
    pub fn watermark_delay(&self) -> i64 {
        self.spec.upper.max(0)
    }

    /// The operator of one worker.
    pub fn operator(&self) -> Result<Box<dyn Operator>, DataflowError> {
        let converter = |schema: &SchemaRef| {
            RowConverter::new(
                schema
                    .fields()
                    .iter()
                    .map(|f| SortField::new(f.data_type().clone()))
                    .collect(),
            )
            .map_err(arrow_error)
        };
        Ok(Box::new(JoinOperator {
            left_keys: KeyEncoder::new(self.left.clone(), self.left_keys.clone())
                .map_err(arrow_error)?,
            right_keys: KeyEncoder::new(self.right.clone(), self.right_keys.clone())
                .map_err(arrow_error)?,
            left_rows: converter(&self.left)?,
            right_rows: converter(&self.right)?,
            plan: self.clone(),
            pending: Vec::new(),
        }))
    }
}

fn arrow_error(error: arrow::error::ArrowError) -> DataflowError {
    DataflowError::Execution(error.to_string())
}

/// State: a key's rows of both sides, as one value (a key has few rows
/// within the bound: one read per arrival is cheaper than a scan, or a read
/// per side): `(event time, encoded row, times it came)`, and for a left
/// row whether it met a right row.
const ROWS: &str = "rows";
type LeftRows = Vec<(i64, Vec<u8>, u32, bool)>;
type RightRows = Vec<(i64, Vec<u8>, u32)>;
type Rows = (LeftRows, RightRows);

struct JoinOperator {
    plan: IntervalJoinPlan,
    left_keys: KeyEncoder,
    right_keys: KeyEncoder,
    left_rows: RowConverter,
    right_rows: RowConverter,
    /// Output rows not yet emitted: a left row and its match (`None`: none).
    pending: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl JoinOperator {
    fn process_left(
        &mut self,
        batch: &RecordBatch,
        ctx: &mut Context<'_>,
    ) -> Result<(), DataflowError> {
        let keys = self.left_keys.rows(batch).map_err(arrow_error)?;
        let rows = self
            .left_rows
            .convert_columns(batch.columns())
            .map_err(arrow_error)?;
        let times = event_times(batch.column(self.plan.left_time))?;
        let null_key = null_keys(batch, &self.plan.left_keys);
        let (lower, upper) = (self.plan.spec.lower, self.plan.spec.upper);
        for (i, time) in times.into_iter().enumerate() {
            let row = rows.row(i).as_ref().to_vec();
            if null_key[i] {
                // A null key meets nobody.
                if self.plan.spec.kind == JoinKind::Left {
                    self.pending.push((row, None));
                }
                continue;
            }
            let key = keys.row(i);
            let key = key.as_ref();
            let mut matched = false;
            let (mut lefts, rights): Rows = ctx.value(ROWS).get(key)?.unwrap_or_default();
            for (t, right, count) in &rights {
                if time + lower <= *t && *t <= time + upper {
                    matched = true;
                    for _ in 0..*count {
                        self.pending.push((row.clone(), Some(right.clone())));
                    }
                }
            }
            match lefts
                .iter_mut()
                .find(|(t, r, _, _)| *t == time && *r == row)
            {
                Some(same) => {
                    same.2 += 1;
                    same.3 |= matched;
                }
                None => lefts.push((time, row, 1, matched)),
            }
            ctx.value(ROWS).set(key, &(lefts, rights))?;
            // Expires once the watermark is past `time + upper`.
            ctx.set_timer(key, time.saturating_add(upper).saturating_add(1));
        }
        Ok(())
    }

    fn process_right(
        &mut self,
        batch: &RecordBatch,
        ctx: &mut Context<'_>,
    ) -> Result<(), DataflowError> {
        let keys = self.right_keys.rows(batch).map_err(arrow_error)?;
        let rows = self
            .right_rows
            .convert_columns(batch.columns())
            .map_err(arrow_error)?;
        let times = event_times(batch.column(self.plan.right_time))?;
        let null_key = null_keys(batch, &self.plan.right_keys);
        let (lower, upper) = (self.plan.spec.lower, self.plan.spec.upper);
        for (i, time) in times.into_iter().enumerate() {
            if null_key[i] {
                continue;
            }
            let row = rows.row(i).as_ref().to_vec();
            let key = keys.row(i);
            let key = key.as_ref();
            let (mut lefts, mut rights): Rows = ctx.value(ROWS).get(key)?.unwrap_or_default();
            for (t, left_row, count, matched) in lefts.iter_mut() {
                if *t + lower <= time && time <= *t + upper {
                    for _ in 0..*count {
                        self.pending.push((left_row.clone(), Some(row.clone())));
                    }
                    *matched = true;
                }
            }
            match rights.iter_mut().find(|(t, r, _)| *t == time && *r == row) {
                Some(same) => same.2 += 1,
                None => rights.push((time, row, 1)),
            }
            ctx.value(ROWS).set(key, &(lefts, rights))?;
            // Expires once the watermark is past `time - lower`.
            ctx.set_timer(key, time.saturating_sub(lower).saturating_add(1));
        }
        Ok(())
    }

    /// Emits the pending rows as one batch.
    fn flush(&mut self, ctx: &mut Context<'_>) -> Result<(), DataflowError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let left_parser = self.left_rows.parser();
        let mut columns: Vec<ArrayRef> = self
            .left_rows
            .convert_rows(pending.iter().map(|(l, _)| left_parser.parse(l)))
            .map_err(arrow_error)?;
        // Right rows of the matches, then `take` with a null where none.
        let right_parser = self.right_rows.parser();
        let matched: Vec<&Vec<u8>> = pending.iter().filter_map(|(_, r)| r.as_ref()).collect();
        let right = self
            .right_rows
            .convert_rows(matched.iter().map(|r| right_parser.parse(r)))
            .map_err(arrow_error)?;
        let mut next = 0_u32;
        let indices: UInt32Array = pending
            .iter()
            .map(|(_, r)| {
                r.as_ref().map(|_| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        for &i in &self.plan.right_columns {
            columns.push(take(right[i].as_ref(), &indices, None).map_err(arrow_error)?);
        }
        let batch = RecordBatch::try_new(self.plan.output.clone(), columns).map_err(arrow_error)?;
        ctx.emit(batch);
        Ok(())
    }
}

/// Rows where any key column is null.
fn null_keys(batch: &RecordBatch, keys: &[usize]) -> Vec<bool> {
    (0..batch.num_rows())
        .map(|row| keys.iter().any(|&k| batch.column(k).is_null(row)))
        .collect()
}

impl Operator for JoinOperator {
    fn process(&mut self, batch: &RecordBatch, ctx: &mut Context<'_>) -> Result<(), DataflowError> {
        match ctx.input() {
            0 => self.process_left(batch, ctx)?,
            _ => self.process_right(batch, ctx)?,
        }
        self.flush(ctx)
    }

    fn on_timer(
        &mut self,
        key: &[u8],
        _time: i64,
        ctx: &mut Context<'_>,
    ) -> Result<(), DataflowError> {
        let watermark = ctx.watermark().unwrap_or(i64::MIN);
        let (lower, upper) = (self.plan.spec.lower, self.plan.spec.upper);
        let outer = self.plan.spec.kind == JoinKind::Left;
        let Some((mut lefts, mut rights)): Option<Rows> = ctx.value(ROWS).get(key)? else {
            return Ok(());
        };
        let before = lefts.len() + rights.len();
        lefts.retain(|(t, row, count, matched)| {
            let expired = t.saturating_add(upper) < watermark;
            if expired && outer && !matched {
                for _ in 0..*count {
                    self.pending.push((row.clone(), None));
                }
            }
            !expired
        });
        rights.retain(|(t, _, _)| t.saturating_sub(lower) >= watermark);
        if lefts.is_empty() && rights.is_empty() {
            ctx.value::<Rows>(ROWS).clear(key);
        } else if lefts.len() + rights.len() < before {
            ctx.value(ROWS).set(key, &(lefts, rights))?;
        }
        Ok(())
    }

    fn on_watermark(
        &mut self,
        _watermark: i64,
        ctx: &mut Context<'_>,
    ) -> Result<(), DataflowError> {
        self.flush(ctx)
    }
}
