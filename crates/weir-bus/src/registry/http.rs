//! The Confluent Schema Registry REST API over [`SchemaRegistry`], the
//! subset that Kafka clients' serializers use (Confluent's Python and Java
//! clients among them): register, look up, get by id, versions, the
//! compatibility check, and compatibility configuration.
//!
//! Shapes follow Confluent's server: `application/vnd.schemaregistry.v1+json`
//! bodies, errors as `{"error_code": 40401, "message": "..."}`, absent
//! fields omitted. Query flags are parsed case-insensitively because the
//! Python client sends `normalize=False`.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use super::{Compatibility, RegistryError, SchemaRegistry, SchemaType, SubjectVersion};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// The REST API as an axum router (mount it, or serve it with [`serve`]).
pub fn router(registry: SchemaRegistry) -> Router {
    let routes = Router::new()
        .route("/", get(|| async { reply(StatusCode::OK, json!({})) }))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route("/subjects/{subject}/versions/{version}", get(version))
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(version_schema),
        )
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route(
            "/schemas/types",
            get(|| async { reply(StatusCode::OK, json!(["AVRO", "JSON"])) }),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatibility),
        )
        .route("/config", get(global_config).put(set_global_config))
        .route(
            "/config/{subject}",
            get(subject_config)
                .put(set_subject_config)
                .delete(delete_subject_config),
        );
    weir_web::fallbacks(routes, refused).with_state(registry)
}

/// An unknown route, or a method a route does not take, as Confluent's
/// registry answers them (`error_code` 404 or 405).
fn refused(refused: weir_web::Refused) -> Response {
    let reason = if refused.status == StatusCode::NOT_FOUND {
        "HTTP 404 Not Found"
    } else {
        "HTTP 405 Method Not Allowed"
    };
    ApiError {
        status: refused.status,
        code: u32::from(refused.status.as_u16()),
        message: format!("{reason}: {}", refused.message()),
    }
    .into_response()
}

/// Serves the REST API on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: SchemaRegistry,
) -> std::io::Result<()> {
    axum::serve(listener, router(registry)).await
}

fn reply(status: StatusCode, body: Json) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

/// An error answer in Confluent's shape.
struct ApiError {
    status: StatusCode,
    code: u32,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: 400,
            message: message.into(),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        use RegistryError as E;
        let (status, code) = match &error {
            E::SubjectNotFound(_) => (StatusCode::NOT_FOUND, 40401),
            E::VersionNotFound { .. } => (StatusCode::NOT_FOUND, 40402),
            E::SchemaNotFound(_) => (StatusCode::NOT_FOUND, 40403),
            E::NoSubjectConfig(_) => (StatusCode::NOT_FOUND, 40408),
            E::Incompatible { .. } => (StatusCode::CONFLICT, 409),
            E::InvalidSchema(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42201),
            E::InvalidVersion(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42202),
            E::InvalidCompatibility => (StatusCode::UNPROCESSABLE_ENTITY, 42203),
            E::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, 50001),
        };
        Self {
            status,
            code,
            message: error.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        reply(
            self.status,
            json!({"error_code": self.code, "message": self.message}),
        )
    }
}

type ApiResult = Result<Response, ApiError>;
type Params = Query<HashMap<String, String>>;

/// The body of register, lookup and compatibility requests.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    schema: String,
    #[serde(default)]
    schema_type: Option<SchemaType>,
    #[serde(default)]
    references: Vec<Json>,
}

fn parse_body(body: &Bytes) -> Result<SchemaBody, ApiError> {
    let parsed: SchemaBody = serde_json::from_slice(body).map_err(|e| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: 42201,
        message: format!("invalid request body: {e}"),
    })?;
    if !parsed.references.is_empty() {
        return Err(RegistryError::InvalidSchema(
            "schema references are not supported by this registry".to_string(),
        )
        .into());
    }
    Ok(parsed)
}

fn flag(params: &HashMap<String, String>, name: &str) -> bool {
    params
        .get(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn version_json(version: &SubjectVersion) -> Json {
    let mut body = json!({
        "subject": version.subject,
        "version": version.version,
        "id": version.schema.id,
        "schema": version.schema.text,
    });
    if version.schema.schema_type != SchemaType::Avro {
        body["schemaType"] = json!(version.schema.schema_type);
    }
    body
}

async fn subjects(State(registry): State<SchemaRegistry>) -> ApiResult {
    Ok(reply(StatusCode::OK, json!(registry.subjects())))
}

async fn versions(
    State(registry): State<SchemaRegistry>,
    Path(subject): Path<String>,
) -> ApiResult {
    Ok(reply(StatusCode::OK, json!(registry.versions(&subject)?)))
}

async fn version(
    State(registry): State<SchemaRegistry>,
    Path((subject, version)): Path<(String, String)>,
) -> ApiResult {
    let found = registry.version(&subject, &version)?;
    Ok(reply(StatusCode::OK, version_json(&found)))
}

async fn version_schema(
    State(registry): State<SchemaRegistry>,
    Path((subject, version)): Path<(String, String)>,
) -> ApiResult {
    let found = registry.version(&subject, &version)?;
    Ok(raw(&found.schema.text))
}

fn raw(text: &str) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        text.to_string(),
    )
        .into_response()
}

fn parse_id(id: &str) -> Result<u32, ApiError> {
    id.parse().map_err(|_| {
        ApiError::from(RegistryError::SchemaNotFound(format!(
            "Schema {id} not found"
        )))
    })
}

async fn schema_by_id(State(registry): State<SchemaRegistry>, Path(id): Path<String>) -> ApiResult {
    let schema = registry
        .by_id(parse_id(&id)?)
        .ok_or_else(|| RegistryError::SchemaNotFound(format!("Schema {id} not found")))?;
    let mut body = json!({"schema": schema.text});
    if schema.schema_type != SchemaType::Avro {
        body["schemaType"] = json!(schema.schema_type);
    }
    Ok(reply(StatusCode::OK, body))
}

async fn raw_schema_by_id(
    State(registry): State<SchemaRegistry>,
    Path(id): Path<String>,
) -> ApiResult {
    let schema = registry
        .by_id(parse_id(&id)?)
        .ok_or_else(|| RegistryError::SchemaNotFound(format!("Schema {id} not found")))?;
    Ok(raw(&schema.text))
}

async fn register(
    State(registry): State<SchemaRegistry>,
    Path(subject): Path<String>,
    body: Bytes,
) -> ApiResult {
    let body = parse_body(&body)?;
    let registered = registry
        .register(&subject, body.schema_type.unwrap_or_default(), &body.schema)
        .await?;
    Ok(reply(StatusCode::OK, json!({"id": registered.schema.id})))
}

async fn lookup(
    State(registry): State<SchemaRegistry>,
    Path(subject): Path<String>,
    body: Bytes,
) -> ApiResult {
    let body = parse_body(&body)?;
    let found = registry.lookup(&subject, body.schema_type.unwrap_or_default(), &body.schema)?;
    Ok(reply(StatusCode::OK, version_json(&found)))
}

async fn compatibility(
    State(registry): State<SchemaRegistry>,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
    body: Bytes,
) -> ApiResult {
    let body = parse_body(&body)?;
    let verdict = registry.check(
        &subject,
        &version,
        body.schema_type.unwrap_or_default(),
        &body.schema,
    )?;
    let mut answer = json!({"is_compatible": verdict.is_ok()});
    if flag(&params, "verbose") {
        answer["messages"] = json!(verdict.err().into_iter().collect::<Vec<_>>());
    }
    Ok(reply(StatusCode::OK, answer))
}

#[derive(Deserialize)]
struct ConfigBody {
    compatibility: String,
}

fn parse_level(body: &Bytes) -> Result<Compatibility, ApiError> {
    let body: ConfigBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?;
    serde_json::from_value(Json::String(body.compatibility.to_ascii_uppercase()))
        .map_err(|_| RegistryError::InvalidCompatibility.into())
}

async fn global_config(State(registry): State<SchemaRegistry>) -> ApiResult {
    let level = registry.compatibility(None)?;
    Ok(reply(StatusCode::OK, json!({"compatibilityLevel": level})))
}

async fn set_global_config(State(registry): State<SchemaRegistry>, body: Bytes) -> ApiResult {
    let level = parse_level(&body)?;
    registry.set_compatibility(None, Some(level)).await?;
    Ok(reply(StatusCode::OK, json!({"compatibility": level})))
}

async fn subject_config(
    State(registry): State<SchemaRegistry>,
    Path(subject): Path<String>,
    Query(params): Params,
) -> ApiResult {
    let level = match registry.compatibility(Some(&subject)) {
        Err(RegistryError::NoSubjectConfig(_)) if flag(&params, "defaultToGlobal") => {
            registry.compatibility(None)?
        }
        other => other?,
    };
    Ok(reply(StatusCode::OK, json!({"compatibilityLevel": level})))
}

async fn set_subject_config(
    State(registry): State<SchemaRegistry>,
    Path(subject): Path<String>,
    body: Bytes,
) -> ApiResult {
    let level = parse_level(&body)?;
    registry
        .set_compatibility(Some(&subject), Some(level))
        .await?;
    Ok(reply(StatusCode::OK, json!({"compatibility": level})))
}

async fn delete_subject_config(
    State(registry): State<SchemaRegistry>,
    Path(subject): Path<String>,
) -> ApiResult {
    let old = registry.compatibility(Some(&subject))?;
    registry.set_compatibility(Some(&subject), None).await?;
    Ok(reply(StatusCode::OK, json!({"compatibilityLevel": old})))
}
