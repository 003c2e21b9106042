use std::time::Duration;

use weir_dataflow::job::{Cluster, start};
use weir_dataflow::window::Window;

use crate::support::{Harness, Results, events, memory, publish, spec};

fn free_address() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_process_cluster_gives_the_same_results() {
    let h = Harness::start().await;
    let data = events(8_000, 40, 50, 1_000, 3);
    publish(&h.bus, "cluster-in", 4, &data).await;
    let window = Window::hopping(Duration::from_secs(40), Duration::from_secs(20)).unwrap();
    let addresses = vec![free_address(), free_address()];
    // Two timely processes (here: two clusters of threads in this test
    // process, talking over loopback TCP exactly as separate processes do).
    let mut handles = Vec::new();
    let mut sinks = Vec::new();
    for process in 0..2 {
        let (sink, results) = memory();
        let cluster = Cluster {
            threads: 1,
            process,
            addresses: addresses.clone(),
        };
        handles.push(
            start(
                spec("cluster", "cluster-in", h.dir.path(), window, sink),
                &h.bus,
                cluster,
            )
            .await
            .unwrap(),
        );
        sinks.push(results);
    }
    for handle in handles {
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .unwrap()
            .unwrap();
    }
    let batches: Vec<_> = sinks.iter().flat_map(|s| s.batches()).collect();
    Results::from_batches(&batches).assert_matches(&Results::reference(&data, window));
}
