//! The few fields of `onnx.proto` a signature needs. Protobuf skips the
//! fields a message does not declare, so these read any ONNX file; field
//! numbers are those of `onnx/onnx.proto`.

use prost::Message;

use crate::{OnnxError, Opset, Signature, TensorSpec};

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(int64, tag = "1")]
    ir_version: i64,
    #[prost(string, tag = "2")]
    producer_name: String,
    #[prost(string, tag = "3")]
    producer_version: String,
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    opset_import: Vec<OperatorSetIdProto>,
}

#[derive(Clone, PartialEq, Message)]
struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(int64, tag = "2")]
    version: i64,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    /// Only their names: before IR 4, initializers were listed as inputs too.
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<NamedProto>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

/// A `TensorProto`, of which only the name (field 8) is read.
#[derive(Clone, PartialEq, Message)]
struct NamedProto {
    #[prost(string, tag = "8")]
    name: String,
}

#[derive(Clone, PartialEq, Message)]
struct ValueInfoProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    r#type: Option<TypeProto>,
}

/// `TypeProto`'s `value` is a oneof; one optional field per case reads it.
#[derive(Clone, PartialEq, Message)]
struct TypeProto {
    #[prost(message, optional, tag = "1")]
    tensor_type: Option<TensorTypeProto>,
    #[prost(bytes = "vec", optional, tag = "4")]
    sequence_type: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "5")]
    map_type: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    elem_type: i32,
    #[prost(message, optional, tag = "2")]
    shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, Message)]
struct Dimension {
    #[prost(int64, optional, tag = "1")]
    dim_value: Option<i64>,
}

/// `TensorProto.DataType`.
fn element_type(code: i32) -> &'static str {
    match code {
        1 => "float32",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "float64",
        12 => "uint32",
        13 => "uint64",
        16 => "bfloat16",
        _ => "unknown",
    }
}

fn spec(value: &ValueInfoProto) -> TensorSpec {
    let (dtype, shape) = match &value.r#type {
        Some(TypeProto {
            tensor_type: Some(tensor),
            ..
        }) => (
            element_type(tensor.elem_type),
            tensor
                .shape
                .iter()
                .flat_map(|s| &s.dim)
                .map(|d| d.dim_value.filter(|&v| v > 0).unwrap_or(-1))
                .collect(),
        ),
        Some(TypeProto {
            sequence_type: Some(_),
            ..
        }) => ("sequence", vec![]),
        Some(TypeProto {
            map_type: Some(_), ..
        }) => ("map", vec![]),
        _ => ("unknown", vec![]),
    };
    TensorSpec {
        name: value.name.clone(),
        dtype: dtype.to_string(),
        shape,
    }
}

pub(crate) fn signature(bytes: &[u8]) -> Result<Signature, OnnxError> {
    let model = ModelProto::decode(bytes).map_err(|e| OnnxError::Format(e.to_string()))?;
    let graph = model
        .graph
        .ok_or_else(|| OnnxError::Format("the file has no graph".into()))?;
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|i| i.name.as_str()).collect();
    let producer = [model.producer_name, model.producer_version]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let mut opsets: Vec<Opset> = model
        .opset_import
        .into_iter()
        .map(|o| Opset {
            domain: o.domain,
            version: o.version,
        })
        .collect();
    opsets.dedup();
    Ok(Signature {
        inputs: graph
            .input
            .iter()
            .filter(|i| !initializers.contains(i.name.as_str()))
            .map(spec)
            .collect(),
        outputs: graph.output.iter().map(spec).collect(),
        opsets,
        ir_version: model.ir_version,
        producer,
    })
}
