//! The shared provider budget: every replica's calls to one provider and model draw on the same
//! requests-per-minute and tokens-per-minute allowance, kept in Postgres (`store::budget`).
//!
//! A call reserves before it is sent: one request and its prompt plus output limit in tokens
//! (what OpenAI counts against a limit). While the allowance is spent the call waits its turn;
//! it never fails, retries or falls back for the budget. Afterwards the reservation is
//! corrected by the usage reported, and where the provider's headers say that less is left,
//! the budget follows them. New jobs wait to start while the budget is backlogged, so that
//! started jobs are not starved by newcomers.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use deadpool_postgres::Pool;
use tracing::{debug, info};

use crate::{
    config::BudgetSettings,
    llm::{LlmError, RateLimits},
    metrics::Metrics,
    store::{self, with_retries},
};

/// How far ahead of the rate a budget may run: one minute's allowance may be spent at once,
/// as a provider's own per-minute window allows.
const BURST: Duration = Duration::from_secs(60);

/// A new job starts only while a call would wait less than this for the budget.
const INTAKE_BACKLOG: Duration = Duration::from_secs(2);

/// The budget of one provider and model; off when neither limit is set. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    pool: Pool,
    key: String,
    /// Seconds of the minute one request costs (60 / RPM), or 0 without a request limit.
    request_secs: f64,
    /// Seconds one token costs (60 / TPM), or 0 without a token limit.
    token_secs: f64,
    metrics: Metrics,
    /// The last wait a reservation on this replica was told, in milliseconds.
    backlog_ms: AtomicU64,
}

/// A reservation made for one call, to settle when it ends.
#[derive(Debug, Clone, Copy)]
pub struct Reservation {
    tokens: u64,
}

impl Budget {
    /// The budget `settings` ask for, on `provider`'s `model`; `None` limits leave it off.
    pub fn new(settings: &BudgetSettings, pool: Pool, provider: &str, model: &str, metrics: Metrics) -> Self {
        if settings.rpm_limit.is_none() && settings.tpm_limit.is_none() {
            return Self::default();
        }
        let per = |limit: Option<f64>| limit.map_or(0.0, |l| BURST.as_secs_f64() / l);
        Self {
            inner: Some(Arc::new(Inner {
                pool,
                key: format!("{provider}/{model}"),
                request_secs: per(settings.rpm_limit.map(f64::from)),
                token_secs: per(settings.tpm_limit.map(|t| t as f64)),
                metrics,
                backlog_ms: AtomicU64::new(0),
            })),
        }
    }

    /// Whether a limit is set (otherwise every call goes at once and nothing is written).
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// Reserves one request and `tokens` for a call, and waits until the budget has room. A
    /// `bulk` call waits *before* it reserves, until the budget is not backlogged: reservations
    /// queue in the order they are made, so only interactive calls ever wait in that queue, and
    /// a bulk call never stands in front of one.
    pub async fn reserve(&self, tokens: u64, bulk: bool) -> Reservation {
        let reservation = Reservation { tokens };
        let Some(inner) = &self.inner else {
            return reservation;
        };
        if bulk {
            Self::until_free(inner, Duration::ZERO).await;
        }
        let token_cost = tokens as f64 * inner.token_secs;
        // The database may be out: the call waits with it rather than spend past the budget.
        let ahead = loop {
            match with_retries(|| {
                store::budget::reserve(&inner.pool, &inner.key, token_cost, inner.request_secs)
            })
            .await
            {
                Ok(ahead) => break ahead,
                Err(e) => info!(error = %e, "budget unreachable; the call waits"),
            }
        };
        inner.metrics.budget_reserved(tokens);
        let wait = ahead.wait(BURST);
        inner
            .backlog_ms
            .store(wait.as_millis().try_into().unwrap_or(u64::MAX), Ordering::Relaxed);
        inner.metrics.budget_wait.observe(wait.as_secs_f64());
        if !wait.is_zero() {
            debug!(
                wait_ms = wait.as_millis() as u64,
                tokens, "waiting for the provider budget"
            );
            tokio::time::sleep(wait).await;
        }
        reservation
    }

    /// Settles `reservation` after its call: the tokens it used (none for a failed call, which
    /// providers do not count) and what the provider said of its limits.
    pub async fn settle(&self, reservation: Reservation, result: Result<(u64, RateLimits), &LlmError>) {
        let Some(inner) = &self.inner else {
            return;
        };
        let (used, limits, retry_after) = match result {
            Ok((used, limits)) => (used, limits, None),
            Err(LlmError::Transient {
                status: "http_429",
                retry_after,
                ..
            }) => (0, RateLimits::default(), *retry_after),
            Err(_) => (0, RateLimits::default(), None),
        };
        inner.metrics.budget_used(used);
        let delta = (used as f64 - reservation.tokens as f64) * inner.token_secs;
        let burst = BURST.as_secs_f64();
        // Where the provider says only `left` remain, no more than that is free: the clock
        // stands at least `burst - left × cost` ahead of now.
        let floor = |left: Option<u64>, cost: f64| {
            (cost > 0.0)
                .then_some(left.map(|l| burst - l as f64 * cost))
                .flatten()
        };
        let (mut floor_tokens, mut floor_requests) = (
            floor(limits.remaining_tokens, inner.token_secs),
            floor(limits.remaining_requests, inner.request_secs),
        );
        if let Some(after) = retry_after {
            // Nothing more until the provider's delay is over: this call's retry is the next.
            let until = burst + after.as_secs_f64();
            let token_floor = until - reservation.tokens as f64 * inner.token_secs;
            let request_floor = until - inner.request_secs;
            floor_tokens = Some(floor_tokens.map_or(token_floor, |f| f.max(token_floor)));
            floor_requests = Some(floor_requests.map_or(request_floor, |f| f.max(request_floor)));
        }
        let corrected = with_retries(|| {
            store::budget::correct(&inner.pool, &inner.key, delta, floor_tokens, floor_requests)
        })
        .await;
        if let Err(e) = corrected {
            // The reservation stands as made: the budget errs on the side of waiting.
            info!(error = %e, "budget correction not written");
        }
    }

    /// Waits while the budget is backlogged, before a new job's first call: started jobs are
    /// served first, and intake resumes as soon as a call would wait less than
    /// [`INTAKE_BACKLOG`].
    pub async fn intake(&self) {
        let Some(inner) = &self.inner else {
            return;
        };
        let started = Instant::now();
        Self::until_free(inner, INTAKE_BACKLOG).await;
        let waited = started.elapsed();
        if waited > Duration::from_millis(100) {
            debug!(
                waited_ms = waited.as_millis() as u64,
                "new job waited for the provider budget"
            );
        }
    }

    /// Waits until a call would wait at most `slack` for the budget.
    async fn until_free(inner: &Inner, slack: Duration) {
        loop {
            let known = Duration::from_millis(inner.backlog_ms.load(Ordering::Relaxed));
            let wait = if known <= slack {
                known
            } else {
                // What this replica last saw may be stale: ask the fleet's row.
                match store::bounded(store::budget::peek(&inner.pool, &inner.key)).await {
                    Ok(ahead) => ahead.wait(BURST),
                    Err(_) => known,
                }
            };
            inner
                .backlog_ms
                .store(wait.as_millis().try_into().unwrap_or(u64::MAX), Ordering::Relaxed);
            if wait <= slack {
                return;
            }
            tokio::time::sleep((wait - slack).clamp(Duration::from_millis(100), Duration::from_secs(1)))
                .await;
        }
    }
}
