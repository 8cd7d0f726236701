//! The retention pass, beside the sweeper: finished jobs older than RETAIN_DAYS are deleted with
//! their batches, roadmaps and outcome events (`store::retention`), at start and then hourly.

use std::time::Duration;

use tracing::{debug, info, warn};

use super::Background;
use crate::{
    metrics::Table,
    store::{self, retention::BATCH},
};

/// How often each replica tries the pass. Jobs are forgotten by the hour of their end, which
/// is as fine as a retention counted in days needs; each pass then deletes about an hour's
/// jobs, a few statements. Every replica tries, and the advisory lock lets one of them run it:
/// a replica that dies leaves the pass to the others.
const EVERY: Duration = Duration::from_secs(3600);

/// Runs the pass now and then every [`EVERY`] until the background tasks stop; a pass under way
/// is dropped then (its session closes, releasing the lock; the next start deletes the rest).
pub(super) async fn run(bg: Background, retain: Duration) {
    loop {
        tokio::select! {
            result = store::retention::purge_exclusive(&bg.pool, retain, BATCH) => match result {
                Ok(Some(purged)) => {
                    for (table, rows) in [
                        (Table::Jobs, purged.jobs),
                        (Table::Batches, purged.batches),
                        (Table::Roadmaps, purged.roadmaps),
                        (Table::Outbox, purged.outbox),
                    ] {
                        bg.metrics.rows_deleted(table, rows);
                    }
                    info!(
                        retain_days = retain.as_secs() / 86_400,
                        jobs = purged.jobs,
                        batches = purged.batches,
                        roadmaps = purged.roadmaps,
                        outbox = purged.outbox,
                        "retention pass: finished jobs past RETAIN_DAYS deleted"
                    );
                }
                Ok(None) => debug!("retention pass under way on another replica"),
                Err(e) => warn!(error = %e, "retention pass failed; trying again within the hour"),
            },
            () = bg.stop.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            () = bg.stop.cancelled() => return,
        }
    }
}
