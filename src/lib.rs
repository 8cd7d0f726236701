//! roadmap-worker: turns queued "generate a learning roadmap" jobs into complete, valid roadmaps,
//! asking an LLM for a few weeks at a time and checkpointing every batch in Postgres.
//!
//! # Layout
//!
//! Layers from the top; a module imports only from layers below its own (`tests/it/layers.rs`
//! checks it, `docs/architecture.md` draws it):
//!
//! 1. [`commands`], [`cli`]: what each subcommand does, and the command line; [`client`]: the
//!    web backend's side (publish a job, watch events).
//! 2. [`worker`]: broker sessions, intake, the one place where outcomes become ack / hand-back /
//!    dead-letter, the outbox relay, the sweeper and the retention pass.
//! 3. [`pipeline`]: prompt → batch (the robustness ladder, a state machine in `ladder`) → job
//!    (claim, checkpoints, assemble); [`admin`]: the read-only operator page (ADMIN_ADDR), HTML
//!    over the store.
//! 4. [`llm`]: the [`llm::Llm`] seam and the embedded mock, OpenAI-compatible and Gemini
//!    providers behind it; [`store`]: the Postgres
//!    pool and its TLS (`sslmode`), migrations, one module per table family, database retries;
//!    [`amqp`]: topology and publishing with confirms; `http`: /metrics, /healthz, /readyz.
//! 5. [`template`]: deterministic template content (phase outline, the mock's weeks, fallback);
//!    [`metrics`]: every metric; [`telemetry`]: logging (human or JSON lines) and OTLP traces.
//! 6. [`domain`]: the job message and its refusals, the roadmap and its checks, the plan and its
//!    batches, the batch brief, the events; [`config`]: typed settings, secrets in redacting
//!    types; [`retry`]: the one retry-policy value every backoff is written with; `json_scan`:
//!    bracket scanning outside JSON strings.
//!
//! The test doubles are not here: the mock LLM server is the workspace crate `mock-llm`, the
//! test harness (with a scripted [`llm::Llm`] for the in-process tier) the crate `testkit`.

pub mod admin;
pub mod amqp;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod domain;
pub(crate) mod http;
pub(crate) mod json_scan;
pub mod llm;
pub mod metrics;
pub mod pipeline;
pub mod retry;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod worker;
