//! The shared provider budget's row: reservations, corrections and what the provider said,
//! each one statement on `llm_budget` (see the migration for the GCRA it keeps).

use std::time::Duration;

use deadpool_postgres::Pool;

use super::StoreError;

/// How far ahead of now a budget's two clocks stand after a statement; a call waits for the
/// part of it beyond the burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ahead {
    pub tokens: Duration,
    pub requests: Duration,
}

impl Ahead {
    fn from_secs(tokens: f64, requests: f64) -> Self {
        let d = |s: f64| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX);
        Self {
            tokens: d(tokens),
            requests: d(requests),
        }
    }

    /// The wait before a call that may run at most `burst` ahead.
    pub fn wait(&self, burst: Duration) -> Duration {
        self.tokens.max(self.requests).saturating_sub(burst)
    }
}

/// Pushes `key`'s clocks forward by `tokens_secs` and `requests_secs` (the reservation's cost
/// at the configured rates), from now at the earliest.
pub async fn reserve(
    pool: &Pool,
    key: &str,
    tokens_secs: f64,
    requests_secs: f64,
) -> Result<Ahead, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "INSERT INTO llm_budget AS b (budget_key, tokens_tat, requests_tat)
             VALUES ($1, now() + make_interval(secs => $2), now() + make_interval(secs => $3))
             ON CONFLICT (budget_key) DO UPDATE SET
                 tokens_tat = greatest(b.tokens_tat, now()) + make_interval(secs => $2),
                 requests_tat = greatest(b.requests_tat, now()) + make_interval(secs => $3),
                 updated_at = now()
             RETURNING extract(epoch FROM b.tokens_tat - now())::float8 AS tokens_ahead,
                       extract(epoch FROM b.requests_tat - now())::float8 AS requests_ahead",
        )
        .await?;
    let row = client
        .query_one(&statement, &[&key, &tokens_secs, &requests_secs])
        .await?;
    Ok(Ahead::from_secs(
        row.get("tokens_ahead"),
        row.get("requests_ahead"),
    ))
}

/// Corrects `key` after a call: `(tokens_secs, requests_secs)` more (or, negative, less) than
/// was reserved, and clocks no earlier than `floor_*` seconds from now where the provider said
/// that less is left than the budget thought (`None`: it said nothing). A clock never goes back
/// before now.
pub async fn correct(
    pool: &Pool,
    key: &str,
    (tokens_secs, requests_secs): (f64, f64),
    floor_tokens_secs: Option<f64>,
    floor_requests_secs: Option<f64>,
) -> Result<(), StoreError> {
    let client = pool.get().await?;
    // GREATEST skips NULLs: a floor that was not given changes nothing.
    let statement = client
        .prepare_cached(
            "UPDATE llm_budget SET
                 tokens_tat = greatest(tokens_tat + make_interval(secs => $2), now(),
                                       now() + make_interval(secs => $3)),
                 requests_tat = greatest(requests_tat + make_interval(secs => $5), now(),
                                         now() + make_interval(secs => $4)),
                 updated_at = now()
             WHERE budget_key = $1",
        )
        .await?;
    client
        .execute(
            &statement,
            &[
                &key,
                &tokens_secs,
                &floor_tokens_secs,
                &floor_requests_secs,
                &requests_secs,
            ],
        )
        .await?;
    Ok(())
}

/// How far ahead `key`'s clocks stand now, without reserving (zero for a budget never used).
pub async fn peek(pool: &Pool, key: &str) -> Result<Ahead, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT extract(epoch FROM tokens_tat - now())::float8 AS tokens_ahead,
                    extract(epoch FROM requests_tat - now())::float8 AS requests_ahead
             FROM llm_budget WHERE budget_key = $1",
        )
        .await?;
    Ok(client
        .query_opt(&statement, &[&key])
        .await?
        .map_or(Ahead::from_secs(0.0, 0.0), |row| {
            Ahead::from_secs(row.get("tokens_ahead"), row.get("requests_ahead"))
        }))
}
