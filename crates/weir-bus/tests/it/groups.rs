use weir_bus::{ConsumerOptions, Publisher, StartFrom};

use crate::support::{Harness, txn};

async fn publish(publisher: &Publisher, range: std::ops::Range<usize>) {
    for i in range {
        let bytes = publisher.encode(&txn(i)).unwrap();
        publisher.send(None, &bytes).await.unwrap().await.unwrap();
    }
}

fn index(record: &weir_bus::Record) -> i64 {
    (record.value.to_json()["amount"].as_f64().unwrap() / 1.25).round() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_group_member_resumes_at_the_committed_offset() {
    let h = Harness::start().await;
    h.topic("orders", 1).await;
    let publisher = h.bus.publisher("orders").unwrap();
    publish(&publisher, 0..100).await;

    let options = ConsumerOptions {
        group: Some("billing".into()),
        start: StartFrom::Committed,
        until_end: true,
        read_only: false,
        ..Default::default()
    };
    let mut first = h.bus.consumer(&["orders"], options.clone()).unwrap();
    let mut seen = Vec::new();
    for _ in 0..40 {
        seen.push(index(&first.next().await.unwrap().unwrap()));
    }
    first.commit().await.unwrap();
    // Read ten more but stop before committing them: they must come again.
    for _ in 0..10 {
        first.next().await.unwrap().unwrap();
    }
    drop(first);

    // More records arrive while no member runs.
    publish(&publisher, 100..120).await;

    let mut second = h.bus.consumer(&["orders"], options).unwrap();
    let first_again = second.next().await.unwrap().unwrap();
    assert_eq!(first_again.offset, 40, "resumes at the committed offset");
    seen.push(index(&first_again));
    while let Some(record) = second.next().await.unwrap() {
        seen.push(index(&record));
    }
    second.commit().await.unwrap();
    assert_eq!(
        seen,
        (0..120).collect::<Vec<_>>(),
        "nothing lost, nothing twice"
    );
}
