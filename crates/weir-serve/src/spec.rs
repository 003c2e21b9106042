//! A deployment spec: a YAML file in `topologies/deployments/`.
//!
//! ```yaml
//! name: churn
//! model: churn@champion            # a registry reference: name@alias, name@3, name
//! features:                        # look-ups from the online store
//!   - view: user_spend
//!     entity: [user_id]            # the request columns that key the view
//! preprocess:
//!   fill: {amount: 0.0}            # a missing value becomes this
//!   scale: {amount: {mean: 52.0, std: 31.0}}
//!   one_hot: {country: [DE, FR]}   # features `country=DE`, `country=FR`
//! postprocess:
//!   threshold: 0.5                 # on the last class's probability
//!   labels: [stay, churn]
//! protocols: [http, grpc, stream]
//! grpc: {listen: "127.0.0.1:8601"}
//! ```
//!
//! Several `models` with a `combine` rule (`mean`, `weighted`, `vote`, or
//! `stacking` with a `stacker` model) make an ensemble; the fields not
//! given take the defaults below.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ServeError;

/// A deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSpec {
    /// Its name: the OIP model name and the `<deployment>` of its topics.
    pub name: String,
    /// One model (a registry reference). Either this or `models`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// An ensemble's members.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<Member>,
    /// How an ensemble's scores become one.
    #[serde(default)]
    pub combine: Combine,
    /// The model that combines the members' scores (`combine: stacking`):
    /// a registry reference; its input is every member's scores, side by
    /// side in the members' order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacker: Option<String>,
    /// Feature look-ups from the online store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<LookupSpec>,
    /// Declared pre-processing of the model's input columns.
    #[serde(default)]
    pub preprocess: Preprocess,
    /// Declared post-processing of its scores.
    #[serde(default)]
    pub postprocess: Postprocess,
    /// How requests arrive.
    #[serde(default = "default_protocols")]
    pub protocols: Vec<Protocol>,
    /// Where HTTP listens.
    #[serde(default)]
    pub http: HttpSpec,
    /// Where gRPC listens.
    #[serde(default)]
    pub grpc: GrpcSpec,
    /// Dynamic batching of concurrent requests.
    #[serde(default)]
    pub batching: Batching,
    /// Stream-serving workers: between `min` and `max`, by lag and latency.
    #[serde(default)]
    pub scaling: Scaling,
    /// Request/response logging to `weir.log.<name>`.
    #[serde(default)]
    pub logging: Logging,
}

/// An ensemble member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// A registry reference.
    pub model: String,
    /// Its weight (`combine: weighted`).
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

/// How an ensemble's members' scores are combined.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// The mean of their scores.
    #[default]
    Mean,
    /// The weighted mean.
    Weighted,
    /// Each votes for its top class (weighted); the scores are the votes'
    /// shares.
    Vote,
    /// A `stacker` model takes the members' scores as its features.
    Stacking,
}

/// A look-up of a feature view's latest values by entity key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupSpec {
    /// The view.
    pub view: String,
    /// The request columns holding its entity key, in the view's order.
    pub entity: Vec<String>,
}

/// Pre-processing, by input column.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// A missing (or null, or NaN) value becomes this.
    #[serde(default)]
    pub fill: BTreeMap<String, f64>,
    /// `(x - mean) / std`.
    #[serde(default)]
    pub scale: BTreeMap<String, Scale>,
    /// A text column becomes one 0/1 feature per category, named
    /// `column=category`.
    #[serde(default)]
    pub one_hot: BTreeMap<String, Vec<String>>,
}

/// Standard scaling.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    /// Subtracted.
    pub mean: f64,
    /// Divided by.
    pub std: f64,
}

/// Post-processing of a classifier's scores.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Postprocess {
    /// Predict the last class when its score is at least this (binary
    /// classifiers); otherwise the top class.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Names for the classes, in the order of the scores.
    #[serde(default)]
    pub labels: Vec<String>,
}

/// A way requests arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Open Inference Protocol v2 over HTTP.
    Http,
    /// Open Inference Protocol v2 over gRPC.
    Grpc,
    /// `weir.requests.<name>` → `weir.predictions.<name>`.
    Stream,
}

impl std::str::FromStr for Protocol {
    type Err = ServeError;

    fn from_str(text: &str) -> Result<Self, ServeError> {
        match text {
            "http" => Ok(Protocol::Http),
            "grpc" => Ok(Protocol::Grpc),
            "stream" => Ok(Protocol::Stream),
            other => Err(ServeError::Spec(format!(
                "protocol `{other}` is not http, grpc or stream"
            ))),
        }
    }
}

fn default_protocols() -> Vec<Protocol> {
    vec![Protocol::Http]
}

/// HTTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// `host:port`.
    #[serde(default = "default_listen")]
    pub listen: String,
}

fn default_listen() -> String {
    "127.0.0.1:8600".into()
}

impl Default for HttpSpec {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

/// gRPC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcSpec {
    /// `host:port`.
    #[serde(default = "default_grpc_listen")]
    pub listen: String,
}

fn default_grpc_listen() -> String {
    "127.0.0.1:8601".into()
}

impl Default for GrpcSpec {
    fn default() -> Self {
        Self {
            listen: default_grpc_listen(),
        }
    }
}

/// Dynamic batching: requests that arrive together run as one batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batching {
    /// Rows in one run at most.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How long a batch waits for more requests, in µs. 0: it takes what
    /// is queued and runs, so a lone request never waits.
    #[serde(default)]
    pub max_wait_us: u64,
    /// Threads running batches, each with its own session.
    #[serde(default = "default_runners")]
    pub runners: usize,
    /// ONNX Runtime's threads within one run.
    #[serde(default = "one_thread")]
    pub intra_threads: usize,
}

fn default_max_batch() -> usize {
    64
}

fn default_runners() -> usize {
    2
}

fn one_thread() -> usize {
    1
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max_batch: default_max_batch(),
            max_wait_us: 0,
            runners: default_runners(),
            intra_threads: one_thread(),
        }
    }
}

/// Stream-serving workers' bounds and targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scaling {
    /// Workers at least.
    #[serde(default = "one_worker")]
    pub min: usize,
    /// Workers at most.
    #[serde(default = "four_workers")]
    pub max: usize,
    /// Add a worker while more requests than this wait per worker.
    #[serde(default = "default_target_lag")]
    pub target_lag: i64,
    /// Add a worker while the p99 latency (ms) is above this.
    #[serde(default = "default_target_p99")]
    pub target_p99_ms: f64,
    /// How often the policy looks, in ms.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Remove a worker once no scale-up was needed for this long, in s.
    #[serde(default = "default_cooldown")]
    pub cooldown_s: f64,
}

fn default_interval() -> u64 {
    1000
}

fn default_cooldown() -> f64 {
    10.0
}

fn one_worker() -> usize {
    1
}

fn four_workers() -> usize {
    4
}

fn default_target_lag() -> i64 {
    500
}

fn default_target_p99() -> f64 {
    100.0
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            min: one_worker(),
            max: four_workers(),
            target_lag: default_target_lag(),
            target_p99_ms: default_target_p99(),
            interval_ms: default_interval(),
            cooldown_s: default_cooldown(),
        }
    }
}

/// Request logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    /// Log every request and response to `weir.log.<name>`.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

impl Default for Logging {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl DeploymentSpec {
    /// Reads a spec; errors name the file, line and column.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ServeError> {
        let spec: Self = serde_yaml::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(":{}:{}", l.line(), l.column()))
                .unwrap_or_default();
            ServeError::Spec(format!("{origin}{at}: {e}"))
        })?;
        spec.check()
            .map_err(|e| ServeError::Spec(format!("{origin}: {e}")))?;
        Ok(spec)
    }

    /// Reads the spec file at `path`.
    pub fn read(path: &Path) -> Result<Self, ServeError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServeError::Spec(format!("{}: {e}", path.display())))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// A spec serving `model` alone, with defaults.
    pub fn single(name: &str, model: &str) -> Self {
        Self::parse(&format!("name: {name}\nmodel: {model}\n"), "<flags>")
            .expect("a well-formed spec")
    }

    /// Every registry reference the deployment serves: the members, then
    /// the stacker.
    pub fn references(&self) -> Vec<String> {
        let mut references: Vec<String> = self.members().into_iter().map(|m| m.model).collect();
        references.extend(self.stacker.clone());
        references
    }

    /// The members, weights included (a single `model` is one member).
    pub fn members(&self) -> Vec<Member> {
        match &self.model {
            Some(model) => vec![Member {
                model: model.clone(),
                weight: 1.0,
            }],
            None => self.models.clone(),
        }
    }

    fn check(&self) -> Result<(), String> {
        let valid = |c: char| c.is_ascii_alphanumeric() || "-_".contains(c);
        if self.name.is_empty() || !self.name.chars().all(valid) {
            return Err(format!(
                "name: `{}` must be letters, digits, `-` and `_` (it names topics)",
                self.name
            ));
        }
        match (&self.model, self.models.is_empty()) {
            (Some(_), false) => return Err("give `model` or `models`, not both".into()),
            (None, true) => return Err("no model: give `model: name@alias`".into()),
            _ => {}
        }
        if self
            .models
            .iter()
            .any(|m| m.weight.is_nan() || m.weight <= 0.0)
        {
            return Err("models: every weight must be positive".into());
        }
        for (column, scale) in &self.preprocess.scale {
            if scale.std.is_nan() || scale.std <= 0.0 {
                return Err(format!("preprocess.scale.{column}: std must be positive"));
            }
        }
        if let Some(t) = self.postprocess.threshold
            && !(0.0..=1.0).contains(&t)
        {
            return Err(format!("postprocess.threshold: {t} is not in [0, 1]"));
        }
        if self.protocols.is_empty() {
            return Err("protocols: name at least one of http, grpc, stream".into());
        }
        let b = &self.batching;
        if b.max_batch == 0 || b.runners == 0 || b.intra_threads == 0 {
            return Err("batching: max_batch, runners and intra_threads must be at least 1".into());
        }
        if self.scaling.min == 0 || self.scaling.min > self.scaling.max {
            return Err(format!(
                "scaling: need 1 ≤ min ≤ max (min {}, max {})",
                self.scaling.min, self.scaling.max
            ));
        }
        for lookup in &self.features {
            if lookup.entity.is_empty() {
                return Err(format!(
                    "features: the look-up of `{}` names no entity column",
                    lookup.view
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_spec_reads_and_defaults_fill_the_rest() {
        let spec = DeploymentSpec::parse(
            "name: churn\nmodel: churn@champion\nfeatures:\n  - view: user_spend\n    entity: [user_id]\n\
             preprocess:\n  fill: {amount: 0}\n  scale: {amount: {mean: 1, std: 2}}\n  one_hot: {country: [DE, FR]}\n\
             postprocess: {threshold: 0.3, labels: [no, yes]}\nprotocols: [http, stream]\n",
            "churn.yaml",
        )
        .unwrap();
        assert_eq!(spec.members()[0].model, "churn@champion");
        assert_eq!(spec.batching.max_batch, 64);
        assert_eq!(spec.protocols, [Protocol::Http, Protocol::Stream]);
        assert!(spec.logging.enabled);
    }

    #[test]
    fn errors_name_the_file_and_position() {
        let error =
            DeploymentSpec::parse("name: x\nmodel: m\nbatching:\n  max_bach: 3\n", "d.yaml")
                .unwrap_err()
                .to_string();
        assert!(error.contains("d.yaml:4:3"), "{error}");
        assert!(error.contains("max_bach"), "{error}");
        let error = DeploymentSpec::parse("name: x\n", "d.yaml")
            .unwrap_err()
            .to_string();
        assert!(error.contains("no model"), "{error}");
        let error =
            DeploymentSpec::parse("name: x\nmodel: m\npostprocess: {threshold: 2}\n", "d.yaml")
                .unwrap_err()
                .to_string();
        assert!(error.contains("threshold"), "{error}");
    }
}
