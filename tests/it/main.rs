//! The integration tests: one binary, one module per promise of the contract. Every test talks
//! to the real Postgres and RabbitMQ, in its own database and under its own exchange and queue
//! names, with the project's mock LLM server over real HTTP, so the tests run in parallel. The
//! harness is the `testkit` crate (crates/testkit), the mock server the `mock-llm` crate.
//!
//! The chaos run (`tests/chaos.rs`) is a separate target: it restarts the machine's services.

mod accounting;
mod admin;
mod bad_input;
mod budget;
mod cancel;
mod contracts;
mod db_partition;
mod decoder_props;
mod dlq;
mod duplicates;
mod e2e;
mod fairness;
mod fault_mix;
mod hostile_input;
mod hostile_provider;
mod http2;
mod idempotency;
mod ladder;
mod layers;
mod leases;
mod ledger;
mod long_jobs;
mod metrics;
mod outbox;
mod outline;
mod ownership;
mod poison;
mod priority;
mod progress;
mod prompt_cache;
mod prompt_injection;
mod reconnect;
mod resume;
mod retention;
mod secrets;
mod settings;
mod shutdown;
mod stalls;
mod status;
mod topology;
mod traces;
mod unbound_events;
