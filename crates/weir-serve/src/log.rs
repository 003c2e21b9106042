//! Every request and its response, logged to `weir.log.<deployment>` in
//! Avro (`schemas/inference_log.avsc`, registered under the topic's value
//! subject), keyed by request id.
//!
//! Logging is off the request's path: a request hands its entry to a
//! bounded queue and goes on; a task encodes and produces the entries.
//! Only a full queue (the broker far behind) holds requests back — an
//! entry is never dropped. [`Logger::close`] drains the queue and waits
//! for the broker's acknowledgements, so a clean shutdown loses nothing.

use std::collections::HashMap;
use std::time::Duration;

use apache_avro::types::Value as Avro;
use tokio::sync::mpsc;
use weir_bus::{Bus, SchemaType, TopicSpec};
use weir_onnx::{Output, Values};

use crate::ServeError;

/// The log record's schema.
pub const SCHEMA: &str = include_str!("../../../schemas/inference_log.avsc");

/// A logged tensor: row-major numbers or strings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tensor {
    /// Its shape.
    pub shape: Vec<i64>,
    /// Numbers (NaN where missing).
    pub numbers: Vec<f64>,
    /// Strings.
    pub strings: Vec<String>,
}

impl Tensor {
    /// A column of numbers.
    pub fn numbers(values: Vec<f64>) -> Self {
        Self {
            shape: vec![values.len() as i64],
            numbers: values,
            strings: Vec::new(),
        }
    }

    /// An output as logged.
    pub fn of(output: &Output) -> Self {
        let shape = output.shape.iter().map(|&d| d as i64).collect();
        let (numbers, strings) = match &output.values {
            Values::F32(v) => (v.iter().map(|&x| f64::from(x)).collect(), Vec::new()),
            Values::F64(v) => (v.clone(), Vec::new()),
            Values::I64(v) => (v.iter().map(|&x| x as f64).collect(), Vec::new()),
            Values::Str(v) => (Vec::new(), v.clone()),
        };
        Self {
            shape,
            numbers,
            strings,
        }
    }

    fn avro(&self) -> Avro {
        Avro::Record(vec![
            (
                "shape".into(),
                Avro::Array(self.shape.iter().map(|&d| Avro::Long(d)).collect()),
            ),
            (
                "numbers".into(),
                Avro::Array(self.numbers.iter().map(|&x| Avro::Double(x)).collect()),
            ),
            (
                "strings".into(),
                Avro::Array(
                    self.strings
                        .iter()
                        .map(|s| Avro::String(s.clone()))
                        .collect(),
                ),
            ),
        ])
    }
}

/// How a request arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// OIP v2 over HTTP.
    Http,
    /// `weir.requests.<deployment>`.
    Stream,
    /// `weir score`.
    Batch,
    /// OIP v2 over gRPC.
    Grpc,
}

impl Channel {
    /// Its place in the `Protocol` enum of the schema.
    pub(crate) fn index(self) -> usize {
        match self {
            Self::Http => 0,
            Self::Stream => 1,
            Self::Batch => 2,
            Self::Grpc => 3,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Self::Http => "HTTP",
            Self::Stream => "STREAM",
            Self::Batch => "BATCH",
            Self::Grpc => "GRPC",
        }
    }
}

/// One request and its response.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// The request id.
    pub request_id: String,
    /// The versions that answered.
    pub models: String,
    /// The variant: `default`, the experiment's candidate
    /// (`name@version`), or `shadow:<model>` for a mirror's answer.
    pub variant: String,
    /// The probability the variant was chosen with (1 without an
    /// experiment; a mirror's: its share of the requests).
    pub propensity: f64,
    /// How it arrived.
    pub channel: Channel,
    /// When it arrived, ms since the epoch.
    pub timestamp: i64,
    /// Arrival to response, µs.
    pub latency_us: i64,
    /// Rows.
    pub rows: usize,
    /// The inputs.
    pub inputs: Vec<(String, Tensor)>,
    /// Values looked up.
    pub features: Vec<(String, Tensor)>,
    /// The outputs.
    pub outputs: Vec<(String, Tensor)>,
    /// Why it failed.
    pub error: Option<String>,
}

fn map(tensors: &[(String, Tensor)]) -> Avro {
    Avro::Map(
        tensors
            .iter()
            .map(|(name, tensor)| (name.clone(), tensor.avro()))
            .collect::<HashMap<_, _>>(),
    )
}

impl LogEntry {
    fn avro(&self, deployment: &str) -> Avro {
        Avro::Record(vec![
            ("request_id".into(), Avro::String(self.request_id.clone())),
            ("deployment".into(), Avro::String(deployment.to_string())),
            ("models".into(), Avro::String(self.models.clone())),
            ("variant".into(), Avro::String(self.variant.clone())),
            (
                "protocol".into(),
                Avro::Enum(self.channel.index() as u32, self.channel.symbol().into()),
            ),
            ("timestamp".into(), Avro::TimestampMillis(self.timestamp)),
            ("latency_us".into(), Avro::Long(self.latency_us)),
            ("rows".into(), Avro::Int(self.rows as i32)),
            ("inputs".into(), map(&self.inputs)),
            ("features".into(), map(&self.features)),
            ("outputs".into(), map(&self.outputs)),
            (
                "error".into(),
                match &self.error {
                    Some(error) => Avro::Union(1, Box::new(Avro::String(error.clone()))),
                    None => Avro::Union(0, Box::new(Avro::Null)),
                },
            ),
            ("propensity".into(), Avro::Double(self.propensity)),
        ])
    }
}

/// Queues entries to a deployment's log writer.
#[derive(Debug, Clone)]
pub struct LogSender(mpsc::Sender<LogEntry>);

impl LogSender {
    /// Queues an entry; waits only while the queue is full.
    pub async fn log(&self, entry: LogEntry) {
        if self.0.send(entry).await.is_err() {
            tracing::error!("the request log writer has stopped");
        }
    }
}

/// The log writer of one deployment.
pub struct Logger {
    queue: mpsc::Sender<LogEntry>,
    task: tokio::task::JoinHandle<Result<u64, ServeError>>,
}

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logger").finish_non_exhaustive()
    }
}

/// Creates `topic` (3 partitions) if needed and registers `schema` (Avro)
/// under its value subject.
pub(crate) async fn ensure_avro_topic(
    bus: &Bus,
    topic: &str,
    schema: &str,
) -> Result<(), ServeError> {
    bus.admin()
        .ensure_topic(&TopicSpec::new(topic, 3))
        .await
        .map_err(|e| ServeError::Internal(format!("{topic}: {e}")))?;
    let subject = weir_core::topics::value_subject(topic);
    bus.registry()
        .register(&subject, SchemaType::Avro, schema)
        .await
        .map_err(|e| ServeError::Internal(format!("registering `{subject}`: {e}")))?;
    Ok(())
}

impl Logger {
    /// Creates `weir.log.<deployment>` if needed, registers the schema and
    /// starts the writer.
    pub async fn start(bus: &Bus, deployment: &str) -> Result<Self, ServeError> {
        let topic = weir_core::topics::log(deployment);
        let bus_error = |e: weir_bus::BusError| ServeError::Internal(e.to_string());
        ensure_avro_topic(bus, &topic, SCHEMA).await?;
        let publisher = bus.publisher(&topic).map_err(bus_error)?;
        let (queue, mut entries) = mpsc::channel::<LogEntry>(65_536);
        let deployment = deployment.to_string();
        let task = tokio::spawn(async move {
            let mut written = 0u64;
            let mut pending = Vec::new();
            let mut batch = Vec::with_capacity(1024);
            while entries.recv_many(&mut batch, 1024).await > 0 {
                // A trickle of requests would wake this task once each,
                // taking a core from the requests: gather for a moment.
                if batch.len() < 64 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    while batch.len() < 1024 {
                        match entries.try_recv() {
                            Ok(entry) => batch.push(entry),
                            Err(_) => break,
                        }
                    }
                }
                for entry in batch.drain(..) {
                    let bytes = publisher
                        .codec()
                        .encode_avro(&entry.avro(&deployment))
                        .map_err(|e| ServeError::Internal(format!("encoding a log record: {e}")))?;
                    pending.push(
                        publisher
                            .send(Some(entry.request_id.as_bytes()), &bytes)
                            .await
                            .map_err(bus_error)?,
                    );
                }
                // Acknowledgements are awaited a batch behind: the
                // producer keeps sending meanwhile.
                if pending.len() >= 4096 {
                    for delivery in pending.drain(..) {
                        delivery.await.map_err(bus_error)?;
                        written += 1;
                    }
                }
            }
            for delivery in pending {
                delivery.await.map_err(bus_error)?;
                written += 1;
            }
            publisher
                .flush(Duration::from_secs(30))
                .map_err(bus_error)?;
            Ok(written)
        });
        Ok(Self { queue, task })
    }

    /// Queues an entry; waits only while the queue is full.
    pub async fn log(&self, entry: LogEntry) {
        if self.queue.send(entry).await.is_err() {
            tracing::error!("the request log writer has stopped");
        }
    }

    /// A handle that queues entries from elsewhere (a mirror's task);
    /// [`Logger::close`] waits for the handles to go.
    pub fn sender(&self) -> LogSender {
        LogSender(self.queue.clone())
    }

    /// Writes what is queued and waits for the broker; returns how many
    /// entries were written.
    pub async fn close(self) -> Result<u64, ServeError> {
        drop(self.queue);
        self.task
            .await
            .map_err(|e| ServeError::Internal(e.to_string()))?
    }
}
