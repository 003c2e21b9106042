//! Helpers over DataFusion's logical expressions.

use datafusion::logical_expr::Expr;

/// An expression without the casts type coercion may have put around it.
pub(crate) fn strip_cast(expr: &Expr) -> &Expr {
    match expr {
        Expr::Cast(cast) => strip_cast(&cast.expr),
        Expr::TryCast(cast) => strip_cast(&cast.expr),
        other => other,
    }
}
