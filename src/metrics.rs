//! Every metric the worker exports, in one registry per worker (so tests can run several workers
//! in one process). Names follow Prometheus conventions; no label carries a job or user id.

use prometheus::{
    Counter, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::domain::{
    AnswerFault, BatchOutcome, RejectReason,
    event::{COMPLETED, FAILED, JobFailure, PROGRESS},
};

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Jobs claimed and started (including resumed ones).
    pub jobs_started: IntCounter,
    pub jobs_completed: IntCounter,
    /// Jobs that ended with a `roadmap.failed` event, by reason code.
    pub jobs_failed: IntCounterVec,
    /// Messages refused at intake, by reason code.
    pub jobs_rejected: IntCounterVec,
    /// Messages moved to the dead-letter queue, by reason code.
    pub dead_lettered: IntCounterVec,
    pub jobs_in_flight: IntGauge,
    /// Free job slots on this replica; with `jobs_in_flight`, the autoscaling signal.
    pub worker_slots_free: IntGauge,
    /// Jobs that found checkpoints from an earlier delivery and resumed from them.
    pub jobs_resumed: IntCounter,
    /// Stranded jobs re-published by the sweeper.
    pub jobs_redispatched: IntCounter,
    /// Broker sessions opened after the first (reconnections).
    pub amqp_reconnects: IntCounter,
    pub job_duration: Histogram,
    pub batch_duration: Histogram,
    /// Finished batches by outcome: ok, retried, truncated, reasked, fallback.
    pub batches: IntCounterVec,
    /// Failed attempts within batches, by reason (LLM status, invalid_json, invalid_schema, truncated).
    pub batch_failures: IntCounterVec,
    /// Batches generated again although a checkpoint for them existed (lost a race or a lease).
    pub batches_regenerated: IntCounter,
    /// Outline calls by outcome, as for batches (fallback: the template outline stood in).
    pub outlines: IntCounterVec,
    pub llm_requests: IntCounterVec,
    pub llm_request_duration: HistogramVec,
    /// LLM tokens by direction: input, output.
    pub llm_tokens: IntCounterVec,
    /// 1 while the provider accepts requests, 0 after a configuration fault (bad key, model).
    pub provider_ready: IntGauge,
    /// Waits for the shared provider budget before a call (count and seconds).
    pub budget_wait: Histogram,
    /// Budget tokens reserved before calls and used by them (`kind`).
    pub budget_tokens: IntCounterVec,
    /// 429 answers from the provider.
    pub rate_limited: IntCounter,
    /// Answers let through the answer gate without a place, its wait having run out.
    pub answers_unadmitted: IntCounter,
    /// What the calls cost at the configured prices, in the price's currency unit.
    pub llm_cost: Counter,
    /// 1, labelled with the worker's version.
    pub build_info: IntGaugeVec,
    /// WORKER_CONCURRENCY: jobs this replica takes at once.
    pub concurrency_limit: IntGauge,
    /// Database pool connections by `state` (`in_use`, `idle`), and tasks waiting for one.
    pub db_pool: IntGaugeVec,
    pub db_pool_waiting: IntGauge,
    /// Event publishes that failed (broker away, nacked, unconfirmed); the event is kept.
    pub events_publish_failures: IntCounterVec,
    /// This process: CPU seconds, resident memory, open file descriptors (read at scrape).
    pub process_cpu: Gauge,
    pub process_rss: IntGauge,
    pub process_fds: IntGauge,
    pub outbox_backlog: IntGauge,
    pub outbox_oldest_age: Gauge,
    /// Events confirmed by the broker and taken by at least one queue, by type.
    pub events_published: IntCounterVec,
    /// Publish attempts that no queue took (no consumer queue bound yet), by type. Completion
    /// and failure events stay unsent and are tried again; progress events are let go.
    pub events_unroutable: IntCounterVec,
    /// 1 while intake is paused because a dependency is down, by reason (database, provider).
    pub intake_paused: IntGaugeVec,
    /// Deliveries handed back without spending the broker's delivery limit, by reason
    /// (database, provider: through the retry queue; shutdown: straight back to work).
    pub deliveries_deferred: IntCounterVec,
    /// Messages the broker dead-lettered on its own and the worker accounted for, by outcome
    /// (requeued: back to work; failed: failed with an event; done: the job had ended).
    pub deliveries_recovered: IntCounterVec,
    /// Duplicate deliveries of a job a live replica is working, settled at once.
    pub duplicate_deliveries: IntCounter,
}

/// A label vocabulary: a closed set of values, each started at 0.
macro_rules! labels {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }
    };
}

labels! {
    /// A dependency whose outage pauses intake (`roadmap_intake_paused{reason}`).
    Dependency { Database => "database", Provider => "provider" }
}

labels! {
    /// Why a delivery was handed back (`roadmap_deliveries_deferred_total{reason}`).
    Deferral { Database => "database", Provider => "provider", Shutdown => "shutdown", User => "user_limit" }
}

labels! {
    /// What became of a message the broker dead-lettered on its own
    /// (`roadmap_deliveries_recovered_total{outcome}`).
    Recovery { Requeued => "requeued", Failed => "failed", Done => "done" }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let float_gauge = |name: &str, help: &str| {
            let g = Gauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h =
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let llm_request_duration = HistogramVec::new(
            HistogramOpts::new("roadmap_llm_request_duration_seconds", "Latency of LLM requests.")
                .buckets(vec![0.05, 0.25, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0]),
            &["provider", "model"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(llm_request_duration.clone()))
            .expect("unique metric");
        let outbox_oldest_age = Gauge::new(
            "roadmap_outbox_oldest_unsent_age_seconds",
            "Age of the oldest event not yet confirmed by the broker.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(outbox_oldest_age.clone()))
            .expect("unique metric");
        let llm_cost = Counter::new(
            "roadmap_llm_cost_total",
            "What LLM calls cost at the configured LLM_PRICE_* prices, in their currency unit.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(llm_cost.clone()))
            .expect("unique metric");
        let durations = vec![1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 2400.0];
        Self {
            jobs_started: counter("roadmap_jobs_started_total", "Jobs claimed and started."),
            jobs_completed: counter(
                "roadmap_jobs_completed_total",
                "Jobs completed with a stored roadmap.",
            ),
            jobs_failed: counter_vec(
                "roadmap_jobs_failed_total",
                "Jobs that ended failed, by reason.",
                &["reason"],
            ),
            jobs_rejected: counter_vec(
                "roadmap_jobs_rejected_total",
                "Messages refused at intake, by reason.",
                &["reason"],
            ),
            dead_lettered: counter_vec(
                "roadmap_messages_dead_lettered_total",
                "Messages moved to the dead-letter queue, by reason.",
                &["reason"],
            ),
            jobs_in_flight: gauge("roadmap_jobs_in_flight", "Jobs being worked on by this replica."),
            worker_slots_free: gauge("roadmap_worker_slots_free", "Free job slots on this replica."),
            jobs_resumed: counter("roadmap_jobs_resumed_total", "Jobs resumed from a checkpoint."),
            jobs_redispatched: counter(
                "roadmap_jobs_redispatched_total",
                "Stranded jobs re-published by the sweeper.",
            ),
            amqp_reconnects: counter(
                "roadmap_amqp_reconnects_total",
                "Broker sessions opened after the first.",
            ),
            job_duration: histogram(
                "roadmap_job_duration_seconds",
                "Time from claim to stored roadmap.",
                durations,
            ),
            batch_duration: histogram(
                "roadmap_batch_duration_seconds",
                "Time to produce one batch, all attempts included.",
                vec![0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0],
            ),
            batches: counter_vec(
                "roadmap_batches_total",
                "Finished batches by outcome.",
                &["outcome"],
            ),
            batch_failures: counter_vec(
                "roadmap_batch_failures_total",
                "Failed attempts within batches, by reason.",
                &["reason"],
            ),
            batches_regenerated: counter(
                "roadmap_batches_regenerated_total",
                "Batches generated although already checkpointed.",
            ),
            outlines: counter_vec(
                "roadmap_outlines_total",
                "Roadmap outlines by outcome.",
                &["outcome"],
            ),
            llm_requests: counter_vec(
                "roadmap_llm_requests_total",
                "LLM requests by provider, model and status.",
                &["provider", "model", "status"],
            ),
            llm_request_duration,
            llm_tokens: counter_vec(
                "roadmap_llm_tokens_total",
                "LLM tokens by direction.",
                &["direction"],
            ),
            provider_ready: gauge(
                "roadmap_provider_ready",
                "1 while the LLM provider accepts requests.",
            ),
            budget_wait: histogram(
                "roadmap_llm_budget_wait_seconds",
                "Waits for the shared provider budget (LLM_RPM_LIMIT, LLM_TPM_LIMIT) before a call.",
                vec![0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0],
            ),
            budget_tokens: counter_vec(
                "roadmap_llm_budget_tokens_total",
                "Tokens of the shared budget: reserved before calls, used by them.",
                &["kind"],
            ),
            rate_limited: counter(
                "roadmap_llm_rate_limited_total",
                "Answers of HTTP 429 (rate limited) from the provider.",
            ),
            answers_unadmitted: counter(
                "roadmap_llm_answers_unadmitted_total",
                "Answers read without a place at the answer gate, its wait having run out (checkpoints slow).",
            ),
            llm_cost,
            build_info: gauge_vec(
                "roadmap_build_info",
                "1, labelled with the worker's version.",
                &["version"],
            ),
            concurrency_limit: gauge(
                "roadmap_worker_concurrency",
                "WORKER_CONCURRENCY: jobs this replica takes at once.",
            ),
            db_pool: gauge_vec(
                "roadmap_db_pool_connections",
                "Database pool connections by state (in_use, idle).",
                &["state"],
            ),
            db_pool_waiting: gauge(
                "roadmap_db_pool_waiting",
                "Tasks waiting for a database connection.",
            ),
            events_publish_failures: counter_vec(
                "roadmap_events_publish_failures_total",
                "Event publishes that failed (broker away, nacked, unconfirmed); the event is kept and sent again.",
                &["type"],
            ),
            process_cpu: float_gauge("process_cpu_seconds_total", "CPU time of this process (user + system), in seconds."),
            process_rss: gauge("process_resident_memory_bytes", "Resident memory of this process, in bytes."),
            process_fds: gauge("process_open_fds", "Open file descriptors of this process."),
            outbox_backlog: gauge(
                "roadmap_outbox_backlog",
                "Events written but not yet confirmed by the broker.",
            ),
            outbox_oldest_age,
            events_published: counter_vec(
                "roadmap_events_published_total",
                "Events confirmed by the broker and taken by a queue.",
                &["type"],
            ),
            events_unroutable: counter_vec(
                "roadmap_events_unroutable_total",
                "Event publishes that no queue took.",
                &["type"],
            ),
            intake_paused: gauge_vec(
                "roadmap_intake_paused",
                "1 while intake is paused because a dependency is down.",
                &["reason"],
            ),
            deliveries_deferred: counter_vec(
                "roadmap_deliveries_deferred_total",
                "Deliveries handed back without spending the delivery limit.",
                &["reason"],
            ),
            deliveries_recovered: counter_vec(
                "roadmap_deliveries_recovered_total",
                "Messages the broker dead-lettered that the worker accounted for.",
                &["outcome"],
            ),
            duplicate_deliveries: counter(
                "roadmap_duplicate_deliveries_total",
                "Duplicate deliveries of a job in progress, settled at once.",
            ),
            registry,
        }
        .with_known_labels()
    }

    /// Starts every known label value at 0. A counter child appears only once it is used, and an
    /// alert on `increase()` cannot see a series that is born at 1.
    fn with_known_labels(self) -> Self {
        for outcome in BatchOutcome::ALL {
            self.batches.with_label_values(&[outcome.as_str()]);
            self.outlines.with_label_values(&[outcome.as_str()]);
        }
        let answer_faults = AnswerFault::ALL.map(AnswerFault::as_str);
        // The LLM call's own statuses are many; these are the ones dashboards plot.
        let call_faults = ["timeout", "connect", "http_429", "http_5xx", "body_too_large"];
        for reason in answer_faults.iter().chain(&call_faults) {
            self.batch_failures.with_label_values(&[reason]);
        }
        let reasons = RejectReason::CODES;
        let failures = JobFailure::ALL.map(JobFailure::as_str);
        for reason in reasons.iter().chain(&failures) {
            self.jobs_failed.with_label_values(&[reason]);
            self.dead_lettered.with_label_values(&[reason]);
        }
        for reason in reasons {
            self.jobs_rejected.with_label_values(&[reason]);
        }
        for kind in [PROGRESS, COMPLETED, FAILED] {
            self.events_published.with_label_values(&[kind]);
            self.events_unroutable.with_label_values(&[kind]);
        }
        for reason in Dependency::ALL {
            self.intake_paused.with_label_values(&[reason.as_str()]);
        }
        for reason in Deferral::ALL {
            self.deliveries_deferred.with_label_values(&[reason.as_str()]);
        }
        for outcome in Recovery::ALL {
            self.deliveries_recovered.with_label_values(&[outcome.as_str()]);
        }
        for direction in ["input", "output", "cached_input"] {
            self.llm_tokens.with_label_values(&[direction]);
        }
        for kind in ["reserved", "used"] {
            self.budget_tokens.with_label_values(&[kind]);
        }
        self.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for state in ["in_use", "idle"] {
            self.db_pool.with_label_values(&[state]);
        }
        for kind in [COMPLETED, FAILED, PROGRESS] {
            self.events_publish_failures.with_label_values(&[kind]);
        }
        self
    }

    /// Reads this process's CPU time, resident memory and open descriptors from /proc (Linux;
    /// elsewhere they stay 0), for a scrape.
    pub fn sample_process(&self) {
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // After the command (in parentheses): utime and stime are fields 14 and 15.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
            // Linux reports in USER_HZ, 100 per second on every supported architecture.
            self.process_cpu.set((ticks(11) + ticks(12)) / 100.0);
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            let kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok());
            if let Some(kib) = kib {
                self.process_rss.set(kib * 1024);
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.process_fds.set(fds.count() as i64);
        }
    }

    /// The text exposition format served at /metrics.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding never fails");
        String::from_utf8(buf).expect("exposition format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
