//! roadmap-worker: turns queued "generate a learning roadmap" jobs into complete, valid roadmaps,
//! asking an LLM for a few weeks at a time and checkpointing every batch in Postgres.
//!
//! # Layout
//!
//! The pipeline reads top to bottom:
//!
//! - [`cli`], [`commands`]: the command line and what each subcommand does.
//! - [`config`]: typed settings from environment variables; secrets in redacting types.
//! - [`telemetry`]: logging (human or JSON lines).
//! - [`domain`]: the job message (decoding with reason codes), the roadmap and its checks, events.
//! - [`amqp`]: RabbitMQ topology and publishing with confirms.
//! - [`worker`]: the consume loop; the one place where outcomes become ack / requeue / dead-letter.
//! - [`pipeline`]: plan → prompt → batch (the robustness ladder) → job (claim, checkpoints, assemble).
//! - [`llm`]: the provider interface with the embedded mock, OpenAI-compatible and Gemini providers.
//! - [`template`]: deterministic template weeks (the mock's content and the fallback).
//! - [`store`]: Postgres pool, migrations and one module per table family.
//! - [`outbox`]: the relay that publishes stored events with confirms.
//! - [`json_scan`]: bracket scanning outside strings (nesting limits, truncated-answer salvage).
//! - [`http`], [`metrics`]: /metrics, /healthz, /readyz and every metric.
//! - [`client`]: the web backend's side (publish a job, watch events), for `enqueue`, `demo`, tests.
//! - [`mock_server`]: the mock LLM over HTTP with fault injection.

pub mod amqp;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod domain;
pub mod http;
pub mod json_scan;
pub mod llm;
pub mod metrics;
pub mod mock_server;
pub mod pipeline;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod worker;
