//! How a figure varied over a bench's rounds: every side of a bench runs
//! the same rounds, in turns, and is reported by the same statistic — the
//! median, with the lowest and the highest.

use std::fmt;

/// The median, lowest and highest of a figure over rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// The median (of the middle two, for an even count).
    pub median: f64,
    /// The lowest.
    pub min: f64,
    /// The highest.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`; `None` when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut values: Vec<f64> = values.into_iter().collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: values[0],
            max: values[n - 1],
        })
    }
}

impl fmt::Display for Spread {
    /// `median [min–max]`, with the precision asked for (`{:.2}`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let precision = f.precision().unwrap_or(0);
        if self.min == self.max {
            return write!(f, "{:.precision$}", self.median);
        }
        write!(
            f,
            "{:.precision$} [{:.precision$}–{:.precision$}]",
            self.median, self.min, self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_and_max() {
        let spread = Spread::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((spread.median, spread.min, spread.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of([4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(Spread::of([]), None);
        assert_eq!(format!("{:.1}", spread), "2.0 [1.0–3.0]");
        assert_eq!(format!("{:.1}", Spread::of([5.0]).unwrap()), "5.0");
    }
}
