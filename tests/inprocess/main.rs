//! The in-process tier: the pipeline's intricate logic (the ladder's rungs, the outline, the
//! ends of a job's chains) driven by a scripted model and in-memory seams under tokio's paused
//! clock, so that backoff and slow answers cost no wall time. No Postgres, RabbitMQ or HTTP: what
//! needs those (settle, relay, sweeper, recovery, fencing in SQL, TLS) stays in `tests/it`.

mod chains;
mod fixture;
mod ladder;
mod outline;
mod quality;
