//! The product's own types: the job message, the roadmap, and the events, with their checks.

pub mod event;
pub mod job;
pub mod roadmap;

pub use job::{ExperienceLevel, JobProfile, JobRequest, RejectReason, Rejection};
pub use roadmap::{Day, Phase, Resource, Roadmap, Task, TaskKind, Week, WeekSource};
