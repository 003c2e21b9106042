//! A dataset in memory (one Arrow batch), the feature matrix and the labels
//! read from it, and its split into training, validation and test parts.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{cast, concat_batches, take_record_batch};
use arrow::datatypes::{DataType, Float32Type, Float64Type};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;
use rand::SeedableRng as _;
use rand::seq::SliceRandom as _;

use crate::TrainError;
use crate::spec::{Split, Task};

/// A table read whole.
#[derive(Debug, Clone)]
pub struct Table {
    /// Its rows.
    pub batch: RecordBatch,
    /// Where it came from, for messages.
    pub origin: String,
}

/// What a model predicts, row by row.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Class indexes into `classes` (`None`: no label, or a class the
    /// model does not know).
    Classes {
        /// The classes, in the order of the model's scores.
        classes: Vec<String>,
        /// Each row's class.
        index: Vec<Option<usize>>,
    },
    /// Numbers (`None`: no label).
    Values(Vec<Option<f64>>),
}

impl Table {
    /// Reads a Parquet or CSV file.
    pub fn read_file(path: &Path) -> Result<Self, TrainError> {
        let origin = path.display().to_string();
        let batches = weir_features::snapshot::read_table_file(path)
            .map_err(|e| TrainError::io(&origin, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TrainError::io(&origin, e))?;
        let Some(first) = batches.first() else {
            return Err(TrainError::Invalid(format!("{origin}: no rows")));
        };
        let batch =
            concat_batches(&first.schema(), &batches).map_err(|e| TrainError::io(&origin, e))?;
        Ok(Self { batch, origin })
    }

    /// Reads Parquet or CSV files as one table (`origin` names it in messages).
    pub fn read_files(files: &[std::path::PathBuf], origin: &str) -> Result<Self, TrainError> {
        let tables = files
            .iter()
            .map(|f| Self::read_file(f))
            .collect::<Result<Vec<_>, _>>()?;
        let schema = match tables.first() {
            Some(t) => t.batch.schema(),
            None => return Err(TrainError::Invalid(format!("{origin}: no files"))),
        };
        let batches: Vec<&RecordBatch> = tables.iter().map(|t| &t.batch).collect();
        let batch = concat_batches(&schema, batches)
            .map_err(|e| TrainError::Invalid(format!("{origin}: its files differ: {e}")))?;
        Ok(Self {
            batch,
            origin: origin.to_string(),
        })
    }

    /// Its number of rows.
    pub fn rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// A column by name; the error lists the columns there are.
    pub fn column(&self, name: &str) -> Result<&ArrayRef, TrainError> {
        self.batch.column_by_name(name).ok_or_else(|| {
            let names: Vec<&str> = self
                .batch
                .schema_ref()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            TrainError::Invalid(format!(
                "{}: no column `{name}` (columns: {})",
                self.origin,
                names.join(", ")
            ))
        })
    }

    /// The default features: numeric and boolean columns, but `skip`,
    /// time columns and the label.
    pub fn default_features(&self, label: &str, skip: &[String]) -> Vec<String> {
        self.batch
            .schema_ref()
            .fields()
            .iter()
            .filter(|f| f.name() != label && !skip.contains(f.name()))
            .filter(|f| f.data_type().is_numeric() || f.data_type() == &DataType::Boolean)
            .map(|f| f.name().clone())
            .collect()
    }

    /// The features of `rows` as a row-major `f32` matrix; nulls are NaN
    /// (which the tree runtimes read as missing).
    pub fn features(&self, features: &[String], rows: &[usize]) -> Result<Vec<f32>, TrainError> {
        let width = features.len();
        let mut matrix = vec![f32::NAN; rows.len() * width];
        for (j, name) in features.iter().enumerate() {
            let column = self.column(name)?;
            let data_type = column.data_type();
            // (A cast would turn text into nulls, not refuse it.)
            if !data_type.is_numeric() && data_type != &DataType::Boolean {
                return Err(TrainError::Invalid(format!(
                    "{}: feature `{name}` is {data_type}, not a number",
                    self.origin
                )));
            }
            let values =
                cast(column, &DataType::Float32).map_err(|e| TrainError::io(&self.origin, e))?;
            let values = arrow::array::cast::as_primitive_array::<Float32Type>(&values);
            for (i, &row) in rows.iter().enumerate() {
                if values.is_valid(row) {
                    matrix[i * width + j] = values.value(row);
                }
            }
        }
        Ok(matrix)
    }

    /// The task a label column implies: text, boolean and integers are
    /// classes, floating-point numbers regression.
    pub fn infer_task(&self, label: &str) -> Result<Task, TrainError> {
        Ok(match self.column(label)?.data_type() {
            DataType::Float16 | DataType::Float32 | DataType::Float64 => Task::Regression,
            _ => Task::Classification,
        })
    }

    /// The label of every row. For classification, `classes` are the
    /// model's (its score order); when `None` they are the distinct labels
    /// of `fit_rows`, sorted as scikit-learn sorts them (numbers by value,
    /// text by code point).
    pub fn target(
        &self,
        label: &str,
        task: Task,
        classes: Option<&[String]>,
        fit_rows: &[usize],
    ) -> Result<Target, TrainError> {
        let column = self.column(label)?;
        if task == Task::Regression {
            // (A cast would turn text into nulls, not refuse it.)
            if !column.data_type().is_numeric() {
                return Err(TrainError::Invalid(format!(
                    "{}: label `{label}` is {}, not a number a regression can predict",
                    self.origin,
                    column.data_type()
                )));
            }
            let values =
                cast(column, &DataType::Float64).map_err(|e| TrainError::io(&self.origin, e))?;
            let values = arrow::array::cast::as_primitive_array::<Float64Type>(&values);
            return Ok(Target::Values(
                (0..values.len())
                    .map(|i| values.is_valid(i).then(|| values.value(i)))
                    .collect(),
            ));
        }
        let text = class_names(column)
            .map_err(|e| TrainError::Invalid(format!("{}: label `{label}`: {e}", self.origin)))?;
        let classes: Vec<String> = match classes {
            Some(classes) => classes.to_vec(),
            None => {
                let mut seen: Vec<String> =
                    fit_rows.iter().filter_map(|&r| text[r].clone()).collect();
                seen.sort_by(|a, b| match (a.parse::<f64>(), b.parse::<f64>()) {
                    (Ok(x), Ok(y)) if column.data_type().is_numeric() => x.total_cmp(&y),
                    _ => a.cmp(b),
                });
                seen.dedup();
                seen
            }
        };
        let index = text
            .iter()
            .map(|t| t.as_ref().and_then(|t| classes.iter().position(|c| c == t)))
            .collect();
        Ok(Target::Classes { classes, index })
    }

    /// Splits the rows with a label: training, validation, test (row
    /// indexes, in order for a time split).
    pub fn split(&self, split: &Split, labelled: &[usize]) -> Result<[Vec<usize>; 3], TrainError> {
        split.check()?;
        let mut rows = labelled.to_vec();
        match split {
            Split::Random { seed, .. } => {
                let mut rng = rand::rngs::StdRng::seed_from_u64(*seed);
                rows.shuffle(&mut rng);
            }
            Split::Time { column, .. } => {
                let times = cast(self.column(column)?, &DataType::Float64).map_err(|_| {
                    TrainError::Invalid(format!(
                        "{}: split column `{column}` is not a time or a number",
                        self.origin
                    ))
                })?;
                let times = arrow::array::cast::as_primitive_array::<Float64Type>(&times);
                // Rows without a time go first: they cannot be shown to be late.
                let time = |r: usize| times.is_valid(r).then(|| times.value(r));
                rows.sort_by(|&a, &b| match (time(a), time(b)) {
                    (Some(x), Some(y)) => x.total_cmp(&y),
                    (x, y) => x.is_some().cmp(&y.is_some()),
                });
            }
        }
        let (validation, test) = split.shares();
        let n = rows.len();
        let n_test = (n as f64 * test).round() as usize;
        let n_validation = (n as f64 * validation).round() as usize;
        let n_train = n.saturating_sub(n_test + n_validation);
        if n_train == 0 {
            return Err(TrainError::Invalid(format!(
                "{}: {n} labelled rows leave none to train on",
                self.origin
            )));
        }
        let test_rows = rows.split_off(n_train + n_validation);
        let validation_rows = rows.split_off(n_train);
        Ok([rows, validation_rows, test_rows])
    }

    /// Writes `rows` of `columns` as Parquet.
    pub fn write_parquet(
        &self,
        path: &Path,
        columns: &[String],
        rows: &[usize],
    ) -> Result<(), TrainError> {
        let mut indices = Vec::with_capacity(columns.len());
        for column in columns {
            self.column(column)?;
            indices.push(self.batch.schema_ref().index_of(column).expect("checked"));
        }
        let projected = self
            .batch
            .project(&indices)
            .map_err(|e| TrainError::io(&self.origin, e))?;
        let take = UInt32Array::from_iter_values(rows.iter().map(|&r| r as u32));
        let part =
            take_record_batch(&projected, &take).map_err(|e| TrainError::io(&self.origin, e))?;
        let file = std::fs::File::create(path).map_err(|e| TrainError::io(path.display(), e))?;
        // No dictionaries: features are mostly distinct numbers, for which
        // the writer builds a dictionary only to give it up, and the file
        // is scratch, read once by the runtime. Measured on 100k rows × 31
        // columns: the three parts written in 22 ms rather than 127–186.
        let plain = WriterProperties::builder()
            .set_dictionary_enabled(false)
            .build();
        let mut writer = ArrowWriter::try_new(file, part.schema(), Some(plain))
            .map_err(|e| TrainError::io(path.display(), e))?;
        writer
            .write(&part)
            .and_then(|()| writer.close().map(|_| ()))
            .map_err(|e| TrainError::io(path.display(), e))
    }

    /// Row indexes whose `column` is not null.
    pub fn valid_rows(&self, column: &str) -> Result<Vec<usize>, TrainError> {
        let column = self.column(column)?;
        Ok((0..column.len()).filter(|&i| column.is_valid(i)).collect())
    }

    /// Each row's value of `column` as text (for slices).
    pub fn text(&self, column: &str) -> Result<Vec<Option<String>>, TrainError> {
        let array = self.column(column)?;
        class_names(array)
            .map_err(|e| TrainError::Invalid(format!("{}: column `{column}`: {e}", self.origin)))
    }
}

/// A column's values as text: class names. Booleans are `0`/`1` and whole
/// floating-point numbers have no `.0`, as the runtimes see them.
fn class_names(array: &ArrayRef) -> Result<Vec<Option<String>>, String> {
    let array: ArrayRef = match array.data_type() {
        DataType::Boolean => cast(array, &DataType::UInt8).map_err(|e| e.to_string())?,
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            // Whole numbers as integers (`1`, not `1.0`).
            let values = cast(array, &DataType::Float64).map_err(|e| e.to_string())?;
            let floats = arrow::array::cast::as_primitive_array::<Float64Type>(&values);
            return Ok((0..floats.len())
                .map(|i| {
                    floats.is_valid(i).then(|| {
                        let v = floats.value(i);
                        if v.fract() == 0.0 {
                            format!("{}", v as i64)
                        } else {
                            v.to_string()
                        }
                    })
                })
                .collect());
        }
        _ => Arc::clone(array),
    };
    let text = cast(&array, &DataType::Utf8).map_err(|e| e.to_string())?;
    let text = arrow::array::cast::as_string_array(&text);
    Ok((0..text.len())
        .map(|i| text.is_valid(i).then(|| text.value(i).to_string()))
        .collect())
}
