//! Promise: a wait on Postgres has a deadline. A session that holds a job's row locked stalls
//! that job alone: other jobs keep going, the locked one resumes once the lock goes, and a
//! deterministic SQL error is not retried as if it were an outage. A live owner whose sessions
//! are cut (a proxy restart, `pg_terminate_backend`) keeps its job: no takeover, no poison.

use std::time::{Duration, Instant};

use mock_llm::FaultPlan;
use roadmap_worker::store::StoreError;
use roadmap_worker::store::jobs::APP_PREFIX;
use testkit::{Proxy, ProxyMode, TestEnv, eventually, job, job_row};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_lock_held_elsewhere_stalls_only_its_job() {
    let env = TestEnv::with_mock(FaultPlan::default(), Duration::from_millis(700)).await;
    // The lock deadline short, as an operator may set it in DATABASE_URL; short leases, renewed
    // every second, so that a renewal held up by the lock would show within the hold.
    let url = format!("{}?options=-c%20lock_timeout%3D1s", env.database_url);
    let worker = env
        .start_worker(&[
            "--database-url",
            &url,
            "--job-parallelism",
            "1",
            "--lease-secs",
            "3",
        ])
        .await;
    let mut events = env.watcher().await;
    let (locked, body) = job(24, "Data Engineer");
    env.publish(&body).await;
    let db = env.db().await;
    let batches_done = |id| {
        let db = &db;
        async move {
            db.query_opt("SELECT batches_done FROM jobs WHERE job_id = $1", &[&id])
                .await
                .unwrap()
                .map(|r| r.get::<_, i32>(0))
        }
    };
    eventually(
        Duration::from_secs(30),
        "the first job's first checkpoint",
        || async { (batches_done(locked).await? >= 1).then_some(()) },
    )
    .await;
    // Another session takes the job's row and sits on it, as a forgotten `BEGIN; SELECT … FOR
    // UPDATE` in a console would.
    let mut holder = env.db().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM jobs WHERE job_id = $1 FOR UPDATE", &[&locked])
        .await
        .unwrap();
    let held_at = Instant::now();
    let (other, body) = job(24, "Backend Developer");
    env.publish(&body).await;
    // While the lock is held the other job goes on, and its lease stays renewed: one locked row
    // does not hold back the renewal of every lease.
    let mut lapsed = 0;
    loop {
        let row = db
            .query_opt(
                "SELECT status, lease_until > now() AS live FROM jobs WHERE job_id = $1",
                &[&other],
            )
            .await
            .unwrap();
        match row {
            Some(r) if r.get::<_, &str>("status") == "completed" => break,
            Some(r) if r.get::<_, Option<bool>>("live") == Some(false) => lapsed += 1,
            _ => {}
        }
        assert!(
            held_at.elapsed() < Duration::from_secs(14),
            "the other job completes while the lock is held"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        lapsed, 0,
        "the other job's lease lapsed while a row it does not own was locked"
    );
    assert!(batches_done(locked).await.unwrap() < 8, "the locked job waited");
    tokio::time::sleep(Duration::from_secs(15).saturating_sub(held_at.elapsed())).await;
    tx.rollback().await.unwrap();
    for id in [other, locked] {
        let end = events
            .wait_for_end(id, Duration::from_secs(90), |_| {})
            .await
            .unwrap();
        assert_eq!(end.routing_key, "roadmap.completed", "{}", end.body);
    }
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deterministic_sql_error_is_not_taken_for_an_outage() {
    let env = TestEnv::new().await;
    let pool = env.pool("stall-test").await;
    let client = pool.get().await.unwrap();
    let syntax = client.batch_execute("SELEC 1").await.unwrap_err();
    assert!(!StoreError::Db(syntax).is_transient(), "a syntax error is a bug");
    let timeout = client
        .batch_execute("SET statement_timeout = '50ms'; SELECT pg_sleep(1)")
        .await
        .unwrap_err();
    assert!(
        StoreError::Db(timeout).is_transient(),
        "a statement timeout passes with the stall"
    );
    drop(client);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_channel_the_broker_closes_is_opened_again() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[]).await;
    // The events exchange deleted under the worker: its next event publish is refused with 404,
    // which closes the publisher's channel (as a 406 for a refused property would).
    let channel = env.connection.create_channel().await.unwrap();
    channel
        .exchange_delete(env.topology.events_exchange.as_str().into(), Default::default())
        .await
        .unwrap();
    let (job_id, body) = job(3, "Site Reliability Engineer");
    env.publish(&body).await;
    let metrics = &worker.running.metrics;
    eventually(
        Duration::from_secs(30),
        "the publisher's channel opened again",
        || async {
            let reopened = metrics.channels_reopened.with_label_values(&["publisher"]).get();
            (reopened >= 1).then_some(())
        },
    )
    .await;
    // The exchange back (as any replica's next start would declare it): the job's events,
    // kept in the outbox meanwhile, reach a queue bound now.
    env.topology.declare(&channel).await.unwrap();
    let mut events = env.watcher().await;
    let end = events
        .wait_for_end(job_id, Duration::from_secs(60), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.completed", "{}", end.body);
    assert_eq!(metrics.amqp_reconnects.get(), 0, "the session itself went on");
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_owner_whose_sessions_are_cut_keeps_its_job() {
    let env = TestEnv::new().await;
    env.mock.stall_from_week(4);
    // The owner reaches Postgres through a proxy that the test restarts; early acks, so that a
    // sweeper that took the owner for dead would re-publish its job.
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let url = env
        .database_url
        .replacen(":5432/", &format!(":{}/", proxy.port()), 1);
    let flags = |url: &str| {
        [
            "--database-url".to_owned(),
            url.to_owned(),
            "--amqp-ack-deadline-secs".into(),
            "1".into(),
            "--sweep-interval-secs".into(),
            "1".into(),
            "--owner-grace-secs".into(),
            "3".into(),
        ]
    };
    let owner_flags = flags(&url);
    let a = env
        .start_worker(&owner_flags.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let mut events = env.watcher().await;
    let (job_id, body) = job(9, "Platform Engineer");
    env.publish(&body).await;
    let db = env.db().await;
    let owner: String = job_row(&db, job_id, "the early ack after a checkpoint", |r| {
        (r.get::<_, i32>(1) == 1 && r.get::<_, bool>(5)).then(|| r.get(2))
    })
    .await;
    // A second replica, direct to Postgres, sweeping every second; its own heartbeat holds for
    // the grace before it judges anyone.
    let other_flags = flags(&env.database_url);
    let b = env
        .start_worker(&other_flags.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Three proxy restarts, each shorter than the grace (3 s) and longer than a sweep: every
    // session of the owner is cut, and none can be opened for 1.5 s.
    for _ in 0..3 {
        let sessions: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&format!("{APP_PREFIX}{owner}")],
            )
            .await
            .unwrap()
            .get(0);
        assert!(sessions > 0, "the owner had sessions to cut");
        proxy.set(ProxyMode::Down);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        proxy.set(ProxyMode::Pass);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    env.mock.release();
    let end = events
        .wait_for_end(job_id, Duration::from_secs(60), |_| {})
        .await
        .unwrap();
    assert_eq!(end.routing_key, "roadmap.completed", "{}", end.body);
    let row = db
        .query_one("SELECT claims, abandoned FROM jobs WHERE job_id = $1", &[&job_id])
        .await
        .unwrap();
    let (claims, abandoned): (i32, i32) = (row.get(0), row.get(1));
    assert_eq!(
        (claims, abandoned),
        (1, 0),
        "the live owner kept its job: one claim, never abandoned"
    );
    assert_eq!(
        b.running.metrics.jobs_redispatched.get(),
        0,
        "no sweeper took the live owner for dead"
    );
    a.stop().await;
    b.stop().await;
    env.cleanup().await;
}
