//! The outline call: one LLM call for the roadmap's phases and each week's title and goals,
//! re-asked once when invalid, with the template outline when the model cannot give one.

use std::{sync::Arc, time::Instant};

use tracing::{info, warn};

use super::{
    batch::{Caller, Generator, OutputSize, ProviderFault},
    ladder::{Ladder, Move, Verdict},
    parse, prompt,
};
use crate::{
    domain::{
        AnswerFault, JobProfile, Outline, Phase, WeekSource,
        brief::OutlineBrief,
        event::Usage,
        outline::{MAX_PHASES, check_outline},
    },
    llm::{FinishReason, Llm, LlmError, schema},
    template,
};

impl<L: Llm> Generator<L> {
    /// The outline of a `duration_weeks`-week roadmap for `profile`: its phases, and the
    /// outline the plan keeps. Falls back to the template's when the provider fails or the
    /// answer stays invalid; only a provider that refuses every request is an error. The same
    /// ladder as a batch's, over one indivisible answer: a cut-off outline is re-asked, never
    /// split.
    pub async fn outline(
        &self,
        profile: &JobProfile,
        duration_weeks: u32,
        caller: &Caller,
    ) -> Result<(Vec<Phase>, Outline), ProviderFault> {
        let started = Instant::now();
        let brief = OutlineBrief {
            profile: profile.clone(),
            duration_weeks,
            max_phases: MAX_PHASES.min(duration_weeks as usize).max(1) as u32,
        };
        let mut usage = Usage::default();
        let mut ladder = Ladder::whole(&self.settings().policy);
        let mut written = None;
        while let Some(ask) = ladder.ask() {
            let request = self.request(
                prompt::render_outline(&brief, ask.feedback, self.settings().format),
                Arc::new(schema::outline_schema(duration_weeks, brief.max_phases)),
                caller,
                OutputSize::Outline(duration_weeks),
            );
            let verdict = match self.call(&request, &mut usage, &mut ladder).await {
                Ok(answer) if answer.finish == FinishReason::Length => {
                    ladder.truncated();
                    self.invalid(
                        AnswerFault::Truncated,
                        ["the answer was cut off at the output limit: keep titles and goals short"],
                    )
                }
                Ok(answer) => match parse::parse_outline(&answer.text) {
                    Ok(output) => match check_outline(output, duration_weeks) {
                        Ok(checked) => {
                            written = Some(checked);
                            Verdict::Complete
                        }
                        Err(problems) => self.invalid(AnswerFault::InvalidSchema, problems),
                    },
                    Err(e) => self.invalid(e.fault(), [&e]),
                },
                Err(err @ LlmError::Config { .. }) => return Err(ProviderFault(err)),
                Err(err) => {
                    warn!(error = %err, "LLM gave up on the outline");
                    Verdict::GaveUp
                }
            };
            let problem = verdict.problem();
            // The outline's ladder asks for the single unit 0.
            match ladder.step(0, &verdict) {
                Move::Reask => info!(problem, "outline invalid; re-asking once"),
                Move::Fallback(_) => warn!(problem, "template outline"),
                Move::Next => {}
            }
        }
        let (phases, weeks, source) = match written {
            Some((phases, weeks)) => (phases, weeks, WeekSource::Llm),
            None => {
                let (phases, weeks) = template::outline(profile, duration_weeks);
                (phases, weeks, WeekSource::Fallback)
            }
        };
        let outcome = ladder.rungs().outcome();
        self.metrics().outline_finished(outcome);
        info!(
            phases = phases.len(),
            outcome = outcome.as_str(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "outline written"
        );
        self.price(&mut usage);
        Ok((phases, Outline { weeks, source, usage }))
    }

    /// An invalid outline, counted by its fault.
    fn invalid<T: std::fmt::Display>(
        &self,
        fault: AnswerFault,
        problems: impl IntoIterator<Item = T>,
    ) -> Verdict {
        self.metrics().batch_failed(fault);
        Verdict::invalid(problems)
    }
}
