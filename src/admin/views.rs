//! The operator page's HTML, rendered with maud: every value from the database goes through its
//! escaping (a user's target_role is hostile text), and no page carries a script.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use uuid::Uuid;

use super::BudgetLimits;
use super::queries::{NEWEST_LIMIT, Overview, RUNNING_LIMIT};

/// The progress bar's fill: a solid colour used nowhere else on the pages, so that a
/// screenshot's pixels of it measure the bar.
pub const BAR_FILL: &str = "#2f855a";

const STYLE: &str = "
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1a202c; background: #fff; }
h1 { font-size: 1.4em; margin: 0 0 .3em; } h2 { font-size: 1.2em; margin: 1.4em 0 .4em; }
h3 { font-size: 1em; margin: .8em 0 .3em; }
nav { display: flex; gap: 1em; align-items: center; margin-bottom: 1em; }
nav form { margin: 0; }
table { border-collapse: collapse; margin: .3em 0; }
th, td { text-align: left; padding: .25em .7em; border-bottom: 1px solid #e2e8f0; vertical-align: top; }
th { background: #f7fafc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: #718096; }
.bar { display: inline-block; width: 240px; height: 14px; background: #e2e8f0; border: 1px solid #a0aec0; vertical-align: middle; }
.bar.big { width: 600px; height: 28px; }
.fill { height: 100%; background: #2f855a; }
.state { font-weight: 600; }
.state-running { color: #2b6cb0; } .state-completed { color: #22543d; } .state-failed { color: #c53030; }
.reason { color: #c53030; font-weight: 600; }
.msg { max-width: 60em; overflow-wrap: anywhere; }
code { font-size: .95em; }
";

/// The frame of every page; `refresh` makes the browser reload it every 5 s.
pub(super) fn page(title: &str, refresh: bool, signed_in: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                @if refresh { meta http-equiv="refresh" content="5"; }
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · roadmap-worker" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                @if signed_in {
                    nav {
                        a href="/" { "Overview" }
                        span.muted { "read-only · refreshes every 5 s" }
                        form method="post" action="/logout" { button type="submit" { "Sign out" } }
                    }
                }
                (body)
            }
        }
    }
}

/// `2025-01-02 03:04:05 UTC`.
pub(super) fn at(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// How long before `now`: 42s, 5m10s, 3h4m, 2d5h.
pub(super) fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    duration((now - t).num_seconds().max(0))
}

pub(super) fn duration(s: i64) -> String {
    match s {
        ..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

pub(super) fn when(t: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    html! { span title=(at(t)) { (ago(t, now)) " ago" } }
}

fn job_link(id: Uuid) -> Markup {
    html! { a href={ "/jobs/" (id) } { code { (id) } } }
}

pub(super) fn or_none(v: Option<&str>) -> &str {
    v.unwrap_or("(none)")
}

/// Batches done of total as a bar whose fill's width is the share done.
pub(super) fn progress(done: i32, total: i32, big: bool) -> Markup {
    let pct = if total > 0 {
        (f64::from(done) / f64::from(total) * 100.0).clamp(0.0, 100.0)
    } else {
        0.0
    };
    html! {
        div.bar.big[big] role="progressbar" aria-valuemin="0" aria-valuemax=(total) aria-valuenow=(done) {
            div.fill style={ "width: " (format!("{pct:.2}")) "%" } {}
        }
        " " span.progress-text { (done) "/" (total) " batches" }
    }
}

pub fn overview(o: &Overview, limits: &BudgetLimits) -> Markup {
    let now = o.now;
    let body = html! {
        h1 { "roadmap-worker" }
        p {
            strong { (o.running_count) } " running on a replica · "
            strong { (o.parked_count) } " waiting without a replica ("
            (o.parked_later) " due later: their user's turn or the provider; the rest queued)"
            span.muted { " · as of " (at(now)) }
        }
        h2 { "Running now" }
        @if o.running.is_empty() {
            p.muted { "No job is running." }
        } @else {
            table {
                tr { th { "job" } th { "user" } th { "target role" } th { "weeks" } th { "progress" } th { "owner" } th { "started" } }
                @for j in &o.running {
                    tr {
                        td { (job_link(j.job_id)) }
                        td { (or_none(j.user_id.as_deref())) }
                        td { (or_none(j.target_role.as_deref())) }
                        td.num { (or_none(j.weeks.as_deref())) }
                        td { (progress(j.batches_done, j.batches_total, false)) }
                        td { code { (or_none(j.owner.as_deref())) } }
                        td { (when(j.created_at, now)) }
                    }
                }
            }
            @if o.running.len() as i64 == RUNNING_LIMIT { p.muted { "The oldest " (RUNNING_LIMIT) " shown." } }
        }
        h2 { "Failures in the last 24 h" }
        @if o.failures_by_reason.is_empty() {
            p.muted { "None." }
        } @else {
            (counts("reason", &o.failures_by_reason))
            h3 { "Newest " (NEWEST_LIMIT) }
            table {
                tr { th { "ended" } th { "job" } th { "user" } th { "reason" } th { "message" } }
                @for f in &o.failures {
                    tr {
                        td { @if let Some(t) = f.at { (when(t, now)) } }
                        td { (job_link(f.job_id)) }
                        td { (or_none(f.user_id.as_deref())) }
                        td.reason { (or_none(f.reason.as_deref())) }
                        td.msg { (f.message.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        h2 { "Dead letters" }
        @if o.letters_by_reason.is_empty() {
            p.muted { "None." }
        } @else {
            (counts("reason", &o.letters_by_reason))
            h3 { "Newest " (NEWEST_LIMIT) }
            table {
                tr { th { "#" } th { "filed" } th { "reason" } th { "job" } th { "message" } }
                @for l in &o.letters {
                    tr {
                        td.num { (l.id) }
                        td { (when(l.created_at, now)) }
                        td.reason { (l.reason) }
                        td { @if let Some(id) = l.job_id { (job_link(id)) } }
                        td.msg { (l.message) }
                    }
                }
            }
            p.muted { "Replay or purge them with " code { "roadmap-worker dlq" } "." }
        }
        h2 { "Provider budget" }
        (budget(o, limits))
        h2 { "Replicas" }
        @if o.replicas.is_empty() {
            p.muted { "No replica has a heartbeat row." }
        } @else {
            table {
                tr { th { "replica" } th { "started" } th { "last beat" } th { "jobs held" } }
                @for r in &o.replicas {
                    tr {
                        td { code { (r.owner) } }
                        td { (when(r.started_at, now)) }
                        td {
                            (when(r.beat_at, now))
                            @if (now - r.beat_at).num_seconds() > limits.owner_grace_secs {
                                " " span.reason { "silent past the grace: taken for dead" }
                            }
                        }
                        td.num { (r.jobs) }
                    }
                }
            }
        }
    };
    page("Overview", true, true, body)
}

fn counts(what: &str, rows: &[(String, i64)]) -> Markup {
    html! {
        table {
            tr { th { (what) } th { "count" } }
            @for (key, n) in rows { tr { td.reason { (key) } td.num { (n) } } }
        }
    }
}

/// The budget's clocks (GCRA) read as use: a clock `s` seconds ahead of now holds `s / 60` of a
/// minute's allowance, reserved and not yet paid for at the configured rate.
fn budget(o: &Overview, limits: &BudgetLimits) -> Markup {
    let limit = |l: Option<u64>| l.map_or("none".to_owned(), |l| format!("{l}/min"));
    let used = |ahead: f64, l: Option<u64>| match l {
        Some(l) => format!("{:.0} of {l}", (ahead.min(60.0) / 60.0 * l as f64).round()),
        None => "—".to_owned(),
    };
    html! {
        p {
            "Limits for the whole fleet (this replica's settings): requests " (limit(limits.rpm))
            ", tokens " (limit(limits.tpm)) " (accounting: " (limits.accounting) ")."
        }
        @if o.budget.is_empty() {
            p.muted { "No call has reserved from the budget (it is off without LLM_RPM_LIMIT or LLM_TPM_LIMIT)." }
        } @else {
            table {
                tr { th { "provider/model" } th { "requests in the window" } th { "tokens in the window" } th { "ahead of now" } th { "updated" } }
                @for b in &o.budget {
                    tr {
                        td { code { (b.key) } }
                        td.num { (used(b.requests_ahead_secs, limits.rpm)) }
                        td.num { (used(b.tokens_ahead_secs, limits.tpm)) }
                        td.num { (format!("{:.1} s", b.tokens_ahead_secs.max(b.requests_ahead_secs))) }
                        td { (when(b.updated_at, o.now)) }
                    }
                }
            }
            p.muted { "A call waits while a clock stands more than 57 s ahead." }
        }
    }
}

pub fn not_found(what: &str) -> Markup {
    page(
        "Not found",
        false,
        true,
        html! { h1 { "Not found" } p { (what) } p { a href="/" { "Overview" } } },
    )
}

pub fn unauthorized() -> Markup {
    page(
        "Sign-in needed",
        false,
        false,
        html! {
            h1 { "Sign-in needed" }
            p { "This page needs the operator token: send it as " code { "Authorization: Bearer …" } ", or " a href="/login" { "sign in" } "." }
        },
    )
}

pub fn login(wrong: bool) -> Markup {
    page(
        "Sign in",
        false,
        false,
        html! {
            h1 { "Sign in" }
            @if wrong { p.reason { "That token is not the operator token." } }
            form method="post" action="/login" {
                label { "Operator token (ADMIN_TOKEN) " input type="password" name="token" autocomplete="current-password" required autofocus; }
                " " button type="submit" { "Sign in" }
            }
        },
    )
}

pub fn unavailable(detail: &str) -> Markup {
    page(
        "Database unavailable",
        true,
        true,
        html! {
            h1 { "Database unavailable" }
            p { "The page could not be read from Postgres: " (detail) }
            p.muted { "It is tried again every 5 s." }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_as_wide_as_the_share_done() {
        let bar = progress(13, 52, true).into_string();
        assert!(bar.contains("width: 25.00%"), "{bar}");
        assert!(progress(0, 0, false).into_string().contains("width: 0.00%"));
        assert!(progress(9, 3, false).into_string().contains("width: 100.00%"));
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(310), "5m10s");
        assert_eq!(duration(3 * 3600 + 240), "3h4m");
        assert_eq!(duration(2 * 86400 + 5 * 3600), "2d5h");
    }
}
