//! Small helpers the parts share: milliseconds, /proc fields, waiting for completed jobs.

use std::time::{Duration, Instant};

use roadmap_worker::metrics::Metrics;

use testkit::TestEnv;

/// The worker binary as a child process with `extra` settings and /metrics on a free port,
/// once it answers /readyz: the child, its metrics address and a client for it.
pub async fn spawn_replica(
    env: &TestEnv,
    extra: &[(&str, &str)],
) -> (tokio::process::Child, String, reqwest::Client) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut settings = extra.to_vec();
    settings.push(("METRICS_ADDR", &addr));
    let child = env.spawn_worker_process(&settings);
    let http = reqwest::Client::new();
    testkit::eventually(Duration::from_secs(60), "the replica to be ready", || async {
        let response = http.get(format!("http://{addr}/readyz")).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    (child, addr, http)
}

/// The value of an unlabelled series on a replica's /metrics.
pub async fn scrape(http: &reqwest::Client, addr: &str, series: &str) -> Option<f64> {
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

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

/// CPU time (user + system) in clock ticks of this process, of Postgres and of RabbitMQ.
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    this: u64,
    postgres: u64,
    rabbitmq: u64,
}

impl Cpu {
    pub fn now() -> Self {
        Self::with(None)
    }

    /// Like [`Cpu::now`], with process `pid` in place of this one.
    pub fn with(pid: Option<u32>) -> Self {
        let own = pid.map_or_else(|| "/proc/self/stat".to_owned(), |p| format!("/proc/{p}/stat"));
        let this = std::fs::read_to_string(own)
            .ok()
            .and_then(|s| stat_ticks(&s).map(|(_, t)| t))
            .unwrap_or(0);
        let (mut postgres, mut rabbitmq) = (0, 0);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let is_pid = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
            let Some((comm, ticks)) = is_pid
                .then(|| std::fs::read_to_string(entry.path().join("stat")).ok())
                .flatten()
                .and_then(|s| stat_ticks(&s))
            else {
                continue;
            };
            match comm.as_str() {
                "postgres" => postgres += ticks,
                "beam.smp" => rabbitmq += ticks,
                _ => {}
            }
        }
        Self {
            this,
            postgres,
            rabbitmq,
        }
    }

    /// Milliseconds per job since `before` for each of the three (Linux's USER_HZ is 100).
    pub fn per_job_since(&self, before: &Self, jobs: usize) -> String {
        self.per_job_as(before, jobs, "this process")
    }

    /// Like [`Cpu::per_job_since`], naming the process `label`.
    pub fn per_job_as(&self, before: &Self, jobs: usize, label: &str) -> String {
        let ms = |a: u64, b: u64| a.saturating_sub(b) as f64 * 10.0 / jobs as f64;
        format!(
            "CPU ms/job: {label} {:5.1}, postgres {:5.1}, rabbitmq {:4.1}",
            ms(self.this, before.this),
            ms(self.postgres, before.postgres),
            ms(self.rabbitmq, before.rabbitmq)
        )
    }
}

/// The command name and utime + stime of a `/proc/<pid>/stat` line.
fn stat_ticks(stat: &str) -> Option<(String, u64)> {
    let (head, tail) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    // After the command: state is field 3, utime 14 and stime 15 (proc(5)).
    let fields: Vec<&str> = tail.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}
