//! A managed-HA failover (not part of `cargo test`: it makes two Postgres clusters of its own on
//! ports 5441 and 5442 and takes minutes). Run alone:
//! `cargo test --test failover -- --nocapture`.
//!
//! Primary A with a synchronous standby B; two worker processes given both hosts with
//! `target_session_attrs=read-write`, as a managed HA database documents. While jobs run, A turns
//! read-only for `FAILOVER_READONLY_SECS` (20 s by default; 40 for the longer run), then
//! crashes, and B is promoted 8 s later. Every job completes, once; none fails, nothing is
//! dead-lettered, no worker exits; the time from the promotion to the first batch stored on B
//! is printed.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use mock_llm::FaultPlan;
use testkit::{TestEnv, job};
use uuid::Uuid;

const BIN: &str = "/usr/lib/postgresql/15/bin";
const JOBS: usize = 30;

/// Runs a Postgres program as the `postgres` user (the server refuses to run as root).
fn pg(program: &str, args: &[&str]) {
    let status = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(Path::new(BIN).join(program))
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed");
}

/// A throwaway cluster on `port`, stopped and deleted when dropped.
struct Cluster {
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    fn dir_for(port: u16) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rw-failover-{port}-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        // Owned by the server's user, and private: the server refuses a data directory others
        // can read.
        let status = Command::new("chown")
            .args(["postgres:postgres", dir.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        dir
    }

    fn primary(port: u16) -> Self {
        let dir = Self::dir_for(port);
        pg(
            "initdb",
            &[
                "-D",
                dir.to_str().unwrap(),
                "--auth=trust",
                "-U",
                "postgres",
                "-N",
            ],
        );
        let cluster = Self { dir, port };
        cluster.start();
        cluster
    }

    fn standby_of(primary: &Cluster, port: u16) -> Self {
        let dir = Self::dir_for(port);
        let source = primary.port.to_string();
        pg(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &source,
                "-U",
                "postgres",
                "-D",
                dir.to_str().unwrap(),
                "-R",
                "-X",
                "stream",
            ],
        );
        let cluster = Self { dir, port };
        cluster.start();
        cluster
    }

    fn start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories=/tmp -c fsync=off",
            self.port
        );
        let log = self.dir.join("server.log");
        pg(
            "pg_ctl",
            &[
                "-D",
                self.dir.to_str().unwrap(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
    }

    fn crash(&self) {
        pg(
            "pg_ctl",
            &["-D", self.dir.to_str().unwrap(), "-m", "immediate", "stop"],
        );
    }

    fn promote(&self) {
        pg("pg_ctl", &["-D", self.dir.to_str().unwrap(), "-w", "promote"]);
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    async fn sql(&self, db: &str, sql: &str) -> Vec<tokio_postgres::Row> {
        let (client, conn) = tokio_postgres::connect(&self.url(db), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cluster on {}: {e}", self.port));
        tokio::spawn(conn);
        client.query(sql, &[]).await.unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(Path::new(BIN).join("pg_ctl"))
            .args(["-D", self.dir.to_str().unwrap(), "-m", "immediate", "stop"])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_the_synchronous_standby_completes_every_job_once() {
    let read_only = Duration::from_secs(
        std::env::var("FAILOVER_READONLY_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    );
    let a = Cluster::primary(5441);
    let b = Cluster::standby_of(&a, 5442);
    // B is A's synchronous standby; the setting lives in A's own files only, so the promoted B
    // does not wait for a standby it no longer has.
    a.sql("postgres", "ALTER SYSTEM SET synchronous_standby_names = '*'")
        .await;
    a.sql("postgres", "SELECT pg_reload_conf()").await;
    a.sql("postgres", "CREATE DATABASE roadmap").await;

    let env = TestEnv::with_mock(FaultPlan::default(), Duration::from_millis(300)).await;
    let url = "postgres://postgres@127.0.0.1:5441,127.0.0.1:5442/roadmap?target_session_attrs=read-write";
    let replica_env = [
        ("DATABASE_URL", url),
        ("WORKER_CONCURRENCY", "4"),
        ("LEASE_SECS", "20"),
        ("SWEEP_INTERVAL_SECS", "2"),
    ];
    let mut replicas = [
        env.spawn_worker_process(&replica_env),
        env.spawn_worker_process(&replica_env),
    ];
    let mut events = env.watcher().await;
    let mut ids = BTreeSet::new();
    for i in 0..JOBS {
        let (id, body) = job(6 + (i as u32 % 7), &format!("Failover Engineer {i}"));
        env.publish(&body).await;
        ids.insert(id);
    }
    let started = Instant::now();
    let mut ended = BTreeSet::new();
    let mut completions = BTreeSet::new();
    let mut failed = Vec::new();
    let mut take = |event: roadmap_worker::client::ReceivedEvent, ended: &mut BTreeSet<Uuid>| {
        let Some(id) = event.body["job_id"].as_str().and_then(|s| s.parse::<Uuid>().ok()) else {
            return false;
        };
        match event.routing_key.as_str() {
            "roadmap.completed" => {
                completions.insert(event.body["event_id"].as_str().unwrap_or_default().to_owned());
                ended.insert(id);
            }
            "roadmap.failed" => {
                failed.push(event.body.clone());
                ended.insert(id);
            }
            _ => return true,
        }
        false
    };
    // A few jobs end on A, then A turns read-only.
    while ended.len() < 3 {
        assert!(started.elapsed() < Duration::from_secs(60), "no job ended on A");
        if let Some(e) = events.next(Duration::from_secs(1)).await.unwrap() {
            take(e, &mut ended);
        }
    }
    println!(
        "failover: {} jobs ended on A; A turns read-only for {read_only:?}",
        ended.len()
    );
    a.sql("postgres", "ALTER SYSTEM SET default_transaction_read_only = on")
        .await;
    a.sql("postgres", "SELECT pg_reload_conf()").await;
    let until = Instant::now() + read_only;
    while Instant::now() < until {
        if let Some(e) = events.next(Duration::from_millis(500)).await.unwrap() {
            take(e, &mut ended);
        }
    }
    println!("failover: A crashes ({} jobs ended)", ended.len());
    a.crash();
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        if let Some(e) = events.next(Duration::from_millis(500)).await.unwrap() {
            take(e, &mut ended);
        }
    }
    b.promote();
    let promoted = Instant::now();
    let promoted_at: chrono::DateTime<chrono::Utc> = b.sql("roadmap", "SELECT now()").await[0].get(0);
    println!("failover: B promoted ({} jobs ended)", ended.len());
    while ended.len() < JOBS {
        assert!(
            promoted.elapsed() < Duration::from_secs(240),
            "only {}/{JOBS} jobs ended 240 s after the promotion",
            ended.len()
        );
        if let Some(e) = events.next(Duration::from_secs(1)).await.unwrap() {
            take(e, &mut ended);
        }
    }
    let all_done = promoted.elapsed();
    // A checkpoint queues its progress event in its own statement: the first one written on B.
    let first_batch: Option<f64> = {
        let (client, conn) = tokio_postgres::connect(&b.url("roadmap"), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .query_one(
                "SELECT extract(epoch FROM min(created_at) - $1)::float8 FROM outbox
                 WHERE routing_key = 'roadmap.progress' AND created_at > $1",
                &[&promoted_at],
            )
            .await
            .unwrap()
            .get(0)
    };
    println!(
        "failover: first batch stored on B {:.1} s after the promotion; all {JOBS} jobs ended {:.1} s after it ({:.1} s in all)",
        first_batch.unwrap_or(f64::NAN),
        all_done.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(failed.is_empty(), "failed jobs: {failed:#?}");
    assert_eq!(ended, ids, "every job ended");
    assert_eq!(completions.len(), JOBS, "one completion event id per job");
    for (i, replica) in replicas.iter_mut().enumerate() {
        assert!(
            replica.try_wait().unwrap().is_none(),
            "replica {i} exited during the failover"
        );
    }
    let count = |rows: Vec<tokio_postgres::Row>| rows[0].get::<_, i64>(0);
    let dead = count(b.sql("roadmap", "SELECT count(*) FROM dead_letters").await);
    assert_eq!(dead, 0, "nothing dead-lettered");
    let completed = count(
        b.sql("roadmap", "SELECT count(*) FROM jobs WHERE status = 'completed'")
            .await,
    );
    assert_eq!(completed, JOBS as i64, "every job completed on the promoted B");
    for replica in &mut replicas {
        replica.start_kill().unwrap();
        let _ = replica.wait().await;
    }
    env.cleanup().await;
}
