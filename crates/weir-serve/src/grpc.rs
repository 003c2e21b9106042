//! The Open Inference Protocol v2 over gRPC (tonic): KServe's and Triton's
//! `inference.GRPCInferenceService` — `ServerLive`, `ServerReady`,
//! `ModelReady`, `ServerMetadata`, `ModelMetadata` and `ModelInfer` — so
//! `tritonclient.grpc` and KServe's gRPC client work unchanged.
//!
//! Inputs come as typed contents (`fp32_contents`, …) or as
//! `raw_input_contents`, one little-endian buffer per input; outputs go
//! back as `raw_output_contents`, as Triton answers. Errors carry the
//! status a client expects: `INVALID_ARGUMENT` naming the input at fault,
//! `NOT_FOUND` for another model or version, `UNAVAILABLE`.

use std::sync::Arc;

use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use crate::ServeError;
use crate::deployment::{Data, Deployment, Input, Request, TensorMeta};
use crate::log::Channel;
use crate::oip::{bad, binary_bytes, check, from_binary, output_datatype};

/// The code generated from `proto/inference.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::model_infer_request::InferInputTensor;
use proto::model_infer_response::InferOutputTensor;
use proto::model_metadata_response::TensorMetadata;
use proto::*;

/// The gRPC service of one deployment, for a tonic server.
pub fn service(deployment: Arc<Deployment>) -> GrpcInferenceServiceServer<Oip> {
    GrpcInferenceServiceServer::new(Oip { deployment })
        // A batch of 64 rows × 30 features is far below this; a client
        // sending a big batch gets a clear RESOURCE_EXHAUSTED, not a cut.
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// The service: every call answered from the deployment.
pub struct Oip {
    deployment: Arc<Deployment>,
}

fn status(error: &ServeError) -> Status {
    let message = error.to_string();
    match error {
        ServeError::Request(_) | ServeError::Spec(_) => Status::invalid_argument(message),
        ServeError::NotFound(_) => Status::not_found(message),
        ServeError::Model(_) | ServeError::Unavailable(_) => Status::unavailable(message),
        ServeError::Internal(_) => Status::internal(message),
    }
}

/// Protobuf has no absent string: an empty one was not given (an empty
/// version means the one serving now).
fn given(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

fn tensors(metas: Vec<TensorMeta>) -> Vec<TensorMetadata> {
    metas
        .into_iter()
        .map(|t| TensorMetadata {
            name: t.name,
            datatype: t.datatype,
            shape: t.shape,
        })
        .collect()
}

/// An input's values from its typed contents.
fn from_contents(
    name: &str,
    datatype: &str,
    contents: InferTensorContents,
) -> Result<Data, ServeError> {
    let numbers = |values: Vec<f64>| Ok(Data::Num(values));
    match datatype {
        "FP32" => numbers(contents.fp32_contents.into_iter().map(f64::from).collect()),
        "FP64" => numbers(contents.fp64_contents),
        "INT64" => numbers(
            contents
                .int64_contents
                .into_iter()
                .map(|v| v as f64)
                .collect(),
        ),
        "INT8" | "INT16" | "INT32" => {
            numbers(contents.int_contents.into_iter().map(f64::from).collect())
        }
        "UINT64" => numbers(
            contents
                .uint64_contents
                .into_iter()
                .map(|v| v as f64)
                .collect(),
        ),
        "UINT8" | "UINT16" | "UINT32" => {
            numbers(contents.uint_contents.into_iter().map(f64::from).collect())
        }
        "BOOL" => numbers(
            contents
                .bool_contents
                .into_iter()
                .map(|b| f64::from(u8::from(b)))
                .collect(),
        ),
        "BYTES" => contents
            .bytes_contents
            .into_iter()
            .map(|b| {
                String::from_utf8(b)
                    .map_err(|_| bad(format!("input `{name}`: an element is not UTF-8")))
            })
            .collect::<Result<_, _>>()
            .map(Data::Text),
        other => Err(bad(format!(
            "input `{name}`: datatype `{other}` is not one Weir reads"
        ))),
    }
}

/// A `ModelInferRequest` as the deployment takes it.
pub fn decode(request: ModelInferRequest) -> Result<Request, ServeError> {
    let raw = request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(bad(format!(
            "{} inputs, but {} raw_input_contents: give one buffer per input, or none",
            request.inputs.len(),
            raw.len()
        )));
    }
    let mut raw = raw.into_iter();
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for InferInputTensor {
        name,
        datatype,
        shape,
        contents,
        ..
    } in request.inputs
    {
        let dims = shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                bad(format!(
                    "input `{name}`: shape {shape:?} has a negative dimension"
                ))
            })?;
        let data = match (raw.next(), contents) {
            (Some(bytes), None) => from_binary(&name, &datatype, &bytes)?,
            (Some(_), Some(_)) => {
                return Err(bad(format!(
                    "input `{name}` has both contents and raw_input_contents"
                )));
            }
            (None, Some(contents)) => from_contents(&name, &datatype, contents)?,
            (None, None) => return Err(bad(format!("input `{name}` has no data"))),
        };
        let count: usize = dims.iter().product();
        if data.len() != count {
            return Err(bad(format!(
                "input `{name}`: shape {dims:?} holds {count} values, the data has {}",
                data.len()
            )));
        }
        inputs.push(Input {
            name,
            shape: dims,
            data,
        });
    }
    Ok(Request {
        id: given(&request.id).map(str::to_string),
        inputs,
        outputs: request.outputs.into_iter().map(|o| o.name).collect(),
        route_key: None,
    })
}

#[tonic::async_trait]
impl GrpcInferenceService for Oip {
    async fn server_live(
        &self,
        _: GrpcRequest<ServerLiveRequest>,
    ) -> Result<GrpcResponse<ServerLiveResponse>, Status> {
        Ok(GrpcResponse::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: GrpcRequest<ServerReadyRequest>,
    ) -> Result<GrpcResponse<ServerReadyResponse>, Status> {
        Ok(GrpcResponse::new(ServerReadyResponse { ready: true }))
    }

    async fn model_ready(
        &self,
        request: GrpcRequest<ModelReadyRequest>,
    ) -> Result<GrpcResponse<ModelReadyResponse>, Status> {
        let request = request.into_inner();
        check(&self.deployment, &request.name, given(&request.version)).map_err(|e| status(&e))?;
        Ok(GrpcResponse::new(ModelReadyResponse { ready: true }))
    }

    async fn server_metadata(
        &self,
        _: GrpcRequest<ServerMetadataRequest>,
    ) -> Result<GrpcResponse<ServerMetadataResponse>, Status> {
        Ok(GrpcResponse::new(ServerMetadataResponse {
            name: "weir".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec![],
        }))
    }

    async fn model_metadata(
        &self,
        request: GrpcRequest<ModelMetadataRequest>,
    ) -> Result<GrpcResponse<ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        let deployment = &self.deployment;
        check(deployment, &request.name, given(&request.version)).map_err(|e| status(&e))?;
        let metadata = deployment.metadata();
        Ok(GrpcResponse::new(ModelMetadataResponse {
            name: deployment.name().into(),
            versions: vec![deployment.version().to_string()],
            platform: "onnxruntime_onnx".into(),
            inputs: tensors(metadata.inputs),
            outputs: tensors(metadata.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: GrpcRequest<ModelInferRequest>,
    ) -> Result<GrpcResponse<ModelInferResponse>, Status> {
        // A sticky experiment's header arrives as metadata (lower case).
        let route_key = self.deployment.sticky_header().and_then(|name| {
            request
                .metadata()
                .get(name.to_ascii_lowercase().as_str())
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        });
        let request = request.into_inner();
        let deployment = &self.deployment;
        check(
            deployment,
            &request.model_name,
            given(&request.model_version),
        )
        .map_err(|e| status(&e))?;
        let mut request = decode(request).map_err(|e| status(&e))?;
        request.route_key = route_key;
        let response = deployment
            .infer(request, Channel::Grpc)
            .await
            .map_err(|e| status(&e))?;
        let mut outputs = Vec::with_capacity(response.outputs.len());
        let mut raw = Vec::with_capacity(response.outputs.len());
        for output in &response.outputs {
            outputs.push(InferOutputTensor {
                name: output.name.clone(),
                datatype: output_datatype(&output.values).into(),
                shape: output.shape.iter().map(|&d| d as i64).collect(),
                ..Default::default()
            });
            raw.push(binary_bytes(&output.values));
        }
        Ok(GrpcResponse::new(ModelInferResponse {
            model_name: deployment.name().into(),
            model_version: response.version.to_string(),
            id: response.id,
            outputs,
            raw_output_contents: raw,
            ..Default::default()
        }))
    }
}
