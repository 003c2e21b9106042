//! ONNX models, the one inference path Weir has: what a model file
//! declares (its signature, opsets, producer — read from the file itself),
//! and running it with ONNX Runtime on a matrix of features.
//!
//! Training checks its exported models with it, evaluation scores with it
//! and serving answers with it, so a model is judged by the same code that
//! will run it.
//!
//! ONNX Runtime is a shared library loaded at run time: the one given to
//! [`init`], else `WEIR_ORT_LIB`, else the one `weir setup` (or `cargo
//! xtask setup`) unpacked into the cache.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::session::Session;
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};

mod proto;

/// What can go wrong with a model.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// ONNX Runtime could not be loaded.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    /// The file is not an ONNX model.
    #[error("not an ONNX model: {0}")]
    Format(String),
    /// The model refused the input, or failed running.
    #[error("inference: {0}")]
    Inference(String),
}

/// What a model file declares (plain data, in the catalog: the metadata
/// crate stores it without ONNX Runtime).
pub use weir_catalog::{Opset, Signature, TensorSpec};

/// Reads the signature of the model in `bytes` (its protobuf).
pub fn read_signature(bytes: &[u8]) -> Result<Signature, OnnxError> {
    proto::signature(bytes)
}

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime from `library`, or when `None` from `WEIR_ORT_LIB` or
/// where `weir setup` installs it.
/// Only the first call loads; later ones return its outcome.
pub fn init(library: Option<&Path>) -> Result<(), OnnxError> {
    let outcome = ENVIRONMENT.get_or_init(|| {
        let path: PathBuf = match library {
            Some(path) => path.to_path_buf(),
            None => weir_setup::onnxruntime_library().map_err(|e| e.to_string())?,
        };
        if !path.is_file() {
            return Err(format!("{}: no such library", path.display()));
        }
        ort::init_from(&path)
            .map_err(|e| format!("loading {}: {e}", path.display()))?
            .with_name("weir")
            .build()
            .map_err(|e| format!("starting {}: {e}", path.display()))
    });
    outcome
        .as_ref()
        .map(|_| ())
        .map_err(|e| OnnxError::Runtime(e.clone()))
}

/// How a model's session runs.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Threads for one operator; ONNX Runtime's default (one per core)
    /// when `None`.
    pub intra_threads: Option<usize>,
}

/// The values of one output.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// `float32`.
    F32(Vec<f32>),
    /// `float64`.
    F64(Vec<f64>),
    /// `int64`.
    I64(Vec<i64>),
    /// `string`.
    Str(Vec<String>),
}

/// One output of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Its name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub values: Values,
}

impl Output {
    /// The values as `f64`, if they are numbers.
    pub fn as_f64(&self) -> Option<Vec<f64>> {
        match &self.values {
            Values::F32(v) => Some(v.iter().map(|&x| x as f64).collect()),
            Values::F64(v) => Some(v.clone()),
            Values::I64(v) => Some(v.iter().map(|&x| x as f64).collect()),
            Values::Str(_) => None,
        }
    }

    /// Values per row (the product of the dimensions after the first).
    pub fn width(&self) -> usize {
        self.shape.iter().skip(1).product::<usize>().max(1)
    }
}

/// The outputs of a run, in the model's order.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The outputs.
    pub outputs: Vec<Output>,
}

impl Prediction {
    /// The model's scores: `rows × width` numbers — a classifier's class
    /// probabilities (the `probabilities` output of skl2onnx and
    /// onnxmltools), or a regressor's value. That is the first
    /// floating-point output, preferring one named `probabilities`.
    pub fn scores(&self) -> Option<(Vec<f64>, usize)> {
        scores(&self.outputs)
    }
}

/// The scores among `outputs`: see [`Prediction::scores`].
pub fn scores(outputs: &[Output]) -> Option<(Vec<f64>, usize)> {
    let float = |o: &&Output| matches!(o.values, Values::F32(_) | Values::F64(_));
    let output = outputs
        .iter()
        .filter(float)
        .find(|o| o.name == "probabilities")
        .or_else(|| outputs.iter().find(float))?;
    Some((output.as_f64()?, output.width()))
}

/// A loaded model.
pub struct Model {
    /// `Session::run` takes `&mut self`.
    session: Mutex<Session>,
    signature: Signature,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("signature", &self.signature)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Loads the model in `bytes` (ONNX Runtime from `WEIR_ORT_LIB` if it
    /// is not loaded yet).
    pub fn load(bytes: &[u8], options: &SessionOptions) -> Result<Self, OnnxError> {
        init(None)?;
        let signature = read_signature(bytes)?;
        let environment = match ENVIRONMENT.get() {
            Some(Ok(environment)) => environment,
            _ => return Err(OnnxError::Runtime("not loaded".into())),
        };
        let runtime = |e: ort::Error| OnnxError::Runtime(e.to_string());
        let mut builder = Session::builder(environment).map_err(runtime)?;
        if let Some(threads) = options.intra_threads {
            builder = builder
                .with_intra_threads(threads)
                .map_err(|e| OnnxError::Runtime(e.to_string()))?;
        }
        let session = builder
            .commit_from_memory(bytes)
            .map_err(|e| OnnxError::Format(e.to_string()))?;
        Ok(Self {
            session: Mutex::new(session),
            signature,
        })
    }

    /// Loads the model file at `path`.
    pub fn open(path: &Path, options: &SessionOptions) -> Result<Self, OnnxError> {
        let bytes = std::fs::read(path)
            .map_err(|e| OnnxError::Format(format!("{}: {e}", path.display())))?;
        Self::load(&bytes, options)
    }

    /// What the file declares.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// How many features a row has: the last dimension of the first input,
    /// if it is fixed.
    pub fn width(&self) -> Option<usize> {
        let input = self.signature.inputs.first()?;
        match input.shape.as_slice() {
            [_, width] if *width > 0 => Some(*width as usize),
            _ => None,
        }
    }

    /// Runs the model on `rows` rows of `features` (row-major, `rows ×
    /// width` values) given to its first input, a `float32` matrix.
    pub fn predict(&self, features: &[f32], rows: usize) -> Result<Prediction, OnnxError> {
        let mut session = self.session.lock().expect("session lock");
        self.run(&mut session, features, rows)
    }

    /// [`Model::predict`], unless another thread is running the session
    /// now: then `None`, at once.
    pub fn try_predict(
        &self,
        features: &[f32],
        rows: usize,
    ) -> Option<Result<Prediction, OnnxError>> {
        let mut session = self.session.try_lock().ok()?;
        Some(self.run(&mut session, features, rows))
    }

    fn run(
        &self,
        session: &mut Session,
        features: &[f32],
        rows: usize,
    ) -> Result<Prediction, OnnxError> {
        let input = self
            .signature
            .inputs
            .first()
            .ok_or_else(|| OnnxError::Inference("the model has no input".into()))?;
        if input.dtype != "float32" {
            return Err(OnnxError::Inference(format!(
                "input `{}` is {}; Weir feeds float32 feature matrices",
                input.name, input.dtype
            )));
        }
        let width = features.len().checked_div(rows).unwrap_or(0);
        if rows * width != features.len() {
            return Err(OnnxError::Inference(format!(
                "{} values do not make {rows} rows",
                features.len()
            )));
        }
        if let Some(expected) = self.width()
            && expected != width
        {
            return Err(OnnxError::Inference(format!(
                "input `{}` takes {expected} features a row, got {width}",
                input.name
            )));
        }
        let inference = |e: ort::Error| OnnxError::Inference(e.to_string());
        let tensor = TensorRef::from_array_view(([rows, width], features)).map_err(inference)?;
        let outputs = session
            .run(ort::inputs![input.name.as_str() => tensor])
            .map_err(inference)?;
        let outputs = outputs
            .iter()
            .map(|(name, value)| output(name, &value))
            .collect::<Result<_, _>>()?;
        Ok(Prediction { outputs })
    }
}

fn output(name: &str, value: &DynValue) -> Result<Output, OnnxError> {
    let inference = |e: ort::Error| OnnxError::Inference(format!("output `{name}`: {e}"));
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(OnnxError::Inference(format!(
            "output `{name}` is not a tensor (a classifier exported with a ZipMap? \
             export with `zipmap=False`)"
        )));
    };
    let (shape, values) = match ty {
        TensorElementType::Float32 => {
            let (shape, data) = value.try_extract_tensor::<f32>().map_err(inference)?;
            (shape.to_vec(), Values::F32(data.to_vec()))
        }
        TensorElementType::Float64 => {
            let (shape, data) = value.try_extract_tensor::<f64>().map_err(inference)?;
            (shape.to_vec(), Values::F64(data.to_vec()))
        }
        TensorElementType::Int64 => {
            let (shape, data) = value.try_extract_tensor::<i64>().map_err(inference)?;
            (shape.to_vec(), Values::I64(data.to_vec()))
        }
        TensorElementType::Int32 => {
            let (shape, data) = value.try_extract_tensor::<i32>().map_err(inference)?;
            let data = data.iter().map(|&x| x as i64).collect();
            (shape.to_vec(), Values::I64(data))
        }
        TensorElementType::String => {
            let (shape, data) = value.try_extract_strings().map_err(inference)?;
            (shape.to_vec(), Values::Str(data))
        }
        other => {
            return Err(OnnxError::Inference(format!(
                "output `{name}` has element type {other:?}, which Weir does not read"
            )));
        }
    };
    Ok(Output {
        name: name.to_string(),
        shape: shape.iter().map(|&d| d.max(0) as usize).collect(),
        values,
    })
}
