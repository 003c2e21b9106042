//! What a job is: its spec (what `weir job run` reads: SQL fragments),
//! and the [`Pipeline`] [`plan`] makes of it — the source, the lookup join,
//! the transforms, the windowed aggregation and the sink as physical
//! expressions against resolved schemas (the SQL front end builds
//! pipelines directly) — and what a running job reports ([`Status`]).
//! [`crate::job`] runs pipelines.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};
use weir_bus::Bus;

use crate::DataflowError;
use crate::aggregate::{Emit, WINDOW_START, result_schema};
use crate::decode::arrow_schema;
use crate::input::with_kafka_timestamp;
pub use crate::input::{EventTime, KAFKA_TIMESTAMP, KafkaSource, ParquetSource, Source, Start};
use crate::interval_join::{IntervalJoin, IntervalJoinPlan};
use crate::lookup::{Lookup, LookupPlan};
use crate::operator::OperatorFactory;
use crate::plan::{AggregatePlan, plan_aggregate};
use crate::sink::Sink;
pub use crate::time::Time;
use crate::transform::{Transform, plan_transform};
use crate::window::Window;

/// A grouped, windowed aggregation.
#[derive(Debug, Clone)]
pub struct Aggregation {
    /// SQL condition rows must meet, if any.
    pub filter: Option<String>,
    /// Grouping key columns.
    pub keys: Vec<String>,
    /// The window.
    pub window: Window,
    /// `(output name, SQL aggregate)` pairs.
    pub aggregates: Vec<(String, String)>,
    /// When results are emitted.
    pub emit: Emit,
}

/// A stateless row transform in SQL: a condition and output columns.
#[derive(Debug, Clone, Default)]
pub struct Select {
    /// Rows to keep.
    pub filter: Option<String>,
    /// `(output name, SQL expression)` pairs; `None` keeps every column.
    pub columns: Option<Vec<(String, String)>>,
}

/// A job, as its author writes it.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// Name: the state directory and consumer group are named after it.
    pub name: String,
    /// Input.
    pub source: Source,
    /// A join with a table topic, before anything else.
    pub lookup: Option<Lookup>,
    /// A join with a second stream, after the lookup.
    pub join: Option<IntervalJoin>,
    /// A row transform before the aggregation (or the whole job).
    pub select: Option<Select>,
    /// Custom stateful operators, in order, after the transform.
    pub operators: Vec<Arc<dyn OperatorFactory>>,
    /// The aggregation, if any.
    pub aggregation: Option<Aggregation>,
    /// Output.
    pub sink: Sink,
    /// How often state and offsets are checkpointed.
    pub checkpoint_interval: Duration,
    /// Where workers keep their RocksDB state (`<dir>/<job>/worker-<n>`).
    pub state_dir: PathBuf,
}

/// Composes a job in Rust, stage by stage, in the order rows flow:
///
/// ```no_run
/// # use std::sync::Arc;
/// # use weir_dataflow::job::{JobSpec, KafkaSource, Sink, Source};
/// # use weir_dataflow::operators::top_k::TopK;
/// let job = JobSpec::new(
///     "top_spend",
///     Source::Kafka(KafkaSource::new("transactions", "event_time")),
///     Sink::Kafka { topic: "top-spend".into(), key: vec![] },
///     "state/",
/// )
/// .operator(TopK { key: "user_id".into(), by: "amount".into(), k: 3, window: 60_000, time: "event_time".into() });
/// ```
impl JobSpec {
    /// A job that reads `source` into `sink`, checkpointing every second,
    /// with its state under `state_dir`.
    pub fn new(
        name: impl Into<String>,
        source: Source,
        sink: Sink,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            name: name.into(),
            source,
            lookup: None,
            join: None,
            select: None,
            operators: Vec::new(),
            aggregation: None,
            sink,
            checkpoint_interval: Duration::from_secs(1),
            state_dir: state_dir.into(),
        }
    }

    /// Joins every row with the latest row of its key in a table topic.
    pub fn lookup(mut self, lookup: Lookup) -> Self {
        self.lookup = Some(lookup);
        self
    }

    /// Joins rows with those of a second stream close in event time.
    pub fn join(mut self, join: IntervalJoin) -> Self {
        self.join = Some(join);
        self
    }

    /// Filters and projects rows.
    pub fn select(mut self, select: Select) -> Self {
        self.select = Some(select);
        self
    }

    /// Adds a custom operator after the stages so far.
    pub fn operator(mut self, operator: impl OperatorFactory + 'static) -> Self {
        self.operators.push(Arc::new(operator));
        self
    }

    /// Ends the stages with a windowed aggregation.
    pub fn aggregate(mut self, aggregation: Aggregation) -> Self {
        self.aggregation = Some(aggregation);
        self
    }

    /// Checkpoints every `interval`.
    pub fn checkpoint_every(mut self, interval: Duration) -> Self {
        self.checkpoint_interval = interval;
        self
    }
}

/// A windowed aggregation planned against its input schema.
#[derive(Debug, Clone)]
pub struct WindowedAggregate {
    /// Keys and aggregates.
    pub plan: AggregatePlan,
    /// The window.
    pub window: Window,
    /// Event time column of the aggregation's input.
    pub time_column: usize,
    /// When results are emitted.
    pub emit: Emit,
}

/// A custom operator placed in a job: its factory, the schemas around it
/// and the input columns that route rows.
#[derive(Debug, Clone)]
pub struct PlannedOperator {
    /// Makes the operator of each worker.
    pub factory: Arc<dyn OperatorFactory>,
    /// The schema of its input.
    pub input: SchemaRef,
    /// The schema of what it emits.
    pub output: SchemaRef,
    /// Input columns rows are routed by (empty: not routed).
    pub keys: Vec<usize>,
}

impl PlannedOperator {
    /// Places `factory` after a stage emitting `input`.
    pub fn new(factory: Arc<dyn OperatorFactory>, input: SchemaRef) -> Result<Self, DataflowError> {
        let keys = factory
            .key_columns()
            .iter()
            .map(|name| {
                input.index_of(name).map_err(|_| {
                    DataflowError::Plan(format!(
                        "operator `{}`: the key column `{name}` is not in its input",
                        factory.name()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let output = factory.output_schema(&input)?;
        Ok(Self {
            factory,
            input,
            output,
            keys,
        })
    }
}

/// A job planned down to physical expressions: what [`run`] runs.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Name: the state directory and consumer group are named after it.
    pub name: String,
    /// Input.
    pub source: Source,
    /// The schema of decoded source rows (with `_timestamp` for Kafka time).
    pub source_schema: SchemaRef,
    /// The lookup join.
    pub lookup: Option<LookupPlan>,
    /// The interval join with a second stream.
    pub join: Option<IntervalJoinPlan>,
    /// Row transform before the aggregation.
    pub transform: Option<Transform>,
    /// Custom operators after the transform, in order.
    pub operators: Vec<PlannedOperator>,
    /// The aggregation.
    pub aggregate: Option<WindowedAggregate>,
    /// Transform of the aggregation's results.
    pub post: Option<Transform>,
    /// Output.
    pub sink: Sink,
    /// How often state and offsets are checkpointed.
    pub checkpoint_interval: Duration,
    /// Where workers keep their RocksDB state.
    pub state_dir: PathBuf,
}

impl Pipeline {
    /// Makes the job's topics bounded (stop at the end offsets seen at
    /// start: a backfill or a test) or not; a Parquet source always is.
    pub fn set_bounded(&mut self, bounded: bool) {
        if let Source::Kafka(source) = &mut self.source {
            source.bounded = bounded;
        }
        if let Some(join) = &mut self.join {
            join.spec.right.bounded = bounded;
        }
    }

    /// The Kafka sink's topic with `partitions`, compacted when the job
    /// emits updates (upserts by key: Kafka keeps the latest of each).
    pub fn sink_topic(&self, partitions: i32) -> Option<weir_bus::TopicSpec> {
        let Sink::Kafka { topic, .. } = &self.sink else {
            return None;
        };
        let spec = weir_bus::TopicSpec::new(topic, partitions);
        let updates = self
            .aggregate
            .as_ref()
            .is_some_and(|a| a.emit == crate::aggregate::Emit::OnUpdate);
        Some(if updates {
            spec.config("cleanup.policy", "compact")
        } else {
            spec
        })
    }

    /// The schema of rows entering the aggregation (or the sink).
    pub fn stage_schema(&self) -> SchemaRef {
        if let Some(last) = self.operators.last() {
            return last.output.clone();
        }
        if let Some(transform) = &self.transform {
            return transform.output.clone();
        }
        if let Some(join) = &self.join {
            return join.output.clone();
        }
        match &self.lookup {
            Some(lookup) => lookup.output.clone(),
            None => self.source_schema.clone(),
        }
    }

    /// The schema of the rows the sink receives.
    pub fn output_schema(&self) -> Result<SchemaRef, DataflowError> {
        if let Some(post) = &self.post {
            return Ok(post.output.clone());
        }
        match &self.aggregate {
            Some(aggregate) => result_schema(&aggregate.plan, aggregate.window),
            None => Ok(self.stage_schema()),
        }
    }

    /// The columns that key output records: the sink's, or a windowed
    /// job's grouping keys and `window_start`.
    pub(crate) fn sink_key(&self) -> Result<Vec<usize>, DataflowError> {
        let output = self.output_schema()?;
        let named = match &self.sink {
            Sink::Kafka { key, .. } | Sink::Table { key, .. } => key.clone(),
            _ => Vec::new(),
        };
        let names = if !named.is_empty() {
            named
        } else if let Some(aggregate) = &self.aggregate {
            let input = &aggregate.plan.input;
            let mut names: Vec<String> = aggregate
                .plan
                .keys
                .iter()
                .map(|&i| input.field(i).name().clone())
                .collect();
            names.push(WINDOW_START.to_string());
            names.retain(|n| output.index_of(n).is_ok());
            names
        } else {
            Vec::new()
        };
        names
            .iter()
            .map(|name| {
                output.index_of(name).map_err(|_| {
                    DataflowError::Plan(format!("the key column `{name}` is not in the output"))
                })
            })
            .collect()
    }
}

/// Workers: threads of this process, and the other processes of a timely
/// cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Worker threads per process.
    pub threads: usize,
    /// This process's index in `addresses`.
    pub process: usize,
    /// `host:port` of every process; empty for a single process.
    pub addresses: Vec<String>,
}

impl Cluster {
    /// `threads` workers in this process only.
    pub fn local(threads: usize) -> Self {
        Self {
            threads,
            process: 0,
            addresses: Vec::new(),
        }
    }
}

/// What a running job reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Records read.
    pub records_in: u64,
    /// Result rows written.
    pub records_out: u64,
    /// Records sent to the dead-letter topic (all reasons).
    pub dead_letters: u64,
    /// Of which late.
    pub late: u64,
    /// Smallest watermark of this process's sources (ms).
    pub watermark: Option<i64>,
    /// Last epoch committed on this process's workers.
    pub committed_epoch: Option<u64>,
    /// Per partition: next offset to read and the lag behind its end.
    pub partitions: BTreeMap<i32, PartitionStatus>,
    /// The same for the topic of an interval join (`[join]`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub joined_partitions: BTreeMap<i32, PartitionStatus>,
}

/// One partition's progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PartitionStatus {
    /// Next offset to read.
    pub offset: i64,
    /// Records between it and the end of the partition when last polled.
    pub lag: i64,
}

/// The Arrow schema of a topic's records: `given`, or the topic's
/// registered Avro schema.
pub fn topic_schema(
    bus: &Bus,
    topic: &str,
    given: Option<&SchemaRef>,
) -> Result<SchemaRef, DataflowError> {
    if let Some(schema) = given {
        return Ok(schema.clone());
    }
    let subject = weir_core::topics::value_subject(topic);
    let latest = bus.registry().latest(&subject).ok_or_else(|| {
        DataflowError::Plan(format!(
            "topic `{topic}` has no schema registered under `{subject}`: register one or give the job a schema"
        ))
    })?;
    match &latest.schema.kind {
        weir_bus::registry::SchemaKind::Avro(avro) => arrow_schema(avro.schema),
        weir_bus::registry::SchemaKind::Json(_) => Err(DataflowError::Plan(format!(
            "`{subject}` is a JSON Schema: give the job an Arrow schema"
        ))),
    }
}

/// The schema of a source's decoded rows.
pub fn source_schema(bus: &Bus, source: &Source) -> Result<SchemaRef, DataflowError> {
    let schema = match source {
        Source::Kafka(kafka) => {
            let payload = topic_schema(bus, &kafka.topic, kafka.schema.as_ref())?;
            if kafka.event_time != EventTime::Kafka {
                return Ok(payload);
            }
            with_kafka_timestamp(&payload)
        }
        Source::Parquet(parquet) => {
            let files = parquet.files()?;
            let first = files.first().ok_or_else(|| {
                DataflowError::Plan(format!("no Parquet files in {}", parquet.path.display()))
            })?;
            parquet_schema(first)?
        }
    };
    let time = source.event_time_column();
    schema.index_of(time).map_err(|_| {
        DataflowError::Plan(format!(
            "the event time column `{time}` is not in the source's schema"
        ))
    })?;
    Ok(schema)
}

/// Plans a job: resolves schemas (through the registry) and plans its SQL
/// fragments with DataFusion.
pub async fn plan(spec: JobSpec, bus: &Bus) -> Result<Pipeline, DataflowError> {
    let source_schema = source_schema(bus, &spec.source)?;
    let lookup = match &spec.lookup {
        Some(lookup) => {
            let table = topic_schema(bus, &lookup.topic, lookup.schema.as_ref())?;
            let partitions = bus.admin().partitions(&lookup.topic).await?;
            Some(LookupPlan::new(lookup, &source_schema, table, partitions)?)
        }
        None => None,
    };
    let looked_up = lookup
        .as_ref()
        .map_or(source_schema.clone(), |l| l.output.clone());
    let join = match &spec.join {
        Some(join) => {
            let right = self::source_schema(bus, &Source::Kafka(join.right.clone()))?;
            Some(IntervalJoinPlan::new(
                join.clone(),
                looked_up.clone(),
                spec.source.event_time_column(),
                right,
            )?)
        }
        None => None,
    };
    let joined = join.as_ref().map_or(looked_up, |j| j.output.clone());
    let transform = spec
        .select
        .as_ref()
        .map(|s| plan_transform(joined.clone(), s.filter.as_deref(), s.columns.as_deref()))
        .transpose()?;
    let mut stage = transform.as_ref().map_or(joined, |t| t.output.clone());
    let mut operators = Vec::new();
    for factory in &spec.operators {
        let planned = PlannedOperator::new(factory.clone(), stage)?;
        stage = planned.output.clone();
        operators.push(planned);
    }
    let aggregate = match &spec.aggregation {
        None => None,
        Some(aggregation) => {
            let keys: Vec<&str> = aggregation.keys.iter().map(String::as_str).collect();
            let aggregates: Vec<(&str, &str)> = aggregation
                .aggregates
                .iter()
                .map(|(n, s)| (n.as_str(), s.as_str()))
                .collect();
            let time = spec.source.event_time_column();
            let time_column = stage.index_of(time).map_err(|_| {
                DataflowError::Plan(format!(
                    "the event time column `{time}` must reach the aggregation (keep it in `select`)"
                ))
            })?;
            Some(WindowedAggregate {
                plan: plan_aggregate(
                    stage.clone(),
                    aggregation.filter.as_deref(),
                    &keys,
                    &aggregates,
                )?,
                window: aggregation.window,
                time_column,
                emit: aggregation.emit,
            })
        }
    };
    Ok(Pipeline {
        name: spec.name,
        source: spec.source,
        source_schema,
        lookup,
        join,
        transform,
        operators,
        aggregate,
        post: None,
        sink: spec.sink,
        checkpoint_interval: spec.checkpoint_interval,
        state_dir: spec.state_dir,
    })
}

/// The Arrow schema of a Parquet file.
pub fn parquet_schema(path: &std::path::Path) -> Result<SchemaRef, DataflowError> {
    let file = std::fs::File::open(path)
        .map_err(|e| DataflowError::Plan(format!("{}: {e}", path.display())))?;
    let builder =
        datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| DataflowError::Plan(format!("{}: {e}", path.display())))?;
    Ok(builder.schema().clone())
}
