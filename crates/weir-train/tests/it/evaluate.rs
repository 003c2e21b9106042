//! Evaluation against the champion, by slice, with the gate.

use std::collections::BTreeMap;

use weir_train::spec::{Runtime, Split};
use weir_train::{EvaluationRequest, GateRule, TrainSpec};

use crate::{Platform, generate};

fn job(dataset: &str, features: &[&str]) -> TrainSpec {
    TrainSpec {
        experiment: "ct".into(),
        name: None,
        dataset: dataset.into(),
        label: "clicked".into(),
        features: features.iter().map(|f| f.to_string()).collect(),
        exclude: vec![],
        task: None,
        split: Split::default(),
        runtime: Runtime::Sklearn {
            estimator: "LogisticRegression".into(),
        },
        params: BTreeMap::new(),
        register: Some("clicks".into()),
        tolerance: 1e-4,
        tags: Default::default(),
        distributed: None,
        export: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gate_accepts_a_better_model_and_refuses_a_worse_one() {
    let mut platform = Platform::start().await;
    let train = platform.dir.path().join("train.parquet");
    generate(&train, 2000, 11);
    let dataset = platform.register("clicks", &train).await;
    let holdout = platform.dir.path().join("holdout.parquet");
    generate(&holdout, 1000, 12);

    // v1 sees only noise; it becomes the champion. v2 sees the signal.
    let weak = weir_train::train(&job(&dataset, &["x2", "x4"]), platform.workspace())
        .await
        .unwrap();
    assert_eq!(weak.failure, None);
    platform
        .tracker
        .set_alias("clicks", "champion", 1)
        .await
        .unwrap();
    let strong = weir_train::train(&job(&dataset, &["x0", "x1", "x2"]), platform.workspace())
        .await
        .unwrap();
    assert_eq!(strong.version, Some(("clicks".into(), 2)));

    let request = |model: &str, gate: Vec<GateRule>| EvaluationRequest {
        model: model.into(),
        dataset: Some(holdout.to_str().unwrap().into()),
        slice: Some("segment".into()),
        champion: "champion".into(),
        gate,
        experiment: "evaluations".into(),
        promote: false,
    };
    let better = weir_train::evaluate(
        &EvaluationRequest {
            promote: true,
            ..request(
                "clicks@2",
                vec!["roc_auc:0.1".parse().unwrap(), "log_loss".parse().unwrap()],
            )
        },
        platform.workspace(),
    )
    .await
    .unwrap();
    assert!(better.gate.passed(), "{:?}", better.gate);
    assert_eq!(better.rows, 1000);
    let champion = better.champion.as_ref().unwrap();
    assert_eq!(champion.model, "clicks@1");
    assert!(better.candidate.overall["roc_auc"] > 0.9);
    assert!(champion.overall["roc_auc"] < 0.6);
    assert_eq!(
        better.candidate.slices.keys().collect::<Vec<_>>(),
        ["app", "web"]
    );
    assert!(better.report.contains("<svg") && better.report.contains("calibration"));
    // Each version's test metrics from its training run, for the history chart.
    assert_eq!(
        better.history.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        [1, 2]
    );

    // v2 passed and was promoted; then v1 against it is refused.
    assert!(better.promoted);
    let champion = platform
        .tracker
        .read(|state| {
            state
                .version_by_reference("clicks@champion")
                .map(|(_, v)| v.version)
        })
        .unwrap();
    assert_eq!(champion, 2);
    let worse = weir_train::evaluate(&request("clicks@1", vec![]), platform.workspace())
        .await
        .unwrap();
    assert!(worse.gate.refused(), "{:?}", worse.gate);
    assert!(
        worse.gate.reasons[0].starts_with("roc_auc:"),
        "{:?}",
        worse.gate
    );

    // Without a dataset: the rows v2's training held out, no others.
    let held_out = weir_train::evaluate(
        &EvaluationRequest {
            dataset: None,
            ..request("clicks@2", vec![])
        },
        platform.workspace(),
    )
    .await
    .unwrap();
    assert_eq!(held_out.rows as f64, strong.metrics["test_rows"]);
    assert!(held_out.rows < 2000, "{}", held_out.rows);
    assert!(
        held_out
            .dataset
            .contains(&format!("test rows run {} held out", strong.run_id)),
        "{}",
        held_out.dataset
    );
    // Scored as training scored them: the same ROC AUC.
    assert!(
        (held_out.candidate.overall["roc_auc"] - strong.metrics["test_roc_auc"]).abs() < 1e-9,
        "{} vs {}",
        held_out.candidate.overall["roc_auc"],
        strong.metrics["test_roc_auc"]
    );

    // The champion evaluated by its alias is not judged against itself.
    let itself = weir_train::evaluate(&request("clicks@champion", vec![]), platform.workspace())
        .await
        .unwrap();
    assert_eq!(itself.gate.verdict, weir_train::evaluate::Verdict::Skipped);
    assert!(!itself.gate.passed() && !itself.gate.refused());
    assert!(
        itself.gate.reasons[0].contains("clicks@2 is the champion"),
        "{:?}",
        itself.gate
    );
    assert!(itself.champion.is_none());

    // The evaluations are runs, with the report.
    let runs = platform.tracker.read(|state| {
        let experiment = state
            .experiment_by_name("evaluations")
            .unwrap()
            .experiment_id
            .clone();
        state
            .runs_of(&experiment)
            .map(|r| (r.tags["weir.gate"].clone(), r.params["model"].clone()))
            .collect::<Vec<_>>()
    });
    assert_eq!(runs.len(), 4);
    assert!(runs.contains(&("passed".into(), "clicks@2".into())));
    assert!(runs.contains(&("refused".into(), "clicks@1".into())));
    assert!(runs.contains(&("skipped".into(), "clicks@2".into())));

    // Bad requests name the problem.
    let error = weir_train::evaluate(&request("clicks@9", vec![]), platform.workspace())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("clicks@9"), "{error}");
    assert!("auc:1".parse::<GateRule>().is_err());
}
