//! The product's own types: the job message, the roadmap, the plan and its batches, the batch
//! brief, and the events, with their checks. Nothing here does I/O.

pub mod batch;
pub mod brief;
pub mod event;
pub mod job;
pub mod outline;
pub mod plan;
pub mod quality;
pub mod reject;
pub mod roadmap;

pub use batch::{AnswerFault, BatchOutcome, BatchResult, TokenUsage};
pub use job::{ExperienceLevel, JobProfile, JobRequest, Priority};
pub use outline::{Outline, WeekOutline};
pub use plan::{BatchRange, Plan};
pub use reject::{INVALID_CANCEL, RejectReason, Rejection, dead_letter_codes};
pub use roadmap::{Day, Phase, Resource, Roadmap, Task, TaskKind, Week, WeekSource};
