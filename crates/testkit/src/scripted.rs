//! A scripted model for the in-process tier: each call takes the next step of a script (an
//! answer, a cut, a broken answer, an error, a delay), and every request is recorded. Content
//! comes from the embedded mock, so answers are valid unless a step says otherwise. Runs under
//! tokio's paused clock: delays and backoff cost no wall time.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use roadmap_worker::{
    domain::brief::{Brief, OutlineBrief},
    llm::{FinishReason, Llm, LlmError, LlmRequest, LlmResponse, mock},
};
use serde_json::Value;

/// What one call does.
#[derive(Debug, Clone)]
pub enum Step {
    /// The embedded mock's answer: valid, exactly the weeks asked for.
    Answer,
    /// The valid answer cut off at the output limit after its first `weeks` complete weeks.
    CutAfter { weeks: usize },
    /// Text that is not JSON.
    InvalidJson,
    /// Valid JSON whose weeks are numbered from 100: a schema violation.
    WrongWeeks,
    /// A valid answer that repeats the tasks the prompt lists as set before (the mock's
    /// `repeat_tasks` fault).
    RepeatTasks,
    /// A valid answer whose weeks ignore the outline's titles and goals.
    IgnoreOutline,
    /// A valid answer planning this share of the learner's hours.
    UnderPlan(f64),
    /// The call fails with this error (transient ones are retried by the ladder).
    Fail(LlmError),
    /// Waits this long on the (paused) clock, then answers.
    Slow(Duration),
    /// Never answers: for a call that something else must cut short.
    Hang,
}

impl Step {
    /// A transient failure, as a 503 with this `Retry-After`.
    pub fn unavailable(retry_after: Option<Duration>) -> Self {
        Self::Fail(LlmError::Transient {
            status: "http_503",
            message: "scripted 503".into(),
            retry_after,
        })
    }

    /// A configuration fault, as a 401.
    pub fn unauthorized() -> Self {
        Self::Fail(LlmError::Config {
            status: "http_401",
            message: "scripted 401".into(),
        })
    }
}

/// One request the model received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// An outline request (weeks 0..=0); otherwise a batch of weeks.
    pub outline: bool,
    pub first_week: u32,
    pub last_week: u32,
    /// The request carried the problems of a rejected answer.
    pub reask: bool,
    /// When it arrived, on tokio's clock.
    pub at: tokio::time::Instant,
}

/// The scripted model; clones share the script and the log.
#[derive(Debug, Clone, Default)]
pub struct ScriptedLlm {
    script: Arc<Mutex<VecDeque<Step>>>,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl ScriptedLlm {
    /// A model that takes `steps` in order, then answers every call validly.
    pub fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Self {
            script: Arc::new(Mutex::new(steps.into_iter().collect())),
            calls: Arc::default(),
        }
    }

    /// Every request so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("scripted calls").clone()
    }

    /// The week ranges of the batch requests, in order.
    pub fn asked(&self) -> Vec<(u32, u32)> {
        self.calls()
            .iter()
            .filter(|c| !c.outline)
            .map(|c| (c.first_week, c.last_week))
            .collect()
    }

    fn record(&self, request: &LlmRequest) {
        let (outline, first_week, last_week) = match Brief::parse(&request.prompt) {
            Some(brief) => (false, brief.first_week, brief.last_week),
            None => (OutlineBrief::parse(&request.prompt).is_some(), 0, 0),
        };
        self.calls.lock().expect("scripted calls").push(Call {
            outline,
            first_week,
            last_week,
            reask: request.prompt.contains("Your previous answer was rejected"),
            at: tokio::time::Instant::now(),
        });
    }
}

impl Llm for ScriptedLlm {
    async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        self.record(request);
        let step = self
            .script
            .lock()
            .expect("scripted steps")
            .pop_front()
            .unwrap_or(Step::Answer);
        let valid = || {
            mock::answer_value(&request.prompt).map_err(|message| LlmError::Refused {
                status: "http_400",
                message,
            })
        };
        let (text, finish) = match step {
            Step::Answer => (valid()?.to_string(), FinishReason::Stop),
            Step::Slow(delay) => {
                tokio::time::sleep(delay).await;
                (valid()?.to_string(), FinishReason::Stop)
            }
            Step::Hang => std::future::pending().await,
            Step::Fail(err) => return Err(err),
            Step::InvalidJson => ("{\"weeks\": [ this is not JSON".to_owned(), FinishReason::Stop),
            Step::WrongWeeks => {
                let mut value = valid()?;
                renumber(&mut value, 100);
                (value.to_string(), FinishReason::Stop)
            }
            Step::CutAfter { weeks } => (cut_after(&valid()?, weeks), FinishReason::Length),
            Step::RepeatTasks | Step::IgnoreOutline | Step::UnderPlan(_) => {
                let mut value = valid()?;
                match step {
                    Step::RepeatTasks => mock_llm::repeat_tasks(&mut value, &request.prompt),
                    Step::IgnoreOutline => mock_llm::ignore_outline(&mut value),
                    Step::UnderPlan(share) => mock_llm::under_plan(&mut value, share),
                    _ => unreachable!("matched above"),
                }
                (value.to_string(), FinishReason::Stop)
            }
        };
        Ok(LlmResponse::estimated(request, text, finish))
    }

    fn name(&self) -> &'static str {
        "scripted"
    }

    fn model(&self) -> &str {
        "scripted"
    }
}

fn renumber(answer: &mut Value, from: u64) {
    if let Some(weeks) = answer.get_mut("weeks").and_then(Value::as_array_mut) {
        for (i, week) in weeks.iter_mut().enumerate() {
            week["number"] = Value::from(from + i as u64);
        }
    }
}

/// `{"weeks":[w1,…,wn,{"number": ` as a model cut off mid-answer writes it.
fn cut_after(answer: &Value, weeks: usize) -> String {
    let all = answer["weeks"].as_array().cloned().unwrap_or_default();
    let mut text = String::from("{\"weeks\":[");
    for week in all.iter().take(weeks) {
        text.push_str(&week.to_string());
        text.push(',');
    }
    text.push_str("{\"number\": ");
    text
}
