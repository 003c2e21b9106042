//! A join of two streams in SQL, lowered to the runtime's interval join
//! ([`weir_dataflow::interval_join`]):
//!
//! ```sql
//! FROM requests r JOIN labels l
//!   ON r.request_id = l.request_id
//!  AND l.event_time BETWEEN r.event_time AND r.event_time + INTERVAL '1' HOUR
//! ```
//!
//! The `ON` is a conjunction of equalities between a column of each side
//! (the join key) and comparisons of the two event times, each side maybe
//! shifted by a constant (an interval, or milliseconds for a `long` event
//! time). The comparisons must bound `right.t - left.t` from below and from
//! above: that bound is how long each side waits in state for the other.

use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Join, JoinType, Operator};
use weir_dataflow::interval_join::IntervalJoin;
use weir_dataflow::job::{EventTime, KafkaSource, Start};
use weir_dataflow::lookup::JoinKind;

use crate::SqlError;
use crate::expr::strip_cast;
use crate::resolved::ResolvedSource;
use crate::view::{ViewFile, error_at};

/// Which side of the join an expression reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Left,
    Right,
}

/// The join's sides, for telling their columns apart.
struct Sides<'a> {
    left: &'a DFSchema,
    right: &'a DFSchema,
    left_time: &'a str,
    right_time: &'a str,
}

impl Sides<'_> {
    /// The side of a plain column.
    fn column(&self, expr: &Expr) -> Option<(Side, String)> {
        let Expr::Column(column) = strip_cast(expr) else {
            return None;
        };
        // A column both sides have unqualified is the left's, as
        // DataFusion resolves it.
        if self.left.has_column(column) {
            Some((Side::Left, column.name.clone()))
        } else if self.right.has_column(column) {
            Some((Side::Right, column.name.clone()))
        } else {
            None
        }
    }

    /// A side's event time plus a constant (ms).
    fn time(&self, expr: &Expr) -> Option<Result<(Side, i64), String>> {
        if let Some((side, name)) = self.column(expr) {
            let time = match side {
                Side::Left => self.left_time,
                Side::Right => self.right_time,
            };
            return (name == time).then_some(Ok((side, 0)));
        }
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = strip_cast(expr) else {
            return None;
        };
        let sign = match op {
            Operator::Plus => 1,
            Operator::Minus => -1,
            _ => return None,
        };
        if let Some(term) = self.time(left) {
            return Some(term.and_then(|(side, offset)| {
                let shift = millis(right)?;
                Ok((side, offset + sign * shift))
            }));
        }
        if sign == 1
            && let Some(term) = self.time(right)
        {
            return Some(term.and_then(|(side, offset)| Ok((side, offset + millis(left)?))));
        }
        None
    }
}

/// A constant shift of an event time, in ms: an interval, or an integer
/// (milliseconds, for a `long` event time).
fn millis(expr: &Expr) -> Result<i64, String> {
    let Expr::Literal(value, _) = strip_cast(expr) else {
        return Err(format!("`{expr}` is not a constant"));
    };
    match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            Ok(i64::from(v.days) * 86_400_000 + v.nanoseconds / 1_000_000)
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            Ok(i64::from(v.days) * 86_400_000 + i64::from(v.milliseconds))
        }
        ScalarValue::IntervalMonthDayNano(_) | ScalarValue::IntervalYearMonth(_) => {
            Err("a bound in months is not a fixed length of time: use days or hours".to_string())
        }
        other => other
            .cast_to(&arrow::datatypes::DataType::Int64)
            .ok()
            .and_then(|v| match v {
                ScalarValue::Int64(Some(ms)) => Some(ms),
                _ => None,
            })
            .ok_or_else(|| format!("`{expr}` is not a length of time")),
    }
}

/// Lowers a join of the streams `left` and `right` to an interval join.
pub(crate) fn interval_join(
    view: &ViewFile,
    join: &Join,
    left: &ResolvedSource,
    right: &ResolvedSource,
) -> Result<IntervalJoin, SqlError> {
    let usage = |message: String| {
        error_at(
            view,
            " ON ",
            format!(
                "{message}: a join of two streams is ON equal keys and a bound on the event times, \
                 `a.k = b.k AND b.{rt} BETWEEN a.{lt} AND a.{lt} + INTERVAL '1' HOUR`",
                lt = left.event_time,
                rt = right.event_time,
            ),
        )
    };
    let kind = match join.join_type {
        JoinType::Inner => JoinKind::Inner,
        JoinType::Left => JoinKind::Left,
        other => {
            return Err(error_at(
                view,
                "JOIN",
                format!(
                    "{other} joins of two streams are not supported: use JOIN or LEFT JOIN (the stream whose rows must all show first)"
                ),
            ));
        }
    };
    let sides = Sides {
        left: join.left.schema(),
        right: join.right.schema(),
        left_time: &left.event_time,
        right_time: &right.event_time,
    };
    let mut conjuncts: Vec<Expr> = join
        .on
        .iter()
        .map(|(a, b)| a.clone().eq(b.clone()))
        .collect();
    if let Some(filter) = &join.filter {
        conjuncts.extend(split_conjunction(filter).into_iter().cloned());
    }
    let mut on = Vec::new();
    let mut lower: Option<i64> = None;
    let mut upper: Option<i64> = None;
    let mut bound = |a: (Side, i64), op: Operator, b: (Side, i64)| -> Result<(), String> {
        // `a op b` as a bound on `right.t - left.t`.
        let (op, value) = match (a.0, b.0) {
            (Side::Right, Side::Left) => (op, b.1 - a.1),
            (Side::Left, Side::Right) => (op.swap().expect("a comparison swaps"), a.1 - b.1),
            _ => return Err("a bound compares the event times of both sides".to_string()),
        };
        match op {
            Operator::GtEq => lower = Some(lower.map_or(value, |l| l.max(value))),
            Operator::Gt => lower = Some(lower.map_or(value + 1, |l| l.max(value + 1))),
            Operator::LtEq => upper = Some(upper.map_or(value, |u| u.min(value))),
            Operator::Lt => upper = Some(upper.map_or(value - 1, |u| u.min(value - 1))),
            Operator::Eq => {
                lower = Some(lower.map_or(value, |l| l.max(value)));
                upper = Some(upper.map_or(value, |u| u.min(value)));
            }
            _ => unreachable!("only comparisons get here"),
        }
        Ok(())
    };
    for conjunct in &conjuncts {
        match strip_cast(conjunct) {
            Expr::BinaryExpr(BinaryExpr {
                left: a,
                op,
                right: b,
            }) if matches!(
                op,
                Operator::Eq | Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq
            ) =>
            {
                match (sides.time(a), sides.time(b)) {
                    (Some(a), Some(b)) => {
                        bound(a.map_err(&usage)?, *op, b.map_err(&usage)?).map_err(&usage)?
                    }
                    _ if *op == Operator::Eq => match (sides.column(a), sides.column(b)) {
                        (Some((Side::Left, l)), Some((Side::Right, r)))
                        | (Some((Side::Right, r)), Some((Side::Left, l))) => on.push((l, r)),
                        _ => {
                            return Err(usage(format!(
                                "`{conjunct}` does not equate a column of each side"
                            )));
                        }
                    },
                    _ => {
                        return Err(usage(format!(
                            "`{conjunct}` is not a bound on the event times"
                        )));
                    }
                }
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) => {
                let time = |e: &Expr| {
                    sides
                        .time(e)
                        .unwrap_or_else(|| Err(format!("`{e}` is not an event time")))
                        .map_err(&usage)
                };
                let (t, low, high) = (time(expr)?, time(low)?, time(high)?);
                bound(t, Operator::GtEq, low).map_err(&usage)?;
                bound(t, Operator::LtEq, high).map_err(&usage)?;
            }
            _ => return Err(usage(format!("`{conjunct}` is not a key or a bound"))),
        }
    }
    if on.is_empty() {
        return Err(usage("no equal keys".to_string()));
    }
    let (Some(lower), Some(upper)) = (lower, upper) else {
        return Err(usage(
            "the event times are not bounded on both sides, so a row would wait forever for its match"
                .to_string(),
        ));
    };
    if lower > upper {
        return Err(usage(format!(
            "no pair can match: `{rt} - {lt}` must be at least {lower} ms and at most {upper} ms",
            lt = left.event_time,
            rt = right.event_time,
        )));
    }
    Ok(IntervalJoin {
        right: KafkaSource {
            topic: right.topic.clone(),
            schema: Some(right.schema.clone()),
            event_time: EventTime::Field(right.event_time.clone()),
            lateness: right.lateness,
            idle_timeout: right.idle_timeout,
            start: Start::Earliest,
            bounded: false,
        },
        on,
        lower,
        upper,
        kind,
        // Every right column, under names the left's cannot take, so the
        // joined rows are laid out as DataFusion's join schema.
        columns: right
            .schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), format!("{}.{}", right.name, f.name())))
            .collect(),
    })
}
