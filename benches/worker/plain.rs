//! The plain loop: the worker's writes per job through its own store functions, nothing else,
//! timed call by call (the baseline for parts 1 and 2).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use deadpool_postgres::Pool;
use roadmap_worker::{
    config::DbSettings,
    store::{
        self,
        claim::{Claim, Claimant},
    },
};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::{fixture::Fixture, util::ms};
use testkit::TestEnv;

/// Time spent in each store call, summed.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriteTimes {
    jobs: u32,
    claim: Duration,
    pub checkpoints: u32,
    checkpoint: Duration,
    complete: Duration,
}

impl WriteTimes {
    fn add(&mut self, other: Self) {
        self.jobs += other.jobs;
        self.claim += other.claim;
        self.checkpoints += other.checkpoints;
        self.checkpoint += other.checkpoint;
        self.complete += other.complete;
    }

    pub fn claim_ms(&self) -> f64 {
        ms(self.claim) / f64::from(self.jobs.max(1))
    }

    pub fn checkpoint_ms(&self) -> f64 {
        ms(self.checkpoint) / f64::from(self.checkpoints.max(1))
    }

    pub fn complete_ms(&self) -> f64 {
        ms(self.complete) / f64::from(self.jobs.max(1))
    }
}

/// One job's writes through the worker's own store functions, on a fresh job_id.
async fn plain_job(pool: &Pool, fx: &Fixture) -> WriteTimes {
    let mut job = fx.job.clone();
    job.job_id = Uuid::new_v4();
    let lease = Duration::from_secs(60);
    let mut times = WriteTimes {
        jobs: 1,
        ..Default::default()
    };
    let start = Instant::now();
    let claimant = Claimant {
        pool: pool.clone(),
        owner: "bench-plain-loop".into(),
        lease,
        user_limit: None,
        liveness: store::heartbeat::Liveness::judging(Duration::from_secs(15)),
    };
    let claim = claimant.claim(&job, &fx.plan, true).await.expect("claim");
    let Claim::Owned(owned) = claim else {
        panic!("a fresh job_id is always owned, got {claim:?}");
    };
    times.claim = start.elapsed();
    let total = fx.stages.len() as u32;
    for stage in &fx.stages {
        let start = Instant::now();
        owned
            .lease
            .checkpoint(
                store::batches::Position {
                    index: stage.range.index,
                    total,
                    ..Default::default()
                },
                &stage.result,
                None,
            )
            .await
            .expect("checkpoint");
        times.checkpoint += start.elapsed();
        times.checkpoints += 1;
    }
    let start = Instant::now();
    let event = fx.completed(&job, owned.started_at);
    owned.lease.complete(&event, None).await.expect("complete");
    times.complete = start.elapsed();
    times
}

/// `jobs` plain jobs spread over `tasks` tasks; the wall time and the summed store times.
pub async fn plain_loop(pool: &Pool, fx: &Arc<Fixture>, jobs: usize, tasks: usize) -> (Duration, WriteTimes) {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..tasks {
        let (pool, fx, next) = (pool.clone(), fx.clone(), next.clone());
        set.spawn(async move {
            let mut times = WriteTimes::default();
            while next.fetch_add(1, Ordering::Relaxed) < jobs {
                times.add(plain_job(&pool, &fx).await);
            }
            times
        });
    }
    let mut total = WriteTimes::default();
    while let Some(times) = set.join_next().await {
        total.add(times.expect("plain-loop task"));
    }
    (start.elapsed(), total)
}

/// A pool on `env`'s database (the worker has created and migrated it).
pub async fn plain_pool(env: &TestEnv, size: usize) -> Pool {
    let settings = DbSettings {
        url: env.database_url.parse().expect("a valid URL"),
        pool_size: size as u32,
        ca_file: None,
    };
    let pool = store::connect(&settings, "bench-plain-loop")
        .await
        .expect("connecting the plain loop");
    // Open every connection before the clock starts, as the worker's pool is warm by then.
    let mut warm = Vec::with_capacity(size);
    for _ in 0..size {
        warm.push(pool.get().await.expect("a pooled connection"));
    }
    drop(warm);
    pool
}
