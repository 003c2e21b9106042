//! Ensembles: the members' scores averaged, or stacked into a model that
//! takes them as its features, equal to running each model directly.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use weir_onnx::{Model, SessionOptions};
use weir_serve::deployment::{Data, Input, Request};
use weir_serve::log::Channel;

use crate::{Platform, generate, row, spec};

fn matrix(columns: &[Vec<f64>], rows: std::ops::Range<usize>) -> Vec<f32> {
    rows.flat_map(|i| row(columns, i))
        .map(|x| x as f32)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn mean_and_stacking_ensembles_equal_their_models_run_directly() {
    let platform = Platform::start().await;
    let data = platform.dir.path().join("clicks.parquet");
    let columns = generate(&data, 1500, 8, "");
    platform.train("linear", &data, "LogisticRegression").await;
    platform
        .train("trees", &data, "HistGradientBoostingClassifier")
        .await;
    let load = |bytes: Vec<u8>| Model::load(&bytes, &SessionOptions::default()).unwrap();
    let linear = load(platform.model_bytes("linear", 1).await);
    let trees = load(platform.model_bytes("trees", 1).await);

    // The stacker learns from the members' scores on the training rows.
    let all = matrix(&columns, 0..1500);
    let (a, _) = linear.predict(&all, 1500).unwrap().scores().unwrap();
    let (b, _) = trees.predict(&all, 1500).unwrap().scores().unwrap();
    let labels: Vec<bool> = (0..1500)
        .map(|i| columns[0][i] + 0.8 * columns[1][i] + 0.3 * columns[2][i] > 0.0)
        .collect();
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    // Every score of each member, side by side, as serving stacks them.
    for (name, scores) in [("linear", &a), ("trees", &b)] {
        for class in 0..2 {
            fields.push(Field::new(
                format!("{name}_{class}"),
                DataType::Float64,
                false,
            ));
            arrays.push(Arc::new(Float64Array::from_iter_values(
                (0..1500).map(|i| scores[i * 2 + class]),
            )));
        }
    }
    fields.push(Field::new("clicked", DataType::Boolean, false));
    arrays.push(Arc::new(BooleanArray::from(labels)));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap();
    let stack_data = platform.dir.path().join("stack.parquet");
    let mut writer = ArrowWriter::try_new(
        std::fs::File::create(&stack_data).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    platform
        .train("stacker", &stack_data, "LogisticRegression")
        .await;
    let stacker = load(platform.model_bytes("stacker", 1).await);

    let registry = platform.registry().await;
    let rows = 0..20;
    let request = Request {
        id: None,
        inputs: vec![Input {
            name: "x".into(),
            shape: vec![rows.len(), crate::FEATURES],
            data: Data::Num(rows.clone().flat_map(|i| row(&columns, i)).collect()),
        }],
        outputs: vec!["probabilities".into()],
        route_key: None,
    };
    let x = matrix(&columns, rows.clone());
    let (direct_a, _) = linear.predict(&x, rows.len()).unwrap().scores().unwrap();
    let (direct_b, _) = trees.predict(&x, rows.len()).unwrap().scores().unwrap();

    // Mean: the average of the two members' scores.
    let mean = weir_serve::Deployment::start(
        spec("name: mean\nmodels: [{model: linear}, {model: trees}]\ncombine: mean\n"),
        &registry,
        &[],
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(mean.versions(), "linear@1+trees@1");
    let served = mean.infer(request.clone(), Channel::Http).await.unwrap();
    let served = served.outputs[0].as_f64().unwrap();
    for (k, value) in served.iter().enumerate() {
        let expected = (direct_a[k] + direct_b[k]) / 2.0;
        assert!((value - expected).abs() < 1e-6, "{value} vs {expected}");
    }

    // Stacking: the stacker on the members' scores, side by side.
    let stacked = weir_serve::Deployment::start(
        spec(
            "name: stacked\nmodels: [{model: linear}, {model: trees}]\ncombine: stacking\nstacker: stacker@1\n",
        ),
        &registry,
        &[],
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(stacked.versions(), "linear@1+trees@1>stacker@1");
    let served = stacked.infer(request, Channel::Http).await.unwrap();
    let served = served.outputs[0].as_f64().unwrap();
    let mut side_by_side = Vec::new();
    for i in 0..rows.len() {
        side_by_side.extend(direct_a[i * 2..i * 2 + 2].iter().map(|&x| x as f32));
        side_by_side.extend(direct_b[i * 2..i * 2 + 2].iter().map(|&x| x as f32));
    }
    let (expected, _) = stacker
        .predict(&side_by_side, rows.len())
        .unwrap()
        .scores()
        .unwrap();
    assert_eq!(served.len(), expected.len());
    for (value, expected) in served.iter().zip(&expected) {
        assert!((value - expected).abs() < 1e-6, "{value} vs {expected}");
    }

    // A stacker whose input does not fit the members' scores is refused.
    let error = stacked
        .infer(
            Request {
                id: None,
                inputs: vec![Input {
                    name: "x".into(),
                    shape: vec![1, 2],
                    data: Data::Num(vec![0.0, 1.0]),
                }],
                outputs: vec![],
                route_key: None,
            },
            Channel::Http,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("x"), "{error}");
}
