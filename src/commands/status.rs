//! `roadmap-worker status`: where a job is (state, batches, calls, tokens, cost, owner and
//! lease, failure), or which jobs are running or failed, from Postgres; `--json` for scripts.

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use crate::{
    cli::StatusArgs,
    store::{self, jobs::JobState, status::JobStatus},
};

/// Jobs listed at most by `--running` / `--failed`.
const LIST_LIMIT: i64 = 200;

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = store::connect_readonly(&args.db, "roadmap-worker:status").await?;
    if let Some(job_id) = args.job_id {
        let found = store::status::job(&client, job_id, args.json)
            .await
            .context("reading the job")?;
        let Some(job) = found else {
            anyhow::bail!(
                "no job {job_id} in the database: no replica has taken its message yet (it is \
                 still queued: compare the work queue's depth, or wait for its roadmap.accepted \
                 event), the message never reached a queue (a publish without `mandatory` and \
                 confirms can be dropped unseen), or the id is mistyped"
            );
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&job)?);
        } else {
            print!("{}", describe(&job, Utc::now()));
        }
        return Ok(());
    }
    let state = if args.failed {
        JobState::Failed
    } else {
        JobState::Running
    };
    let since = args.since.map(|d| d.as_secs_f64());
    let jobs = store::status::list(&client, state, since, LIST_LIMIT)
        .await
        .context("listing jobs")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(());
    }
    if jobs.is_empty() {
        println!(
            "no {state} jobs{}",
            args.since
                .map_or(String::new(), |d| format!(" in the last {}", age(d)))
        );
        return Ok(());
    }
    for job in &jobs {
        println!("{}", line(job, Utc::now()));
    }
    if jobs.len() as i64 == LIST_LIMIT {
        println!("(the newest {LIST_LIMIT} shown)");
    }
    Ok(())
}

/// One job's block of text.
pub fn describe(job: &JobStatus, now: DateTime<Utc>) -> String {
    let mut out = format!(
        "job {}  user {}\n",
        job.job_id,
        job.user_id.as_deref().unwrap_or("(none)")
    );
    out += &format!(
        "  state      {}  (batches {}/{}, {} fallback)\n",
        job.status, job.batches_done, job.batches_total, job.fallback_batches
    );
    out += &format!(
        "  LLM        {} calls, {} input tokens ({} cached), {} output tokens, cost {:.6}\n",
        job.llm_calls, job.input_tokens, job.cached_input_tokens, job.output_tokens, job.cost
    );
    let since = |at: DateTime<Utc>| age((now - at).to_std().unwrap_or_default());
    out += &format!(
        "  started    {} ({} ago)\n",
        job.created_at.to_rfc3339(),
        since(job.created_at)
    );
    if let Some(done) = job.completed_at {
        let took = (done - job.created_at).to_std().unwrap_or_default();
        out += &format!("  completed  {} (took {})\n", done.to_rfc3339(), age(took));
    }
    out += &format!("  updated    {} ago\n", since(job.updated_at));
    match (&job.owner, job.lease_until) {
        (Some(owner), Some(until)) if until > now => {
            let left = age((until - now).to_std().unwrap_or_default());
            out += &format!("  owner      {owner} (lease {left} left)\n");
        }
        (Some(owner), _) => {
            out += &format!("  owner      {owner} (lease expired: another replica may take it)\n")
        }
        (None, _) if job.status == JobState::Running => {
            let waits = match job.waits {
                0 => String::new(),
                n => format!(", {n} turn(s) waited for its user"),
            };
            out += &match job.not_before {
                Some(due) if due > now => format!(
                    "  waiting    in Postgres, due in {}{waits}\n",
                    age((due - now).to_std().unwrap_or_default())
                ),
                _ => format!("  waiting    queued for the next free replica{waits}\n"),
            };
        }
        _ => {}
    }
    out += &format!(
        "  claims     {} ({} taken over from a replica that died)\n",
        job.claims, job.abandoned
    );
    if let Some(reason) = &job.failure_reason {
        out += &format!("  failure    {reason}\n");
    }
    if let Some(problem) = &job.last_problem {
        out += &format!("  last issue {problem} (batch outcomes other than ok)\n");
    }
    if let Some(quality) = quality(job) {
        out += &format!("  quality    {quality}\n");
    }
    if let Some(id) = job.roadmap_id {
        out += &format!("  roadmap    {id} (status --json JOB_ID prints it)\n");
    }
    out
}

/// The content problems of a job's batches by kind, and the re-asks they cost:
/// `repeated_tasks 2, hours_off_plan 1; 1 batch re-asked for content`, or `no content problems`.
fn quality(job: &JobStatus) -> Option<String> {
    let problems = job.quality_problems.as_ref()?.as_object()?;
    let mut found: Vec<String> = problems
        .iter()
        .filter_map(|(kind, n)| n.as_u64().filter(|n| *n > 0).map(|n| format!("{kind} {n}")))
        .collect();
    if found.is_empty() {
        found.push("no content problems".into());
    }
    let mut text = found.join(", ");
    match job.quality_reasked.unwrap_or(0) {
        0 => {}
        1 => text += "; 1 batch re-asked for content",
        n => text += &format!("; {n} batches re-asked for content"),
    }
    Some(text)
}

/// One job's line in a list.
fn line(job: &JobStatus, now: DateTime<Utc>) -> String {
    let ago = age((now - job.updated_at).to_std().unwrap_or_default());
    let detail = match (&job.failure_reason, &job.owner) {
        (Some(reason), _) => reason.clone(),
        (None, Some(owner)) => format!("on {owner}"),
        _ => String::new(),
    };
    format!(
        "{}  {:<9} {:>2}/{:<2} batches  {}  updated {ago} ago  {detail}",
        job.job_id,
        job.status,
        job.batches_done,
        job.batches_total,
        job.user_id.as_deref().unwrap_or("(none)")
    )
}

/// `42s`, `5m10s`, `3h4m`, `2d3h`.
/// A duration as people write it: 42s, 5m10s, 3h4m, 2d5h.
pub(super) fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_people_write_them() {
        assert_eq!(age(Duration::from_secs(42)), "42s");
        assert_eq!(age(Duration::from_secs(310)), "5m10s");
        assert_eq!(age(Duration::from_secs(3 * 3600 + 240)), "3h4m");
    }
}
