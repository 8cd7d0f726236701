//! Reading a provider's HTTP response as hostile input: bodies read in chunks up to a cap, retry
//! hints parsed with checked arithmetic, error messages cut short. Nothing a server sends can
//! panic a job task or make the worker buffer more than the cap.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::LlmError;

/// Largest successful response body read. About 8× the largest answer the pipeline parses at
/// all (`MAX_ANSWER_BYTES`, 512 KiB) to leave room for JSON escaping and the envelope; a body
/// past it cannot hold a useful answer, so the rest is never read.
pub(crate) const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Largest error (4xx/5xx) body read: enough for any real error with its details (Gemini's
/// `RetryInfo`), and only a short prefix of it reaches a message anyway.
pub(crate) const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Characters of provider text kept in an error message: messages reach logs, and a body may
/// echo the request.
const MAX_MESSAGE_CHARS: usize = 200;

/// Longest retry hint taken from a server: the most `LLM_MAX_RETRY_DELAY_MS` allows, and the
/// ladder caps every wait at that setting anyway. This bound keeps absurd values (`1e20`) in
/// range of `Duration`.
pub(crate) const MAX_RETRY_HINT: Duration = Duration::from_secs(3600);

/// The `status` label of a body over [`MAX_BODY_BYTES`]. Such a body is treated as transient: a
/// broken proxy or a runaway generation may not repeat, and if it does the retries run out and
/// the ladder falls back to template weeks, as for any other transient failure.
pub(crate) const BODY_TOO_LARGE: &str = "body_too_large";

/// The remaining tokens and requests a provider's headers announce. OpenAI names them
/// `x-ratelimit-remaining-*`; Anthropic-style servers `anthropic-ratelimit-*-remaining`. A value
/// that is not a whole number is ignored.
pub(crate) fn rate_limits(headers: &reqwest::header::HeaderMap) -> super::RateLimits {
    let first = |names: &[&str]| {
        names.iter().find_map(|name| {
            headers
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
    };
    super::RateLimits {
        remaining_tokens: first(&[
            "x-ratelimit-remaining-tokens",
            "anthropic-ratelimit-tokens-remaining",
        ]),
        remaining_requests: first(&[
            "x-ratelimit-remaining-requests",
            "anthropic-ratelimit-requests-remaining",
        ]),
    }
}

/// A request's JSON body, to send with `Content-Type: application/json`. In place of reqwest's
/// `json()`, whose buffer grows by doubling and is sent as it is: the body waits in memory for
/// as long as its call (reqwest keeps it for a redirect), so up to half of it would be empty
/// room in every call in flight.
fn json_body(body: &Value) -> Vec<u8> {
    // A `Value` always serialises.
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.shrink_to_fit();
    bytes
}

/// A provider call: `body` POSTed as JSON to `endpoint` (see [`json_body`]).
pub(crate) fn post_json(http: &reqwest::Client, endpoint: &str, body: &Value) -> reqwest::RequestBuilder {
    http.post(endpoint)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(json_body(body))
}

/// Reads up to `cap` bytes of the body; `true` if there was more (left unread).
async fn read_capped(
    response: &mut reqwest::Response,
    cap: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    // Sized from the declared length where there is one: a body may wait in memory for its
    // place at the gate, and growth by doubling would leave up to half of it empty.
    let declared = response
        .content_length()
        .map_or(0, |n| n.min(cap as u64) as usize);
    let mut body = Vec::with_capacity(declared);
    while let Some(chunk) = response.chunk().await? {
        let room = cap - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    body.shrink_to_fit();
    Ok((body, false))
}

fn too_large(detail: &str) -> LlmError {
    LlmError::Transient {
        status: BODY_TOO_LARGE,
        message: format!("response body {detail}, over the {MAX_BODY_BYTES}-byte limit; not read"),
        retry_after: None,
    }
}

/// Reads a successful response's body, at most [`MAX_BODY_BYTES`], and decodes it as JSON.
pub(crate) async fn read_json<T: DeserializeOwned>(mut response: reqwest::Response) -> Result<T, LlmError> {
    // A declared length over the cap fails before a byte is read.
    if let Some(len) = response.content_length().filter(|n| *n > MAX_BODY_BYTES as u64) {
        return Err(too_large(&format!("declared as {len} bytes")));
    }
    let (body, more) = read_capped(&mut response, MAX_BODY_BYTES)
        .await
        .map_err(LlmError::from_reqwest)?;
    if more {
        return Err(too_large("streamed"));
    }
    serde_json::from_slice(&body).map_err(|e| LlmError::Transient {
        status: "decode",
        // serde's message can quote a whole string value from the body.
        message: short(&format!("response is not the expected JSON: {e}")),
        retry_after: None,
    })
}

/// The start of an error response's body, at most [`MAX_ERROR_BODY_BYTES`]; empty if it cannot
/// be read. The rest of a longer body is left unread.
pub(crate) async fn read_error_body(mut response: reqwest::Response) -> String {
    match read_capped(&mut response, MAX_ERROR_BODY_BYTES).await {
        // Lossy: the cap may split a character, and a server may send bytes that are not UTF-8.
        Ok((body, _)) => String::from_utf8_lossy(&body).into_owned(),
        Err(_) => String::new(),
    }
}

/// A short message from an error body, never the whole body (it may echo the request).
pub(crate) fn error_message(body: &str) -> String {
    let from_json = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    short(from_json.as_deref().unwrap_or(body))
}

fn short(text: &str) -> String {
    text.chars().take(MAX_MESSAGE_CHARS).collect()
}

/// A delay of `secs` seconds from a server, or `None` if it is not a delay at all (negative,
/// NaN, infinite). Huge values are capped at [`MAX_RETRY_HINT`].
fn hint_from_secs(secs: f64) -> Option<Duration> {
    if !(secs.is_finite() && secs >= 0.0) {
        return None;
    }
    Duration::try_from_secs_f64(secs.min(MAX_RETRY_HINT.as_secs_f64())).ok()
}

/// Parses a `Retry-After` header value: delay-seconds or an HTTP date.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return hint_from_secs(secs);
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    // chrono's dates span ±262,000 years and its deltas ±292 million: the subtraction is total.
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO).min(MAX_RETRY_HINT))
}

/// Parses durations such as `1s`, `250ms`, `6m0s`, `1h2m3.5s` (OpenAI's x-ratelimit-reset-*,
/// Gemini's `retryDelay`). A bare trailing number counts as seconds.
pub(crate) fn parse_go_duration(value: &str) -> Option<Duration> {
    let mut rest = value.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            "" => 1.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        // f64 arithmetic saturates to infinity rather than overflowing; `hint_from_secs` checks.
        total += n * unit;
    }
    hint_from_secs(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_body_holds_no_spare_room() {
        let body = serde_json::json!({"messages": [{"role": "user", "content": "x".repeat(5000)}]});
        let bytes = json_body(&body);
        assert_eq!(bytes.len(), bytes.capacity());
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), body);
    }

    #[test]
    fn retry_hints_parse() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("2m3.5s"), Some(Duration::from_millis(123_500)));
        assert_eq!(parse_go_duration("17"), Some(Duration::from_secs(17)));
        assert_eq!(parse_go_duration("x"), None);
    }

    #[test]
    fn absurd_retry_after_values_are_capped_or_ignored() {
        for huge in ["1e20", "1e308", "18446744073709551616", "99999999999999999999999"] {
            assert_eq!(parse_retry_after(huge), Some(MAX_RETRY_HINT), "{huge}");
        }
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT"),
            Some(MAX_RETRY_HINT)
        );
        let ignored = [
            "-1",
            "-0.5",
            "NaN",
            "nan",
            "inf",
            "-inf",
            "infinity",
            "1e999",
            "",
            " ",
            "abc",
            "1,5",
            "0x10",
            "Mon, 99 Foo 2015",
        ];
        for value in ignored {
            assert_eq!(parse_retry_after(value), None, "{value:?}");
        }
        // `-0` is zero, not negative.
        assert_eq!(parse_retry_after("-0"), Some(Duration::ZERO));
    }

    #[test]
    fn absurd_go_durations_are_capped_or_ignored() {
        let huge = [
            "99999999999h",
            "99999999999999999999s",
            "1000000000000000000000h",
            "5000h",
        ];
        for value in huge {
            assert_eq!(parse_go_duration(value), Some(MAX_RETRY_HINT), "{value}");
        }
        // So many digits that the number itself is infinite: not a delay.
        assert_eq!(parse_go_duration(&format!("{}s", "9".repeat(400))), None);
        let ignored = [
            "", " ", "abc", "1e20s", "-1s", "NaN", "inf", "1.2.3s", "s", "ms", "1x", "1hh", "..s", "1s-",
            "1 s",
        ];
        for value in ignored {
            assert_eq!(parse_go_duration(value), None, "{value:?}");
        }
        let micros = parse_go_duration("3µs").unwrap().as_nanos();
        assert!(micros.abs_diff(3000) <= 1, "{micros}");
    }

    #[test]
    fn error_messages_are_short() {
        let long = "x".repeat(10_000);
        let body = format!(r#"{{"error":{{"message":"{long}"}}}}"#);
        assert_eq!(error_message(&body).len(), MAX_MESSAGE_CHARS);
        assert_eq!(error_message(&long).len(), MAX_MESSAGE_CHARS);
        assert_eq!(error_message(r#"{"message":"no"}"#), "no");
    }
}
