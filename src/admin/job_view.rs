//! The page of one job: its fields, state, outcome, plan and batches, with its progress bar.

use maud::{Markup, html};
use serde_json::Value;

use super::{
    queries::{BatchRow, JobPage},
    views::{ago, at, duration, or_none, page, progress, when},
};

/// A request or plan field as text: strings as they are, other JSON as JSON.
fn text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "(none)".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.is_empty() => "(none)".to_owned(),
        Some(Value::Array(items)) => items.iter().map(|i| text(Some(i))).collect::<Vec<_>>().join(", "),
        Some(other) => other.to_string(),
    }
}

pub fn job(p: &JobPage) -> Markup {
    let s = &p.status;
    let now = p.now;
    let req = |k: &str| text(p.request.get(k));
    let state = s.status.to_string();
    let body = html! {
        h1 { "Job " code { (s.job_id) } }
        p {
            span class={ "state state-" (state) } { (state) }
            @if let Some(reason) = &s.failure_reason { " · " span.reason { (reason) } }
        }
        @if let Some(msg) = &p.failure_message { p.msg { (msg) } }
        p { (progress(s.batches_done, s.batches_total, true)) }
        table {
            tr { th { "user" } td { (or_none(s.user_id.as_deref())) } }
            tr { th { "target role" } td { (req("target_role")) } }
            tr { th { "weeks" } td { (req("duration_weeks")) } }
            tr { th { "experience, hours/week" } td { (req("experience_level")) ", " (req("hours_per_week")) } }
            tr { th { "focus areas" } td { (req("focus_areas")) } }
            tr { th { "language" } td { (req("language")) } }
            tr { th { "started" } td { (at(s.created_at)) " (" (ago(s.created_at, now)) " ago)" } }
            tr { th { "updated" } td { (ago(s.updated_at, now)) " ago" } }
            @if let Some(done) = s.completed_at {
                tr { th { "ended" } td { (at(done)) " (took " (duration((done - s.created_at).num_seconds().max(0))) ")" } }
            }
            tr { th { "owner" } td { (owner(p)) } }
            tr { th { "claims" } td { (s.claims) " (" (s.abandoned) " taken over from a replica that died)" } }
            @if let Some(t) = p.cancel_requested_at { tr { th { "cancel requested" } td { (at(t)) } } }
            @if let Some(problem) = &s.last_problem { tr { th { "last issue" } td { (problem) } } }
            tr {
                th { "LLM" }
                td {
                    (s.llm_calls) " calls, " (s.input_tokens) " input tokens (" (s.cached_input_tokens)
                    " cached), " (s.output_tokens) " output tokens, cost " (format!("{:.6}", s.cost))
                    ", " (s.fallback_batches) " fallback batches"
                }
            }
            tr { th { "content checks" } td { (content(s)) } }
            @if let Some(id) = s.roadmap_id { tr { th { "roadmap" } td { code { (id) } } } }
        }
        h2 { "Plan" }
        (plan(&p.plan))
        h2 { "Batches" }
        (batches(p))
    };
    page(&format!("Job {}", s.job_id), true, true, body)
}

fn owner(p: &JobPage) -> Markup {
    let s = &p.status;
    html! {
        @match (&s.owner, s.lease_until) {
            (Some(o), Some(until)) if until > p.now => { code { (o) } " (lease " (duration((until - p.now).num_seconds())) " left)" }
            (Some(o), _) => { code { (o) } " (lease expired: another replica may take it)" }
            (None, _) if s.status.as_str() == "running" => {
                @match s.not_before {
                    Some(due) if due > p.now => { "none: waiting in Postgres, due in " (duration((due - p.now).num_seconds())) }
                    _ => { "none: queued for the next free replica" }
                }
                @if s.waits > 0 { ", " (s.waits) " turn(s) waited for its user" }
            }
            _ => { "(none)" }
        }
    }
}

fn plan(plan: &Value) -> Markup {
    let phases = plan.get("phases").and_then(Value::as_array);
    let outline = plan.get("outline");
    html! {
        @if let Some(source) = outline.and_then(|o| o.get("source")) {
            p { "Outline: " (text(Some(source))) }
        } @else {
            p.muted { "No outline (a job of one batch, or one whose outline is not written yet)." }
        }
        @if let Some(phases) = phases {
            table {
                tr { th { "phase" } th { "weeks" } th { "title" } th { "objective" } }
                @for ph in phases {
                    tr {
                        td.num { (text(ph.get("number"))) }
                        td { (text(ph.get("week_from"))) "–" (text(ph.get("week_to"))) }
                        td { (text(ph.get("title"))) }
                        td.msg { (text(ph.get("objective"))) }
                    }
                }
            }
        }
    }
}

/// The content problems of the job's stored batches by kind, and the batches re-asked for them
/// (what `status` shows; a completed job's, after its batches were folded, too).
fn content(s: &crate::store::status::JobStatus) -> String {
    let found: Vec<String> = s
        .quality_problems
        .as_ref()
        .and_then(Value::as_object)
        .map(|kinds| {
            kinds
                .iter()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect()
        })
        .unwrap_or_default();
    let found = if found.is_empty() {
        "no problem".to_owned()
    } else {
        found.join(", ")
    };
    format!(
        "{found}; {} batches re-asked for content",
        s.quality_reasked.unwrap_or(0)
    )
}

/// The plan's batches, each with its checkpoint when written.
fn batches(p: &JobPage) -> Markup {
    let planned: Vec<(i64, i64, i64)> = p
        .plan
        .get("batches")
        .and_then(Value::as_array)
        .map(|bs| {
            bs.iter()
                .filter_map(|b| {
                    Some((
                        b.get("index")?.as_i64()?,
                        b.get("first")?.as_i64()?,
                        b.get("last")?.as_i64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let written = |i: i64| p.batches.iter().find(|b| i64::from(b.index) == i);
    let folded = p.batches.is_empty() && p.status.roadmap_id.is_some();
    html! {
        @if folded {
            p.muted { "The job completed: its checkpoints were folded into the totals above." }
        }
        table {
            tr {
                th { "#" } th { "weeks" } th { "outcome" } th { "fallback weeks" } th { "calls" }
                th { "input tokens" } th { "cached" } th { "output tokens" } th { "cost" } th { "written" }
                th title="since the checkpoint before it in its phase; * since the job started" { "took" }
                th { "content" }
            }
            @for (index, first, last) in &planned {
                @match written(*index) {
                    Some(b) => { (batch_row(b, p)) }
                    None => {
                        tr.muted {
                            td.num { (index) } td { (first) "–" (last) }
                            td colspan="10" { @if folded { "folded" } @else { "not written yet" } }
                        }
                    }
                }
            }
            // A checkpoint outside the plan (not expected) is still shown.
            @for b in p.batches.iter().filter(|b| !planned.iter().any(|(i, _, _)| *i == i64::from(b.index))) {
                (batch_row(b, p))
            }
        }
        p.muted { "took: since the checkpoint before it in its phase; * since the job started (the outline's call included)." }
    }
}

fn batch_row(b: &BatchRow, p: &JobPage) -> Markup {
    html! {
        tr {
            td.num { (b.index) }
            td { (b.first_week) "–" (b.last_week) }
            td { (b.outcome) }
            td.num { (b.fallback_weeks) }
            td.num { (b.llm_calls) }
            td.num { (b.input_tokens) }
            td.num { (b.cached_input_tokens) }
            td.num { (b.output_tokens) }
            td.num { (format!("{:.6}", b.cost)) }
            td { (when(b.created_at, p.now)) }
            td.num { (took(b, p)) }
            td.problems {
                @if b.problems.is_empty() {
                    @if b.content_reasked { "fixed by a re-ask" } @else { "—" }
                } @else {
                    @if b.content_reasked { span.muted { "kept after a re-ask:" } }
                    ul { @for problem in &b.problems { li { (problem) } } }
                }
            }
        }
    }
}

/// How long a checkpoint took, which is not stored: the time since the checkpoint before it in
/// its phase (phases are written side by side, batches of one phase in order), or since the
/// job started for a phase's first batch (that one includes the outline's call and any wait).
fn took(b: &BatchRow, p: &JobPage) -> String {
    let phase_of = |week: i32| {
        p.plan.get("phases").and_then(Value::as_array).and_then(|phases| {
            phases.iter().position(|ph| {
                let w = i64::from(week);
                ph.get("week_from")
                    .and_then(Value::as_i64)
                    .is_some_and(|f| f <= w)
                    && ph.get("week_to").and_then(Value::as_i64).is_some_and(|t| w <= t)
            })
        })
    };
    let before = p
        .batches
        .iter()
        .find(|o| o.index == b.index - 1 && phase_of(o.first_week) == phase_of(b.first_week));
    match before {
        Some(o) => format!("{:.1} s", (b.created_at - o.created_at).as_seconds_f64().max(0.0)),
        None => format!(
            "{:.1} s*",
            (b.created_at - p.status.created_at).as_seconds_f64().max(0.0)
        ),
    }
}
