//! The mock server's faults: what can go wrong, the plan that says when, and the broken
//! responses that are not a variation of a normal answer (error statuses, hostile retry hints,
//! bodies too large to hold in memory).

use std::{collections::BTreeMap, convert::Infallible};

use axum::{
    Json,
    body::{Body, Bytes},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header::CONTENT_TYPE},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One injected fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// An HTTP error status, with an optional Retry-After in seconds.
    Status { code: u16, retry_after: Option<f64> },
    /// The answer cut after `tokens` tokens, finish reason length / MAX_TOKENS.
    Truncate { tokens: u64 },
    /// Text that is not JSON.
    InvalidJson,
    /// Valid JSON wrapped in markdown fences.
    Fences,
    /// Week numbers shifted by 100.
    WrongWeeks,
    /// Answer after `ms` milliseconds.
    Slow { ms: u64 },
    /// 401 with an OpenAI-style "invalid API key" body.
    AuthFailure,
    /// An HTTP error status with retry hints as a broken or hostile server sends them: `headers`
    /// verbatim (`{"retry-after": "1e20"}`), `raw_headers` as bytes, for values that are not
    /// UTF-8 (`{"retry-after": [49, 255]}`), and `retry_delay` as Gemini's
    /// `RetryInfo.retryDelay` in the body. Names or values that HTTP cannot carry are skipped.
    RetryHints {
        code: u16,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        #[serde(default)]
        raw_headers: BTreeMap<String, Vec<u8>>,
        #[serde(default)]
        retry_delay: Option<String>,
    },
    /// A body of `bytes` bytes plus its JSON envelope, generated while it is sent and never held
    /// in memory: an answer text of `x`s, or with `code` an error message of that status.
    HugeBody {
        bytes: u64,
        #[serde(default)]
        code: Option<u16>,
    },
    /// The answer's first weeks, then `bytes` of spaces, cut before the array closes (finish
    /// reason length / MAX_TOKENS): a model stuck writing whitespace in JSON mode.
    Whitespace { bytes: u64 },
    /// A valid answer whose tasks are the ones the prompt lists as already set (the previous
    /// batch's); with no list (a first batch), every week a copy of the first one's days.
    RepeatTasks,
    /// A valid answer whose weeks ignore the outline: another title and goals.
    IgnoreOutline,
    /// A valid answer whose task minutes are `share` of what they should be (0.3: 3 hours of
    /// tasks in a 10-hour week).
    UnderPlan { share: f64 },
}

/// Rewrites a valid batch answer as [`Fault::RepeatTasks`] does, for the batch prompt `prompt`.
pub fn repeat_tasks(answer: &mut Value, prompt: &str) {
    let titles = roadmap_worker::pipeline::prompt::set_before(prompt);
    let Some(weeks) = answer.get_mut("weeks").and_then(Value::as_array_mut) else {
        return;
    };
    if titles.is_empty() {
        let Some(days) = weeks.first().map(|w| w["days"].clone()) else {
            return;
        };
        for week in weeks.iter_mut().skip(1) {
            week["days"] = days.clone();
        }
        return;
    }
    let tasks = weeks
        .iter_mut()
        .flat_map(|w| w["days"].as_array_mut().into_iter().flatten())
        .flat_map(|d| d["tasks"].as_array_mut().into_iter().flatten());
    for (task, title) in tasks.zip(titles.iter().cycle()) {
        task["title"] = json!(title);
    }
}

/// Rewrites a valid batch answer as [`Fault::IgnoreOutline`] does.
pub fn ignore_outline(answer: &mut Value) {
    for week in answer["weeks"].as_array_mut().into_iter().flatten() {
        week["title"] = json!("General study week");
        week["goals"] = json!(["Keep learning every day"]);
    }
}

/// Rewrites a valid batch answer as [`Fault::UnderPlan`] does.
pub fn under_plan(answer: &mut Value, share: f64) {
    let tasks = answer["weeks"]
        .as_array_mut()
        .into_iter()
        .flatten()
        .flat_map(|w| w["days"].as_array_mut().into_iter().flatten())
        .flat_map(|d| d["tasks"].as_array_mut().into_iter().flatten());
    for task in tasks {
        let minutes = task["minutes"].as_f64().unwrap_or(60.0);
        task["minutes"] = json!(((minutes * share).round() as u64).max(5));
    }
}

/// A fault with its probability per request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RatedFault {
    pub rate: f64,
    pub fault: Fault,
}

/// What the server does wrong, and when.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultPlan {
    /// Applied to the first requests, one each, in order.
    #[serde(default)]
    pub script: Vec<Fault>,
    /// After the script: each request draws at most one of these by its rate.
    #[serde(default)]
    pub rates: Vec<RatedFault>,
    /// Seed of the random draws, so a run can be repeated.
    #[serde(default)]
    pub seed: u64,
    /// Applied to the first outline requests, one each, in order. Outline requests take no
    /// fault from `script` or `rates`, so that a plan written for batches hits batches.
    #[serde(default)]
    pub outline_script: Vec<Fault>,
}

/// A plan being played: how far the script is, and the random state.
#[derive(Debug)]
pub(super) struct Draws {
    plan: FaultPlan,
    scripted: usize,
    outlines: usize,
    rng: u64,
}

impl Draws {
    pub(super) fn new(plan: FaultPlan) -> Self {
        Self {
            rng: plan.seed ^ 0x9E37_79B9_7F4A_7C15,
            plan,
            scripted: 0,
            outlines: 0,
        }
    }

    /// The fault of the next outline request, if any.
    pub(super) fn next_outline(&mut self) -> Option<Fault> {
        let fault = self.plan.outline_script.get(self.outlines).cloned();
        self.outlines += 1;
        fault
    }

    /// The fault of the next request, if any.
    pub(super) fn next(&mut self) -> Option<Fault> {
        if let Some(fault) = self.plan.script.get(self.scripted).cloned() {
            self.scripted += 1;
            return Some(fault);
        }
        // xorshift64*: deterministic per seed, good enough to spread faults.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        let draw = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
        let mut acc = 0.0;
        for rated in &self.plan.rates {
            acc += rated.rate;
            if draw < acc {
                return Some(rated.fault.clone());
            }
        }
        None
    }
}

pub(super) fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

pub(super) fn error(status: StatusCode, message: &str, retry_after: Option<f64>) -> Response {
    let mut headers = HeaderMap::new();
    if let Some(v) = retry_after.and_then(|secs| HeaderValue::from_str(&secs.to_string()).ok()) {
        headers.insert("retry-after", v);
    }
    (
        status,
        headers,
        Json(json!({"error": {"message": message, "code": status.as_u16()}})),
    )
        .into_response()
}

/// The response of [`Fault::RetryHints`].
pub(super) fn retry_hints(
    code: u16,
    headers: &BTreeMap<String, String>,
    raw_headers: &BTreeMap<String, Vec<u8>>,
    retry_delay: Option<&str>,
) -> Response {
    let status = status(code);
    let mut body = json!({"error": {"message": "injected failure", "code": status.as_u16()}});
    if let Some(delay) = retry_delay {
        body["error"]["details"] = json!([{
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": delay,
        }]);
    }
    let mut map = HeaderMap::new();
    let verbatim = headers.iter().map(|(n, v)| (n, v.as_bytes()));
    for (name, value) in verbatim.chain(raw_headers.iter().map(|(n, v)| (n, v.as_slice()))) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            map.append(name, value);
        }
    }
    (status, map, Json(body)).into_response()
}

/// Where the filler goes in a response envelope; plain ASCII, so JSON leaves it as written.
pub(super) const FILL_MARKER: &str = "@@FILL@@";

/// Bytes streamed in place of [`FILL_MARKER`]: `len` copies of `byte`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Filler {
    pub byte: u8,
    pub len: u64,
}

/// `envelope` as JSON with the filler streamed in place of [`FILL_MARKER`], chunk by chunk as
/// the client reads, so a body of any size costs the server one chunk of memory.
pub(super) fn streamed(status: StatusCode, envelope: &Value, filler: Filler) -> Response {
    const CHUNK: usize = 64 * 1024;
    let text = envelope.to_string();
    let (head, tail) = text.split_once(FILL_MARKER).unwrap_or((&text, ""));
    let (head, tail) = (Bytes::from(head.to_owned()), Bytes::from(tail.to_owned()));
    // One buffer for every chunk: `Bytes` clones share it.
    let fill = Bytes::from(vec![filler.byte; CHUNK]);
    let full = usize::try_from(filler.len / CHUNK as u64).unwrap_or(usize::MAX);
    let rest = (filler.len % CHUNK as u64) as usize;
    let chunks = std::iter::once(head)
        .chain(std::iter::repeat_n(fill.clone(), full))
        .chain([fill.slice(..rest), tail]);
    let body = Body::from_stream(futures_util::stream::iter(chunks.map(Ok::<_, Infallible>)));
    (status, [(CONTENT_TYPE, "application/json")], body).into_response()
}

/// The response of [`Fault::HugeBody`] with an error status.
pub(super) fn huge_error(code: u16, bytes: u64) -> Response {
    let status = status(code);
    let envelope = json!({"error": {"message": FILL_MARKER, "code": status.as_u16()}});
    streamed(
        status,
        &envelope,
        Filler {
            byte: b'x',
            len: bytes,
        },
    )
}
