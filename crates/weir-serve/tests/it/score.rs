//! Batch scoring streams a Parquet file through the runners in chunks and
//! gives every row what per-row inference gives it.

use arrow::array::{Array, Float32Array};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use weir_onnx::{Model, SessionOptions};
use weir_serve::DeploymentSpec;
use weir_serve::score::{ScoreOptions, score};

use crate::{Platform, generate, row};

#[tokio::test(flavor = "multi_thread")]
async fn batch_scoring_equals_per_row_inference() {
    let platform = Platform::start().await;
    let data = platform.dir.path().join("clicks.parquet");
    let columns = generate(&data, 3000, 5, "");
    let version = platform
        .train("clicks", &data, "HistGradientBoostingClassifier")
        .await;
    let registry = platform.registry().await;
    let spec = DeploymentSpec::single("score", "clicks");
    let resolved = registry.resolve_all(&spec).unwrap();
    let models = registry.load(&spec, &resolved).await.unwrap();
    let out = platform.dir.path().join("scored.parquet");
    // Chunks that do not divide the rows, on two threads.
    let options = ScoreOptions {
        chunk_rows: 777,
        threads: 2,
    };
    let info = &resolved[0].info;
    let report = score(models, &info.features, &info.classes, &data, &out, &options)
        .await
        .unwrap();
    assert_eq!(report.rows, 3000);
    assert!(report.chunks >= 4, "{report:?}");

    let model = Model::load(
        &platform.model_bytes("clicks", version).await,
        &SessionOptions::default(),
    )
    .unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&out).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut i = 0;
    for batch in reader {
        let batch = batch.unwrap();
        // The input's columns come through, the outputs are added.
        assert!(batch.column_by_name("user_id").is_some());
        let positive = batch
            .column_by_name(&format!("probabilities_{}", info.classes[1]))
            .unwrap_or_else(|| panic!("columns: {:?}", batch.schema()))
            .as_any()
            .downcast_ref::<Float32Array>()
            .unwrap()
            .clone();
        for r in 0..batch.num_rows() {
            let features: Vec<f32> = row(&columns, i).iter().map(|&x| x as f32).collect();
            let (scores, width) = model.predict(&features, 1).unwrap().scores().unwrap();
            assert_eq!(width, 2);
            // Equal up to float32 rounding: ONNX Runtime sums a batch's
            // trees in another order than a single row's.
            let diff = (positive.value(r) as f64 - scores[1]).abs();
            assert!(
                diff <= 1e-6,
                "row {i}: {} vs {}",
                positive.value(r),
                scores[1]
            );
            i += 1;
        }
    }
    assert_eq!(i, 3000);
}
