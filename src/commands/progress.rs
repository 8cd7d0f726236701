//! The progress bar of `enqueue --wait` and `demo`: batches stored out of the job's total, the
//! tokens and the time so far, driven by the job's `roadmap.progress` events. Without a terminal on stderr
//! (a pipe, CI) it prints one line per stored batch instead.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::client::ReceivedEvent;

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

    /// Takes one progress event of the job.
    pub fn progress(&mut self, event: &ReceivedEvent) {
        let (done, total) = (
            event.body["batches_done"].as_u64().unwrap_or(0),
            event.body["batches_total"].as_u64().unwrap_or(0),
        );
        if self.bar.is_hidden() {
            eprintln!(
                "  batch {done}/{total} stored ({} tokens so far)",
                event.body["input_tokens"].as_u64().unwrap_or(0)
                    + event.body["output_tokens"].as_u64().unwrap_or(0)
            );
            return;
        }
        self.bar.set_length(total);
        // Phases are written side by side: a late event never moves the bar back.
        self.bar.set_position(done.max(self.bar.position()));
        let tokens = |field: &str| event.body[field].as_u64().unwrap_or(0);
        self.tokens = self.tokens.max(tokens("input_tokens") + tokens("output_tokens"));
        self.bar.set_message(format!("{} tokens", self.tokens));
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
