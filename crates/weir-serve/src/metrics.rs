//! Request counts and latency histograms, in Prometheus' text format.
//!
//! Latencies go into HDR histograms (µs, 3 significant digits), exported as
//! summaries: the p50, p90, p99 and p99.9 quantiles, the count and the sum.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;

use crate::log::Channel;

/// A deployment's metrics.
#[derive(Debug)]
pub struct Metrics {
    deployment: String,
    /// `[channel][ok, failed]`.
    requests: [[AtomicU64; 2]; 4],
    rows: AtomicU64,
    latency: [Mutex<Histogram<u64>>; 4],
}

fn histogram() -> Mutex<Histogram<u64>> {
    Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"))
}

const CHANNELS: [(Channel, &str); 4] = [
    (Channel::Http, "http"),
    (Channel::Stream, "stream"),
    (Channel::Batch, "batch"),
    (Channel::Grpc, "grpc"),
];

impl Metrics {
    /// Empty metrics for `deployment`.
    pub fn new(deployment: &str) -> Self {
        Self {
            deployment: deployment.to_string(),
            requests: Default::default(),
            rows: AtomicU64::new(0),
            latency: [histogram(), histogram(), histogram(), histogram()],
        }
    }

    /// Counts a request.
    pub fn record(&self, channel: Channel, ok: bool, rows: usize, latency_us: u64) {
        let i = channel.index();
        self.requests[i][usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
        let _ = self.latency[i]
            .lock()
            .expect("histogram lock")
            .record(latency_us.max(1));
    }

    /// Requests answered and failed so far, over every channel.
    pub fn totals(&self) -> (u64, u64) {
        self.requests.iter().fold((0, 0), |(ok, failed), c| {
            (
                ok + c[0].load(Ordering::Relaxed),
                failed + c[1].load(Ordering::Relaxed),
            )
        })
    }

    /// A latency quantile (ms) of a channel.
    pub fn latency_ms(&self, channel: Channel, quantile: f64) -> f64 {
        let histogram = self.latency[channel.index()]
            .lock()
            .expect("histogram lock");
        histogram.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// Clears the latency histograms (the autoscaler reads recent ones).
    pub fn reset_latency(&self, channel: Channel) {
        self.latency[channel.index()]
            .lock()
            .expect("histogram lock")
            .reset();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let d = &self.deployment;
        let mut out = String::new();
        out.push_str("# HELP weir_requests_total Inference requests, by protocol and outcome.\n");
        out.push_str("# TYPE weir_requests_total counter\n");
        for (channel, name) in CHANNELS {
            for (k, outcome) in ["ok", "error"].iter().enumerate() {
                let _ = writeln!(
                    out,
                    "weir_requests_total{{deployment=\"{d}\",protocol=\"{name}\",outcome=\"{outcome}\"}} {}",
                    self.requests[channel.index()][k].load(Ordering::Relaxed)
                );
            }
        }
        out.push_str("# HELP weir_rows_total Rows scored.\n# TYPE weir_rows_total counter\n");
        let _ = writeln!(
            out,
            "weir_rows_total{{deployment=\"{d}\"}} {}",
            self.rows.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP weir_request_latency_seconds Arrival to response.\n# TYPE weir_request_latency_seconds summary\n",
        );
        for (channel, name) in CHANNELS {
            let histogram = self.latency[channel.index()]
                .lock()
                .expect("histogram lock");
            let labels = format!("deployment=\"{d}\",protocol=\"{name}\"");
            for q in [0.5, 0.9, 0.99, 0.999] {
                let _ = writeln!(
                    out,
                    "weir_request_latency_seconds{{{labels},quantile=\"{q}\"}} {}",
                    histogram.value_at_quantile(q) as f64 / 1e6
                );
            }
            let sum: f64 = histogram
                .iter_recorded()
                .map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64)
                .sum();
            let _ = writeln!(
                out,
                "weir_request_latency_seconds_sum{{{labels}}} {}",
                sum / 1e6
            );
            let _ = writeln!(
                out,
                "weir_request_latency_seconds_count{{{labels}}} {}",
                histogram.len()
            );
        }
        out
    }
}
