//! An experiment's rewards as a dataflow: each feedback record on
//! `weir.feedback.<d>` joined with the request it is about on
//! `weir.log.<d>` (which carries the variant that answered), read by the
//! experiment's jobs — the bandit's [`crate::allocator`] and the
//! [`crate::analysis`] — each with an operator of its own.
//!
//! ```text
//!  weir.feedback.<d> ─┐ interval join on request_id          operator      sink
//!                     ├▶ (the request served at most     ─▶ (RocksDB) ─▶ topic
//!  weir.log.<d> ──────┘  `reward.window` before its feedback)
//! ```
//!
//! Both jobs follow the routing as applied: they run while it is the
//! deployment's experiment, are named after its version (a restart
//! resumes, an experiment applied again starts afresh), and
//! [`Started::superseded`] tells when it no longer is.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef};
use weir_bus::Bus;
use weir_dataflow::DataflowError;
use weir_dataflow::aggregate::event_times;
use weir_dataflow::interval_join::IntervalJoin;
use weir_dataflow::job::{Cluster, JobHandle, JobSpec, KafkaSource, Select, Sink, Source};
use weir_dataflow::lookup::JoinKind;
use weir_dataflow::operator::{Context, OperatorFactory};
use weir_dataflow::store::time_bytes;
use weir_serve::control;
use weir_serve::routing::Routing;

use crate::TrafficError;
use crate::ope::Weighted;
use crate::policy::ArmStats;
use crate::spec::ExperimentSpec;

/// Columns of the joined rows.
const VARIANT: &str = "variant";
const PROPENSITY: &str = "propensity";
const REWARD: &str = "reward";
const TIME: &str = "timestamp";
/// The column the experiment's operators key by: the deployment, on every
/// row, so that all of them meet on one worker.
pub(crate) const DEPLOYMENT: &str = "deployment";
const SERVED_AT: &str = "served_at";

/// How an experiment's job reads the traffic.
#[derive(Debug, Clone)]
pub struct Reading {
    /// How long after its request a feedback record may come and still
    /// count.
    pub window: Duration,
    /// How late (event time) a record may arrive before it is
    /// dead-lettered; each result waits this long for stragglers.
    pub lateness: Duration,
    /// Stop at the end of what the topics hold now (a replay, a test).
    pub bounded: bool,
}

/// The job of `deployment`'s experiment named `name`: its feedback joined
/// with its log, then `operator`, into `sink`; its state under
/// `state_dir`.
pub fn job(
    name: String,
    deployment: &str,
    reading: &Reading,
    operator: impl OperatorFactory + 'static,
    sink: Sink,
    state_dir: &Path,
) -> JobSpec {
    let source = |topic: String| KafkaSource {
        lateness: reading.lateness,
        // A quiet partition must not hold the results back for long.
        idle_timeout: Duration::from_secs(1),
        bounded: reading.bounded,
        ..KafkaSource::new(topic, TIME)
    };
    let window = i64::try_from(reading.window.as_millis()).unwrap_or(i64::MAX);
    JobSpec::new(
        name,
        Source::Kafka(source(weir_core::topics::feedback(deployment))),
        sink,
        state_dir,
    )
    .join(IntervalJoin {
        right: source(weir_core::topics::log(deployment)),
        on: vec![("request_id".into(), "request_id".into())],
        // The request came at most `window` before its feedback.
        lower: -window,
        upper: 0,
        kind: JoinKind::Left,
        columns: vec![
            (VARIANT.into(), VARIANT.into()),
            (PROPENSITY.into(), PROPENSITY.into()),
            (DEPLOYMENT.into(), DEPLOYMENT.into()),
            (TIME.into(), SERVED_AT.into()),
        ],
    })
    // Every row, feedback that met no request too, keyed by the
    // deployment: the experiment's state is in one place.
    .select(Select {
        filter: None,
        columns: Some(
            ["request_id", TIME, REWARD, VARIANT, PROPENSITY, SERVED_AT]
                .iter()
                .map(|c| (c.to_string(), format!("\"{c}\"")))
                .chain([(
                    DEPLOYMENT.to_string(),
                    format!("'{}'", deployment.replace('\'', "''")),
                )])
                .collect(),
        ),
    })
    .operator(operator)
}

fn arrow_error(error: arrow::error::ArrowError) -> DataflowError {
    DataflowError::Execution(format!("rewards: {error}"))
}

/// Where the columns an experiment's operator reads are in its input.
#[derive(Debug, Clone, Copy)]
struct Columns {
    variant: usize,
    propensity: usize,
    reward: usize,
    time: usize,
    served_at: usize,
}

/// The experiment's rewards in a batch of joined rows.
#[derive(Debug, Default)]
struct Rewards {
    /// `(feedback time, variant, reward, propensity)` of feedback on the
    /// experiment's own traffic: served since it was applied, by one of
    /// its candidates (the propensity is NaN where the log has none).
    pub rows: Vec<(i64, String, f64, f64)>,
    /// Feedback that met no request within the window (an unknown id, or
    /// one older than the window).
    pub unmatched: u64,
}

impl Columns {
    /// The columns of `input`; errors name a missing one and `operator`.
    fn of(input: &SchemaRef, operator: &str) -> Result<Self, DataflowError> {
        let column = |name: &str| {
            input.index_of(name).map_err(|_| {
                DataflowError::Plan(format!("{operator}: `{name}` is not a column of its input"))
            })
        };
        column(DEPLOYMENT)?;
        Ok(Self {
            variant: column(VARIANT)?,
            propensity: column(PROPENSITY)?,
            reward: column(REWARD)?,
            time: column(TIME)?,
            served_at: column(SERVED_AT)?,
        })
    }

    /// The rewards in `batch` that belong to the experiment `routing`
    /// applied.
    pub fn rewards(
        &self,
        batch: &RecordBatch,
        routing: &Routing,
    ) -> Result<Rewards, DataflowError> {
        let column = |index: usize, to: &DataType| -> Result<ArrayRef, DataflowError> {
            cast(batch.column(index), to).map_err(arrow_error)
        };
        let variants = column(self.variant, &DataType::Utf8)?;
        let variants = variants.as_string::<i32>();
        let rewards = column(self.reward, &DataType::Float64)?;
        let rewards = rewards.as_primitive::<Float64Type>();
        let propensities = column(self.propensity, &DataType::Float64)?;
        let propensities = propensities.as_primitive::<Float64Type>();
        let served_at = column(self.served_at, &DataType::Int64)?;
        let served_at = served_at.as_primitive::<Int64Type>();
        let mut out = Rewards::default();
        for (row, time) in event_times(batch.column(self.time))?
            .into_iter()
            .enumerate()
        {
            if variants.is_null(row) {
                out.unmatched += 1;
                continue;
            }
            let variant = variants.value(row);
            if rewards.is_null(row)
                || served_at.value(row) < routing.at
                || !routing.candidates.iter().any(|c| c.model == variant)
            {
                continue;
            }
            let propensity = if propensities.is_null(row) {
                f64::NAN
            } else {
                propensities.value(row)
            };
            out.rows
                .push((time, variant.to_string(), rewards.value(row), propensity));
        }
        Ok(out)
    }
}

/// The first tick of a grid of period `every` (ms) after `time`: a tick
/// takes what came before it.
pub(crate) fn next_tick(time: i64, every: i64) -> i64 {
    (time.div_euclid(every) + 1) * every
}

/// State keys, fixed (one experiment per job): each tick's rewards per
/// variant until the tick, then the statistics per variant (plain and
/// propensity-weighted); how many feedback records met no request.
const PENDING: &str = "pending";
const ARMS: &str = "arms";
const PENDING_WEIGHTED: &str = "pending_weighted";
const WEIGHTED: &str = "weighted";
const ARMS_KEY: &[u8] = b"arms";
const UNMATCHED: &str = "unmatched";
const TICK: &[u8] = b"tick";

/// What an experiment's operator keeps of its rewards, on a grid of event
/// time: a tick's statistics take exactly the rewards whose feedback came
/// before it (they wait in state for it), so a replay after a crash
/// computes what an uninterrupted run did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RewardState {
    columns: Columns,
    /// The grid's period, ms.
    every: i64,
}

impl RewardState {
    /// The state of an operator (named `operator` in errors) over
    /// `input`, ticking every `every` ms.
    pub fn new(input: &SchemaRef, operator: &str, every: i64) -> Result<Self, DataflowError> {
        Ok(Self {
            columns: Columns::of(input, operator)?,
            every,
        })
    }

    /// Adds the rewards in `batch` of the experiment `routing` applied to
    /// the ticks they wait for, and sets those ticks' timers.
    pub fn add(
        &self,
        batch: &RecordBatch,
        routing: &Routing,
        ctx: &mut Context<'_>,
    ) -> Result<(), DataflowError> {
        let found = self.columns.rewards(batch, routing)?;
        // Gathered per tick and variant first: one state update each.
        let mut gathered: BTreeMap<(i64, String), (ArmStats, Weighted)> = BTreeMap::new();
        for (time, variant, reward, propensity) in found.rows {
            let (stats, weighted) = gathered
                .entry((next_tick(time, self.every), variant))
                .or_default();
            stats.add(reward);
            weighted.add(reward, propensity);
        }
        if found.unmatched > 0 {
            let mut count = ctx.value::<u64>(UNMATCHED);
            let before = count.get(UNMATCHED.as_bytes())?.unwrap_or(0);
            count.set(UNMATCHED.as_bytes(), &(before + found.unmatched))?;
        }
        for ((tick, variant), (stats, weighted)) in gathered {
            let key = time_bytes(tick);
            add_to(ctx, PENDING, &key, &variant, &stats)?;
            add_to(ctx, PENDING_WEIGHTED, &key, &variant, &weighted)?;
            ctx.set_timer(TICK, tick);
        }
        Ok(())
    }

    /// At `tick` (its timer fired): adds the rewards that waited for it
    /// to the variants' statistics, and returns those of `routing`'s
    /// candidates, in order.
    pub fn tick(
        &self,
        tick: i64,
        routing: &Routing,
        ctx: &mut Context<'_>,
    ) -> Result<Vec<ArmStats>, DataflowError> {
        let key = time_bytes(tick);
        settle::<ArmStats>(ctx, PENDING, ARMS, &key)?;
        settle::<Weighted>(ctx, PENDING_WEIGHTED, WEIGHTED, &key)?;
        of_candidates(ctx, ARMS, routing)
    }

    /// The propensity-weighted rewards of `routing`'s candidates so far
    /// (through the last tick), in order.
    pub fn weighted(
        routing: &Routing,
        ctx: &mut Context<'_>,
    ) -> Result<Vec<Weighted>, DataflowError> {
        of_candidates(ctx, WEIGHTED, routing)
    }

    /// Feedback records so far that met no request within the window.
    pub fn unmatched(ctx: &mut Context<'_>) -> Result<u64, DataflowError> {
        Ok(ctx
            .value::<u64>(UNMATCHED)
            .get(UNMATCHED.as_bytes())?
            .unwrap_or(0))
    }
}

/// Per-variant sums that add up: the plain and the weighted rewards.
trait Sums: Default + serde::Serialize + serde::de::DeserializeOwned {
    fn merge(&mut self, other: &Self);
}

impl Sums for ArmStats {
    fn merge(&mut self, other: &Self) {
        ArmStats::merge(self, other);
    }
}

impl Sums for Weighted {
    fn merge(&mut self, other: &Self) {
        Weighted::merge(self, other);
    }
}

/// Adds `sums` to `variant`'s entry of the map `name` under `key`.
fn add_to<T: Sums>(
    ctx: &mut Context<'_>,
    name: &str,
    key: &[u8],
    variant: &String,
    sums: &T,
) -> Result<(), DataflowError> {
    let mut map = ctx.map::<String, T>(name);
    let mut sum = map.get(key, variant)?.unwrap_or_default();
    sum.merge(sums);
    map.insert(key, variant, &sum)
}

/// Moves what waited in `pending` under `key` into the running sums of
/// `merged`.
fn settle<T: Sums>(
    ctx: &mut Context<'_>,
    pending: &str,
    merged: &str,
    key: &[u8],
) -> Result<(), DataflowError> {
    let arrived = ctx.map::<String, T>(pending).entries(key)?;
    ctx.map::<String, T>(pending).clear(key)?;
    for (variant, sums) in arrived {
        add_to(ctx, merged, ARMS_KEY, &variant, &sums)?;
    }
    Ok(())
}

/// The running sums of `name` for `routing`'s candidates, in order.
fn of_candidates<T: Sums>(
    ctx: &mut Context<'_>,
    name: &str,
    routing: &Routing,
) -> Result<Vec<T>, DataflowError> {
    let map = ctx.map::<String, T>(name);
    routing
        .candidates
        .iter()
        .map(|c| Ok(map.get(ARMS_KEY, &c.model)?.unwrap_or_default()))
        .collect()
}

/// How an experiment's job runs.
#[derive(Debug, Clone)]
pub struct Running {
    /// Where jobs keep their state.
    pub state_dir: std::path::PathBuf,
    /// Stop at the end of what the topics hold now.
    pub bounded: bool,
    /// How often state and offsets are checkpointed.
    pub checkpoint_every: Duration,
    /// Its workers.
    pub cluster: Cluster,
}

/// A started experiment job.
pub struct Started {
    /// The job's name.
    pub name: String,
    /// The version of the experiment's routing as applied, which the job
    /// follows.
    pub version: u64,
    /// The job.
    pub job: JobHandle,
    /// Resolves when the routing it follows is no longer the one applied
    /// (the experiment stopped, was applied again, or another one was):
    /// the job should then stop, as what it computes is about an
    /// experiment that no longer runs.
    pub superseded: Superseded,
}

/// See [`Started::superseded`].
pub type Superseded =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), TrafficError>> + Send>>;

/// The routing of `spec`'s experiment as applied, which must be running,
/// and the control topic's end offset (where [`Started::superseded`]
/// follows it from).
pub(crate) async fn applied(
    bus: &Bus,
    spec: &ExperimentSpec,
) -> Result<(Routing, i64), TrafficError> {
    let (history, next) = control::history(bus, &spec.deployment).await?;
    if !history
        .last()
        .is_some_and(|latest| latest.experiment == spec.name && !latest.stopped)
    {
        return Err(TrafficError::Refused(format!(
            "experiment `{}` is not running on deployment `{}`: apply it first (`weir traffic apply`)",
            spec.name, spec.deployment
        )));
    }
    // The routing as applied, not one an allocator wrote: those may come
    // from an epoch a crash undid.
    let routing = history
        .iter()
        .rev()
        .find(|r| r.experiment == spec.name && !r.allocated)
        .cloned()
        .ok_or_else(|| {
            TrafficError::Refused(format!(
                "experiment `{}`: the control topic keeps no applied routing of it: apply it again",
                spec.name
            ))
        })?;
    Ok((routing, next))
}

/// Starts `job` (one of `spec`'s experiment's, following the routing of
/// version `version` as applied), watching the control topic from `from`
/// for the experiment to end.
pub(crate) async fn start(
    bus: &Bus,
    spec: &ExperimentSpec,
    mut job: JobSpec,
    running: Running,
    (version, from): (u64, i64),
) -> Result<Started, TrafficError> {
    job.checkpoint_interval = running.checkpoint_every;
    let name = job.name.clone();
    let job = weir_dataflow::job::start(job, bus, running.cluster).await?;
    Ok(Started {
        name,
        version,
        job,
        superseded: Box::pin(superseded(bus.clone(), spec.deployment.clone(), from)),
    })
}

/// Resolves at the first routing published on the deployment's control
/// topic from offset `from` on that no allocator wrote.
async fn superseded(bus: Bus, deployment: String, from: i64) -> Result<(), TrafficError> {
    let mut reader = control::reader(&bus, &deployment, from)?;
    while let Some(record) = reader.next_raw().await.map_err(|e| {
        weir_serve::ServeError::Internal(format!(
            "{}: {e}",
            weir_core::topics::control(&deployment)
        ))
    })? {
        let Some(payload) = record.payload else {
            continue;
        };
        if Routing::from_bytes(&payload).is_ok_and(|routing| !routing.allocated) {
            return Ok(());
        }
    }
    Ok(())
}

/// A row an experiment's job publishes: about one variant of one version
/// of the experiment, at one tick.
pub(crate) trait PublishedRow: serde::de::DeserializeOwned {
    /// What the rows are, for errors.
    const WHAT: &'static str;

    /// Its experiment, version, tick and variant.
    fn identity(&self) -> (&str, u64, i64, &str);
}

/// The rows published to `topic` for version `version` of `experiment`,
/// by tick and variant, each once (a replay after a crash may have
/// published a row twice, the same both times).
pub(crate) async fn read_rows<T: PublishedRow>(
    bus: &Bus,
    topic: &str,
    experiment: &str,
    version: u64,
) -> Result<Vec<T>, TrafficError> {
    let (records, _) = bus.read_log_records(topic).await?;
    let mut rows = BTreeMap::new();
    for (offset, payload) in records {
        let row: T = serde_json::from_slice(&payload).map_err(|e| {
            TrafficError::Refused(format!("`{topic}` offset {offset}: not {}: {e}", T::WHAT))
        })?;
        let (of, at_version, at, variant) = row.identity();
        if of == experiment && at_version == version {
            rows.insert((at, variant.to_string()), row);
        }
    }
    Ok(rows.into_values().collect())
}
