//! Weir's own aggregate functions, for streams and batch queries alike,
//! each a DataFusion `AggregateUDF` whose state is one binary value, so it
//! checkpoints as the built-in aggregates do and merges across panes,
//! windows and workers:
//!
//! - `quantile(x, q)`: a DDSketch (relative error ≤ 1 %, merged exactly:
//!   the sketch of a union is the union of the sketches);
//! - `histogram(x, low, high, bins)`: counts in `bins` equal bins over
//!   `[low, high]`, as `numpy.histogram` counts them (values outside are
//!   not counted, `high` falls in the last bin).
//!
//! Counting distinct values needs no function of ours: `count(DISTINCT x)`
//! is exact and `approx_distinct(x)` (HyperLogLog) is bounded; both
//! checkpoint already.

mod histogram;
mod quantile;

use std::sync::Arc;

use datafusion::common::{ScalarValue, plan_err};
use datafusion::error::Result;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{AggregateUDF, ColumnarValue};
use datafusion::physical_expr::PhysicalExpr;

pub use histogram::Histogram;
pub use quantile::{Quantile, RELATIVE_ERROR, new_sketch};

/// Weir's aggregate functions.
pub fn all() -> Vec<AggregateUDF> {
    vec![
        AggregateUDF::from(Quantile::new()),
        AggregateUDF::from(Histogram::new()),
    ]
}

/// A DataFusion context with Weir's functions registered: what every plan
/// of a job or a view is made in.
pub fn context() -> SessionContext {
    register(SessionContext::new())
}

/// Registers Weir's functions in `context`.
pub fn register(context: SessionContext) -> SessionContext {
    for function in all() {
        context.register_udaf(function);
    }
    context
}

/// The value of a constant argument (`q` of `quantile`, the bounds of
/// `histogram`).
fn constant(expr: &Arc<dyn PhysicalExpr>, function: &str, what: &str) -> Result<ScalarValue> {
    let empty = arrow::array::RecordBatch::new_empty(Arc::new(arrow::datatypes::Schema::empty()));
    match expr.evaluate(&empty) {
        Ok(ColumnarValue::Scalar(value)) if !value.is_null() => Ok(value),
        _ => plan_err!("{function}: {what} must be a constant"),
    }
}
