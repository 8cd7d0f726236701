//! Settings of the provider budget: fleet-wide rate limits, fairness between users, prices.

use clap::{Args, ValueEnum};

/// How a provider counts a call against its tokens-per-minute limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Accounting {
    /// OpenAI: the prompt (estimated from its characters) and the whole `max_tokens`, charged
    /// when the request arrives; a shorter answer gives nothing back.
    Arrival,
    /// Gemini: the prompt's tokens only ("tokens per minute (input)"); the answer does not count.
    Input,
}

impl Accounting {
    /// The provider's own: `input` for Gemini, `arrival` for every other (OpenAI and the
    /// OpenAI-compatible servers, which copy its headers when they limit at all).
    pub fn of_provider(provider: &str) -> Self {
        if provider == "gemini" {
            Self::Input
        } else {
            Self::Arrival
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Arrival => "arrival",
            Self::Input => "input",
        }
    }
}

#[derive(Debug, Clone, Default, Args)]
pub struct BudgetSettings {
    /// Requests per minute to the configured provider and model, for the whole fleet (every
    /// replica on the same database shares it). Unset: no limit of ours.
    #[arg(
        long = "llm-rpm-limit",
        id = "llm_rpm_limit",
        env = "LLM_RPM_LIMIT",
        value_name = "LLM_RPM_LIMIT",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub rpm_limit: Option<u32>,
    /// Tokens per minute for the whole fleet, counted as the provider counts them
    /// (LLM_BUDGET_ACCOUNTING). A call reserves its charge before it is sent. Unset: no limit
    /// of ours.
    #[arg(
        long = "llm-tpm-limit",
        id = "llm_tpm_limit",
        env = "LLM_TPM_LIMIT",
        value_name = "LLM_TPM_LIMIT",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub tpm_limit: Option<u64>,
    /// How the provider charges a call against LLM_TPM_LIMIT: `arrival` (OpenAI: the prompt
    /// and the whole output limit, when the request arrives, nothing given back for a shorter
    /// answer) or `input` (Gemini: the prompt's tokens only). Unset: the provider's own.
    #[arg(
        long = "llm-budget-accounting",
        id = "llm_budget_accounting",
        env = "LLM_BUDGET_ACCOUNTING",
        value_name = "LLM_BUDGET_ACCOUNTING",
        value_enum
    )]
    pub accounting: Option<Accounting>,
    /// Jobs of one user_id running at once across the fleet. A user's jobs beyond it wait their
    /// turn in the retry queue (no worker slot held, no delivery counted). Unset: unlimited.
    #[arg(
        long = "user-max-in-flight",
        id = "user_max_in_flight",
        env = "USER_MAX_IN_FLIGHT",
        value_name = "USER_MAX_IN_FLIGHT",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub user_max_in_flight: Option<u32>,
    /// Output tokens one job may use, all its calls and retries together. A job past it stops
    /// at its next batch and fails with reason `output_token_cap` (its batches stay stored).
    /// Unset: no cap.
    #[arg(
        long = "job-max-output-tokens",
        id = "job_max_output_tokens",
        env = "JOB_MAX_OUTPUT_TOKENS",
        value_name = "JOB_MAX_OUTPUT_TOKENS",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub job_max_output_tokens: Option<u64>,
    /// Price per million uncached input tokens, in the currency of your choice.
    #[arg(
        long = "llm-price-input",
        id = "llm_price_input",
        env = "LLM_PRICE_INPUT",
        value_name = "LLM_PRICE_INPUT",
        default_value_t = 0.0,
        value_parser = parse_price
    )]
    pub price_input: f64,
    /// Price per million input tokens served from the provider's prompt cache.
    #[arg(
        long = "llm-price-cached-input",
        id = "llm_price_cached_input",
        env = "LLM_PRICE_CACHED_INPUT",
        value_name = "LLM_PRICE_CACHED_INPUT",
        default_value_t = 0.0,
        value_parser = parse_price
    )]
    pub price_cached_input: f64,
    /// Price per million output tokens.
    #[arg(
        long = "llm-price-output",
        id = "llm_price_output",
        env = "LLM_PRICE_OUTPUT",
        value_name = "LLM_PRICE_OUTPUT",
        default_value_t = 0.0,
        value_parser = parse_price
    )]
    pub price_output: f64,
}

/// Prices per million tokens: finite, not negative, at most a million per million.
fn parse_price(text: &str) -> Result<f64, String> {
    let price: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number (a price per million tokens, e.g. 0.15)"))?;
    if !(0.0..=1_000_000.0).contains(&price) {
        return Err(format!(
            "{price} is out of range: a price per million tokens from 0 to 1000000"
        ));
    }
    Ok(price)
}

/// Prices per million tokens, as whole billionths of the currency unit per token.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Prices {
    pub input: f64,
    pub cached_input: f64,
    pub output: f64,
}

impl Prices {
    pub fn from_settings(settings: &BudgetSettings) -> Self {
        Self {
            input: settings.price_input,
            cached_input: settings.price_cached_input,
            output: settings.price_output,
        }
    }

    /// What `input` tokens (`cached` of them from the cache) and `output` tokens cost, in
    /// billionths of the currency unit (a price per million tokens is 1,000 billionths per
    /// token per unit of price).
    pub fn cost_nanos(&self, input: u64, cached: u64, output: u64) -> u64 {
        let cached = cached.min(input);
        let nanos = (input - cached) as f64 * self.input * 1000.0
            + cached as f64 * self.cached_input * 1000.0
            + output as f64 * self.output * 1000.0;
        // Saturating: absurd token counts from a server cannot wrap a cost negative.
        nanos.round().min(u64::MAX as f64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_per_million_tokens_and_cached_input_is_billed_apart() {
        let prices = Prices {
            input: 0.15,
            cached_input: 0.075,
            output: 0.60,
        };
        // 1,000 input (400 cached) and 2,000 output tokens:
        // 600 × 0.15 + 400 × 0.075 + 2000 × 0.60 per million = 0.00132 units.
        assert_eq!(prices.cost_nanos(1000, 400, 2000), 1_320_000);
        assert_eq!(Prices::default().cost_nanos(1000, 0, 1000), 0);
        assert!(parse_price("-1").is_err());
        assert!(parse_price("abc").is_err());
        assert_eq!(parse_price(" 2.5 "), Ok(2.5));
    }
}
