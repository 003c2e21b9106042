//! Carrying out what an experiment's analysis or guardrails decided:
//! promote the candidate (its version becomes what the deployment's alias
//! points at; serving swaps without a restart; the experiment stops) or
//! roll back (the experiment stops; the deployment serves its own model
//! again). The decision itself is made in the analysis job or the
//! guardrail job, on their rows ([`crate::analysis`],
//! [`crate::guardrails`]); this is its effect, with the evidence recorded
//! on `weir.meta` as a run of the tracking experiment `online-experiments`
//! (the decision, the candidate, and its figures and the default's: lift,
//! interval, p-value and rewards, or latency p99 and error rate).
//!
//! Carrying a decision out is idempotent: a decision row read again (a
//! replay after a crash, a second `weir traffic analyze`) finds its
//! experiment version no longer running and does nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use weir_bus::Bus;
use weir_meta::event::{KeyValue, Metric};
use weir_meta::tracker::RunReport;

use crate::{TRACKING_EXPERIMENT, TrafficError};

use crate::analysis::{self, AnalysisRow, Decision};
use crate::experiments;
use crate::guardrails::{self, GuardrailRow};
use crate::spec::ExperimentSpec;

/// What a decision was made on: the deciding candidate's row, and the
/// default's at the same tick.
#[derive(Debug, Clone)]
pub enum Evidence {
    /// The analysis's comparison of the rewards.
    Rewards {
        /// The candidate's row.
        candidate: Box<AnalysisRow>,
        /// The default's.
        default: Option<Box<AnalysisRow>>,
    },
    /// A guardrail the candidate went over.
    Guardrail {
        /// The candidate's row.
        candidate: Box<GuardrailRow>,
        /// The default's.
        default: Option<Box<GuardrailRow>>,
    },
}

impl Evidence {
    fn at(&self) -> i64 {
        match self {
            Self::Rewards { candidate, .. } => candidate.at,
            Self::Guardrail { candidate, .. } => candidate.at,
        }
    }

    fn variant(&self) -> &str {
        match self {
            Self::Rewards { candidate, .. } => &candidate.variant,
            Self::Guardrail { candidate, .. } => &candidate.variant,
        }
    }
}

/// A decision carried out.
#[derive(Debug, Clone)]
pub struct Decided {
    /// What was decided.
    pub decision: Decision,
    /// What it was decided on.
    pub evidence: Evidence,
    /// What was done, in words.
    pub outcome: String,
    /// The run on `weir.meta` that records it.
    pub run_id: String,
}

/// The first decision published for version `version` of `spec`'s
/// experiment (by the analysis, or by the guardrails when it has them),
/// with its evidence; a guardrail's first at the same tick.
async fn first_decision(
    bus: &Bus,
    spec: &ExperimentSpec,
    version: u64,
    default: &str,
) -> Result<Option<(Decision, Evidence)>, TrafficError> {
    let mut found: Vec<(Decision, Evidence)> = Vec::new();
    if spec.guardrails.is_some() {
        let rows = guardrails::read(bus, &spec.deployment, &spec.name, version).await?;
        if let Some(row) = rows.iter().find(|r| r.decision.is_some()) {
            let at_default = rows
                .iter()
                .find(|r| r.at == row.at && r.variant == default)
                .cloned()
                .map(Box::new);
            found.push((
                row.decision.expect("found by it"),
                Evidence::Guardrail {
                    candidate: Box::new(row.clone()),
                    default: at_default,
                },
            ));
        }
    }
    let rows = analysis::read(bus, &spec.deployment, &spec.name, version).await?;
    if let Some(row) = rows.iter().find(|r| r.decision.is_some()) {
        let at_default = rows
            .iter()
            .find(|r| r.at == row.at && r.variant == default)
            .cloned()
            .map(Box::new);
        found.push((
            row.decision.expect("found by it"),
            Evidence::Rewards {
                candidate: Box::new(row.clone()),
                default: at_default,
            },
        ));
    }
    // Stable: a guardrail's decision comes first at the same tick.
    found.sort_by_key(|(_, evidence)| evidence.at());
    Ok(found.into_iter().next())
}

/// Carries out the first decision published for version `version` of
/// `spec`'s experiment, if there is one and that version still runs.
/// `Ok(None)`: nothing to do.
pub async fn settle(
    bus: &Bus,
    tracker: &weir_meta::Tracker,
    spec: &ExperimentSpec,
    version: u64,
) -> Result<Option<Decided>, TrafficError> {
    let (deployment, experiment) = (spec.deployment.as_str(), spec.name.as_str());
    let state = tracker.snapshot();
    let current = experiments::find(bus, &state, experiment).await?;
    if !current.running() || current.applied.version != version {
        return Ok(None);
    }
    let default = current.applied.default.clone();
    let Some((decision, evidence)) = first_decision(bus, spec, version, &default).await? else {
        return Ok(None);
    };
    let variant = evidence.variant().to_string();
    let outcome = match decision {
        Decision::Promote => {
            let promoted = experiments::promote(bus, tracker, experiment, Some(&variant)).await?;
            format!(
                "promoted {variant}: {} moved from {} to version {}; experiment {experiment} v{} stopped",
                promoted.alias,
                promoted
                    .from
                    .map_or("nothing".to_string(), |v| format!("version {v}")),
                promoted.to,
                promoted.routing.version
            )
        }
        Decision::Rollback => {
            let stopped = experiments::stop(bus, &state, experiment).await?;
            let version = stopped.map_or(version, |(_, routing)| routing.version);
            let why = match &evidence {
                Evidence::Guardrail { candidate, .. } => candidate
                    .breach
                    .clone()
                    .unwrap_or_else(|| "over a guardrail".into()),
                Evidence::Rewards { .. } => format!("worse than {default}"),
            };
            format!(
                "rolled back: {variant}: {why}; experiment {experiment} v{version} stopped, `{deployment}` serves {default} again"
            )
        }
    };
    let run_id = record(tracker, spec, version, &evidence, decision, &outcome).await?;
    Ok(Some(Decided {
        decision,
        evidence,
        outcome,
        run_id,
    }))
}

/// Carries out the experiment's decision as soon as it is published,
/// looking every second, until one was carried out (returned) or `ended`
/// is set (the experiment ended otherwise: `None`). A look that fails is
/// logged and tried again.
pub async fn follow(
    bus: &Bus,
    tracker: &weir_meta::Tracker,
    spec: &ExperimentSpec,
    version: u64,
    ended: &AtomicBool,
) -> Option<Decided> {
    loop {
        match settle(bus, tracker, spec, version).await {
            Ok(Some(decided)) => return Some(decided),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, experiment = %spec.name, "carrying out the decision failed");
            }
        }
        if ended.load(Ordering::SeqCst) {
            return None;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Records a decision and its evidence as a run.
async fn record(
    tracker: &weir_meta::Tracker,
    spec: &ExperimentSpec,
    version: u64,
    evidence: &Evidence,
    decision: Decision,
    outcome: &str,
) -> Result<String, TrafficError> {
    let word = match decision {
        Decision::Promote => "promote",
        Decision::Rollback => "rollback",
    };
    let now = weir_core::now_ms();
    let text = |key: &str, value: &str| KeyValue {
        key: key.into(),
        value: value.into(),
    };
    let metric = |key: &str, value: f64| Metric {
        key: key.into(),
        value,
        timestamp: evidence.at(),
        step: 0,
    };
    let mut params = vec![
        text("experiment", &spec.name),
        text("experiment_version", &version.to_string()),
        text("deployment", &spec.deployment),
        text("decision", word),
        text("candidate", evidence.variant()),
    ];
    let mut metrics = Vec::new();
    match evidence {
        Evidence::Rewards { candidate, default } => {
            params.push(text("evidence", "rewards"));
            metrics.push(metric("candidate_rewards", candidate.n as f64));
            metrics.push(metric("candidate_mean", candidate.mean));
            for (key, value) in [
                ("lift", candidate.lift),
                ("lift_low", candidate.low),
                ("lift_high", candidate.high),
                ("p_value", candidate.p_value),
                ("candidate_value_dr", candidate.dr),
                ("candidate_value_dr_se", candidate.dr_se),
            ] {
                if let Some(value) = value {
                    metrics.push(metric(key, value));
                }
            }
            if let Some(default) = default {
                params.push(text("default", &default.variant));
                metrics.push(metric("default_rewards", default.n as f64));
                metrics.push(metric("default_mean", default.mean));
            }
        }
        Evidence::Guardrail { candidate, default } => {
            params.push(text("evidence", "guardrail"));
            params.push(text("breach", candidate.breach.as_deref().unwrap_or("")));
            for (prefix, row) in [
                ("candidate", Some(candidate)),
                ("default", default.as_ref()),
            ] {
                let Some(row) = row else { continue };
                metrics.push(metric(&format!("{prefix}_requests"), row.requests as f64));
                metrics.push(metric(&format!("{prefix}_error_rate"), row.error_rate));
                if let Some(p99) = row.latency_p99_ms {
                    metrics.push(metric(&format!("{prefix}_latency_p99_ms"), p99));
                }
            }
            if let Some(default) = default {
                params.push(text("default", &default.variant));
            }
        }
    }
    let report = RunReport {
        experiment: TRACKING_EXPERIMENT.into(),
        run_name: format!("{}-v{version}-{word}", spec.name),
        start_time: now,
        end_time: now,
        params,
        metrics,
        tags: vec![
            text("weir.traffic.experiment", &spec.name),
            text("weir.traffic.decision", word),
            text("weir.traffic.outcome", outcome),
        ],
        datasets: Vec::new(),
        status: String::new(),
        artifacts: Vec::new(),
    };
    let (run_id, _) = tracker.record_run(report).await?;
    Ok(run_id)
}
