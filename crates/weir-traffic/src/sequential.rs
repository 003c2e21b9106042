//! A two-sided sequential test of a candidate against the default: the
//! relative lift in mean reward with a confidence sequence that stays valid
//! however often it is looked at (the asymptotic confidence sequences of
//! Waudby-Smith et al., 2023, as GrowthBook's `SequentialTwoSidedTTest`
//! computes them; its published results are the unit tests' reference).
//!
//! A fixed-horizon t-test looked at after every batch of traffic declares a
//! difference in an A/A test far more often than its α says; a confidence
//! sequence holds its α over every look, so an experiment can be watched
//! continuously and stopped as soon as it is decided.

use serde::{Deserialize, Serialize};

use crate::policy::ArmStats;

/// One side of a comparison: the mean, variance and size of its sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Mean reward.
    pub mean: f64,
    /// Variance of one reward.
    pub variance: f64,
    /// Rewards seen.
    pub n: u64,
}

impl From<&ArmStats> for Sample {
    /// The sample variance (n − 1), 0 below two rewards.
    fn from(arm: &ArmStats) -> Self {
        let variance = if arm.n < 2 {
            0.0
        } else {
            let n = arm.n as f64;
            ((arm.sum_squares - arm.sum * arm.sum / n) / (n - 1.0)).max(0.0)
        };
        Self {
            mean: arm.mean(),
            variance,
            n: arm.n,
        }
    }
}

/// The test's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SequentialTest {
    /// The error rate held over every look.
    pub alpha: f64,
    /// The total sample size the sequence is tightest at (GrowthBook's
    /// `sequential_tuning_parameter`, default 5,000).
    pub tuning: f64,
}

impl Default for SequentialTest {
    fn default() -> Self {
        Self {
            alpha: 0.05,
            tuning: 5000.0,
        }
    }
}

/// A candidate against the default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Relative lift of the candidate's mean over the default's.
    pub lift: f64,
    /// The lift's standard error (delta method).
    pub stddev: f64,
    /// The confidence sequence at this look: `[low, high]`.
    pub low: f64,
    /// See `low`.
    pub high: f64,
    /// The always-valid p-value at this look (1 / the e-value, at most 1).
    pub p_value: f64,
}

impl SequentialTest {
    /// Compares `treatment` with `control`; `None` while it cannot be
    /// computed (a side with fewer than two rewards, a control mean of 0,
    /// no variance).
    pub fn compare(&self, control: Sample, treatment: Sample) -> Option<Comparison> {
        if control.n < 2 || treatment.n < 2 || control.mean == 0.0 {
            return None;
        }
        let (a, b) = (control, treatment);
        let variance = b.variance / (a.mean.powi(2) * b.n as f64)
            + a.variance * b.mean.powi(2) / (a.mean.powi(4) * a.n as f64);
        if variance <= 0.0 || !variance.is_finite() {
            return None;
        }
        let lift = (b.mean - a.mean) / a.mean;
        let total = (a.n + b.n) as f64;
        let alpha = self.alpha;
        let rho2 = (-2.0 * alpha.ln() + (-2.0 * alpha.ln() + 1.0).ln()) / self.tuning;
        let spread = total * rho2 + 1.0;
        let width = (variance * total).sqrt()
            * ((2.0 * spread * (spread.sqrt() / alpha).ln()) / (total * total * rho2)).sqrt();
        let st2 = lift * lift * total / variance;
        let e_value = (rho2 * st2 / (2.0 * spread)).exp() / spread.sqrt();
        Some(Comparison {
            lift,
            stddev: variance.sqrt(),
            low: lift - width,
            high: lift + width,
            p_value: (1.0 / e_value).min(1.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn sample_mean(sum: f64, sum_squares: f64, n: u64) -> Sample {
        Sample::from(&ArmStats {
            n,
            sum,
            sum_squares,
        })
    }

    fn proportion(sum: f64, n: u64) -> Sample {
        let mean = sum / n as f64;
        Sample {
            mean,
            variance: mean * (1.0 - mean),
            n,
        }
    }

    fn round5(x: f64) -> f64 {
        (x * 1e5).round() / 1e5
    }

    // GrowthBook's gbstats 0.8.0, tests/frequentist/test_tests.py,
    // TestSequentialTTest: the same statistics give the same results to the
    // five decimals it publishes.
    #[test]
    fn the_sequence_is_gbstats_on_its_published_cases() {
        let test = SequentialTest {
            alpha: 0.05,
            tuning: 1000.0,
        };
        let result = test
            .compare(
                sample_mean(1396.87, 52377.9767, 3000),
                sample_mean(2422.7, 134698.29, 3461),
            )
            .unwrap();
        assert_eq!(round5(result.lift), 0.50336);
        assert_eq!(round5(result.stddev), 0.33341);
        assert_eq!(
            [round5(result.low), round5(result.high)],
            [-0.55844, 1.56516]
        );
        assert_eq!(result.p_value, 1.0);

        let result = SequentialTest::default()
            .compare(proportion(1396.0, 3000), proportion(2422.0, 3461))
            .unwrap();
        assert_eq!(round5(result.lift), 0.50386);
        assert_eq!(round5(result.stddev), 0.03386);
        assert_eq!(
            [round5(result.low), round5(result.high)],
            [0.40098, 0.60675]
        );
        assert_eq!(round5(result.p_value), 0.0);
    }

    #[test]
    fn a_tuning_far_from_the_sample_size_widens_the_sequence() {
        let (a, b) = (
            sample_mean(1396.87, 52377.9767, 3000),
            sample_mean(2422.7, 134698.29, 3461),
        );
        let width = |tuning: f64| {
            let r = SequentialTest {
                alpha: 0.05,
                tuning,
            }
            .compare(a, b)
            .unwrap();
            r.high - r.low
        };
        assert!(width(10.0) > width(10_000.0));
        assert!(width(10_000.0) > width(6461.0));
    }

    /// A/A tests looked at after every 200 rewards per arm, up to 10,000:
    /// how many of `runs` are ever declared different by `decide`.
    fn false_decisions(runs: usize, decide: impl Fn(Sample, Sample) -> bool) -> usize {
        let mut rng = StdRng::seed_from_u64(7);
        (0..runs)
            .filter(|_| {
                let (mut a, mut b) = (ArmStats::default(), ArmStats::default());
                (0..50).any(|_| {
                    for _ in 0..200 {
                        a.add(f64::from(u8::from(rng.random_bool(0.1))));
                        b.add(f64::from(u8::from(rng.random_bool(0.1))));
                    }
                    decide(Sample::from(&a), Sample::from(&b))
                })
            })
            .count()
    }

    // The property the sequence is for: under continuous peeking an A/A
    // test is declared different at most α of the time, where the
    // fixed-horizon z-test at 1.96 (which this check must catch) is far
    // above it.
    #[test]
    fn continuous_peeking_at_an_a_a_test_keeps_the_error_rate() {
        let runs = 400;
        let test = SequentialTest::default();
        let sequential = false_decisions(runs, |a, b| {
            test.compare(a, b).is_some_and(|c| c.p_value <= test.alpha)
        });
        let naive = false_decisions(runs, |a, b| {
            test.compare(a, b)
                .is_some_and(|c| c.lift.abs() / c.stddev > 1.96)
        });
        let rate = |k: usize| k as f64 / runs as f64;
        eprintln!(
            "A/A tests declared different: sequential {sequential} of {runs}, naive peeking {naive}"
        );
        assert!(
            rate(sequential) <= 0.05,
            "sequential: {sequential} of {runs} A/A tests declared different"
        );
        assert!(
            rate(naive) > 0.15,
            "naive peeking: {naive} of {runs} (expected well above α)"
        );
    }
}
