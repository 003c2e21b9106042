//! The bandit allocator: a dataflow job that moves a bandit experiment's
//! weights from the rewards its traffic earns.
//!
//! ```text
//!  weir.feedback.<d> ─┐ interval join on request_id      allocator operator          weir.control.<d>
//!                     ├▶ (the request served at most  ─▶  per-arm rewards (RocksDB) ─▶ Routing v n+1, n+2…
//!  weir.log.<d> ──────┘  `window` before its feedback)    every `policy.every`: policy
//! ```
//!
//! Each feedback record meets the request it is about on the deployment's
//! log (which carries the variant that answered); the [`Allocator`]
//! operator adds its reward to the variant's statistics and, on a grid of
//! event time (`policy.every`), turns them into weights with the policy
//! and emits the experiment's next [`Routing`] to the control topic, which
//! every serving replica follows (marked `allocated`; their versions
//! follow the applied routing's). A tick's weights take exactly the
//! rewards whose feedback time is before it — rewards wait in state for
//! their tick — and Thompson sampling's draws are seeded by the tick, so a
//! restarted allocator publishes what an uninterrupted one would have, and
//! its state (RocksDB, sealed with the job's checkpoints) is the same.
//!
//! Feedback whose request is not on the log within the window (an unknown
//! id, or one older than the window) is counted, not used.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use weir_bus::Bus;
use weir_dataflow::DataflowError;
use weir_dataflow::aggregate::event_times;
use weir_dataflow::interval_join::IntervalJoin;
use weir_dataflow::job::{Cluster, JobHandle, JobSpec, KafkaSource, Sink, Source};
use weir_dataflow::lookup::JoinKind;
use weir_dataflow::operator::{Context, Operator, OperatorFactory};
use weir_dataflow::store::time_bytes;
use weir_serve::control;
use weir_serve::routing::{Kind, Routing};

use crate::TrafficError;
use crate::policy::{ArmStats, Policy};
use crate::spec::ExperimentSpec;

/// Columns of the joined rows the allocator reads.
const VARIANT: &str = "variant";
const REWARD: &str = "reward";
const TIME: &str = "timestamp";
const DEPLOYMENT: &str = "deployment";
const SERVED_AT: &str = "served_at";

/// The allocator operator's settings: the routing it moves and the policy.
#[derive(Debug, Clone)]
pub struct Allocator {
    /// The experiment's routing when the allocator started: its candidates
    /// (in order), default, mirror and sticky carry over to every routing
    /// it publishes; its version is the base of theirs.
    pub routing: Routing,
    /// The policy.
    pub policy: Policy,
    /// `policy.every`, ms.
    pub every: i64,
}

impl Allocator {
    /// An allocator for `routing`, checked against `policy`.
    pub fn new(routing: Routing, policy: Policy) -> Result<Self, String> {
        policy.check(routing.candidates.len())?;
        let every = i64::try_from(policy.period()?.as_millis()).unwrap_or(i64::MAX);
        Ok(Self {
            routing,
            policy,
            every,
        })
    }
}

/// The schema of a [`Routing`] as rows, so that the Kafka sink's JSON is
/// one.
fn routing_schema() -> SchemaRef {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let candidate = Fields::from(vec![
        text("model", false),
        Field::new("weight", DataType::Float64, false),
    ]);
    Arc::new(Schema::new(vec![
        text("experiment", false),
        Field::new("version", DataType::UInt64, false),
        text("kind", false),
        Field::new(
            "candidates",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(candidate),
                false,
            ))),
            false,
        ),
        text("default", false),
        Field::new(
            "mirror",
            DataType::Struct(Fields::from(vec![
                text("model", false),
                Field::new("percent", DataType::Float64, false),
            ])),
            true,
        ),
        Field::new(
            "sticky",
            DataType::Struct(Fields::from(vec![text("key", true), text("header", true)])),
            true,
        ),
        Field::new("stopped", DataType::Boolean, false),
        Field::new("allocated", DataType::Boolean, false),
        Field::new("at", DataType::Int64, false),
    ]))
}

fn arrow_error(error: arrow::error::ArrowError) -> DataflowError {
    DataflowError::Execution(format!("allocator: {error}"))
}

/// `routing` as one row of [`routing_schema`].
fn routing_row(routing: &Routing, schema: &SchemaRef) -> Result<RecordBatch, DataflowError> {
    let value = serde_json::to_value(routing)
        .map_err(|e| DataflowError::Execution(format!("allocator: {e}")))?;
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .build_decoder()
        .map_err(arrow_error)?;
    decoder.serialize(&[value]).map_err(arrow_error)?;
    Ok(decoder
        .flush()
        .map_err(arrow_error)?
        .expect("one row was serialized"))
}

impl OperatorFactory for Allocator {
    fn name(&self) -> &str {
        "allocator"
    }

    // All of the experiment's rewards meet on one worker (the log's
    // deployment column; feedback that met no request has none, and is
    // only counted).
    fn key_columns(&self) -> Vec<String> {
        vec![DEPLOYMENT.into()]
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, DataflowError> {
        for name in [VARIANT, REWARD, TIME, DEPLOYMENT, SERVED_AT] {
            input.index_of(name).map_err(|_| {
                DataflowError::Plan(format!("allocator: `{name}` is not a column of its input"))
            })?;
        }
        Ok(routing_schema())
    }

    fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>, DataflowError> {
        let column = |name| input.index_of(name).expect("checked by output_schema");
        Ok(Box::new(AllocatorOperator {
            settings: self.clone(),
            variant: column(VARIANT),
            reward: column(REWARD),
            time: column(TIME),
            served_at: column(SERVED_AT),
            output: self.output_schema(input)?,
        }))
    }
}

/// State, all under fixed keys (one experiment per job): each tick's
/// rewards per variant until the tick, the statistics per variant, how
/// many routings were published, how many feedback records met no request.
const PENDING: &str = "pending";
const ARMS: &str = "arms";
const ARMS_KEY: &[u8] = b"arms";
const PUBLISHED: &str = "published";
const UNMATCHED: &str = "unmatched";
const TICK: &[u8] = b"tick";

struct AllocatorOperator {
    settings: Allocator,
    variant: usize,
    reward: usize,
    time: usize,
    served_at: usize,
    output: SchemaRef,
}

impl AllocatorOperator {
    fn is_candidate(&self, variant: &str) -> bool {
        self.settings
            .routing
            .candidates
            .iter()
            .any(|c| c.model == variant)
    }
}

impl Operator for AllocatorOperator {
    fn process(&mut self, batch: &RecordBatch, ctx: &mut Context<'_>) -> Result<(), DataflowError> {
        let variants: ArrayRef =
            cast(batch.column(self.variant), &DataType::Utf8).map_err(arrow_error)?;
        let variants = variants
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("utf8");
        let rewards: ArrayRef =
            cast(batch.column(self.reward), &DataType::Float64).map_err(arrow_error)?;
        let rewards = rewards
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("float64");
        let times = event_times(batch.column(self.time))?;
        let served_at: ArrayRef =
            cast(batch.column(self.served_at), &DataType::Int64).map_err(arrow_error)?;
        let served_at = served_at
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("int64");
        // Gathered per tick and variant first: one state update each.
        let mut gathered: BTreeMap<(i64, String), ArmStats> = BTreeMap::new();
        let mut unmatched = 0;
        for (row, time) in times.into_iter().enumerate() {
            if variants.is_null(row) {
                unmatched += 1;
                continue;
            }
            let variant = variants.value(row);
            // Only the experiment's own traffic: what was served since it
            // was applied, by one of its candidates.
            if rewards.is_null(row)
                || served_at.value(row) < self.settings.routing.at
                || !self.is_candidate(variant)
            {
                continue;
            }
            // The first tick after it: a tick takes what came before it.
            let tick = (time.div_euclid(self.settings.every) + 1) * self.settings.every;
            gathered
                .entry((tick, variant.to_string()))
                .or_default()
                .add(rewards.value(row));
        }
        if unmatched > 0 {
            let mut count = ctx.value::<u64>(UNMATCHED);
            let before = count.get(UNMATCHED.as_bytes())?.unwrap_or(0);
            count.set(UNMATCHED.as_bytes(), &(before + unmatched))?;
        }
        for ((tick, variant), stats) in gathered {
            let key = time_bytes(tick);
            let mut pending = ctx.map::<String, ArmStats>(PENDING);
            let mut sum = pending.get(&key, &variant)?.unwrap_or_default();
            sum.merge(&stats);
            pending.insert(&key, &variant, &sum)?;
            ctx.set_timer(TICK, tick);
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        _key: &[u8],
        tick: i64,
        ctx: &mut Context<'_>,
    ) -> Result<(), DataflowError> {
        let key = time_bytes(tick);
        let arrived = ctx.map::<String, ArmStats>(PENDING).entries(&key)?;
        ctx.map::<String, ArmStats>(PENDING).clear(&key)?;
        let mut arms = ctx.map::<String, ArmStats>(ARMS);
        for (variant, stats) in arrived {
            let mut sum = arms.get(ARMS_KEY, &variant)?.unwrap_or_default();
            sum.merge(&stats);
            arms.insert(ARMS_KEY, &variant, &sum)?;
        }
        let mut stats = Vec::with_capacity(self.settings.routing.candidates.len());
        for candidate in &self.settings.routing.candidates {
            stats.push(arms.get(ARMS_KEY, &candidate.model)?.unwrap_or_default());
        }
        // Seeded by the tick: a replay draws the same.
        let weights = self.settings.policy.weights(&stats, tick as u64);
        let published = ctx
            .value::<u64>(PUBLISHED)
            .get(PUBLISHED.as_bytes())?
            .unwrap_or(0)
            + 1;
        ctx.value::<u64>(PUBLISHED)
            .set(PUBLISHED.as_bytes(), &published)?;
        let template = &self.settings.routing;
        let mut routing = Routing {
            version: template.version + published,
            kind: Kind::Bandit,
            allocated: true,
            at: tick,
            ..template.clone()
        };
        for (candidate, weight) in routing.candidates.iter_mut().zip(weights) {
            candidate.weight = weight;
        }
        ctx.emit(routing_row(&routing, &self.output)?);
        Ok(())
    }
}

/// How an allocator job runs.
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

/// A started allocator job.
pub struct Started {
    /// The job's name ([`job_name`]).
    pub name: String,
    /// The job.
    pub job: JobHandle,
    /// Resolves when the routing it moves is no longer the one applied
    /// (the experiment stopped, was applied again, or another one was):
    /// the job should then stop, as its weights take no effect.
    pub superseded: Superseded,
}

/// See [`Started::superseded`].
pub type Superseded =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), TrafficError>> + Send>>;

/// Starts the allocator job of the bandit experiment `spec` describes,
/// which must be running (applied, not stopped).
pub async fn start(
    bus: &Bus,
    spec: &ExperimentSpec,
    running: Running,
) -> Result<Started, TrafficError> {
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
    // The routing as applied, not one the allocator wrote: those may come
    // from an epoch a crash undid, and the next versions follow the
    // applied one's.
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
    if routing.kind != Kind::Bandit {
        return Err(TrafficError::Refused(format!(
            "experiment `{}` is not a bandit: its weights are fixed",
            spec.name
        )));
    }
    let allocator = Allocator::new(routing, spec.policy())
        .map_err(|message| TrafficError::spec(&spec.name, message))?;
    let (window, lateness) = spec
        .reward()
        .durations()
        .map_err(|message| TrafficError::spec(&spec.name, message))?;
    let reading = Reading {
        window,
        lateness,
        bounded: running.bounded,
    };
    let mut job = job(&spec.deployment, allocator, &reading, &running.state_dir);
    job.checkpoint_interval = running.checkpoint_every;
    let name = job.name.clone();
    let job = weir_dataflow::job::start(job, bus, running.cluster).await?;
    Ok(Started {
        name,
        job,
        superseded: Box::pin(superseded(bus.clone(), spec.deployment.clone(), next)),
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

/// The allocator job's name: `allocator-<experiment>-v<version>`, after
/// the routing as applied, so that a restart resumes its statistics and an
/// experiment applied again starts afresh.
pub fn job_name(applied: &Routing) -> String {
    format!("allocator-{}-v{}", applied.experiment, applied.version)
}

/// How the allocator job reads the traffic.
#[derive(Debug, Clone)]
pub struct Reading {
    /// How long after its request a feedback record may come and still
    /// count.
    pub window: Duration,
    /// How late (event time) a record may arrive before it is
    /// dead-lettered; the weights wait this long for stragglers.
    pub lateness: Duration,
    /// Stop at the end of what the topics hold now (a replay, a test).
    pub bounded: bool,
}

/// The allocator job of `deployment`'s experiment routed by `routing`:
/// its feedback joined with its log, the [`Allocator`], the control topic.
/// Its name is [`job_name`]; its state is under `state_dir`.
pub fn job(deployment: &str, allocator: Allocator, reading: &Reading, state_dir: &Path) -> JobSpec {
    let source = |topic: String| KafkaSource {
        lateness: reading.lateness,
        // A quiet partition must not hold the weights back for long.
        idle_timeout: Duration::from_secs(1),
        bounded: reading.bounded,
        ..KafkaSource::new(topic, TIME)
    };
    let window = i64::try_from(reading.window.as_millis()).unwrap_or(i64::MAX);
    let name = job_name(&allocator.routing);
    JobSpec::new(
        name,
        Source::Kafka(source(weir_core::topics::feedback(deployment))),
        Sink::Kafka {
            topic: weir_core::topics::control(deployment),
            key: vec!["experiment".into()],
        },
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
            ("propensity".into(), "propensity".into()),
            (DEPLOYMENT.into(), DEPLOYMENT.into()),
            (TIME.into(), "served_at".into()),
        ],
    })
    .operator(allocator)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_serve::routing::{Candidate, Mirror, Sticky};

    #[test]
    fn a_routing_row_is_read_back_as_the_routing() {
        let routing = Routing {
            experiment: "e".into(),
            version: 3,
            kind: Kind::Bandit,
            candidates: vec![
                Candidate {
                    model: "m@1".into(),
                    weight: 0.25,
                },
                Candidate {
                    model: "m@2".into(),
                    weight: 0.75,
                },
            ],
            default: "m@1".into(),
            mirror: Some(Mirror {
                model: "m@3".into(),
                percent: 12.5,
            }),
            sticky: Some(Sticky::Header("X-User".into())),
            stopped: false,
            allocated: true,
            at: 1_700_000_000_000,
        };
        let batch = routing_row(&routing, &routing_schema()).unwrap();
        let mut bytes = Vec::new();
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut bytes);
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
        assert_eq!(
            Routing::from_bytes(bytes.trim_ascii_end()).unwrap(),
            routing
        );
    }
}
