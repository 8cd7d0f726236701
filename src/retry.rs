//! One retry policy value for every backoff in the worker: LLM calls, database calls, broker
//! reconnects, lease releases, the relay's pauses and the waits of parked jobs. Each place names
//! its policy as a value instead of spelling out its own doubling.

use std::time::Duration;

use backon::ExponentialBuilder;

/// Exponential backoff: `min_delay`, doubling each time, capped at `max_delay`, optionally
/// jittered, for at most `max_retries` retries (`None`: no end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Retries after the first try; `None` retries for as long as the caller keeps calling.
    pub max_retries: Option<usize>,
    /// Each delay drawn at random up to twice its value (backon's jitter), so that replicas
    /// that failed together do not retry together.
    pub jitter: bool,
}

impl RetryPolicy {
    /// From `min_delay` to `max_delay`, jittered, without end.
    pub const fn new(min_delay: Duration, max_delay: Duration) -> Self {
        Self {
            min_delay,
            max_delay,
            max_retries: None,
            jitter: true,
        }
    }

    pub const fn with_max_retries(self, max_retries: usize) -> Self {
        Self {
            max_retries: Some(max_retries),
            ..self
        }
    }

    pub const fn without_jitter(self) -> Self {
        Self {
            jitter: false,
            ..self
        }
    }

    /// The policy as backon's builder, for `Retryable::retry` or as an iterator of delays.
    pub fn backoff(&self) -> ExponentialBuilder {
        let builder = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay);
        let builder = match self.max_retries {
            Some(n) => builder.with_max_times(n),
            None => builder.without_max_times(),
        };
        if self.jitter {
            builder.with_jitter()
        } else {
            builder
        }
    }

    /// The delay before retry `n` (0 for the first), without jitter: `min_delay · 2^n`, capped
    /// at `max_delay`. For loops that count their own failures across iterations (a pause after
    /// the n-th failed pass, the n-th wait of a parked job), where an iterator cannot be kept.
    pub fn nth_delay(&self, n: u32) -> Duration {
        self.min_delay
            .checked_mul(2u32.saturating_pow(n))
            .unwrap_or(Duration::MAX)
            .min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nth_delay_doubles_from_the_minimum_to_the_cap_and_saturates() {
        let policy = RetryPolicy::new(Duration::from_secs(2), Duration::from_secs(10));
        let delays: Vec<u64> = (0..6).map(|n| policy.nth_delay(n).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 10, 10, 10]);
        assert_eq!(policy.nth_delay(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn the_backoff_yields_max_retries_delays_within_the_bounds() {
        let policy =
            RetryPolicy::new(Duration::from_millis(100), Duration::from_millis(400)).with_max_retries(5);
        let delays: Vec<Duration> = backon::BackoffBuilder::build(policy.backoff()).collect();
        assert_eq!(delays.len(), 5);
        // Jitter adds at most the delay itself on top of it.
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_millis(100) && *d <= Duration::from_millis(800)),
            "{delays:?}"
        );
        let plain: Vec<u64> = backon::BackoffBuilder::build(policy.without_jitter().backoff())
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(plain, [100, 200, 400, 400, 400]);
    }
}
