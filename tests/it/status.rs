//! Promise: `roadmap-worker status` tells an operator where a job is without psql: its state,
//! batches, calls, tokens and cost as text or JSON (with the roadmap once completed; a completed
//! job's figures outlive its batches, folded away at completion), lists the running or failed
//! jobs, and answers an unknown job clearly.

use std::{process::Output, time::Duration};

use serde_json::Value;

use testkit::{TestEnv, job};

fn status(env: &TestEnv, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_roadmap-worker"))
        .arg("status")
        .args(args)
        .env("DATABASE_URL", &env.database_url)
        .env("RUST_LOG", "off")
        .output()
        .expect("running roadmap-worker status")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_job_as_text_and_json_and_lists_failed_ones() {
    let env = TestEnv::new().await;
    // A cap that a 3-week job (one batch) stays under and a 12-week job passes mid-way.
    let worker = env
        .start_worker(&["--job-max-output-tokens", "3000", "--job-parallelism", "1"])
        .await;
    let mut events = env.watcher().await;
    let (done, body) = job(3, "Data Engineer");
    env.publish(&body).await;
    let (failed, body) = job(12, "Data Engineer");
    env.publish(&body).await;
    let mut ends = Vec::new();
    for id in [done, failed] {
        ends.push(
            events
                .wait_for_end(id, Duration::from_secs(60), |_| {})
                .await
                .expect("the job ends"),
        );
    }
    worker.stop().await;
    let db = env.db().await;
    let batches = |id| {
        let db = &db;
        async move {
            db.query_one("SELECT count(*) FROM batches WHERE job_id = $1", &[&id])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(batches(done).await, 0, "the completion folded its batches away");
    assert_eq!(batches(failed).await, 1, "a failed job keeps its batches");

    let text = stdout(&status(&env, &[&done.to_string()]));
    println!("{text}");
    assert!(text.contains(&format!("job {done}  user user-1")), "{text}");
    assert!(
        text.contains("state      completed  (batches 1/1, 0 fallback)"),
        "{text}"
    );
    assert!(text.contains("LLM        1 calls"), "{text}");
    assert!(text.contains("roadmap    "), "{text}");

    let json: Value = serde_json::from_str(&stdout(&status(&env, &["--json", &done.to_string()]))).unwrap();
    assert_eq!(json["status"], "completed");
    assert_eq!(json["batches_done"], 1);
    assert!(json["output_tokens"].as_i64().unwrap() > 0);
    // The figures of its folded batches are the completion event's (one batch, no outline).
    let usage = &ends[0].body["usage"];
    for field in [
        "llm_calls",
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
    ] {
        assert_eq!(json[field], usage[field], "{field}");
    }
    assert_eq!(json["fallback_batches"], ends[0].body["fallback_batches"]);
    assert_eq!(
        json["roadmap"]["weeks"].as_array().map(Vec::len),
        Some(3),
        "the roadmap comes along"
    );

    let listed = stdout(&status(&env, &["--failed", "--since", "1h"]));
    assert!(
        listed.contains(&failed.to_string()) && listed.contains("output_token_cap"),
        "{listed}"
    );
    assert!(!listed.contains(&done.to_string()), "{listed}");
    assert_eq!(stdout(&status(&env, &["--running"])).trim(), "no running jobs");

    let unknown = status(&env, &["7f1d7f8e-3a5c-4a55-9d1f-6a3b2c1d0e9f"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no job 7f1d7f8e-3a5c-4a55-9d1f-6a3b2c1d0e9f"));
    env.cleanup().await;
}
