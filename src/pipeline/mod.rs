//! The generation pipeline: plan a job, generate each batch through the ladder, checkpoint it,
//! assemble the roadmap.

pub mod batch;
pub mod budget;
pub mod chains;
pub mod job;
pub mod ladder;
pub mod leases;
pub mod outcome;
pub mod outline;
pub mod parse;
pub mod ports;
pub mod prompt;

use crate::{
    domain::{JobProfile, Plan},
    template,
};

/// The plan of a new job: the template phase outline for its role, cut into batches of
/// `batch_weeks` weeks.
pub fn plan(profile: &JobProfile, duration_weeks: u32, batch_weeks: u32) -> Plan {
    Plan::new(
        template::phases(profile, duration_weeks),
        duration_weeks,
        batch_weeks,
    )
}
