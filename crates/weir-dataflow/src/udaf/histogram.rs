//! `histogram(x, low, high, bins)`: how many values of `x` fall in each of
//! `bins` equal bins over `[low, high]`, as a list of counts.
//!
//! The bins are `numpy.histogram`'s: each is half-open `[a, b)` except the
//! last, which holds `high` too; values outside `[low, high]`, NaN and
//! nulls are not counted. Counts add, so histograms merge exactly.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray as _, BinaryArray, Int64Array};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Signature, Volatility};

/// The most bins a histogram may have.
const MAX_BINS: i64 = 10_000;

/// `histogram(x, low, high, bins)`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Histogram {
    signature: Signature,
}

impl Histogram {
    /// The function.
    pub fn new() -> Self {
        Self {
            signature: Signature::exact(
                vec![
                    DataType::Float64,
                    DataType::Float64,
                    DataType::Float64,
                    DataType::Int64,
                ],
                Volatility::Immutable,
            ),
        }
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

fn counts_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Int64, true)))
}

impl AggregateUDFImpl for Histogram {
    fn name(&self) -> &str {
        "histogram"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(counts_type())
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format_state_name(args.name, "counts"),
            DataType::Binary,
            true,
        ))])
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let number = |i: usize, what: &str| -> Result<f64> {
            match super::constant(&args.exprs[i], "histogram", what)? {
                ScalarValue::Float64(Some(x)) if x.is_finite() => Ok(x),
                other => plan_err!("histogram: {what} must be a finite number, not {other}"),
            }
        };
        let (low, high) = (number(1, "low")?, number(2, "high")?);
        let bins = match super::constant(&args.exprs[3], "histogram", "bins")? {
            ScalarValue::Int64(Some(n)) if (1..=MAX_BINS).contains(&n) => n as usize,
            other => plan_err!("histogram: bins must be from 1 to {MAX_BINS}, not {other}")?,
        };
        if low >= high {
            return plan_err!("histogram: low ({low}) must be below high ({high})");
        }
        Ok(Box::new(HistogramAccumulator {
            low,
            high,
            counts: vec![0; bins],
        }))
    }
}

#[derive(Debug)]
struct HistogramAccumulator {
    low: f64,
    high: f64,
    counts: Vec<u64>,
}

impl HistogramAccumulator {
    fn bin(&self, x: f64) -> Option<usize> {
        if !(self.low..=self.high).contains(&x) {
            return None;
        }
        let bins = self.counts.len();
        let width = (self.high - self.low) / bins as f64;
        let edge = |i: usize| self.low + width * i as f64;
        let mut at = (((x - self.low) / width) as usize).min(bins - 1);
        // Rounding can land a value next to its bin: compare with the
        // edges, as numpy does.
        if x < edge(at) {
            at -= 1;
        } else if at + 1 < bins && x >= edge(at + 1) {
            at += 1;
        }
        Some(at)
    }
}

impl Accumulator for HistogramAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        for x in values[0].as_primitive::<Float64Type>().iter().flatten() {
            if let Some(bin) = self.bin(x) {
                self.counts[bin] += 1;
            }
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let states: &BinaryArray = states[0].as_binary();
        for bytes in states.iter().flatten() {
            if bytes.len() != 8 * self.counts.len() {
                return exec_err!(
                    "histogram: a stored state has {} bytes, not {} for {} bins",
                    bytes.len(),
                    8 * self.counts.len(),
                    self.counts.len()
                );
            }
            for (count, chunk) in self.counts.iter_mut().zip(bytes.chunks_exact(8)) {
                *count += u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            }
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let bytes: Vec<u8> = self.counts.iter().flat_map(|c| c.to_le_bytes()).collect();
        Ok(vec![ScalarValue::Binary(Some(bytes))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let counts: Int64Array = self.counts.iter().map(|&c| c as i64).collect();
        Ok(ScalarValue::List(ScalarValue::new_list_nullable(
            &counts.iter().map(ScalarValue::Int64).collect::<Vec<_>>(),
            &DataType::Int64,
        )))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + 8 * self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Float64Array;

    /// `numpy.histogram(values, bins, range=(low, high))[0]`, written out.
    fn numpy_histogram(values: &[f64], low: f64, high: f64, bins: usize) -> Vec<u64> {
        let width = (high - low) / bins as f64;
        let mut edges: Vec<f64> = (0..=bins).map(|i| low + width * i as f64).collect();
        edges[bins] = high;
        let mut counts = vec![0; bins];
        for &x in values {
            for i in 0..bins {
                let last = i == bins - 1;
                if x >= edges[i] && (x < edges[i + 1] || (last && x <= edges[i + 1])) {
                    counts[i] += 1;
                    break;
                }
            }
        }
        counts
    }

    #[test]
    fn counts_as_numpy_does_and_merges_exactly() {
        let values: Vec<f64> = (0..5_000)
            .map(|i| ((i * 37) % 1_300) as f64 / 10.0 - 10.0)
            .chain([0.0, 100.0, 100.0001, -0.0001, f64::NAN])
            .collect();
        let (low, high, bins) = (0.0, 100.0, 7);
        let reference = numpy_histogram(&values, low, high, bins);
        let mut merged = HistogramAccumulator {
            low,
            high,
            counts: vec![0; bins],
        };
        for part in values.chunks(777) {
            let mut partial = HistogramAccumulator {
                low,
                high,
                counts: vec![0; bins],
            };
            partial
                .update_batch(&[Arc::new(Float64Array::from(part.to_vec()))])
                .unwrap();
            let state = partial.state().unwrap()[0].to_array().unwrap();
            merged.merge_batch(&[state]).unwrap();
        }
        assert_eq!(merged.counts, reference);
        assert!(reference.iter().sum::<u64>() > 3_000, "{reference:?}");
    }
}
