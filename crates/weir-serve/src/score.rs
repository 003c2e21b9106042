//! Batch scoring: a Parquet (or CSV) file in, the same rows with the
//! model's outputs added out (Parquet), streaming through the file in
//! chunks.
//!
//! The reader hands chunks of `chunk_rows` rows to the runner pool (one
//! ONNX Runtime session per thread), keeping a few chunks per thread in
//! flight, and writes the scored chunks in the input's order. Memory stays
//! at a few chunks whatever the file's size.
//!
//! Outputs become columns: a one-value-per-row output keeps its name
//! (`label`); a wider one gets a column per value (`probabilities_0`,
//! `probabilities_1`, or the class names when the model has them).

use std::collections::VecDeque;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    Array, ArrayRef, Float32Array, Float64Array, Int64Array, RecordBatch, StringArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;
use weir_dataflow::batch::with_columns;
use weir_onnx::{Output, Values};

use crate::ServeError;
use crate::runner::{ModelSet, Runner, Scored};
use crate::spec::Batching;

/// A registered model (`name@alias`, `name@version`) ready to score: its
/// sessions batched as `batching` says, the columns it takes and a
/// classifier's classes.
pub async fn load_registered(
    bus: &weir_bus::Bus,
    artifacts: weir_meta::artifacts::ArtifactStore,
    model: &str,
    batching: Batching,
) -> Result<(ModelSet, Vec<String>, Vec<String>), ServeError> {
    let registry = crate::Registry::follow(bus, artifacts).await?;
    let spec = crate::DeploymentSpec {
        batching,
        ..crate::DeploymentSpec::single("score", model)
    };
    let loaded = async {
        let resolved = registry.resolve_all(&spec)?;
        let models = registry.load(&spec, &resolved).await?;
        let info = resolved[0].info.clone();
        Ok((models, info.features, info.classes))
    }
    .await;
    registry.close().await;
    loaded
}

/// An ONNX file ready to score: it takes the columns `features`, in its
/// input's order.
pub fn load_file(
    path: &Path,
    features: Vec<String>,
    batching: &Batching,
) -> Result<(ModelSet, Vec<String>, Vec<String>), ServeError> {
    if features.is_empty() {
        return Err(ServeError::Request(format!(
            "{}: name the input's columns, in the model's order, for an ONNX file",
            path.display()
        )));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| ServeError::Model(format!("reading {}: {e}", path.display())))?;
    let name = path.display().to_string();
    let model = crate::runner::LoadedModel::load(name, 0, 1.0, &bytes, batching)?;
    let models = ModelSet {
        members: vec![model],
        combine: Default::default(),
        stacker: None,
    };
    Ok((models, features, Vec::new()))
}

/// How to score.
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    /// Rows per chunk.
    pub chunk_rows: usize,
    /// Runner threads (sessions).
    pub threads: usize,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        Self {
            chunk_rows: 10_000,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// What a scoring did.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreReport {
    /// Rows scored.
    pub rows: usize,
    /// Chunks.
    pub chunks: usize,
    /// Wall time, seconds.
    pub seconds: f64,
}

fn failed(what: &str, error: impl std::fmt::Display) -> ServeError {
    ServeError::Request(format!("{what}: {error}"))
}

/// The `features` columns of `batch` as a row-major `f32` matrix (nulls
/// become NaN).
pub fn matrix(batch: &RecordBatch, features: &[String]) -> Result<Vec<f32>, ServeError> {
    let rows = batch.num_rows();
    let width = features.len();
    let mut matrix = vec![0f32; rows * width];
    for (j, name) in features.iter().enumerate() {
        let column = batch.column_by_name(name).ok_or_else(|| {
            ServeError::Request(format!(
                "no column `{name}` (the model takes {})",
                features.join(", ")
            ))
        })?;
        // Float columns are read as they are; others are cast first.
        let mut put = |i: usize, value: f32| matrix[i * width + j] = value;
        if let Some(values) = column.as_any().downcast_ref::<Float32Array>() {
            for (i, &v) in values.values().iter().enumerate() {
                put(i, if values.is_null(i) { f32::NAN } else { v });
            }
            continue;
        }
        let values = cast(column, &DataType::Float64)
            .map_err(|e| failed(&format!("column `{name}` is not numeric"), e))?;
        let values = values
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("cast to Float64");
        for (i, &v) in values.values().iter().enumerate() {
            put(
                i,
                if values.is_null(i) {
                    f32::NAN
                } else {
                    v as f32
                },
            );
        }
    }
    Ok(matrix)
}

/// The columns an output becomes.
fn columns(output: &Output, rows: usize, classes: &[String]) -> Vec<(String, ArrayRef)> {
    let width = crate::runner::output_len(&output.values)
        .checked_div(rows)
        .unwrap_or(1)
        .max(1);
    let name = |k: usize| {
        if width == 1 {
            output.name.clone()
        } else if classes.len() == width {
            format!("{}_{}", output.name, classes[k])
        } else {
            format!("{}_{k}", output.name)
        }
    };
    (0..width)
        .map(|k| {
            let pick = |i: usize| i * width + k;
            let array: ArrayRef = match &output.values {
                Values::F32(v) => Arc::new(Float32Array::from_iter_values(
                    (0..rows).map(|i| v[pick(i)]),
                )),
                Values::F64(v) => Arc::new(Float64Array::from_iter_values(
                    (0..rows).map(|i| v[pick(i)]),
                )),
                Values::I64(v) => {
                    Arc::new(Int64Array::from_iter_values((0..rows).map(|i| v[pick(i)])))
                }
                Values::Str(v) => Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| &v[pick(i)]),
                )),
            };
            (name(k), array)
        })
        .collect()
}

/// Scores `input` into `output` with `models`, whose input columns are
/// `features` and classes `classes`.
pub async fn score(
    models: ModelSet,
    features: &[String],
    classes: &[String],
    input: &Path,
    output: &Path,
    options: &ScoreOptions,
) -> Result<ScoreReport, ServeError> {
    let started = Instant::now();
    let reader = weir_features::snapshot::read_table_file(input)
        .map_err(|e| failed(&input.display().to_string(), e))?;
    let batching = Batching {
        max_batch: options.chunk_rows,
        max_wait_us: 0,
        runners: options.threads,
        intra_threads: 1,
    };
    let runner = Arc::new(Runner::start(models, features.len(), &batching));
    let mut in_flight: VecDeque<(
        RecordBatch,
        tokio::task::JoinHandle<Result<Scored, ServeError>>,
    )> = VecDeque::new();
    let mut writer: Option<ArrowWriter<File>> = None;
    let mut report = ScoreReport {
        rows: 0,
        chunks: 0,
        seconds: 0.0,
    };
    let mut write = |batch: RecordBatch,
                     scored: Scored,
                     writer: &mut Option<ArrowWriter<File>>|
     -> Result<(), ServeError> {
        let rows = batch.num_rows();
        let added = scored.outputs.iter().flat_map(|out| {
            columns(out, rows, classes)
                .into_iter()
                .map(|(name, array)| (Field::new(name, array.data_type().clone(), false), array))
        });
        let scored =
            with_columns(&batch, added).map_err(|e| ServeError::Internal(e.to_string()))?;
        if writer.is_none() {
            let file =
                File::create(output).map_err(|e| failed(&output.display().to_string(), e))?;
            *writer = Some(
                // Scores and features are rarely repeated values:
                // dictionary encoding would be tried and dropped per page.
                ArrowWriter::try_new(
                    file,
                    scored.schema(),
                    Some(
                        WriterProperties::builder()
                            .set_dictionary_enabled(false)
                            .build(),
                    ),
                )
                .map_err(|e| failed(&output.display().to_string(), e))?,
            );
        }
        writer
            .as_mut()
            .expect("created")
            .write(&scored)
            .map_err(|e| failed(&output.display().to_string(), e))?;
        report.rows += rows;
        report.chunks += 1;
        Ok(())
    };
    let depth = options.threads * 2;
    let chunks = reader.flat_map(|batch| match batch {
        Ok(batch) => (0..batch.num_rows())
            .step_by(options.chunk_rows.max(1))
            .map(|start| {
                let n = options.chunk_rows.min(batch.num_rows() - start);
                Ok(batch.slice(start, n))
            })
            .collect::<Vec<_>>(),
        Err(error) => vec![Err(error)],
    });
    for batch in chunks {
        let batch = batch.map_err(|e| failed(&input.display().to_string(), e))?;
        let matrix = matrix(&batch, features)?;
        let rows = batch.num_rows();
        let runner = runner.clone();
        let task = tokio::spawn(async move { runner.predict(matrix, rows).await });
        in_flight.push_back((batch, task));
        while in_flight.len() >= depth {
            let (batch, task) = in_flight.pop_front().expect("in flight");
            let scored = task
                .await
                .map_err(|e| ServeError::Internal(e.to_string()))??;
            write(batch, scored, &mut writer)?;
        }
    }
    while let Some((batch, task)) = in_flight.pop_front() {
        let scored = task
            .await
            .map_err(|e| ServeError::Internal(e.to_string()))??;
        write(batch, scored, &mut writer)?;
    }
    match writer {
        Some(writer) => {
            writer
                .close()
                .map_err(|e| failed(&output.display().to_string(), e))?;
        }
        None => return Err(ServeError::Request(format!("{}: no rows", input.display()))),
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
