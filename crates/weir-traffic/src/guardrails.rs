//! An experiment's guardrails: a dataflow job over the deployment's
//! request log that watches each candidate's latency p99 and error rate
//! and rolls the experiment back when one goes over its limit.
//!
//! ```text
//!  weir.log.<d> ─▶ guardian operator                                   ─▶ weir.guardrails.<d>
//!                  per variant: requests, errors, a latency sketch          one row per candidate
//!                  (RocksDB); every `analysis.every`: p99 and error rate    and tick; the first
//!                  since the experiment began, against the limits           breach rolls back
//! ```
//!
//! Every request the experiment served counts (not only those with
//! feedback): the [`Guardian`] keeps, per variant, the requests, the
//! errors and a DDSketch of the latencies (1 % relative error, mergeable),
//! in state checkpointed with the job, and on the analysis's grid of event
//! time publishes each candidate's figures since the experiment began. The
//! first candidate over a limit (with `min_requests` served) carries a
//! rollback decision, once, which [`crate::decide`] carries out as it does
//! the analysis's. The limits are absolute, as Flagger's canary analysis
//! sets them: the default model's own figures are published beside them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use sketches_ddsketch::DDSketch;
use weir_bus::Bus;
use weir_dataflow::DataflowError;
use weir_dataflow::aggregate::event_times;
use weir_dataflow::job::{JobSpec, KafkaSource, Select, Sink, Source};
use weir_dataflow::operator::{Context, Operator, OperatorFactory};
use weir_dataflow::store::time_bytes;
use weir_dataflow::udaf::new_sketch;
use weir_serve::routing::Routing;

use crate::TrafficError;
use crate::analysis::Decision;
use crate::rewards::{self, Running, Started};
use crate::spec::{ExperimentSpec, GuardrailSpec};

/// The guardian's settings.
#[derive(Debug, Clone)]
pub struct Guardian {
    /// The experiment's routing as applied.
    pub routing: Routing,
    /// The limits.
    pub limits: GuardrailSpec,
    /// `analysis.every`, ms.
    pub every: i64,
}

/// One published row: a variant at a tick, since the experiment began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardrailRow {
    /// The experiment.
    pub experiment: String,
    /// Its version as applied.
    pub version: u64,
    /// The tick (event time, ms).
    pub at: i64,
    /// The variant.
    pub variant: String,
    /// Requests it answered.
    pub requests: u64,
    /// Those that failed.
    pub errors: u64,
    /// `errors / requests`.
    pub error_rate: f64,
    /// Latency p99, ms (1 % relative error).
    pub latency_p99_ms: Option<f64>,
    /// The limit it went over, in words.
    #[serde(default)]
    pub breach: Option<String>,
    /// Set on the row that decided the experiment.
    #[serde(default)]
    pub decision: Option<Decision>,
}

/// What the guardian keeps per variant.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Served {
    requests: u64,
    errors: u64,
    /// A DDSketch of the latencies (µs), in its Java encoding; empty
    /// before the first.
    sketch: Vec<u8>,
}

fn execution(what: impl std::fmt::Display) -> DataflowError {
    DataflowError::Execution(format!("guardian: {what}"))
}

impl Served {
    fn sketch(&self) -> Result<DDSketch, DataflowError> {
        if self.sketch.is_empty() {
            return Ok(new_sketch());
        }
        DDSketch::from_java_bytes(&self.sketch).map_err(execution)
    }

    fn merge(&mut self, other: &Served) -> Result<(), DataflowError> {
        let mut sketch = self.sketch()?;
        sketch.merge(&other.sketch()?).map_err(execution)?;
        self.requests += other.requests;
        self.errors += other.errors;
        self.sketch = sketch.to_java_bytes();
        Ok(())
    }
}

const PENDING: &str = "pending";
const SERVED: &str = "served";
const SERVED_KEY: &[u8] = b"served";
const DECIDED: &str = "decided";
const TICK: &[u8] = b"tick";

fn output_schema() -> SchemaRef {
    let field =
        |name: &str, data_type: DataType, nullable: bool| Field::new(name, data_type, nullable);
    Arc::new(Schema::new(vec![
        field("experiment", DataType::Utf8, false),
        field("version", DataType::UInt64, false),
        field("at", DataType::Int64, false),
        field("variant", DataType::Utf8, false),
        field("requests", DataType::UInt64, false),
        field("errors", DataType::UInt64, false),
        field("error_rate", DataType::Float64, false),
        field("latency_p99_ms", DataType::Float64, true),
        field("breach", DataType::Utf8, true),
        field("decision", DataType::Utf8, true),
    ]))
}

fn to_batch(rows: &[GuardrailRow]) -> Result<RecordBatch, DataflowError> {
    let texts = |pick: fn(&GuardrailRow) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(pick).collect::<Vec<_>>()))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.experiment.as_str()),
        )),
        Arc::new(rows.iter().map(|r| r.version).collect::<UInt64Array>()),
        Arc::new(rows.iter().map(|r| r.at).collect::<Int64Array>()),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.variant.as_str()),
        )),
        Arc::new(rows.iter().map(|r| r.requests).collect::<UInt64Array>()),
        Arc::new(rows.iter().map(|r| r.errors).collect::<UInt64Array>()),
        Arc::new(rows.iter().map(|r| r.error_rate).collect::<Float64Array>()),
        Arc::new(
            rows.iter()
                .map(|r| r.latency_p99_ms)
                .collect::<Float64Array>(),
        ),
        texts(|r| r.breach.clone()),
        texts(|r| {
            r.decision.map(|d| match d {
                Decision::Promote => "promote".to_string(),
                Decision::Rollback => "rollback".to_string(),
            })
        }),
    ];
    RecordBatch::try_new(output_schema(), columns).map_err(execution)
}

/// Columns of the log the guardian reads.
const VARIANT: &str = "variant";
const TIME: &str = "timestamp";
const LATENCY: &str = "latency_us";
const ERROR: &str = "error";

impl OperatorFactory for Guardian {
    fn name(&self) -> &str {
        "guardian"
    }

    fn key_columns(&self) -> Vec<String> {
        vec![rewards::DEPLOYMENT.into()]
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, DataflowError> {
        for name in [VARIANT, TIME, LATENCY, ERROR, rewards::DEPLOYMENT] {
            input.index_of(name).map_err(|_| {
                DataflowError::Plan(format!("guardian: `{name}` is not a column of its input"))
            })?;
        }
        Ok(output_schema())
    }

    fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>, DataflowError> {
        self.output_schema(input)?;
        let column = |name| input.index_of(name).expect("checked");
        Ok(Box::new(GuardianOperator {
            settings: self.clone(),
            variant: column(VARIANT),
            time: column(TIME),
            latency: column(LATENCY),
            error: column(ERROR),
        }))
    }
}

struct GuardianOperator {
    settings: Guardian,
    variant: usize,
    time: usize,
    latency: usize,
    error: usize,
}

impl Operator for GuardianOperator {
    fn process(&mut self, batch: &RecordBatch, ctx: &mut Context<'_>) -> Result<(), DataflowError> {
        let text = |column: usize| -> Result<ArrayRef, DataflowError> {
            cast(batch.column(column), &DataType::Utf8).map_err(execution)
        };
        let variants = text(self.variant)?;
        let variants = variants
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("utf8");
        let errors = text(self.error)?;
        let latencies = cast(batch.column(self.latency), &DataType::Float64).map_err(execution)?;
        let latencies = latencies
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("float64");
        let routing = &self.settings.routing;
        // Gathered per tick and variant first: one state update each.
        let mut gathered: BTreeMap<(i64, String), (Served, DDSketch)> = BTreeMap::new();
        for (row, time) in event_times(batch.column(self.time))?
            .into_iter()
            .enumerate()
        {
            let variant = variants.value(row);
            // The experiment's own traffic: served since it was applied,
            // by a candidate (a mirror's copies are not).
            if time < routing.at || !routing.candidates.iter().any(|c| c.model == variant) {
                continue;
            }
            let tick = rewards::next_tick(time, self.settings.every);
            let (served, sketch) = gathered
                .entry((tick, variant.to_string()))
                .or_insert_with(|| (Served::default(), new_sketch()));
            served.requests += 1;
            served.errors += u64::from(!errors.is_null(row));
            if !latencies.is_null(row) {
                sketch.add(latencies.value(row));
            }
        }
        for ((tick, variant), (mut served, sketch)) in gathered {
            served.sketch = sketch.to_java_bytes();
            let key = time_bytes(tick);
            let mut pending = ctx.map::<String, Served>(PENDING);
            let mut sum = pending.get(&key, &variant)?.unwrap_or_default();
            sum.merge(&served)?;
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
        let arrived = ctx.map::<String, Served>(PENDING).entries(&key)?;
        ctx.map::<String, Served>(PENDING).clear(&key)?;
        let mut served = ctx.map::<String, Served>(SERVED);
        for (variant, figures) in arrived {
            let mut sum = served.get(SERVED_KEY, &variant)?.unwrap_or_default();
            sum.merge(&figures)?;
            served.insert(SERVED_KEY, &variant, &sum)?;
        }
        let routing = &self.settings.routing;
        let limits = &self.settings.limits;
        let mut rows = Vec::with_capacity(routing.candidates.len());
        for candidate in &routing.candidates {
            let figures = served
                .get(SERVED_KEY, &candidate.model)?
                .unwrap_or_default();
            let latency_p99_ms = figures
                .sketch()?
                .quantile(0.99)
                .map_err(execution)?
                .map(|us| us / 1000.0);
            let error_rate = if figures.requests == 0 {
                0.0
            } else {
                figures.errors as f64 / figures.requests as f64
            };
            let breach = (candidate.model != routing.default
                && figures.requests >= limits.min_requests)
                .then(|| limits.breach(latency_p99_ms, error_rate))
                .flatten();
            rows.push(GuardrailRow {
                experiment: routing.experiment.clone(),
                version: routing.version,
                at: tick,
                variant: candidate.model.clone(),
                requests: figures.requests,
                errors: figures.errors,
                error_rate,
                latency_p99_ms,
                breach,
                decision: None,
            });
        }
        let mut decided = ctx.value::<bool>(DECIDED);
        if decided.get(DECIDED.as_bytes())? != Some(true)
            && let Some(row) = rows.iter_mut().find(|r| r.breach.is_some())
        {
            row.decision = Some(Decision::Rollback);
            decided.set(DECIDED.as_bytes(), &true)?;
        }
        ctx.emit(to_batch(&rows)?);
        Ok(())
    }
}

/// The guardrail job's name: `guardrails-<experiment>-v<version>`.
pub fn job_name(applied: &Routing) -> String {
    format!("guardrails-{}-v{}", applied.experiment, applied.version)
}

/// The guardrail job of `deployment`'s experiment: its log, the
/// [`Guardian`], `weir.guardrails.<deployment>`.
pub fn job(
    deployment: &str,
    guardian: Guardian,
    lateness: Duration,
    bounded: bool,
    state_dir: &Path,
) -> JobSpec {
    let source = KafkaSource {
        lateness,
        // A quiet partition must not hold the figures back for long.
        idle_timeout: Duration::from_secs(1),
        bounded,
        ..KafkaSource::new(weir_core::topics::log(deployment), TIME)
    };
    let sink = Sink::Kafka {
        topic: weir_core::topics::guardrails(deployment),
        key: vec!["experiment".into(), "variant".into()],
    };
    let name = job_name(&guardian.routing);
    JobSpec::new(name, Source::Kafka(source), sink, state_dir)
        .select(Select {
            filter: None,
            columns: Some(
                [VARIANT, TIME, LATENCY, ERROR]
                    .iter()
                    .map(|c| (c.to_string(), format!("\"{c}\"")))
                    .chain([(
                        rewards::DEPLOYMENT.to_string(),
                        format!("'{}'", deployment.replace('\'', "''")),
                    )])
                    .collect(),
            ),
        })
        .operator(guardian)
}

/// Starts the guardrail job of the experiment `spec` describes, which must
/// be running and have `guardrails:`.
pub async fn start(
    bus: &Bus,
    spec: &ExperimentSpec,
    running: Running,
) -> Result<Started, TrafficError> {
    let Some(limits) = spec.guardrails.clone() else {
        return Err(TrafficError::Refused(format!(
            "experiment `{}` has no guardrails",
            spec.name
        )));
    };
    let (routing, next) = rewards::applied(bus, spec).await?;
    let version = routing.version;
    let spec_error = |message| TrafficError::spec(&spec.name, message);
    let every = spec.analysis().period().map_err(spec_error)?;
    let (_, lateness) = spec.reward().durations().map_err(spec_error)?;
    let guardian = Guardian {
        routing,
        limits,
        every: i64::try_from(every.as_millis()).unwrap_or(i64::MAX),
    };
    let job = job(
        &spec.deployment,
        guardian,
        lateness,
        running.bounded,
        &running.state_dir,
    );
    rewards::start(bus, spec, job, running, (version, next)).await
}

impl rewards::PublishedRow for GuardrailRow {
    const WHAT: &'static str = "a guardrail row";

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
) -> Result<Vec<GuardrailRow>, TrafficError> {
    let topic = weir_core::topics::guardrails(deployment);
    rewards::read_rows(bus, &topic, experiment, version).await
}
