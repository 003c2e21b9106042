//! A running deployment: its graph, its models behind the batcher, its
//! log and metrics — what every protocol calls to answer a request.

use std::sync::Arc;
use std::time::Instant;

use weir_bus::Bus;
use weir_features::online::{OnlineStore, OnlineView};
use weir_onnx::{Output, TensorSpec, Values};

use crate::ServeError;
use crate::graph::{Column, Frame, Graph};
use crate::log::{Channel, LogEntry, Logger, Tensor};
use crate::metrics::Metrics;
use crate::registry::{Registry, Resolved};
use crate::runner::{ModelSet, Runner};
use crate::spec::DeploymentSpec;

/// The values of one request input.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// Numbers.
    Num(Vec<f64>),
    /// Strings.
    Text(Vec<String>),
}

impl Data {
    /// How many values.
    pub fn len(&self) -> usize {
        match self {
            Self::Num(v) => v.len(),
            Self::Text(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One request input (an OIP input tensor).
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    /// Its name: the model's input (a whole feature matrix), or a column.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub data: Data,
}

/// An inference request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    /// Its id (one is made up when absent).
    pub id: Option<String>,
    /// The inputs.
    pub inputs: Vec<Input>,
    /// The outputs wanted (all when empty).
    pub outputs: Vec<String>,
}

/// Its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The request id.
    pub id: String,
    /// The version that answered (the first member's).
    pub version: u64,
    /// The outputs.
    pub outputs: Vec<Output>,
}

/// A tensor's name, OIP datatype and shape (`-1`: any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    /// Name.
    pub name: String,
    /// `FP32`, `FP64`, `INT64`, `BYTES`.
    pub datatype: String,
    /// Shape.
    pub shape: Vec<i64>,
}

/// What the deployment takes and gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Inputs.
    pub inputs: Vec<TensorMeta>,
    /// Outputs.
    pub outputs: Vec<TensorMeta>,
}

/// What the models' input columns and classes are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelColumns {
    /// The input's columns, in order.
    pub features: Vec<String>,
    /// A classifier's classes, in the order of its scores.
    pub classes: Vec<String>,
    /// `classification` or `regression`.
    pub task: String,
}

/// The output the post-processing adds.
pub const PREDICTION: &str = "prediction";

/// What answered a request, and with what.
struct Answered {
    outputs: Vec<Output>,
    rows: usize,
    /// Values looked up, by `view__feature`.
    looked_up: Vec<(String, Vec<f64>)>,
    /// `name@3`, `a@1+b@2`, …
    versions: String,
    /// The version number the OIP model reports.
    version: u64,
}

/// A deployment, started.
pub struct Deployment {
    spec: DeploymentSpec,
    graph: Graph,
    runner: Runner,
    logger: Option<Logger>,
    metrics: Arc<Metrics>,
    /// The models' input.
    input: TensorSpec,
    /// The models' outputs.
    outputs: Vec<TensorSpec>,
    /// What each member points at now.
    resolved: std::sync::Mutex<Vec<Resolved>>,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("name", &self.spec.name)
            .finish_non_exhaustive()
    }
}

/// ONNX element types as OIP names them.
pub fn datatype(onnx: &str) -> &'static str {
    match onnx {
        "float32" => "FP32",
        "float64" => "FP64",
        "int64" => "INT64",
        "int32" => "INT32",
        "bool" => "BOOL",
        "string" => "BYTES",
        _ => "FP32",
    }
}

impl Deployment {
    /// Resolves and loads the spec's models, plans its graph over `views`
    /// (in `store`), and starts logging to `bus` if the spec logs.
    pub async fn start(
        spec: DeploymentSpec,
        registry: &Registry,
        views: &[OnlineView],
        store: Option<Arc<OnlineStore>>,
        bus: Option<&Bus>,
    ) -> Result<Self, ServeError> {
        let resolved = registry.resolve_all(&spec)?;
        let first = &resolved[0].info;
        let members = spec.members().len();
        for other in &resolved[1..members] {
            if other.info.features != first.features {
                return Err(ServeError::Spec(format!(
                    "models: {}@{} takes other features than {}@{}: an ensemble's members share their input",
                    other.name, other.version, resolved[0].name, resolved[0].version
                )));
            }
        }
        let models = registry.load(&spec, &resolved).await?;
        let (features, classes, task) = (
            first.features.clone(),
            first.classes.clone(),
            first.task.clone(),
        );
        let mut deployment = Self::from_models(
            spec,
            models,
            ModelColumns {
                features,
                classes,
                task,
            },
            views,
            store,
            bus,
        )
        .await?;
        deployment.resolved = std::sync::Mutex::new(resolved);
        Ok(deployment)
    }

    /// A deployment of models already loaded (an ONNX file, a benchmark):
    /// it follows no registry reference.
    pub async fn from_models(
        spec: DeploymentSpec,
        models: ModelSet,
        columns: ModelColumns,
        views: &[OnlineView],
        store: Option<Arc<OnlineStore>>,
        bus: Option<&Bus>,
    ) -> Result<Self, ServeError> {
        let graph = Graph::new(&spec, &columns.features, &columns.classes, views, store)?;
        let signature = models.members[0].signature().clone();
        let input = signature
            .inputs
            .first()
            .cloned()
            .ok_or_else(|| ServeError::Model("the model has no input".into()))?;
        let outputs = if let Some(stacker) = &models.stacker {
            stacker.signature().outputs.clone()
        } else if models.members.len() == 1 {
            signature.outputs.clone()
        } else {
            let scores = if columns.task == "regression" {
                "variable"
            } else {
                "probabilities"
            };
            vec![TensorSpec {
                name: scores.into(),
                dtype: "float64".into(),
                shape: vec![-1, -1],
            }]
        };
        let logger = match bus {
            Some(bus) if spec.logging.enabled => Some(Logger::start(bus, &spec.name).await?),
            _ => None,
        };
        let runner = Runner::start(models, graph.width(), &spec.batching);
        Ok(Self {
            metrics: Arc::new(Metrics::new(&spec.name)),
            spec,
            graph,
            runner,
            logger,
            input,
            outputs,
            resolved: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Its spec.
    pub fn spec(&self) -> &DeploymentSpec {
        &self.spec
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Its metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Its metrics and its batcher's, in Prometheus' text format.
    pub fn render_metrics(&self) -> String {
        let mut text = self.metrics.render();
        text.push_str(&self.runner.batch_counts().render(self.name()));
        text
    }

    /// The version answering now (the first member's).
    pub fn version(&self) -> u64 {
        self.runner.models().version()
    }

    /// The versions answering now: `name@3`, or `a@1+b@2`.
    pub fn versions(&self) -> String {
        self.runner.models().versions()
    }

    /// Each model's `name@version` serving now.
    pub fn references(&self) -> Vec<String> {
        self.runner.models().references()
    }

    /// Where each model feature comes from.
    pub fn plan(&self) -> std::collections::BTreeMap<String, String> {
        crate::graph::describe(&self.graph)
    }

    /// What it takes and gives.
    pub fn metadata(&self) -> Metadata {
        let inputs = if self.graph.is_plain() {
            vec![TensorMeta {
                name: self.input.name.clone(),
                datatype: datatype(&self.input.dtype).into(),
                shape: vec![-1, self.graph.width() as i64],
            }]
        } else {
            self.graph
                .inputs()
                .into_iter()
                .map(|(name, text)| TensorMeta {
                    name,
                    datatype: if text { "BYTES" } else { "FP64" }.into(),
                    shape: vec![-1],
                })
                .collect()
        };
        let mut outputs: Vec<TensorMeta> = self
            .outputs
            .iter()
            .map(|o| TensorMeta {
                name: o.name.clone(),
                datatype: datatype(&o.dtype).into(),
                shape: o.shape.clone(),
            })
            .collect();
        if self.graph.post_processes() {
            outputs.push(TensorMeta {
                name: PREDICTION.into(),
                datatype: "BYTES".into(),
                shape: vec![-1],
            });
        }
        Metadata { inputs, outputs }
    }

    /// Moves to the versions the spec's references point at now, if any
    /// moved: the new models load while the old ones serve. Returns the
    /// new versions.
    pub async fn refresh(&self, registry: &Registry) -> Result<Option<String>, ServeError> {
        if self.resolved.lock().expect("resolved lock").is_empty() {
            return Ok(None); // models given, not references
        }
        let now = registry.resolve_all(&self.spec)?;
        let moved = {
            let resolved = self.resolved.lock().expect("resolved lock");
            now.iter()
                .zip(resolved.iter())
                .any(|(a, b)| a.version != b.version || a.name != b.name)
        };
        if !moved {
            return Ok(None);
        }
        if now[0].info.features
            != self.resolved.lock().expect("resolved lock")[0]
                .info
                .features
        {
            return Err(ServeError::Model(format!(
                "{}@{} takes other features than the version serving: deploy it as a new deployment",
                now[0].name, now[0].version
            )));
        }
        let models = registry.load(&self.spec, &now).await?;
        let versions = models.versions();
        self.runner.swap(models);
        *self.resolved.lock().expect("resolved lock") = now;
        Ok(Some(versions))
    }

    /// Answers a request, logs it and counts it.
    pub async fn infer(&self, request: Request, channel: Channel) -> Result<Response, ServeError> {
        let arrived = Instant::now();
        let timestamp = weir_core::now_ms();
        let id = request
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let outcome = self.answer(&request, timestamp).await;
        let latency_us = arrived.elapsed().as_micros() as u64;
        let rows = outcome.as_ref().map_or(0, |a| a.rows);
        self.metrics
            .record(channel, outcome.is_ok(), rows, latency_us);
        if let Some(logger) = &self.logger {
            let (outputs, features, versions, error) = match &outcome {
                Ok(answered) => (
                    answered
                        .outputs
                        .iter()
                        .map(|o| (o.name.clone(), Tensor::of(o)))
                        .collect(),
                    answered
                        .looked_up
                        .iter()
                        .map(|(n, v)| (n.clone(), Tensor::numbers(v.clone())))
                        .collect(),
                    answered.versions.clone(),
                    None,
                ),
                Err(error) => (
                    Vec::new(),
                    Vec::new(),
                    self.versions(),
                    Some(error.to_string()),
                ),
            };
            logger
                .log(LogEntry {
                    request_id: id.clone(),
                    models: versions,
                    variant: "default".into(),
                    channel,
                    timestamp,
                    latency_us: latency_us as i64,
                    rows,
                    inputs: request.inputs.into_iter().map(input_tensor).collect(),
                    features,
                    outputs,
                    error,
                })
                .await;
        }
        let answered = outcome?;
        Ok(Response {
            id,
            version: answered.version,
            outputs: answered.outputs,
        })
    }

    async fn answer(&self, request: &Request, now: i64) -> Result<Answered, ServeError> {
        let (matrix, rows, looked_up) = match request.inputs.as_slice() {
            // The feature matrix: under the model's input name, or as the
            // one 2-D input (clients name it `input-0` and the like).
            [only]
                if only.name == self.input.name
                    || (only.shape.len() == 2
                        && self.graph.width() > 1
                        && self.graph.is_plain()) =>
            {
                let width = self.graph.width();
                let Data::Num(values) = &only.data else {
                    return Err(ServeError::Request(format!(
                        "input `{}` must be numbers",
                        only.name
                    )));
                };
                let rows = only.shape.first().copied().unwrap_or(0);
                if only.shape.len() != 2 || only.shape[1] != width || values.len() != rows * width {
                    return Err(ServeError::Request(format!(
                        "input `{}` must be [rows, {width}], got shape {:?} with {} values",
                        only.name,
                        only.shape,
                        values.len()
                    )));
                }
                let matrix = values.iter().map(|&x| x as f32).collect();
                (matrix, rows, Vec::new())
            }
            inputs => {
                let mut frame = Frame::default();
                for input in inputs {
                    let rows = input.shape.first().copied().unwrap_or(0);
                    if input.shape.iter().skip(1).any(|&d| d != 1) || input.data.len() != rows {
                        return Err(ServeError::Request(format!(
                            "input `{}` must be a column, shape [rows] or [rows, 1]; got {:?} (a feature matrix goes in `{}`)",
                            input.name, input.shape, self.input.name
                        )));
                    }
                    let column = match &input.data {
                        Data::Num(v) => Column::Num(v.clone()),
                        Data::Text(v) => Column::Text(v.iter().cloned().map(Some).collect()),
                    };
                    frame.push(input.name.clone(), column)?;
                }
                if frame.columns.is_empty() {
                    return Err(ServeError::Request("the request has no inputs".into()));
                }
                let prepared = self.graph.prepare(&frame, now)?;
                (prepared.matrix, prepared.rows, prepared.looked_up)
            }
        };
        let scored = self.runner.predict(matrix, rows).await?;
        let labels = if self.graph.post_processes() {
            scored
                .scores()
                .and_then(|(scores, width)| self.graph.labels(&scores, width))
        } else {
            None
        };
        let mut outputs = scored.outputs;
        if let Some(labels) = labels {
            outputs.push(Output {
                name: PREDICTION.into(),
                shape: vec![rows],
                values: Values::Str(labels),
            });
        }
        if !request.outputs.is_empty() {
            let mut wanted = Vec::with_capacity(request.outputs.len());
            for name in &request.outputs {
                let output = outputs.iter().find(|o| &o.name == name).ok_or_else(|| {
                    ServeError::Request(format!(
                        "no output `{name}`; the deployment gives {}",
                        outputs
                            .iter()
                            .map(|o| o.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
                wanted.push(output.clone());
            }
            outputs = wanted;
        }
        Ok(Answered {
            outputs,
            rows,
            looked_up,
            versions: scored.versions,
            version: scored.version,
        })
    }

    /// Stops: the runners finish, the log is written out. Returns how many
    /// log records were written.
    pub async fn close(self) -> Result<u64, ServeError> {
        drop(self.runner);
        match self.logger {
            Some(logger) => logger.close().await,
            None => Ok(0),
        }
    }
}

/// An input as logged (the request is answered: its data moves).
fn input_tensor(input: Input) -> (String, Tensor) {
    let shape = input.shape.iter().map(|&d| d as i64).collect();
    let tensor = match input.data {
        Data::Num(numbers) => Tensor {
            shape,
            numbers,
            strings: Vec::new(),
        },
        Data::Text(strings) => Tensor {
            shape,
            numbers: Vec::new(),
            strings,
        },
    };
    (input.name, tensor)
}
