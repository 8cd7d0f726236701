//! Reading a model's answer: markdown fences stripped, strict parse, and salvage of the complete
//! weeks at the front of a truncated answer.

use serde::de::DeserializeOwned;

use crate::domain::{AnswerFault, Week, outline::OutlineOutput, roadmap::BatchOutput};

/// Largest answer parsed at all; anything bigger is refused unread (about 10× a full batch).
pub const MAX_ANSWER_BYTES: usize = 512 * 1024;

/// Why an answer could not be read as weeks. The `Display` text is handed back to the model
/// on a re-ask.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("the answer is {0} bytes, over the limit")]
    TooLarge(usize),
    #[error("the answer is not valid JSON: {0}")]
    NotJson(String),
    #[error("the answer does not have the required shape: {0}")]
    WrongShape(String),
}

impl AnswerError {
    pub fn fault(&self) -> AnswerFault {
        match self {
            // Refused unread: as far as the worker could tell, it is not JSON it can use.
            Self::TooLarge(_) | Self::NotJson(_) => AnswerFault::InvalidJson,
            Self::WrongShape(_) => AnswerFault::InvalidSchema,
        }
    }
}

/// Parses a complete answer into weeks, or says what is wrong with it.
pub fn parse_answer(text: &str) -> Result<Vec<Week>, AnswerError> {
    parse_json::<BatchOutput>(text).map(|output| output.weeks)
}

/// Parses a complete answer to the outline call.
pub fn parse_outline(text: &str) -> Result<OutlineOutput, AnswerError> {
    parse_json(text)
}

fn parse_json<T: DeserializeOwned>(text: &str) -> Result<T, AnswerError> {
    if text.len() > MAX_ANSWER_BYTES {
        return Err(AnswerError::TooLarge(text.len()));
    }
    let body = strip_fences(text);
    // Straight into the typed shape, with no JSON tree in between; the error's category still
    // tells text that is not JSON from JSON of the wrong shape.
    let parsed = serde_json::from_str(body).or_else(|e| {
        // A raw line break inside a string (llama-cpp-python's grammar lets one through) is
        // read as a space, as anywhere between tokens: nothing else of the answer changes.
        match body.contains(|c: char| c.is_ascii_control()) && e.is_syntax() {
            true => serde_json::from_str(&body.replace(|c: char| c.is_ascii_control(), " ")),
            false => Err(e),
        }
    });
    parsed.map_err(|e| match e.classify() {
        serde_json::error::Category::Data => AnswerError::WrongShape(e.to_string()),
        _ => AnswerError::NotJson(e.to_string()),
    })
}

/// Weeks that are complete at the start of a cut-off answer: `{"weeks":[{..},{..},{..` gives
/// the first two. Each salvaged week must still parse on its own. An answer over
/// [`MAX_ANSWER_BYTES`] is refused unread, as a complete one is: a cut-off answer is no smaller
/// a risk (a model stuck writing whitespace until its limit sends exactly that).
pub fn salvage_weeks(text: &str) -> Result<Vec<Week>, AnswerError> {
    if text.len() > MAX_ANSWER_BYTES {
        return Err(AnswerError::TooLarge(text.len()));
    }
    let body = strip_fences(text);
    let Some(key) = body.find("\"weeks\"") else {
        return Ok(Vec::new());
    };
    let Some(open) = body[key..].find('[').map(|i| key + i + 1) else {
        return Ok(Vec::new());
    };
    let mut weeks = Vec::new();
    let (mut depth, mut start) = (0usize, None);
    for (i, b) in crate::json_scan::brackets(&body[open..]).map(|(i, b)| (i + open, b)) {
        if matches!(b, b'{' | b'[') {
            if depth == 0 {
                start = Some(i);
            }
            depth += 1;
            continue;
        }
        if depth == 0 {
            break; // the end of the weeks array: the answer was complete after all
        }
        depth -= 1;
        if depth == 0 {
            let Some(s) = start.take() else { break };
            match serde_json::from_str::<Week>(&body[s..=i]) {
                Ok(week) => weeks.push(week),
                Err(_) => break,
            }
        }
    }
    Ok(weeks)
}

/// Models often wrap JSON in ```json fences despite being told not to.
fn strip_fences(text: &str) -> &str {
    let trimmed = text.trim();
    let Some(rest) = trimmed.strip_prefix("```") else {
        return trimmed;
    };
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_alphanumeric());
    rest.strip_suffix("```").unwrap_or(rest).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn week_json(n: u32) -> String {
        format!(
            r#"{{"number":{n},"phase":1,"title":"W{n} {{[\"x","goals":["g"],"days":[{{"day":1,"title":"d","tasks":[{{"title":"t","description":"d","kind":"learn","minutes":30,"resources":[]}}]}}]}}"#
        )
    }

    #[test]
    fn fenced_answers_parse() {
        let text = format!("```json\n{{\"weeks\":[{}]}}\n```", week_json(1));
        assert_eq!(parse_answer(&text).unwrap()[0].number, 1);
        assert!(parse_answer("{\"weeks\":").is_err());
    }

    #[test]
    fn a_raw_line_break_inside_a_string_reads_as_a_space() {
        let text = format!("{{\"weeks\":[{}]}}", week_json(2)).replace("W2 ", "W2\n\t");
        let weeks = parse_answer(&text).expect("read despite the raw control characters");
        assert!(weeks[0].title.starts_with("W2  {"), "{}", weeks[0].title);
        let broken = "{\"weeks\":[\n{\"number\":\"x\n\"}]}";
        assert!(matches!(parse_answer(broken), Err(AnswerError::WrongShape(_))));
        assert!(matches!(
            parse_answer("{\"weeks\":[\n"),
            Err(AnswerError::NotJson(_))
        ));
    }

    #[test]
    fn complete_weeks_are_salvaged_from_a_cut() {
        let full = format!(
            "{{\"weeks\":[{},{},{}]}}",
            week_json(4),
            week_json(5),
            week_json(6)
        );
        let cut = &full[..full.len() - 40];
        let weeks = salvage_weeks(cut).unwrap();
        assert_eq!(weeks.iter().map(|w| w.number).collect::<Vec<_>>(), vec![4, 5]);
        assert_eq!(salvage_weeks(&full).unwrap().len(), 3);
        assert!(salvage_weeks("{\"weeks\":[{\"number\":1,").unwrap().is_empty());
    }

    #[test]
    fn oversized_answers_are_refused_by_salvage_too() {
        // Complete weeks followed by whitespace up to past the limit, then the cut.
        let mut cut = format!("{{\"weeks\":[{},{},", week_json(1), week_json(2));
        cut.push_str(&" ".repeat(MAX_ANSWER_BYTES));
        assert_eq!(salvage_weeks(&cut), Err(AnswerError::TooLarge(cut.len())));
        let full = format!("{{\"weeks\":[{}]}}{}", week_json(1), " ".repeat(MAX_ANSWER_BYTES));
        assert_eq!(parse_answer(&full), Err(AnswerError::TooLarge(full.len())));
        // At the limit exactly, both still read.
        assert_eq!(salvage_weeks(&cut[..MAX_ANSWER_BYTES]).unwrap().len(), 2);
    }
}
