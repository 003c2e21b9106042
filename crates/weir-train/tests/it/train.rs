//! Training jobs: the built-in runtimes, a custom one, and the ways a job
//! fails.

use std::collections::BTreeMap;

use weir_meta::lineage::{Node, render};
use weir_train::TrainSpec;
use weir_train::spec::{Runtime, Split, Task};

use crate::{Platform, generate};

fn spec(dataset: &str, label: &str, runtime: Runtime) -> TrainSpec {
    TrainSpec {
        experiment: "train-tests".into(),
        name: None,
        dataset: dataset.into(),
        label: label.into(),
        features: vec![],
        exclude: vec!["spend".into(), "clicked".into()],
        task: None,
        split: Split::Random {
            validation: 0.2,
            test: 0.2,
            seed: 3,
        },
        runtime,
        params: BTreeMap::new(),
        register: None,
        tolerance: 1e-4,
        tags: Default::default(),
        distributed: None,
        export: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sklearn_model_is_checked_against_onnx_runtime_and_registered_with_lineage() {
    let mut platform = Platform::start().await;
    let path = platform.dir.path().join("clicks.parquet");
    generate(&path, 3000, 1);
    let dataset = platform.register("clicks", &path).await;
    assert_eq!(dataset, "clicks@1");
    // By name: the latest version, pinned in the run's job file.
    let mut job = spec(
        "clicks",
        "clicked",
        Runtime::Sklearn {
            estimator: "HistGradientBoostingClassifier".into(),
        },
    );
    job.params.insert("max_iter".into(), 50.into());
    job.register = Some("clicks-model".into());
    let outcome = weir_train::train(&job, platform.workspace()).await.unwrap();
    assert_eq!(outcome.failure, None);
    let m = &outcome.metrics;
    assert_eq!(
        (m["train_rows"], m["validation_rows"], m["test_rows"]),
        (1800.0, 600.0, 600.0)
    );
    assert!(m["onnx_max_abs_diff"] <= 1e-4, "{m:?}");
    assert!(m["validation_roc_auc"] > 0.85, "{m:?}");
    assert!(m["test_accuracy"] > 0.75, "{m:?}");

    let (name, version) = outcome.version.clone().unwrap();
    assert_eq!((name.as_str(), version), ("clicks-model", 1));
    let (run, info) = platform.tracker.read(|state| {
        let (_, v) = state.version("clicks-model", "1").unwrap();
        (
            state.run(&v.run_id).unwrap().clone(),
            v.model.clone().unwrap(),
        )
    });
    assert_eq!(run.status, "FINISHED");
    assert_eq!(run.params["max_iter"], "50");
    assert_eq!(run.params["weir.features"], "x0,x1,x2,x3,x4");
    assert_eq!(
        run.tags["weir.runtime"],
        "sklearn:HistGradientBoostingClassifier"
    );
    // The entity key, the time, the excluded columns and the text column
    // are not features.
    assert_eq!(info.features, ["x0", "x1", "x2", "x3", "x4"]);
    assert_eq!(info.task, "classification");
    assert_eq!(info.classes, ["0", "1"]);
    assert_eq!(info.signature.inputs[0].dtype, "float32");
    assert_eq!(info.signature.inputs[0].shape, [-1, 5]);
    assert!(
        info.signature.opset().unwrap() >= 15,
        "{:?}",
        info.signature
    );
    assert!(info.signature.producer.starts_with("skl2onnx"));
    assert_eq!(info.dependencies["scikit-learn"], "1.9.1");
    // The registered file is the one stored with the run.
    let bytes = platform.tracker.artifact_bytes(&info.path).await.unwrap();
    assert_eq!(bytes.len() as u64, info.size);
    assert!(
        info.path
            .ends_with(&format!("{}/artifacts/model/model.onnx", run.run_id))
    );

    // Lineage: the dataset → the run → the model version.
    let lineage = platform
        .tracker
        .read(|state| render(state, &Node::Model("clicks-model".into(), 1), "text").unwrap());
    assert!(lineage.contains("dataset clicks@1"), "{lineage}");
    assert!(lineage.contains(&run.run_id), "{lineage}");

    // Reproduced from its job file: the same split, so the same metrics.
    let reproduction = weir_train::reproduce(&outcome.run_id, platform.workspace())
        .await
        .unwrap();
    assert_eq!(reproduction.differing(0.0), Vec::<&str>::new());
    let again = reproduction.outcome;
    assert_eq!(
        again.metrics["test_roc_auc"],
        outcome.metrics["test_roc_auc"]
    );
    assert_eq!(again.version, None);
    let again_run = platform
        .tracker
        .read(|state| state.run(&again.run_id).unwrap().clone());
    assert_eq!(again_run.tags["weir.reproduces"], outcome.run_id);
    assert_eq!(again_run.params["weir.dataset"], "clicks@1");
}

#[tokio::test(flavor = "multi_thread")]
async fn lightgbm_regressor_with_a_time_split() {
    let platform = Platform::start().await;
    let path = platform.dir.path().join("spend.parquet");
    generate(&path, 2000, 2);
    let mut job = spec(path.to_str().unwrap(), "spend", Runtime::Lightgbm);
    job.exclude = vec!["clicked".into()];
    job.split = Split::Time {
        column: "event_timestamp".into(),
        validation: 0.25,
        test: 0.25,
    };
    job.params.insert("n_estimators".into(), 60.into());
    job.register = Some("spend-model".into());
    let outcome = weir_train::train(&job, platform.workspace()).await.unwrap();
    assert_eq!(outcome.failure, None);
    let m = &outcome.metrics;
    assert!(m["onnx_max_abs_diff"] <= 1e-4, "{m:?}");
    assert!(m["test_r2"] > 0.9, "{m:?}");
    let info = outcome.model.unwrap();
    assert_eq!(info.task, "regression");
    assert_eq!(info.dependencies["lightgbm"], "4.7.0");
    // A file, not a registered dataset: recorded by path and content hash.
    let inputs = platform
        .tracker
        .read(|state| state.run(&outcome.run_id).unwrap().inputs.clone());
    assert_eq!(inputs[0]["dataset"]["name"], path.to_str().unwrap());
}

/// LightGBM trains on label indexes (through its own API, not
/// scikit-learn's wrapper); its exported model still names the classes.
#[tokio::test(flavor = "multi_thread")]
async fn a_lightgbm_classifier_names_its_text_classes_in_onnx() {
    let platform = Platform::start().await;
    let path = platform.dir.path().join("segments.parquet");
    generate(&path, 1500, 4);
    let mut job = spec(path.to_str().unwrap(), "segment", Runtime::Lightgbm);
    job.params.insert("n_estimators".into(), 30.into());
    job.params.insert("class_weight".into(), "balanced".into());
    job.register = Some("segment-model".into());
    let outcome = weir_train::train(&job, platform.workspace()).await.unwrap();
    assert_eq!(outcome.failure, None);
    assert!(outcome.metrics["onnx_max_abs_diff"] <= 1e-4);
    // `segment` is "web" when x2 > 0.
    assert!(outcome.metrics["test_accuracy"] > 0.95);
    let info = outcome.model.unwrap();
    assert_eq!(info.classes, ["app", "web"]);
    assert!(!info.dependencies.contains_key("scikit-learn"));
    let bytes = platform.tracker.artifact_bytes(&info.path).await.unwrap();
    let model = weir_onnx::Model::load(&bytes, &Default::default()).unwrap();
    let rows = [[0.1, 0.2, 0.9, 0.0, 0.3], [0.1, 0.2, -0.9, 0.0, 0.3]];
    let prediction = model.predict(rows.as_flattened(), 2).unwrap();
    let label = prediction.outputs.iter().find(|o| o.name == "label");
    assert_eq!(
        label.map(|o| &o.values),
        Some(&weir_onnx::Values::Str(vec!["web".into(), "app".into()]))
    );
}

/// A user's own script, with no framework but numpy and onnx: fits a
/// logistic regression by gradient descent and writes it as ONNX by hand.
const CUSTOM_RUNTIME: &str = r#"
import json, os
import numpy as np, pyarrow.parquet as pq, onnx
from onnx import helper, TensorProto, numpy_helper
features = json.loads(os.environ["WEIR_FEATURES"]); label = os.environ["WEIR_LABEL"]
params = json.loads(os.environ["WEIR_PARAMS"]); out = os.environ["WEIR_OUTPUT_DIR"]
t = pq.read_table(os.environ["WEIR_TRAIN_PATH"]).to_pandas()
x = t[features].fillna(0).to_numpy(np.float64); y = t[label].astype(float).to_numpy()
w = np.zeros(x.shape[1]); b = 0.0
for _ in range(int(params.get("steps", 300))):
    p = 1 / (1 + np.exp(-(x @ w + b)))
    w -= 0.5 * x.T @ (p - y) / len(y); b -= 0.5 * float(np.mean(p - y))
W = numpy_helper.from_array(np.stack([-w, w], 1).astype(np.float32), "W")
B = numpy_helper.from_array(np.array([-b, b], np.float32), "B")
graph = helper.make_graph(
    [helper.make_node("MatMul", ["input", "W"], ["z"]), helper.make_node("Add", ["z", "B"], ["logits"]),
     helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
    "custom", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, len(features)])],
    [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])], [W, B])
model = helper.make_model(graph, producer_name="my-script", opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
open(os.path.join(out, "model.onnx"), "wb").write(model.SerializeToString())
json.dump({"steps": int(params.get("steps", 300))}, open(os.path.join(out, "metrics.json"), "w"))
json.dump({"numpy": np.__version__}, open(os.path.join(out, "dependencies.json"), "w"))
open(os.path.join(out, "notes.txt"), "w").write("trained by hand")
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_custom_runtime_trains_through_the_contract() {
    let platform = Platform::start().await;
    let path = platform.dir.path().join("clicks.parquet");
    generate(&path, 1500, 4);
    let script = platform.dir.path().join("train.py");
    std::fs::write(&script, CUSTOM_RUNTIME).unwrap();
    let python = crate::python();
    let mut job = spec(
        path.to_str().unwrap(),
        "clicked",
        Runtime::Command {
            command: vec![python.display().to_string(), script.display().to_string()],
        },
    );
    job.features = vec!["x0".into(), "x1".into(), "x2".into()];
    job.params.insert("steps".into(), 400.into());
    job.register = Some("handmade".into());
    let outcome = weir_train::train(&job, platform.workspace()).await.unwrap();
    assert_eq!(outcome.failure, None);
    assert!(
        outcome.metrics["test_roc_auc"] > 0.85,
        "{:?}",
        outcome.metrics
    );
    assert_eq!(outcome.metrics["steps"], 400.0);
    let info = outcome.model.unwrap();
    assert_eq!(info.signature.producer, "my-script");
    assert_eq!(info.signature.opset(), Some(17));
    assert!(info.dependencies.contains_key("numpy"));
    let artifacts: Vec<String> = platform.tracker.read(|state| {
        let run = state.run(&outcome.run_id).unwrap();
        let root = run
            .artifact_uri
            .trim_start_matches("mlflow-artifacts:/")
            .to_string();
        state
            .artifacts_under(&root)
            .map(|(path, _)| path.trim_start_matches(&root).to_string())
            .collect()
    });
    for expected in [
        "/model/model.onnx",
        "/output/notes.txt",
        "/split.json",
        "/job.yaml",
    ] {
        assert!(
            artifacts.iter().any(|a| a == expected),
            "{expected} in {artifacts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_are_recorded_with_their_reason_and_nothing_is_registered() {
    let platform = Platform::start().await;
    let path = platform.dir.path().join("clicks.parquet");
    generate(&path, 600, 5);
    let python = crate::python().display().to_string();
    let file = path.to_str().unwrap();
    let command = |code: &str| Runtime::Command {
        command: vec![python.clone(), "-c".into(), code.into()],
    };
    let lightgbm = Runtime::Lightgbm;
    let mut unknown_param = spec(file, "clicked", lightgbm.clone());
    unknown_param
        .params
        .insert("learning_rat".into(), 0.1.into());
    let mut wrong_task = spec(file, "segment", lightgbm.clone());
    wrong_task.task = Some(Task::Regression);
    let cases = [
        (
            spec(file, "churned", lightgbm.clone()),
            "no column `churned`",
        ),
        (
            unknown_param,
            "unknown param `learning_rat` (did you mean `learning_rate`?) for LightGBM",
        ),
        (
            spec(
                file,
                "clicked",
                command("import sys; print('out of memory', file=sys.stderr); sys.exit(3)"),
            ),
            "out of memory",
        ),
        (
            spec(file, "clicked", command("pass")),
            "wrote no model.onnx",
        ),
        (
            spec(
                file,
                "clicked",
                command(
                    "import os; open(os.environ['WEIR_OUTPUT_DIR'] + '/model.onnx', 'w').write('junk')",
                ),
            ),
            "not an ONNX model",
        ),
        (wrong_task, "label `segment` is Utf8, not a number"),
        (spec("nope@1", "clicked", lightgbm), "dataset `nope@1`"),
    ];
    for (mut job, reason) in cases {
        job.register = Some("never".into());
        let outcome = weir_train::train(&job, platform.workspace()).await.unwrap();
        let failure = outcome.failure.clone().unwrap_or_default();
        assert!(
            failure.contains(reason),
            "`{failure}` should say `{reason}`"
        );
        let run = platform
            .tracker
            .read(|state| state.run(&outcome.run_id).unwrap().clone());
        assert_eq!(run.status, "FAILED");
        assert!(run.tags["weir.failure"].contains(reason));
        assert!(outcome.version.is_none());
    }
    platform
        .tracker
        .read(|state| assert!(state.model("never").is_err()));
}

#[test]
fn job_files_name_the_bad_field_and_its_line() {
    let error = TrainSpec::from_yaml(
        "dataset: d@1\nlabel: y\nruntime: {kind: sklearn, estimator: X}\nsplitt: {by: random}\n",
        "job.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(error.starts_with("job.yaml:4:"), "{error}");
    assert!(error.contains("splitt"), "{error}");
    let error = TrainSpec::from_yaml("dataset: d@1\nlabel: y\nruntime: {kind: torch}\n", "j.yaml")
        .unwrap_err()
        .to_string();
    assert!(error.contains("torch"), "{error}");
}

/// A trial is run only by the worker whose claim the log holds first; it is
/// recorded once, however often it is delivered; a lapsed claim frees it;
/// once its tuning job ends nobody takes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_trial_is_claimed_by_one_worker_and_recorded_once() {
    use std::time::Duration;
    use weir_train::tune::{Trial, TrialState, claim_trial, run_claimed};
    let platform = Platform::start().await;
    let path = platform.dir.path().join("clicks.parquet");
    generate(&path, 600, 6);
    let experiment = platform
        .tracker
        .experiment_named("train-tests")
        .await
        .unwrap();
    let parent = platform
        .tracker
        .start_run(weir_meta::tracker::RunStart {
            experiment_id: experiment,
            ..Default::default()
        })
        .await
        .unwrap();
    let trial = |number| Trial {
        parent_run_id: parent.clone(),
        number,
        job: spec(path.to_str().unwrap(), "clicked", Runtime::Lightgbm),
    };
    // A second worker process: its own tracker, which does not see the
    // first one's writes.
    let other = weir_meta::Tracker::open(&platform.bus, platform.tracker.artifacts().clone())
        .await
        .unwrap();
    let bus = &platform.bus;
    // How each process reads the log.
    let follower = || weir_meta::tracker::Follower::start(bus);
    let (mut follows_a, mut follows_b) = (follower().await.unwrap(), follower().await.unwrap());

    // Claimed by both at once: one wins, the other is told who holds it.
    let first = trial(0);
    let (a, b) = tokio::join!(
        claim_trial(&first, &platform.tracker, &mut follows_a, "a"),
        claim_trial(&first, &other, &mut follows_b, "b")
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let (winner, tracker, loser) = match (&a, &b) {
        (None, Some(TrialState::Held { holder, .. })) if holder == "a" => {
            ("a", &platform.tracker, "b")
        }
        (Some(TrialState::Held { holder, .. }), None) if holder == "b" => ("b", &other, "a"),
        _ => panic!("a: {a:?}, b: {b:?}"),
    };
    let workspace = weir_train::Workspace {
        tracker,
        ..platform.workspace()
    };
    let outcome = run_claimed(&trial(0), workspace, winner).await.unwrap();
    assert_eq!(outcome.failure, None);
    // Delivered again, to either: recorded, not run.
    for (tracker, follows, holder) in [
        (&platform.tracker, &mut follows_a, loser),
        (&other, &mut follows_b, winner),
    ] {
        assert_eq!(
            claim_trial(&trial(0), tracker, follows, holder)
                .await
                .unwrap(),
            Some(TrialState::Recorded)
        );
    }

    // A worker that died holding trial 1: nobody takes it until the claim
    // lapses.
    assert!(
        other
            .take_lease(bus, &trial(1).lease_key(), "dead", Duration::from_secs(3))
            .await
            .unwrap()
    );
    assert!(matches!(
        claim_trial(&trial(1), &platform.tracker, &mut follows_a, "a")
            .await
            .unwrap(),
        Some(TrialState::Held { holder, .. }) if holder == "dead"
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let state = weir_meta::tracker::replay(bus).await.unwrap();
    assert_eq!(
        trial(1).state(&state, weir_core::now_ms()),
        TrialState::Open { lapsed: true }
    );
    assert_eq!(
        claim_trial(&trial(1), &platform.tracker, &mut follows_a, "a")
            .await
            .unwrap(),
        None
    );

    // The tuning job ended: its open trials are closed.
    platform
        .tracker
        .append(weir_meta::event::Event::RunUpdated {
            at: weir_core::now_ms(),
            run_id: parent.clone(),
            status: Some("FAILED".into()),
            end_time: Some(weir_core::now_ms()),
            run_name: None,
        })
        .await
        .unwrap();
    assert_eq!(
        claim_trial(&trial(2), &other, &mut follows_b, "b")
            .await
            .unwrap(),
        Some(TrialState::Closed)
    );
    other.close().await;
}

/// An artifact of a run, as text.
async fn run_artifact(platform: &Platform, run_id: &str, name: &str) -> String {
    String::from_utf8(run_artifact_bytes(platform, run_id, name).await).unwrap()
}

/// An artifact of a run.
async fn run_artifact_bytes(platform: &Platform, run_id: &str, name: &str) -> Vec<u8> {
    let root = platform.tracker.read(|state| {
        state
            .run(run_id)
            .unwrap()
            .artifact_uri
            .trim_start_matches("mlflow-artifacts:/")
            .to_string()
    });
    platform
        .tracker
        .artifact_bytes(&format!("{root}/{name}"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_parallel_lightgbm_job_trains_as_two_processes_and_is_registered() {
    let platform = Platform::start().await;
    let path = platform.dir.path().join("clicks.parquet");
    generate(&path, 3000, 8);
    let mut job = spec(path.to_str().unwrap(), "clicked", Runtime::Lightgbm);
    job.params.insert("n_estimators".into(), 40.into());
    job.distributed = Some(weir_train::spec::Distributed {
        processes: 2,
        restarts: 0,
    });
    job.register = Some("data-parallel".into());
    let outcome = weir_train::train(&job, platform.workspace()).await.unwrap();
    assert_eq!(outcome.failure, None);
    assert!(
        outcome.metrics["test_roc_auc"] > 0.85,
        "{:?}",
        outcome.metrics
    );
    assert_eq!(outcome.metrics["attempts"], 1.0);
    assert_eq!(outcome.version.as_ref().unwrap().0, "data-parallel");
    platform.tracker.read(|state| {
        let run = state.run(&outcome.run_id).unwrap();
        assert_eq!(run.params["weir.processes"], "2");
        assert!(state.version("data-parallel", "1").is_ok());
    });
    // Both processes trained, connected to each other, on their halves.
    let rank0 = run_artifact(&platform, &outcome.run_id, "runtime.log").await;
    let rank1 = run_artifact(&platform, &outcome.run_id, "runtime-rank1.log").await;
    assert!(
        rank0.contains("Local rank: 0, total number of machines: 2"),
        "{rank0}"
    );
    assert!(
        rank1.contains("Local rank: 1, total number of machines: 2"),
        "{rank1}"
    );
    assert!(rank1.contains("rank 1 of 2 fitted on 900 rows"), "{rank1}");
}

/// A rank that fails stops the others (a collective would wait for it
/// forever); with restarts allowed, every rank starts again.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_rank_stops_the_others_and_restarts_the_job() {
    let platform = Platform::start().await;
    let path = platform.dir.path().join("clicks.parquet");
    generate(&path, 1000, 9);
    let script = platform.dir.path().join("ranks.py");
    std::fs::write(
        &script,
        format!(
            r#"
import json, os, sys, time
rank = int(os.environ["WEIR_RANK"]); attempt = int(os.environ["WEIR_ATTEMPT"])
marks = json.loads(os.environ["WEIR_PARAMS"])["marks"]
open(os.path.join(marks, f"rank{{rank}}-attempt{{attempt}}.pid"), "w").write(str(os.getpid()))
peers = os.environ["WEIR_PEERS"].split(",")
assert os.environ["WORLD_SIZE"] == "2" and len(peers) == 2, os.environ
assert peers[0] == os.environ["MASTER_ADDR"] + ":" + os.environ["MASTER_PORT"]
if attempt == 0 and rank == 1:
    time.sleep(1)
    sys.exit("rank 1 gives up")
if attempt == 0:
    time.sleep(600)
if rank > 0:
    sys.exit(0)
{CUSTOM_RUNTIME}"#
        ),
    )
    .unwrap();
    let python = crate::python();
    for restarts in [0, 1] {
        let marks = platform.dir.path().join(format!("marks-{restarts}"));
        std::fs::create_dir_all(&marks).unwrap();
        let mut job = spec(
            path.to_str().unwrap(),
            "clicked",
            Runtime::Command {
                command: vec![python.display().to_string(), script.display().to_string()],
            },
        );
        job.features = vec!["x0".into(), "x1".into()];
        job.params
            .insert("marks".into(), marks.to_str().unwrap().into());
        job.distributed = Some(weir_train::spec::Distributed {
            processes: 2,
            restarts,
        });
        job.register = Some(format!("restarts-{restarts}"));
        let outcome = weir_train::train(&job, platform.workspace()).await.unwrap();

        // Rank 0 of the first attempt was killed, not left sleeping.
        let pid = std::fs::read_to_string(marks.join("rank0-attempt0.pid")).unwrap();
        // A process is gone when /proc no longer lists it or it is a zombie
        // waiting to be reaped; /proc itself must be readable.
        let running = |pid: &str| match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !matches!(
                stat.rsplit(')').next().unwrap().trim_start().chars().next(),
                Some('Z' | 'X')
            ),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
            Err(error) => panic!("reading /proc/{pid}/stat: {error}"),
        };
        assert!(
            running(&std::process::id().to_string()),
            "/proc lists this test"
        );
        let gone = (0..50).any(|_| {
            let gone = !running(pid.trim());
            if !gone {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            gone
        });
        assert!(gone, "rank 0 of attempt 0 still runs");

        let registered = platform
            .tracker
            .read(|state| state.model(&format!("restarts-{restarts}")).is_ok());
        if restarts == 0 {
            let reason = outcome.failure.unwrap();
            assert!(
                reason.contains("rank 1 of 2 exited with exit status: 1")
                    && reason.contains("rank 1 gives up")
                    && reason.contains("attempt 1 of 1"),
                "{reason}"
            );
            assert!(!registered);
        } else {
            assert_eq!(outcome.failure, None);
            assert_eq!(outcome.metrics["attempts"], 2.0);
            assert!(marks.join("rank1-attempt1.pid").exists());
            assert!(registered);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deferred_jobs_in_a_warm_runtime_keep_their_model_and_export_it_when_registered() {
    let mut platform = Platform::start().await;
    let path = platform.dir.path().join("clicks.parquet");
    generate(&path, 3000, 1);
    let dataset = platform.register("clicks", &path).await;
    let cache = weir_train::JobCache::new(platform.dir.path().join("cache"));
    let warm = weir_train::Workspace {
        cache: Some(&cache),
        ..platform.workspace()
    };
    let mut job = spec(&dataset, "clicked", Runtime::Lightgbm);
    job.params.insert("n_estimators".into(), 30.into());
    job.export = weir_train::Export::Deferred;
    let kept = weir_train::train(&job, warm).await.unwrap();
    assert_eq!(kept.failure, None);
    assert!(kept.model.is_none());
    let m = &kept.metrics;
    assert!(m["validation_roc_auc"] > 0.85, "{m:?}");
    // Only the model kept meets the test rows, when it is exported.
    assert!(!m.contains_key("test_roc_auc"), "{m:?}");
    assert!(!m.contains_key("onnx_max_abs_diff"), "{m:?}");
    let artifacts = |run_id: &str| {
        platform.tracker.read(|state| {
            let run = state.run(run_id).unwrap();
            let root = run.artifact_uri.trim_start_matches("mlflow-artifacts:/");
            [
                "model/model.pkl",
                "model/model.onnx",
                "output/dependencies.json",
            ]
            .map(|name| state.artifact(&format!("{root}/{name}")).is_some())
        })
    };
    assert_eq!(artifacts(&kept.run_id), [true, false, true]);
    // The kept model loads with LightGBM alone, outside the runtime.
    let pickled = run_artifact_bytes(&platform, &kept.run_id, "model/model.pkl").await;
    let pickle_path = platform.dir.path().join("kept.pkl");
    std::fs::write(&pickle_path, pickled).unwrap();
    let loaded = std::process::Command::new(crate::python())
        .args([
            "-c",
            "import pickle, sys; kept = pickle.load(open(sys.argv[1], 'rb')); \
             print(kept['kind'], type(kept['booster']).__name__, kept['classes'].tolist())",
        ])
        .arg(&pickle_path)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&loaded.stdout).trim(),
        "lightgbm Booster [0, 1]",
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );

    // The same warm process: a job that fails, then another estimator.
    let mut bad = job.clone();
    bad.params.insert("no_such_param".into(), 1.into());
    let failed = weir_train::train(&bad, warm).await.unwrap();
    let reason = failed.failure.unwrap();
    assert!(reason.contains("unknown param `no_such_param`"), "{reason}");
    let mut linear = spec(
        &dataset,
        "clicked",
        Runtime::Sklearn {
            estimator: "LogisticRegression".into(),
        },
    );
    linear.export = weir_train::Export::Deferred;
    let other = weir_train::train(&linear, warm).await.unwrap();
    assert_eq!(other.failure, None);
    assert!(other.metrics["validation_roc_auc"] > 0.85);

    // A job that differs only in how its trees grow reuses the rows
    // LightGBM binned for the first: it scores as it does run cold.
    let mut smaller = job.clone();
    smaller.params.insert("num_leaves".into(), 8.into());
    let warm_run = weir_train::train(&smaller, warm).await.unwrap();
    let cold_run = weir_train::train(&smaller, platform.workspace())
        .await
        .unwrap();
    for metric in ["validation_log_loss", "validation_roc_auc"] {
        let (a, b) = (warm_run.metrics[metric], cold_run.metrics[metric]);
        assert!((a - b).abs() < 1e-12, "{metric}: {a} warm, {b} cold");
    }
    assert_ne!(
        warm_run.metrics["validation_log_loss"],
        kept.metrics["validation_log_loss"]
    );

    // The framework's scores give the metrics the exported model gives.
    job.export = weir_train::Export::Onnx;
    let exported = weir_train::train(&job, platform.workspace()).await.unwrap();
    assert_eq!(exported.failure, None);
    for metric in [
        "validation_roc_auc",
        "validation_log_loss",
        "validation_accuracy",
    ] {
        let (a, b) = (kept.metrics[metric], exported.metrics[metric]);
        assert!((a - b).abs() < 1e-4, "{metric}: {a} vs {b}");
    }

    // Registering the kept model exports it, checks it and keeps it with
    // its run.
    let (version, info) = weir_train::register_run_model(
        platform.workspace(),
        &kept.run_id,
        "deferred-model",
        String::new(),
    )
    .await
    .unwrap();
    assert_eq!(version, 1);
    assert_eq!(info.features, ["x0", "x1", "x2", "x3", "x4"]);
    assert_eq!(info.classes, ["0", "1"]);
    assert_eq!(
        info.dependencies["lightgbm"],
        exported.model.as_ref().unwrap().dependencies["lightgbm"]
    );
    assert_eq!(artifacts(&kept.run_id), [true, true, true]);
    let run = platform
        .tracker
        .read(|state| state.run(&kept.run_id).unwrap().clone());
    assert!(run.latest["onnx_max_abs_diff"].value <= 1e-4);
    // …and its test metrics are those of the same model exported by its job.
    for metric in ["test_roc_auc", "test_accuracy", "test_log_loss"] {
        let (a, b) = (run.latest[metric].value, exported.metrics[metric]);
        assert!((a - b).abs() < 1e-9, "{metric}: {a} vs {b}");
    }
    let bytes = platform.tracker.artifact_bytes(&info.path).await.unwrap();
    assert_eq!(bytes.len() as u64, info.size);
    // Registered again (a second version of the same run): nothing to export.
    let (again, _) = weir_train::register_run_model(
        platform.workspace(),
        &kept.run_id,
        "deferred-model",
        String::new(),
    )
    .await
    .unwrap();
    assert_eq!(again, 2);
}
