//! Online experiments on a deployment's traffic: a canary, a sticky A/B
//! test or a bandit between registered models, written as a YAML spec
//! (`topologies/experiments/*.yaml`, in the shape of Seldon Core v2's
//! experiments), checked against the registry and published as the
//! routing that every serving replica follows on
//! `weir.control.<deployment>` ([`weir_serve::routing`]).
//!
//! ```text
//!  spec.yaml ─▶ check, resolve name@alias ─▶ Routing ─▶ weir.control.<d> ─▶ weir serve (every replica)
//!               (weir.meta's registry)        version n                     routes, mirrors, logs
//!                                                                           variant + propensity
//! ```
//!
//! A bandit's weights move with the rewards: its allocator is a dataflow
//! job ([`allocator`]) that joins the deployment's feedback with its log
//! and publishes new weights with a [`policy`]. Every experiment's
//! candidates are compared with its default by its [`analysis`] job, on
//! the same rewards, with a sequential test that may be read at any time;
//! decision rules in the spec let it promote a better candidate or roll
//! back a worse one by itself, and its [`guardrails`] job rolls it back
//! when a candidate's latency or error rate goes over its limit.
//!
//! - [`spec`]: the experiment spec and its checks;
//! - [`experiments`]: applying, listing, stopping and promoting
//!   experiments;
//! - [`policy`]: bandit policies, from reward statistics to weights;
//! - [`rewards`]: an experiment's rewards (its feedback joined with its
//!   log) as the source of its jobs;
//! - [`allocator`]: the allocator job;
//! - [`analysis`]: the analysis job, which compares the candidates
//!   continuously;
//! - [`guardrails`]: the guardrail job, which rolls an experiment back
//!   when a candidate's latency or error rate goes over its limit;
//! - [`decide`]: carrying out what the analysis or the guardrails
//!   decided (promote, roll back), with its evidence on `weir.meta`;
//! - [`report`]: an experiment's report, as a table and an HTML page;
//! - [`sequential`]: the sequential test of a candidate against the
//!   default, valid under continuous peeking;
//! - [`ope`]: off-policy estimates of what each candidate would have
//!   earned with all of the traffic, from the logged propensities.

/// The tracking experiment on `weir.meta` that records online
/// experiments: each version applied ([`experiments::apply`]) and each
/// decision carried out ([`decide`]), as runs.
pub const TRACKING_EXPERIMENT: &str = "online-experiments";

pub mod allocator;
pub mod analysis;
pub mod decide;
pub mod experiments;
pub mod guardrails;
pub mod ope;
pub mod policy;
pub mod report;
pub mod rewards;
pub mod sequential;
pub mod spec;

/// What can go wrong with an experiment.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    /// A spec that cannot be used: the file, and where or which field.
    #[error("{origin}{at}: {message}")]
    Spec {
        /// The file (or `<stdin>`).
        origin: String,
        /// `:line:col`, where known.
        at: String,
        /// What is wrong.
        message: String,
    },
    /// No such experiment, or one in the way.
    #[error("{0}")]
    Refused(String),
    /// Reading or publishing the routing failed.
    #[error(transparent)]
    Serve(#[from] weir_serve::ServeError),
    /// The allocator job failed.
    #[error(transparent)]
    Dataflow(#[from] weir_dataflow::DataflowError),
    /// Reading a topic failed.
    #[error(transparent)]
    Bus(#[from] weir_bus::BusError),
    /// The registry refused a change (an alias move).
    #[error(transparent)]
    Meta(#[from] weir_meta::MetaError),
}

impl TrafficError {
    /// A spec error found after parsing: the file and the field (in
    /// `message`).
    pub(crate) fn spec(origin: &str, message: String) -> Self {
        Self::Spec {
            origin: origin.into(),
            at: String::new(),
            message,
        }
    }
}
