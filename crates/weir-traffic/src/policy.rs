//! Bandit policies: from each arm's reward statistics to the share of the
//! traffic it gets next.
//!
//! ```yaml
//! policy:
//!   algorithm: thompson     # thompson (Beta–Bernoulli) | gaussian_thompson | ucb1 | epsilon_greedy
//!   floor: 0.02             # every arm keeps at least this share (exploration)
//!   every: 1s               # new weights at most this often (event time)
//!   alpha: 1.0              # ucb1: the width of the bonus
//!   epsilon: 0.1            # epsilon_greedy: the share spread over all arms
//! ```
//!
//! Thompson sampling gives each arm the probability that it is the best
//! one under its posterior — the share of traffic Thompson sampling would
//! send it round by round — estimated from [`DRAWS`] joint draws seeded by
//! the caller, so the same statistics and seed give the same weights in
//! every run. UCB1 and ε-greedy are what they choose round by round, as a
//! share: UCB1 all to the arm of the highest bound, ε-greedy `1 − ε` to the
//! arm of the best mean and `ε` spread evenly. The floor then keeps every
//! arm exploring: `w = floor + (1 − k · floor) · p`.

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Beta, Distribution, Normal};
use serde::{Deserialize, Serialize};

/// Joint draws behind a Thompson sampling share.
pub const DRAWS: usize = 10_000;

/// The policy's algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Thompson sampling with a Beta(1, 1) prior on a reward in [0, 1]
    /// (the successes are the rewards' sum).
    #[default]
    Thompson,
    /// Thompson sampling with a normal posterior of each arm's mean.
    GaussianThompson,
    /// The upper confidence bound `mean + alpha · sqrt(2 ln N / n)`.
    Ucb1,
    /// The best mean, and `epsilon` spread evenly.
    EpsilonGreedy,
}

fn default_floor() -> f64 {
    0.01
}

fn default_every() -> String {
    "1s".into()
}

fn default_alpha() -> f64 {
    1.0
}

fn default_epsilon() -> f64 {
    0.1
}

/// A bandit policy, as written in an experiment spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The algorithm.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Each arm's least share, in `[0, 1 / arms)`.
    #[serde(default = "default_floor")]
    pub floor: f64,
    /// How often (event time) weights are recomputed: `500ms`, `1s`, `1m`.
    #[serde(default = "default_every")]
    pub every: String,
    /// UCB1's bonus width.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// ε-greedy's exploration share, in `[0, 1]`.
    #[serde(default = "default_epsilon")]
    pub epsilon: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::default(),
            floor: default_floor(),
            every: default_every(),
            alpha: default_alpha(),
            epsilon: default_epsilon(),
        }
    }
}

/// One arm's rewards so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmStats {
    /// Rewards received.
    pub n: u64,
    /// Their sum.
    pub sum: f64,
    /// The sum of their squares.
    pub sum_squares: f64,
}

impl ArmStats {
    /// Adds one reward.
    pub fn add(&mut self, reward: f64) {
        self.n += 1;
        self.sum += reward;
        self.sum_squares += reward * reward;
    }

    /// Adds another arm's statistics.
    pub fn merge(&mut self, other: &ArmStats) {
        self.n += other.n;
        self.sum += other.sum;
        self.sum_squares += other.sum_squares;
    }

    /// The mean reward (0 before any).
    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum / self.n as f64
        }
    }

    /// The standard error of the mean: the sample deviation over √n, with
    /// a deviation of 1 before there are two rewards.
    fn standard_error(&self) -> f64 {
        if self.n < 2 {
            return 1.0 / (self.n.max(1) as f64).sqrt();
        }
        let n = self.n as f64;
        let variance = ((self.sum_squares - self.sum * self.sum / n) / (n - 1.0)).max(0.0);
        (variance / n).sqrt().max(1e-12)
    }
}

impl Policy {
    /// The recomputation period; errors say what is wrong.
    pub fn period(&self) -> Result<Duration, String> {
        let every = weir_dataflow::duration::parse_duration(&self.every)
            .map_err(|e| format!("policy.every: {e}"))?;
        if every.is_zero() {
            return Err("policy.every: must be more than 0".into());
        }
        Ok(every)
    }

    /// Checks the settings for `arms` arms; errors name the field.
    pub fn check(&self, arms: usize) -> Result<(), String> {
        self.period()?;
        if !(self.floor >= 0.0 && self.floor * (arms as f64) < 1.0) {
            return Err(format!(
                "policy.floor: {} must be at least 0 and less than 1 / {arms} arms",
                self.floor
            ));
        }
        if !(self.epsilon >= 0.0 && self.epsilon <= 1.0) {
            return Err(format!(
                "policy.epsilon: {} must be in [0, 1]",
                self.epsilon
            ));
        }
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return Err(format!("policy.alpha: {} must be at least 0", self.alpha));
        }
        Ok(())
    }

    /// Each arm's share of the traffic, summing to 1, given its
    /// statistics; `seed` makes Thompson sampling's draws repeatable.
    pub fn weights(&self, arms: &[ArmStats], seed: u64) -> Vec<f64> {
        let k = arms.len();
        if k == 0 {
            return Vec::new();
        }
        let shares = match self.algorithm {
            Algorithm::Thompson => {
                let draw = arms
                    .iter()
                    .map(|a| {
                        let successes = a.sum.clamp(0.0, a.n as f64);
                        Beta::new(1.0 + successes, 1.0 + a.n as f64 - successes)
                            .expect("positive parameters")
                    })
                    .collect::<Vec<_>>();
                best_shares(k, seed, |arm, rng| draw[arm].sample(rng))
            }
            Algorithm::GaussianThompson => {
                let draw = arms
                    .iter()
                    .map(|a| Normal::new(a.mean(), a.standard_error()).expect("finite deviation"))
                    .collect::<Vec<_>>();
                best_shares(k, seed, |arm, rng| draw[arm].sample(rng))
            }
            Algorithm::Ucb1 => {
                let total: u64 = arms.iter().map(|a| a.n).sum();
                let bound = |a: &ArmStats| {
                    if a.n == 0 {
                        f64::INFINITY
                    } else {
                        a.mean() + self.alpha * (2.0 * (total as f64).ln() / a.n as f64).sqrt()
                    }
                };
                one_hot(k, argmax(arms.iter().map(bound)))
            }
            Algorithm::EpsilonGreedy => {
                let mut shares = vec![self.epsilon / k as f64; k];
                shares[argmax(arms.iter().map(ArmStats::mean))] += 1.0 - self.epsilon;
                shares
            }
        };
        let spread = 1.0 - self.floor * k as f64;
        shares
            .into_iter()
            .map(|p| self.floor + spread * p)
            .collect()
    }
}

/// The first arm of the largest value.
fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, value) in values.enumerate() {
        if value > best.1 {
            best = (i, value);
        }
    }
    best.0
}

fn one_hot(k: usize, at: usize) -> Vec<f64> {
    let mut shares = vec![0.0; k];
    shares[at] = 1.0;
    shares
}

/// How often each arm's draw is the largest, over [`DRAWS`] joint draws.
fn best_shares(k: usize, seed: u64, mut draw: impl FnMut(usize, &mut StdRng) -> f64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut wins = vec![0_u32; k];
    for _ in 0..DRAWS {
        let values = (0..k).map(|arm| draw(arm, &mut rng));
        wins[argmax(values)] += 1;
    }
    wins.into_iter()
        .map(|w| f64::from(w) / DRAWS as f64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(n: u64, successes: u64) -> ArmStats {
        let mut stats = ArmStats::default();
        for i in 0..n {
            stats.add(if i < successes { 1.0 } else { 0.0 });
        }
        stats
    }

    fn policy(algorithm: Algorithm) -> Policy {
        Policy {
            algorithm,
            floor: 0.0,
            ..Policy::default()
        }
    }

    #[test]
    fn thompson_gives_each_arm_its_chance_of_being_best() {
        // P(Beta(a1, b1) > Beta(a2, b2)) in closed form (Evan Miller's
        // formula) against the draws.
        fn ln_beta(a: f64, b: f64) -> f64 {
            ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
        }
        fn ln_gamma(x: f64) -> f64 {
            // Integer arguments here: ln((x - 1)!).
            (1..x as u64).map(|i| (i as f64).ln()).sum()
        }
        let (a1, b1, a2, b2) = (1.0 + 30.0, 1.0 + 70.0, 1.0 + 40.0, 1.0 + 60.0);
        let exact: f64 = (0..a2 as u64)
            .map(|i| {
                let i = i as f64;
                (ln_beta(a1 + i, b1 + b2) - (b2 + i).ln() - ln_beta(1.0 + i, b2) - ln_beta(a1, b1))
                    .exp()
            })
            .sum();
        let weights = policy(Algorithm::Thompson).weights(&[arm(100, 30), arm(100, 40)], 7);
        // P(arm 2 is best) = exact; 10,000 draws: standard error ≈ 0.005.
        assert!((weights[1] - exact).abs() < 0.02, "{weights:?} vs {exact}");
        assert!((weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // The same statistics and seed give the same weights.
        assert_eq!(
            weights,
            policy(Algorithm::Thompson).weights(&[arm(100, 30), arm(100, 40)], 7)
        );
    }

    #[test]
    fn thompson_settles_on_a_clearly_better_arm_and_the_floor_keeps_the_others() {
        let arms = [arm(5_000, 250), arm(5_000, 280), arm(5_000, 400)];
        let plain = policy(Algorithm::Thompson).weights(&arms, 1);
        assert!(plain[2] > 0.999, "{plain:?}");
        let floored = Policy {
            floor: 0.05,
            ..policy(Algorithm::Thompson)
        }
        .weights(&arms, 1);
        assert!(floored[0] >= 0.05 && floored[1] >= 0.05, "{floored:?}");
        assert!((floored.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // Without rewards every arm is as likely to be best.
        let fresh = policy(Algorithm::GaussianThompson).weights(&[ArmStats::default(); 3], 3);
        assert!(
            fresh.iter().all(|w| (w - 1.0 / 3.0).abs() < 0.03),
            "{fresh:?}"
        );
    }

    #[test]
    fn gaussian_thompson_follows_the_means_and_their_errors() {
        let mut low = ArmStats::default();
        let mut high = ArmStats::default();
        for i in 0..200 {
            low.add(1.0 + f64::from(i % 5) * 0.1);
            high.add(1.1 + f64::from(i % 5) * 0.1);
        }
        let weights = policy(Algorithm::GaussianThompson).weights(&[low, high], 5);
        // The means differ by 0.1, their errors are ≈ 0.01: all but sure.
        assert!(weights[1] > 0.99, "{weights:?}");
    }

    #[test]
    fn ucb1_tries_every_arm_then_takes_the_highest_bound() {
        let ucb = policy(Algorithm::Ucb1);
        assert_eq!(
            ucb.weights(&[arm(10, 5), ArmStats::default()], 0),
            [0.0, 1.0]
        );
        // Means 0.5 and 0.4; bounds 0.5 + sqrt(2 ln 110 / 100) and
        // 0.4 + sqrt(2 ln 110 / 10): the less tried arm's is higher.
        assert_eq!(ucb.weights(&[arm(100, 50), arm(10, 4)], 0), [0.0, 1.0]);
        assert_eq!(
            ucb.weights(&[arm(1_000, 500), arm(1_000, 400)], 0),
            [1.0, 0.0]
        );
    }

    #[test]
    fn epsilon_greedy_spreads_epsilon_and_gives_the_rest_to_the_best_mean() {
        let greedy = Policy {
            epsilon: 0.3,
            ..policy(Algorithm::EpsilonGreedy)
        };
        let weights = greedy.weights(&[arm(10, 1), arm(10, 5), arm(10, 2)], 0);
        for (got, want) in weights.iter().zip([0.1, 0.8, 0.1]) {
            assert!((got - want).abs() < 1e-12, "{weights:?}");
        }
    }

    #[test]
    fn bad_settings_name_the_field() {
        let check = |policy: Policy| policy.check(3).unwrap_err();
        assert!(
            check(Policy {
                floor: 0.4,
                ..Policy::default()
            })
            .starts_with("policy.floor: 0.4")
        );
        assert!(
            check(Policy {
                every: "soon".into(),
                ..Policy::default()
            })
            .starts_with("policy.every:")
        );
        assert!(
            check(Policy {
                epsilon: 2.0,
                ..Policy::default()
            })
            .starts_with("policy.epsilon: 2")
        );
    }
}
