//! Promise: the operator page (ADMIN_ADDR) shows nothing without ADMIN_TOKEN; with it, it lists
//! the jobs running with their progress, shows one job's batches and a failed job's reason,
//! renders hostile user data as text, and answers 503 within its deadline when the database is
//! unreachable instead of hanging. A replica with ADMIN_ADDR and no usable token refuses to
//! start, naming the variable, and the token never reaches its output.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use mock_llm::FaultPlan;
use reqwest::{StatusCode, header};
use testkit::{Proxy, ProxyMode, TestEnv, eventually, job, job_row, sigterm};
use tokio::io::AsyncReadExt as _;

const TOKEN: &str = "admin-test-token-0123456789";
const HOSTILE_ROLE: &str = "<script>alert(1)</script>";
const HOSTILE_USER: &str = "<img src=x onerror=alert(2)>";

fn client() -> reqwest::Client {
    // Redirects are looked at, not followed.
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// GET `path` with `token` as a bearer token (none without it): status and body.
async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut request = client().get(format!("http://{addr}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the operator page answers");
    (response.status(), response.text().await.unwrap())
}

/// A worker with the page on a free port behind [`TOKEN`], one phase at a time (so a job's
/// batches are written one after another, slowly enough to be seen).
async fn start_with_page(env: &TestEnv) -> (testkit::WorkerHandle, SocketAddr) {
    let args = [
        "--admin-addr",
        "127.0.0.1:0",
        "--admin-token",
        TOKEN,
        "--job-parallelism",
        "1",
    ];
    let worker = env.start_worker(&args).await;
    let addr = worker.running.admin_addr.expect("the page is on");
    (worker, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_page_shows_jobs_batches_and_failures_behind_its_token() {
    let env = TestEnv::with_mock(FaultPlan::default(), Duration::from_millis(700)).await;
    let (worker, addr) = start_with_page(&env).await;
    let (long, mut body) = job(36, HOSTILE_ROLE);
    body["user_id"] = HOSTILE_USER.into();
    env.publish(&body).await;
    let (cancelled, body) = job(12, "Data Engineer");
    env.publish(&body).await;
    let db = env.db().await;
    for id in [long, cancelled] {
        job_row(&db, id, "a first checkpoint", |r| {
            (r.get::<_, i32>("batches_done") > 0).then_some(())
        })
        .await;
    }
    roadmap_worker::client::publish_cancel(&env.publisher, &env.topology, cancelled, "user-1")
        .await
        .unwrap();

    // Without the token, or with a wrong one: 401 and a way to sign in, nothing of the jobs.
    for token in [None, Some("wrong-token-0123456789abc")] {
        let mut request = client().get(format!("http://{addr}/"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{token:?}");
        assert!(
            response.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .starts_with("Bearer"),
        );
        let page = response.text().await.unwrap();
        assert!(page.contains("href=\"/login\""), "{page}");
        assert!(!page.contains(&long.to_string()), "{page}");
    }
    let (status, page) = get(addr, &format!("/jobs/{long}"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!page.contains("alert"), "{page}");

    // With it: the running job, its progress bar, its user data escaped.
    let (status, page) = get(addr, "/", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains(&format!("href=\"/jobs/{long}\"")), "{page}");
    assert!(
        page.contains("<meta http-equiv=\"refresh\" content=\"5\">"),
        "{page}"
    );
    assert!(page.contains("class=\"fill\" style=\"width: "), "{page}");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{page}");
    assert!(page.contains("&lt;img src=x onerror=alert(2)&gt;"), "{page}");
    assert!(!page.contains(HOSTILE_ROLE) && !page.contains("<img"), "{page}");
    assert!(!page.contains("<script"), "no page carries a script: {page}");
    assert!(
        page.contains(&worker.running.owner),
        "its replica is listed: {page}"
    );

    // The job page: its written batches, each with its weeks and outcome.
    let (status, page) = get(addr, &format!("/jobs/{long}"), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let written = db
        .query(
            "SELECT first_week, last_week, outcome FROM batches WHERE job_id = $1",
            &[&long],
        )
        .await
        .unwrap();
    assert!(!written.is_empty());
    for row in &written {
        let (first, last, outcome): (i32, i32, String) = (row.get(0), row.get(1), row.get(2));
        let cells = format!("<td>{first}–{last}</td><td>{outcome}</td>");
        assert!(page.contains(&cells), "{cells} in {page}");
    }
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{page}");
    assert!(!page.contains("<script"), "{page}");

    // The cancelled job: failed, with its reason and its event's message.
    job_row(&db, cancelled, "the cancelled job fails", |r| {
        (r.get::<_, &str>("status") == "failed").then_some(())
    })
    .await;
    let (status, page) = get(addr, &format!("/jobs/{cancelled}"), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("<span class=\"state state-failed\">failed</span>"),
        "{page}"
    );
    assert!(page.contains("<span class=\"reason\">cancelled</span>"), "{page}");
    // The message lands in the outbox in the same transaction as the failure.
    assert!(page.contains("of 4 batches"), "{page}");
    let (_, overview) = get(addr, "/", Some(TOKEN)).await;
    assert!(
        overview.contains("<td class=\"reason\">cancelled</td>"),
        "{overview}"
    );

    // A person signs in through the form: a cookie only the browser keeps.
    let response = client()
        .post(format!("http://{addr}/login"))
        .form(&[("token", "wrong-token-0123456789abc")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().get(header::SET_COOKIE).is_none());
    let response = client()
        .post(format!("http://{addr}/login"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let cookie = response.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let pair = cookie.split(';').next().unwrap();
    let response = client()
        .get(format!("http://{addr}/"))
        .header(header::COOKIE, pair)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Read-only: nothing but GET reads a page.
    let response = client()
        .post(format!("http://{addr}/"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = get(addr, "/jobs/not-a-job", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_page_answers_503_in_time_when_the_database_is_unreachable() {
    let env = TestEnv::new().await;
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let url = env
        .database_url
        .replacen(":5432/", &format!(":{}/", proxy.port()), 1);
    let worker = env
        .start_worker(&[
            "--database-url",
            &url,
            "--admin-addr",
            "127.0.0.1:0",
            "--admin-token",
            TOKEN,
        ])
        .await;
    let addr = worker.running.admin_addr.unwrap();
    let (status, _) = get(addr, "/", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    // A path that goes quiet (the worst case: no error on any socket), then one refused.
    for mode in [ProxyMode::Stalled, ProxyMode::Down] {
        proxy.set(mode);
        let started = Instant::now();
        let (status, page) = get(addr, "/", Some(TOKEN)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{mode:?}: {page}");
        assert!(page.contains("Database unavailable"), "{page}");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{mode:?}: {:?}",
            started.elapsed()
        );
    }
    proxy.set(ProxyMode::Pass);
    eventually(
        Duration::from_secs(60),
        "the page back with the database",
        || async { (get(addr, "/", Some(TOKEN)).await.0 == StatusCode::OK).then_some(()) },
    )
    .await;
    worker.stop().await;
    env.cleanup().await;
}

#[test]
fn admin_addr_without_a_usable_token_is_refused_naming_admin_token() {
    for token in [None, Some(""), Some("short")] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_roadmap-worker"));
        command
            .arg("run")
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
            .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            .env("LLM_PROVIDER", "mock")
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env("ADMIN_ADDR", "127.0.0.1:0")
            .env_remove("ADMIN_TOKEN")
            .stdin(Stdio::null());
        if let Some(token) = token {
            command.env("ADMIN_TOKEN", token);
        }
        let output = command.output().expect("running the worker binary");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "ADMIN_TOKEN={token:?}: the worker started"
        );
        assert!(
            stderr.contains("ADMIN_TOKEN"),
            "ADMIN_TOKEN={token:?}: the refusal does not name the variable:\n{stderr}"
        );
        assert!(
            !stderr.contains("connecting to"),
            "ADMIN_TOKEN={token:?}: refused only after connecting:\n{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_never_reaches_the_worker_output() {
    let env = TestEnv::new().await;
    let token = format!("admin-SECRET-{}", uuid::Uuid::new_v4().simple());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = env
        .worker_command(&[
            ("ADMIN_ADDR", &addr.to_string()),
            ("ADMIN_TOKEN", &token),
            ("RUST_LOG", "debug"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the worker binary");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let output = tokio::spawn(async move {
        let (mut out, mut err) = (String::new(), String::new());
        let _ = tokio::join!(stdout.read_to_string(&mut out), stderr.read_to_string(&mut err));
        out + &err
    });
    eventually(Duration::from_secs(60), "the operator page", || async {
        (client()
            .get(format!("http://{addr}/"))
            .send()
            .await
            .ok()?
            .status()
            == StatusCode::UNAUTHORIZED)
            .then_some(())
    })
    .await;
    assert_eq!(get(addr, "/", Some(&token)).await.0, StatusCode::OK);
    // A wrong token at the login form, and the right one.
    for presented in ["wrong-token-0123456789abc", token.as_str()] {
        client()
            .post(format!("http://{addr}/login"))
            .form(&[("token", presented)])
            .send()
            .await
            .unwrap();
    }
    sigterm(&child);
    child.wait().await.unwrap();
    let output = output.await.unwrap();
    assert!(output.contains("operator page listening"), "{output}");
    assert!(!output.contains("SECRET"), "the token was printed:\n{output}");
    env.cleanup().await;
}

/// A batch's content problems are on its job's page: per stored batch while the job runs, and
/// by kind once it completed (its batches folded away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_page_shows_each_batchs_content_problems() {
    use mock_llm::{Fault, RatedFault};
    // Every batch answer plans a third of the learner's hours, the re-ask too.
    let plan = FaultPlan {
        rates: vec![RatedFault {
            rate: 1.0,
            fault: Fault::UnderPlan { share: 0.3 },
        }],
        ..FaultPlan::default()
    };
    let env = TestEnv::with_mock(plan, Duration::from_millis(400)).await;
    let (worker, addr) = start_with_page(&env).await;
    let mut events = env.watcher().await;
    let (job_id, body) = job(12, "Data Engineer");
    env.publish(&body).await;
    let path = format!("/jobs/{job_id}");
    let running = eventually(
        Duration::from_secs(60),
        "a stored batch's problems on the page",
        || async {
            let (status, page) = get(addr, &path, Some(TOKEN)).await;
            (status == StatusCode::OK && page.contains("kept after a re-ask:")).then_some(page)
        },
    )
    .await;
    assert!(running.contains("minutes"), "the problem's text: {running}");
    let end = events
        .wait_for_end(job_id, Duration::from_secs(120), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.completed");
    let (_, done) = get(addr, &path, Some(TOKEN)).await;
    assert!(done.contains("hours_off_plan 12"), "by kind once folded: {done}");
    worker.stop().await;
    env.cleanup().await;
}
