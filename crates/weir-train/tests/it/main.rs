//! Training and evaluation against a real broker, real Parquet files, the
//! test Python environment's scikit-learn, LightGBM and ONNX converters, and
//! ONNX Runtime (`WEIR_PYTHON`, `WEIR_ORT_LIB`: `cargo xtask test` sets
//! both; a test fails, never skips, without them).

mod evaluate;
mod metrics;
mod train;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use weir_features::datasets::{Datasets, Registration};
use weir_meta::Tracker;
use weir_meta::artifacts::ArtifactStore;

/// A broker, a bus, a scratch directory (through `Deref`), a tracker and
/// the datasets.
pub struct Platform {
    /// Runs, models, artifacts.
    pub tracker: Tracker,
    /// Dataset versions, as last loaded.
    pub datasets: Datasets,
    harness: weir_test_support::Harness,
}

impl std::ops::Deref for Platform {
    type Target = weir_test_support::Harness;

    fn deref(&self) -> &Self::Target {
        &self.harness
    }
}

impl Platform {
    /// Starts it all.
    pub async fn start() -> Self {
        python();
        let harness = weir_test_support::Harness::start().await;
        let artifacts = harness.dir.path().join("artifacts");
        let store = ArtifactStore::open(artifacts.to_str().unwrap()).unwrap();
        let tracker = Tracker::open(&harness.bus, store).await.unwrap();
        let datasets = Datasets::load(&harness.bus).await.unwrap();
        Self {
            tracker,
            datasets,
            harness,
        }
    }

    /// What jobs work with.
    pub fn workspace(&self) -> weir_train::Workspace<'_> {
        weir_train::Workspace {
            tracker: &self.tracker,
            datasets: &self.datasets,
            scratch: self.dir.path(),
            cache: None,
        }
    }

    /// Registers `path` as dataset `name` (keyed by `user_id`) and reloads
    /// the datasets.
    pub async fn register(&mut self, name: &str, path: &Path) -> String {
        let (version, _) = weir_features::datasets::register(
            &self.bus,
            &self.datasets,
            Registration {
                name: name.into(),
                paths: vec![path.to_path_buf()],
                entity: vec!["user_id".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
        self.datasets = Datasets::load(&self.bus).await.unwrap();
        format!("{}@{}", version.name, version.version)
    }
}

/// The test Python environment.
pub fn python() -> PathBuf {
    let python = std::env::var_os("WEIR_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        panic!("WEIR_PYTHON is not set: run the tests with `cargo xtask test`, or `cargo xtask setup --python test` and point WEIR_PYTHON at it")
    });
    assert!(python.exists(), "{} does not exist", python.display());
    assert!(
        std::env::var_os("WEIR_ORT_LIB").is_some(),
        "WEIR_ORT_LIB is not set: `cargo xtask test` sets it"
    );
    python
}

/// `rows` rows: a key, a time, five numeric features (`x0`, `x1` decide
/// the label, `x2`..`x4` are noise, `x3` has nulls), a segment, a boolean
/// label `clicked` and a numeric target `spend`.
pub fn generate(path: &Path, rows: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut columns: Vec<Vec<f64>> = vec![Vec::new(); 5];
    let (mut clicked, mut spend, mut segment, mut users, mut times) =
        (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..rows {
        let x: Vec<f64> = (0..5).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
        let noise: f64 = rng.random::<f64>() - 0.5;
        clicked.push(x[0] + 0.8 * x[1] + noise > 0.0);
        spend.push(10.0 + 3.0 * x[0] - 2.0 * x[1] + noise);
        segment.push(if x[2] > 0.0 { "web" } else { "app" });
        users.push(format!("u{}", i % 97));
        times.push(1_700_000_000_000 + i as i64 * 1000);
        for (column, value) in columns.iter_mut().zip(x) {
            column.push(value);
        }
    }
    let mut fields = vec![
        Field::new("user_id", DataType::Utf8, false),
        Field::new("event_timestamp", DataType::Int64, false),
    ];
    let mut arrays: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(users)),
        Arc::new(Int64Array::from(times)),
    ];
    for (j, column) in columns.into_iter().enumerate() {
        fields.push(Field::new(format!("x{j}"), DataType::Float64, true));
        let values: Vec<Option<f64>> = column
            .into_iter()
            .enumerate()
            .map(|(i, v)| (j != 3 || i % 11 != 0).then_some(v))
            .collect();
        arrays.push(Arc::new(Float64Array::from(values)));
    }
    fields.push(Field::new("segment", DataType::Utf8, false));
    arrays.push(Arc::new(StringArray::from(segment)));
    fields.push(Field::new("clicked", DataType::Boolean, false));
    arrays.push(Arc::new(BooleanArray::from(clicked)));
    fields.push(Field::new("spend", DataType::Float64, false));
    arrays.push(Arc::new(Float64Array::from(spend)));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// Runs a Python script (from a string) with the test environment; returns
/// its stdout.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}
