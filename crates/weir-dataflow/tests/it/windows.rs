use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::{Array, Float64Array, StringArray, TimestampMillisecondArray};
use weir_dataflow::aggregate::Emit;
use weir_dataflow::job::{Cluster, start};
use weir_dataflow::window::Window;

use crate::support::{
    Harness, Results, append, events, memory, publish, reference_groups, run_to_end, spec,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hopping_windows_on_out_of_order_data_equal_the_reference() {
    let h = Harness::start().await;
    // 20k events, 100 ms apart, up to 3 s out of order (lateness is 5 s).
    let data = events(20_000, 50, 100, 3_000, 1);
    publish(&h.bus, "hop-in", 3, &data).await;
    let window = Window::hopping(Duration::from_secs(60), Duration::from_secs(20)).unwrap();
    let (sink, _) = memory();
    let got = run_to_end(
        &h.bus,
        spec("hop", "hop-in", h.dir.path(), window, sink),
        Cluster::local(1),
    )
    .await;
    got.assert_matches(&Results::reference(&data, window));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumbling_windows_with_one_and_two_workers_agree() {
    let h = Harness::start().await;
    let data = events(10_000, 30, 50, 1_000, 2);
    publish(&h.bus, "tumble-in", 4, &data).await;
    let window = Window::tumbling(Duration::from_secs(30)).unwrap();
    let reference = Results::reference(&data, window);
    let (sink, _) = memory();
    let one = run_to_end(
        &h.bus,
        spec("t1", "tumble-in", h.dir.path(), window, sink),
        Cluster::local(1),
    )
    .await;
    one.assert_matches(&reference);
    let (sink, _) = memory();
    let two = run_to_end(
        &h.bus,
        spec("t2", "tumble-in", h.dir.path(), window, sink),
        Cluster::local(2),
    )
    .await;
    two.assert_matches(&reference);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_windows_equal_the_reference() {
    let h = Harness::start().await;
    // 40 users, one event every 250 ms overall: a user's events are ~10 s
    // apart on average, so a 12 s gap both joins and splits sessions.
    let data = events(12_000, 40, 250, 2_000, 4);
    publish(&h.bus, "session-in", 3, &data).await;
    let window = Window::session(Duration::from_secs(12)).unwrap();
    let (sink, results) = memory();
    let got = run_to_end(
        &h.bus,
        spec("sessions", "session-in", h.dir.path(), window, sink),
        Cluster::local(2),
    )
    .await;
    let reference = Results::reference(&data, window);
    got.assert_matches(&reference);
    // Window bounds: first event, last event + gap.
    let groups = reference_groups(&data, window);
    for batch in results.batches() {
        let col = |name: &str| batch.column(batch.schema().index_of(name).unwrap()).clone();
        let users = col("user_id");
        let users = users.as_any().downcast_ref::<StringArray>().unwrap();
        let (starts, ends) = (col("window_start"), col("window_end"));
        let starts = starts
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        let ends = ends
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        for i in 0..batch.num_rows() {
            let events = &groups[&(users.value(i).to_string(), starts.value(i))];
            let last = events.iter().map(|e| e.ts).max().unwrap();
            assert_eq!(ends.value(i), last + 12_000);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_aggregate_equals_the_reference() {
    let h = Harness::start().await;
    let data = events(10_000, 20, 50, 1_000, 5);
    publish(&h.bus, "aggregates-in", 2, &data).await;
    let window = Window::tumbling(Duration::from_secs(20)).unwrap();
    let (sink, results) = memory();
    let mut job = spec("aggregates", "aggregates-in", h.dir.path(), window, sink);
    job.aggregation.as_mut().unwrap().aggregates = vec![
        ("n".into(), "count(*)".into()),
        ("total".into(), "sum(amount)".into()),
        ("mean".into(), "avg(amount)".into()),
        ("low".into(), "min(amount)".into()),
        ("high".into(), "max(amount)".into()),
        ("merchants".into(), "count(DISTINCT merchant_id)".into()),
        ("sd".into(), "stddev(amount)".into()),
        ("variance".into(), "var_pop(amount)".into()),
        (
            "median".into(),
            "approx_percentile_cont(amount, 0.5)".into(),
        ),
        ("first_merchant".into(), "min(merchant_id)".into()),
    ];
    let got = run_to_end(&h.bus, job, Cluster::local(1)).await;
    got.assert_matches(&Results::reference(&data, window));
    let groups = reference_groups(&data, window);
    let mut seen = 0;
    for batch in results.batches() {
        let col = |name: &str| batch.column(batch.schema().index_of(name).unwrap()).clone();
        let floats = |name: &str| {
            col(name)
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .clone()
        };
        let users = col("user_id");
        let users = users.as_any().downcast_ref::<StringArray>().unwrap();
        let starts = col("window_start");
        let starts = starts
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        let firsts = col("first_merchant");
        let firsts = firsts.as_any().downcast_ref::<StringArray>().unwrap();
        let (sd, variance, median) = (floats("sd"), floats("variance"), floats("median"));
        for i in 0..batch.num_rows() {
            seen += 1;
            let events = &groups[&(users.value(i).to_string(), starts.value(i))];
            let amounts: Vec<f64> = events.iter().map(|e| e.amount).collect();
            let n = amounts.len() as f64;
            let mean = amounts.iter().sum::<f64>() / n;
            let squares: f64 = amounts.iter().map(|a| (a - mean).powi(2)).sum();
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0);
            assert!(close(variance.value(i), squares / n), "var_pop of {i}");
            if amounts.len() > 1 {
                assert!(
                    close(sd.value(i), (squares / (n - 1.0)).sqrt()),
                    "stddev of {i}"
                );
            } else {
                assert!(sd.is_null(i), "stddev of one value is null");
            }
            // The t-digest is approximate: the median lies between the
            // 30th and the 70th percentile of the exact values.
            let mut sorted = amounts.clone();
            sorted.sort_by(f64::total_cmp);
            let rank = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
            let (lo, hi) = (rank(0.3), rank(0.7));
            assert!(
                median.value(i) >= lo - 1e-9 && median.value(i) <= hi + 1e-9,
                "median {} not within [{lo}, {hi}]",
                median.value(i)
            );
            let first = events.iter().map(|e| e.merchant.as_str()).min().unwrap();
            assert_eq!(firsts.value(i), first);
        }
    }
    assert_eq!(seen, groups.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_end_with_the_values_of_closed_windows() {
    let h = Harness::start().await;
    let data = events(8_000, 30, 50, 1_000, 6);
    let (first, second) = data.split_at(data.len() / 2);
    publish(&h.bus, "update-in", 2, first).await;
    let window = Window::hopping(Duration::from_secs(40), Duration::from_secs(20)).unwrap();
    let (sink, results) = memory();
    let mut job = spec("updates", "update-in", h.dir.path(), window, sink);
    job.aggregation.as_mut().unwrap().emit = Emit::OnUpdate;
    job.checkpoint_interval = Duration::from_secs(3600);
    crate::support::kafka_source(&mut job).bounded = false;
    let handle = start(job, &h.bus, Cluster::local(2)).await.unwrap();
    // Two checkpoints, one after each half: the windows that straddle the
    // halves are updated at both, whatever the timing of the reads.
    let checkpoint_after = |records: usize| {
        let handle = &handle;
        async move {
            crate::support::wait_until_read(handle, records).await;
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let before = handle.status().committed_epoch;
            handle.checkpoint();
            while handle.status().committed_epoch == before {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{:?}",
                    handle.status()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    checkpoint_after(first.len()).await;
    let updates_of_first_half: usize = results.batches().iter().map(|b| b.num_rows()).sum();
    assert!(
        updates_of_first_half > 0,
        "the first checkpoint emits updates"
    );
    append(&h.bus, "update-in", second).await;
    checkpoint_after(data.len()).await;
    handle.stop();
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap()
        .unwrap();
    // The last update of each window is its final value.
    let batches = results.batches();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut last = BTreeMap::new();
    for batch in &batches {
        for (key, row) in Results::from_batches(std::slice::from_ref(batch)).0 {
            last.insert(key, row);
        }
    }
    let reference = Results::reference(&data, window);
    Results(last).assert_matches(&reference);
    assert!(
        rows > reference.0.len(),
        "{rows} updates for {} windows: the windows across the halves are updated twice",
        reference.0.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_can_be_asked_for() {
    let h = Harness::start().await;
    let data = events(2_000, 10, 50, 500, 13);
    publish(&h.bus, "asked-in", 2, &data).await;
    let window = Window::tumbling(Duration::from_secs(10)).unwrap();
    let (sink, _) = memory();
    let mut job = spec("asked", "asked-in", h.dir.path(), window, sink);
    job.checkpoint_interval = Duration::from_secs(3600);
    crate::support::kafka_source(&mut job).bounded = false;
    let handle = start(job, &h.bus, Cluster::local(2)).await.unwrap();
    crate::support::wait_until_read(&handle, data.len()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    assert_eq!(handle.status().committed_epoch, None, "no checkpoint yet");
    handle.checkpoint();
    while handle.status().committed_epoch.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            handle.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.stop();
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_has_read_everything_reports_no_lag() {
    let h = Harness::start().await;
    // Several poll batches per partition, read well within the second
    // between two asks for the partition's end.
    let data = events(30_000, 10, 50, 500, 17);
    publish(&h.bus, "lag-in", 2, &data).await;
    let window = Window::tumbling(Duration::from_secs(10)).unwrap();
    let (sink, _) = memory();
    let mut job = spec("lag", "lag-in", h.dir.path(), window, sink);
    crate::support::kafka_source(&mut job).bounded = false;
    let handle = start(job, &h.bus, Cluster::local(1)).await.unwrap();
    crate::support::wait_until_read(&handle, data.len()).await;
    let ends = h.bus.admin().describe_topic("lag-in").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = handle.status();
        let settled = ends.partitions.iter().all(|p| {
            status
                .partitions
                .get(&p.id)
                .is_some_and(|s| s.offset == p.high && s.lag == 0)
        });
        if settled {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a caught-up job must report each partition at its end with no lag: {status:?} vs {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.stop();
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_operator_fails_ends_with_the_error_rather_than_hanging() {
    let h = Harness::start().await;
    let data = events(500, 10, 50, 500, 19);
    publish(&h.bus, "failing-in", 2, &data).await;
    let window = Window::tumbling(Duration::from_secs(10)).unwrap();
    let (sink, _) = memory();
    let mut job = spec("failing", "failing-in", h.dir.path(), window, sink);
    // User ids are `u…`: casting them to a number fails on the first batch.
    job.select = Some(weir_dataflow::job::Select {
        filter: None,
        columns: Some(vec![
            ("user_id".into(), "CAST(user_id AS BIGINT)".into()),
            ("amount".into(), "amount".into()),
            ("event_time".into(), "event_time".into()),
        ]),
    });
    job.aggregation = None;
    let handle = start(job, &h.bus, Cluster::local(2)).await.unwrap();
    let ended = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || handle.join()),
    )
    .await
    .expect("a failed job ends")
    .unwrap();
    let error = ended.expect_err("the job failed").to_string();
    assert!(error.contains("Cast") || error.contains("cast"), "{error}");
}
