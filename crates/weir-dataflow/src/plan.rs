//! Expressions and aggregates, planned by DataFusion.
//!
//! A job's filter, grouping keys and aggregates are written as SQL fragments
//! (`amount > 0`, `user_id`, `count(DISTINCT merchant_id)`) and planned the
//! way DataFusion plans `SELECT keys, aggregates FROM input WHERE filter
//! GROUP BY keys`: parsed, type-coerced, and lowered to physical expressions
//! and `AggregateFunctionExpr`s. The streaming operators then use the same
//! accumulators DataFusion's batch engine uses, so a stream and a batch over
//! the same rows compute the same values.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::datasource::empty::EmptyTable;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::aggregate::{AggregateFunctionExpr, LoweredAggregateBuilder};
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};

use crate::DataflowError;

/// Name of the input table in the planned query.
const INPUT: &str = "input";

/// The physical pieces of `SELECT keys, aggregates FROM input WHERE filter
/// GROUP BY keys`.
#[derive(Debug, Clone)]
pub struct AggregatePlan {
    /// The input schema.
    pub input: SchemaRef,
    /// Rows to keep, if filtered.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// Input columns of the grouping keys.
    pub keys: Vec<usize>,
    /// The aggregates, in order.
    pub aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// Output names of the aggregates.
    pub names: Vec<String>,
}

/// Quotes an identifier for SQL.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Plans an aggregation over rows of `schema`.
///
/// `aggregates` are `(output name, SQL aggregate)` pairs such as
/// `("merchants", "count(DISTINCT merchant_id)")`. Grouping keys must be
/// input columns.
pub fn plan_aggregate(
    schema: SchemaRef,
    filter: Option<&str>,
    keys: &[&str],
    aggregates: &[(&str, &str)],
) -> Result<AggregatePlan, DataflowError> {
    if aggregates.is_empty() {
        return Err(DataflowError::Plan(
            "an aggregation needs at least one aggregate".into(),
        ));
    }
    let key_indices = keys
        .iter()
        .map(|key| {
            schema.index_of(key).map_err(|_| {
                DataflowError::Plan(format!(
                    "grouping key `{key}` is not a column of the input ({})",
                    column_list(&schema)
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut select: Vec<String> = keys.iter().map(|k| quote(k)).collect();
    select.extend(
        aggregates
            .iter()
            .map(|(name, sql)| format!("{sql} AS {}", quote(name))),
    );
    let mut sql = format!("SELECT {} FROM {INPUT}", select.join(", "));
    if let Some(filter) = filter {
        sql.push_str(&format!(" WHERE {filter}"));
    }
    if !keys.is_empty() {
        let group: Vec<String> = keys.iter().map(|k| quote(k)).collect();
        sql.push_str(&format!(" GROUP BY {}", group.join(", ")));
    }

    let context = crate::udaf::context();
    context
        .register_table(INPUT, Arc::new(EmptyTable::new(schema.clone())))
        .map_err(|e| DataflowError::Plan(e.to_string()))?;
    let state = context.state();
    let plan = futures_lite_block_on(state.create_logical_plan(&sql))
        .map_err(|e| DataflowError::Plan(e.to_string()))?;
    // Type coercion only: the optimizer would rewrite the shape we read.
    let plan = state
        .analyzer()
        .execute_and_check(plan, state.config_options(), |_, _| {})
        .map_err(|e| DataflowError::Plan(e.to_string()))?;

    let mut found = None;
    plan.apply(|node| {
        if let LogicalPlan::Aggregate(aggregate) = node {
            found = Some(aggregate.clone());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(|e| DataflowError::Plan(e.to_string()))?;
    let aggregate =
        found.ok_or_else(|| DataflowError::Plan("no aggregate in the planned query".into()))?;

    let props = state.execution_props().clone();
    let planning = PhysicalPlanningContext::default();
    let filter = match aggregate.input.as_ref() {
        LogicalPlan::Filter(f) => Some(
            create_physical_expr(&f.predicate, f.input.schema(), &props, &planning)
                .map_err(|e| DataflowError::Plan(e.to_string()))?,
        ),
        _ => None,
    };
    let names: Vec<&str> = aggregates.iter().map(|(name, _)| *name).collect();
    let physical = physical_aggregates(&aggregate.aggr_expr, &names, aggregate.input.schema())?;
    Ok(AggregatePlan {
        input: schema,
        filter,
        keys: key_indices,
        aggregates: physical,
        names: aggregates
            .iter()
            .map(|(name, _)| name.to_string())
            .collect(),
    })
}

/// Lowers logical aggregate expressions over rows of `input` to the
/// physical aggregates the window operator runs, named `names`.
pub fn physical_aggregates(
    exprs: &[Expr],
    names: &[&str],
    input: &DFSchemaRef,
) -> Result<Vec<Arc<AggregateFunctionExpr>>, DataflowError> {
    let props = datafusion::execution::context::ExecutionProps::new();
    let planning = PhysicalPlanningContext::default();
    let arrow_input = input.as_arrow();
    let mut physical = Vec::new();
    for (expr, name) in exprs.iter().zip(names) {
        let lowered = LoweredAggregateBuilder::new(expr, input, arrow_input, &props, &planning)
            .with_name(*name)
            .build()
            .map_err(|e| DataflowError::Plan(format!("aggregate `{name}`: {e}")))?;
        if lowered.filter.is_some() || !lowered.order_bys.is_empty() {
            return Err(DataflowError::Plan(format!(
                "aggregate `{name}`: FILTER and ORDER BY inside aggregates are not supported in streams"
            )));
        }
        physical.push(lowered.aggregate);
    }
    Ok(physical)
}

/// Plans a scalar expression over rows of `schema` (a filter or a projection).
pub fn plan_expr(schema: SchemaRef, sql: &str) -> Result<Arc<dyn PhysicalExpr>, DataflowError> {
    let context = crate::udaf::context();
    let df_schema = DFSchema::try_from(schema.as_ref().clone())
        .map_err(|e| DataflowError::Plan(e.to_string()))?;
    let expr: Expr = context
        .parse_sql_expr(sql, &df_schema)
        .map_err(|e| DataflowError::Plan(format!("`{sql}`: {e}")))?;
    context
        .create_physical_expr(expr, &df_schema)
        .map_err(|e| DataflowError::Plan(format!("`{sql}`: {e}")))
}

fn column_list(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Planning an in-memory table never waits: run the future to completion here.
fn futures_lite_block_on<F: Future>(future: F) -> F::Output {
    futures::executor::block_on(future)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("merchant_id", DataType::Utf8, false),
            Field::new("amount", DataType::Float64, false),
            Field::new("qty", DataType::Int64, false),
            Field::new("event_time", DataType::Int64, false),
        ]))
    }

    #[test]
    fn plans_keys_filters_and_aggregates() {
        let plan = plan_aggregate(
            schema(),
            Some("amount > 0"),
            &["user_id"],
            &[
                ("n", "count(*)"),
                ("avg_amount", "avg(amount)"),
                ("avg_qty", "avg(qty)"),
                ("merchants", "count(DISTINCT merchant_id)"),
                ("p50", "approx_percentile_cont(amount, 0.5)"),
                ("sd", "stddev(amount)"),
            ],
        )
        .unwrap();
        assert_eq!(plan.keys, vec![0]);
        assert!(plan.filter.is_some());
        assert_eq!(plan.aggregates.len(), 6);
        assert!(plan.aggregates[3].is_distinct());
    }

    #[test]
    fn errors_name_the_problem() {
        let unknown = plan_aggregate(schema(), None, &["nope"], &[("n", "count(*)")]).unwrap_err();
        assert!(unknown.to_string().contains("`nope`"), "{unknown}");
        let bad =
            plan_aggregate(schema(), None, &["user_id"], &[("n", "cnt(amount)")]).unwrap_err();
        assert!(bad.to_string().contains("cnt"), "{bad}");
        let column = plan_expr(schema(), "amout > 1").unwrap_err();
        assert!(column.to_string().contains("amout"), "{column}");
    }
}
