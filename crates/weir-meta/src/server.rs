//! MLflow's REST API over axum: tracking (experiments, runs, metrics,
//! params, tags, inputs), the model registry (models, versions, stages,
//! aliases) and the artifact proxy (`mlflow-artifacts`), so the official
//! `mlflow` client works against Weir unchanged.
//!
//! Shapes follow `mlflow/protos/service.proto` and `model_registry.proto`
//! as MLflow's server writes them (snake_case names, int64 as numbers);
//! every route is served under `/api/2.0` and `/ajax-api/2.0`; a GET
//! carries its fields as query parameters, other methods as a JSON body.
//! Errors are `{"error_code", "message"}` with MLflow's HTTP status.

use std::collections::BTreeMap;

use axum::body::{Body as HttpBody, Bytes};
use axum::extract::{FromRequest, Path, Request, State as AxumState};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use serde_json::{Value as Json, json};
use weir_core::now_ms;

use crate::event::{Event, KeyValue, Metric, float};
use crate::mlflow_json::{experiment_json, model_json, run_info_json, run_json, version_json};
use crate::search::{
    AttributeType, Field, FieldKind, FieldValue, Filter, OrderBy, Searchable, page,
};
use crate::state::{self, DEFAULT_EXPERIMENT, Experiment, Model, Run, State, Version};
use crate::{ErrorCode, MetaError, Tracker};

/// The most results one search page may ask for.
const MAX_RESULTS_LIMIT: usize = 50_000;
/// Page size when a search does not say.
const DEFAULT_MAX_RESULTS: usize = 1000;
/// `log-batch` limits, as MLflow enforces them.
const BATCH_ITEMS: usize = 1000;
const BATCH_METRICS: usize = 1000;
const BATCH_PARAMS: usize = 100;
const BATCH_TAGS: usize = 100;

/// An error as MLflow answers it.
#[derive(Debug)]
pub struct ApiError(MetaError);

impl From<MetaError> for ApiError {
    fn from(error: MetaError) -> Self {
        Self(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({"error_code": self.0.code.as_str(), "message": self.0.message});
        (status, axum::Json(body)).into_response()
    }
}

type Answer = Result<axum::Json<Json>, ApiError>;

/// A request's fields: the query string of a GET, the JSON body otherwise.
#[derive(Debug, Default)]
pub struct Fields(serde_json::Map<String, Json>);

impl<S: Send + Sync> FromRequest<S> for Fields {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if request.method() == Method::GET {
            let mut fields = serde_json::Map::new();
            let query = request.uri().query().unwrap_or("");
            for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
                let value = Json::String(value.into_owned());
                match fields.get_mut(key.as_ref()) {
                    Some(Json::Array(values)) => values.push(value),
                    Some(first) => *first = Json::Array(vec![first.take(), value]),
                    None => {
                        fields.insert(key.into_owned(), value);
                    }
                }
            }
            return Ok(Self(fields));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|e| MetaError::new(ErrorCode::BadRequest, format!("reading the body: {e}")))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        match serde_json::from_slice(&bytes) {
            Ok(Json::Object(fields)) => Ok(Self(fields)),
            Ok(_) => Err(MetaError::invalid("The request body must be a JSON object").into()),
            Err(e) => Err(MetaError::new(
                ErrorCode::BadRequest,
                format!("Malformed request body: {e}"),
            )
            .into()),
        }
    }
}

fn missing(name: &str) -> MetaError {
    MetaError::invalid(format!(
        "Missing value for required parameter '{name}'. See the API docs for more information about request parameters."
    ))
}

fn text_of(value: &Json) -> Option<String> {
    match value {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Fields {
    fn text(&self, name: &str) -> Option<String> {
        self.0.get(name).and_then(text_of)
    }

    fn required(&self, name: &str) -> Result<String, MetaError> {
        self.text(name)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| missing(name))
    }

    fn int(&self, name: &str) -> Result<Option<i64>, MetaError> {
        match self.0.get(name) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_f64().map(|f| f as i64))
                .map(Some)
                .ok_or_else(|| MetaError::invalid(format!("'{name}' must be an integer, got {n}"))),
            Some(Json::String(s)) => s
                .parse()
                .map(Some)
                .map_err(|_| MetaError::invalid(format!("'{name}' must be an integer, got '{s}'"))),
            Some(other) => Err(MetaError::invalid(format!(
                "'{name}' must be an integer, got {other}"
            ))),
        }
    }

    fn flag(&self, name: &str) -> bool {
        match self.0.get(name) {
            Some(Json::Bool(b)) => *b,
            Some(Json::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        }
    }

    fn list(&self, name: &str) -> Vec<Json> {
        match self.0.get(name) {
            Some(Json::Array(values)) => values.clone(),
            None | Some(Json::Null) => Vec::new(),
            Some(one) => vec![one.clone()],
        }
    }

    fn texts(&self, name: &str) -> Vec<String> {
        self.list(name).iter().filter_map(text_of).collect()
    }

    fn max_results(&self, default: usize) -> Result<usize, MetaError> {
        match self.int("max_results")? {
            None => Ok(default),
            Some(n) if n <= 0 => Err(MetaError::invalid(format!(
                "Invalid value {n} for parameter 'max_results' supplied. It must be a positive integer"
            ))),
            Some(n) if n as usize > MAX_RESULTS_LIMIT => Err(MetaError::invalid(format!(
                "Invalid value {n} for parameter 'max_results' supplied. It must be at most {MAX_RESULTS_LIMIT}"
            ))),
            Some(n) => Ok(n as usize),
        }
    }
}

fn key_values(values: &[Json], what: &str) -> Result<Vec<KeyValue>, MetaError> {
    values
        .iter()
        .map(|v| {
            let key = v
                .get("key")
                .and_then(text_of)
                .ok_or_else(|| missing(&format!("{what}.key")))?;
            let value = v.get("value").and_then(text_of).unwrap_or_default();
            Ok(KeyValue { key, value })
        })
        .collect()
}

fn metric_of(value: &Json) -> Result<Metric, MetaError> {
    let key = value
        .get("key")
        .and_then(text_of)
        .ok_or_else(|| missing("metrics.key"))?;
    let raw = value.get("value").ok_or_else(|| missing("value"))?;
    let number = match raw {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => float::parse(s),
        _ => None,
    }
    .ok_or_else(|| {
        MetaError::invalid(format!(
            "Got invalid value {raw} for metric '{key}': metric values must be numbers"
        ))
    })?;
    let int = |name: &str| -> Result<Option<i64>, MetaError> {
        match value.get(name) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Number(n)) => Ok(n.as_i64()),
            Some(Json::String(s)) => s.parse().map(Some).map_err(|_| {
                MetaError::invalid(format!(
                    "metric '{key}': {name} must be an integer, got '{s}'"
                ))
            }),
            Some(other) => Err(MetaError::invalid(format!(
                "metric '{key}': {name} must be an integer, got {other}"
            ))),
        }
    };
    Ok(Metric {
        timestamp: int("timestamp")?.ok_or_else(|| missing("timestamp"))?,
        step: int("step")?.unwrap_or(0),
        key,
        value: number,
    })
}

fn ok(body: Json) -> Answer {
    Ok(axum::Json(body))
}

/// A page of search results under `key`, with the next page's token if
/// there is one.
fn listed(key: &str, items: Vec<Json>, next: Option<String>) -> Answer {
    let mut body = json!({ key: items });
    if let Some(next) = next {
        body["next_page_token"] = json!(next);
    }
    ok(body)
}

/// Makes the change `event` describes and answers MLflow's empty success.
async fn done(tracker: &Tracker, event: Event) -> Answer {
    tracker.append(event).await?;
    ok(json!({}))
}

/// Every route; `tracker` behind them.
pub fn router(tracker: Tracker) -> axum::Router {
    let mut api = axum::Router::new();
    for (path, route) in mlflow_routes() {
        api = api.route(&format!("/mlflow/{path}"), route);
    }
    let api = api.layer(axum::middleware::from_fn(read_body_first));
    let artifacts = axum::Router::new()
        .route("/mlflow-artifacts/artifacts", get(list_artifacts))
        .route(
            "/mlflow-artifacts/artifacts/{*path}",
            get(download_artifact).put(upload_artifact),
        );
    let api = api.merge(artifacts);
    let routes = axum::Router::new()
        .route("/health", get(|| async { "OK" }))
        .route("/version", get(|| async { env!("CARGO_PKG_VERSION") }))
        .route(
            "/api/3.0/mlflow/server-info",
            get(|| async {
                axum::Json(json!({
                    "store_type": "Weir",
                    "workspaces_enabled": false,
                    "multipart_uploads_enabled": false,
                    "multipart_downloads_enabled": false,
                }))
            }),
        )
        .route("/api/2.0/weir/lineage", get(lineage))
        .merge(crate::pages::routes())
        .nest("/api/2.0", api.clone())
        .nest("/ajax-api/2.0", api);
    // As MLflow answers them, with its error shape.
    weir_web::fallbacks(routes, |refused| {
        let code = if refused.status == StatusCode::NOT_FOUND {
            ErrorCode::ResourceDoesNotExist
        } else {
            ErrorCode::BadRequest
        };
        let body = json!({"error_code": code.as_str(), "message": refused.message()});
        (refused.status, axum::Json(body)).into_response()
    })
    .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
    .with_state(tracker)
}

/// The largest request body read (artifacts stream, and have no limit).
const BODY_LIMIT: usize = 64 << 20;

/// Reads the whole request body before the route sees it, so that a route
/// that answers without reading it (an error, a method not allowed, a GET
/// with a body) still leaves the connection open. hyper closes a
/// keep-alive connection whose request body was left unread, and a client
/// that sends its next request on the connection before it sees the close
/// gets "connection closed without response". MLflow's bodies are small
/// JSON.
async fn read_body_first(request: Request, next: axum::middleware::Next) -> Response {
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, HttpBody::from(bytes)))
                .await
        }
        Err(e) => ApiError(MetaError::new(
            ErrorCode::BadRequest,
            format!("reading the body: {e}"),
        ))
        .into_response(),
    }
}

/// Reads and drops what is left of a body a route answers without: see
/// [`read_body_first`].
async fn drain(body: HttpBody) {
    let _ = axum::body::to_bytes(body, BODY_LIMIT).await;
}

type Route = MethodRouter<Tracker>;

fn read(handler: fn(&State, Fields) -> Answer) -> Route {
    let serve = move |AxumState(tracker): AxumState<Tracker>, fields: Fields| async move {
        tracker.read(|state| handler(state, fields))
    };
    get(serve).post(serve)
}

fn mlflow_routes() -> Vec<(&'static str, Route)> {
    use axum::routing::{delete, patch, post};
    vec![
        ("experiments/create", post(create_experiment)),
        ("experiments/get", read(get_experiment)),
        ("experiments/get-by-name", read(get_experiment_by_name)),
        ("experiments/search", read(search_experiments)),
        ("experiments/delete", post(delete_experiment)),
        ("experiments/restore", post(restore_experiment)),
        ("experiments/update", post(rename_experiment)),
        ("experiments/set-experiment-tag", post(tag_experiment)),
        ("runs/create", post(create_run)),
        ("runs/update", post(update_run)),
        ("runs/get", read(get_run)),
        ("runs/search", read(search_runs)),
        ("runs/delete", post(delete_run)),
        ("runs/restore", post(restore_run)),
        ("runs/log-metric", post(log_metric)),
        ("runs/log-parameter", post(log_param)),
        ("runs/set-tag", post(set_tag)),
        ("runs/delete-tag", post(delete_tag)),
        ("runs/log-batch", post(log_batch)),
        ("runs/log-inputs", post(log_inputs)),
        ("metrics/get-history", read(metric_history)),
        ("registered-models/create", post(create_model)),
        ("registered-models/get", read(get_model)),
        ("registered-models/search", read(search_models)),
        ("registered-models/rename", post(rename_model)),
        ("registered-models/update", patch(update_model)),
        ("registered-models/delete", delete(delete_model)),
        (
            "registered-models/get-latest-versions",
            read(latest_versions),
        ),
        ("registered-models/set-tag", post(set_model_tag)),
        ("registered-models/delete-tag", delete(delete_model_tag)),
        (
            "registered-models/alias",
            post(set_alias).delete(delete_alias).get(get_by_alias),
        ),
        ("model-versions/create", post(create_version)),
        ("model-versions/get", read(get_version)),
        ("model-versions/search", read(search_versions)),
        ("model-versions/update", patch(update_version)),
        ("model-versions/delete", delete(delete_version)),
        ("model-versions/transition-stage", post(transition_stage)),
        ("model-versions/get-download-uri", read(download_uri)),
        ("model-versions/set-tag", post(set_version_tag)),
        ("model-versions/delete-tag", delete(delete_version_tag)),
        // MLflow 3's logged models: the client lists them when it lists a
        // run's artifacts; Weir has none (its models are registry versions).
        (
            "logged-models/search",
            post(|| async { axum::Json(json!({})) }),
        ),
    ]
}

// ---------------------------------------------------------------- experiments

async fn create_experiment(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    let name = fields.required("name")?;
    let tags = key_values(&fields.list("tags"), "tags")?;
    let location = fields.text("artifact_location").filter(|s| !s.is_empty());
    let id = tracker.create_experiment(name, location, tags).await?;
    ok(json!({"experiment_id": id}))
}

fn get_experiment(state: &State, fields: Fields) -> Answer {
    let experiment = state.experiment(&fields.required("experiment_id")?)?;
    ok(json!({"experiment": experiment_json(experiment)}))
}

fn get_experiment_by_name(state: &State, fields: Fields) -> Answer {
    let experiment = state.experiment_by_name(&fields.required("experiment_name")?)?;
    ok(json!({"experiment": experiment_json(experiment)}))
}

/// `ACTIVE_ONLY` (default), `DELETED_ONLY` or `ALL`, or their numbers.
fn view_type(fields: &Fields, name: &str) -> Result<(bool, bool), MetaError> {
    match fields.text(name).as_deref() {
        None | Some("") | Some("ACTIVE_ONLY") | Some("1") => Ok((true, false)),
        Some("DELETED_ONLY") | Some("2") => Ok((false, true)),
        Some("ALL") | Some("3") => Ok((true, true)),
        Some(other) => Err(MetaError::invalid(format!(
            "Invalid value '{other}' for '{name}': one of ACTIVE_ONLY, DELETED_ONLY, ALL"
        ))),
    }
}

fn shown(deleted: bool, (active, gone): (bool, bool)) -> bool {
    if deleted { gone } else { active }
}

fn order_by<S: Searchable>(fields: &Fields) -> Result<Vec<OrderBy>, MetaError> {
    fields
        .texts("order_by")
        .iter()
        .map(|clause| OrderBy::parse::<S>(clause))
        .collect()
}

impl Searchable for Experiment {
    fn attribute(key: &str) -> Option<AttributeType> {
        match key {
            "name" | "experiment_id" => Some(AttributeType::Text),
            "creation_time" | "last_update_time" => Some(AttributeType::Number),
            _ => None,
        }
    }

    fn value(&self, field: &Field) -> Option<FieldValue<'_>> {
        match (field.kind, field.key.as_str()) {
            (FieldKind::Attribute, "name") => Some(FieldValue::Text(&self.name)),
            (FieldKind::Attribute, "experiment_id") => Some(FieldValue::Text(&self.experiment_id)),
            (FieldKind::Attribute, "creation_time") => {
                Some(FieldValue::Number(self.creation_time as f64))
            }
            (FieldKind::Attribute, "last_update_time") => {
                Some(FieldValue::Number(self.last_update_time as f64))
            }
            (FieldKind::Tag, key) => self.tags.get(key).map(|v| FieldValue::Text(v)),
            _ => None,
        }
    }
}

fn search_experiments(state: &State, fields: Fields) -> Answer {
    let filter = Filter::parse::<Experiment>(&fields.text("filter").unwrap_or_default())?;
    let view = view_type(&fields, "view_type")?;
    let order = order_by::<Experiment>(&fields)?;
    let matching: Vec<&Experiment> = state
        .experiments()
        .filter(|e| shown(e.deleted, view) && filter.matches(*e))
        .collect();
    // MLflow's default: newest first, then by id.
    let by_id = |e: &Experiment| e.experiment_id.parse::<u64>().unwrap_or(0);
    let (page, next) = page(
        matching,
        &order,
        |a, b| {
            b.creation_time
                .cmp(&a.creation_time)
                .then(by_id(a).cmp(&by_id(b)))
        },
        fields.max_results(DEFAULT_MAX_RESULTS)?,
        fields.text("page_token").as_deref(),
    )?;
    listed(
        "experiments",
        page.into_iter().map(experiment_json).collect(),
        next,
    )
}

async fn experiment_lifecycle(tracker: Tracker, fields: Fields, deleted: bool) -> Answer {
    let experiment_id = fields.required("experiment_id")?;
    done(
        &tracker,
        Event::ExperimentLifecycle {
            at: now_ms(),
            experiment_id,
            deleted,
        },
    )
    .await
}

async fn delete_experiment(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    experiment_lifecycle(tracker, fields, true).await
}

async fn restore_experiment(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    experiment_lifecycle(tracker, fields, false).await
}

async fn rename_experiment(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    let experiment_id = fields.required("experiment_id")?;
    let name = fields.required("new_name")?;
    done(
        &tracker,
        Event::ExperimentRenamed {
            at: now_ms(),
            experiment_id,
            name,
        },
    )
    .await
}

async fn tag_experiment(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    let experiment_id = fields.required("experiment_id")?;
    let tag = KeyValue {
        key: fields.required("key")?,
        value: fields.text("value").unwrap_or_default(),
    };
    done(
        &tracker,
        Event::ExperimentTagged {
            at: now_ms(),
            experiment_id,
            tag,
        },
    )
    .await
}

// ----------------------------------------------------------------------- runs

async fn create_run(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    let experiment_id = fields
        .text("experiment_id")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_EXPERIMENT.into());
    let tags = key_values(&fields.list("tags"), "tags")?;
    let start = crate::tracker::RunStart {
        experiment_id,
        run_name: fields.text("run_name").filter(|s| !s.is_empty()),
        user_id: fields.text("user_id"),
        start_time: fields.int("start_time")?.unwrap_or_else(now_ms),
        tags,
    };
    let run_id = tracker.start_run(start).await?;
    let run = tracker.read(|state| state.run(&run_id).map(run_json))?;
    ok(json!({"run": run}))
}

fn run_id_of(fields: &Fields) -> Result<String, MetaError> {
    fields
        .text("run_id")
        .filter(|s| !s.is_empty())
        .or_else(|| fields.text("run_uuid").filter(|s| !s.is_empty()))
        .ok_or_else(|| missing("run_id"))
}

async fn update_run(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    let run_id = run_id_of(&fields)?;
    let status = fields.text("status").filter(|s| !s.is_empty());
    let end_time = fields.int("end_time")?;
    let run_name = fields.text("run_name").filter(|s| !s.is_empty());
    let info = tracker
        .append(Event::RunUpdated {
            at: now_ms(),
            run_id: run_id.clone(),
            status,
            end_time,
            run_name,
        })
        .await
        .and_then(|()| tracker.read(|state| state.run(&run_id).map(run_info_json)))?;
    ok(json!({"run_info": info}))
}

fn get_run(state: &State, fields: Fields) -> Answer {
    ok(json!({"run": run_json(state.run(&run_id_of(&fields)?)?)}))
}

async fn run_lifecycle(tracker: Tracker, fields: Fields, deleted: bool) -> Answer {
    let run_id = run_id_of(&fields)?;
    done(
        &tracker,
        Event::RunLifecycle {
            at: now_ms(),
            run_id,
            deleted,
        },
    )
    .await
}

async fn delete_run(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    run_lifecycle(tracker, fields, true).await
}

async fn restore_run(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    run_lifecycle(tracker, fields, false).await
}

async fn log(
    tracker: &Tracker,
    run_id: String,
    metrics: Vec<Metric>,
    params: Vec<KeyValue>,
    tags: Vec<KeyValue>,
) -> Answer {
    done(
        tracker,
        Event::RunLogged {
            at: now_ms(),
            run_id,
            metrics,
            params,
            tags,
        },
    )
    .await
}

async fn log_metric(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    let run_id = run_id_of(&fields)?;
    let metric = metric_of(&Json::Object(fields.0))?;
    log(&tracker, run_id, vec![metric], vec![], vec![]).await
}

fn key_value(fields: &Fields) -> Result<KeyValue, MetaError> {
    Ok(KeyValue {
        key: fields.required("key")?,
        value: fields.text("value").unwrap_or_default(),
    })
}

async fn log_param(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    let run_id = run_id_of(&fields)?;
    log(&tracker, run_id, vec![], vec![key_value(&fields)?], vec![]).await
}

async fn set_tag(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    let run_id = run_id_of(&fields)?;
    log(&tracker, run_id, vec![], vec![], vec![key_value(&fields)?]).await
}

async fn delete_tag(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    let run_id = run_id_of(&fields)?;
    let key = fields.required("key")?;
    done(
        &tracker,
        Event::RunTagDeleted {
            at: now_ms(),
            run_id,
            key,
        },
    )
    .await
}

async fn log_batch(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    let run_id = run_id_of(&fields)?;
    let (metrics, params, tags) = (
        fields.list("metrics"),
        fields.list("params"),
        fields.list("tags"),
    );
    for (what, count, limit) in [
        ("metrics", metrics.len(), BATCH_METRICS),
        ("params", params.len(), BATCH_PARAMS),
        ("tags", tags.len(), BATCH_TAGS),
    ] {
        if count > limit {
            return Err(MetaError::invalid(format!(
                "A batch logging request can contain at most {limit} {what}. Got {count} {what}. Please split up {what} across multiple requests and try again."
            ))
            .into());
        }
    }
    let total = metrics.len() + params.len() + tags.len();
    if total > BATCH_ITEMS {
        return Err(MetaError::invalid(format!(
            "A batch logging request can contain at most {BATCH_ITEMS} total metrics, params, and tags. Got {total} items. Please split up the items across multiple requests and try again."
        ))
        .into());
    }
    let metrics = metrics
        .iter()
        .map(metric_of)
        .collect::<Result<Vec<_>, _>>()?;
    let params = key_values(&params, "params")?;
    let tags = key_values(&tags, "tags")?;
    log(&tracker, run_id, metrics, params, tags).await
}

async fn log_inputs(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    let run_id = run_id_of(&fields)?;
    let datasets = fields.list("datasets");
    done(
        &tracker,
        Event::RunInputs {
            at: now_ms(),
            run_id,
            datasets,
        },
    )
    .await
}

impl Searchable for Run {
    fn attribute(key: &str) -> Option<AttributeType> {
        match key {
            "run_id" | "run_name" | "status" | "user_id" | "artifact_uri" | "experiment_id"
            | "lifecycle_stage" => Some(AttributeType::Text),
            "start_time" | "end_time" | "created" | "Created" => Some(AttributeType::Number),
            _ => None,
        }
    }

    fn value(&self, field: &Field) -> Option<FieldValue<'_>> {
        let key = field.key.as_str();
        match field.kind {
            FieldKind::Metric => self.latest.get(key).map(|m| FieldValue::Number(m.value)),
            FieldKind::Param => self.params.get(key).map(|v| FieldValue::Text(v)),
            FieldKind::Tag => self.tags.get(key).map(|v| FieldValue::Text(v)),
            FieldKind::Attribute => match key {
                "run_id" => Some(FieldValue::Text(&self.run_id)),
                "run_name" => Some(FieldValue::Text(&self.run_name)),
                "status" => Some(FieldValue::Text(&self.status)),
                "user_id" => Some(FieldValue::Text(&self.user_id)),
                "artifact_uri" => Some(FieldValue::Text(&self.artifact_uri)),
                "experiment_id" => Some(FieldValue::Text(&self.experiment_id)),
                "lifecycle_stage" => Some(FieldValue::Text(if self.deleted {
                    "deleted"
                } else {
                    "active"
                })),
                "start_time" | "created" | "Created" => {
                    Some(FieldValue::Number(self.start_time as f64))
                }
                "end_time" => self.end_time.map(|t| FieldValue::Number(t as f64)),
                _ => None,
            },
        }
    }
}

fn search_runs(state: &State, fields: Fields) -> Answer {
    let filter = Filter::parse::<Run>(&fields.text("filter").unwrap_or_default())?;
    let view = view_type(&fields, "run_view_type")?;
    let order = order_by::<Run>(&fields)?;
    let mut matching = Vec::new();
    for experiment_id in fields.texts("experiment_ids") {
        matching.extend(
            state
                .runs_of(&experiment_id)
                .filter(|run| shown(run.deleted, view) && filter.matches(*run)),
        );
    }
    // MLflow's default and last tie-breakers: newest first, then by id.
    let (page, next) = page(
        matching,
        &order,
        |a, b| {
            b.start_time
                .cmp(&a.start_time)
                .then(a.run_id.cmp(&b.run_id))
        },
        fields.max_results(DEFAULT_MAX_RESULTS)?,
        fields.text("page_token").as_deref(),
    )?;
    listed("runs", page.into_iter().map(run_json).collect(), next)
}

/// A metric's values in the order they were logged; an unknown run or key
/// has none (MLflow answers those with an empty 200 too).
fn metric_history(state: &State, fields: Fields) -> Answer {
    let run_id = run_id_of(&fields)?;
    let key = fields.required("metric_key")?;
    let history: Vec<&Metric> = state
        .run(&run_id)
        .ok()
        .and_then(|run| run.history.get(&key))
        .into_iter()
        .flatten()
        .collect();
    let max = fields.max_results(usize::MAX)?;
    let offset = match fields.text("page_token") {
        Some(token) if !token.is_empty() => crate::search::decode_token(&token)?,
        _ => 0,
    };
    let end = offset.saturating_add(max).min(history.len());
    let metrics = history[offset.min(end)..end]
        .iter()
        .map(|m| json!(m))
        .collect();
    let next = (end < history.len()).then(|| crate::search::encode_token(end));
    listed("metrics", metrics, next)
}

// -------------------------------------------------------------------- models

async fn create_model(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    let name = fields.required("name")?;
    let tags = key_values(&fields.list("tags"), "tags")?;
    let description = fields.text("description").unwrap_or_default();
    let model = tracker
        .append(Event::ModelCreated {
            at: now_ms(),
            name: name.clone(),
            description,
            tags,
        })
        .await
        .and_then(|()| tracker.read(|state| state.model(&name).map(model_json)))?;
    ok(json!({"registered_model": model}))
}

fn get_model(state: &State, fields: Fields) -> Answer {
    ok(json!({"registered_model": model_json(state.model(&fields.required("name")?)?)}))
}

impl Searchable for Model {
    fn attribute(key: &str) -> Option<AttributeType> {
        match key {
            "name" => Some(AttributeType::Text),
            "creation_timestamp" | "last_updated_timestamp" => Some(AttributeType::Number),
            _ => None,
        }
    }

    fn value(&self, field: &Field) -> Option<FieldValue<'_>> {
        match (field.kind, field.key.as_str()) {
            (FieldKind::Attribute, "name") => Some(FieldValue::Text(&self.name)),
            (FieldKind::Attribute, "creation_timestamp") => {
                Some(FieldValue::Number(self.creation_timestamp as f64))
            }
            (FieldKind::Attribute, "last_updated_timestamp") => {
                Some(FieldValue::Number(self.last_updated_timestamp as f64))
            }
            (FieldKind::Tag, key) => self.tags.get(key).map(|v| FieldValue::Text(v)),
            _ => None,
        }
    }

    fn missing_tag_differs() -> bool {
        true
    }
}

fn search_models(state: &State, fields: Fields) -> Answer {
    let filter = Filter::parse::<Model>(&fields.text("filter").unwrap_or_default())?;
    let order = order_by::<Model>(&fields)?;
    let matching: Vec<&Model> = state.models().filter(|m| filter.matches(*m)).collect();
    let (page, next) = page(
        matching,
        &order,
        |a, b| a.name.cmp(&b.name),
        fields.max_results(100)?,
        fields.text("page_token").as_deref(),
    )?;
    listed(
        "registered_models",
        page.into_iter().map(model_json).collect(),
        next,
    )
}

async fn rename_model(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    let name = fields.required("name")?;
    let new_name = fields.required("new_name")?;
    let model = tracker
        .append(Event::ModelRenamed {
            at: now_ms(),
            name,
            new_name: new_name.clone(),
        })
        .await
        .and_then(|()| tracker.read(|state| state.model(&new_name).map(model_json)))?;
    ok(json!({"registered_model": model}))
}

async fn update_model(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    let name = fields.required("name")?;
    let description = fields.text("description").unwrap_or_default();
    let model = tracker
        .append(Event::ModelDescribed {
            at: now_ms(),
            name: name.clone(),
            description,
        })
        .await
        .and_then(|()| tracker.read(|state| state.model(&name).map(model_json)))?;
    ok(json!({"registered_model": model}))
}

async fn delete_model(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    let name = fields.required("name")?;
    done(&tracker, Event::ModelDeleted { at: now_ms(), name }).await
}

fn latest_versions(state: &State, fields: Fields) -> Answer {
    let model = state.model(&fields.required("name")?)?;
    let stages: Vec<&'static str> = fields
        .texts("stages")
        .iter()
        .map(|s| state::stage_name(s))
        .collect::<Result<_, _>>()?;
    let mut latest: BTreeMap<&str, &Version> = BTreeMap::new();
    for version in model.versions.values() {
        if stages.is_empty() || stages.contains(&version.stage.as_str()) {
            latest.insert(&version.stage, version);
        }
    }
    let versions: Vec<Json> = latest.values().map(|v| version_json(model, v)).collect();
    ok(json!({"model_versions": versions}))
}

async fn model_tag(tracker: Tracker, fields: Fields, version: bool, set: bool) -> Answer {
    let name = fields.required("name")?;
    let version = match version {
        true => Some(version_number(&fields)?),
        false => None,
    };
    let key = fields.required("key")?;
    let value = set.then(|| fields.text("value").unwrap_or_default());
    done(
        &tracker,
        Event::ModelTagged {
            at: now_ms(),
            name,
            version,
            key,
            value,
        },
    )
    .await
}

async fn set_model_tag(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    model_tag(tracker, fields, false, true).await
}

async fn delete_model_tag(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    model_tag(tracker, fields, false, false).await
}

async fn set_version_tag(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    model_tag(tracker, fields, true, true).await
}

async fn delete_version_tag(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    model_tag(tracker, fields, true, false).await
}

fn version_number(fields: &Fields) -> Result<u64, MetaError> {
    let text = fields.required("version")?;
    text.parse()
        .map_err(|_| MetaError::invalid(format!("Model version must be an integer, got '{text}'")))
}

async fn set_alias(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    let name = fields.required("name")?;
    let alias = fields.required("alias")?;
    let version = version_number(&fields)?;
    done(
        &tracker,
        Event::AliasSet {
            at: now_ms(),
            name,
            alias,
            version: Some(version),
        },
    )
    .await
}

async fn delete_alias(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    let name = fields.required("name")?;
    let alias = fields.required("alias")?;
    done(
        &tracker,
        Event::AliasSet {
            at: now_ms(),
            name,
            alias,
            version: None,
        },
    )
    .await
}

async fn get_by_alias(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    tracker.read(|state| {
        let name = fields.required("name")?;
        let alias = fields.required("alias")?;
        let model = state.model(&name)?;
        let version = model
            .aliases
            .get(&alias)
            .and_then(|v| model.versions.get(v))
            .ok_or_else(|| {
                MetaError::invalid(format!("Registered model alias {alias} not found."))
            })?;
        ok(json!({"model_version": version_json(model, version)}))
    })
}

async fn create_version(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    let name = fields.required("name")?;
    let source = fields.required("source")?;
    let run_id = fields.text("run_id").unwrap_or_default();
    let description = fields.text("description").unwrap_or_default();
    let tags = key_values(&fields.list("tags"), "tags")?;
    let version = tracker
        .write(|state| {
            let model = state.model(&name)?;
            if !run_id.is_empty() {
                state.run(&run_id)?;
            }
            let version = model.next_version;
            let event = Event::VersionCreated {
                at: now_ms(),
                name: name.clone(),
                version,
                source,
                user_id: String::new(),
                run_id,
                description,
                tags,
                model: None,
            };
            Ok((event, version))
        })
        .await
        .and_then(|version| {
            tracker.read(|state| {
                state
                    .version(&name, &version.to_string())
                    .map(|(m, v)| version_json(m, v))
            })
        })?;
    ok(json!({"model_version": version}))
}

fn get_version(state: &State, fields: Fields) -> Answer {
    let (model, version) =
        state.version(&fields.required("name")?, &fields.required("version")?)?;
    ok(json!({"model_version": version_json(model, version)}))
}

/// A model version with its model, for searching.
struct VersionRow<'a> {
    model: &'a Model,
    version: &'a Version,
}

impl Searchable for VersionRow<'_> {
    fn attribute(key: &str) -> Option<AttributeType> {
        match key {
            "name" | "run_id" | "source" | "source_path" | "current_stage" => {
                Some(AttributeType::Text)
            }
            "version_number" | "creation_timestamp" | "last_updated_timestamp" => {
                Some(AttributeType::Number)
            }
            _ => None,
        }
    }

    fn value(&self, field: &Field) -> Option<FieldValue<'_>> {
        let v = self.version;
        match (field.kind, field.key.as_str()) {
            (FieldKind::Attribute, "name") => Some(FieldValue::Text(&self.model.name)),
            (FieldKind::Attribute, "run_id") => Some(FieldValue::Text(&v.run_id)),
            (FieldKind::Attribute, "source" | "source_path") => Some(FieldValue::Text(&v.source)),
            (FieldKind::Attribute, "current_stage") => Some(FieldValue::Text(&v.stage)),
            (FieldKind::Attribute, "version_number") => Some(FieldValue::Number(v.version as f64)),
            (FieldKind::Attribute, "creation_timestamp") => {
                Some(FieldValue::Number(v.creation_timestamp as f64))
            }
            (FieldKind::Attribute, "last_updated_timestamp") => {
                Some(FieldValue::Number(v.last_updated_timestamp as f64))
            }
            (FieldKind::Tag, key) => v.tags.get(key).map(|t| FieldValue::Text(t)),
            _ => None,
        }
    }
}

fn search_versions(state: &State, fields: Fields) -> Answer {
    let filter = Filter::parse::<VersionRow<'_>>(&fields.text("filter").unwrap_or_default())?;
    let order = order_by::<VersionRow<'_>>(&fields)?;
    let rows: Vec<VersionRow<'_>> = state
        .models()
        .flat_map(|model| {
            model
                .versions
                .values()
                .map(move |version| VersionRow { model, version })
        })
        .filter(|row| filter.matches(row))
        .collect();
    let (page, next) = page(
        rows.iter().collect(),
        &order,
        |a, b| {
            a.model
                .name
                .cmp(&b.model.name)
                .then(b.version.version.cmp(&a.version.version))
        },
        fields.max_results(DEFAULT_MAX_RESULTS)?,
        fields.text("page_token").as_deref(),
    )?;
    let versions = page
        .into_iter()
        .map(|r| version_json(r.model, r.version))
        .collect();
    listed("model_versions", versions, next)
}

async fn answer_version(tracker: &Tracker, name: &str, version: u64, event: Event) -> Answer {
    let version = tracker.append(event).await.and_then(|()| {
        tracker.read(|state| {
            state
                .version(name, &version.to_string())
                .map(|(m, v)| version_json(m, v))
        })
    })?;
    ok(json!({"model_version": version}))
}

async fn update_version(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    let name = fields.required("name")?;
    let version = version_number(&fields)?;
    let event = Event::VersionDescribed {
        at: now_ms(),
        name: name.clone(),
        version,
        description: fields.text("description").unwrap_or_default(),
    };
    answer_version(&tracker, &name, version, event).await
}

async fn transition_stage(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    let name = fields.required("name")?;
    let version = version_number(&fields)?;
    let event = Event::VersionStaged {
        at: now_ms(),
        name: name.clone(),
        version,
        stage: fields.required("stage")?,
        archive_existing: fields.flag("archive_existing_versions"),
    };
    answer_version(&tracker, &name, version, event).await
}

async fn delete_version(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    let name = fields.required("name")?;
    let version = version_number(&fields)?;
    done(
        &tracker,
        Event::VersionDeleted {
            at: now_ms(),
            name,
            version,
        },
    )
    .await
}

/// Where a version's files are: a `runs:/<run>/<path>` source resolves to
/// that run's artifacts.
fn download_uri(state: &State, fields: Fields) -> Answer {
    let (_, version) = state.version(&fields.required("name")?, &fields.required("version")?)?;
    let uri = match version.source.strip_prefix("runs:/") {
        Some(rest) => {
            let (run_id, path) = rest.split_once('/').unwrap_or((rest, ""));
            let run = state.run(run_id)?;
            if path.is_empty() {
                run.artifact_uri.clone()
            } else {
                format!("{}/{path}", run.artifact_uri)
            }
        }
        None => version.source.clone(),
    };
    ok(json!({"artifact_uri": uri}))
}

// ----------------------------------------------------------------- artifacts

async fn upload_artifact(
    AxumState(tracker): AxumState<Tracker>,
    Path(path): Path<String>,
    body: HttpBody,
) -> Answer {
    if let Err(e) = crate::artifacts::check_path(&path) {
        drain(body).await;
        return Err(e.into());
    }
    let (sha256, size) = tracker.artifacts().put(body.into_data_stream()).await?;
    done(
        &tracker,
        Event::ArtifactStored {
            at: now_ms(),
            path,
            sha256,
            size,
        },
    )
    .await
}

async fn download_artifact(
    AxumState(tracker): AxumState<Tracker>,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    crate::artifacts::check_path(&path)?;
    let artifact = tracker
        .read(|state| state.artifact(&path).cloned())
        .ok_or_else(|| MetaError::missing(format!("Artifact '{path}' does not exist")))?;
    let stream = tracker.artifacts().get(&artifact.sha256).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, artifact.size.to_string()),
        ],
        HttpBody::from_stream(stream),
    )
        .into_response())
}

/// The files and directories directly under `path`, named relative to it.
async fn list_artifacts(AxumState(tracker): AxumState<Tracker>, fields: Fields) -> Answer {
    let path = fields.text("path").unwrap_or_default();
    let path = path.trim_end_matches('/').to_string();
    if !path.is_empty() {
        crate::artifacts::check_path(&path)?;
    }
    let files = tracker.read(|state| {
        let mut entries: BTreeMap<String, Option<u64>> = BTreeMap::new();
        let skip = if path.is_empty() { 0 } else { path.len() + 1 };
        for (full, artifact) in state.artifacts_under(&path) {
            let rest = &full[skip..];
            match rest.split_once('/') {
                Some((dir, _)) => entries.insert(dir.to_string(), None),
                None => entries.insert(rest.to_string(), Some(artifact.size)),
            };
        }
        entries
            .into_iter()
            .map(|(name, size)| match size {
                Some(size) => json!({"path": name, "is_dir": false, "file_size": size}),
                None => json!({"path": name, "is_dir": true}),
            })
            .collect::<Vec<_>>()
    });
    // A file, or nothing: MLflow answers `{}`, which the client reads as
    // "a file".
    if files.is_empty() {
        return ok(json!({}));
    }
    ok(json!({"files": files}))
}

/// `GET /api/2.0/weir/lineage?node=…&format=json|text|mermaid|dot`: what a
/// dataset, run or model version was made from and what was made from it.
async fn lineage(
    AxumState(tracker): AxumState<Tracker>,
    fields: Fields,
) -> Result<Response, ApiError> {
    let format = fields.text("format").unwrap_or_else(|| "json".into());
    let node = fields.required("node")?;
    let body = tracker.read(|state| {
        let node = crate::lineage::find(state, &node)?;
        crate::lineage::render(state, &node, &format)
    })?;
    let content_type = if format == "json" {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}
