//! The robustness ladder as a state machine: what to ask next, and what an answer's verdict
//! moves the batch to. Its transitions are pure (no I/O, no clock, no metrics), so every rung is
//! tested directly; `batch.rs` and `outline.rs` drive it with real calls.
//!
//! The rungs, in order: a transient failure is retried inside one call ([`LadderPolicy::retry`]);
//! an answer cut off at the output limit keeps its complete weeks and asks for the rest in
//! smaller requests (a single week cut off is asked again, told why); an invalid answer is asked
//! again with its problems ([`LadderPolicy::reasks`] times per batch, cut weeks included); what
//! is still missing after that, or after a call that gave up, is filled with template weeks.

use std::{ops::RangeInclusive, time::Duration};

use crate::{domain::BatchOutcome, retry::RetryPolicy};

/// What a re-ask of a single week cut off at the output limit tells the model.
pub const CUT_OFF_FEEDBACK: &str =
    "the answer was cut off at the output limit: keep every text short and never repeat a phrase";

/// How the ladder climbs: one value, from settings in production and shortened in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LadderPolicy {
    /// Transient failures of one call: retried with this backoff; a server's `Retry-After` is
    /// honoured up to its `max_delay`.
    pub retry: RetryPolicy,
    /// Re-asks of an invalid answer per batch (and per outline), telling the model what was
    /// wrong. One is enough for a model that slipped; more rarely helps one that cannot.
    pub reasks: u8,
}

impl LadderPolicy {
    /// The shortest wait between two tries of one call: long enough for a server that answered
    /// 5xx to recover, short enough not to matter beside a call of seconds.
    pub const MIN_RETRY_DELAY: Duration = Duration::from_millis(500);

    /// `max_retries` tries after the first, waiting up to `max_retry_delay`, and one re-ask.
    pub const fn new(max_retries: usize, max_retry_delay: Duration) -> Self {
        Self {
            retry: RetryPolicy::new(Self::MIN_RETRY_DELAY, max_retry_delay).with_max_retries(max_retries),
            reasks: 1,
        }
    }
}

/// The rungs a batch (or the outline) has climbed; the highest is its outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rungs {
    pub retried: bool,
    pub truncated: bool,
    pub reasked: bool,
    /// The re-ask was for content problems (`domain::quality`), not an invalid answer.
    pub content_reasked: bool,
    pub fallback: bool,
}

impl Rungs {
    pub fn outcome(&self) -> BatchOutcome {
        match self {
            Self { fallback: true, .. } => BatchOutcome::Fallback,
            Self { reasked: true, .. } => BatchOutcome::Reasked,
            Self { truncated: true, .. } => BatchOutcome::Truncated,
            Self { retried: true, .. } => BatchOutcome::Retried,
            _ => BatchOutcome::Ok,
        }
    }
}

/// The request the ladder wants next: weeks `first..=last`, with the problems of the last
/// answer when it is a re-ask.
#[derive(Debug, PartialEq, Eq)]
pub struct Ask<'a> {
    pub first: u32,
    pub last: u32,
    pub feedback: Option<&'a [String]>,
}

/// What came of one request, as the ladder needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every week asked for, valid.
    Complete,
    /// Cut off at the output limit; the first `kept` weeks were complete and valid, and kept.
    CutOff { kept: u32 },
    /// A complete answer that is not a valid batch; `problem` goes back to the model.
    Invalid { problem: String },
    /// A complete, valid answer whose content has problems (repeats, drift from the outline,
    /// hours, resources). They go back to the model while the batch has its re-ask; after that
    /// the answer is kept as it is: content problems never cost the model's weeks.
    Flawed { problems: Vec<String> },
    /// The call failed past its retries (or for good, short of a configuration fault).
    GaveUp,
}

impl Verdict {
    /// An invalid answer with these problems, told back to the model in one line.
    pub fn invalid<T: std::fmt::Display>(problems: impl IntoIterator<Item = T>) -> Self {
        let problem = problems
            .into_iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        Self::Invalid { problem }
    }

    /// What was wrong with the answer, if it was invalid.
    pub fn problem(&self) -> Option<&str> {
        match self {
            Self::Invalid { problem } => Some(problem),
            _ => None,
        }
    }
}

/// Where a verdict moved the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Move {
    /// On to the next request, or done.
    Next,
    /// The same weeks are asked again, with the answer's problems.
    Reask,
    /// These weeks are written from the template; then on to the next request, or done.
    Fallback(RangeInclusive<u32>),
}

/// One batch (or the outline) on its way up the ladder.
#[derive(Debug, Clone)]
pub struct Ladder {
    /// The last week of the batch.
    last: u32,
    /// The first week not yet written.
    next: u32,
    /// Weeks per request: shrinks when answers are cut off.
    span: u32,
    reasks_left: u8,
    /// The problems of the last answer, for the re-ask.
    feedback: Option<Vec<String>>,
    rungs: Rungs,
}

impl Ladder {
    /// The ladder of a batch of `weeks`, asking at most `span_hint` weeks at once (what earlier
    /// batches of the job learned fits one answer).
    pub fn new(weeks: RangeInclusive<u32>, span_hint: u32, policy: &LadderPolicy) -> Self {
        let (first, last) = weeks.into_inner();
        let count = last.saturating_sub(first) + 1;
        Self {
            last,
            next: first,
            span: count.min(span_hint.max(1)),
            reasks_left: policy.reasks,
            feedback: None,
            rungs: Rungs::default(),
        }
    }

    /// The ladder of one indivisible answer (the outline): asked as the single unit `0..=0`,
    /// so a cut-off answer is judged [`Verdict::Invalid`] by its driver, never split.
    pub fn whole(policy: &LadderPolicy) -> Self {
        Self::new(0..=0, 1, policy)
    }

    /// The next request, or `None` when every week is written.
    pub fn ask(&self) -> Option<Ask<'_>> {
        (self.next <= self.last).then(|| Ask {
            first: self.next,
            last: (self.next + self.span - 1).min(self.last),
            feedback: self.feedback.as_deref(),
        })
    }

    /// A call needed more than one try.
    pub fn retried(&mut self) {
        self.rungs.retried = true;
    }

    /// An answer was cut off, whatever became of it (the outline's re-ask counts it too).
    pub fn truncated(&mut self) {
        self.rungs.truncated = true;
    }

    /// Moves the batch by the verdict on the answer to the request for `..=asked_last`.
    pub fn step(&mut self, asked_last: u32, verdict: &Verdict) -> Move {
        match *verdict {
            Verdict::Complete => {
                self.next = asked_last + 1;
                self.feedback = None;
                Move::Next
            }
            Verdict::CutOff { kept } => {
                self.rungs.truncated = true;
                let requested = asked_last + 1 - self.next;
                let kept = kept.min(requested);
                // The model fits about `kept` weeks in its budget: never send the same cut again.
                self.span = if kept > 0 { kept } else { requested / 2 };
                self.next += kept;
                if self.span == 0 {
                    // A single week does not fit the output limit: no smaller request exists.
                    // Asked again once, told why: a model can also run on in a loop (a small
                    // local one repeating a string until the limit), which a new sample escapes.
                    self.span = 1;
                    self.reask_or_fallback(asked_last, CUT_OFF_FEEDBACK)
                } else {
                    Move::Next
                }
            }
            Verdict::Invalid { ref problem } => self.reask_or_fallback(asked_last, problem),
            Verdict::Flawed { ref problems } => {
                if self.reasks_left == 0 {
                    self.next = asked_last + 1;
                    self.feedback = None;
                    Move::Next
                } else {
                    self.reasks_left -= 1;
                    self.rungs.reasked = true;
                    self.rungs.content_reasked = true;
                    self.feedback = Some(problems.clone());
                    Move::Reask
                }
            }
            Verdict::GaveUp => self.fallback(self.last),
        }
    }

    /// The same weeks asked again with `problem`, while re-asks are left; else the template.
    fn reask_or_fallback(&mut self, asked_last: u32, problem: &str) -> Move {
        if self.reasks_left == 0 {
            self.fallback(asked_last)
        } else {
            self.reasks_left -= 1;
            self.rungs.reasked = true;
            self.feedback = Some(vec![problem.to_owned()]);
            Move::Reask
        }
    }

    fn fallback(&mut self, through: u32) -> Move {
        self.rungs.fallback = true;
        self.feedback = None;
        let weeks = self.next..=through;
        self.next = through + 1;
        Move::Fallback(weeks)
    }

    /// Weeks per request now.
    pub fn span(&self) -> u32 {
        self.span
    }

    pub fn rungs(&self) -> Rungs {
        self.rungs
    }

    /// What this batch learned of how many weeks fit one answer: only a cut says so; a batch
    /// that was never cut says nothing about longer ones.
    pub fn learned_span(&self) -> Option<u32> {
        self.rungs.truncated.then_some(self.span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: LadderPolicy = LadderPolicy::new(2, Duration::from_secs(1));

    fn asked(ladder: &Ladder) -> Option<(u32, u32, bool)> {
        ladder.ask().map(|a| (a.first, a.last, a.feedback.is_some()))
    }

    #[test]
    fn a_complete_answer_writes_the_batch_in_one_request() {
        let mut ladder = Ladder::new(4..=6, 3, &POLICY);
        assert_eq!(asked(&ladder), Some((4, 6, false)));
        assert_eq!(ladder.step(6, &Verdict::Complete), Move::Next);
        assert_eq!(ladder.ask(), None);
        assert_eq!(ladder.rungs().outcome(), BatchOutcome::Ok);
        assert_eq!(ladder.learned_span(), None);
    }

    #[test]
    fn a_cut_keeps_its_weeks_and_asks_the_rest_in_requests_that_fit() {
        let mut ladder = Ladder::new(1..=6, 6, &POLICY);
        assert_eq!(ladder.step(6, &Verdict::CutOff { kept: 2 }), Move::Next);
        assert_eq!(asked(&ladder), Some((3, 4, false)));
        assert_eq!(ladder.step(4, &Verdict::Complete), Move::Next);
        assert_eq!(asked(&ladder), Some((5, 6, false)));
        ladder.step(6, &Verdict::Complete);
        assert_eq!(ladder.ask(), None);
        assert_eq!(ladder.rungs().outcome(), BatchOutcome::Truncated);
        assert_eq!(ladder.learned_span(), Some(2));
    }

    #[test]
    fn a_cut_with_no_complete_week_halves_the_span_down_to_a_template_week() {
        let mut ladder = Ladder::new(1..=3, 3, &POLICY);
        assert_eq!(ladder.step(3, &Verdict::CutOff { kept: 0 }), Move::Next);
        assert_eq!(asked(&ladder), Some((1, 1, false)));
        // One week does not fit either: asked again once, told why (a model may have run on
        // in a loop); cut again, that week comes from the template and the rest goes on.
        assert_eq!(ladder.step(1, &Verdict::CutOff { kept: 0 }), Move::Reask);
        let ask = ladder.ask().expect("a re-ask");
        assert_eq!((ask.first, ask.last), (1, 1));
        assert_eq!(ask.feedback, Some(&[CUT_OFF_FEEDBACK.to_owned()][..]));
        assert_eq!(
            ladder.step(1, &Verdict::CutOff { kept: 0 }),
            Move::Fallback(1..=1)
        );
        assert_eq!(asked(&ladder), Some((2, 2, false)));
        assert_eq!(ladder.rungs().outcome(), BatchOutcome::Fallback);
    }

    #[test]
    fn more_weeks_than_asked_for_count_as_the_weeks_asked() {
        let mut ladder = Ladder::new(1..=3, 2, &POLICY);
        assert_eq!(ladder.step(2, &Verdict::CutOff { kept: 5 }), Move::Next);
        assert_eq!(asked(&ladder), Some((3, 3, false)));
    }

    #[test]
    fn an_invalid_answer_is_asked_again_once_with_its_problem_then_templated() {
        let mut ladder = Ladder::new(1..=3, 3, &POLICY);
        let invalid = || Verdict::Invalid {
            problem: "week 2 has 6 days".into(),
        };
        assert_eq!(ladder.step(3, &invalid()), Move::Reask);
        let ask = ladder.ask().expect("a re-ask");
        assert_eq!((ask.first, ask.last), (1, 3));
        assert_eq!(ask.feedback, Some(&["week 2 has 6 days".to_owned()][..]));
        assert_eq!(ladder.step(3, &invalid()), Move::Fallback(1..=3));
        assert_eq!(ladder.ask(), None);
        assert_eq!(ladder.rungs().outcome(), BatchOutcome::Fallback);
    }

    #[test]
    fn a_good_re_ask_clears_the_feedback_and_spends_the_batchs_re_ask() {
        let mut ladder = Ladder::new(1..=4, 2, &POLICY);
        ladder.step(2, &Verdict::Invalid { problem: "x".into() });
        ladder.step(2, &Verdict::Complete);
        assert_eq!(asked(&ladder), Some((3, 4, false)));
        // The batch's one re-ask is spent: the next invalid answer falls back at once.
        let moved = ladder.step(4, &Verdict::Invalid { problem: "y".into() });
        assert_eq!(moved, Move::Fallback(3..=4));
        assert_eq!(ladder.rungs().outcome(), BatchOutcome::Fallback);
    }

    #[test]
    fn flawed_content_is_asked_again_once_then_kept_never_templated() {
        let mut ladder = Ladder::new(1..=3, 3, &POLICY);
        let flawed = || Verdict::Flawed {
            problems: vec!["week 2 repeats".into(), "week 3 plans 180 minutes".into()],
        };
        assert_eq!(ladder.step(3, &flawed()), Move::Reask);
        let ask = ladder.ask().expect("a re-ask");
        assert_eq!(ask.feedback.map(<[String]>::len), Some(2));
        // Flawed again: kept as it is, the batch done.
        assert_eq!(ladder.step(3, &flawed()), Move::Next);
        assert_eq!(ladder.ask(), None);
        let rungs = ladder.rungs();
        assert!(rungs.content_reasked && !rungs.fallback);
        assert_eq!(rungs.outcome(), BatchOutcome::Reasked);
        // A re-ask spent on an invalid answer leaves flawed content to be kept at once.
        let mut ladder = Ladder::new(1..=3, 3, &POLICY);
        ladder.step(3, &Verdict::Invalid { problem: "x".into() });
        assert_eq!(ladder.step(3, &flawed()), Move::Next);
        assert!(!ladder.rungs().content_reasked);
    }

    #[test]
    fn no_re_asks_in_the_policy_means_straight_to_the_template() {
        let policy = LadderPolicy { reasks: 0, ..POLICY };
        let mut ladder = Ladder::new(1..=3, 3, &policy);
        let moved = ladder.step(3, &Verdict::Invalid { problem: "x".into() });
        assert_eq!(moved, Move::Fallback(1..=3));
    }

    #[test]
    fn a_call_that_gave_up_templates_the_rest_of_the_batch() {
        let mut ladder = Ladder::new(1..=6, 2, &POLICY);
        ladder.step(2, &Verdict::Complete);
        assert_eq!(ladder.step(4, &Verdict::GaveUp), Move::Fallback(3..=6));
        assert_eq!(ladder.ask(), None);
    }

    #[test]
    fn the_outline_is_one_unit_re_asked_then_templated() {
        let mut ladder = Ladder::whole(&POLICY);
        assert_eq!(asked(&ladder), Some((0, 0, false)));
        ladder.truncated();
        assert_eq!(
            ladder.step(
                0,
                &Verdict::Invalid {
                    problem: "cut".into()
                }
            ),
            Move::Reask
        );
        assert_eq!(asked(&ladder), Some((0, 0, true)));
        ladder.step(0, &Verdict::Complete);
        assert_eq!(ladder.ask(), None);
        assert_eq!(ladder.rungs().outcome(), BatchOutcome::Reasked);
    }

    #[test]
    fn outcomes_rank_fallback_over_reask_over_cut_over_retry() {
        let mut ladder = Ladder::new(1..=1, 1, &POLICY);
        ladder.retried();
        assert_eq!(ladder.rungs().outcome(), BatchOutcome::Retried);
        ladder.truncated();
        assert_eq!(ladder.rungs().outcome(), BatchOutcome::Truncated);
        ladder.step(1, &Verdict::Invalid { problem: "x".into() });
        assert_eq!(ladder.rungs().outcome(), BatchOutcome::Reasked);
        ladder.step(1, &Verdict::GaveUp);
        assert_eq!(ladder.rungs().outcome(), BatchOutcome::Fallback);
    }
}
