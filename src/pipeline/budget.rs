//! The shared provider budget: every replica's calls to one provider and model draw on the same
//! requests-per-minute and tokens-per-minute allowance, kept in Postgres (`store::budget`).
//!
//! A call reserves before it is sent, what the provider will charge for it
//! ([`Accounting`]): OpenAI counts the prompt and the whole `max_tokens` when the request
//! arrives and gives nothing back for a shorter answer, so neither does the budget; Gemini
//! counts the prompt only, and the reservation is corrected to the input tokens it reports. A
//! call refused with 429 was not charged and is given back, and so is a reservation whose
//! call never went out (its job stopped while it waited). While the allowance is spent the
//! call waits its turn; it never fails, retries or falls back for the budget. Where the
//! provider's headers say that less is left, the budget follows them; a retry hint moves the
//! clocks by at most `LLM_MAX_RETRY_DELAY_MS`, as the ladder's own sleep. New jobs wait to start
//! while the budget is backlogged, so that started jobs are not starved by newcomers.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use deadpool_postgres::Pool;
use tracing::{debug, info, warn};

use crate::{
    config::{Accounting, BudgetSettings},
    llm::{LlmError, RateLimits},
    metrics::Metrics,
    store::{self, with_retries},
};

/// How far ahead of the rate a budget may run: nearly one minute's allowance may be spent at
/// once, as a provider's own per-minute window allows. Not all of it: a provider charging at
/// arrival gives nothing back, so a budget run at the edge of its window meets the provider's
/// by a hair, and a call arriving a few milliseconds early is refused.
const BURST: Duration = Duration::from_secs(57);

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
    accounting: Accounting,
    /// The longest a retry hint moves the clocks (`LLM_MAX_RETRY_DELAY_MS`).
    hint_cap: Duration,
}

/// A reservation made for one call, to settle when it ends.
#[derive(Debug, Clone, Copy)]
pub struct Reservation {
    tokens: u64,
}

/// What a call is charged for, before it is sent.
#[derive(Debug, Clone, Copy)]
pub struct Charge {
    /// The prompt's tokens, estimated from its characters (as OpenAI estimates them).
    pub prompt: u64,
    /// The call's output limit (`max_tokens`).
    pub max_output: u64,
}

/// What a call that went out used, as the provider reported it.
#[derive(Debug, Clone, Copy)]
pub struct Used {
    pub input: u64,
    pub output: u64,
}

impl Budget {
    /// The budget `settings` ask for, on `provider`'s `model`; `None` limits leave it off.
    /// `hint_cap` bounds how far a retry hint moves the clocks.
    pub fn new(
        settings: &BudgetSettings,
        pool: Pool,
        (provider, model): (&str, &str),
        metrics: Metrics,
        hint_cap: Duration,
    ) -> Self {
        if settings.rpm_limit.is_none() && settings.tpm_limit.is_none() {
            return Self::default();
        }
        let per = |limit: Option<f64>| limit.map_or(0.0, |l| 60.0 / l);
        Self {
            inner: Some(Arc::new(Inner {
                pool,
                key: format!("{provider}/{model}"),
                request_secs: per(settings.rpm_limit.map(f64::from)),
                token_secs: per(settings.tpm_limit.map(|t| t as f64)),
                metrics,
                backlog_ms: AtomicU64::new(0),
                accounting: settings
                    .accounting
                    .unwrap_or_else(|| Accounting::of_provider(provider)),
                hint_cap,
            })),
        }
    }

    /// Whether a limit is set (otherwise every call goes at once and nothing is written).
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// Reserves one request and `charge`'s tokens as the provider counts them, and waits until
    /// the budget has room. A `bulk` call waits *before* it reserves, until the budget is not
    /// backlogged: reservations queue in the order they are made, so only interactive calls
    /// ever wait in that queue, and a bulk call never stands in front of one. Dropped while it
    /// waits (its job stopped), the reservation is given back.
    pub async fn reserve(&self, charge: Charge, bulk: bool) -> Reservation {
        let Some(inner) = &self.inner else {
            return Reservation { tokens: 0 };
        };
        let tokens = match inner.accounting {
            Accounting::Arrival => charge.prompt + charge.max_output,
            Accounting::Input => charge.prompt,
        };
        if bulk {
            Self::until_free(inner, Duration::ZERO).await;
        }
        let token_cost = tokens as f64 * inner.token_secs;
        // The store's retries are bounded: past them the call goes out unreserved (and is
        // counted as such) rather than hold its job's slot through an outage; the job's next
        // checkpoint meets the same outage and hands the job back.
        let reserved =
            with_retries(|| store::budget::reserve(&inner.pool, &inner.key, token_cost, inner.request_secs))
                .await;
        let ahead = match reserved {
            Ok(ahead) => ahead,
            Err(e) => {
                warn!(error = %e, "budget unreachable; the call goes out unreserved");
                return Reservation { tokens: 0 };
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
            let give_back = GiveBack {
                inner: Some(inner.clone()),
                tokens,
            };
            tokio::time::sleep(wait).await;
            give_back.keep();
        }
        Reservation { tokens }
    }

    /// Settles `reservation` after its call: what the provider reported it used, or how it
    /// failed, and what it said of its limits.
    pub async fn settle(&self, reservation: Reservation, result: Result<(Used, RateLimits), &LlmError>) {
        let Some(inner) = &self.inner else {
            return;
        };
        let reserved = reservation.tokens as f64;
        let (delta_tokens, limits, retry_after) = match result {
            Ok((used, limits)) => {
                inner.metrics.budget_used(match inner.accounting {
                    Accounting::Arrival => reservation.tokens,
                    Accounting::Input => used.input,
                });
                let delta = match inner.accounting {
                    // Charged at arrival, nothing comes back.
                    Accounting::Arrival => 0.0,
                    Accounting::Input => used.input as f64 - reserved,
                };
                (delta, limits, None)
            }
            // Refused at the door: not charged.
            Err(LlmError::Transient {
                status: "http_429",
                retry_after,
                ..
            }) => {
                inner.metrics.budget_given_back(reservation.tokens);
                (-reserved, RateLimits::default(), *retry_after)
            }
            // It may have arrived, and been charged: the reservation stands.
            Err(_) => (0.0, RateLimits::default(), None),
        };
        let delta = delta_tokens * inner.token_secs;
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
        if let Some(asked) = retry_after {
            // Nothing more until the provider's delay is over, as far as the ladder waits for
            // it: a daily limit's hour-long hint must not hold every call of the fleet silently.
            let after = asked.min(inner.hint_cap);
            if asked > inner.hint_cap {
                inner.metrics.retry_hints_capped.inc();
                warn!(
                    asked_secs = asked.as_secs(),
                    waits_secs = after.as_secs_f64(),
                    "the provider asked for a long wait (a daily limit?); the budget waits LLM_MAX_RETRY_DELAY_MS"
                );
            }
            // The call's retry is the next: its own reservation lands at the end of the wait.
            let until = burst + after.as_secs_f64();
            let token_floor = until - reserved * inner.token_secs;
            let request_floor = until - inner.request_secs;
            floor_tokens = Some(floor_tokens.map_or(token_floor, |f| f.max(token_floor)));
            floor_requests = Some(floor_requests.map_or(request_floor, |f| f.max(request_floor)));
        }
        let corrected = with_retries(|| {
            store::budget::correct(
                &inner.pool,
                &inner.key,
                (delta, 0.0),
                floor_tokens,
                floor_requests,
            )
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

/// A reservation waiting for its turn; dropped before [`Self::keep`] (the call's job stopped
/// while it waited), its tokens and its request are given back, so that no phantom backlog
/// holds the fleet's other calls.
struct GiveBack {
    inner: Option<Arc<Inner>>,
    tokens: u64,
}

impl GiveBack {
    fn keep(mut self) {
        self.inner = None;
    }
}

impl Drop for GiveBack {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let tokens = self.tokens;
        runtime.spawn(async move {
            let back = (-(tokens as f64) * inner.token_secs, -inner.request_secs);
            match store::bounded(store::budget::correct(&inner.pool, &inner.key, back, None, None)).await {
                Ok(()) => inner.metrics.budget_given_back(tokens),
                Err(e) => info!(error = %e, tokens, "a dropped reservation was not given back"),
            }
        });
    }
}
