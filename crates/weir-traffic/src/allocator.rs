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
//! log (which carries the variant that answered, [`crate::rewards`]); the [`Allocator`]
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

use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use weir_bus::Bus;
use weir_dataflow::DataflowError;
use weir_dataflow::job::{JobSpec, Sink};
use weir_dataflow::operator::{Context, Operator, OperatorFactory};
use weir_serve::routing::{Kind, Routing};

use crate::TrafficError;
use crate::policy::Policy;
use crate::rewards::{self, Reading, RewardState, Running, Started};
use crate::spec::ExperimentSpec;

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

    // All of the experiment's rewards meet on one worker.
    fn key_columns(&self) -> Vec<String> {
        vec![rewards::DEPLOYMENT.into()]
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, DataflowError> {
        RewardState::new(input, "allocator", self.every)?;
        Ok(routing_schema())
    }

    fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>, DataflowError> {
        Ok(Box::new(AllocatorOperator {
            settings: self.clone(),
            rewards: RewardState::new(input, "allocator", self.every)?,
            output: self.output_schema(input)?,
        }))
    }
}

/// How many routings were published (beside [`RewardState`]'s keys).
const PUBLISHED: &str = "published";

struct AllocatorOperator {
    settings: Allocator,
    rewards: RewardState,
    output: SchemaRef,
}

impl Operator for AllocatorOperator {
    fn process(&mut self, batch: &RecordBatch, ctx: &mut Context<'_>) -> Result<(), DataflowError> {
        self.rewards.add(batch, &self.settings.routing, ctx)
    }

    fn on_timer(
        &mut self,
        _key: &[u8],
        tick: i64,
        ctx: &mut Context<'_>,
    ) -> Result<(), DataflowError> {
        let stats = self.rewards.tick(tick, &self.settings.routing, ctx)?;
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

/// Starts the allocator job of the bandit experiment `spec` describes,
/// which must be running (applied, not stopped).
pub async fn start(
    bus: &Bus,
    spec: &ExperimentSpec,
    running: Running,
) -> Result<Started, TrafficError> {
    let (routing, next) = rewards::applied(bus, spec).await?;
    if routing.kind != Kind::Bandit {
        return Err(TrafficError::Refused(format!(
            "experiment `{}` is not a bandit: its weights are fixed",
            spec.name
        )));
    }
    let version = routing.version;
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
    let job = job(&spec.deployment, allocator, &reading, &running.state_dir);
    rewards::start(bus, spec, job, running, (version, next)).await
}

/// The allocator job's name: `allocator-<experiment>-v<version>`, after
/// the routing as applied, so that a restart resumes its statistics and an
/// experiment applied again starts afresh.
pub fn job_name(applied: &Routing) -> String {
    format!("allocator-{}-v{}", applied.experiment, applied.version)
}

/// The allocator job of `deployment`'s experiment: its rewards, the
/// [`Allocator`], the control topic. Its name is [`job_name`]; its state
/// is under `state_dir`.
pub fn job(deployment: &str, allocator: Allocator, reading: &Reading, state_dir: &Path) -> JobSpec {
    // Keyed apart from the experiment's applied routings (keyed by its
    // name): compaction keeps the latest of each.
    let sink = Sink::Kafka {
        topic: weir_core::topics::control(deployment),
        key: vec!["experiment".into(), "allocated".into()],
    };
    let name = job_name(&allocator.routing);
    rewards::job(name, deployment, reading, allocator, sink, state_dir)
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
