//! A running deployment: its graph, its models behind the batcher, its
//! log and metrics — what every protocol calls to answer a request; and,
//! while an experiment runs, its candidates and mirror ([`crate::routing`]).

use std::sync::{Arc, RwLock};
use std::time::Instant;

use weir_bus::Bus;
use weir_features::online::{OnlineStore, OnlineView};
use weir_onnx::{Output, TensorSpec, Values};

use crate::ServeError;
use crate::feedback::{self, Feedback};
use crate::graph::{Column, Frame, Graph};
use crate::log::{Channel, LogEntry, Logger, Tensor};
use crate::metrics::Metrics;
use crate::registry::{Registry, Resolved};
use crate::routing::{self, Routing, Sticky};
use crate::runner::{ModelSet, Runner, Scored};
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
    /// The value of the header a sticky experiment routes by, if the
    /// protocol carried it ([`Deployment::sticky_header`]).
    pub route_key: Option<String>,
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

/// A candidate or a mirror of a running experiment, loaded.
struct Route {
    /// `name@version`.
    model: String,
    runner: Runner,
}

/// A running experiment's routing and its models.
struct Routes {
    routing: Routing,
    shares: Vec<f64>,
    candidates: Vec<Route>,
    mirror: Option<Arc<Route>>,
}

/// A deployment, started.
pub struct Deployment {
    spec: DeploymentSpec,
    graph: Arc<Graph>,
    runner: Runner,
    /// The experiment routing its traffic, if one runs.
    routes: RwLock<Option<Arc<Routes>>>,
    logger: Option<Logger>,
    /// Where feedback on the logged requests goes.
    feedback: Option<feedback::Writer>,
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
        let (logger, feedback) = match bus {
            Some(bus) if spec.logging.enabled => (
                Some(Logger::start(bus, &spec.name).await?),
                Some(feedback::Writer::start(bus, &spec.name).await?),
            ),
            _ => (None, None),
        };
        let runner = Runner::start(models, graph.width(), &spec.batching);
        Ok(Self {
            metrics: Arc::new(Metrics::new(&spec.name)),
            spec,
            graph: Arc::new(graph),
            runner,
            routes: RwLock::new(None),
            logger,
            feedback,
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

    /// Publishes feedback on this deployment's requests to
    /// `weir.feedback.<d>`; returns how many records.
    pub async fn feedback(&self, items: &[Feedback]) -> Result<usize, ServeError> {
        match &self.feedback {
            Some(writer) => writer.write(items).await,
            None => Err(ServeError::Request(format!(
                "`{}` does not log its requests (logging.enabled is false): feedback would have nothing to meet",
                self.spec.name
            ))),
        }
    }

    /// The routing of the experiment running, if any.
    pub fn routing(&self) -> Option<Routing> {
        let routes = self.routes.read().expect("routes lock");
        routes.as_ref().map(|r| r.routing.clone())
    }

    /// The header a sticky experiment routes by, for the protocols to
    /// carry into [`Request::route_key`].
    pub fn sticky_header(&self) -> Option<String> {
        let routes = self.routes.read().expect("routes lock");
        match routes.as_ref().and_then(|r| r.routing.sticky.as_ref()) {
            Some(Sticky::Header(name)) => Some(name.clone()),
            _ => None,
        }
    }

    /// Routes traffic as `routing` says: loads its candidates and mirror
    /// (`name@version`, each with this deployment's batching), checks that
    /// they take this deployment's features, and switches to them; a
    /// stopped routing switches back to the deployment's own models. The
    /// old routing serves until the new one is loaded; on an error it
    /// stays.
    pub async fn route(&self, routing: Routing, registry: &Registry) -> Result<(), ServeError> {
        routing.check()?;
        if routing.stopped {
            *self.routes.write().expect("routes lock") = None;
            return Ok(());
        }
        if self.spec.members().len() > 1 || self.spec.stacker.is_some() {
            return Err(ServeError::Spec(format!(
                "{}: an experiment routes between single models, and this deployment serves an ensemble",
                self.spec.name
            )));
        }
        let features = match self.resolved.lock().expect("resolved lock").first() {
            Some(serving) => serving.info.features.clone(),
            None => {
                return Err(ServeError::Spec(format!(
                    "{}: serves a model file, not a registry reference; experiments route between registered models",
                    self.spec.name
                )));
            }
        };
        let features = &features;
        let load = |model: String| async move {
            let resolved = registry.resolve(&model)?;
            if &resolved.info.features != features {
                return Err(ServeError::Spec(format!(
                    "{model} takes other features than the deployment `{}` ({}): an experiment's models share their input",
                    self.spec.name,
                    features.join(", ")
                )));
            }
            let mut spec = DeploymentSpec::single(&self.spec.name, &model);
            spec.batching = self.spec.batching.clone();
            let models = registry.load(&spec, &[resolved]).await?;
            Ok(Route {
                model,
                runner: Runner::start(models, self.graph.width(), &self.spec.batching),
            })
        };
        let mut candidates = Vec::with_capacity(routing.candidates.len());
        for candidate in &routing.candidates {
            candidates.push(load(candidate.model.clone()).await?);
        }
        let mirror = match &routing.mirror {
            Some(mirror) => Some(Arc::new(load(mirror.model.clone()).await?)),
            None => None,
        };
        let routes = Routes {
            shares: routing.shares(),
            routing,
            candidates,
            mirror,
        };
        *self.routes.write().expect("routes lock") = Some(Arc::new(routes));
        Ok(())
    }

    /// Answers a request, logs it and counts it. While an experiment runs,
    /// a candidate answers, chosen by the routing's weights (at random, or
    /// by a hash of the sticky key), and a mirror may get a copy.
    pub async fn infer(&self, request: Request, channel: Channel) -> Result<Response, ServeError> {
        let arrived = Instant::now();
        let timestamp = weir_core::now_ms();
        let id = request
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let routes = self.routes.read().expect("routes lock").clone();
        let (runner, variant, propensity) = match &routes {
            None => (&self.runner, None, 1.0),
            Some(routes) => {
                let unit = match sticky_key(&routes.routing, &request) {
                    Some(key) => routing::unit_of(key.as_bytes()),
                    None => rand::random::<f64>(),
                };
                let chosen = routing::pick(&routes.shares, unit);
                let route = &routes.candidates[chosen];
                (
                    &route.runner,
                    Some(route.model.clone()),
                    routes.shares[chosen],
                )
            }
        };
        let prepared = self.prepare(&request, timestamp);
        if let (Some(routes), Ok(prepared)) = (&routes, &prepared) {
            self.mirror(routes, &request, prepared, channel, timestamp);
        }
        let outcome = match prepared {
            Ok(prepared) => score(&self.graph, runner, prepared, &request.outputs).await,
            Err(error) => Err(error),
        };
        let latency_us = arrived.elapsed().as_micros() as u64;
        let rows = outcome.as_ref().map_or(0, |a| a.rows);
        self.metrics
            .record(channel, outcome.is_ok(), rows, latency_us);
        if let Some(logger) = &self.logger {
            let versions = match &outcome {
                Ok(answered) => answered.versions.clone(),
                Err(_) => variant.clone().unwrap_or_else(|| self.versions()),
            };
            let entry = log_entry(
                &outcome,
                Logged {
                    request_id: id.clone(),
                    models: versions,
                    variant: variant.unwrap_or_else(|| "default".into()),
                    propensity,
                    channel,
                    timestamp,
                    latency_us: latency_us as i64,
                },
                request.inputs,
            );
            logger.log(entry).await;
        }
        let answered = outcome?;
        Ok(Response {
            id,
            version: answered.version,
            outputs: answered.outputs,
        })
    }

    /// Sends a copy of a share of the requests to the mirror, off the
    /// caller's path: its answer is logged as `shadow:<model>`, never
    /// returned, and its time and failures are not the caller's.
    fn mirror(
        &self,
        routes: &Routes,
        request: &Request,
        prepared: &ModelInput,
        channel: Channel,
        timestamp: i64,
    ) {
        let (Some(mirror), Some(share), Some(logger)) = (
            routes.mirror.clone(),
            routes.routing.mirror.as_ref().map(|m| m.percent / 100.0),
            self.logger.as_ref().map(Logger::sender),
        ) else {
            return;
        };
        if rand::random::<f64>() >= share {
            return;
        }
        let graph = self.graph.clone();
        let prepared = prepared.clone();
        let (inputs, outputs) = (request.inputs.clone(), request.outputs.clone());
        let id = format!(
            "{}:shadow",
            request
                .id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
        );
        tokio::spawn(async move {
            let arrived = Instant::now();
            let outcome = score(&graph, &mirror.runner, prepared, &outputs).await;
            let entry = log_entry(
                &outcome,
                Logged {
                    request_id: id,
                    models: mirror.model.clone(),
                    variant: format!("shadow:{}", mirror.model),
                    propensity: share,
                    channel,
                    timestamp,
                    latency_us: arrived.elapsed().as_micros() as i64,
                },
                inputs,
            );
            logger.log(entry).await;
        });
    }

    /// The request's feature matrix: given whole, or made by the graph
    /// from its columns and the online store.
    fn prepare(&self, request: &Request, now: i64) -> Result<ModelInput, ServeError> {
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
        Ok(ModelInput {
            matrix,
            rows,
            looked_up,
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

/// A request's feature matrix and what was looked up for it.
#[derive(Clone)]
struct ModelInput {
    matrix: Vec<f32>,
    rows: usize,
    looked_up: Vec<(String, Vec<f64>)>,
}

/// Scores `prepared` on `runner`, post-processes and keeps the outputs
/// asked for.
async fn score(
    graph: &Graph,
    runner: &Runner,
    prepared: ModelInput,
    wanted: &[String],
) -> Result<Answered, ServeError> {
    let ModelInput {
        matrix,
        rows,
        looked_up,
    } = prepared;
    let scored: Scored = runner.predict(matrix, rows).await?;
    let labels = if graph.post_processes() {
        scored
            .scores()
            .and_then(|(scores, width)| graph.labels(&scores, width))
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
    if !wanted.is_empty() {
        let mut kept = Vec::with_capacity(wanted.len());
        for name in wanted {
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
            kept.push(output.clone());
        }
        outputs = kept;
    }
    Ok(Answered {
        outputs,
        rows,
        looked_up,
        versions: scored.versions,
        version: scored.version,
    })
}

/// The key a sticky routing hashes: the header's value the protocol
/// carried, or the key column's first value.
fn sticky_key<'a>(routing: &Routing, request: &'a Request) -> Option<std::borrow::Cow<'a, str>> {
    match routing.sticky.as_ref()? {
        Sticky::Header(_) => request.route_key.as_deref().map(Into::into),
        Sticky::Key(column) => {
            let input = request.inputs.iter().find(|i| &i.name == column)?;
            match &input.data {
                Data::Text(values) => values.first().map(|v| v.as_str().into()),
                Data::Num(values) => values.first().map(|v| v.to_string().into()),
            }
        }
    }
}

/// What a log record says besides the request and its answer.
struct Logged {
    request_id: String,
    models: String,
    variant: String,
    propensity: f64,
    channel: Channel,
    timestamp: i64,
    latency_us: i64,
}

/// The log record of a request answered (or not) by `outcome`.
fn log_entry(
    outcome: &Result<Answered, ServeError>,
    logged: Logged,
    inputs: Vec<Input>,
) -> LogEntry {
    let (outputs, features, error) = match outcome {
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
            None,
        ),
        Err(error) => (Vec::new(), Vec::new(), Some(error.to_string())),
    };
    LogEntry {
        request_id: logged.request_id,
        models: logged.models,
        variant: logged.variant,
        propensity: logged.propensity,
        channel: logged.channel,
        timestamp: logged.timestamp,
        latency_us: logged.latency_us,
        rows: outcome.as_ref().map_or(0, |a| a.rows),
        inputs: inputs.into_iter().map(input_tensor).collect(),
        features,
        outputs,
        error,
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
