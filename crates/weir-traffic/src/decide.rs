//! Carrying out what an experiment's analysis decided: promote the
//! candidate (its version becomes what the deployment's alias points at;
//! serving swaps without a restart; the experiment stops) or roll back
//! (the experiment stops; the deployment serves its own model again). The
//! decision itself is made in the analysis job, on its rows
//! ([`crate::analysis`]); this is its effect, with the evidence recorded
//! on `weir.meta` as a run of the tracking experiment `online-experiments`
//! (the decision, the candidate, its lift, interval, p-value and rewards,
//! and the report as an artifact).
//!
//! Carrying a decision out is idempotent: a decision row read again (a
//! replay after a crash, a second `weir traffic analyze`) finds its
//! experiment version no longer running and does nothing.

use weir_bus::Bus;
use weir_meta::event::{KeyValue, Metric};
use weir_meta::tracker::RunReport;

use crate::TrafficError;
use crate::analysis::{self, AnalysisRow, Decision};
use crate::experiments;

/// The tracking experiment decisions are recorded in.
pub const TRACKING_EXPERIMENT: &str = "online-experiments";

/// A decision carried out.
#[derive(Debug, Clone)]
pub struct Decided {
    /// What was decided.
    pub decision: Decision,
    /// The candidate's row that decided it: the evidence.
    pub evidence: AnalysisRow,
    /// The default's row at the same tick.
    pub default: Option<AnalysisRow>,
    /// What was done, in words.
    pub outcome: String,
    /// The run on `weir.meta` that records it.
    pub run_id: String,
}

/// Carries out the decision in the rows of version `version` of
/// `experiment` on `deployment`, if there is one and the version still
/// runs. `Ok(None)`: nothing to do.
pub async fn settle(
    bus: &Bus,
    tracker: &weir_meta::Tracker,
    deployment: &str,
    experiment: &str,
    version: u64,
) -> Result<Option<Decided>, TrafficError> {
    let rows = analysis::read(bus, deployment, experiment, version).await?;
    let Some(evidence) = rows.iter().find(|r| r.decision.is_some()).cloned() else {
        return Ok(None);
    };
    let decision = evidence.decision.expect("found by it");
    let state = tracker.snapshot();
    let current = experiments::find(bus, &state, experiment).await?;
    if !current.running() || current.applied.version != version {
        return Ok(None);
    }
    let default = rows
        .iter()
        .find(|r| r.at == evidence.at && r.variant == current.applied.default)
        .cloned();
    let outcome = match decision {
        Decision::Promote => {
            let promoted =
                experiments::promote(bus, tracker, experiment, Some(&evidence.variant)).await?;
            format!(
                "promoted {}: {} moved from {} to version {}; experiment {} v{} stopped",
                evidence.variant,
                promoted.alias,
                promoted
                    .from
                    .map_or("nothing".to_string(), |v| format!("version {v}")),
                promoted.to,
                experiment,
                promoted.routing.version
            )
        }
        Decision::Rollback => {
            let stopped = experiments::stop(bus, &state, experiment).await?;
            let version = stopped.map_or(version, |(_, routing)| routing.version);
            format!(
                "rolled back: {} is worse than {}; experiment {experiment} v{version} stopped, `{deployment}` serves {} again",
                evidence.variant, current.applied.default, current.applied.default
            )
        }
    };
    let run_id = record(
        tracker,
        deployment,
        &evidence,
        default.as_ref(),
        decision,
        &outcome,
    )
    .await?;
    Ok(Some(Decided {
        decision,
        evidence,
        default,
        outcome,
        run_id,
    }))
}

/// Records a decision and its evidence as a run.
async fn record(
    tracker: &weir_meta::Tracker,
    deployment: &str,
    evidence: &AnalysisRow,
    default: Option<&AnalysisRow>,
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
        timestamp: evidence.at,
        step: 0,
    };
    let mut metrics = vec![
        metric("candidate_rewards", evidence.n as f64),
        metric("candidate_mean", evidence.mean),
    ];
    for (key, value) in [
        ("lift", evidence.lift),
        ("lift_low", evidence.low),
        ("lift_high", evidence.high),
        ("p_value", evidence.p_value),
    ] {
        if let Some(value) = value {
            metrics.push(metric(key, value));
        }
    }
    if let Some(default) = default {
        metrics.push(metric("default_rewards", default.n as f64));
        metrics.push(metric("default_mean", default.mean));
    }
    let report = RunReport {
        experiment: TRACKING_EXPERIMENT.into(),
        run_name: format!("{}-v{}-{word}", evidence.experiment, evidence.version),
        start_time: now,
        end_time: now,
        params: vec![
            text("experiment", &evidence.experiment),
            text("experiment_version", &evidence.version.to_string()),
            text("deployment", deployment),
            text("decision", word),
            text("candidate", &evidence.variant),
            text("default", default.map_or("", |d| d.variant.as_str())),
        ],
        metrics,
        tags: vec![
            text("weir.traffic.experiment", &evidence.experiment),
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
