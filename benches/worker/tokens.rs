//! Part 4: input tokens per roadmap, the worker's window against a chat's full history.
//!
//! **Input tokens per roadmap**, computed offline with the worker's own prompt renderer, the
//! mock's answers and `llm::estimate_tokens` (4 characters a token), for 12, 26 and 52 weeks
//! with the default BATCH_WEEKS and CONTEXT_DAYS. Window = Σ over calls of system + prompt,
//! as the worker sends them (the previous week's last days in each prompt). Full history =
//! what a chat session re-sends: each call carries the system prompt, every earlier prompt and
//! answer, and its own prompt (without the window, which the history makes redundant). Cached
//! prefix = the share of the window's input that repeats the previous call's first bytes (the
//! part a provider's prompt cache can serve; real caches count only long prefixes, in blocks).
//!
//! The plan here is the template's, cut into batches one after another with no outline: the
//! window's growth alone. The worker's own count for a 52-week job, with its outline call, the
//! outline's lines in each prompt and its phases cut apart, is part 5's.

use roadmap_worker::{
    config::BatchSettings,
    llm::{estimate_tokens, schema},
    pipeline::prompt::{self, Context, SYSTEM_PROMPT},
};

use crate::fixture::{FORMAT, Fixture};

pub fn tokens(measured_12_weeks: Option<f64>) {
    let defaults = BatchSettings::default();
    let system = estimate_tokens(SYSTEM_PROMPT);
    println!(
        "[4] input tokens per roadmap (llm::estimate_tokens = chars/4), BATCH_WEEKS {}, CONTEXT_DAYS {}",
        defaults.batch_weeks, defaults.context_days
    );
    println!(
        "    weeks  calls  window input  full-history input  full/window  largest call: window / full  \
         output (both)  cached prefix"
    );
    for weeks in [12, 26, 52] {
        let fx = Fixture::new(weeks);
        let (mut window, mut full, mut history, mut output) = (0, 0, 0, 0);
        let (mut window_max, mut full_max) = (0, 0);
        let mut cached = 0;
        let mut previous: Option<String> = None;
        for s in &fx.stages {
            let sent = format!("{SYSTEM_PROMPT}\n{}", s.prompt);
            if let Some(prev) = &previous {
                let shared = prev
                    .char_indices()
                    .zip(sent.chars())
                    .find(|((_, a), b)| a != b)
                    .map_or(prev.len().min(sent.len()), |((i, _), _)| i);
                cached += estimate_tokens(&sent[..shared]);
            }
            previous = Some(sent);
            let call = system + estimate_tokens(&s.prompt);
            window += call;
            window_max = window_max.max(call);
            // In a chat the history already holds the previous days: no window in the prompt.
            let bare = estimate_tokens(&prompt::render(&s.brief, Context::Start, &[], 0, None, FORMAT));
            let answer = estimate_tokens(&s.answer);
            let call = system + history + bare;
            full += call;
            full_max = full_max.max(call);
            history += bare + answer;
            output += answer;
        }
        println!(
            "    {weeks:5}  {:5}  {window:12}  {full:18}  {:10.1}x  {window_max:19} / {full_max:<6}  {output:13}  \
             {:5.1} %",
            fx.stages.len(),
            full as f64 / window as f64,
            100.0 * cached as f64 / window as f64
        );
    }
    let schema_tokens = estimate_tokens(&schema::batch_schema(1, defaults.batch_weeks).to_string());
    println!(
        "    not counted above, the same in both: the json-schema response_format, about {schema_tokens} \
         tokens per call"
    );
    if let Some(measured) = measured_12_weeks {
        println!(
            "    cross-check: part 1's mock server counted {measured:.0} input tokens per 12-week job (with \
             the outline call and the outline in each prompt; the table has neither)"
        );
    }
    println!();
}
