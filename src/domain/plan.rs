//! A job's plan: its phase outline and its cut into batches of weeks, one LLM call each.

use serde::{Deserialize, Serialize};

use super::Phase;

/// The plan of one job. It is stored with the job at its first claim, so that a replica with a
/// different BATCH_WEEKS resumes the job on the plan its checkpoints were written for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub duration_weeks: u32,
    pub phases: Vec<Phase>,
    pub batches: Vec<BatchRange>,
}

/// Weeks `first..=last` of one batch; `index` counts from 0 and names the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRange {
    pub index: u32,
    pub first: u32,
    pub last: u32,
}

impl BatchRange {
    pub fn weeks(&self) -> std::ops::RangeInclusive<u32> {
        self.first..=self.last
    }

    pub fn week_count(&self) -> u32 {
        self.last - self.first + 1
    }
}

impl Plan {
    /// Cuts `duration_weeks` into batches of at most `batch_weeks` weeks under `phases`.
    pub fn new(phases: Vec<Phase>, duration_weeks: u32, batch_weeks: u32) -> Self {
        let batch_weeks = batch_weeks.max(1);
        let batches = (0..duration_weeks.div_ceil(batch_weeks))
            .map(|index| BatchRange {
                index,
                first: index * batch_weeks + 1,
                last: ((index + 1) * batch_weeks).min(duration_weeks),
            })
            .collect();
        Self {
            duration_weeks,
            phases,
            batches,
        }
    }

    /// The phase a week belongs to; the last phase for anything past the outline.
    pub fn phase_of(&self, week: u32) -> u32 {
        self.phases
            .iter()
            .find(|p| (p.week_from..=p.week_to).contains(&week))
            .or(self.phases.last())
            .map_or(1, |p| p.number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_week_once() {
        for weeks in 1..=52 {
            for size in [1, 2, 3, 5] {
                let plan = Plan::new(Vec::new(), weeks, size);
                let covered: Vec<u32> = plan.batches.iter().flat_map(|b| b.weeks()).collect();
                assert_eq!(covered, (1..=weeks).collect::<Vec<_>>());
                assert!(plan.batches.iter().all(|b| b.week_count() <= size));
            }
        }
        let plan = Plan::new(Vec::new(), 12, 3);
        assert_eq!(plan.batches.len(), 4);
        assert_eq!((plan.batches[3].first, plan.batches[3].last), (10, 12));
    }
}
