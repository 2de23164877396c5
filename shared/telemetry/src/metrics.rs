//! Prometheus metrics: one process-wide recorder behind the `metrics` facade.
//!
//! Every role records with the `metrics` macros; [`install`] makes those records visible,
//! and [`render`] produces the text exposition format served at `/metrics`. Histograms
//! are real Prometheus histograms (fixed buckets), so they aggregate across instances.

use std::{sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Buckets for durations, in seconds: 1 ms to 2 min.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Buckets for batch sizes: powers of four up to 2^20.
const SIZES: &[f64] = &[
    1.0,
    4.0,
    16.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
];

/// Install the process-wide recorder (idempotent) and describe the service's metrics.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full("cas_batch_size".to_owned()), SIZES)
            })
            .expect("bucket lists are not empty")
            .install_recorder()
            .unwrap_or_else(|_| {
                // Another recorder is installed (only possible in tests that install their
                // own): keep a private one so rendering still works.
                PrometheusBuilder::new().build_recorder().handle()
            });
        let upkeep = handle.clone();
        // Without a scraper, histogram samples would accumulate; fold them regularly.
        std::thread::Builder::new()
            .name("metrics-upkeep".to_owned())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            })
            .ok();
        describe();
        handle
    })
}

/// The current metrics in the Prometheus text format (installing the recorder if needed).
pub fn render() -> String {
    install().render()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "cas_http_requests_total",
        "HTTP requests answered, by route and status code"
    );
    describe_histogram!(
        "cas_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency, by route"
    );
    describe_counter!(
        "cas_requests_created_total",
        "Anchor requests accepted as new"
    );
    describe_counter!(
        "cas_batches_closed_total",
        "Batches closed by the scheduler"
    );
    describe_histogram!("cas_batch_size", Unit::Count, "Requests per closed batch");
    describe_counter!(
        "cas_batches_anchored_total",
        "Batches anchored by the worker"
    );
    describe_histogram!(
        "cas_tree_build_seconds",
        Unit::Seconds,
        "Time to build a batch's Merkle tree"
    );
    describe_histogram!(
        "cas_batch_processing_seconds",
        Unit::Seconds,
        "Time from receiving a batch to recording its anchor"
    );
    describe_gauge!(
        "cas_queue_depth",
        Unit::Count,
        "Approximate visible messages per queue"
    );
    describe_gauge!(
        "cas_oldest_pending_seconds",
        Unit::Seconds,
        "Age of the oldest request waiting in the scheduler for its batch"
    );
    describe_gauge!(
        "cas_pending_requests",
        Unit::Count,
        "Requests waiting in the scheduler for their batch"
    );
    describe_counter!(
        "cas_witness_cache_hits_total",
        "Witnesses served from the in-memory cache"
    );
    describe_counter!(
        "cas_witness_cache_misses_total",
        "Witnesses built from the tree artifact"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn recorded_values_are_rendered() {
        super::install();
        metrics::counter!("cas_test_counter_total", "kind" => "x").increment(3);
        metrics::histogram!("cas_test_latency_seconds").record(0.02);
        let text = super::render();
        assert!(
            text.contains("cas_test_counter_total{kind=\"x\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("cas_test_latency_seconds_bucket{le=\"0.025\"} 1"),
            "histograms have buckets: {text}"
        );
    }
}
