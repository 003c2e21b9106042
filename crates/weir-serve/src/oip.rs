//! The Open Inference Protocol v2 (KServe V2) over HTTP, with axum:
//!
//! | route | answer |
//! |---|---|
//! | `GET /v2/health/live`, `/v2/health/ready` | 200 while the server is up, ready |
//! | `GET /v2` | server metadata and extensions |
//! | `GET /v2/models/{name}[/versions/{v}]` | model metadata: inputs, outputs |
//! | `GET /v2/models/{name}[/versions/{v}]/ready` | 200 when ready |
//! | `POST /v2/models/{name}[/versions/{v}]/infer` | inference |
//! | `POST /v2/models/{name}/feedback` | rewards and labels for answered requests (Weir's) |
//! | `GET /metrics` | Prometheus text |
//!
//! Tensors come as JSON (`data` flat or nested, row-major) or, with the
//! binary tensor data extension that Triton's clients use by default, as
//! raw little-endian bytes after the JSON header
//! (`Inference-Header-Content-Length`). Outputs go back the way they are
//! asked for: binary when the request's output (or the request, with
//! `binary_data_output`) says so. Errors are `{"error": "..."}` with a
//! 4xx status naming the input or field at fault.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};
use weir_onnx::{Output, Values};

use crate::ServeError;
use crate::deployment::{Data, Deployment, Input, Request, TensorMeta};
use crate::log::Channel;

/// The binary extension's header: the length of the JSON part.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Deserialize)]
struct JsonRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Json>>,
    inputs: Vec<JsonInput>,
    #[serde(default)]
    outputs: Vec<JsonOutput>,
}

#[derive(Deserialize)]
struct JsonInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Json>>,
    #[serde(default)]
    data: Option<Json>,
}

#[derive(Deserialize)]
struct JsonOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Json>>,
}

fn flag(parameters: &Option<Map<String, Json>>, name: &str) -> bool {
    parameters
        .as_ref()
        .and_then(|p| p.get(name))
        .and_then(Json::as_bool)
        .unwrap_or(false)
}

pub(crate) fn bad(message: impl Into<String>) -> ServeError {
    ServeError::Request(message.into())
}

/// A decoded request, and which outputs go back binary.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The request.
    pub request: Request,
    /// Output names to send binary; every output when `all_binary`.
    pub binary: Vec<String>,
    /// `binary_data_output` was set.
    pub all_binary: bool,
}

/// Decodes a request body: JSON, or a JSON header of `json_length` bytes
/// followed by binary tensor data.
pub fn decode(body: &[u8], json_length: Option<usize>) -> Result<Decoded, ServeError> {
    let (head, mut blob) = match json_length {
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => {
            return Err(bad(format!(
                "{HEADER_LENGTH} is {n}, but the body has {} bytes",
                body.len()
            )));
        }
        None => (body, &[][..]),
    };
    let parsed: JsonRequest = serde_json::from_slice(head).map_err(|e| {
        bad(format!(
            "the request is not an inference request: {e} (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let mut inputs = Vec::with_capacity(parsed.inputs.len());
    for input in parsed.inputs {
        let name = input.name;
        let shape = input
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                bad(format!(
                    "input `{name}`: shape {:?} has a negative dimension",
                    input.shape
                ))
            })?;
        let count: usize = shape.iter().product();
        let binary_size = input
            .parameters
            .as_ref()
            .and_then(|p| p.get("binary_data_size"))
            .and_then(Json::as_u64);
        let data = match (binary_size, input.data) {
            (Some(size), _) => {
                let size = size as usize;
                if size > blob.len() {
                    return Err(bad(format!(
                        "input `{name}`: binary_data_size {size} is more than the {} bytes left",
                        blob.len()
                    )));
                }
                let (bytes, rest) = blob.split_at(size);
                blob = rest;
                from_binary(&name, &input.datatype, bytes)?
            }
            (None, Some(data)) => from_json(&name, &input.datatype, &data)?,
            (None, None) => return Err(bad(format!("input `{name}` has no data"))),
        };
        if data.len() != count {
            return Err(bad(format!(
                "input `{name}`: shape {shape:?} holds {count} values, the data has {}",
                data.len()
            )));
        }
        inputs.push(Input { name, shape, data });
    }
    let binary = parsed
        .outputs
        .iter()
        .filter(|o| flag(&o.parameters, "binary_data"))
        .map(|o| o.name.clone())
        .collect();
    Ok(Decoded {
        request: Request {
            id: parsed.id,
            inputs,
            outputs: parsed.outputs.into_iter().map(|o| o.name).collect(),
            route_key: None,
        },
        binary,
        all_binary: flag(&parsed.parameters, "binary_data_output"),
    })
}

fn numeric(datatype: &str) -> bool {
    matches!(
        datatype,
        "BOOL"
            | "UINT8"
            | "UINT16"
            | "UINT32"
            | "UINT64"
            | "INT8"
            | "INT16"
            | "INT32"
            | "INT64"
            | "FP32"
            | "FP64"
    )
}

fn from_json(name: &str, datatype: &str, data: &Json) -> Result<Data, ServeError> {
    fn flatten<'a>(value: &'a Json, out: &mut Vec<&'a Json>) {
        match value {
            Json::Array(items) => items.iter().for_each(|v| flatten(v, out)),
            other => out.push(other),
        }
    }
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    if datatype == "BYTES" {
        return flat
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Json::String(s) => Ok(s.clone()),
                Json::Number(n) => Ok(n.to_string()),
                other => Err(bad(format!(
                    "input `{name}` [{i}]: {other} is not a string (datatype BYTES)"
                ))),
            })
            .collect::<Result<_, _>>()
            .map(Data::Text);
    }
    if !numeric(datatype) {
        return Err(bad(format!(
            "input `{name}`: datatype `{datatype}` is not one Weir reads (BOOL, INT*, UINT*, FP32, FP64, BYTES)"
        )));
    }
    flat.iter()
        .enumerate()
        .map(|(i, v)| match v {
            Json::Number(n) => Ok(n.as_f64().unwrap_or(f64::NAN)),
            Json::Bool(b) => Ok(f64::from(u8::from(*b))),
            Json::Null => Ok(f64::NAN),
            other => Err(bad(format!(
                "input `{name}` [{i}]: {other} is not a number (datatype {datatype})"
            ))),
        })
        .collect::<Result<_, _>>()
        .map(Data::Num)
}

pub(crate) fn from_binary(name: &str, datatype: &str, bytes: &[u8]) -> Result<Data, ServeError> {
    fn fixed<const N: usize>(
        name: &str,
        bytes: &[u8],
        read: impl Fn([u8; N]) -> f64,
    ) -> Result<Data, ServeError> {
        if !bytes.len().is_multiple_of(N) {
            return Err(bad(format!(
                "input `{name}`: {} bytes is not a whole number of {N}-byte values",
                bytes.len()
            )));
        }
        Ok(Data::Num(
            bytes
                .chunks_exact(N)
                .map(|c| read(c.try_into().expect("N bytes")))
                .collect(),
        ))
    }
    match datatype {
        "FP32" => fixed::<4>(name, bytes, |b| f64::from(f32::from_le_bytes(b))),
        "FP64" => fixed::<8>(name, bytes, f64::from_le_bytes),
        "INT64" => fixed::<8>(name, bytes, |b| i64::from_le_bytes(b) as f64),
        "INT32" => fixed::<4>(name, bytes, |b| f64::from(i32::from_le_bytes(b))),
        "INT16" => fixed::<2>(name, bytes, |b| f64::from(i16::from_le_bytes(b))),
        "INT8" => fixed::<1>(name, bytes, |b| f64::from(b[0] as i8)),
        "UINT64" => fixed::<8>(name, bytes, |b| u64::from_le_bytes(b) as f64),
        "UINT32" => fixed::<4>(name, bytes, |b| f64::from(u32::from_le_bytes(b))),
        "UINT16" => fixed::<2>(name, bytes, |b| f64::from(u16::from_le_bytes(b))),
        "UINT8" | "BOOL" => fixed::<1>(name, bytes, |b| f64::from(b[0])),
        "BYTES" => {
            let mut out = Vec::new();
            let mut rest = bytes;
            while !rest.is_empty() {
                let Some((length, tail)) = rest.split_first_chunk::<4>() else {
                    return Err(bad(format!("input `{name}`: a truncated BYTES length")));
                };
                let length = u32::from_le_bytes(*length) as usize;
                if length > tail.len() {
                    return Err(bad(format!("input `{name}`: a truncated BYTES element")));
                }
                let (element, tail) = tail.split_at(length);
                out.push(
                    String::from_utf8(element.to_vec())
                        .map_err(|_| bad(format!("input `{name}`: an element is not UTF-8")))?,
                );
                rest = tail;
            }
            Ok(Data::Text(out))
        }
        other => Err(bad(format!(
            "input `{name}`: datatype `{other}` is not one Weir reads"
        ))),
    }
}

/// An output's OIP datatype.
pub fn output_datatype(values: &Values) -> &'static str {
    match values {
        Values::F32(_) => "FP32",
        Values::F64(_) => "FP64",
        Values::I64(_) => "INT64",
        Values::Str(_) => "BYTES",
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutData<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    I64(&'a [i64]),
    Str(&'a [String]),
}

#[derive(Serialize)]
struct OutTensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Json>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<OutData<'a>>,
}

#[derive(Serialize)]
struct OutResponse<'a> {
    model_name: &'a str,
    model_version: String,
    id: &'a str,
    outputs: Vec<OutTensor<'a>>,
}

pub(crate) fn binary_bytes(values: &Values) -> Vec<u8> {
    match values {
        Values::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Values::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Values::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Values::Str(v) => {
            let mut out = Vec::new();
            for s in v {
                out.extend((s.len() as u32).to_le_bytes());
                out.extend(s.as_bytes());
            }
            out
        }
    }
}

/// Encodes a response; returns the body and, when it carries binary
/// tensors, the JSON part's length.
pub fn encode(
    model: &str,
    response: &crate::deployment::Response,
    binary: &[String],
    all_binary: bool,
) -> (Vec<u8>, Option<usize>) {
    let mut blobs = Vec::new();
    let outputs = response
        .outputs
        .iter()
        .map(|o: &Output| {
            let as_binary = all_binary || binary.iter().any(|b| b == &o.name);
            let datatype = output_datatype(&o.values);
            if as_binary {
                let bytes = binary_bytes(&o.values);
                let parameters = json!({"binary_data_size": bytes.len()});
                blobs.push(bytes);
                OutTensor {
                    name: &o.name,
                    datatype,
                    shape: &o.shape,
                    parameters: Some(parameters),
                    data: None,
                }
            } else {
                let data = match &o.values {
                    Values::F32(v) => OutData::F32(v),
                    Values::F64(v) => OutData::F64(v),
                    Values::I64(v) => OutData::I64(v),
                    Values::Str(v) => OutData::Str(v),
                };
                OutTensor {
                    name: &o.name,
                    datatype,
                    shape: &o.shape,
                    parameters: None,
                    data: Some(data),
                }
            }
        })
        .collect();
    let head = OutResponse {
        model_name: model,
        model_version: response.version.to_string(),
        id: &response.id,
        outputs,
    };
    let mut body = serde_json::to_vec(&head).expect("a response serializes");
    if blobs.is_empty() {
        return (body, None);
    }
    let length = body.len();
    for blob in blobs {
        body.extend(blob);
    }
    (body, Some(length))
}

/// The OIP error body with its status.
fn error_response(error: &ServeError) -> HttpResponse {
    let status = match error {
        ServeError::Request(_) | ServeError::Spec(_) => StatusCode::BAD_REQUEST,
        ServeError::NotFound(_) => StatusCode::NOT_FOUND,
        ServeError::Model(_) | ServeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, axum::Json(json!({"error": error.to_string()}))).into_response()
}

/// The routes of one deployment.
pub fn router(deployment: Arc<Deployment>) -> Router {
    let routes = Router::new()
        .route(
            "/v2/health/live",
            get(|| async { axum::Json(json!({"live": true})) }),
        )
        .route(
            "/v2/health/ready",
            get(|| async { axum::Json(json!({"ready": true})) }),
        )
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_metadata_at),
        )
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready_at),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_at))
        .route("/v2/models/{name}/feedback", post(feedback))
        .route("/metrics", get(metrics));
    // In the protocol's error shape.
    weir_web::fallbacks(routes, |refused| {
        (
            refused.status,
            axum::Json(json!({ "error": refused.message() })),
        )
            .into_response()
    })
    .with_state(deployment)
}

async fn server_metadata() -> axum::Json<Json> {
    axum::Json(json!({
        "name": "weir",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

pub(crate) fn check(
    deployment: &Deployment,
    name: &str,
    version: Option<&str>,
) -> Result<(), ServeError> {
    if name != deployment.name() {
        return Err(ServeError::NotFound(format!(
            "no model `{name}`; this server serves `{}`",
            deployment.name()
        )));
    }
    if let Some(version) = version
        && version != deployment.version().to_string()
    {
        return Err(ServeError::NotFound(format!(
            "`{name}` serves version {} now, not {version}",
            deployment.version()
        )));
    }
    Ok(())
}

fn tensors(metas: &[TensorMeta]) -> Json {
    metas
        .iter()
        .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape}))
        .collect()
}

fn metadata_of(deployment: &Deployment, name: &str, version: Option<&str>) -> HttpResponse {
    if let Err(error) = check(deployment, name, version) {
        return error_response(&error);
    }
    let metadata = deployment.metadata();
    axum::Json(json!({
        "name": deployment.name(),
        "versions": [deployment.version().to_string()],
        "platform": "onnxruntime_onnx",
        "inputs": tensors(&metadata.inputs),
        "outputs": tensors(&metadata.outputs),
        "parameters": {"models": deployment.versions()},
    }))
    .into_response()
}

async fn model_metadata(
    State(deployment): State<Arc<Deployment>>,
    Path(name): Path<String>,
) -> HttpResponse {
    metadata_of(&deployment, &name, None)
}

async fn model_metadata_at(
    State(deployment): State<Arc<Deployment>>,
    Path((name, version)): Path<(String, String)>,
) -> HttpResponse {
    metadata_of(&deployment, &name, Some(&version))
}

fn ready_of(deployment: &Deployment, name: &str, version: Option<&str>) -> HttpResponse {
    match check(deployment, name, version) {
        Ok(()) => axum::Json(json!({"name": name, "ready": true})).into_response(),
        Err(error) => error_response(&error),
    }
}

async fn model_ready(
    State(deployment): State<Arc<Deployment>>,
    Path(name): Path<String>,
) -> HttpResponse {
    ready_of(&deployment, &name, None)
}

async fn model_ready_at(
    State(deployment): State<Arc<Deployment>>,
    Path((name, version)): Path<(String, String)>,
) -> HttpResponse {
    ready_of(&deployment, &name, Some(&version))
}

async fn infer(
    State(deployment): State<Arc<Deployment>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResponse {
    infer_of(&deployment, &name, None, &headers, &body).await
}

/// `POST /v2/models/<d>/feedback` (Weir's, not the protocol's): a
/// reward or label for a request answered, or a list of them, onto
/// `weir.feedback.<d>`. Answers `{"accepted": n}`; a bad record is a 400
/// naming it, and then nothing is published.
async fn feedback(
    State(deployment): State<Arc<Deployment>>,
    Path(name): Path<String>,
    body: Bytes,
) -> HttpResponse {
    if let Err(error) = check(&deployment, &name, None) {
        return error_response(&error);
    }
    let items = match serde_json::from_slice::<Json>(&body)
        .map_err(|e| e.to_string())
        .and_then(crate::feedback::parse)
    {
        Ok(items) => items,
        Err(message) => return error_response(&bad(format!("feedback: {message}"))),
    };
    match deployment.feedback(&items).await {
        Ok(accepted) => axum::Json(json!({ "accepted": accepted })).into_response(),
        Err(error) => error_response(&error),
    }
}

async fn infer_at(
    State(deployment): State<Arc<Deployment>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResponse {
    infer_of(&deployment, &name, Some(&version), &headers, &body).await
}

async fn infer_of(
    deployment: &Deployment,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> HttpResponse {
    if let Err(error) = check(deployment, name, version) {
        return error_response(&error);
    }
    let json_length = match headers
        .get(HEADER_LENGTH)
        .map(|v| v.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()))
    {
        None => None,
        Some(Some(n)) => Some(n),
        Some(None) => {
            return error_response(&bad(format!("{HEADER_LENGTH} is not a number")));
        }
    };
    let mut decoded = match decode(body, json_length) {
        Ok(decoded) => decoded,
        Err(error) => return error_response(&error),
    };
    if let Some(sticky) = deployment.sticky_header() {
        decoded.request.route_key = headers
            .get(sticky.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
    }
    match deployment.infer(decoded.request, Channel::Http).await {
        Ok(response) => {
            let (body, json_length) = encode(
                deployment.name(),
                &response,
                &decoded.binary,
                decoded.all_binary,
            );
            let mut http = body.into_response();
            let headers = http.headers_mut();
            match json_length {
                Some(n) => {
                    headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    );
                    headers.insert(HEADER_LENGTH, HeaderValue::from(n));
                }
                None => {
                    headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                }
            }
            http
        }
        Err(error) => error_response(&error),
    }
}

async fn metrics(State(deployment): State<Arc<Deployment>>) -> HttpResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        deployment.render_metrics(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_binary_inputs_decode_alike() {
        let json = br#"{"id":"r1","inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]},
            {"name":"k","shape":[2],"datatype":"BYTES","data":["a","b"]}],
            "outputs":[{"name":"probabilities","parameters":{"binary_data":true}}]}"#;
        let decoded = decode(json, None).unwrap();
        assert_eq!(
            decoded.request.inputs[0].data,
            Data::Num(vec![1.0, 2.0, 3.0, 4.0])
        );
        assert_eq!(decoded.binary, ["probabilities"]);

        let head = br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","parameters":{"binary_data_size":16}},
            {"name":"k","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":10}}]}"#;
        let mut body = head.to_vec();
        for x in [1f32, 2.0, 3.0, 4.0] {
            body.extend(x.to_le_bytes());
        }
        for s in ["a", "b"] {
            body.extend(1u32.to_le_bytes());
            body.extend(s.as_bytes());
        }
        let binary = decode(&body, Some(head.len())).unwrap();
        assert_eq!(binary.request.inputs, decoded.request.inputs);
    }

    #[test]
    fn bad_requests_name_the_input() {
        let error = decode(
            br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3]}]}"#,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("input `x`") && error.contains("4 values"),
            "{error}"
        );
        let error = decode(
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}]}"#,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("not a number"), "{error}");
        let error = decode(b"{\"inputs\": [", None).unwrap_err().to_string();
        assert!(error.contains("line 1"), "{error}");
    }
}
