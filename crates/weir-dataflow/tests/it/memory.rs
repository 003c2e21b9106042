//! State lives in RocksDB: a million keys in one open window do not stay
//! in memory, and closing the window evaluates them chunk by chunk.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use weir_dataflow::aggregate::{Emit, WindowAggregator};
use weir_dataflow::plan::plan_aggregate;
use weir_dataflow::store::Store;
use weir_dataflow::window::Window;

/// This process's resident and peak resident memory, in MiB.
fn memory_mib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap()
            / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn a_million_keys_stay_in_rocksdb() {
    const KEYS: usize = 1_000_000;
    const PER_EPOCH: usize = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let store = Rc::new(Store::open(dir.path()).unwrap());
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, false),
        Field::new("event_time", DataType::Int64, false),
    ]));
    let plan = plan_aggregate(
        schema.clone(),
        None,
        &["user_id"],
        &[("n", "count(*)"), ("total", "sum(amount)")],
    )
    .unwrap();
    let window = Window::tumbling(Duration::from_secs(86_400)).unwrap();
    let mut aggregator = WindowAggregator::new(2, store, plan, window, 2, Emit::OnClose).unwrap();
    aggregator.recover(None).unwrap();

    let (start_rss, _) = memory_mib();
    let mut rss_at_fifth = 0;
    for epoch in 1..=(KEYS / PER_EPOCH) as u64 {
        let first = (epoch as usize - 1) * PER_EPOCH;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    (first..first + PER_EPOCH).map(|i| format!("user-{i:07}")),
                )),
                Arc::new(Float64Array::from_iter_values(
                    (0..PER_EPOCH).map(|i| i as f64),
                )),
                Arc::new(Int64Array::from_iter_values(
                    (0..PER_EPOCH).map(|i| 1_000 * i as i64),
                )),
            ],
        )
        .unwrap();
        aggregator.update(epoch, &batch).unwrap();
        aggregator.seal(epoch).unwrap();
        aggregator.commit(epoch).unwrap();
        if epoch == 4 {
            rss_at_fifth = memory_mib().0;
        }
    }
    let (loaded_rss, _) = memory_mib();

    let results = aggregator.close(21, i64::MAX).unwrap();
    let (_, peak) = memory_mib();
    let rows: usize = results.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows, KEYS, "one result per key");
    assert!(
        results.iter().all(|b| b.num_rows() <= 32_768),
        "evaluated in chunks"
    );
    let n: i64 = results
        .iter()
        .map(|b| {
            b.column(3)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .iter()
                .sum::<i64>()
        })
        .sum();
    assert_eq!(n, KEYS as i64);
    println!(
        "RSS: start {start_rss} MiB, 200k keys {rss_at_fifth} MiB, 1M keys {loaded_rss} MiB, peak {peak} MiB"
    );
    // Keys 200k..1M added at most RocksDB's write buffers, not their state.
    assert!(
        loaded_rss < rss_at_fifth + 160,
        "memory grew with the keys: {rss_at_fifth} MiB at 200k keys, {loaded_rss} MiB at 1M"
    );
    assert!(
        peak < start_rss + 600,
        "peak {peak} MiB from {start_rss} MiB"
    );
}
