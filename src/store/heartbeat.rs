//! The replica's heartbeat, and who may judge another replica dead: ownership of a job is told
//! by its lease and its owner's heartbeat, not by the owner's database sessions alone, which a
//! proxy restart or `pg_terminate_backend` cuts while the owner lives on.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use deadpool_postgres::{GenericClient, Pool};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::StoreError;

/// How often a replica whose heartbeats stopped is forgotten (its row deleted a day after).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How long an owner may go without a heartbeat, and whether this replica may judge one dead.
///
/// A replica judges only once its own heartbeats have held for the grace: right after an
/// outage of its own (a failover, a proxy restart) every owner's last beat is old, and the
/// owners are reconnecting as it is. Until then a job changes hands only when its lease runs
/// out, and no takeover counts towards poison.
#[derive(Debug, Clone)]
pub struct Liveness {
    grace: Duration,
    judging: Arc<AtomicBool>,
}

impl Liveness {
    /// For a replica that starts its heartbeat: it judges no owner until that has held.
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            judging: Arc::default(),
        }
    }

    /// Judges at once: for a tool or test that runs no heartbeat.
    pub fn judging(grace: Duration) -> Self {
        Self {
            grace,
            judging: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The grace in seconds, the way the statements take it.
    pub fn grace_secs(&self) -> f64 {
        self.grace.as_secs_f64()
    }

    /// Whether this replica may take an owner without a session and without a recent heartbeat
    /// for dead.
    pub fn is_judging(&self) -> bool {
        self.judging.load(Ordering::Relaxed)
    }

    /// How often the heartbeat stamps: five times per grace, between half a second and 5 s.
    pub fn beat_every(&self) -> Duration {
        (self.grace / 5).clamp(Duration::from_millis(500), Duration::from_secs(5))
    }
}

/// Stamps `owner`'s heartbeat.
pub async fn beat(client: &impl GenericClient, owner: &str) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO replicas (owner) VALUES ($1)
             ON CONFLICT (owner) DO UPDATE SET beat_at = now()",
            &[&owner],
        )
        .await?;
    Ok(())
}

/// Deletes the rows of replicas silent for a day: restarted or scaled-down replicas.
async fn prune(client: &impl GenericClient) -> Result<u64, StoreError> {
    Ok(client
        .execute(
            "DELETE FROM replicas WHERE beat_at < now() - interval '1 day'",
            &[],
        )
        .await?)
}

/// Stamps `owner`'s heartbeat every [`Liveness::beat_every`] until `stop`, keeping
/// `liveness`'s judging flag: set once beats have held for the grace, cleared at the first
/// that fails or is late. `lost` is called at each beat that fails or times out: the database
/// path is down or has gone quiet, which no socket may have reported yet. At `stop` the row is
/// deleted, so that a job still in this replica's name is taken over at once.
pub async fn run(pool: Pool, owner: String, liveness: Liveness, stop: CancellationToken, lost: impl Fn()) {
    let every = liveness.beat_every();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Since when beats have held, and when the last one did.
    let (mut held_since, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    let mut pruned: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        // A beat that takes longer than the grace is as good as none (at least 5 s, so that a
        // short grace on a loaded machine does not pause intake for a slow beat).
        let stamped = tokio::time::timeout(liveness.grace.max(Duration::from_secs(5)), async {
            let client = pool.get().await?;
            beat(&client, &owner).await?;
            if pruned.is_none_or(|p| p.elapsed() >= PRUNE_EVERY) {
                prune(&client).await?;
                pruned = Some(Instant::now());
            }
            Ok::<_, StoreError>(())
        })
        .await;
        let now = Instant::now();
        match stamped {
            Ok(Ok(())) => {
                if last.is_none_or(|l| now - l > liveness.grace) {
                    held_since = Some(now);
                }
                last = Some(now);
            }
            Ok(Err(e)) => {
                lost();
                if held_since.take().is_some() {
                    warn!(error = %e, "heartbeat failed; judging no other replica until it holds again");
                }
                last = None;
            }
            Err(_) => {
                lost();
                if held_since.take().is_some() {
                    warn!("heartbeat timed out; judging no other replica until it holds again");
                }
                last = None;
            }
        }
        let judging = held_since.is_some_and(|since| now - since >= liveness.grace);
        if judging != liveness.judging.swap(judging, Ordering::Relaxed) && judging {
            info!("heartbeat holding; judging other replicas' liveness");
        }
    }
    liveness.judging.store(false, Ordering::Relaxed);
    let gone = async {
        let client = pool.get().await?;
        client
            .execute("DELETE FROM replicas WHERE owner = $1", &[&owner])
            .await?;
        Ok::<_, StoreError>(())
    };
    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(5), gone).await {
        warn!(error = %e, "could not remove this replica's heartbeat row");
    }
}
