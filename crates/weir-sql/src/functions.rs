//! The streaming window functions of the dialect, as DataFusion scalar
//! functions, used in `GROUP BY` the way Arroyo uses them:
//!
//! - `tumble(ts, INTERVAL '1 minute')`: the start of `ts`'s window;
//! - `hop(ts, INTERVAL '5 minutes', INTERVAL '1 hour')`: windows of one
//!   hour starting every five minutes (slide, then size);
//! - `session(ts, INTERVAL '30 minutes')`: a key's events less than the gap
//!   apart.
//!
//! `tumble` computes its value, so a batch query can run it as it is. An
//! event belongs to several hopping windows and a session depends on other
//! events, so `hop` and `session` only mark the window: the streaming
//! planner reads their arguments, and the batch planner rewrites them (see
//! [`crate::batch`]). `hop_starts` gives the starts of an event's hopping
//! windows as a list, for that rewrite.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, ListArray, TimestampMillisecondArray};
use arrow::buffer::OffsetBuffer;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, TimeUnit};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use weir_dataflow::window::Window;

/// The type of window starts and ends.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

/// Which window function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WindowKind {
    /// `tumble(ts, size)`.
    Tumble,
    /// `hop(ts, slide, size)`.
    Hop,
    /// `session(ts, gap)`.
    Session,
}

impl WindowKind {
    /// The SQL name.
    pub fn name(self) -> &'static str {
        match self {
            WindowKind::Tumble => "tumble",
            WindowKind::Hop => "hop",
            WindowKind::Session => "session",
        }
    }

    fn intervals(self) -> usize {
        match self {
            WindowKind::Hop => 2,
            _ => 1,
        }
    }

    /// The kind a function name stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        [WindowKind::Tumble, WindowKind::Hop, WindowKind::Session]
            .into_iter()
            .find(|k| k.name() == name)
    }
}

/// A window function of the dialect.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct WindowFunction {
    kind: WindowKind,
    signature: Signature,
}

impl WindowFunction {
    /// The function as a DataFusion UDF.
    pub fn udf(kind: WindowKind) -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            kind,
            signature: Signature::any(1 + kind.intervals(), Volatility::Immutable),
        })
    }
}

fn check_time(name: &str, data_type: &DataType) -> Result<()> {
    match data_type {
        DataType::Int64 | DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => Ok(()),
        other => plan_err!(
            "the first argument of `{name}` is the event time (a timestamp or milliseconds), not {other}"
        ),
    }
}

impl ScalarUDFImpl for WindowFunction {
    fn name(&self) -> &str {
        self.kind.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        check_time(self.name(), &arg_types[0])?;
        for (i, t) in arg_types.iter().enumerate().skip(1) {
            if !matches!(t, DataType::Interval(_)) {
                return plan_err!(
                    "argument {} of {}() is an INTERVAL, not {t}",
                    i + 1,
                    self.name()
                );
            }
        }
        Ok(timestamp_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if self.kind != WindowKind::Tumble {
            return exec_err!(
                "{}() groups rows into windows: it can only be used in GROUP BY",
                self.name()
            );
        }
        let size = interval_ms(&args.args[1])?;
        let window = Window::tumbling(std::time::Duration::from_millis(size as u64))
            .map_err(|e| datafusion::error::DataFusionError::Plan(e.to_string()))?;
        let times = millis(&args.args[0], args.number_rows)?;
        let starts: TimestampMillisecondArray =
            times.iter().map(|t| t.map(|t| window.pane_of(t))).collect();
        Ok(ColumnarValue::Array(Arc::new(starts)))
    }
}

/// `hop_starts(ts, slide, size)`: the starts of the hopping windows `ts`
/// is in, as a list.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct HopStarts {
    signature: Signature,
}

/// Name of [`HopStarts`].
pub const HOP_STARTS: &str = "weir_hop_starts";

impl HopStarts {
    /// The function as a DataFusion UDF.
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            signature: Signature::any(3, Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for HopStarts {
    fn name(&self) -> &str {
        HOP_STARTS
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        check_time(self.name(), &arg_types[0])?;
        Ok(DataType::List(Arc::new(Field::new(
            "item",
            timestamp_type(),
            false,
        ))))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (slide, size) = (interval_ms(&args.args[1])?, interval_ms(&args.args[2])?);
        let window = Window::hopping(
            std::time::Duration::from_millis(size as u64),
            std::time::Duration::from_millis(slide as u64),
        )
        .map_err(|e| datafusion::error::DataFusionError::Plan(e.to_string()))?;
        let times = millis(&args.args[0], args.number_rows)?;
        let mut offsets = vec![0_i32];
        let mut values = Vec::new();
        for t in times.iter() {
            if let Some(t) = t {
                values.extend(window.windows_of(t));
            }
            offsets.push(values.len() as i32);
        }
        let list = ListArray::new(
            Arc::new(Field::new("item", timestamp_type(), false)),
            OffsetBuffer::new(offsets.into()),
            Arc::new(TimestampMillisecondArray::from(values)),
            None,
        );
        Ok(ColumnarValue::Array(Arc::new(list)))
    }
}

/// Event times as milliseconds.
fn millis(value: &ColumnarValue, rows: usize) -> Result<Int64Array> {
    let array: ArrayRef = value.to_array(rows)?;
    let array = match array.data_type() {
        DataType::Int64 => array,
        DataType::Timestamp(TimeUnit::Millisecond, _) => cast(&array, &DataType::Int64)?,
        _ => cast(&cast(&array, &timestamp_type())?, &DataType::Int64)?,
    };
    Ok(array
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("cast to Int64")
        .clone())
}

/// Milliseconds of a constant INTERVAL argument.
fn interval_ms(value: &ColumnarValue) -> Result<i64> {
    match value {
        ColumnarValue::Scalar(scalar) => scalar_interval_ms(scalar),
        ColumnarValue::Array(_) => exec_err!("a window's size must be a constant INTERVAL"),
    }
}

/// Milliseconds of an INTERVAL literal; months are refused (their length
/// varies).
pub fn scalar_interval_ms(scalar: &ScalarValue) -> Result<i64> {
    let ms = match scalar {
        ScalarValue::IntervalMonthDayNano(Some(v)) => {
            if v.months != 0 {
                return plan_err!("a window's size cannot be in months (their length varies)");
            }
            i64::from(v.days) * 86_400_000 + v.nanoseconds / 1_000_000
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            i64::from(v.days) * 86_400_000 + i64::from(v.milliseconds)
        }
        ScalarValue::IntervalYearMonth(Some(_)) => {
            return plan_err!("a window's size cannot be in months or years (their length varies)");
        }
        other => return plan_err!("a window's size must be an INTERVAL, not {other}"),
    };
    if ms <= 0 {
        return plan_err!("a window's size must be positive");
    }
    Ok(ms)
}

/// The window an `Expr` is a call of, with its time argument and intervals
/// (in ms), if it is one.
pub fn window_call(expr: &Expr) -> Option<(WindowKind, &Expr, Vec<&Expr>)> {
    let Expr::ScalarFunction(call) = expr else {
        return None;
    };
    let kind = WindowKind::from_name(call.func.name())?;
    let (time, intervals) = call.args.split_first()?;
    Some((kind, time, intervals.iter().collect()))
}

/// The window of a call's interval arguments.
pub fn window_of(kind: WindowKind, intervals: &[&Expr]) -> Result<Window> {
    let ms = intervals
        .iter()
        .map(|e| match e {
            Expr::Literal(value, _) => scalar_interval_ms(value),
            _ => plan_err!("the sizes of {}() must be INTERVAL literals", kind.name()),
        })
        .collect::<Result<Vec<_>>>()?;
    let d = |ms: i64| std::time::Duration::from_millis(ms as u64);
    let window = match kind {
        WindowKind::Tumble => Window::tumbling(d(ms[0])),
        WindowKind::Hop => Window::hopping(d(ms[1]), d(ms[0])),
        WindowKind::Session => Window::session(d(ms[0])),
    };
    window.map_err(|e| datafusion::error::DataFusionError::Plan(e.to_string()))
}
