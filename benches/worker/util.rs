//! Small helpers the parts share: milliseconds, /proc fields, waiting for completed jobs.

use std::time::{Duration, Instant};

use roadmap_worker::metrics::Metrics;

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A `Name:   1234 kB` field of a /proc file, as a number.
pub fn proc_field(path: &str, name: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub async fn wait_completed(metrics: &Metrics, jobs: usize, timeout: Duration) {
    let start = Instant::now();
    while metrics.jobs_completed.get() < jobs as u64 {
        assert!(
            start.elapsed() < timeout,
            "only {} of {jobs} jobs completed within {timeout:?}",
            metrics.jobs_completed.get()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
