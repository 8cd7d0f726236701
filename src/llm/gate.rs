//! The answer gate: how many provider answers one replica reads and holds at once before their
//! checkpoints are written.
//!
//! A replica with thousands of jobs in flight gets their answers in bursts (one slow model,
//! thousands of requests sent together). Read and parsed all at once, every parsed answer (about
//! 1.7 times the size of its text) waits in memory for one of the few database connections.
//! Past the gate's places an answer is left unread until a checkpoint frees one. Over HTTP/1.1
//! it waits in its socket, held by the kernel, not the heap. Over HTTP/2 the server sends each
//! call at most a small flow-control window ahead of its reading (`HTTP2_STREAM_WINDOW`), and the
//! connection's own window is the largest allowed, so an unread answer holds one small window of
//! memory and never the share the admitted answers need.
//!
//! The wait is bounded: an answer is never lost to its own call's timeout, nor held back for long
//! when the database is down; past the bound it is let through, as it would be without a gate.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus::IntCounter;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{LlmError, wire};

/// Longest wait for a place before an answer is read anyway.
const MAX_WAIT: Duration = Duration::from_secs(10);

/// Shared by the provider's calls; cheap to clone.
#[derive(Debug, Clone)]
pub struct AnswerGate {
    places: Arc<Semaphore>,
    /// Counts the answers let through without a place.
    unadmitted: IntCounter,
}

impl AnswerGate {
    /// A gate of `places` answers at once; `unadmitted` counts those let through without one.
    pub fn new(places: usize, unadmitted: IntCounter) -> Self {
        Self {
            places: Arc::new(Semaphore::new(places.max(1))),
            unadmitted,
        }
    }

    /// Reads and decodes a successful response's JSON body through the gate, for a call that
    /// must end by `deadline`. The [`Admission`] is to be held until the answer is stored.
    pub async fn read<T: DeserializeOwned>(
        &self,
        response: reqwest::Response,
        deadline: Instant,
    ) -> Result<(Admission, T), LlmError> {
        let admission = self.enter(deadline).await;
        Ok((admission, wire::read_json(response).await?))
    }

    /// Waits for a place for an answer whose call must end by `deadline`: at most half the
    /// time left, and at most [`MAX_WAIT`]. Without a place in that time, the answer is let
    /// through unadmitted.
    pub async fn enter(&self, deadline: Instant) -> Admission {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = (left / 2).min(MAX_WAIT);
        match tokio::time::timeout(wait, self.places.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Admission(Some(Arc::new(permit))),
            _ => {
                self.unadmitted.inc();
                Admission::default()
            }
        }
    }
}

/// An answer's place behind the gate, held until its checkpoint is written (dropping it frees
/// the place). Clones share the place.
#[derive(Debug, Clone, Default)]
pub struct Admission(Option<Arc<OwnedSemaphorePermit>>);

impl Admission {
    /// Whether the answer got a place (false when the gate is open or the wait ran out).
    pub fn is_admitted(&self) -> bool {
        self.0.is_some()
    }
}

impl PartialEq for Admission {
    /// A place says nothing about the answer: responses compare by content alone.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_gate_lets_an_answer_through_before_its_deadline() {
        let unadmitted = IntCounter::new("unadmitted", "answers let through").unwrap();
        let gate = AnswerGate::new(1, unadmitted.clone());
        let first = gate.enter(Instant::now() + Duration::from_secs(60)).await;
        assert!(first.is_admitted());
        // Half of the 200 ms left is waited; the outer bound only proves that the wait ends.
        let second = tokio::time::timeout(
            Duration::from_secs(30),
            gate.enter(Instant::now() + Duration::from_millis(200)),
        )
        .await
        .expect("the wait for a place ends before the call's deadline");
        assert!(!second.is_admitted(), "no place is free while the first is held");
        assert_eq!(unadmitted.get(), 1);
        drop(first);
        assert!(
            gate.enter(Instant::now() + Duration::from_secs(1))
                .await
                .is_admitted()
        );
    }
}
