//! What an ONNX model declares: its inputs and outputs, the opsets it
//! imports and what wrote it. `weir-onnx` reads it from the file; it is
//! stored with every registered model version.

use serde::{Deserialize, Serialize};

/// An ONNX opset a model imports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opset {
    /// Its domain (`""` is the default, `ai.onnx.ml` the classical ML
    /// operators).
    pub domain: String,
    /// Its version.
    pub version: i64,
}

/// A model's input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Its name.
    pub name: String,
    /// Its element type (`float32`, `int64`, `string`, …), or the kind of
    /// value (`sequence`, `map`) for what is not a tensor.
    pub dtype: String,
    /// Its shape; `-1` where a dimension is not fixed (the batch).
    pub shape: Vec<i64>,
}

/// What a model file declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Its inputs.
    pub inputs: Vec<TensorSpec>,
    /// Its outputs.
    pub outputs: Vec<TensorSpec>,
    /// The opsets it imports.
    pub opsets: Vec<Opset>,
    /// The ONNX IR version.
    pub ir_version: i64,
    /// What wrote it (`skl2onnx 1.20.0`).
    pub producer: String,
}

impl Signature {
    /// The default-domain opset (`ai.onnx`), the one people call "the
    /// opset".
    pub fn opset(&self) -> Option<i64> {
        self.opsets
            .iter()
            .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .max()
    }
}
