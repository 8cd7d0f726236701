//! The mock's rate limits (`mock-llm --rpm/--tpm`), as a provider keeps them: a bucket per
//! limit holding one minute's allowance, refilled continuously, and refused with 429,
//! `Retry-After` and `x-ratelimit-*` headers when the bucket is short. Every answer carries the
//! `x-ratelimit-*` headers. Each dialect charges as its provider documents: the OpenAI dialect
//! its prompt (estimated from its characters) plus its whole `max_tokens` at arrival, nothing
//! given back for a shorter answer; the Gemini dialect its input tokens only.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode},
    response::Response,
};

use super::faults::error;

/// Requests and tokens per minute; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaSettings {
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
}

#[derive(Debug)]
pub(super) struct Quota {
    requests: Option<Mutex<Bucket>>,
    tokens: Option<Mutex<Bucket>>,
    counts: Mutex<QuotaCounts>,
}

/// What the quota did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaCounts {
    pub admitted: u64,
    pub refused: u64,
    /// Tokens the admitted requests were charged, as settled.
    pub tokens_used: u64,
}

/// An admitted request's tokens, to settle when it answers.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ticket {
    tokens: u64,
}

#[derive(Debug)]
struct Bucket {
    per_minute: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    fn new(per_minute: f64) -> Self {
        Self {
            per_minute,
            level: per_minute,
            at: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let gained = now.duration_since(self.at).as_secs_f64() * self.per_minute / 60.0;
        self.level = (self.level + gained).min(self.per_minute);
        self.at = now;
    }

    /// Time until `cost` is available (zero if it is now).
    fn short_by(&self, cost: f64) -> Duration {
        let missing = cost.min(self.per_minute) - self.level;
        Duration::from_secs_f64((missing.max(0.0)) * 60.0 / self.per_minute)
    }

    /// Time until the bucket is full again, as OpenAI's `x-ratelimit-reset-*` says.
    fn until_full(&self) -> Duration {
        self.short_by(self.per_minute)
    }
}

impl Quota {
    pub(super) fn new(settings: QuotaSettings) -> Option<Self> {
        (settings.rpm.is_some() || settings.tpm.is_some()).then(|| Self {
            requests: settings.rpm.map(|r| Mutex::new(Bucket::new(f64::from(r)))),
            tokens: settings.tpm.map(|t| Mutex::new(Bucket::new(t as f64))),
            counts: Mutex::new(QuotaCounts::default()),
        })
    }

    pub(super) fn counts(&self) -> QuotaCounts {
        *self.counts.lock().expect("quota counts")
    }

    /// Admits a request of `tokens` (prompt plus `max_tokens`), or says how long it is short.
    pub(super) fn admit(&self, tokens: u64) -> Result<Ticket, Duration> {
        let mut requests = self.requests.as_ref().map(|b| b.lock().expect("quota"));
        let mut bucket = self.tokens.as_ref().map(|b| b.lock().expect("quota"));
        let wait = [
            requests.as_deref_mut().map(|b| (b, 1.0)),
            bucket.as_deref_mut().map(|b| (b, tokens as f64)),
        ]
        .into_iter()
        .flatten()
        .map(|(b, cost)| {
            b.refill();
            b.short_by(cost)
        })
        .max()
        .unwrap_or_default();
        if !wait.is_zero() {
            return Err(wait);
        }
        if let Some(b) = requests.as_deref_mut() {
            b.level -= 1.0;
        }
        if let Some(b) = bucket.as_deref_mut() {
            b.level -= tokens as f64;
        }
        self.counts.lock().expect("quota counts").admitted += 1;
        Ok(Ticket { tokens })
    }

    /// The 429 of a request that is short by `wait`.
    pub(super) fn refuse(&self, wait: Duration) -> Response {
        self.counts.lock().expect("quota counts").refused += 1;
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "Rate limit reached for requests or tokens per minute (mock quota).",
            // Whole seconds, rounded up, as Retry-After is written.
            Some(wait.as_secs_f64().ceil()),
        );
        self.headers(response.headers_mut());
        response
    }

    /// Settles an admitted request: to `charged` tokens when the provider counts what was used
    /// (Gemini's input), or as admitted when it charges at arrival (`None`: OpenAI gives
    /// nothing back); then writes the headers.
    pub(super) fn settle(&self, ticket: Ticket, charged: Option<u64>, headers: &mut HeaderMap) {
        let charged = charged.unwrap_or(ticket.tokens);
        if let Some(b) = &self.tokens {
            let mut b = b.lock().expect("quota");
            b.refill();
            b.level = (b.level + ticket.tokens as f64 - charged as f64).min(b.per_minute);
        }
        self.counts.lock().expect("quota counts").tokens_used += charged;
        self.headers(headers);
    }

    /// OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`.
    fn headers(&self, headers: &mut HeaderMap) {
        for (name, bucket) in [("requests", &self.requests), ("tokens", &self.tokens)] {
            let Some(bucket) = bucket else { continue };
            let mut b = bucket.lock().expect("quota");
            b.refill();
            let values = [
                ("limit", format!("{}", b.per_minute as u64)),
                ("remaining", format!("{}", b.level.max(0.0) as u64)),
                ("reset", format!("{:.3}s", b.until_full().as_secs_f64())),
            ];
            for (what, value) in values {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert(
                        axum::http::HeaderName::try_from(format!("x-ratelimit-{what}-{name}"))
                            .expect("valid name"),
                        v,
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remaining(headers: &HeaderMap) -> u64 {
        headers["x-ratelimit-remaining-tokens"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn a_short_bucket_refuses_with_the_wait_and_usage_accounting_refunds() {
        let quota = Quota::new(QuotaSettings {
            rpm: None,
            tpm: Some(1000),
        })
        .expect("a quota");
        let ticket = quota.admit(900).expect("within the minute's allowance");
        let short = quota.admit(900).expect_err("only about 100 tokens are left");
        let refused = quota.refuse(short);
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers()["retry-after"], "48");
        assert!(remaining(refused.headers()) <= 101);
        // Charged by what it used (Gemini's input): 100 of its 900, so 800 come back.
        let mut headers = HeaderMap::new();
        quota.settle(ticket, Some(100), &mut headers);
        assert!(remaining(&headers) >= 900);
        assert!(quota.admit(850).is_ok());
        assert_eq!(
            quota.counts(),
            QuotaCounts {
                admitted: 2,
                refused: 1,
                tokens_used: 100
            }
        );
    }

    #[test]
    fn arrival_accounting_gives_nothing_back() {
        let quota = Quota::new(QuotaSettings {
            rpm: None,
            tpm: Some(1000),
        })
        .expect("a quota");
        let ticket = quota.admit(900).expect("within the minute's allowance");
        // OpenAI: the prompt and the whole max_tokens were charged when it arrived.
        let mut headers = HeaderMap::new();
        quota.settle(ticket, None, &mut headers);
        assert!(remaining(&headers) <= 101, "{headers:?}");
        assert!(quota.admit(850).is_err());
        assert_eq!(quota.counts().tokens_used, 900);
    }
}
