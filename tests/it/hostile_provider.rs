//! Promise: what a provider sends is hostile input. Absurd retry hints (`Retry-After: 1e20`),
//! header bytes that are not UTF-8 and bodies of any size panic no job task and never make the
//! worker hold more than its body cap: the batch follows the ladder and the job completes. For
//! the OpenAI and Gemini APIs over HTTP.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use mock_llm::{Fault, FaultPlan};
use roadmap_worker::domain::{WeekSource, event::Completed};

use testkit::{
    TestEnv, job,
    runs::{PROVIDERS, run_job},
    sigterm,
};

/// Well past the worker's 4 MiB body cap, and past what a test could afford to buffer per call.
const HUGE: u64 = 50 * 1024 * 1024;

fn hints(code: u16, headers: &[(&str, &str)]) -> Fault {
    Fault::RetryHints {
        code,
        headers: headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        raw_headers: BTreeMap::new(),
        retry_delay: None,
    }
}

fn raw(name: &str, value: &[u8]) -> Fault {
    Fault::RetryHints {
        code: 429,
        headers: BTreeMap::new(),
        raw_headers: [(name.to_owned(), value.to_vec())].into(),
        retry_delay: None,
    }
}

fn retry_delay(code: u16, delay: &str) -> Fault {
    Fault::RetryHints {
        code,
        headers: BTreeMap::new(),
        raw_headers: BTreeMap::new(),
        retry_delay: Some(delay.to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_retry_after_is_capped_and_the_batch_retried() {
    let values = [
        "1e20",
        "1e308",
        "-1",
        "NaN",
        "inf",
        "",
        "abc",
        "Fri, 31 Dec 9999 23:59:59 GMT",
    ];
    for provider in PROVIDERS {
        let script: Vec<Fault> = values.iter().map(|v| hints(429, &[("retry-after", v)])).collect();
        let started = Instant::now();
        let run = run_job(provider, script, 6, &["--llm-max-retries", "10"]).await;
        assert_eq!(run.outcomes(), ["retried", "ok", "ok"], "{provider}");
        assert_eq!(
            run.batches[0].1,
            values.len() as i32 + 1,
            "{provider}: every hint was survived and retried"
        );
        assert_eq!(run.completed.fallback_batches, 0, "{provider}");
        // Each wait was held to LLM_MAX_RETRY_DELAY_MS (200 ms here), none to the server's word.
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{provider}: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_retry_hints_are_ignored() {
    for provider in PROVIDERS {
        let script = vec![
            raw("retry-after", b"1\xff\xfe"),
            raw("x-ratelimit-reset-requests", b"1\xc3\x28s"),
            raw("x-ratelimit-reset-tokens", b"\x80\x81\x82"),
            hints(429, &[("x-ratelimit-reset-tokens", "99999999999h")]),
            hints(
                503,
                &[
                    ("x-ratelimit-reset-requests", "999999999999999999999h"),
                    ("x-ratelimit-reset-tokens", "-1s"),
                ],
            ),
            retry_delay(429, "1e20s"),
            retry_delay(429, "99999999999999999999s"),
            retry_delay(503, "NaNs"),
        ];
        let calls = script.len() as i32 + 1;
        let run = run_job(provider, script, 6, &["--llm-max-retries", "10"]).await;
        assert_eq!(run.outcomes(), ["retried", "ok", "ok"], "{provider}");
        assert_eq!(run.batches[0].1, calls, "{provider}");
        assert_eq!(run.completed.fallback_batches, 0, "{provider}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_body_is_cut_at_the_cap_and_follows_the_ladder() {
    for provider in PROVIDERS {
        // A 50 MiB answer and a 50 MiB error body: each is read only up to its cap, then retried.
        let script = vec![
            Fault::HugeBody {
                bytes: HUGE,
                code: None,
            },
            Fault::HugeBody {
                bytes: HUGE,
                code: Some(503),
            },
        ];
        let run = run_job(provider, script, 6, &[]).await;
        assert_eq!(run.outcomes(), ["retried", "ok", "ok"], "{provider}");
        assert_eq!(run.batches[0].1, 3, "{provider}");
        let too_large = "roadmap_batch_failures_total{reason=\"body_too_large\"}";
        assert_eq!(run.metric(too_large), 1.0, "{provider}");
        assert_eq!(
            run.metric("roadmap_batch_failures_total{reason=\"http_503\"}"),
            1.0
        );

        // Too large every time: the retries run out and the batch gets template weeks.
        let huge = Fault::HugeBody {
            bytes: HUGE,
            code: None,
        };
        let run = run_job(provider, vec![huge; 3], 6, &["--llm-max-retries", "2"]).await;
        assert_eq!(run.outcomes(), ["fallback", "ok", "ok"], "{provider}");
        assert_eq!(run.completed.fallback_batches, 1, "{provider}");
        assert_eq!(run.metric(too_large), 3.0, "{provider}");

        // Under the body cap but over the answer cap: read, refused unparsed, asked again once.
        let big = Fault::HugeBody {
            bytes: 1024 * 1024,
            code: None,
        };
        let run = run_job(provider, vec![big], 6, &[]).await;
        assert_eq!(run.outcomes(), ["reasked", "ok", "ok"], "{provider}");
        assert_eq!(run.asked, [(1, 2), (1, 2), (3, 4), (5, 6)], "{provider}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_answer_over_the_answer_cap_is_not_salvaged() {
    for provider in PROVIDERS {
        // A little whitespace before the cut: the complete weeks are salvaged as usual.
        let run = run_job(provider, vec![Fault::Whitespace { bytes: 1000 }], 6, &[]).await;
        assert_eq!(run.asked, [(1, 2), (3, 4), (5, 6)], "{provider}");
        assert_eq!(run.outcomes(), ["truncated", "ok", "ok"], "{provider}");

        // A megabyte of it: refused unread like a complete answer of that size, so nothing is
        // kept and the span halves; every week still comes from the model.
        let padded = Fault::Whitespace { bytes: 1024 * 1024 };
        let run = run_job(provider, vec![padded], 6, &[]).await;
        assert_eq!(
            run.asked,
            [(1, 2), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6)],
            "{provider}"
        );
        assert_eq!(run.outcomes(), ["truncated", "ok", "ok"], "{provider}");
        let sources = run.completed.roadmap.weeks.iter().map(|w| w.source);
        assert!(sources.into_iter().all(|s| s == WeekSource::Llm), "{provider}");
    }
}

/// The peak resident memory of process `pid`, in bytes (Linux `VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kib * 1024
}

/// Runs one 6-week job to completion and returns its event.
async fn complete_one(env: &TestEnv, provider: &str) -> Completed {
    let mut events = env.watcher().await;
    let (job_id, body) = job(6, "Cloud Engineer");
    env.publish(&body).await;
    let end = events
        .wait_for_end(job_id, Duration::from_secs(60), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.completed", "{provider}: {}", end.body);
    serde_json::from_value(end.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_process_never_holds_a_huge_body() {
    for provider in PROVIDERS {
        let env = TestEnv::new().await;
        let base_url = match provider {
            "gemini" => env.mock.gemini_base_url(),
            _ => env.mock.openai_base_url(),
        };
        let mut worker = env.spawn_worker_process(&[
            ("LLM_PROVIDER", provider),
            ("LLM_BASE_URL", &base_url),
            ("LLM_MAX_RETRY_DELAY_MS", "200"),
        ]);
        let pid = worker.id().expect("the worker is running");
        // A plain job first, so the peak below is measured from a worker that has done its work
        // once, whatever this machine's baseline is.
        complete_one(&env, provider).await;
        let warm = peak_rss(pid);

        let huge = |code| Fault::HugeBody { bytes: HUGE, code };
        env.mock.set_plan(FaultPlan {
            script: vec![huge(None), huge(Some(503)), huge(None)],
            ..Default::default()
        });
        let completed = complete_one(&env, provider).await;
        assert_eq!(
            completed.usage.llm_calls, 7,
            "{provider}: the outline, 3 huge, then 3 good"
        );
        assert_eq!(completed.fallback_batches, 0, "{provider}");

        // Reading any one body whole would have raised the peak by 50 MiB at least; reading to
        // the 4 MiB cap costs a few MiB.
        let peak = peak_rss(pid);
        println!(
            "{provider}: worker peak RSS {} MiB after a plain job, {} MiB after 3 × 50 MiB offered",
            warm >> 20,
            peak >> 20
        );
        assert!(
            peak - warm < 20 << 20,
            "{provider}: the worker's peak RSS rose from {} MiB to {} MiB",
            warm >> 20,
            peak >> 20
        );
        sigterm(&worker);
        let status = tokio::time::timeout(Duration::from_secs(15), worker.wait())
            .await
            .expect("the worker exits after SIGTERM")
            .unwrap();
        assert!(status.success(), "{provider}: exit status {status:?}");
        env.cleanup().await;
    }
}
