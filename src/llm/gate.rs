//! The answer gate: how many provider answers one replica reads and holds at once before their
//! checkpoints are written.
//!
//! A replica with thousands of jobs in flight gets their answers in bursts (one slow model,
//! thousands of requests sent together). Read all at once, every parsed answer waits in memory
//! for one of the few database connections. Past the gate's permits an answer is left unread in
//! the socket (the kernel holds it, not the heap) until a checkpoint frees a place. The wait is
//! bounded: an answer is never lost to its own call's timeout, nor held back for long when the
//! database is down; past the bound it is read anyway, as it would be without a gate.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Longest wait for a place before an answer is read anyway.
const MAX_WAIT: Duration = Duration::from_secs(10);

/// Shared by the provider's calls; cheap to clone.
#[derive(Debug, Clone)]
pub struct AnswerGate {
    places: Option<Arc<Semaphore>>,
}

impl AnswerGate {
    /// A gate of `places` answers at once.
    pub fn new(places: usize) -> Self {
        Self {
            places: Some(Arc::new(Semaphore::new(places.max(1)))),
        }
    }

    /// No gate: every answer is read as it arrives.
    pub fn open() -> Self {
        Self { places: None }
    }

    /// Waits for a place for an answer whose call must end by `deadline`: at most half the
    /// time left, and at most [`MAX_WAIT`]. Without a place in that time, the answer is let
    /// through unadmitted.
    pub async fn enter(&self, deadline: Instant) -> Admission {
        let Some(places) = &self.places else {
            return Admission::default();
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = (left / 2).min(MAX_WAIT);
        match tokio::time::timeout(wait, places.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Admission(Some(Arc::new(permit))),
            _ => Admission::default(),
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
        let gate = AnswerGate::new(1);
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
        drop(first);
        assert!(
            gate.enter(Instant::now() + Duration::from_secs(1))
                .await
                .is_admitted()
        );
    }
}
