//! The sweeper, the safety net beside the relay: re-publishes running jobs that no delivery will
//! bring back (an early-acked job whose owner died, a lease long expired).

use std::time::Duration;

use tracing::{info, warn};

use super::Background;
use crate::{amqp::topology::JOB_ROUTING_KEY, store};

/// How many stranded jobs one sweep re-publishes at most.
const PER_SWEEP: i64 = 50;

/// Sweeps every `interval` until the background tasks stop.
pub(super) async fn run(bg: Background, lease: Duration, interval: Duration) {
    // A re-published copy that has not been claimed by then is taken as lost and sent again.
    let restamp_after = lease.max(interval * 30);
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = bg.stop.cancelled() => return,
        }
        let Some(publisher) = bg.publisher.borrow().clone() else {
            continue;
        };
        let stranded = match store::jobs::sweep(&bg.pool, lease, restamp_after, PER_SWEEP).await {
            Ok(stranded) => stranded,
            Err(e) => {
                warn!(error = %e, "sweep failed");
                continue;
            }
        };
        for job in stranded {
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
                Ok(()) => {
                    bg.metrics.jobs_redispatched.inc();
                    info!(job_id = %job.job_id, "stranded job re-published");
                }
                Err(e) => {
                    warn!(job_id = %job.job_id, error = %e, "could not re-publish a stranded job");
                    let _ = store::jobs::unstamp(&bg.pool, job.job_id).await;
                }
            }
        }
    }
}
