//! One batch through the robustness ladder: retry transient failures, salvage and shrink on
//! truncation, re-ask once on invalid output, then fall back to template weeks.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use backon::{ExponentialBuilder, Retryable};
use tracing::{Instrument, debug, info, warn};

use super::{
    budget::Budget,
    parse::{self, AnswerError},
    prompt::{self, Context},
};
use crate::{
    config::{LlmSettings, Prices, ResponseFormat},
    domain::{
        AnswerFault, BatchOutcome, BatchRange, BatchResult, JobProfile, Plan, Week, WeekOutline,
        brief::Brief,
        event::Usage,
        roadmap::{WeekProblem, check_weeks},
    },
    llm::{Admission, FinishReason, LlmError, LlmRequest, LlmResponse, Provider, estimate_tokens, schema},
    metrics::Metrics,
    template,
};

/// How the ladder behaves; from [`LlmSettings`], shortened in tests.
#[derive(Debug, Clone)]
pub struct LadderSettings {
    pub max_output_tokens: u32,
    pub temperature: f32,
    pub format: ResponseFormat,
    pub context_days: u32,
    pub max_retries: usize,
    pub min_retry_delay: Duration,
    pub max_retry_delay: Duration,
    /// Prices of the provider's tokens, for the cost of each batch.
    pub prices: Prices,
}

impl LadderSettings {
    pub fn from_settings(llm: &LlmSettings, context_days: u32) -> Self {
        Self {
            max_output_tokens: llm.max_output_tokens,
            temperature: llm.temperature,
            format: llm.response_format,
            context_days,
            max_retries: llm.max_retries as usize,
            min_retry_delay: Duration::from_millis(500),
            max_retry_delay: Duration::from_millis(llm.max_retry_delay_ms),
            prices: Prices::default(),
        }
    }
}

/// Generates batches; one per worker, shared by its jobs.
#[derive(Debug, Clone)]
pub struct Generator {
    pub provider: Provider,
    pub settings: LadderSettings,
    pub metrics: Metrics,
    pub schemas: schema::SchemaCache,
    /// The fleet's shared provider budget, drawn on by every call.
    pub budget: Budget,
}

/// Whom a job's calls are for: its id (the prompt cache key) and whether it is a bulk job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub cache_key: String,
    pub bulk: bool,
}

/// A batch that cannot be finished by this worker: the provider refuses every request.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ProviderFault(pub LlmError);

/// What was wrong with a complete answer; its problems go back to the model on the re-ask.
enum Invalid {
    Answer(AnswerError),
    Weeks(Vec<WeekProblem>),
}

impl Invalid {
    fn fault(&self) -> AnswerFault {
        match self {
            Self::Answer(e) => e.fault(),
            Self::Weeks(_) => AnswerFault::InvalidSchema,
        }
    }

    fn feedback(&self) -> Vec<String> {
        match self {
            Self::Answer(e) => vec![e.to_string()],
            Self::Weeks(problems) => problems.iter().map(ToString::to_string).collect(),
        }
    }
}

/// The rungs a batch (or the outline) has climbed; the highest is its outcome.
#[derive(Default)]
pub(super) struct Rungs {
    pub retried: bool,
    pub truncated: bool,
    pub reasked: bool,
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

impl Generator {
    /// Whether the provider accepts our key and model (after a configuration fault).
    pub async fn probe(&self) -> Result<(), LlmError> {
        self.provider.probe().await
    }

    /// Generates the weeks of `range`. `previous` is the week before it, when written; without
    /// it the plan's outline of that week stands in. `cache_key` (the job id) keeps a job's
    /// calls on one prompt cache; `bulk` says whose turn the calls take. The last answer's [`Admission`] comes back with the weeks,
    /// to be dropped once they are stored.
    pub async fn batch(
        &self,
        profile: &JobProfile,
        plan: &Plan,
        range: BatchRange,
        previous: Option<&Week>,
        span_hint: &mut u32,
        caller: &Caller,
    ) -> Result<(BatchResult, Admission), ProviderFault> {
        let started = Instant::now();
        let mut admission = Admission::default();
        let mut weeks: Vec<Week> = Vec::with_capacity(range.week_count() as usize);
        let mut usage = Usage::default();
        let mut rungs = Rungs::default();
        let mut next = range.first;
        // How many weeks one answer can hold; shrinks when answers are cut off, and the job's
        // later batches start from what this one learned instead of repeating the same cut.
        let mut span = range.week_count().min((*span_hint).max(1));
        let mut feedback: Option<Vec<String>> = None;
        while next <= range.last {
            let last = (next + span - 1).min(range.last);
            let context = match weeks.last().or(previous) {
                Some(week) => Context::Days(week),
                None => next
                    .checked_sub(1)
                    .and_then(|n| plan.outline_week(n))
                    .map_or(Context::Start, Context::Outline),
            };
            // The brief and the outline only render the prompt: dropped before the call, so that
            // a batch waiting on the model holds the prompt alone.
            let request = {
                let brief = Brief {
                    profile: profile.clone(),
                    duration_weeks: plan.duration_weeks,
                    first_week: next,
                    last_week: last,
                    phases: plan.phases.clone(),
                };
                let outline: Vec<WeekOutline> = (next..=last)
                    .filter_map(|n| plan.outline_week(n).cloned())
                    .collect();
                self.request(&brief, context, &outline, feedback.as_deref(), caller)
            };
            // A place is for an answer waiting to be stored, not for one being asked again.
            admission = Admission::default();
            let mut answer = match self.call(&request, &mut usage, &mut rungs).await {
                Ok(answer) => answer,
                Err(err @ LlmError::Config { .. }) => return Err(ProviderFault(err)),
                Err(err) => {
                    warn!(weeks = %format!("{next}-{}", range.last), error = %err, "LLM gave up; template weeks");
                    self.fallback(profile, plan, next..=range.last, &mut weeks, &mut rungs);
                    break;
                }
            };
            admission = std::mem::take(&mut answer.admission);
            if answer.finish == FinishReason::Length {
                rungs.truncated = true;
                self.metrics
                    .batch_failures
                    .with_label_values(&[AnswerFault::Truncated.as_str()])
                    .inc();
                let mut salvaged = parse::salvage_weeks(&answer.text).unwrap_or_else(|refused| {
                    // Nothing is kept from an oversized cut: the span halves as for any
                    // cut with no complete week.
                    self.metrics
                        .batch_failures
                        .with_label_values(&[refused.fault().as_str()])
                        .inc();
                    warn!(first = next, last, error = %refused, "truncated answer refused");
                    Vec::new()
                });
                // Only a clean prefix of the requested weeks is kept; anything odd is dropped.
                let complete = (salvaged.len() as u32).min(last - next + 1);
                salvaged.truncate(complete as usize);
                let good = match complete {
                    0 => Vec::new(),
                    n => check_weeks(salvaged, next..=next + n - 1, |w| plan.phase_of(w)).unwrap_or_default(),
                };
                let kept = good.len() as u32;
                // The model fits about `kept` weeks in its budget: never send the same cut again.
                let requested = last - next + 1;
                span = if kept > 0 {
                    kept.min(requested)
                } else {
                    requested / 2
                };
                info!(first = next, last, kept, next_span = span, "answer truncated");
                next += kept;
                weeks.extend(good);
                if span == 0 {
                    // A single week does not fit the output limit: no smaller request exists.
                    self.fallback(profile, plan, next..=last, &mut weeks, &mut rungs);
                    next = last + 1;
                    span = 1;
                }
                continue;
            }
            let checked = parse::parse_answer(&answer.text)
                .map_err(Invalid::Answer)
                .and_then(|ws| check_weeks(ws, next..=last, |w| plan.phase_of(w)).map_err(Invalid::Weeks));
            match checked {
                Ok(good) => {
                    next = last + 1;
                    weeks.extend(good);
                    feedback = None;
                }
                Err(invalid) => {
                    self.metrics
                        .batch_failures
                        .with_label_values(&[invalid.fault().as_str()])
                        .inc();
                    let problem = invalid.feedback().join("; ");
                    if rungs.reasked {
                        warn!(first = next, last, %problem, "answer still invalid after a re-ask; template weeks");
                        self.fallback(profile, plan, next..=last, &mut weeks, &mut rungs);
                        next = last + 1;
                    } else {
                        info!(first = next, last, %problem, "answer invalid; re-asking once");
                        rungs.reasked = true;
                        feedback = Some(vec![problem]);
                    }
                }
            }
        }
        if rungs.truncated {
            // Only a cut says how much fits; a short batch says nothing about longer ones.
            *span_hint = span;
        }
        let outcome = rungs.outcome();
        self.metrics.batches.with_label_values(&[outcome.as_str()]).inc();
        self.metrics
            .batch_duration
            .observe(started.elapsed().as_secs_f64());
        self.price(&mut usage);
        let result = BatchResult {
            weeks,
            usage,
            outcome,
        };
        Ok((result, admission))
    }

    /// Prices `usage` at the configured prices and counts it in the cost metric.
    pub(super) fn price(&self, usage: &mut Usage) {
        usage.cost_nanos = self.settings.prices.cost_nanos(
            usage.input_tokens,
            usage.cached_input_tokens,
            usage.output_tokens,
        );
        self.metrics.llm_cost.inc_by(usage.cost_nanos as f64 / 1e9);
    }

    fn request(
        &self,
        brief: &Brief,
        context: Context<'_>,
        outline: &[WeekOutline],
        feedback: Option<&[String]>,
        caller: &Caller,
    ) -> LlmRequest {
        LlmRequest {
            system: prompt::SYSTEM_PROMPT.to_owned(),
            prompt: prompt::render(
                brief,
                context,
                outline,
                self.settings.context_days,
                feedback,
                self.settings.format,
            ),
            schema: self.schemas.batch(brief.first_week, brief.last_week),
            max_output_tokens: self.settings.max_output_tokens,
            temperature: self.settings.temperature,
            cache_key: Some(caller.cache_key.clone()),
            bulk: caller.bulk,
        }
    }

    /// One logical call: transient failures retried with jittered exponential backoff, honouring
    /// the server's requested delay up to the cap. Every attempt is counted in `usage`.
    pub(super) async fn call(
        &self,
        request: &LlmRequest,
        usage: &mut Usage,
        rungs: &mut Rungs,
    ) -> Result<LlmResponse, LlmError> {
        let cap = self.settings.max_retry_delay;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.settings.min_retry_delay)
            .with_max_delay(cap)
            .with_max_times(self.settings.max_retries)
            .with_jitter();
        let attempts = Mutex::new(Usage::default());
        let result = (|| self.attempt(request, &attempts))
            .retry(backoff)
            .when(LlmError::is_transient)
            .adjust(|err, planned| {
                let asked = match err {
                    LlmError::Transient { retry_after, .. } => *retry_after,
                    _ => None,
                };
                // `planned` is None once retries are spent; a server's hint must not extend them.
                planned.map(|p| asked.map_or(p, |a| a.min(cap).max(p)))
            })
            .notify(|err, delay| {
                self.metrics
                    .batch_failures
                    .with_label_values(&[err.status()])
                    .inc();
                warn!(error = %err, delay_ms = delay.as_millis() as u64, "LLM call failed; retrying");
            })
            .await;
        let spent = *attempts.lock().expect("usage lock");
        rungs.retried |= spent.llm_calls > 1;
        *usage += spent;
        if let Err(err) = &result {
            self.metrics
                .batch_failures
                .with_label_values(&[err.status()])
                .inc();
        }
        result
    }

    async fn attempt(&self, request: &LlmRequest, usage: &Mutex<Usage>) -> Result<LlmResponse, LlmError> {
        let (provider, model) = (self.provider.name(), self.provider.model());
        // Boxed, and only with a budget: every call in flight would otherwise carry room for
        // the budget's database futures.
        let reservation = match self.budget.is_on() {
            true => {
                // What the provider counts against its limit: the prompt and the output limit.
                let estimate = estimate_tokens(&request.system)
                    + estimate_tokens(&request.prompt)
                    + u64::from(request.max_output_tokens);
                Some(Box::pin(self.budget.reserve(estimate, request.bulk)).await)
            }
            false => None,
        };
        let started = Instant::now();
        let call = tracing::info_span!(
            "llm call",
            provider,
            model,
            max_output_tokens = request.max_output_tokens
        );
        let result = self.provider.complete(request).instrument(call).await;
        if matches!(&result, Err(e) if e.status() == "http_429") {
            self.metrics.rate_limited.inc();
        }
        if let Some(reservation) = reservation {
            let outcome = result
                .as_ref()
                .map(|a| (a.usage.input.saturating_add(a.usage.output), a.limits));
            Box::pin(self.budget.settle(reservation, outcome)).await;
        }
        self.metrics
            .llm_request_duration
            .with_label_values(&[provider, model])
            .observe(started.elapsed().as_secs_f64());
        let status = match &result {
            Ok(_) => "ok",
            Err(e) => e.status(),
        };
        self.metrics
            .llm_requests
            .with_label_values(&[provider, model, status])
            .inc();
        let mut spent = usage.lock().expect("usage lock");
        spent.llm_calls += 1;
        debug!(
            attempt = spent.llm_calls,
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "LLM call"
        );
        if let Ok(answer) = &result {
            // Counts come from the server: sums saturate rather than overflow.
            spent.input_tokens = spent.input_tokens.saturating_add(answer.usage.input);
            spent.output_tokens = spent.output_tokens.saturating_add(answer.usage.output);
            spent.cached_input_tokens = spent
                .cached_input_tokens
                .saturating_add(answer.usage.cached_input);
            self.metrics
                .llm_tokens
                .with_label_values(&["cached_input"])
                .inc_by(answer.usage.cached_input);
            self.metrics
                .llm_tokens
                .with_label_values(&["input"])
                .inc_by(answer.usage.input);
            self.metrics
                .llm_tokens
                .with_label_values(&["output"])
                .inc_by(answer.usage.output);
        }
        result
    }

    fn fallback(
        &self,
        profile: &JobProfile,
        plan: &Plan,
        range: std::ops::RangeInclusive<u32>,
        weeks: &mut Vec<Week>,
        rungs: &mut Rungs,
    ) {
        rungs.fallback = true;
        weeks.extend(range.map(|n| template::week(profile, &plan.phases, n, plan.duration_weeks)));
    }
}
