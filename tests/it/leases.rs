//! Promise: a replica that lost its lease (paused, partitioned) cannot write over the new owner;
//! its checkpoints and completion are fenced out.

use std::time::Duration;

use chrono::Utc;
use roadmap_worker::{
    domain::{BatchOutcome, BatchResult, JobRequest, Plan, event::Usage},
    pipeline::{
        self,
        job::completion_event,
        leases::{Leases, Told},
    },
    store::{
        self, StoreError,
        claim::{Claim, Claimant},
        heartbeat::Liveness,
    },
    template,
};

use testkit::{TestEnv, job};

fn batch(job: &JobRequest, plan: &Plan, index: usize) -> BatchResult {
    let range = plan.batches[index];
    BatchResult {
        weeks: range
            .weeks()
            .map(|n| template::week(&job.profile(), &plan.phases, n, plan.duration_weeks))
            .collect(),
        usage: Usage::default(),
        outcome: BatchOutcome::Ok,
        quality: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_owner_is_fenced_out_after_takeover() {
    let env = TestEnv::new().await;
    let (a, b) = (env.pool("replica-a").await, env.pool("replica-b").await);
    let (_, body) = job(6, "Security Engineer");
    let job = JobRequest::decode(body.to_string().as_bytes(), None).unwrap();
    let plan = pipeline::plan(&job.profile(), 6, 3);
    let short = Duration::from_millis(500);

    let Claim::Owned(first) = claimant(&a, "replica-a", short)
        .claim(&job, &plan, false)
        .await
        .unwrap()
    else {
        panic!("replica a should own a new job")
    };
    // While a's lease is live and a is connected, b may not take the job.
    let busy = claimant(&b, "replica-b", short)
        .claim(&job, &plan, false)
        .await
        .unwrap();
    assert!(matches!(busy, Claim::Busy), "{busy:?}");

    // a stalls past its lease; b takes over with a newer fencing token.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let Claim::Owned(second) = claimant(&b, "replica-b", Duration::from_secs(30))
        .claim(&job, &plan, false)
        .await
        .unwrap()
    else {
        panic!("replica b should take over an expired lease")
    };
    assert!(second.lease.token() > first.lease.token());
    // a is alive (its sessions are present): a lapsed lease is not a death, so not poison.
    assert_eq!(
        second.abandoned, 0,
        "a lapsed lease of a live replica is not counted"
    );

    // a wakes up: every write it tries is refused.
    let stale = first
        .lease
        .checkpoint(at(0, 2), &batch(&job, &plan, 0), None)
        .await;
    assert!(matches!(stale, Err(StoreError::Fenced)), "{stale:?}");
    assert!(matches!(first.lease.renew(short).await, Err(StoreError::Fenced)));
    // b's writes go through, and only b's.
    for index in 0..2 {
        let fresh = second
            .lease
            .checkpoint(at(index as u32, 2), &batch(&job, &plan, index), None)
            .await
            .unwrap();
        assert!(fresh.fresh && fresh.progress.is_some());
    }
    let db = env.db().await;
    let tokens: Vec<i64> = db
        .query("SELECT fencing_token FROM batches ORDER BY batch_index", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tokens, vec![second.lease.token(), second.lease.token()]);

    let weeks = (0..2).flat_map(|i| batch(&job, &plan, i).weeks).collect();
    let completed = completion_event(&job, &plan, weeks, Usage::default(), 0, Utc::now());
    assert!(matches!(
        first.lease.complete(&completed, None).await,
        Err(StoreError::Fenced)
    ));
    second.lease.complete(&completed, None).await.unwrap();
    let roadmaps: i64 = db
        .query_one("SELECT count(*) FROM roadmaps", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(roadmaps, 1);

    drop((a, b));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_renewer_keeps_held_leases_and_tells_a_job_it_was_taken_over() {
    let env = TestEnv::new().await;
    let (a, b) = (env.pool("replica-a").await, env.pool("replica-b").await);
    let lease = Duration::from_millis(900);
    let leases = Leases::start(a.clone(), lease);
    let mut held = Vec::new();
    for _ in 0..3 {
        let (_, body) = job(6, "Security Engineer");
        let job = JobRequest::decode(body.to_string().as_bytes(), None).unwrap();
        let plan = pipeline::plan(&job.profile(), 6, 3);
        let Claim::Owned(owned) = claimant(&a, "replica-a", lease)
            .claim(&job, &plan, false)
            .await
            .unwrap()
        else {
            panic!("replica a should own a new job")
        };
        let told = Told::default();
        let guard = leases.hold(owned.lease.clone(), told.clone());
        held.push((job, plan, told.lost, guard, owned.lease));
    }
    // Three leases of 0.9 s, renewed by one statement every 0.3 s: still live after 2 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (job, plan, lost, _, _) in &held {
        assert!(!lost.is_cancelled());
        let busy = claimant(&b, "replica-b", lease)
            .claim(job, plan, false)
            .await
            .unwrap();
        assert!(matches!(busy, Claim::Busy), "{busy:?}");
    }
    // The first job's renewal stops with its guard; once its lease has passed, b takes it
    // over, and a renewer that still held it tells its task.
    let (job, plan, lost, guard, _) = held.remove(0);
    drop(guard);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let Claim::Owned(_) = claimant(&b, "replica-b", Duration::from_secs(30))
        .claim(&job, &plan, false)
        .await
        .unwrap()
    else {
        panic!("replica b should take over a lease no longer renewed")
    };
    assert!(!lost.is_cancelled(), "a released job is not told anything");
    let (job, plan, lost, _guard, lease) = held.remove(0);
    lease.release().await.unwrap();
    let Claim::Owned(_) = claimant(&b, "replica-b", Duration::from_secs(30))
        .claim(&job, &plan, false)
        .await
        .unwrap()
    else {
        panic!("replica b should take over a released job")
    };
    tokio::time::timeout(Duration::from_secs(3), lost.cancelled())
        .await
        .expect("the renewer tells the task its job was taken over");
    env.cleanup().await;
}

/// A replica claiming on `pool` as `owner`, with leases of `lease`.
fn claimant(pool: &deadpool_postgres::Pool, owner: &str, lease: Duration) -> Claimant {
    Claimant {
        pool: pool.clone(),
        owner: owner.into(),
        lease,
        user_limit: None,
        // No heartbeat here: an owner is dead once its sessions are gone.
        liveness: Liveness::judging(Duration::from_secs(2)),
    }
}

/// Batch `index` of `total`, with no tokens counted.
fn at(index: u32, total: u32) -> store::batches::Position {
    store::batches::Position {
        index,
        total,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_late_after_a_release_gives_no_lease_and_the_job_is_claimed() {
    let env = TestEnv::new().await;
    let (a, b) = (env.pool("replica-a").await, env.pool("replica-b").await);
    let (_, body) = job(6, "Release Engineer");
    let job = JobRequest::decode(body.to_string().as_bytes(), None).unwrap();
    let plan = pipeline::plan(&job.profile(), 6, 3);
    let lease = Duration::from_secs(30);
    let Claim::Owned(first) = claimant(&a, "replica-a", lease)
        .claim(&job, &plan, false)
        .await
        .unwrap()
    else {
        panic!("replica a should own a new job")
    };
    // The job is handed back and its lease released; a renewal held up in a partition then
    // arrives under the same token.
    first.lease.release().await.unwrap();
    let still = store::jobs::renew_many(&a, &[job.job_id], &[first.lease.token()], lease)
        .await
        .unwrap();
    assert!(!still.held.contains(&job.job_id), "a released job is not held");
    let db = env.db().await;
    let row = db
        .query_one(
            "SELECT owner, lease_until FROM jobs WHERE job_id = $1",
            &[&job.job_id],
        )
        .await
        .unwrap();
    let (owner, until): (Option<String>, Option<chrono::DateTime<Utc>>) = (row.get(0), row.get(1));
    assert_eq!((owner, until), (None, None), "no lease without an owner");
    // Even a row left with a live lease and no owner is free to claim.
    db.execute(
        "UPDATE jobs SET lease_until = now() + interval '1 minute' WHERE job_id = $1",
        &[&job.job_id],
    )
    .await
    .unwrap();
    let claimed = claimant(&b, "replica-b", lease)
        .claim(&job, &plan, false)
        .await
        .unwrap();
    assert!(matches!(claimed, Claim::Owned(_)), "{claimed:?}");
    env.cleanup().await;
}
