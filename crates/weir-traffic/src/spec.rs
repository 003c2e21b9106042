//! An experiment spec: a YAML file in `topologies/experiments/`.
//!
//! ```yaml
//! name: churn-canary
//! deployment: churn               # the deployment whose traffic is split
//! kind: canary                    # canary | ab | bandit
//! candidates:                     # registry references: name@alias, name@3
//!   - {model: churn@champion, weight: 90}
//!   - {model: churn@challenger, weight: 10}
//! default: churn@champion         # what serves when it ends (default: the first)
//! mirror: {model: churn@4, percent: 25}   # a copy of 25 % of the requests
//! sticky: {key: user_id}          # or {header: X-User}: a user keeps a model
//! policy: {algorithm: thompson, floor: 0.02, every: 1s}   # bandit: see crate::policy
//! reward: {window: 1h, lateness: 500ms}   # which feedback counts
//! analysis: {every: 10s, alpha: 0.05, tuning: 5000}   # see crate::analysis
//! decision: {promote: true, rollback: true, min_rewards: 100}   # see crate::decide
//! guardrails: {latency_p99_ms: 250, error_rate: 0.02, min_requests: 100}   # see crate::guardrails
//! ```

use std::path::Path;

use serde::Deserialize;
use weir_serve::routing::{Kind, Sticky};

use crate::TrafficError;
use crate::policy::Policy;

/// A candidate as written: a registry reference and its weight.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandidateSpec {
    /// `name@alias`, `name@3` or `name` (its latest version).
    pub model: String,
    /// Its weight; the shares are the weights over their sum.
    pub weight: f64,
}

/// A mirror as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    /// A registry reference.
    pub model: String,
    /// The share of requests copied to it, in percent (0–100].
    pub percent: f64,
}

/// What a sticky experiment routes by, as written: `{key: user_id}` or
/// `{header: X-User}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickySpec {
    /// A request input column.
    #[serde(default)]
    pub key: Option<String>,
    /// An HTTP header (gRPC: metadata; streams: a record header).
    #[serde(default)]
    pub header: Option<String>,
}

impl StickySpec {
    /// The routing's form; errors unless exactly one of the two is given.
    pub fn to_sticky(&self) -> Result<Sticky, String> {
        match (&self.key, &self.header) {
            (Some(key), None) => Ok(Sticky::Key(key.clone())),
            (None, Some(header)) => Ok(Sticky::Header(header.clone())),
            _ => Err("sticky: give either `key` or `header`".into()),
        }
    }
}

fn default_window() -> String {
    "1h".into()
}

fn default_lateness() -> String {
    "500ms".into()
}

/// Which feedback counts as a bandit's reward: the feedback record's
/// `reward`, when it comes at most `window` after its request.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardSpec {
    /// How long after its request a reward still counts: `30m`, `1h`.
    #[serde(default = "default_window")]
    pub window: String,
    /// How late (event time) a record may reach the allocator before it
    /// is dead-lettered; each new set of weights waits this long.
    #[serde(default = "default_lateness")]
    pub lateness: String,
}

impl Default for RewardSpec {
    fn default() -> Self {
        Self {
            window: default_window(),
            lateness: default_lateness(),
        }
    }
}

impl RewardSpec {
    /// `window` and `lateness`; errors name the field.
    pub fn durations(&self) -> Result<(std::time::Duration, std::time::Duration), String> {
        let parse = |field: &str, text: &str| {
            weir_dataflow::duration::parse_duration(text)
                .map_err(|e| format!("reward.{field}: {e}"))
        };
        Ok((
            parse("window", &self.window)?,
            parse("lateness", &self.lateness)?,
        ))
    }
}

fn default_every() -> String {
    "10s".into()
}

fn default_alpha() -> f64 {
    0.05
}

fn default_tuning() -> f64 {
    5000.0
}

/// How the experiment's analysis job compares the candidates with the
/// default ([`crate::sequential`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisSpec {
    /// How often (event time) the comparison is published: `10s`, `1m`.
    #[serde(default = "default_every")]
    pub every: String,
    /// The error rate held over every look.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// The total number of rewards the confidence sequence is tightest at.
    #[serde(default = "default_tuning")]
    pub tuning: f64,
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        Self {
            every: default_every(),
            alpha: default_alpha(),
            tuning: default_tuning(),
        }
    }
}

impl AnalysisSpec {
    /// `every`; errors name the field.
    pub fn period(&self) -> Result<std::time::Duration, String> {
        let every = weir_dataflow::duration::parse_duration(&self.every)
            .map_err(|e| format!("analysis.every: {e}"))?;
        if every.is_zero() {
            return Err("analysis.every: must be more than 0".into());
        }
        Ok(every)
    }

    /// The sequential test; errors name the field.
    pub fn test(&self) -> Result<crate::sequential::SequentialTest, String> {
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(format!(
                "analysis.alpha: {} must be between 0 and 1",
                self.alpha
            ));
        }
        if !(self.tuning.is_finite() && self.tuning > 0.0) {
            return Err(format!(
                "analysis.tuning: {} must be a number of rewards more than 0",
                self.tuning
            ));
        }
        Ok(crate::sequential::SequentialTest {
            alpha: self.alpha,
            tuning: self.tuning,
        })
    }
}

fn default_min_rewards() -> u64 {
    100
}

/// What the analysis decides by itself ([`crate::decide`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionSpec {
    /// Promote a candidate shown better than the default: its version
    /// becomes what the deployment's alias points at, and the experiment
    /// stops.
    #[serde(default)]
    pub promote: bool,
    /// Roll back when a candidate is shown worse: the experiment stops,
    /// and the deployment serves its own model again.
    #[serde(default)]
    pub rollback: bool,
    /// Rewards the candidate and the default each need before anything is
    /// decided.
    #[serde(default = "default_min_rewards")]
    pub min_rewards: u64,
}

fn default_min_requests() -> u64 {
    100
}

/// Limits a candidate must stay within ([`crate::guardrails`]): one over
/// them, with `min_requests` served, rolls the experiment back.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailSpec {
    /// The most its latency p99 may be, ms.
    #[serde(default)]
    pub latency_p99_ms: Option<f64>,
    /// The most its share of failed requests may be, in [0, 1].
    #[serde(default)]
    pub error_rate: Option<f64>,
    /// Requests it must have served before a limit counts.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
}

impl GuardrailSpec {
    fn check(&self) -> Result<(), String> {
        if self.latency_p99_ms.is_none() && self.error_rate.is_none() {
            return Err("guardrails: give `latency_p99_ms`, `error_rate` or both".into());
        }
        if let Some(ms) = self.latency_p99_ms
            && !(ms.is_finite() && ms > 0.0)
        {
            return Err(format!(
                "guardrails.latency_p99_ms: {ms} must be a number of milliseconds more than 0"
            ));
        }
        if let Some(rate) = self.error_rate
            && !(0.0..=1.0).contains(&rate)
        {
            return Err(format!(
                "guardrails.error_rate: {rate} must be between 0 and 1"
            ));
        }
        Ok(())
    }

    /// The limit `latency_p99_ms` and `error_rate` go over, in words.
    pub fn breach(&self, latency_p99_ms: Option<f64>, error_rate: f64) -> Option<String> {
        if let (Some(limit), Some(p99)) = (self.latency_p99_ms, latency_p99_ms)
            && p99 > limit
        {
            return Some(format!("latency p99 {p99:.1} ms over {limit} ms"));
        }
        match self.error_rate {
            Some(limit) if error_rate > limit => Some(format!(
                "error rate {:.2} % over {:.2} %",
                error_rate * 100.0,
                limit * 100.0
            )),
            _ => None,
        }
    }
}

/// An experiment on one deployment's traffic.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    /// Its name.
    pub name: String,
    /// The deployment (applied with `weir deploy` or `weir serve`).
    pub deployment: String,
    /// Canary (a fixed split), A/B (a fixed split, sticky by user) or
    /// bandit (weights moved by the allocator job from the rewards).
    #[serde(default)]
    pub kind: Kind,
    /// The models sharing the traffic.
    pub candidates: Vec<CandidateSpec>,
    /// The candidate that serves when the experiment ends (default: the
    /// first).
    #[serde(default)]
    pub default: Option<String>,
    /// A model that gets a copy of some requests, answers logged only.
    #[serde(default)]
    pub mirror: Option<MirrorSpec>,
    /// Route by a request key or header, so that a user keeps a model.
    #[serde(default)]
    pub sticky: Option<StickySpec>,
    /// A bandit's policy (default: Thompson sampling).
    #[serde(default)]
    pub policy: Option<Policy>,
    /// Which feedback is a reward.
    #[serde(default)]
    pub reward: Option<RewardSpec>,
    /// How the analysis compares the candidates.
    #[serde(default)]
    pub analysis: Option<AnalysisSpec>,
    /// What the analysis decides by itself.
    #[serde(default)]
    pub decision: Option<DecisionSpec>,
    /// Limits the candidates must stay within.
    #[serde(default)]
    pub guardrails: Option<GuardrailSpec>,
}

impl ExperimentSpec {
    /// Reads a spec; errors name `origin` and the line and column, or the
    /// field.
    pub fn parse(text: &str, origin: &str) -> Result<Self, TrafficError> {
        let spec: Self = serde_yaml::from_str(text).map_err(|e| TrafficError::Spec {
            origin: origin.into(),
            at: e
                .location()
                .map(|l| format!(":{}:{}", l.line(), l.column()))
                .unwrap_or_default(),
            message: e.to_string(),
        })?;
        spec.check()
            .map_err(|message| TrafficError::spec(origin, message))?;
        Ok(spec)
    }

    /// Reads the spec file at `path`.
    pub fn read(path: &Path) -> Result<Self, TrafficError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrafficError::spec(&path.display().to_string(), e.to_string()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The bandit policy: the spec's, or the default one.
    pub fn policy(&self) -> Policy {
        self.policy.clone().unwrap_or_default()
    }

    /// The reward settings: the spec's, or the defaults.
    pub fn reward(&self) -> RewardSpec {
        self.reward.clone().unwrap_or_default()
    }

    /// The analysis settings: the spec's, or the defaults.
    pub fn analysis(&self) -> AnalysisSpec {
        self.analysis.clone().unwrap_or_default()
    }

    /// The default candidate's reference.
    pub fn default_model(&self) -> &str {
        self.default
            .as_deref()
            .unwrap_or_else(|| &self.candidates[0].model)
    }

    fn check(&self) -> Result<(), String> {
        let valid = |c: char| c.is_ascii_alphanumeric() || "-_".contains(c);
        if self.name.is_empty() || !self.name.chars().all(valid) {
            return Err(format!(
                "name: `{}` must be letters, digits, `-` and `_`",
                self.name
            ));
        }
        if self.candidates.is_empty() {
            return Err("candidates: give at least one model".into());
        }
        for (i, candidate) in self.candidates.iter().enumerate() {
            if !candidate.weight.is_finite() || candidate.weight < 0.0 {
                return Err(format!(
                    "candidates[{i}].weight: {} must be a number ≥ 0",
                    candidate.weight
                ));
            }
            if self.candidates[..i]
                .iter()
                .any(|c| c.model == candidate.model)
            {
                return Err(format!(
                    "candidates[{i}].model: `{}` is named twice",
                    candidate.model
                ));
            }
        }
        if self.candidates.iter().map(|c| c.weight).sum::<f64>() <= 0.0 {
            return Err("candidates: the weights must add up to more than 0".into());
        }
        if let Some(default) = &self.default
            && !self.candidates.iter().any(|c| &c.model == default)
        {
            return Err(format!("default: `{default}` is not one of the candidates"));
        }
        if let Some(mirror) = &self.mirror
            && !(mirror.percent > 0.0 && mirror.percent <= 100.0)
        {
            return Err(format!(
                "mirror.percent: {} must be more than 0 and at most 100",
                mirror.percent
            ));
        }
        if let Some(sticky) = &self.sticky {
            sticky.to_sticky()?;
        }
        self.reward().durations()?;
        self.analysis().period()?;
        self.analysis().test()?;
        if let Some(guardrails) = &self.guardrails {
            guardrails.check()?;
        }
        if let Some(decision) = &self.decision {
            if !decision.promote && !decision.rollback {
                return Err("decision: give `promote: true`, `rollback: true` or both".into());
            }
            if decision.promote && self.candidates.len() < 2 {
                return Err("decision.promote: there is no candidate besides the default".into());
            }
        }
        match self.kind {
            Kind::Ab if self.sticky.is_none() => Err(
                "sticky: an A/B test needs a key or header to route by (`sticky: {key: user_id}`), or a user would see both models"
                    .into(),
            ),
            Kind::Bandit => self.policy().check(self.candidates.len()),
            _ if self.policy.is_some() => Err(format!(
                "policy: only a bandit has a policy (this is `kind: {}`)",
                match self.kind {
                    Kind::Ab => "ab",
                    _ => "canary",
                }
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        ExperimentSpec::parse(text, "exp.yaml")
            .unwrap_err()
            .to_string()
    }

    const GOOD: &str = "name: c\ndeployment: d\ncandidates:\n  - {model: m@champion, weight: 9}\n  - {model: m@challenger, weight: 1}\n";

    #[test]
    fn a_spec_reads_with_its_defaults() {
        let spec = ExperimentSpec::parse(GOOD, "exp.yaml").unwrap();
        assert_eq!(spec.kind, Kind::Canary);
        assert_eq!(spec.default_model(), "m@champion");
        let ab = ExperimentSpec::parse(
            &format!(
                "{GOOD}kind: ab\nsticky: {{header: X-User}}\nmirror: {{model: m@3, percent: 100}}\n"
            ),
            "exp.yaml",
        )
        .unwrap();
        assert_eq!(
            ab.sticky.unwrap().to_sticky(),
            Ok(Sticky::Header("X-User".into()))
        );
    }

    #[test]
    fn bad_specs_name_the_file_and_the_place() {
        assert!(
            error("name: c\ndeployment: d\ncandidates:\n  - {model: m@1, wieght: 1}\n")
                .starts_with("exp.yaml:4:")
        );
        assert!(
            error("name: c\ndeployment: d\ncandidates: []\n").starts_with("exp.yaml: candidates:")
        );
        assert!(
            error(&GOOD.replace("weight: 1}", "weight: -1}"))
                .starts_with("exp.yaml: candidates[1].weight: -1")
        );
        assert!(
            error("name: c\ndeployment: d\ncandidates:\n  - {model: m@1, weight: 0}\n")
                .contains("add up to more than 0")
        );
        assert!(error(&format!("{GOOD}default: m@9\n")).starts_with("exp.yaml: default: `m@9`"));
        assert!(
            error(&format!("{GOOD}mirror: {{model: m@3, percent: 101}}\n"))
                .starts_with("exp.yaml: mirror.percent: 101")
        );
        assert!(error(&format!("{GOOD}kind: ab\n")).starts_with("exp.yaml: sticky:"));
        assert!(error(&format!("{GOOD}kind: coin\n")).starts_with("exp.yaml:6:"));
        assert!(
            error(&format!("{GOOD}kind: bandit\npolicy: {{floor: 0.5}}\n"))
                .starts_with("exp.yaml: policy.floor: 0.5")
        );
        assert!(
            error(&format!(
                "{GOOD}kind: bandit\npolicy: {{algorithm: greedy}}\n"
            ))
            .starts_with("exp.yaml:7:")
        );
        assert!(
            error(&format!("{GOOD}kind: bandit\nreward: {{window: 1 hour}}\n"))
                .starts_with("exp.yaml: reward.window:")
        );
        assert!(
            error(&format!("{GOOD}policy: {{floor: 0.1}}\n"))
                .starts_with("exp.yaml: policy: only a bandit")
        );
        assert!(
            error(&format!("{GOOD}analysis: {{alpha: 1.5}}\n"))
                .starts_with("exp.yaml: analysis.alpha: 1.5")
        );
        assert!(
            error(&format!("{GOOD}analysis: {{every: 0s}}\n"))
                .starts_with("exp.yaml: analysis.every:")
        );
        assert!(
            error(&format!("{GOOD}guardrails: {{error_rate: 2}}\n"))
                .starts_with("exp.yaml: guardrails.error_rate: 2")
        );
        assert!(
            error(&format!("{GOOD}guardrails: {{min_requests: 10}}\n"))
                .starts_with("exp.yaml: guardrails: give")
        );
        assert!(
            error(&format!("{GOOD}decision: {{min_rewards: 10}}\n"))
                .starts_with("exp.yaml: decision: give")
        );
        assert!(
            error(&format!("{GOOD}sticky: {{key: a, header: B}}\n"))
                .starts_with("exp.yaml: sticky: give either")
        );
    }
}
