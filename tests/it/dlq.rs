//! Promise: an operator can work with the dead-letter queue without the RabbitMQ UI: `dlq list`
//! counts by reason, `dlq replay` sends a fixed message back to work (it completes) and a
//! still-broken one back through intake (it returns with its reason, nothing lost), and
//! `dlq purge` deletes only with `--yes`.

use std::{process::Output, time::Duration};

use lapin::{BasicProperties, types::ShortString};
use serde_json::Value;

use testkit::{TestEnv, amqp_url, eventually, job};

fn dlq(env: &TestEnv, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_roadmap-worker"))
        .arg("dlq")
        .args(args)
        .env("AMQP_URL", amqp_url())
        .env("AMQP_NAMESPACE", &env.name)
        .env("RUST_LOG", "off")
        .output()
        .expect("running roadmap-worker dlq")
}

fn listed(env: &TestEnv) -> Value {
    let out = dlq(env, &["list", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("dlq list --json prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_replayed_and_purged() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[]).await;
    let mut events = env.watcher().await;
    // A valid job that its backend labelled text/plain, and a body that is not JSON.
    let (job_id, body) = job(3, "Data Engineer");
    let mislabelled = BasicProperties::default().with_content_type(ShortString::from("text/plain"));
    env.publish_with(body.to_string().as_bytes(), mislabelled).await;
    env.publish_raw(b"{not json", Some("application/json")).await;
    let seen = eventually(Duration::from_secs(30), "both messages dead-lettered", || async {
        let list = listed(&env);
        (list["count"] == 2).then_some(list)
    })
    .await;
    assert_eq!(seen["by_reason"]["wrong_content_type"], 1, "{seen}");
    assert_eq!(seen["by_reason"]["not_json"], 1, "{seen}");
    let text = String::from_utf8_lossy(&dlq(&env, &["list"]).stdout).into_owned();
    assert!(
        text.contains("2 message(s)") && text.contains(&job_id.to_string()),
        "{text}"
    );

    // The fixed one goes back to work and completes.
    let out = dlq(
        &env,
        &[
            "replay",
            "--reason",
            "wrong_content_type",
            "--content-type",
            "application/json",
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("replayed 1"),
        "{out:?}"
    );
    // Its refusal was announced (`roadmap.failed`, wrong_content_type) and the replay completes
    // it; the two events take different paths (relay, express), so in either order.
    let mut ends = Vec::new();
    for _ in 0..2 {
        let end = events
            .wait_for_end(job_id, Duration::from_secs(60), |_| {})
            .await
            .expect("the job's refusal and its completion");
        ends.push((end.routing_key.clone(), end.body["reason"].clone()));
    }
    assert!(
        ends.contains(&("roadmap.failed".to_owned(), Value::from("wrong_content_type"))),
        "{ends:?}"
    );
    assert!(ends.iter().any(|(key, _)| key == "roadmap.completed"), "{ends:?}");

    // The broken one goes through intake again and comes back with its reason.
    let out = dlq(&env, &["replay", "--reason", "not_json"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("replayed 1"),
        "{out:?}"
    );
    let back = eventually(Duration::from_secs(30), "the broken message back", || async {
        let list = listed(&env);
        (list["count"] == 1 && list["by_reason"]["not_json"] == 1).then_some(list)
    })
    .await;
    assert_eq!(back["messages"][0]["reason"], "not_json");

    // Purge asks for --yes, then deletes.
    let refused = dlq(&env, &["purge", "--reason", "not_json"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    assert_eq!(listed(&env)["count"], 1, "nothing deleted without --yes");
    assert!(
        dlq(&env, &["purge", "--reason", "not_json", "--yes"])
            .status
            .success()
    );
    assert_eq!(listed(&env)["count"], 0);
    worker.stop().await;
    env.cleanup().await;
}
