//! Part 8: what finished jobs keep in Postgres (run alone: `-- storage`).
//!
//! **Table sizes per 1,000 jobs.** 1,000 twelve-week jobs through one in-process worker on the
//! embedded mock (`WORKER_CONCURRENCY=32`, pool 16), events routed to a bound queue, until every
//! job is completed and every event confirmed. Printed: `pg_total_relation_size` (heap, TOAST and
//! indexes) of `jobs`, `batches`, `roadmaps` and `outbox`, first as the run left the files, then
//! after a plain `VACUUM` of each table, as autovacuum would leave them: the space of deleted
//! rows free for new ones, and empty pages at a table's end given back. Sizes only: nothing here
//! is timed.

use std::time::Duration;

use crate::{
    fixture::{ROLE, WEEKS},
    util::wait_completed,
};
use testkit::{TestEnv, eventually};

const JOBS: usize = 1_000;
const TABLES: [&str; 4] = ["jobs", "batches", "roadmaps", "outbox"];

pub async fn storage() {
    let env = TestEnv::new().await;
    // Events are routed to a backend, as in production (an unbound event is kept and retried).
    let _sink = env.event_sink().await;
    for _ in 0..JOBS {
        env.publish(&testkit::job(WEEKS, ROLE).1).await;
    }
    let worker = env
        .start_worker(&[
            "--llm-provider",
            "mock",
            "--worker-concurrency",
            "32",
            "--database-pool-size",
            "16",
        ])
        .await;
    wait_completed(&worker.running.metrics, JOBS, Duration::from_secs(600)).await;
    let db = env.db().await;
    eventually(Duration::from_secs(60), "every event confirmed", || async {
        let row = db
            .query_one("SELECT count(*) FROM outbox WHERE sent_at IS NULL", &[])
            .await
            .ok()?;
        (row.get::<_, i64>(0) == 0).then_some(())
    })
    .await;
    worker.stop().await;

    let left = sizes(&db).await;
    for table in TABLES {
        // One statement per call: VACUUM refuses to run in the implicit transaction of several.
        db.batch_execute(&format!("VACUUM {table}"))
            .await
            .expect("VACUUM");
    }
    let vacuumed = sizes(&db).await;
    println!("[8] storage: {JOBS} {WEEKS}-week jobs completed on the embedded mock, every event confirmed");
    println!(
        "    {:<10} {:>8} {:>16} {:>16} {:>22}",
        "table", "rows", "as left (KiB)", "vacuumed (KiB)", "of it, indexes (KiB)"
    );
    let kib = |bytes: i64| bytes as f64 / 1024.0;
    let (mut total_left, mut total_vacuumed) = (0, 0);
    for (left, vacuumed) in left.iter().zip(&vacuumed) {
        println!(
            "    {:<10} {:>8} {:>16.0} {:>16.0} {:>22.0}",
            left.table,
            left.rows,
            kib(left.total),
            kib(vacuumed.total),
            kib(vacuumed.indexes)
        );
        total_left += left.total;
        total_vacuumed += vacuumed.total;
    }
    println!(
        "    {:<10} {:>8} {:>16.0} {:>16.0}   ({:.1} / {:.1} KiB per job)",
        "total",
        "",
        kib(total_left),
        kib(total_vacuumed),
        kib(total_left) / JOBS as f64,
        kib(total_vacuumed) / JOBS as f64
    );
    println!();
    env.cleanup().await;
}

/// One table's rows, `pg_total_relation_size` (heap, TOAST, indexes) and `pg_indexes_size`.
struct Size {
    table: &'static str,
    rows: i64,
    total: i64,
    indexes: i64,
}

async fn sizes(db: &tokio_postgres::Client) -> Vec<Size> {
    let mut out = Vec::new();
    for table in TABLES {
        let row = db
            .query_one(
                &format!(
                    "SELECT count(*), pg_total_relation_size('{table}'), pg_indexes_size('{table}') FROM {table}"
                ),
                &[],
            )
            .await
            .expect("a table's size");
        out.push(Size {
            table,
            rows: row.get(0),
            total: row.get(1),
            indexes: row.get(2),
        });
    }
    out
}
