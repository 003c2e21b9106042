//! Serving against a real broker, models trained by the real training
//! runtimes (scikit-learn through skl2onnx) and run by ONNX Runtime, a
//! real RocksDB online store and Triton's official HTTP client
//! (`WEIR_PYTHON`, `WEIR_ORT_LIB`: `cargo xtask test` sets both; a test
//! fails, never skips, without them).

mod ensemble;
mod experiment;
mod observed;
mod oip;
mod scale;
mod score;
mod stream;
mod swap;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use weir_bus::{ConsumerOptions, StartFrom};
use weir_features::datasets::Datasets;
use weir_meta::Tracker;
use weir_meta::artifacts::ArtifactStore;
use weir_serve::Registry;

/// A broker, a bus, a scratch directory (through `Deref`) and a tracker.
pub struct Platform {
    /// Runs and models.
    pub tracker: Tracker,
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
        let python = python();
        assert!(python.exists(), "{} does not exist", python.display());
        let harness = weir_test_support::Harness::start().await;
        let tracker = Tracker::open(&harness.bus, self_store(harness.dir.path()))
            .await
            .unwrap();
        Self { tracker, harness }
    }

    /// The registry as serving follows it.
    pub async fn registry(&self) -> Registry {
        Registry::follow(&self.bus, self_store(self.dir.path()))
            .await
            .unwrap()
    }

    /// Trains `estimator` on `data` (label `clicked`) and registers it as
    /// a version of `name`; returns the version.
    pub async fn train(&self, name: &str, data: &Path, estimator: &str) -> u64 {
        let datasets = Datasets::load(&self.bus).await.unwrap();
        let spec = weir_train::TrainSpec {
            experiment: "serving".into(),
            name: None,
            dataset: data.display().to_string(),
            label: "clicked".into(),
            features: vec![],
            exclude: vec![],
            task: None,
            split: weir_train::spec::Split::Random {
                validation: 0.2,
                test: 0.1,
                seed: 7,
            },
            runtime: weir_train::spec::Runtime::Sklearn {
                estimator: estimator.into(),
            },
            params: Default::default(),
            register: Some(name.into()),
            tolerance: 1e-4,
            tags: Default::default(),
            distributed: None,
            export: Default::default(),
        };
        let workspace = weir_train::Workspace {
            tracker: &self.tracker,
            datasets: &datasets,
            scratch: self.dir.path(),
            cache: None,
        };
        let outcome = weir_train::train(&spec, workspace).await.unwrap();
        assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
        outcome.version.unwrap().1
    }

    /// The ONNX bytes of `name@version`.
    pub async fn model_bytes(&self, name: &str, version: u64) -> Vec<u8> {
        let path = self.tracker.read(|state| {
            let (_, v) = state.version(name, &version.to_string()).unwrap();
            v.model.as_ref().unwrap().path.clone()
        });
        self.tracker.artifact_bytes(&path).await.unwrap()
    }

    /// A read-only consumer of `topic` from its beginning to its end.
    fn reader(&self, topic: &str) -> weir_bus::Consumer {
        self.bus
            .consumer(
                &[topic],
                ConsumerOptions {
                    start: StartFrom::Beginning,
                    until_end: true,
                    read_only: true,
                    ..Default::default()
                },
            )
            .unwrap()
    }

    /// Every record of `topic`, as stored.
    pub async fn read_raw(&self, topic: &str) -> Vec<weir_bus::RawRecord> {
        let mut consumer = self.reader(topic);
        let mut out = Vec::new();
        while let Some(record) = tokio::time::timeout(Duration::from_secs(30), consumer.next_raw())
            .await
            .expect("the topic is read to its end in time")
            .unwrap()
        {
            out.push(record);
        }
        out
    }

    /// Every record of `topic` (JSON for JSON, Avro as JSON), with keys.
    pub async fn read_all(&self, topic: &str) -> Vec<(String, serde_json::Value)> {
        let mut consumer = self.reader(topic);
        let mut out = Vec::new();
        while let Some(record) = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("the topic is read to its end in time")
            .unwrap()
        {
            let key = String::from_utf8(record.key.unwrap_or_default()).unwrap();
            out.push((key, record.value.to_json()));
        }
        out
    }
}

fn self_store(dir: &Path) -> ArtifactStore {
    ArtifactStore::open(dir.join("artifacts").to_str().unwrap()).unwrap()
}

/// The test Python environment.
pub fn python() -> PathBuf {
    let python = std::env::var_os("WEIR_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("WEIR_PYTHON is not set: run the tests with `cargo xtask test`"));
    assert!(
        std::env::var_os("WEIR_ORT_LIB").is_some(),
        "WEIR_ORT_LIB is not set: `cargo xtask test` sets it"
    );
    python
}

/// The features of the generated data.
pub const FEATURES: usize = 6;

/// `rows` rows: `user_id`, features `x0..x5` (`x0`, `x1` decide the
/// label), label `clicked`; `prefix` names the first two features
/// (`stats__x0`: as a snapshot names a view's features).
pub fn generate(path: &Path, rows: usize, seed: u64, prefix: &str) -> Vec<Vec<f64>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut columns: Vec<Vec<f64>> = vec![Vec::new(); FEATURES];
    let mut clicked = Vec::new();
    let mut users = Vec::new();
    for i in 0..rows {
        let x: Vec<f64> = (0..FEATURES)
            .map(|_| rng.random::<f64>() * 2.0 - 1.0)
            .collect();
        clicked.push(x[0] + 0.8 * x[1] + 0.3 * x[2] + (rng.random::<f64>() - 0.5) > 0.0);
        users.push(format!("u{i}"));
        for (column, value) in columns.iter_mut().zip(x) {
            column.push(value);
        }
    }
    let mut fields = vec![Field::new("user_id", DataType::Utf8, false)];
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(StringArray::from(users))];
    for (j, column) in columns.iter().enumerate() {
        let name = if j < 2 {
            format!("{prefix}x{j}")
        } else {
            format!("x{j}")
        };
        fields.push(Field::new(name, DataType::Float64, false));
        arrays.push(Arc::new(Float64Array::from(column.clone())));
    }
    fields.push(Field::new("clicked", DataType::Boolean, false));
    arrays.push(Arc::new(BooleanArray::from(clicked)));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    columns
}

/// Row `i` of generated `columns`.
pub fn row(columns: &[Vec<f64>], i: usize) -> Vec<f64> {
    columns.iter().map(|c| c[i]).collect()
}

/// A spec from YAML.
pub fn spec(text: &str) -> weir_serve::DeploymentSpec {
    weir_serve::DeploymentSpec::parse(text, "test.yaml").unwrap()
}

/// Serves `spec` in the background until the returned sender fires;
/// resolves when it is ready, with its HTTP address.
pub async fn serve(
    platform: &Platform,
    spec: weir_serve::DeploymentSpec,
    features: weir_serve::server::Features,
    recorder: Option<Tracker>,
) -> (
    Option<std::net::SocketAddr>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<weir_serve::server::Summary>,
) {
    let (ready, stop, task) = serve_ready(platform, spec, features, recorder).await;
    (ready.http, stop, task)
}

/// As [`serve`], with every address serving listens on.
pub async fn serve_ready(
    platform: &Platform,
    spec: weir_serve::DeploymentSpec,
    features: weir_serve::server::Features,
    recorder: Option<Tracker>,
) -> (
    weir_serve::server::Ready,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<weir_serve::server::Summary>,
) {
    let registry = platform.registry().await;
    let bus = platform.bus.clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        weir_serve::server::serve(
            &bus,
            registry,
            spec,
            features,
            recorder,
            move |ready| {
                let _ = ready_tx.send(ready.clone());
            },
            async {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap()
    });
    let ready = tokio::time::timeout(Duration::from_secs(60), ready_rx)
        .await
        .expect("ready in time")
        .expect("serving started");
    (ready, stop, task)
}
