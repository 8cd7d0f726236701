//! The sweeper, the safety net beside the relay: dispatches again the running jobs that no
//! delivery will bring back. Every second it wakes parked jobs whose wait is over (a user's
//! turn, a provider fault: those waits are kept in Postgres); every SWEEP_INTERVAL_SECS it also
//! looks for stranded ones (an early-acked job whose owner died, a lease long expired, a copy
//! lost with a purged queue).

use std::time::Duration;

use tracing::{info, warn};

use super::Background;
use crate::{
    amqp::topology::JOB_ROUTING_KEY,
    store::{self, jobs::Sweep},
};

/// How many jobs one sweep re-publishes at most.
const PER_SWEEP: i64 = 50;

/// Pages one tick sweeps at most.
const PAGES_PER_TICK: usize = 10;

/// How often parked jobs that came due are woken: the shortest wait is two seconds.
const WAKE_EVERY: Duration = Duration::from_secs(1);

/// Sweeps until the background tasks stop.
pub(super) async fn run(bg: Background, lease: Duration, interval: Duration) {
    // A re-published copy that has not been claimed by then is taken as lost and sent again.
    let restamp_after = lease.max(interval * 30);
    let mut last_full = tokio::time::Instant::now();
    // The sweep runs every second: an outage is logged once, not once a second.
    let mut failing = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(WAKE_EVERY.min(interval)) => {}
            () = bg.stop.cancelled() => return,
        }
        let scope = if last_full.elapsed() >= interval {
            last_full = tokio::time::Instant::now();
            Sweep::Stranded
        } else {
            Sweep::Due
        };
        // A full page may leave more behind: sweep again at once, a few pages per tick, so
        // that a large backlog coming due is spread over seconds rather than sent in one burst.
        for _ in 0..PAGES_PER_TICK {
            match sweep(&bg, scope, lease, restamp_after).await {
                Ok(n) if n == PER_SWEEP as usize => failing = false,
                Ok(_) => {
                    failing = false;
                    break;
                }
                Err(e) => {
                    if !failing {
                        warn!(error = %e, ?scope, "sweep failed; trying again every second");
                    }
                    failing = true;
                    break;
                }
            }
        }
    }
}

/// One sweep; returns how many jobs it stamped.
async fn sweep(
    bg: &Background,
    scope: Sweep,
    lease: Duration,
    restamp_after: Duration,
) -> Result<usize, store::StoreError> {
    let Some(publisher) = bg.publisher.borrow().clone() else {
        return Ok(0);
    };
    let found = store::bounded(store::jobs::sweep(
        &bg.pool,
        scope,
        lease,
        restamp_after,
        PER_SWEEP,
        &bg.liveness,
    ))
    .await?;
    let n = found.len();
    for job in found {
        let body = job.request.to_string();
        let published = publisher
            .publish_json(
                &bg.topology.jobs_exchange,
                JOB_ROUTING_KEY,
                body.as_bytes(),
                None,
                None,
                true,
            )
            .await;
        match published {
            Ok(()) if scope == Sweep::Due => {}
            Ok(()) => {
                bg.metrics.jobs_redispatched.inc();
                info!(job_id = %job.job_id, "stranded job re-published");
            }
            Err(e) => {
                warn!(job_id = %job.job_id, error = %e, "could not re-publish a job");
                let _ = store::jobs::unstamp(&bg.pool, job.job_id).await;
                return Ok(0);
            }
        }
    }
    Ok(n)
}
