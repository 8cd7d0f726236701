//! One batch through the robustness ladder: retry transient failures, salvage and shrink on
//! truncation, re-ask once on invalid output, then fall back to template weeks.

use std::{
    ops::RangeInclusive,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use backon::Retryable;
use tracing::{Instrument, debug, info, warn};

use super::{
    budget::{Budget, Charge, Used},
    ladder::{Ladder, LadderPolicy, Move, Verdict},
    parse::{self, AnswerError},
    prompt::{self, Context},
};
use crate::{
    config::{LlmSettings, Prices, ResponseFormat},
    domain::{
        AnswerFault, BatchRange, BatchResult, JobProfile, Plan, Week, WeekOutline, WeekSource,
        brief::Brief,
        event::Usage,
        quality::{BatchQuality, Standard, check_content},
        roadmap::{WeekProblem, check_weeks},
    },
    llm::{
        Admission, FinishReason, Llm, LlmError, LlmRequest, LlmResponse, Provider, estimate_tokens, schema,
    },
    metrics::{CallStatus, Metrics},
    template,
};

/// How the generator asks: the request's settings and the ladder's policy; from
/// [`LlmSettings`], shortened in tests.
#[derive(Debug, Clone)]
pub struct LadderSettings {
    pub max_output_tokens: u32,
    pub temperature: f32,
    pub format: ResponseFormat,
    pub context_days: u32,
    pub policy: LadderPolicy,
    /// Prices of the provider's tokens, for the cost of each batch.
    pub prices: Prices,
    /// Run the content checks (`QUALITY_CHECKS`): re-ask once for content problems and record
    /// them with the batch. Off, answers are judged on their structure alone.
    pub quality_checks: bool,
}

impl LadderSettings {
    pub fn from_settings(llm: &LlmSettings, context_days: u32) -> Self {
        Self {
            max_output_tokens: llm.max_output_tokens,
            temperature: llm.temperature,
            format: llm.response_format,
            context_days,
            policy: LadderPolicy::new(
                llm.max_retries as usize,
                Duration::from_millis(llm.max_retry_delay_ms),
            ),
            prices: Prices::default(),
            quality_checks: true,
        }
    }
}

/// Generates batches and outlines through the ladder; one per worker, shared by its jobs.
/// Generic over the model ([`Llm`]), so that tests drive it with scripted answers in-process.
#[derive(Debug, Clone)]
pub struct Generator<L = Provider> {
    llm: L,
    settings: LadderSettings,
    metrics: Metrics,
    schemas: schema::SchemaCache,
    /// The fleet's shared provider budget, drawn on by every call.
    budget: Budget,
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

    fn verdict(&self) -> Verdict {
        match self {
            Self::Answer(e) => Verdict::invalid([e]),
            Self::Weeks(problems) => Verdict::invalid(problems),
        }
    }
}

impl<L: Llm> Generator<L> {
    /// A generator asking `llm`, drawing on `budget` (off: [`Budget::default`]).
    pub fn new(llm: L, settings: LadderSettings, metrics: Metrics, budget: Budget) -> Self {
        Self {
            llm,
            settings,
            metrics,
            schemas: Default::default(),
            budget,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    pub(super) fn settings(&self) -> &LadderSettings {
        &self.settings
    }

    /// Whether the provider accepts our key and model (after a configuration fault).
    pub async fn probe(&self) -> Result<(), LlmError> {
        self.llm.probe().await
    }

    /// Generates the weeks of `range`. `previous` is the batch before it, when written (its
    /// last days and its task titles go into the prompt, and the content checks compare with
    /// it); without it the plan's outline of the week before stands in. `span_hint` is how many weeks the job's
    /// answers were found to hold (a cut here lowers it for the batches after). `caller` keeps a
    /// job's calls on one prompt cache and says whose turn they take. The last answer's
    /// [`Admission`] comes back with the weeks, to be dropped once they are stored.
    pub async fn batch(
        &self,
        profile: &JobProfile,
        plan: &Plan,
        range: BatchRange,
        previous: &[Week],
        span_hint: &mut u32,
        caller: &Caller,
    ) -> Result<(BatchResult, Admission), ProviderFault> {
        let started = Instant::now();
        let mut admission = Admission::default();
        let mut weeks: Vec<Week> = Vec::with_capacity(range.week_count() as usize);
        let mut usage = Usage::default();
        let mut ladder = Ladder::new(range.weeks(), *span_hint, &self.settings.policy);
        // A flawed answer that a content re-ask is to replace.
        let mut replaced: Vec<Week> = Vec::new();
        while let Some(ask) = ladder.ask() {
            let (first, last) = (ask.first, ask.last);
            let context = match weeks.last().or(previous.last()) {
                Some(_) => Context::Days {
                    before: previous,
                    written: &weeks,
                },
                None => first
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
                    first_week: first,
                    last_week: last,
                    phases: plan.phases.clone(),
                };
                let outline: Vec<WeekOutline> = (first..=last)
                    .filter_map(|n| plan.outline_week(n).cloned())
                    .collect();
                let prompt = prompt::render(
                    &brief,
                    context,
                    &outline,
                    self.settings.context_days,
                    ask.feedback,
                    self.settings.format,
                );
                let output = OutputSize::Weeks(last - first + 1);
                self.request(prompt, self.schemas.batch(first, last), caller, output)
            };
            // A place is for an answer waiting to be stored, not for one being asked again.
            admission = Admission::default();
            // The weeks of a flawed answer, kept only if the ladder keeps the answer.
            let mut flawed = Vec::new();
            let verdict = match self.call(&request, &mut usage, &mut ladder).await {
                Ok(mut answer) => {
                    admission = std::mem::take(&mut answer.admission);
                    let judged = Judged {
                        asked: first..=last,
                        plan,
                        hours_per_week: profile.hours_per_week,
                        previous,
                    };
                    self.judge(&answer, judged, &mut weeks, &mut flawed)
                }
                Err(err @ LlmError::Config { .. }) => return Err(ProviderFault(err)),
                Err(err) => {
                    warn!(first, last, error = %err, "LLM gave up");
                    Verdict::GaveUp
                }
            };
            let cut = matches!(verdict, Verdict::CutOff { .. });
            let problem = verdict.problem();
            match ladder.step(last, &verdict) {
                Move::Reask if cut => {
                    info!(first, last, "answer cut off at the output limit; re-asking once")
                }
                Move::Reask if flawed.is_empty() => {
                    info!(first, last, problem, "answer invalid; re-asking once")
                }
                Move::Reask => {
                    info!(first, last, "content problems; re-asking once");
                    // Kept should the re-ask bring nothing usable: the model's weeks with their
                    // problems are worth more than template weeks.
                    replaced = std::mem::take(&mut flawed);
                }
                Move::Next if !flawed.is_empty() => {
                    info!(first, last, "content problems again; keeping the answer");
                    weeks.append(&mut flawed);
                }
                Move::Fallback(template) => {
                    let range = format!("{}-{}", template.start(), template.end());
                    for n in template {
                        match replaced.iter().position(|w| w.number == n) {
                            Some(at) => weeks.push(replaced.swap_remove(at)),
                            None => weeks.push(template::week(profile, &plan.phases, n, plan.duration_weeks)),
                        }
                    }
                    match weeks.iter().any(|w| w.source == WeekSource::Fallback) {
                        true => warn!(weeks = %range, problem, "template weeks"),
                        false => {
                            info!(weeks = %range, problem, "the re-ask brought nothing usable; the first answer's weeks are kept with their content problems")
                        }
                    }
                }
                Move::Next if cut => info!(first, last, next_span = ladder.span(), "answer truncated"),
                Move::Next => {}
            }
        }
        if let Some(span) = ladder.learned_span() {
            *span_hint = span;
        }
        let mut rungs = ladder.rungs();
        // The ladder's fallback that kept a flawed answer instead wrote no template week.
        rungs.fallback &= weeks.iter().any(|w| w.source == WeekSource::Fallback);
        let outcome = rungs.outcome();
        let quality = match self.settings.quality_checks {
            true => BatchQuality {
                problems: check_content(&weeks, previous, standard(plan, profile.hours_per_week)),
                reasked: ladder.rungs().content_reasked,
            },
            false => BatchQuality::default(),
        };
        for problem in &quality.problems {
            self.metrics.quality_problem(problem.kind());
        }
        self.metrics.batch_finished(outcome);
        self.metrics
            .batch_duration
            .observe(started.elapsed().as_secs_f64());
        self.price(&mut usage);
        let result = BatchResult {
            weeks,
            usage,
            outcome,
            quality,
        };
        Ok((result, admission))
    }

    /// The verdict on an answer; its valid weeks are added to `weeks`, or to `flawed` when the
    /// content checks find problems in them (the ladder decides whether they are kept).
    fn judge(
        &self,
        answer: &LlmResponse,
        judged: Judged<'_>,
        weeks: &mut Vec<Week>,
        flawed: &mut Vec<Week>,
    ) -> Verdict {
        let Judged {
            asked,
            plan,
            hours_per_week,
            previous,
        } = judged;
        let (first, last) = (*asked.start(), *asked.end());
        if answer.finish == FinishReason::Length {
            self.metrics.batch_failed(AnswerFault::Truncated);
            let mut salvaged = parse::salvage_weeks(&answer.text).unwrap_or_else(|refused| {
                // Nothing is kept from an oversized cut: the span halves as for any cut with
                // no complete week.
                self.metrics.batch_failed(refused.fault());
                warn!(first, last, error = %refused, "truncated answer refused");
                Vec::new()
            });
            // Only a clean prefix of the requested weeks is kept; anything odd is dropped.
            let complete = (salvaged.len() as u32).min(last - first + 1);
            salvaged.truncate(complete as usize);
            let good = match complete {
                0 => Vec::new(),
                n => check_weeks(salvaged, first..=first + n - 1, |w| plan.phase_of(w)).unwrap_or_default(),
            };
            let kept = good.len() as u32;
            weeks.extend(good);
            return Verdict::CutOff { kept };
        }
        let checked = parse::parse_answer(&answer.text)
            .map_err(Invalid::Answer)
            .and_then(|ws| check_weeks(ws, asked, |w| plan.phase_of(w)).map_err(Invalid::Weeks));
        match checked {
            Ok(good) if self.settings.quality_checks => {
                let earlier = previous.iter().chain(weeks.iter());
                let problems = check_content(&good, earlier, standard(plan, hours_per_week));
                if problems.is_empty() {
                    weeks.extend(good);
                    Verdict::Complete
                } else {
                    *flawed = good;
                    Verdict::Flawed {
                        problems: problems.iter().map(ToString::to_string).collect(),
                    }
                }
            }
            Ok(good) => {
                weeks.extend(good);
                Verdict::Complete
            }
            Err(invalid) => {
                self.metrics.batch_failed(invalid.fault());
                invalid.verdict()
            }
        }
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

    /// A request with this prompt and answer schema, under the settings and for `caller`, its
    /// output limit `output` (sized to what it asks for) within `LLM_MAX_OUTPUT_TOKENS`.
    pub(super) fn request(
        &self,
        prompt: String,
        schema: Arc<serde_json::Value>,
        caller: &Caller,
        output: OutputSize,
    ) -> LlmRequest {
        LlmRequest {
            system: prompt::SYSTEM_PROMPT.to_owned(),
            prompt,
            schema,
            max_output_tokens: output.tokens().min(self.settings.max_output_tokens),
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
        ladder: &mut Ladder,
    ) -> Result<LlmResponse, LlmError> {
        let retry = self.settings.policy.retry;
        let cap = retry.max_delay;
        let backoff = retry.backoff();
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
                self.metrics.batch_failed(err);
                warn!(error = %err, delay_ms = delay.as_millis() as u64, "LLM call failed; retrying");
            })
            .await;
        let spent = *attempts.lock().expect("usage lock");
        if spent.llm_calls > 1 {
            ladder.retried();
        }
        *usage += spent;
        if let Err(err) = &result {
            self.metrics.batch_failed(err);
        }
        result
    }

    async fn attempt(&self, request: &LlmRequest, usage: &Mutex<Usage>) -> Result<LlmResponse, LlmError> {
        let (provider, model) = (self.llm.name(), self.llm.model());
        // Boxed, and only with a budget: every call in flight would otherwise carry room for
        // the budget's database futures.
        let reservation = match self.budget.is_on() {
            true => {
                let charge = Charge {
                    prompt: estimate_tokens(&request.system) + estimate_tokens(&request.prompt),
                    max_output: u64::from(request.max_output_tokens),
                };
                Some(Box::pin(self.budget.reserve(charge, request.bulk)).await)
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
        let result = self.llm.complete(request).instrument(call).await;
        if matches!(&result, Err(e) if e.status() == "http_429") {
            self.metrics.rate_limited.inc();
        }
        if let Some(reservation) = reservation {
            let outcome = result.as_ref().map(|a| {
                let used = Used {
                    input: a.usage.input,
                    output: a.usage.output,
                };
                (used, a.limits)
            });
            Box::pin(self.budget.settle(reservation, outcome)).await;
        }
        let status = CallStatus::from(&result);
        self.metrics.llm_call(provider, model, status, started.elapsed());
        let mut spent = usage.lock().expect("usage lock");
        spent.llm_calls += 1;
        debug!(
            attempt = spent.llm_calls,
            status = status.as_str(),
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
            self.metrics.llm_usage(answer.usage);
        }
        result
    }
}

/// What an answer is judged against: the weeks asked for, the plan (phases and outline), the
/// learner's hours and the batch before.
struct Judged<'a> {
    asked: RangeInclusive<u32>,
    plan: &'a Plan,
    hours_per_week: u32,
    previous: &'a [Week],
}

/// The content checks' standard for a batch of `plan`.
fn standard(plan: &Plan, hours_per_week: u32) -> Standard<'_> {
    Standard {
        hours_per_week,
        outline: plan.outline.as_ref().map_or(&[], |o| o.weeks.as_slice()),
    }
}

/// What a call asks for, to size its output limit: a provider that charges the whole
/// `max_tokens` at arrival (OpenAI) counts an unsized limit against the budget in full, and a
/// limit close to the answer keeps a reservation close to what is used. An answer cut off at
/// the limit anyway is salvaged and the rest asked for (the ladder), and the fleet learns the
/// shorter span.
#[derive(Debug, Clone, Copy)]
pub(super) enum OutputSize {
    /// A batch of this many weeks.
    Weeks(u32),
    /// The outline of a roadmap of this many weeks.
    Outline(u32),
}

/// A batch week's answer at most, with a margin: seven days of tasks are about 7 KB of JSON,
/// some 1,800 tokens.
const BATCH_TOKENS_PER_WEEK: u32 = 2_400;
/// An outline's week (a title and goals, about 80 tokens), and its phases and envelope.
const OUTLINE_TOKENS_PER_WEEK: u32 = 120;
const OUTLINE_BASE_TOKENS: u32 = 400;

impl OutputSize {
    pub(super) fn tokens(self) -> u32 {
        match self {
            Self::Weeks(weeks) => weeks.max(1).saturating_mul(BATCH_TOKENS_PER_WEEK),
            Self::Outline(weeks) => {
                OUTLINE_BASE_TOKENS.saturating_add(weeks.saturating_mul(OUTLINE_TOKENS_PER_WEEK))
            }
        }
    }
}
