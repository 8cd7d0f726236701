//! The exposition is the contract with deploy/: these pin the series the typed methods write and
//! the ones a fresh registry starts at 0.

use std::time::Duration;

use super::*;

/// The value of one series (`name{labels}` exactly as rendered), if it is there.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

fn series(name: &str, label: &str, value: &str) -> String {
    format!("{name}{{{label}=\"{value}\"}}")
}

fn assert_at(text: &str, series: &str, expected: f64) {
    assert_eq!(value(text, series), Some(expected), "{series}");
}

#[test]
fn every_event_kind_starts_at_zero_in_every_event_family() {
    let text = Metrics::new().render();
    for family in [
        "roadmap_events_published_total",
        "roadmap_events_unroutable_total",
        "roadmap_events_publish_failures_total",
    ] {
        for kind in EventKind::ALL {
            assert_at(&text, &series(family, "type", kind.routing_key()), 0.0);
        }
    }
}

#[test]
fn every_known_label_value_starts_at_zero() {
    let text = Metrics::new().render();
    let mut expected: Vec<String> = Vec::new();
    for outcome in BatchOutcome::ALL {
        expected.push(series("roadmap_batches_total", "outcome", outcome.as_str()));
        expected.push(series("roadmap_outlines_total", "outcome", outcome.as_str()));
    }
    for kind in ProblemKind::ALL {
        expected.push(series("roadmap_quality_problems_total", "kind", kind.as_str()));
    }
    for fault in AnswerFault::ALL
        .map(AnswerFault::as_str)
        .iter()
        .chain(&PLOTTED_CALL_FAULTS)
    {
        expected.push(series("roadmap_batch_failures_total", "reason", fault));
    }
    for reason in RejectReason::CODES
        .iter()
        .chain(&JobFailure::ALL.map(JobFailure::as_str))
    {
        expected.push(series("roadmap_jobs_failed_total", "reason", reason));
    }
    for reason in crate::domain::dead_letter_codes() {
        expected.push(series("roadmap_messages_dead_lettered_total", "reason", reason));
    }
    for code in RejectReason::CODES {
        expected.push(series("roadmap_jobs_rejected_total", "reason", code));
    }
    for d in Dependency::ALL {
        expected.push(series("roadmap_intake_paused", "reason", d.as_str()));
    }
    for d in Deferral::ALL {
        expected.push(series("roadmap_deliveries_deferred_total", "reason", d.as_str()));
    }
    for r in Recovery::ALL {
        expected.push(series(
            "roadmap_deliveries_recovered_total",
            "outcome",
            r.as_str(),
        ));
    }
    for direction in ["input", "output", "cached_input"] {
        expected.push(series("roadmap_llm_tokens_total", "direction", direction));
    }
    for kind in ["reserved", "used"] {
        expected.push(series("roadmap_llm_budget_tokens_total", "kind", kind));
    }
    for state in ["in_use", "idle"] {
        expected.push(series("roadmap_db_pool_connections", "state", state));
    }
    for table in ["jobs", "batches", "roadmaps", "outbox"] {
        expected.push(series("roadmap_retention_deleted_rows_total", "table", table));
    }
    for s in &expected {
        assert_at(&text, s, 0.0);
    }
    let version = series("roadmap_build_info", "version", env!("CARGO_PKG_VERSION"));
    assert_at(&text, &version, 1.0);
}

#[test]
fn job_and_message_methods_write_their_reason_codes() {
    let m = Metrics::new();
    m.job_failed(JobFailure::Cancelled);
    m.job_failed(&RejectReason::NotJson("x".into()));
    m.job_rejected(&RejectReason::OutOfRange {
        field: "duration_weeks",
        min: 1,
        max: 52,
    });
    m.message_dead_lettered("invalid_cancel");
    let text = m.render();
    assert_at(&text, "roadmap_jobs_failed_total{reason=\"cancelled\"}", 1.0);
    assert_at(&text, "roadmap_jobs_failed_total{reason=\"not_json\"}", 1.0);
    assert_at(&text, "roadmap_jobs_rejected_total{reason=\"out_of_range\"}", 1.0);
    assert_at(
        &text,
        "roadmap_messages_dead_lettered_total{reason=\"invalid_cancel\"}",
        1.0,
    );
}

#[test]
fn batch_and_llm_methods_write_the_documented_series() {
    let m = Metrics::new();
    m.batch_finished(BatchOutcome::Fallback);
    m.outline_finished(BatchOutcome::Reasked);
    m.batch_failed(AnswerFault::InvalidJson);
    // What an `LlmError` of HTTP 503 converts into (llm's tests pin the conversions).
    m.batch_failed(BatchFault::Call("http_503"));
    m.llm_call(
        "openai",
        "gpt-4o-mini",
        CallStatus::Ok,
        Duration::from_millis(300),
    );
    m.llm_call(
        "openai",
        "gpt-4o-mini",
        CallStatus::Failed("http_503"),
        Duration::from_secs(2),
    );
    m.llm_usage(TokenUsage {
        input: 10,
        output: 20,
        cached_input: 3,
    });
    m.budget_reserved(100);
    m.budget_used(40);
    let text = m.render();
    assert_at(&text, "roadmap_batches_total{outcome=\"fallback\"}", 1.0);
    assert_at(&text, "roadmap_outlines_total{outcome=\"reasked\"}", 1.0);
    assert_at(
        &text,
        "roadmap_batch_failures_total{reason=\"invalid_json\"}",
        1.0,
    );
    assert_at(&text, "roadmap_batch_failures_total{reason=\"http_503\"}", 1.0);
    let requests = "roadmap_llm_requests_total{model=\"gpt-4o-mini\",provider=\"openai\"";
    assert_at(&text, &format!("{requests},status=\"ok\"}}"), 1.0);
    assert_at(&text, &format!("{requests},status=\"http_503\"}}"), 1.0);
    let latency = "roadmap_llm_request_duration_seconds_count{model=\"gpt-4o-mini\",provider=\"openai\"}";
    assert_at(&text, latency, 2.0);
    assert_at(&text, "roadmap_llm_tokens_total{direction=\"input\"}", 10.0);
    assert_at(&text, "roadmap_llm_tokens_total{direction=\"output\"}", 20.0);
    assert_at(&text, "roadmap_llm_tokens_total{direction=\"cached_input\"}", 3.0);
    assert_at(&text, "roadmap_llm_budget_tokens_total{kind=\"reserved\"}", 100.0);
    assert_at(&text, "roadmap_llm_budget_tokens_total{kind=\"used\"}", 40.0);
}

#[test]
fn event_delivery_and_pool_methods_write_the_documented_series() {
    let m = Metrics::new();
    m.event_published(EventKind::CancelRejected);
    m.event_unroutable(EventKind::Progress);
    m.event_publish_failed(EventKind::Completed);
    m.delivery_deferred(Deferral::User);
    m.delivery_recovered(Recovery::Requeued);
    m.set_db_pool(3, 2, 1);
    m.set_intake_paused(Dependency::Provider, true);
    assert!(m.is_intake_paused(Dependency::Provider));
    assert!(!m.is_intake_paused(Dependency::Database));
    let text = m.render();
    assert_at(
        &text,
        "roadmap_events_published_total{type=\"roadmap.cancel_rejected\"}",
        1.0,
    );
    assert_at(
        &text,
        "roadmap_events_unroutable_total{type=\"roadmap.progress\"}",
        1.0,
    );
    assert_at(
        &text,
        "roadmap_events_publish_failures_total{type=\"roadmap.completed\"}",
        1.0,
    );
    assert_at(
        &text,
        "roadmap_deliveries_deferred_total{reason=\"user_limit\"}",
        1.0,
    );
    assert_at(
        &text,
        "roadmap_deliveries_recovered_total{outcome=\"requeued\"}",
        1.0,
    );
    assert_at(&text, "roadmap_db_pool_connections{state=\"in_use\"}", 3.0);
    assert_at(&text, "roadmap_db_pool_connections{state=\"idle\"}", 2.0);
    assert_at(&text, "roadmap_db_pool_waiting", 1.0);
    assert_at(&text, "roadmap_intake_paused{reason=\"provider\"}", 1.0);
    m.set_intake_paused(Dependency::Provider, false);
    assert!(!m.is_intake_paused(Dependency::Provider));
}

#[test]
fn retention_counts_rows_by_table() {
    let m = Metrics::new();
    m.rows_deleted(Table::Jobs, 1_000);
    m.rows_deleted(Table::Batches, 4_000);
    m.rows_deleted(Table::Jobs, 2);
    let text = m.render();
    assert_at(
        &text,
        "roadmap_retention_deleted_rows_total{table=\"jobs\"}",
        1002.0,
    );
    assert_at(
        &text,
        "roadmap_retention_deleted_rows_total{table=\"batches\"}",
        4000.0,
    );
    assert_at(
        &text,
        "roadmap_retention_deleted_rows_total{table=\"outbox\"}",
        0.0,
    );
}
