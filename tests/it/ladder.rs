//! Promise: every rung of the robustness ladder ends in a valid roadmap, for both providers over
//! HTTP; a configuration fault leaves the job queued and the worker not ready.

use std::time::Duration;

use mock_llm::{Fault, FaultPlan};
use roadmap_worker::{
    config::ResponseFormat,
    domain::{JobRequest, WeekSource, brief::Brief},
    llm::{estimate_tokens, mock},
    pipeline::{self, prompt},
};

use testkit::{
    TestEnv, eventually, job,
    runs::{PROVIDERS, run_job},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_with_backoff() {
    for provider in PROVIDERS {
        let script = vec![
            Fault::Status {
                code: 503,
                retry_after: None,
            },
            Fault::Status {
                code: 429,
                retry_after: Some(0.05),
            },
        ];
        let run = run_job(provider, script, 6, &[]).await;
        // Six weeks in the template's three phases: an outline, then three batches of two.
        assert_eq!(run.outlines, 1, "{provider}");
        assert_eq!(
            run.asked,
            vec![(1, 2), (1, 2), (1, 2), (3, 4), (5, 6)],
            "{provider}"
        );
        assert_eq!(run.outcomes(), vec!["retried", "ok", "ok"], "{provider}");
        assert_eq!(run.batches[0].1, 3, "{provider}: failed attempts are counted");
        assert_eq!(
            run.completed.usage.llm_calls, 6,
            "{provider}: the outline's call included"
        );
        assert_eq!(run.completed.fallback_batches, 0, "{provider}");

        // A call slower than LLM_TIMEOUT_SECS times out and is retried like any transient fault.
        let slow = vec![Fault::Slow { ms: 2500 }];
        let run = run_job(provider, slow, 3, &["--llm-timeout-secs", "1"]).await;
        assert_eq!(run.asked, vec![(1, 3), (1, 3)], "{provider}");
        assert_eq!(run.outlines, 0, "{provider}: a job of one batch needs no outline");
        assert_eq!(run.outcomes(), vec!["retried"], "{provider}");
    }
}

/// An output limit that holds two weeks of this job's answers but not three.
fn two_week_budget(weeks: u32) -> u64 {
    let (_, body) = job(weeks, "Cloud Engineer");
    let request = JobRequest::decode(body.to_string().as_bytes(), None).unwrap();
    let plan = pipeline::plan(&request.profile(), weeks, 1);
    let week_tokens: Vec<u64> = (1..=weeks)
        .map(|n| {
            let brief = Brief {
                profile: request.profile(),
                duration_weeks: weeks,
                first_week: n,
                last_week: n,
                phases: plan.phases.clone(),
            };
            let text = mock::answer(&prompt::render(
                &brief,
                prompt::Context::Start,
                &[],
                2,
                None,
                ResponseFormat::JsonSchema,
            ))
            .unwrap();
            estimate_tokens(&text)
        })
        .collect();
    let pairs = week_tokens.windows(2).map(|w| w[0] + w[1]).max().unwrap();
    let triples = week_tokens.windows(3).map(|w| w[0] + w[1] + w[2]).min().unwrap();
    let budget = pairs + 20;
    assert!(
        budget < triples,
        "weeks too uneven for this test: {week_tokens:?}"
    );
    budget
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_keeps_complete_weeks_and_asks_for_the_rest() {
    let budget = two_week_budget(9).to_string();
    for provider in PROVIDERS {
        let run = run_job(provider, vec![], 9, &["--llm-max-output-tokens", &budget]).await;
        // Batch 1 is cut after two weeks; only week 3 is asked again. Later batches start from
        // the learned size instead of repeating the same cut.
        assert_eq!(
            run.asked,
            vec![(1, 3), (3, 3), (4, 5), (6, 6), (7, 8), (9, 9)],
            "{provider}"
        );
        assert_eq!(run.outcomes(), vec!["truncated", "ok", "ok"], "{provider}");
        assert_eq!(run.completed.fallback_batches, 0, "{provider}");
        assert!(
            run.completed
                .roadmap
                .weeks
                .iter()
                .all(|w| w.source == WeekSource::Llm)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_output_is_reasked_once() {
    for provider in PROVIDERS {
        for fault in [Fault::InvalidJson, Fault::WrongWeeks] {
            let run = run_job(provider, vec![fault.clone()], 6, &[]).await;
            assert_eq!(
                run.asked,
                vec![(1, 2), (1, 2), (3, 4), (5, 6)],
                "{provider} {fault:?}"
            );
            assert_eq!(
                run.outcomes(),
                vec!["reasked", "ok", "ok"],
                "{provider} {fault:?}"
            );
            assert_eq!(run.completed.fallback_batches, 0);
        }
        // Markdown fences around valid JSON are read without a re-ask.
        let run = run_job(provider, vec![Fault::Fences], 6, &[]).await;
        assert_eq!(run.asked, vec![(1, 2), (3, 4), (5, 6)], "{provider}");
        assert_eq!(run.outcomes(), vec!["ok", "ok", "ok"], "{provider}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_failure_falls_back_to_template_weeks() {
    for provider in PROVIDERS {
        // Invalid twice: the re-ask fails too.
        let run = run_job(provider, vec![Fault::InvalidJson, Fault::WrongWeeks], 6, &[]).await;
        assert_eq!(run.outcomes(), vec!["fallback", "ok", "ok"], "{provider}");
        assert_eq!(run.completed.fallback_batches, 1);
        let sources: Vec<WeekSource> = run.completed.roadmap.weeks.iter().map(|w| w.source).collect();
        assert_eq!(sources[..2], [WeekSource::Fallback; 2]);
        assert_eq!(sources[2..], [WeekSource::Llm; 4]);

        // Transient failures past the retry limit.
        let unavailable = Fault::Status {
            code: 503,
            retry_after: None,
        };
        let run = run_job(provider, vec![unavailable; 3], 6, &["--llm-max-retries", "2"]).await;
        assert_eq!(
            run.asked,
            vec![(1, 2), (1, 2), (1, 2), (3, 4), (5, 6)],
            "{provider}"
        );
        assert_eq!(run.outcomes(), vec!["fallback", "ok", "ok"], "{provider}");
        assert_eq!(run.batches[0].1, 3, "{provider}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_fault_pauses_intake_and_keeps_the_job_queued() {
    for provider in PROVIDERS {
        // The job's first calls and probes are refused (its phases are written side by side,
        // so a sibling batch may take the second refusal); then the provider accepts again.
        let env = TestEnv::with_plan(FaultPlan {
            script: vec![Fault::AuthFailure, Fault::AuthFailure],
            ..Default::default()
        })
        .await;
        let worker = env.start_worker_for(provider, &[]).await;
        let metrics = worker.running.metrics.clone();
        let ready_url = format!("http://{}/readyz", worker.running.metrics_addr);
        let mut events = env.watcher().await;
        let (job_id, body) = job(6, "Cloud Engineer");
        env.publish(&body).await;

        eventually(
            Duration::from_secs(10),
            "the worker to turn not ready",
            || async { (metrics.provider_ready.get() == 0).then_some(()) },
        )
        .await;
        let readyz = reqwest::get(&ready_url).await.unwrap();
        assert_eq!(readyz.status(), 503, "{provider}");
        assert!(readyz.text().await.unwrap().contains("llm provider"));
        let db = env.db().await;
        let stored: i64 = db
            .query_one("SELECT count(*) FROM batches WHERE outcome = 'fallback'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            stored, 0,
            "{provider}: no template weeks were stored for a configuration fault"
        );

        // Once the provider accepts requests again the same job completes, with no fallback.
        let end = events
            .wait_for_end(job_id, Duration::from_secs(30), |_| {})
            .await
            .unwrap();
        assert_eq!(end.routing_key, "roadmap.completed", "{provider}");
        assert_eq!(end.body["fallback_batches"], 0);
        assert_eq!(metrics.provider_ready.get(), 1);
        assert_eq!(reqwest::get(&ready_url).await.unwrap().status(), 200);
        worker.stop().await;
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_response_format_mode_sends_what_the_server_expects() {
    let expected = [
        (
            "openai",
            "json-schema",
            ["json_schema[1,2]", "json_schema[3,4]", "json_schema[5,6]"],
        ),
        (
            "openai",
            "json-object-schema",
            [
                "json_object_schema[1,2]",
                "json_object_schema[3,4]",
                "json_object_schema[5,6]",
            ],
        ),
        (
            "openai",
            "guided-json",
            ["guided_json[1,2]", "guided_json[3,4]", "guided_json[5,6]"],
        ),
        ("openai", "json-object", ["json_object"; 3]),
        ("openai", "none", ["none"; 3]),
        (
            "gemini",
            "json-schema",
            [
                "response_schema[1-2]",
                "response_schema[3-4]",
                "response_schema[5-6]",
            ],
        ),
        ("gemini", "json-object", ["json"; 3]),
        ("gemini", "none", ["none"; 3]),
    ];
    for (provider, mode, formats) in expected {
        let run = run_job(provider, vec![], 6, &["--llm-response-format", mode]).await;
        assert_eq!(run.formats, formats, "{provider} {mode}");
        assert_eq!(run.outcomes(), vec!["ok", "ok", "ok"], "{provider} {mode}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_problems_are_reasked_once_then_kept_and_reported() {
    use roadmap_worker::domain::quality::ProblemKind;
    let faults = [
        (Fault::RepeatTasks, ProblemKind::RepeatedTasks),
        (Fault::IgnoreOutline, ProblemKind::OffOutline),
        (Fault::UnderPlan { share: 0.3 }, ProblemKind::HoursOffPlan),
    ];
    for (fault, kind) in faults {
        // The first answer misbehaves, the re-ask is good: stored clean.
        let run = run_job("openai", vec![fault.clone()], 6, &[]).await;
        assert_eq!(run.asked, vec![(1, 2), (1, 2), (3, 4), (5, 6)], "{fault:?}");
        assert_eq!(run.outcomes(), vec!["reasked", "ok", "ok"], "{fault:?}");
        let quality = run.completed.quality.clone().expect("quality in the event");
        assert_eq!(quality.reasked_batches, 1, "{fault:?}");
        assert!(
            quality.problems.values().all(|n| *n == 0),
            "{fault:?}: {quality:?}"
        );

        // The re-ask misbehaves too: kept with its problems, never templated.
        let run = run_job("openai", vec![fault.clone(), fault.clone()], 6, &[]).await;
        assert_eq!(run.outcomes(), vec!["reasked", "ok", "ok"], "{fault:?}");
        assert_eq!(run.completed.fallback_batches, 0, "{fault:?}");
        let quality = run.completed.quality.clone().expect("quality in the event");
        assert!(quality.problems[&kind] >= 1, "{fault:?}: {quality:?}");
        let series = format!("roadmap_quality_problems_total{{kind=\"{}\"}}", kind.as_str());
        assert_eq!(
            run.metric(&series),
            f64::from(quality.problems[&kind]),
            "{fault:?}"
        );
    }
}
