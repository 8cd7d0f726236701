//! The metric families: their names, help texts, labels and buckets, registered once per worker.
//! What /metrics shows is named here; dashboards and alerts in deploy/ depend on these names.

use prometheus::{
    Counter, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};

use super::Metrics;

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
                "Messages dead-lettered (filed for `roadmap-worker dlq`), by reason.",
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
            quality_problems: counter_vec(
                "roadmap_quality_problems_total",
                "Content problems in stored batches (repeated tasks, off the outline, hours off plan, unusable \
                 resources), by kind.",
                &["kind"],
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
            retry_hints_capped: counter(
                "roadmap_llm_retry_hints_capped_total",
                "Retry hints of the provider longer than LLM_MAX_RETRY_DELAY_MS (a daily limit?), capped by the budget.",
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
            channels_reopened: counter_vec(
                "roadmap_channels_reopened_total",
                "Channels opened again after the broker closed them (cancel and recovery consumers, the publisher).",
                &["channel"],
            ),
            retention_deleted: counter_vec(
                "roadmap_retention_deleted_rows_total",
                "Rows the retention pass deleted (finished jobs past RETAIN_DAYS and what they kept), by table.",
                &["table"],
            ),
            registry,
        }
        .with_known_labels()
    }
}
