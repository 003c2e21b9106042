//! Stateless row transforms: a filter and a projection of DataFusion
//! physical expressions, applied batch by batch (before a window, or after
//! it on its results, or as a whole stateless job).

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::physical_expr::PhysicalExpr;

use crate::DataflowError;

/// One step of a transform.
#[derive(Debug, Clone)]
pub enum Step {
    /// Keep the rows for which the condition is true.
    Filter(Arc<dyn PhysicalExpr>),
    /// Compute these columns, giving a batch of this schema.
    Project(Vec<Arc<dyn PhysicalExpr>>, SchemaRef),
}

/// Filters and projections applied in order, batch by batch.
#[derive(Debug, Clone)]
pub struct Transform {
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// The output schema.
    pub output: SchemaRef,
}

impl Transform {
    /// Applies the steps to one batch.
    pub fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch, DataflowError> {
        let mut batch = batch.clone();
        for step in &self.steps {
            if batch.num_rows() == 0 {
                return Ok(RecordBatch::new_empty(self.output.clone()));
            }
            batch = match step {
                Step::Filter(filter) => {
                    let keep = filter
                        .evaluate(&batch)
                        .and_then(|v| v.into_array(batch.num_rows()))
                        .map_err(exec)?;
                    let keep = keep
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .ok_or_else(|| DataflowError::Plan("a filter is not a boolean".into()))?;
                    if keep.true_count() == batch.num_rows() && keep.null_count() == 0 {
                        batch
                    } else {
                        filter_record_batch(&batch, keep).map_err(exec)?
                    }
                }
                Step::Project(columns, schema) => {
                    let arrays = columns
                        .iter()
                        .map(|c| {
                            c.evaluate(&batch)
                                .and_then(|v| v.into_array(batch.num_rows()))
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(exec)?;
                    RecordBatch::try_new_with_options(
                        schema.clone(),
                        arrays,
                        &arrow::array::RecordBatchOptions::new()
                            .with_row_count(Some(batch.num_rows())),
                    )
                    .map_err(exec)?
                }
            };
        }
        Ok(batch)
    }
}

fn exec(error: impl std::fmt::Display) -> DataflowError {
    DataflowError::Execution(error.to_string())
}

/// Plans a transform over rows of `schema` from SQL: a condition, and
/// `(output name, expression)` pairs (`None`: keep every column).
pub fn plan_transform(
    schema: SchemaRef,
    filter: Option<&str>,
    columns: Option<&[(String, String)]>,
) -> Result<Transform, DataflowError> {
    let context = crate::udaf::context();
    let df_schema = DFSchema::try_from(schema.as_ref().clone())
        .map_err(|e| DataflowError::Plan(e.to_string()))?;
    let plan = |sql: &str| -> Result<Arc<dyn PhysicalExpr>, DataflowError> {
        let expr = context
            .parse_sql_expr(sql, &df_schema)
            .map_err(|e| DataflowError::Plan(format!("`{sql}`: {e}")))?;
        context
            .create_physical_expr(expr, &df_schema)
            .map_err(|e| DataflowError::Plan(format!("`{sql}`: {e}")))
    };
    let filter = filter.map(plan).transpose()?;
    if let Some(filter) = &filter {
        let data_type = filter
            .data_type(&schema)
            .map_err(|e| DataflowError::Plan(e.to_string()))?;
        if data_type != arrow::datatypes::DataType::Boolean {
            return Err(DataflowError::Plan(format!(
                "the filter is a {data_type}, not a condition"
            )));
        }
    }
    let mut steps: Vec<Step> = filter.into_iter().map(Step::Filter).collect();
    let output = match columns {
        None => schema.clone(),
        Some(columns) => {
            let mut exprs = Vec::new();
            let mut fields = Vec::new();
            for (name, sql) in columns {
                let expr = plan(sql)?;
                let field = expr
                    .return_field(&schema)
                    .map_err(|e| DataflowError::Plan(format!("`{sql}`: {e}")))?;
                fields.push(Field::new(
                    name,
                    field.data_type().clone(),
                    field.is_nullable(),
                ));
                exprs.push(expr);
            }
            let output = Arc::new(Schema::new(fields));
            steps.push(Step::Project(exprs, output.clone()));
            output
        }
    };
    Ok(Transform { steps, output })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Float64Array, StringArray};
    use arrow::datatypes::DataType;

    #[test]
    fn filters_and_projects() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("amount", DataType::Float64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
                Arc::new(Float64Array::from(vec![1.0, -2.0, 3.0])),
            ],
        )
        .unwrap();
        let transform = plan_transform(
            schema.clone(),
            Some("amount > 0"),
            Some(&[
                ("who".into(), "upper(user_id)".into()),
                ("cents".into(), "amount * 100".into()),
            ]),
        )
        .unwrap();
        let out = transform.apply(&batch).unwrap();
        assert_eq!(out.num_rows(), 2);
        assert_eq!(out.schema().field(0).name(), "who");
        let cents = out
            .column(1)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(cents.values(), &[100.0, 300.0]);
        let error = plan_transform(schema.clone(), Some("amount"), None).unwrap_err();
        assert!(error.to_string().contains("not a condition"), "{error}");
        let error = plan_transform(schema, Some("amout > 1"), None).unwrap_err();
        assert!(error.to_string().contains("amout"), "{error}");
        assert!(out.column(0).null_count() == 0);
    }
}
