//! Promise: secrets never reach logs, errors or metrics: the LLM API key and the Postgres and
//! RabbitMQ passwords stay out of a running worker's output and HTTP endpoints, and out of the
//! errors of a worker that cannot connect.

use std::{process::Stdio, time::Duration};

use tokio::io::AsyncReadExt as _;
use uuid::Uuid;

use testkit::{TestEnv, job};

fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn secret_suffix() -> String {
    Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// `url` with its password set to `password`.
fn with_password(url: &str, password: &str) -> String {
    let mut parsed = url::Url::parse(url).unwrap();
    parsed.set_password(Some(password)).unwrap();
    parsed.to_string()
}

/// The worker binary with this test's settings, debug logs and piped output; `env_pairs`
/// override. Keys come only from `env_pairs`, never from the environment the tests run in.
fn worker_command(env: &TestEnv, env_pairs: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = env.worker_command(&[("SHUTDOWN_GRACE_SECS", "5"), ("RUST_LOG", "debug")]);
    cmd.env_remove("LLM_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .env_remove("GEMINI_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env_pairs {
        cmd.env(k, v);
    }
    cmd
}

/// Reads a child's stdout and stderr to the end, in the background.
fn capture(child: &mut tokio::process::Child) -> tokio::task::JoinHandle<String> {
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    tokio::spawn(async move {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let _ = tokio::join!(out.read_to_end(&mut a), err.read_to_end(&mut b));
        format!("{}\n{}", String::from_utf8_lossy(&a), String::from_utf8_lossy(&b))
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs_or_metrics_of_a_running_worker() {
    let env = TestEnv::new().await;
    let api_key = format!("sk-test-SECRET-{}", secret_suffix());
    let pg_password = format!("pgSECRET{}", secret_suffix());
    // Local Postgres trusts 127.0.0.1, so the password is carried everywhere but never checked.
    let database_url = with_password(&env.database_url, &pg_password);
    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut watcher = env.watcher().await;
    let mut child = worker_command(
        &env,
        &[
            ("LLM_API_KEY", &api_key),
            ("DATABASE_URL", &database_url),
            ("METRICS_ADDR", &metrics_addr),
        ],
    )
    .spawn()
    .expect("starting the worker binary");
    let output = capture(&mut child);

    let (job_id, body) = job(3, "Security Engineer");
    env.publish(&body).await;
    let done = match watcher
        .wait_for_end(job_id, Duration::from_secs(90), |_| {})
        .await
    {
        Ok(done) => done,
        Err(e) => {
            let _ = child.start_kill();
            let logs = tokio::time::timeout(Duration::from_secs(10), output).await;
            panic!("{e:#}; the worker's output: {logs:?}");
        }
    };
    assert_eq!(done.routing_key, "roadmap.completed");
    assert!(
        !env.mock.requests().is_empty(),
        "the worker called the LLM with its key"
    );
    let metrics = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("roadmap_"), "metrics served: {metrics}");
    // The other HTTP endpoints say nothing secret either.
    let mut served = metrics.clone();
    for path in ["healthz", "readyz"] {
        let response = reqwest::get(format!("http://{metrics_addr}/{path}"))
            .await
            .unwrap();
        served.push_str(&response.text().await.unwrap());
    }

    // SIGTERM, then wait for the drain to finish.
    let pid = child.id().expect("the worker is running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    if exit.is_err() {
        child.start_kill().unwrap();
    }
    let logs = tokio::time::timeout(Duration::from_secs(10), output)
        .await
        .expect("the worker's output closes")
        .unwrap();

    assert!(logs.contains("DEBUG"), "RUST_LOG=debug took effect:\n{logs}");
    assert!(
        logs.contains(":***@"),
        "the database URL is logged masked:\n{logs}"
    );
    for (what, secret) in [("API key", &api_key), ("Postgres password", &pg_password)] {
        for text in [&logs, &served] {
            if let Some(at) = text.find(secret.as_str()) {
                let line = text[..at].rfind('\n').map_or(0, |n| n + 1);
                let end = text[at..].find('\n').map_or(text.len(), |n| at + n);
                panic!("the {what} leaks: {}", &text[line..end]);
            }
        }
        // The secret's distinctive part must not appear either (e.g. percent-encoded or cut).
        let core = &secret[secret.len() - 12..];
        assert!(!logs.contains(core), "the {what} leaks in part");
        assert!(!served.contains(core), "the {what} leaks over HTTP");
    }
    assert!(
        exit.is_ok_and(|s| s.is_ok_and(|s| s.success())),
        "the worker exits cleanly on SIGTERM:\n{logs}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_masked_when_the_worker_cannot_connect() {
    let env = TestEnv::new().await;
    let amqp_password = format!("amqpSECRET{}", secret_suffix());
    let pg_password = format!("pgSECRET{}", secret_suffix());
    let bad_amqp = with_password(&amqp_url(), &amqp_password);
    let masked_amqp = with_password(&amqp_url(), "***");
    // Postgres on a port where nothing listens, with a password in the URL.
    let bad_pg = format!("postgres://postgres:{pg_password}@127.0.0.1:1/{}", env.name);
    let cases = [
        ("AMQP_URL", bad_amqp.as_str(), amqp_password.as_str(), masked_amqp),
        (
            "DATABASE_URL",
            bad_pg.as_str(),
            pg_password.as_str(),
            String::new(),
        ),
    ];
    for (var, url, secret, masked) in cases {
        let mut child = worker_command(&env, &[(var, url), ("LLM_API_KEY", "sk-unused")])
            .spawn()
            .unwrap();
        let output = capture(&mut child);
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .unwrap_or_else(|_| panic!("the worker with a bad {var} did not exit"))
            .unwrap();
        let logs = output.await.unwrap();
        assert!(!status.success(), "a bad {var} fails the start:\n{logs}");
        assert!(logs.contains("error"), "{var}: the failure is reported:\n{logs}");
        if !masked.is_empty() {
            assert!(
                logs.contains(&masked),
                "{var}: the error names the URL as {masked}:\n{logs}"
            );
        }
        assert!(!logs.contains(secret), "{var}: the password leaks:\n{logs}");
    }
    env.cleanup().await;
}
