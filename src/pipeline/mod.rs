//! The generation pipeline: plan a job, generate each batch through the ladder, checkpoint it,
//! assemble the roadmap.

pub mod batch;
pub mod job;
pub mod parse;
pub mod plan;
pub mod prompt;
