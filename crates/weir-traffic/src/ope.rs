//! Off-policy evaluation: what a candidate would have earned had it taken
//! all of the experiment's traffic, estimated from the traffic it had —
//! the rewards the log's requests earned, each weighted by the inverse of
//! the propensity the log recorded for the variant that answered it.
//!
//! A candidate's naive mean answers another question when the weights
//! moved during the experiment (a bandit's do): it over-counts the times
//! the candidate was given more traffic. The estimators, with `N` rewarded
//! requests of the experiment, request `i` answered by `a_i` with
//! propensity `p_i` and reward `r_i`, `w_i = 1 / p_i`, and the target
//! "everything to `c`":
//!
//! - inverse propensity scoring: `IPS = Σ_{a_i = c} w_i r_i / N`;
//! - self-normalised IPS: `SNIPS = Σ_{a_i = c} w_i r_i / Σ_{a_i = c} w_i`;
//! - the direct method, `DM = q(c)`, with `q(c)` the mean reward of `c`'s
//!   requests (the reward model, context-free);
//! - doubly robust: `DR = q(c) + Σ_{a_i = c} w_i (r_i − q(c)) / N`.
//!
//! They are those of Open Bandit Pipeline (`obp.ope`:
//! `InverseProbabilityWeighting`, `SelfNormalizedInverseProbabilityWeighting`,
//! `DirectMethod`, `DoublyRobust`) with a one-hot action distribution, and
//! the e2e tests check them against it on the same log. Each comes with a
//! standard error (the sample deviation of its per-request terms over
//! `√N`; for SNIPS, the delta method), so a fixed-horizon interval — not
//! one valid under continuous peeking, as [`crate::sequential`]'s is.
//!
//! Everything is a sum over the candidate's requests ([`Weighted`]), so it
//! is kept in the experiment job's state and merged like the rewards.

use serde::{Deserialize, Serialize};

/// One variant's propensity-weighted rewards: the sums the estimators
/// need.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Weighted {
    /// Rewarded requests (with a propensity).
    pub n: u64,
    /// `Σ r`.
    pub sum_r: f64,
    /// `Σ r²`.
    pub sum_r2: f64,
    /// `Σ w`.
    pub sum_w: f64,
    /// `Σ w r`.
    pub sum_wr: f64,
    /// `Σ w²`.
    pub sum_w2: f64,
    /// `Σ w² r`.
    pub sum_w2r: f64,
    /// `Σ w² r²`.
    pub sum_w2r2: f64,
}

impl Weighted {
    /// Adds a reward earned by a request answered with probability
    /// `propensity`; one without a usable propensity (not in (0, 1]) is
    /// left out.
    pub fn add(&mut self, reward: f64, propensity: f64) {
        if !(propensity > 0.0 && propensity <= 1.0) {
            return;
        }
        let w = 1.0 / propensity;
        self.n += 1;
        self.sum_r += reward;
        self.sum_r2 += reward * reward;
        self.sum_w += w;
        self.sum_wr += w * reward;
        self.sum_w2 += w * w;
        self.sum_w2r += w * w * reward;
        self.sum_w2r2 += w * w * reward * reward;
    }

    /// Adds another's sums.
    pub fn merge(&mut self, other: &Weighted) {
        self.n += other.n;
        self.sum_r += other.sum_r;
        self.sum_r2 += other.sum_r2;
        self.sum_w += other.sum_w;
        self.sum_wr += other.sum_wr;
        self.sum_w2 += other.sum_w2;
        self.sum_w2r += other.sum_w2r;
        self.sum_w2r2 += other.sum_w2r2;
    }
}

/// An estimate of a policy's value with its standard error.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The estimated mean reward per request.
    pub value: f64,
    /// Its standard error.
    pub standard_error: f64,
}

/// The value of "every request to this candidate", four ways.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimates {
    /// Inverse propensity scoring.
    pub ips: Estimate,
    /// Self-normalised inverse propensity scoring.
    pub snips: Estimate,
    /// The direct method (the candidate's mean reward).
    pub dm: Estimate,
    /// Doubly robust.
    pub dr: Estimate,
}

/// The estimates for the candidate whose sums are `arm`, among `total`
/// rewarded requests of the experiment (every variant's); `None` before
/// the candidate has two rewarded requests.
pub fn estimate(arm: &Weighted, total: u64) -> Option<Estimates> {
    if arm.n < 2 || total < 2 || arm.sum_w <= 0.0 {
        return None;
    }
    let big_n = total as f64;
    // The standard error of the mean of N terms whose sum is `sum` and
    // sum of squares `squares`.
    let of_terms = |sum: f64, squares: f64| -> f64 {
        let mean = sum / big_n;
        ((squares / big_n - mean * mean).max(0.0) / (big_n - 1.0)).sqrt()
    };

    let ips = Estimate {
        value: arm.sum_wr / big_n,
        standard_error: of_terms(arm.sum_wr, arm.sum_w2r2),
    };

    let snips_value = arm.sum_wr / arm.sum_w;
    // Delta method: Σ w² (r − v)² / (Σ w)².
    let residual =
        arm.sum_w2r2 - 2.0 * snips_value * arm.sum_w2r + snips_value * snips_value * arm.sum_w2;
    let snips = Estimate {
        value: snips_value,
        standard_error: residual.max(0.0).sqrt() / arm.sum_w,
    };

    let n = arm.n as f64;
    let q = arm.sum_r / n;
    let dm = Estimate {
        value: q,
        // The reward model's own error: the candidate's mean's.
        standard_error: ((arm.sum_r2 / n - q * q).max(0.0) / (n - 1.0)).sqrt(),
    };

    // Terms q + 1[a = c] w (r − q): their sum and sum of squares.
    let correction = arm.sum_wr - q * arm.sum_w;
    let dr_sum = big_n * q + correction;
    let dr_squares = big_n * q * q
        + 2.0 * q * correction
        + (arm.sum_w2r2 - 2.0 * q * arm.sum_w2r + q * q * arm.sum_w2);
    let dr = Estimate {
        value: dr_sum / big_n,
        standard_error: of_terms(dr_sum, dr_squares),
    };
    Some(Estimates { ips, snips, dm, dr })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A logged request: the arm that answered, its reward, its propensity.
    type Row = (usize, f64, f64);

    /// IPS's term for one request when the target is `candidate`.
    fn ips_term(row: &Row, candidate: usize) -> f64 {
        if row.0 == candidate {
            row.1 / row.2
        } else {
            0.0
        }
    }

    /// DR's term, with `q` the candidate's mean reward.
    fn dr_term(row: &Row, candidate: usize, q: f64) -> f64 {
        q + ips_term(row, candidate) - if row.0 == candidate { q / row.2 } else { 0.0 }
    }

    /// The mean of `terms` and its standard error (sample deviation / √n).
    fn mean_and_error(terms: &[f64]) -> (f64, f64) {
        let n = terms.len() as f64;
        let mean = terms.iter().sum::<f64>() / n;
        let variance = terms.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, (variance / n).sqrt())
    }

    #[test]
    fn the_sums_give_the_estimators_definitions() {
        let mut state = 0x2545_F491_4F6C_DD1D_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 10_000) as f64 / 10_000.0
        };
        let rows: Vec<Row> = (0..5_000)
            .map(|_| {
                let propensity = 0.05 + 0.9 * next();
                let arm = usize::from(next() < 0.5);
                (arm, f64::from(u8::from(next() < 0.3)), propensity)
            })
            .collect();
        for candidate in 0..2 {
            let mut arm = Weighted::default();
            let mine: Vec<&Row> = rows.iter().filter(|r| r.0 == candidate).collect();
            for row in &mine {
                arm.add(row.1, row.2);
            }
            let got = estimate(&arm, rows.len() as u64).unwrap();
            // The definitions, term by term.
            let q = mine.iter().map(|r| r.1).sum::<f64>() / mine.len() as f64;
            let ips: Vec<f64> = rows.iter().map(|r| ips_term(r, candidate)).collect();
            let dr: Vec<f64> = rows.iter().map(|r| dr_term(r, candidate, q)).collect();
            let snips = mine.iter().map(|r| r.1 / r.2).sum::<f64>()
                / mine.iter().map(|r| 1.0 / r.2).sum::<f64>();
            let (ips, dr) = (mean_and_error(&ips), mean_and_error(&dr));
            for (name, got, want) in [
                ("ips", got.ips.value, ips.0),
                ("ips error", got.ips.standard_error, ips.1),
                ("snips", got.snips.value, snips),
                ("dm", got.dm.value, q),
                ("dr", got.dr.value, dr.0),
                ("dr error", got.dr.standard_error, dr.1),
            ] {
                assert!((got - want).abs() < 1e-9, "{name}: {got} != {want}");
            }
        }
    }

    #[test]
    fn merged_sums_equal_one_pass() {
        let mut whole = Weighted::default();
        let mut halves = [Weighted::default(), Weighted::default()];
        for i in 0..100 {
            let (reward, propensity) = (f64::from(i % 3), 0.1 + f64::from(i % 7) / 10.0);
            whole.add(reward, propensity);
            halves[i as usize % 2].add(reward, propensity);
        }
        let [mut first, second] = halves;
        first.merge(&second);
        assert_eq!(first.n, whole.n);
        let sums = |w: &Weighted| {
            [
                w.sum_r, w.sum_r2, w.sum_w, w.sum_wr, w.sum_w2, w.sum_w2r, w.sum_w2r2,
            ]
        };
        for (merged, once) in sums(&first).into_iter().zip(sums(&whole)) {
            assert!((merged - once).abs() < 1e-9, "{merged} != {once}");
        }
    }

    #[test]
    fn requests_without_a_usable_propensity_are_left_out() {
        let mut arm = Weighted::default();
        for propensity in [0.0, -1.0, 1.5, f64::NAN] {
            arm.add(1.0, propensity);
        }
        assert_eq!(arm, Weighted::default());
        assert!(estimate(&arm, 10).is_none());
    }
}
