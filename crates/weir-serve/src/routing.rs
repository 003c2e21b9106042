//! Traffic routing between a deployment's candidate models, as an
//! experiment sets it: the record on `weir.control.<deployment>` that
//! every serving replica follows, and the choice of a candidate for each
//! request.
//!
//! A request goes to candidate `i` with probability `weight_i / Σ weight`
//! — its *propensity*, logged with it so that the log supports off-policy
//! evaluation. Sticky routing draws that choice from a hash of the
//! request's key (an input column or a header) instead of at random, so a
//! user stays on one candidate across requests and across replicas: the
//! hash (FNV-1a) is the same in every process. A mirror gets a copy of a
//! share of the requests off the caller's path; its answers are logged as
//! `shadow:<model>` and never returned.

use serde::{Deserialize, Serialize};

use crate::ServeError;

/// What the experiment is: how its weights come about (the routing is the
/// same for all three).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A fixed split, usually a small share for the new model.
    #[default]
    Canary,
    /// A fixed split, sticky by user, analysed as an A/B test.
    Ab,
    /// Weights moved by an allocator from the rewards.
    Bandit,
}

/// Where a sticky route's key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Sticky {
    /// A request input column (its first row's value).
    Key(String),
    /// An HTTP header (gRPC: the request metadata of that name).
    Header(String),
}

/// A candidate model and its share of the traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    /// The model, as `name@version` (resolved when the experiment was
    /// applied: an alias moving later does not change an experiment).
    pub model: String,
    /// Its weight (the shares are the weights over their sum).
    pub weight: f64,
}

/// A copy of a share of the requests for a model whose answers are only
/// logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// The model, `name@version`.
    pub model: String,
    /// The share of requests copied, in percent (0–100].
    pub percent: f64,
}

/// The routing of one deployment: the record on `weir.control.<d>`, keyed
/// by the deployment; the latest one applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    /// The experiment that set it.
    pub experiment: String,
    /// Counts the experiment's changes (its spec applied again, new
    /// weights, a stop).
    pub version: u64,
    /// What kind of experiment.
    #[serde(default)]
    pub kind: Kind,
    /// The candidates and their weights.
    pub candidates: Vec<Candidate>,
    /// The candidate that takes all traffic when the experiment ends.
    pub default: String,
    /// A model that gets a copy of some requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    /// Route by a key, not at random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    /// The experiment has ended: the deployment serves its own model again.
    #[serde(default)]
    pub stopped: bool,
    /// Weights a bandit's allocator set from the rewards (not an applied
    /// spec's).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allocated: bool,
    /// When it was published, ms since the epoch.
    #[serde(default)]
    pub at: i64,
}

impl Routing {
    /// Checks what a routing must be to be served: candidates with finite,
    /// non-negative weights of positive sum, the default among them, a
    /// mirror's share in (0, 100]. Errors name the field.
    pub fn check(&self) -> Result<(), ServeError> {
        let refuse = |message: String| Err(ServeError::Spec(message));
        if self.stopped {
            return Ok(());
        }
        if self.candidates.is_empty() {
            return refuse("candidates: give at least one model".into());
        }
        for (i, candidate) in self.candidates.iter().enumerate() {
            if !candidate.weight.is_finite() || candidate.weight < 0.0 {
                return refuse(format!(
                    "candidates[{i}].weight: {} must be a number ≥ 0",
                    candidate.weight
                ));
            }
        }
        let total: f64 = self.candidates.iter().map(|c| c.weight).sum();
        if total <= 0.0 {
            return refuse("candidates: the weights must add up to more than 0".into());
        }
        if !self.candidates.iter().any(|c| c.model == self.default) {
            return refuse(format!(
                "default: `{}` is not one of the candidates",
                self.default
            ));
        }
        if let Some(mirror) = &self.mirror
            && !(mirror.percent > 0.0 && mirror.percent <= 100.0)
        {
            return refuse(format!(
                "mirror.percent: {} must be more than 0 and at most 100",
                mirror.percent
            ));
        }
        Ok(())
    }

    /// Each candidate's share of the traffic: its propensity.
    pub fn shares(&self) -> Vec<f64> {
        let total: f64 = self.candidates.iter().map(|c| c.weight).sum();
        self.candidates.iter().map(|c| c.weight / total).collect()
    }

    /// The record's bytes (JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a routing serialises")
    }

    /// A record read back; errors say what is wrong with it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ServeError> {
        let routing: Self = serde_json::from_slice(bytes)
            .map_err(|e| ServeError::Spec(format!("a routing record: {e}")))?;
        routing.check()?;
        Ok(routing)
    }
}

/// A number in `[0, 1)` from `key`'s bytes, the same in every process
/// (FNV-1a, then the top 53 bits).
pub fn unit_of(key: &[u8]) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV's low bits mix poorly for short keys: fold the high half in.
    hash ^= hash >> 29;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 32;
    (hash >> 11) as f64 / (1_u64 << 53) as f64
}

/// The candidate whose share of `[0, 1)` holds `unit`, for `shares` that
/// add up to 1.
pub fn pick(shares: &[f64], unit: f64) -> usize {
    let mut upto = 0.0;
    for (i, share) in shares.iter().enumerate() {
        upto += share;
        if unit < upto && *share > 0.0 {
            return i;
        }
    }
    // Rounding left `unit` past the sum: the last candidate with a share.
    shares.iter().rposition(|s| *s > 0.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing(weights: &[f64]) -> Routing {
        Routing {
            experiment: "e".into(),
            version: 1,
            kind: Kind::Ab,
            candidates: weights
                .iter()
                .enumerate()
                .map(|(i, w)| Candidate {
                    model: format!("m@{i}"),
                    weight: *w,
                })
                .collect(),
            default: "m@0".into(),
            mirror: None,
            sticky: None,
            stopped: false,
            allocated: false,
            at: 0,
        }
    }

    #[test]
    fn keys_split_by_the_weights_and_each_key_keeps_its_candidate() {
        let shares = routing(&[1.0, 3.0, 0.0, 4.0]).shares();
        let n = 200_000;
        let mut counts = [0_usize; 4];
        for user in 0..n {
            let key = format!("user-{user}");
            let first = pick(&shares, unit_of(key.as_bytes()));
            assert_eq!(first, pick(&shares, unit_of(key.as_bytes())));
            counts[first] += 1;
        }
        assert_eq!(counts[2], 0, "a weight of 0 gets nothing");
        for (i, share) in shares.iter().enumerate() {
            // Within 5 standard deviations of a binomial draw.
            let expected = share * n as f64;
            let sigma = (n as f64 * share * (1.0 - share)).sqrt();
            assert!(
                (counts[i] as f64 - expected).abs() <= 5.0 * sigma + 1.0,
                "candidate {i}: {} of {n}, expected {expected:.0}",
                counts[i]
            );
        }
    }

    #[test]
    fn bad_routings_are_refused_naming_the_field() {
        let message = |r: Routing| r.check().unwrap_err().to_string();
        assert!(message(routing(&[0.0, 0.0])).starts_with("candidates: the weights"));
        assert!(message(routing(&[1.0, -1.0])).starts_with("candidates[1].weight"));
        assert!(message(routing(&[1.0, f64::NAN])).starts_with("candidates[1].weight"));
        let mut r = routing(&[1.0]);
        r.default = "other@1".into();
        assert!(message(r).starts_with("default: `other@1`"));
        let mut r = routing(&[1.0]);
        r.mirror = Some(Mirror {
            model: "m@9".into(),
            percent: 120.0,
        });
        assert!(message(r).starts_with("mirror.percent: 120"));
        assert!(routing(&[1.0, 0.0]).check().is_ok());
        let bytes = routing(&[2.0, 1.0]).to_bytes();
        assert_eq!(Routing::from_bytes(&bytes).unwrap(), routing(&[2.0, 1.0]));
    }
}
