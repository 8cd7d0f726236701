//! Every metric the worker exports, in one registry per worker (so tests can run several workers
//! in one process). Names follow Prometheus conventions; no label carries a job or user id.
//!
//! Labelled series are written through the typed methods below, never with label strings at the
//! call site: a label value is spelled once, here, and every value an enum can take is started
//! at 0 from its `ALL`.

mod families;
mod process;
#[cfg(test)]
mod tests;

use std::time::Duration;

use prometheus::{
    Counter, Encoder, Gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Registry, TextEncoder,
};

use crate::domain::{
    AnswerFault, BatchOutcome, RejectReason, TokenUsage,
    event::{EventKind, JobFailure},
    quality::ProblemKind,
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
    /// Messages dead-lettered (filed in `dead_letters`, or in the broker's dead-letter queue
    /// while Postgres is away), by reason code.
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
    /// Content problems in stored batches, by kind (`domain::quality`).
    pub quality_problems: IntCounterVec,
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
    /// Retry hints longer than LLM_MAX_RETRY_DELAY_MS (a daily limit), which the budget caps.
    pub retry_hints_capped: IntCounter,
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
    /// (database: through the retry queue; provider, user_limit: parked in Postgres;
    /// shutdown, no_slot: straight back to work).
    pub deliveries_deferred: IntCounterVec,
    /// Messages the broker dead-lettered on its own and the worker accounted for, by outcome
    /// (requeued: back to work; failed: failed with an event; done: the job had ended).
    pub deliveries_recovered: IntCounterVec,
    /// Duplicate deliveries of a job a live replica is working, settled at once.
    pub duplicate_deliveries: IntCounter,
    /// Channels opened again after the broker closed them: the cancel and recovery consumers'
    /// and the publisher's.
    pub channels_reopened: IntCounterVec,
    /// Rows the retention pass deleted, by table (finished jobs past RETAIN_DAYS and what they
    /// kept).
    pub retention_deleted: IntCounterVec,
}

/// A label vocabulary: a closed set of values, each started at 0.
macro_rules! labels {
    ($(#[$doc:meta])* $vis:vis $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name { $($variant),+ }

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
    pub Dependency { Database => "database", Provider => "provider" }
}

labels! {
    /// Why a delivery was handed back (`roadmap_deliveries_deferred_total{reason}`).
    pub Deferral {
        Database => "database",
        Provider => "provider",
        Shutdown => "shutdown",
        User => "user_limit",
        NoSlot => "no_slot",
    }
}

labels! {
    /// What became of a message the broker dead-lettered on its own
    /// (`roadmap_deliveries_recovered_total{outcome}`).
    pub Recovery { Requeued => "requeued", Failed => "failed", Done => "done" }
}

labels! {
    /// `roadmap_llm_tokens_total{direction}`.
    Direction { Input => "input", Output => "output", CachedInput => "cached_input" }
}

labels! {
    /// `roadmap_llm_budget_tokens_total{kind}`.
    BudgetTokens { Reserved => "reserved", Used => "used", GivenBack => "given_back" }
}

labels! {
    /// `roadmap_db_pool_connections{state}`.
    PoolState { InUse => "in_use", Idle => "idle" }
}

labels! {
    /// A table the retention pass deletes from (`roadmap_retention_deleted_rows_total{table}`).
    pub Table { Jobs => "jobs", Batches => "batches", Roadmaps => "roadmaps", Outbox => "outbox" }
}

/// The LLM call's own statuses (`LlmError::status`) are many and open-ended (`http_418` becomes
/// `http_4xx`); these are the ones dashboards plot, so they start at 0.
const PLOTTED_CALL_FAULTS: [&str; 5] = ["timeout", "connect", "http_429", "http_5xx", "body_too_large"];

/// A failed attempt within a batch or an outline (`roadmap_batch_failures_total{reason}`): what
/// was wrong with the answer, or why the call itself failed. An `LlmError` converts into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchFault {
    Answer(AnswerFault),
    /// The failed call's status (`timeout`, `http_429`, …).
    Call(&'static str),
}

impl From<AnswerFault> for BatchFault {
    fn from(fault: AnswerFault) -> Self {
        Self::Answer(fault)
    }
}

impl BatchFault {
    fn label(self) -> &'static str {
        match self {
            Self::Answer(fault) => fault.as_str(),
            Self::Call(status) => status,
        }
    }
}

/// How an LLM call ended (`roadmap_llm_requests_total{status}`). A call's result converts into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStatus {
    Ok,
    /// The error's status (`timeout`, `http_429`, …).
    Failed(&'static str),
}

impl CallStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed(status) => status,
        }
    }
}

/// Why a job ended with a `roadmap.failed` event (`roadmap_jobs_failed_total{reason}`): its
/// message was refused, or the job taken on failed.
#[derive(Debug, Clone, Copy)]
pub enum FailReason<'a> {
    Refused(&'a RejectReason),
    Job(JobFailure),
}

impl<'a> From<&'a RejectReason> for FailReason<'a> {
    fn from(reason: &'a RejectReason) -> Self {
        Self::Refused(reason)
    }
}

impl From<JobFailure> for FailReason<'_> {
    fn from(failure: JobFailure) -> Self {
        Self::Job(failure)
    }
}

impl FailReason<'_> {
    fn label(self) -> &'static str {
        match self {
            Self::Refused(reason) => reason.code(),
            Self::Job(failure) => failure.as_str(),
        }
    }
}

impl Metrics {
    /// Starts every known label value at 0. A counter child appears only once it is used, and an
    /// alert on `increase()` cannot see a series that is born at 1.
    fn with_known_labels(self) -> Self {
        for outcome in BatchOutcome::ALL {
            self.batches.with_label_values(&[outcome.as_str()]);
            self.outlines.with_label_values(&[outcome.as_str()]);
        }
        for kind in ProblemKind::ALL {
            self.quality_problems.with_label_values(&[kind.as_str()]);
        }
        let answer_faults = AnswerFault::ALL.map(AnswerFault::as_str);
        for reason in answer_faults.iter().chain(&PLOTTED_CALL_FAULTS) {
            self.batch_failures.with_label_values(&[reason]);
        }
        let reasons = RejectReason::CODES;
        let failures = JobFailure::ALL.map(JobFailure::as_str);
        for reason in reasons.iter().chain(&failures) {
            self.jobs_failed.with_label_values(&[reason]);
        }
        for reason in crate::domain::dead_letter_codes() {
            self.dead_lettered.with_label_values(&[reason]);
        }
        for reason in reasons {
            self.jobs_rejected.with_label_values(&[reason]);
        }
        for kind in EventKind::ALL {
            self.events_published.with_label_values(&[kind.routing_key()]);
            self.events_unroutable.with_label_values(&[kind.routing_key()]);
            self.events_publish_failures
                .with_label_values(&[kind.routing_key()]);
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
        for channel in ["cancel", "recover", "publisher"] {
            self.channels_reopened.with_label_values(&[channel]);
        }
        for direction in Direction::ALL {
            self.llm_tokens.with_label_values(&[direction.as_str()]);
        }
        for kind in BudgetTokens::ALL {
            self.budget_tokens.with_label_values(&[kind.as_str()]);
        }
        self.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for state in PoolState::ALL {
            self.db_pool.with_label_values(&[state.as_str()]);
        }
        for table in Table::ALL {
            self.retention_deleted.with_label_values(&[table.as_str()]);
        }
        self
    }

    /// A job that ended with a `roadmap.failed` event.
    pub fn job_failed<'a>(&self, reason: impl Into<FailReason<'a>>) {
        self.jobs_failed.with_label_values(&[reason.into().label()]).inc();
    }

    /// A message refused at intake.
    pub fn job_rejected(&self, reason: &RejectReason) {
        self.jobs_rejected.with_label_values(&[reason.code()]).inc();
    }

    /// A message filed as a dead letter, by its reason code (a [`RejectReason`] code, a
    /// [`JobFailure`], or a cancel's own).
    pub fn message_dead_lettered(&self, code: &str) {
        self.dead_lettered.with_label_values(&[code]).inc();
    }

    pub fn batch_finished(&self, outcome: BatchOutcome) {
        self.batches.with_label_values(&[outcome.as_str()]).inc();
    }

    /// A content problem in a batch as it is stored.
    pub fn quality_problem(&self, kind: ProblemKind) {
        self.quality_problems.with_label_values(&[kind.as_str()]).inc();
    }

    pub fn outline_finished(&self, outcome: BatchOutcome) {
        self.outlines.with_label_values(&[outcome.as_str()]).inc();
    }

    /// A failed attempt within a batch or an outline.
    pub fn batch_failed(&self, fault: impl Into<BatchFault>) {
        self.batch_failures
            .with_label_values(&[fault.into().label()])
            .inc();
    }

    /// One LLM request: its latency and how it ended.
    pub fn llm_call(&self, provider: &str, model: &str, status: impl Into<CallStatus>, took: Duration) {
        self.llm_request_duration
            .with_label_values(&[provider, model])
            .observe(took.as_secs_f64());
        self.llm_requests
            .with_label_values(&[provider, model, status.into().as_str()])
            .inc();
    }

    /// The tokens an answer used, as its provider counted them.
    pub fn llm_usage(&self, usage: TokenUsage) {
        for (direction, tokens) in [
            (Direction::CachedInput, usage.cached_input),
            (Direction::Input, usage.input),
            (Direction::Output, usage.output),
        ] {
            self.llm_tokens
                .with_label_values(&[direction.as_str()])
                .inc_by(tokens);
        }
    }

    /// Tokens of the shared provider budget reserved before a call.
    pub fn budget_reserved(&self, tokens: u64) {
        self.count_budget(BudgetTokens::Reserved, tokens);
    }

    /// Tokens of the shared provider budget a call used, as the provider charges them.
    pub fn budget_used(&self, tokens: u64) {
        self.count_budget(BudgetTokens::Used, tokens);
    }

    /// Tokens of a reservation given back: its call never went out.
    pub fn budget_given_back(&self, tokens: u64) {
        self.count_budget(BudgetTokens::GivenBack, tokens);
    }

    fn count_budget(&self, kind: BudgetTokens, tokens: u64) {
        self.budget_tokens
            .with_label_values(&[kind.as_str()])
            .inc_by(tokens);
    }

    /// An event confirmed by the broker and taken by a queue.
    pub fn event_published(&self, kind: EventKind) {
        self.events_published
            .with_label_values(&[kind.routing_key()])
            .inc();
    }

    /// An event publish that no queue took.
    pub fn event_unroutable(&self, kind: EventKind) {
        self.events_unroutable
            .with_label_values(&[kind.routing_key()])
            .inc();
    }

    /// An event publish that failed (broker away, nacked, unconfirmed); the event is kept.
    pub fn event_publish_failed(&self, kind: EventKind) {
        self.events_publish_failures
            .with_label_values(&[kind.routing_key()])
            .inc();
    }

    pub fn set_intake_paused(&self, dependency: Dependency, paused: bool) {
        self.intake_paused
            .with_label_values(&[dependency.as_str()])
            .set(i64::from(paused));
    }

    pub fn is_intake_paused(&self, dependency: Dependency) -> bool {
        self.intake_paused.with_label_values(&[dependency.as_str()]).get() == 1
    }

    pub fn delivery_deferred(&self, reason: Deferral) {
        self.deliveries_deferred
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// A channel opened again (`cancel`, `recover`: a side consumer; `publisher`).
    pub fn channel_reopened(&self, channel: &str) {
        self.channels_reopened.with_label_values(&[channel]).inc();
    }

    pub fn delivery_recovered(&self, outcome: Recovery) {
        self.deliveries_recovered
            .with_label_values(&[outcome.as_str()])
            .inc();
    }

    /// Rows of `table` that a retention pass deleted.
    pub fn rows_deleted(&self, table: Table, rows: u64) {
        self.retention_deleted
            .with_label_values(&[table.as_str()])
            .inc_by(rows);
    }

    /// The database pool as a scrape finds it.
    pub fn set_db_pool(&self, in_use: i64, idle: i64, waiting: i64) {
        self.db_pool
            .with_label_values(&[PoolState::InUse.as_str()])
            .set(in_use);
        self.db_pool
            .with_label_values(&[PoolState::Idle.as_str()])
            .set(idle);
        self.db_pool_waiting.set(waiting);
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
