//! Promise: when the broker drops the worker's connection, the worker reconnects with backoff,
//! declares its topology again and carries on.

use std::{process::Command, time::Duration};

use testkit::{TestEnv, eventually, job};

/// Closes the broker connection named `name` (what a broker restart or a network cut does to it).
fn close_connection(name: &str) {
    let list = Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl runs (RabbitMQ's own CLI, installed with the server)");
    let text = String::from_utf8_lossy(&list.stdout);
    let pid = text
        .lines()
        .find(|l| l.contains(name))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no broker connection named {name} in:\n{text}"));
    let closed = Command::new("rabbitmqctl")
        .args(["close_connection", pid, "test: simulated broker failure"])
        .status()
        .unwrap();
    assert!(closed.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_reconnects_after_losing_the_broker() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[]).await;
    let metrics = worker.running.metrics.clone();
    let ready = format!("http://{}/readyz", worker.running.metrics_addr);
    let mut events = env.watcher().await;

    close_connection(&worker.running.owner);
    eventually(Duration::from_secs(30), "a new broker session", || async {
        (metrics.amqp_reconnects.get() == 1).then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "/readyz to report ready again",
        || async {
            let status = reqwest::get(&ready).await.ok()?.status();
            (status == 200).then_some(())
        },
    )
    .await;

    let (job_id, body) = job(3, "Network Engineer");
    env.publish(&body).await;
    let end = events
        .wait_for_end(job_id, Duration::from_secs(30), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.completed");
    worker.stop().await;
    env.cleanup().await;
}

/// The client proposes 32 KiB frames unless the URL names a size (lapin keeps 64 frames of
/// buffer per connection, so RabbitMQ's 128 KiB default would cost 8 MiB a replica).
#[tokio::test]
async fn the_amqp_frame_is_32_kib_unless_the_url_names_one() {
    let mut settings = testkit::amqp_settings("rwtest_frame");
    let connection = roadmap_worker::amqp::connect(&settings, "rwtest-frame")
        .await
        .expect(testkit::AMQP_HINT);
    assert_eq!(connection.configuration().frame_max(), 32 * 1024);
    let _ = connection.close(200, "done".into()).await;

    let url = testkit::amqp_url();
    let separator = if url.contains('?') { '&' } else { '?' };
    settings.url = format!("{url}{separator}frame_max=65536").parse().unwrap();
    let connection = roadmap_worker::amqp::connect(&settings, "rwtest-frame")
        .await
        .expect(testkit::AMQP_HINT);
    assert_eq!(connection.configuration().frame_max(), 64 * 1024);
    let _ = connection.close(200, "done".into()).await;
}
