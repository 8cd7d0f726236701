//! Promise: a bad setting stops the worker at start with the variable's name, before it touches
//! Postgres or RabbitMQ; nothing is clamped or replaced silently.

use std::process::{Command, Stdio};

/// Runs `roadmap-worker run` with one variable set to `value` (the provider the embedded mock,
/// unless that is the variable) and returns (success, stderr).
fn run_with(variable: &str, value: &str) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_roadmap-worker"))
        .arg("run")
        // Unreachable services: a setting that slipped through would fail later, differently.
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("LLM_PROVIDER", "mock")
        .env(variable, value)
        .stdin(Stdio::null())
        .output()
        .expect("running the worker binary");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn out_of_range_values_are_refused_with_the_variable_name() {
    let cases = [
        ("LEASE_SECS", "2"),
        ("LEASE_SECS", "sixty"),
        ("JOB_POISON_AFTER", "0"),
        ("SWEEP_INTERVAL_SECS", "0"),
        ("RETAIN_DAYS", "0"),
        ("RETAIN_DAYS", "3651"),
        ("AMQP_ACK_DEADLINE_SECS", "0"),
        ("LLM_PROBE_INTERVAL_SECS", "0"),
        ("LLM_TIMEOUT_SECS", "0"),
        ("LLM_MAX_OUTPUT_TOKENS", "10"),
        ("LLM_TEMPERATURE", "3"),
        ("LLM_TEMPERATURE", "NaN"),
        ("LLM_RESPONSE_FORMAT", "yaml"),
        ("LLM_PROVIDER", "claude"),
        ("DATABASE_POOL_SIZE", "0"),
        ("AMQP_DELIVERY_LIMIT", "0"),
        ("AMQP_NAMESPACE", "bad name"),
        ("BATCH_WEEKS", "13"),
        ("CONTEXT_DAYS", "8"),
        ("WORKER_CONCURRENCY", "0"),
        ("METRICS_ADDR", "nowhere"),
        ("DATABASE_CA_FILE", "/nonexistent/ca.pem"),
        (
            "DATABASE_CA_FILE",
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
        ),
        ("DATABASE_CA_FILE", ""),
    ];
    for (variable, value) in cases {
        let (ok, stderr) = run_with(variable, value);
        assert!(!ok, "{variable}={value} was accepted");
        assert!(
            stderr.contains(&format!("<{variable}>")),
            "{variable}={value}: the error does not name the variable:\n{stderr}"
        );
        assert!(
            !stderr.contains("connecting to"),
            "{variable}={value}: refused only after connecting:\n{stderr}"
        );
    }
}

#[test]
fn an_unknown_sslmode_is_refused_before_connecting_without_the_password() {
    let url = "postgres://postgres:pgSECRET@127.0.0.1:1/none?sslmode=verify";
    let (ok, stderr) = run_with("DATABASE_URL", url);
    assert!(!ok, "sslmode=verify was accepted");
    assert!(
        stderr.contains("DATABASE_URL postgres://postgres:***@127.0.0.1:1/none?sslmode=verify")
            && stderr.contains(r#"sslmode="verify" is not one of"#),
        "the error does not name DATABASE_URL and the mode:\n{stderr}"
    );
    assert!(
        !stderr.contains("connecting to"),
        "refused only after connecting:\n{stderr}"
    );
    assert!(!stderr.contains("pgSECRET"), "the password leaks:\n{stderr}");
}

#[test]
fn values_at_the_edges_of_their_ranges_are_accepted() {
    // Accepted settings get as far as connecting, and fail there (the services are unreachable).
    for (variable, value) in [
        ("LEASE_SECS", "3"),
        ("LLM_TEMPERATURE", "0"),
        ("CONTEXT_DAYS", "0"),
    ] {
        let (ok, stderr) = run_with(variable, value);
        assert!(!ok, "{variable}={value}: the worker started without its services");
        assert!(
            stderr.contains("connecting to Postgres"),
            "{variable}={value} was not accepted:\n{stderr}"
        );
    }
}

#[test]
fn run_without_a_provider_is_refused_naming_llm_provider() {
    // Unset and set empty alike: a deployment that forgets the variable must not store the
    // embedded mock's template roadmaps.
    for value in [None, Some("")] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_roadmap-worker"));
        command
            .arg("run")
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
            .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env_remove("LLM_PROVIDER")
            .stdin(Stdio::null());
        if let Some(value) = value {
            command.env("LLM_PROVIDER", value);
        }
        let output = command.output().expect("running the worker binary");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "LLM_PROVIDER={value:?}: the worker started"
        );
        // Unset: the worker's own refusal; empty: clap's "a value is required for
        // '--llm-provider <LLM_PROVIDER>'". Either names the variable.
        let named = match value {
            None => stderr.contains("LLM_PROVIDER is not set"),
            Some(_) => stderr.contains("<LLM_PROVIDER>"),
        };
        assert!(
            named,
            "LLM_PROVIDER={value:?}: the refusal does not name the variable:\n{stderr}"
        );
        assert!(
            !stderr.contains("connecting to"),
            "LLM_PROVIDER={value:?}: refused only after connecting:\n{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_migrate_on_start_a_schema_behind_is_refused_then_migrate_lets_it_run() {
    // An empty database, as before a deploy's own `migrate` step ran.
    let env = testkit::TestEnv::new().await;
    let url = env.database_url.clone();
    let name = url.rsplit('/').next().unwrap().to_owned();
    let (admin, connection) = tokio_postgres::connect(
        "postgres://postgres@127.0.0.1:5432/postgres",
        tokio_postgres::NoTls,
    )
    .await
    .expect("Postgres on 127.0.0.1:5432 (pg_ctlcluster 15 main start)");
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap();
    let run = |url: &str| {
        Command::new(env!("CARGO_BIN_EXE_roadmap-worker"))
            .arg("run")
            .env("DATABASE_URL", url)
            .env("MIGRATE_ON_START", "false")
            // Unreachable: a worker that passes the schema check fails here, differently.
            .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env("LLM_PROVIDER", "mock")
            .stdin(Stdio::null())
            .output()
            .expect("running the worker binary")
    };
    let refused = run(&url);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("schema is at V0") && stderr.contains("roadmap-worker migrate"),
        "{stderr}"
    );
    let migrated = Command::new(env!("CARGO_BIN_EXE_roadmap-worker"))
        .args(["migrate", "--database-url", &url])
        .output()
        .expect("running migrate");
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let after = run(&url);
    let stderr = String::from_utf8_lossy(&after.stderr);
    assert!(
        !stderr.contains("schema is at"),
        "the schema check passes: {stderr}"
    );
    assert!(
        stderr.contains("RabbitMQ"),
        "it gets as far as the broker: {stderr}"
    );
    env.cleanup().await;
}

#[test]
fn a_tool_s_error_is_said_once_and_a_pipe_gets_no_colour_codes() {
    let output = Command::new(env!("CARGO_BIN_EXE_roadmap-worker"))
        .args(["status", "--failed"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("running the worker binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error: ")).count(),
        1,
        "one error line:\n{stderr}"
    );
    assert!(
        !stderr.contains("ERROR"),
        "the error said once, not also as a log line:\n{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "no ANSI colour codes in a pipe:\n{stderr:?}"
    );
    // The worker itself logs through its log format; with colours off in a pipe too.
    let (ok, stderr) = run_with("LEASE_SECS", "60");
    assert!(!ok);
    assert!(
        !stderr.contains('\u{1b}'),
        "no ANSI colour codes in a pipe:\n{stderr:?}"
    );
}
