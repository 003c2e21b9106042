//! The experiment's analysis: a dataflow job that compares every candidate
//! with the default on the rewards the traffic earns, continuously, with a
//! test that stays valid however often it is read.
//!
//! ```text
//!  rewards (crate::rewards) ─▶ analyst operator                         ─▶ weir.analysis.<d>
//!                              per-variant rewards (RocksDB); every       one row per candidate
//!                              `analysis.every`: lift vs the default,     and tick
//!                              confidence sequence, always-valid p-value
//! ```
//!
//! On a grid of event time (`analysis.every`) the [`Analyst`] takes the
//! rewards whose feedback came before the tick (they wait in state for
//! it, as the allocator's do), and publishes, per candidate: its rewards,
//! mean, and against the default the relative lift with its confidence
//! sequence ([`crate::sequential`]). The published interval is the
//! intersection of every look's so far and the p-value the least so far —
//! both stay valid under continuous peeking, and a verdict once reached
//! holds. Beside the comparison, each row carries off-policy estimates
//! ([`crate::ope`]) of what the candidate would have earned with all of
//! the traffic, from the propensities the log recorded. With decision rules (`decision:` in the spec), the first row
//! whose verdict a rule takes (`better` to promote, `worse` to roll back,
//! with enough rewards on both sides) carries the decision, once, which
//! [`crate::decide`] carries out. The rows go to
//! `weir.analysis.<deployment>` (JSON, keyed by experiment and variant);
//! [`read`] reads them back for `weir traffic report`. The job is named `analysis-<experiment>-v<version>`
//! and follows the applied routing as the allocator does.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use weir_bus::Bus;
use weir_dataflow::DataflowError;
use weir_dataflow::job::{JobSpec, Sink};
use weir_dataflow::operator::{Context, Operator, OperatorFactory};
use weir_serve::routing::Routing;

use crate::TrafficError;
use crate::ope;
use crate::rewards::{self, Reading, RewardState, Running, Started};
use crate::sequential::{Sample, SequentialTest};
use crate::spec::{DecisionSpec, ExperimentSpec};

/// The analyst's settings: the routing it analyses and its test.
#[derive(Debug, Clone)]
pub struct Analyst {
    /// The experiment's routing as applied: its candidates and default.
    pub routing: Routing,
    /// The test.
    pub test: SequentialTest,
    /// `analysis.every`, ms.
    pub every: i64,
    /// What it decides by itself, if anything.
    pub decision: Option<DecisionSpec>,
}

/// What the analysis decided (once per experiment version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The candidate is better: promote it.
    Promote,
    /// The candidate is worse: stop the experiment.
    Rollback,
}

/// Where a candidate stands against the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The default itself.
    Default,
    /// Too few rewards on it or the default to compare yet.
    TooFew,
    /// Its interval holds 0.
    Undecided,
    /// Its interval is above 0.
    Better,
    /// Its interval is below 0.
    Worse,
}

/// One published row: a candidate at a tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisRow {
    /// The experiment.
    pub experiment: String,
    /// Its version as applied.
    pub version: u64,
    /// The tick (event time, ms): the row takes the feedback before it.
    pub at: i64,
    /// The candidate.
    pub variant: String,
    /// Rewards it has earned.
    pub n: u64,
    /// Their mean.
    pub mean: f64,
    /// Relative lift of its mean over the default's.
    pub lift: Option<f64>,
    /// The lift's confidence sequence (the intersection of every look's).
    pub low: Option<f64>,
    /// See `low`.
    pub high: Option<f64>,
    /// The always-valid p-value (the least of every look's).
    pub p_value: Option<f64>,
    /// Where it stands.
    pub verdict: Verdict,
    /// Feedback so far that met no request within the reward window.
    pub unmatched: u64,
    /// Set on the row that decided the experiment ([`crate::decide`]).
    #[serde(default)]
    pub decision: Option<Decision>,
    /// What the candidate would have earned per request with all of the
    /// experiment's traffic, by inverse propensity scoring
    /// ([`crate::ope`]), and its standard error.
    #[serde(default)]
    pub ips: Option<f64>,
    /// See `ips`.
    #[serde(default)]
    pub ips_se: Option<f64>,
    /// The same by self-normalised inverse propensity scoring.
    #[serde(default)]
    pub snips: Option<f64>,
    /// See `snips`.
    #[serde(default)]
    pub snips_se: Option<f64>,
    /// The same, doubly robust.
    #[serde(default)]
    pub dr: Option<f64>,
    /// See `dr`.
    #[serde(default)]
    pub dr_se: Option<f64>,
}

fn output_schema() -> SchemaRef {
    let field =
        |name: &str, data_type: DataType, nullable: bool| Field::new(name, data_type, nullable);
    Arc::new(Schema::new(vec![
        field("experiment", DataType::Utf8, false),
        field("version", DataType::UInt64, false),
        field("at", DataType::Int64, false),
        field("variant", DataType::Utf8, false),
        field("n", DataType::UInt64, false),
        field("mean", DataType::Float64, false),
        field("lift", DataType::Float64, true),
        field("low", DataType::Float64, true),
        field("high", DataType::Float64, true),
        field("p_value", DataType::Float64, true),
        field("verdict", DataType::Utf8, false),
        field("unmatched", DataType::UInt64, false),
        field("default", DataType::Boolean, false),
        field("decision", DataType::Utf8, true),
        field("ips", DataType::Float64, true),
        field("ips_se", DataType::Float64, true),
        field("snips", DataType::Float64, true),
        field("snips_se", DataType::Float64, true),
        field("dr", DataType::Float64, true),
        field("dr_se", DataType::Float64, true),
    ]))
}

fn to_batch(rows: &[AnalysisRow], default: &str) -> Result<RecordBatch, DataflowError> {
    let floats = |pick: fn(&AnalysisRow) -> Option<f64>| -> ArrayRef {
        Arc::new(rows.iter().map(pick).collect::<Float64Array>())
    };
    fn text(value: impl Serialize) -> Option<String> {
        serde_json::to_value(value)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
    }
    let verdicts: Vec<String> = rows
        .iter()
        .map(|r| text(r.verdict).unwrap_or_default())
        .collect();
    let decisions: Vec<Option<String>> = rows.iter().map(|r| r.decision.and_then(text)).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.experiment.as_str()),
        )),
        Arc::new(rows.iter().map(|r| r.version).collect::<UInt64Array>()),
        Arc::new(rows.iter().map(|r| r.at).collect::<Int64Array>()),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.variant.as_str()),
        )),
        Arc::new(rows.iter().map(|r| r.n).collect::<UInt64Array>()),
        floats(|r| Some(r.mean)),
        floats(|r| r.lift),
        floats(|r| r.low),
        floats(|r| r.high),
        floats(|r| r.p_value),
        Arc::new(StringArray::from(verdicts)),
        Arc::new(rows.iter().map(|r| r.unmatched).collect::<UInt64Array>()),
        Arc::new(
            rows.iter()
                .map(|r| Some(r.variant == default))
                .collect::<BooleanArray>(),
        ),
        Arc::new(StringArray::from(decisions)),
        floats(|r| r.ips),
        floats(|r| r.ips_se),
        floats(|r| r.snips),
        floats(|r| r.snips_se),
        floats(|r| r.dr),
        floats(|r| r.dr_se),
    ];
    RecordBatch::try_new(output_schema(), columns)
        .map_err(|e| DataflowError::Execution(format!("analysis: {e}")))
}

impl OperatorFactory for Analyst {
    fn name(&self) -> &str {
        "analyst"
    }

    // All of the experiment's rewards meet on one worker.
    fn key_columns(&self) -> Vec<String> {
        vec![rewards::DEPLOYMENT.into()]
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, DataflowError> {
        RewardState::new(input, "analyst", self.every)?;
        Ok(output_schema())
    }

    fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>, DataflowError> {
        Ok(Box::new(AnalystOperator {
            settings: self.clone(),
            rewards: RewardState::new(input, "analyst", self.every)?,
        }))
    }
}

/// State keys beside [`RewardState`]'s: each candidate's bounds so far,
/// whether the experiment was decided.
const BOUNDS: &str = "bounds";
const BOUNDS_KEY: &[u8] = b"bounds";
const DECIDED: &str = "decided";

/// The tightest interval and least p-value of every look so far.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Bounds {
    low: f64,
    high: f64,
    p_value: f64,
}

struct AnalystOperator {
    settings: Analyst,
    rewards: RewardState,
}

impl Operator for AnalystOperator {
    fn process(&mut self, batch: &RecordBatch, ctx: &mut Context<'_>) -> Result<(), DataflowError> {
        self.rewards.add(batch, &self.settings.routing, ctx)
    }

    fn on_timer(
        &mut self,
        _key: &[u8],
        tick: i64,
        ctx: &mut Context<'_>,
    ) -> Result<(), DataflowError> {
        let routing = &self.settings.routing;
        let arms = self.rewards.tick(tick, routing, ctx)?;
        let default = routing
            .candidates
            .iter()
            .zip(&arms)
            .find(|(c, _)| c.model == routing.default)
            .map(|(_, stats)| *stats)
            .unwrap_or_default();
        let unmatched = RewardState::unmatched(ctx)?;
        let weighted = RewardState::weighted(routing, ctx)?;
        let total = weighted.iter().map(|w| w.n).sum();
        let mut rows = Vec::with_capacity(routing.candidates.len());
        for ((candidate, stats), weighted) in routing.candidates.iter().zip(arms).zip(&weighted) {
            let estimates = ope::estimate(weighted, total);
            let mut row = AnalysisRow {
                experiment: routing.experiment.clone(),
                version: routing.version,
                at: tick,
                variant: candidate.model.clone(),
                n: stats.n,
                mean: stats.mean(),
                lift: None,
                low: None,
                high: None,
                p_value: None,
                verdict: Verdict::Default,
                unmatched,
                decision: None,
                ips: estimates.map(|e| e.ips.value),
                ips_se: estimates.map(|e| e.ips.standard_error),
                snips: estimates.map(|e| e.snips.value),
                snips_se: estimates.map(|e| e.snips.standard_error),
                dr: estimates.map(|e| e.dr.value),
                dr_se: estimates.map(|e| e.dr.standard_error),
            };
            if candidate.model != routing.default {
                row.verdict = Verdict::TooFew;
                let look = self
                    .settings
                    .test
                    .compare(Sample::from(&default), Sample::from(&stats));
                if let Some(look) = look {
                    let mut bounds = ctx.map::<String, Bounds>(BOUNDS);
                    let so_far = bounds.get(BOUNDS_KEY, &candidate.model)?;
                    let merged = match so_far {
                        Some(b) => Bounds {
                            low: b.low.max(look.low),
                            high: b.high.min(look.high),
                            p_value: b.p_value.min(look.p_value),
                        },
                        None => Bounds {
                            low: look.low,
                            high: look.high,
                            p_value: look.p_value,
                        },
                    };
                    bounds.insert(BOUNDS_KEY, &candidate.model, &merged)?;
                    row.lift = Some(look.lift);
                    row.low = Some(merged.low);
                    row.high = Some(merged.high);
                    row.p_value = Some(merged.p_value);
                    row.verdict = if merged.low > 0.0 {
                        Verdict::Better
                    } else if merged.high < 0.0 {
                        Verdict::Worse
                    } else {
                        Verdict::Undecided
                    };
                }
            }
            rows.push(row);
        }
        if let Some(rules) = &self.settings.decision {
            let mut decided = ctx.value::<bool>(DECIDED);
            if decided.get(DECIDED.as_bytes())? != Some(true) {
                let enough = |n: u64| n >= rules.min_rewards;
                let decision = rows.iter_mut().find_map(|row| {
                    let decision = match row.verdict {
                        Verdict::Better if rules.promote => Decision::Promote,
                        Verdict::Worse if rules.rollback => Decision::Rollback,
                        _ => return None,
                    };
                    (enough(row.n) && enough(default.n)).then(|| {
                        row.decision = Some(decision);
                    })
                });
                if decision.is_some() {
                    decided.set(DECIDED.as_bytes(), &true)?;
                }
            }
        }
        ctx.emit(to_batch(&rows, &routing.default)?);
        Ok(())
    }
}

/// The analysis job's name: `analysis-<experiment>-v<version>`.
pub fn job_name(applied: &Routing) -> String {
    format!("analysis-{}-v{}", applied.experiment, applied.version)
}

/// The analysis job of `deployment`'s experiment: its rewards, the
/// [`Analyst`], `weir.analysis.<deployment>`.
pub fn job(deployment: &str, analyst: Analyst, reading: &Reading, state_dir: &Path) -> JobSpec {
    let sink = Sink::Kafka {
        topic: weir_core::topics::analysis(deployment),
        key: vec!["experiment".into(), "variant".into()],
    };
    let name = job_name(&analyst.routing);
    rewards::job(name, deployment, reading, analyst, sink, state_dir)
}

/// Starts the analysis job of the experiment `spec` describes, which must
/// be running (any kind).
pub async fn start(
    bus: &Bus,
    spec: &ExperimentSpec,
    running: Running,
) -> Result<Started, TrafficError> {
    let (routing, next) = rewards::applied(bus, spec).await?;
    let settings = spec.analysis();
    let checked = settings
        .period()
        .and_then(|every| Ok((every, settings.test()?)))
        .and_then(|(every, test)| Ok((every, test, spec.reward().durations()?)));
    let (every, test, (window, lateness)) =
        checked.map_err(|message| TrafficError::spec(&spec.name, message))?;
    let version = routing.version;
    let analyst = Analyst {
        routing,
        test,
        every: i64::try_from(every.as_millis()).unwrap_or(i64::MAX),
        decision: spec.decision.clone(),
    };
    let reading = Reading {
        window,
        lateness,
        bounded: running.bounded,
    };
    let job = job(&spec.deployment, analyst, &reading, &running.state_dir);
    rewards::start(bus, spec, job, running, (version, next)).await
}

impl rewards::PublishedRow for AnalysisRow {
    const WHAT: &'static str = "an analysis row";

    fn identity(&self) -> (&str, u64, i64, &str) {
        (&self.experiment, self.version, self.at, &self.variant)
    }
}

/// The rows published for version `version` of `experiment` on
/// `deployment`, by tick and variant, each once.
pub async fn read(
    bus: &Bus,
    deployment: &str,
    experiment: &str,
    version: u64,
) -> Result<Vec<AnalysisRow>, TrafficError> {
    let topic = weir_core::topics::analysis(deployment);
    rewards::read_rows(bus, &topic, experiment, version).await
}
