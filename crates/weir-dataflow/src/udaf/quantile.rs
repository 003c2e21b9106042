//! `quantile(x, q)`: the `q`-quantile of `x` from a DDSketch.
//!
//! The sketch keeps counts in logarithmic buckets, so the answer is within
//! [`RELATIVE_ERROR`] of the exact value of rank `⌊q·(n−1)⌋`, whatever
//! the distribution, and two sketches merge by adding their counts: a
//! window's quantile is the same whether its rows came through one pane
//! or many, one worker or several. (DataFusion's `approx_percentile_cont`
//! is a t-digest, whose merge depends on order.)

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray as _, BinaryArray};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Signature, Volatility};
use sketches_ddsketch::{Config, DDSketch};

/// The sketch's bound on `|estimate − exact| / |exact|`.
pub const RELATIVE_ERROR: f64 = 0.01;

/// `quantile(x, q)`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Quantile {
    signature: Signature,
}

impl Quantile {
    /// The function.
    pub fn new() -> Self {
        Self {
            signature: Signature::exact(
                vec![DataType::Float64, DataType::Float64],
                Volatility::Immutable,
            ),
        }
    }
}

impl Default for Quantile {
    fn default() -> Self {
        Self::new()
    }
}

/// An empty sketch as `quantile` keeps it.
pub fn new_sketch() -> DDSketch {
    // 2048 buckets of 1 % cover 35 orders of magnitude before the lowest
    // collapse; values nearer zero than 1e-9 count as zero.
    DDSketch::new(Config::new(RELATIVE_ERROR, 2048, 1e-9))
}

impl AggregateUDFImpl for Quantile {
    fn name(&self) -> &str {
        "quantile"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format_state_name(args.name, "sketch"),
            DataType::Binary,
            true,
        ))])
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let q = match super::constant(&args.exprs[1], "quantile", "q")? {
            ScalarValue::Float64(Some(q)) => q,
            other => return plan_err!("quantile: q must be a number, not {other}"),
        };
        if !(0.0..=1.0).contains(&q) {
            return plan_err!("quantile: q must be between 0 and 1, not {q}");
        }
        Ok(Box::new(QuantileAccumulator {
            sketch: new_sketch(),
            q,
        }))
    }
}

struct QuantileAccumulator {
    sketch: DDSketch,
    q: f64,
}

impl std::fmt::Debug for QuantileAccumulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantileAccumulator")
            .field("count", &self.sketch.count())
            .field("q", &self.q)
            .finish()
    }
}

impl Accumulator for QuantileAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let values = values[0].as_primitive::<Float64Type>();
        for value in values.iter().flatten() {
            if value.is_finite() {
                self.sketch.add(value);
            }
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let states: &BinaryArray = states[0].as_binary();
        for bytes in states.iter().flatten() {
            let other = match DDSketch::from_java_bytes(bytes) {
                Ok(other) => other,
                Err(e) => return exec_err!("quantile: a stored sketch does not decode: {e}"),
            };
            if let Err(e) = self.sketch.merge(&other) {
                return exec_err!("quantile: sketches do not merge: {e}");
            }
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Binary(Some(self.sketch.to_java_bytes()))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        match self.sketch.quantile(self.q) {
            Ok(value) => Ok(ScalarValue::Float64(value)),
            Err(e) => exec_err!("quantile: {e}"),
        }
    }

    fn size(&self) -> usize {
        // Two stores of at most 2048 u64 counts; the sketch does not say.
        std::mem::size_of_val(self) + 8 * self.sketch.length()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Float64Array;

    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64) as usize]
    }

    #[test]
    fn merged_sketches_answer_as_one_within_the_bound() {
        // A skewed distribution over six orders of magnitude, and negatives.
        let values: Vec<f64> = (0..20_000)
            .map(|i| {
                let x = ((i * 7919) % 20_000) as f64;
                if i % 10 == 0 {
                    -x
                } else {
                    1e-2 * x.powi(2) + 1.0
                }
            })
            .collect();
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);

        let mut whole = QuantileAccumulator {
            sketch: new_sketch(),
            q: 0.0,
        };
        whole
            .update_batch(&[Arc::new(Float64Array::from(values.clone()))])
            .unwrap();
        let mut merged = QuantileAccumulator {
            sketch: new_sketch(),
            q: 0.0,
        };
        for part in values.chunks(3_001) {
            let mut partial = QuantileAccumulator {
                sketch: new_sketch(),
                q: 0.0,
            };
            partial
                .update_batch(&[Arc::new(Float64Array::from(part.to_vec()))])
                .unwrap();
            let state = partial.state().unwrap()[0].to_array().unwrap();
            merged.merge_batch(&[state]).unwrap();
        }
        for q in [0.01, 0.05, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999] {
            whole.q = q;
            merged.q = q;
            let (ScalarValue::Float64(Some(one)), ScalarValue::Float64(Some(parts))) =
                (whole.evaluate().unwrap(), merged.evaluate().unwrap())
            else {
                panic!("no quantile")
            };
            assert_eq!(one, parts, "q = {q}: merging changed the answer");
            let truth = exact(&sorted, q);
            assert!(
                (one - truth).abs() <= RELATIVE_ERROR * truth.abs() + 1e-9,
                "q = {q}: {one} vs exact {truth}"
            );
        }
    }
}
