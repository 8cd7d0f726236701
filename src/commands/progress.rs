//! The progress bar of `enqueue --wait` and `demo`: batches stored out of the job's total, the
//! tokens and the time so far, driven by the job's `roadmap.progress` events. Without a terminal on stderr
//! (a pipe, CI) it prints one line per stored batch instead.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::{client::ReceivedEvent, domain::event::EventKind};

pub struct Bar {
    bar: ProgressBar,
    tokens: u64,
}

impl Bar {
    pub fn new() -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:32} {percent:>3}% {pos}/{len} batches {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message("waiting for the first batch");
        bar.enable_steady_tick(Duration::from_millis(120));
        Self { bar, tokens: 0 }
    }

    /// Takes one acceptance or progress event of the job.
    pub fn progress(&mut self, event: &ReceivedEvent) {
        if let Some(line) = self.take(&event.body) {
            eprintln!("{line}");
        }
    }

    /// Moves the bar to `body`'s figures; without a terminal, the line to print for it. Events
    /// leave in order, but one the relay sent late (after a broker hiccup) can come after later
    /// ones: it never moves the figures back, and prints nothing.
    fn take(&mut self, body: &serde_json::Value) -> Option<String> {
        let field = |name: &str| body[name].as_u64().unwrap_or(0);
        let (done, total) = (field("batches_done"), field("batches_total"));
        if body["event"] == EventKind::Accepted.routing_key() {
            // A claim: the job left the queue. Its figures are those of the batches stored.
            if self.bar.length() == Some(0) {
                self.bar.set_length(total);
            }
            self.bar.set_position(done.max(self.bar.position()));
            let line = match done {
                0 => format!("  accepted by a worker: {total} batches"),
                _ => format!("  resumed by a worker: {done}/{total} batches stored"),
            };
            if !self.bar.is_hidden() {
                self.bar.set_message("working");
                return None;
            }
            return Some(line);
        }
        let late = done <= self.bar.position();
        self.tokens = self.tokens.max(field("input_tokens") + field("output_tokens"));
        self.bar.set_length(total);
        self.bar.set_position(done.max(self.bar.position()));
        if !self.bar.is_hidden() {
            self.bar.set_message(format!("{} tokens", self.tokens));
            return None;
        }
        (!late).then(|| format!("  batch {done}/{total} stored ({} tokens so far)", self.tokens))
    }

    /// Ends the bar: full on success, where it stopped otherwise, with `message`.
    pub fn finish(&self, completed: bool, message: &str) {
        if completed {
            let total = self.bar.length().unwrap_or(0);
            self.bar.set_position(total);
        }
        self.bar.finish_with_message(message.to_owned());
    }
}

impl Default for Bar {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_late_event_moves_no_figure_back_and_prints_nothing() {
        let mut bar = Bar {
            bar: ProgressBar::hidden(),
            tokens: 0,
        };
        let event = |done: u64, tokens: u64| json!({"batches_done": done, "batches_total": 4, "input_tokens": tokens, "output_tokens": 1});
        let accepted =
            json!({"event": "roadmap.accepted", "batches_done": 0, "batches_total": 4, "claim": 1});
        let lines: Vec<Option<String>> = [
            accepted,
            event(1, 99),
            event(3, 299),
            event(2, 199),
            event(4, 399),
        ]
        .iter()
        .map(|e| bar.take(e))
        .collect();
        assert_eq!(
            lines,
            [
                Some("  accepted by a worker: 4 batches".to_owned()),
                Some("  batch 1/4 stored (100 tokens so far)".to_owned()),
                Some("  batch 3/4 stored (300 tokens so far)".to_owned()),
                None,
                Some("  batch 4/4 stored (400 tokens so far)".to_owned()),
            ]
        );
        assert_eq!(bar.bar.position(), 4);
    }
}
