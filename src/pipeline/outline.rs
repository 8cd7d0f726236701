//! The outline call: one LLM call for the roadmap's phases and each week's title and goals,
//! re-asked once when invalid, with the template outline when the model cannot give one.

use std::{sync::Arc, time::Instant};

use tracing::{info, warn};

use super::{
    batch::{Caller, Generator, ProviderFault, Rungs},
    parse, prompt,
};
use crate::{
    domain::{
        AnswerFault, JobProfile, Outline, Phase, WeekSource,
        brief::OutlineBrief,
        event::Usage,
        outline::{MAX_PHASES, check_outline},
    },
    llm::{FinishReason, LlmError, LlmRequest, schema},
    template,
};

impl Generator {
    /// The outline of a `duration_weeks`-week roadmap for `profile`: its phases, and the
    /// outline the plan keeps. Falls back to the template's when the provider fails or the
    /// answer stays invalid; only a provider that refuses every request is an error.
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
        let mut rungs = Rungs::default();
        let mut feedback: Option<Vec<String>> = None;
        let written = loop {
            let request = LlmRequest {
                system: prompt::SYSTEM_PROMPT.to_owned(),
                prompt: prompt::render_outline(&brief, feedback.as_deref(), self.settings.format),
                schema: Arc::new(schema::outline_schema(duration_weeks, brief.max_phases)),
                max_output_tokens: self.settings.max_output_tokens,
                temperature: self.settings.temperature,
                cache_key: Some(caller.cache_key.clone()),
                bulk: caller.bulk,
            };
            let (fault, problem) = match self.call(&request, &mut usage, &mut rungs).await {
                Ok(answer) if answer.finish == FinishReason::Length => {
                    rungs.truncated = true;
                    (
                        AnswerFault::Truncated,
                        "the answer was cut off at the output limit: keep titles and goals short".to_owned(),
                    )
                }
                Ok(answer) => match parse::parse_outline(&answer.text) {
                    Ok(output) => match check_outline(output, duration_weeks) {
                        Ok(checked) => break Some(checked),
                        Err(problems) => (
                            AnswerFault::InvalidSchema,
                            problems
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join("; "),
                        ),
                    },
                    Err(e) => (e.fault(), e.to_string()),
                },
                Err(err @ LlmError::Config { .. }) => return Err(ProviderFault(err)),
                Err(err) => {
                    warn!(error = %err, "LLM gave up on the outline; template outline");
                    break None;
                }
            };
            self.metrics
                .batch_failures
                .with_label_values(&[fault.as_str()])
                .inc();
            if rungs.reasked {
                warn!(%problem, "outline still invalid after a re-ask; template outline");
                break None;
            }
            info!(%problem, "outline invalid; re-asking once");
            rungs.reasked = true;
            feedback = Some(vec![problem]);
        };
        let (phases, weeks, source) = match written {
            Some((phases, weeks)) => (phases, weeks, WeekSource::Llm),
            None => {
                rungs.fallback = true;
                let (phases, weeks) = template::outline(profile, duration_weeks);
                (phases, weeks, WeekSource::Fallback)
            }
        };
        let outcome = rungs.outcome();
        self.metrics.outlines.with_label_values(&[outcome.as_str()]).inc();
        info!(
            phases = phases.len(),
            outcome = outcome.as_str(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "outline written"
        );
        self.price(&mut usage);
        Ok((phases, Outline { weeks, source, usage }))
    }
}
