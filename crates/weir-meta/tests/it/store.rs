//! The RocksDB query store: what a server saves equals what a replay of
//! `weir.meta` gives; a restart replays only the events written since;
//! a wiped store, or one saved from another log, is rebuilt by replay.

use weir_bus::Bus;
use weir_core::now_ms;
use weir_meta::Tracker;
use weir_meta::artifacts::ArtifactStore;
use weir_meta::event::{Event, KeyValue, Metric};
use weir_meta::store::Store;
use weir_meta::tracker::{self, RunStart};

use crate::broker;

/// An experiment with `runs` runs (params, a metric history, a tag), a
/// registered model with an alias, a model renamed and one deleted, an
/// artifact and a lease: every kind of entity the store keeps.
async fn write_some(bus: &Bus, node: &Tracker, experiment: &str, runs: usize) {
    let experiment_id = node
        .create_experiment(experiment.into(), None, vec![])
        .await
        .unwrap();
    let mut last_run = String::new();
    for n in 0..runs {
        let run_id = node
            .start_run(RunStart {
                experiment_id: experiment_id.clone(),
                run_name: Some(format!("{experiment}-{n}")),
                start_time: now_ms(),
                ..Default::default()
            })
            .await
            .unwrap();
        for step in 0..3 {
            node.append(Event::RunLogged {
                at: now_ms(),
                run_id: run_id.clone(),
                metrics: vec![Metric {
                    key: "loss".into(),
                    value: if step == 2 {
                        f64::INFINITY
                    } else {
                        1.0 / (step + 1) as f64
                    },
                    timestamp: step,
                    step,
                }],
                params: vec![KeyValue {
                    key: "lr".into(),
                    value: format!("0.{n}"),
                }],
                tags: vec![KeyValue {
                    key: "team".into(),
                    value: "risk".into(),
                }],
            })
            .await
            .unwrap();
        }
        last_run = run_id;
    }
    node.store_artifact(&last_run, "notes/readme.txt", b"hello".to_vec())
        .await
        .unwrap();
    for name in ["kept", "renamed", "deleted"] {
        node.append(Event::ModelCreated {
            at: now_ms(),
            name: format!("{experiment}-{name}"),
            description: String::new(),
            tags: vec![],
        })
        .await
        .unwrap();
    }
    node.append(Event::ModelRenamed {
        at: now_ms(),
        name: format!("{experiment}-renamed"),
        new_name: format!("{experiment}-new-name"),
    })
    .await
    .unwrap();
    node.append(Event::ModelDeleted {
        at: now_ms(),
        name: format!("{experiment}-deleted"),
    })
    .await
    .unwrap();
    assert!(
        node.take_lease(
            bus,
            &format!("{experiment}/lease"),
            "me",
            std::time::Duration::from_secs(60)
        )
        .await
        .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_replays_only_the_new_events_and_every_state_equals_a_replay() {
    let (_broker, bus) = broker().await;
    let dir = tempfile::tempdir().unwrap();
    let artifacts = || ArtifactStore::open(dir.path().join("artifacts").to_str().unwrap()).unwrap();
    let store_dir = dir.path().join("meta-store");

    // A first server writes, and saves as it closes.
    let (node, restored) =
        Tracker::open_with_store(&bus, artifacts(), Store::open(&store_dir).unwrap())
            .await
            .unwrap();
    assert_eq!(restored.from_store, 0);
    assert!(restored.rebuilt.is_some(), "{restored:?}");
    write_some(&bus, &node, "first", 5).await;
    node.close().await;

    let replayed = tracker::replay(&bus).await.unwrap();
    let saved = Store::open(&store_dir).unwrap().load().unwrap().unwrap();
    assert_eq!(saved.state, replayed, "the store holds what a replay gives");
    // What the command line reads: the store, then the log after it; or
    // the whole log where there is no store.
    assert_eq!(
        tracker::replay_with_store(&bus, &store_dir).await.unwrap(),
        replayed
    );
    assert_eq!(
        tracker::replay_with_store(&bus, &dir.path().join("none"))
            .await
            .unwrap(),
        replayed
    );
    assert_eq!(saved.state.applied(), replayed.applied());

    // While no server runs, another writer adds events.
    let other = Tracker::open(&bus, artifacts()).await.unwrap();
    write_some(&bus, &other, "second", 2).await;
    other.close().await;
    let written_since = tracker::replay(&bus).await.unwrap().applied() - replayed.applied();

    // The restart reads the store, then replays only those events.
    let (node, restored) =
        Tracker::open_with_store(&bus, artifacts(), Store::open(&store_dir).unwrap())
            .await
            .unwrap();
    assert_eq!(restored.rebuilt, None);
    assert_eq!(restored.from_store, replayed.applied());
    assert_eq!(restored.from_log, written_since);
    assert_eq!(node.snapshot(), tracker::replay(&bus).await.unwrap());

    // A save while writes go on: the state saved stands at a position of
    // the log, its own events beyond what the follower has read included.
    let writer = {
        let (bus, node) = (bus.clone(), node.clone());
        tokio::spawn(async move { write_some(&bus, &node, "third", 4).await })
    };
    for _ in 0..5 {
        node.save().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    writer.await.unwrap();
    // A burst of writes saved at once: the follower has not read them
    // back yet, so the position must name them as already applied. A
    // follower quick enough to read a burst back before the save leaves
    // nothing to name: another burst is written, up to ten.
    let run_id = node.read(|state| state.runs_of("3").next().unwrap().run_id.clone());
    let mut saved = None;
    for burst_number in 0..10_i64 {
        let burst = (0..20).map(|step| {
            node.append(Event::RunLogged {
                at: now_ms(),
                run_id: run_id.clone(),
                metrics: vec![Metric {
                    key: "burst".into(),
                    value: step as f64,
                    timestamp: step,
                    step: burst_number * 20 + step,
                }],
                params: vec![],
                tags: vec![],
            })
        });
        for written in futures::future::join_all(burst).await {
            written.unwrap();
        }
        assert!(node.save().await.unwrap());
        let state = Store::open_read_only(&store_dir)
            .unwrap()
            .load()
            .unwrap()
            .unwrap();
        if !state.position.skip.is_empty() {
            saved = Some(state);
            break;
        }
    }
    let saved = saved.expect("in ten bursts, no save came before the follower read the burst back");
    let caught_up = tracker::replay_from(&bus, saved).await.unwrap();
    assert_eq!(caught_up, tracker::replay(&bus).await.unwrap());
    node.close().await;

    // A wiped store is rebuilt by replay, with the same answers.
    std::fs::remove_dir_all(&store_dir).unwrap();
    let (node, restored) =
        Tracker::open_with_store(&bus, artifacts(), Store::open(&store_dir).unwrap())
            .await
            .unwrap();
    assert!(restored.rebuilt.is_some());
    assert_eq!(restored.from_store, 0);
    let replayed = tracker::replay(&bus).await.unwrap();
    assert_eq!(restored.from_log, replayed.applied());
    assert_eq!(node.snapshot(), replayed);
    node.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_saved_from_another_log_is_rebuilt_from_this_one() {
    let dir = tempfile::tempdir().unwrap();
    let artifacts = || ArtifactStore::open(dir.path().join("artifacts").to_str().unwrap()).unwrap();
    let store_dir = dir.path().join("meta-store");
    {
        let (_broker, bus) = broker().await;
        let (node, _) =
            Tracker::open_with_store(&bus, artifacts(), Store::open(&store_dir).unwrap())
                .await
                .unwrap();
        write_some(&bus, &node, "gone", 3).await;
        node.close().await;
    }
    // A new broker: its log has other events at the same offsets.
    let (_broker, bus) = broker().await;
    let other = Tracker::open(&bus, artifacts()).await.unwrap();
    write_some(&bus, &other, "here", 3).await;
    other.close().await;
    // A reader skips the other log's store.
    let read = tracker::replay_with_store(&bus, &store_dir).await.unwrap();
    assert_eq!(read, tracker::replay(&bus).await.unwrap());
    assert!(read.experiment_by_name("gone").is_err());
    let (node, restored) =
        Tracker::open_with_store(&bus, artifacts(), Store::open(&store_dir).unwrap())
            .await
            .unwrap();
    let why = restored.rebuilt.expect("rebuilt");
    assert!(why.contains("not this weir.meta"), "{why}");
    assert_eq!(node.snapshot(), tracker::replay(&bus).await.unwrap());
    assert!(node.read(|s| s.experiment_by_name("gone").is_err()));
    node.close().await;
}
