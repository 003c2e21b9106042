//! Many writers at once, some refused; a second node replaying `weir.meta`
//! reaches the same state.

use weir_meta::artifacts::ArtifactStore;
use weir_meta::event::{Event, KeyValue, Metric};
use weir_meta::{ErrorCode, Tracker, tracker};

use crate::broker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_a_replayed_node_agree() {
    let (_broker, bus) = broker().await;
    let dir = tempfile::tempdir().unwrap();
    let node = Tracker::open(
        &bus,
        ArtifactStore::open(dir.path().to_str().unwrap()).unwrap(),
    )
    .await
    .unwrap();
    node.write(|state| {
        let experiment_id = state.next_experiment_id();
        Ok((
            Event::ExperimentCreated {
                at: 1,
                experiment_id,
                name: "tuning".into(),
                artifact_location: "mlflow-artifacts:/1".into(),
                tags: vec![],
            },
            (),
        ))
    })
    .await
    .unwrap();

    // Eight writers, each with its runs; every writer also tries to change
    // a param, which must be refused and leave no trace.
    let mut writers = Vec::new();
    for writer in 0..8 {
        let node = node.clone();
        writers.push(tokio::spawn(async move {
            let mut refused = 0;
            for run in 0..10 {
                let run_id = format!("{writer:02}{run:030}");
                node.write(|_| {
                    Ok((
                        Event::RunCreated {
                            at: 2,
                            run_id: run_id.clone(),
                            experiment_id: "1".into(),
                            run_name: format!("w{writer}-r{run}"),
                            user_id: "test".into(),
                            start_time: run,
                            artifact_uri: String::new(),
                            tags: vec![],
                        },
                        (),
                    ))
                })
                .await
                .unwrap();
                for step in 0..5 {
                    node.write(|_| {
                        Ok((
                            Event::RunLogged {
                                at: 3,
                                run_id: run_id.clone(),
                                metrics: vec![Metric {
                                    key: "loss".into(),
                                    value: 1.0 / (step + 1) as f64,
                                    timestamp: step,
                                    step,
                                }],
                                params: vec![KeyValue {
                                    key: "seed".into(),
                                    value: writer.to_string(),
                                }],
                                tags: vec![],
                            },
                            (),
                        ))
                    })
                    .await
                    .unwrap();
                }
                let changed = node
                    .write(|_| {
                        Ok((
                            Event::RunLogged {
                                at: 4,
                                run_id: run_id.clone(),
                                metrics: vec![Metric {
                                    key: "never".into(),
                                    value: 0.0,
                                    timestamp: 0,
                                    step: 0,
                                }],
                                params: vec![KeyValue {
                                    key: "seed".into(),
                                    value: "other".into(),
                                }],
                                tags: vec![],
                            },
                            (),
                        ))
                    })
                    .await;
                let error = changed.unwrap_err();
                assert_eq!(error.code, ErrorCode::InvalidParameterValue, "{error}");
                refused += 1;
            }
            refused
        }));
    }
    for writer in writers {
        assert_eq!(writer.await.unwrap(), 10);
    }

    let state = node.snapshot();
    let runs: Vec<_> = state.runs_of("1").collect();
    assert_eq!(runs.len(), 80);
    for run in &runs {
        assert_eq!(run.history["loss"].len(), 5);
        assert_eq!(run.latest["loss"].step, 4);
        assert!(
            !run.latest.contains_key("never"),
            "a refused batch left nothing"
        );
    }

    let replayed = tracker::replay(&bus).await.unwrap();
    assert_eq!(
        replayed, state,
        "a node replaying weir.meta has the same state"
    );
    assert_eq!(replayed.applied(), 1 + 80 * 6);
}

/// Waits until `node`'s state satisfies `seen` (5 s at most).
async fn until_seen(node: &Tracker, seen: impl Fn(&weir_meta::state::State) -> bool) {
    for _ in 0..100 {
        if node.read(&seen) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the event never reached the other tracker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracker_applies_what_other_writers_append_and_its_own_events_once() {
    let (_broker, bus) = broker().await;
    let dir = tempfile::tempdir().unwrap();
    let artifacts = || ArtifactStore::open(dir.path().to_str().unwrap()).unwrap();
    // A server, and a `weir train` writing to the same log while it runs.
    let server = Tracker::open(&bus, artifacts()).await.unwrap();
    let job = Tracker::open(&bus, artifacts()).await.unwrap();

    let experiment = job
        .create_experiment("from-the-job".into(), None, vec![])
        .await
        .unwrap();
    let run_id = job
        .start_run(tracker::RunStart {
            experiment_id: experiment.clone(),
            run_name: Some("trained".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    until_seen(&server, |state| state.run(&run_id).is_ok()).await;

    // The server's own writes, and the job's after them, both ways.
    server
        .append(Event::RunLogged {
            at: 1,
            run_id: run_id.clone(),
            metrics: vec![Metric {
                key: "auc".into(),
                value: 0.9,
                timestamp: 1,
                step: 0,
            }],
            params: vec![],
            tags: vec![],
        })
        .await
        .unwrap();
    until_seen(&job, |state| {
        state
            .run(&run_id)
            .is_ok_and(|run| run.history.contains_key("auc"))
    })
    .await;
    job.append(Event::RunLogged {
        at: 2,
        run_id: run_id.clone(),
        metrics: vec![],
        params: vec![KeyValue {
            key: "lr".into(),
            value: "0.1".into(),
        }],
        tags: vec![],
    })
    .await
    .unwrap();
    until_seen(&server, |state| {
        state
            .run(&run_id)
            .is_ok_and(|run| run.params.contains_key("lr"))
    })
    .await;

    // Every event applied once on each: both equal a replay.
    let replayed = tracker::replay(&bus).await.unwrap();
    assert_eq!(server.snapshot(), replayed);
    assert_eq!(job.snapshot(), replayed);
    assert_eq!(
        replayed.run(&run_id).unwrap().history["auc"].len(),
        1,
        "the server's own metric was not applied a second time"
    );
}
