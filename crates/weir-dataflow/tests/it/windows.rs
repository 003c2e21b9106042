use std::time::Duration;

use weir_dataflow::job::Cluster;
use weir_dataflow::window::Window;

use crate::support::{Harness, Results, events, memory, publish, run_to_end, spec};

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
        spec("hop", "hop-in", h.state.path(), window, sink),
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
        spec("t1", "tumble-in", h.state.path(), window, sink),
        Cluster::local(1),
    )
    .await;
    one.assert_matches(&reference);
    let (sink, _) = memory();
    let two = run_to_end(
        &h.bus,
        spec("t2", "tumble-in", h.state.path(), window, sink),
        Cluster::local(2),
    )
    .await;
    two.assert_matches(&reference);
}
