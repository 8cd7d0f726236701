//! A job's plan: its phase outline and its cut into batches of weeks, one LLM call each.

use serde::{Deserialize, Serialize};

use super::{Outline, Phase, WeekOutline};

/// The plan of one job. It is stored with the job at its first claim, so that a replica with a
/// different BATCH_WEEKS resumes the job on the plan its checkpoints were written for.
///
/// A plan starts on the template's phases. A job of more than one batch then gets its outline
/// (the model's phases, or the template's on fallback) before its first batch, and is cut again
/// within those phases: each phase's batches form a chain, and chains are written side by side.
/// A plan without an outline (a job begun by an older version) is one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub duration_weeks: u32,
    pub phases: Vec<Phase>,
    pub batches: Vec<BatchRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outline: Option<Outline>,
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
            outline: None,
        }
    }

    /// The plan under `outline`: its phases, each cut into as few batches of at most
    /// `batch_weeks` weeks as it takes, of even sizes, so that no batch straddles two phases.
    /// `phases` must cover the weeks contiguously (as `check_outline` ensures).
    pub fn outlined(phases: Vec<Phase>, outline: Outline, duration_weeks: u32, batch_weeks: u32) -> Self {
        let batch_weeks = batch_weeks.max(1);
        let mut batches = Vec::new();
        for phase in &phases {
            let len = phase.week_to + 1 - phase.week_from.min(phase.week_to + 1);
            let count = len.div_ceil(batch_weeks);
            let mut first = phase.week_from;
            for i in 0..count {
                // The first `len % count` batches take one week more than the rest.
                let size = len / count + u32::from(i < len % count);
                batches.push(BatchRange {
                    index: batches.len() as u32,
                    first,
                    last: first + size - 1,
                });
                first += size;
            }
        }
        Self {
            duration_weeks,
            phases,
            batches,
            outline: Some(outline),
        }
    }

    /// Whether this plan still needs its outline: it has none and more than one batch. A job of
    /// one batch has nothing to write side by side, and one call writes it all.
    pub fn wants_outline(&self) -> bool {
        self.outline.is_none() && self.batches.len() > 1
    }

    /// The batches in chains that can be written side by side: one per phase under an outline,
    /// a single chain otherwise. Batches keep their order within a chain.
    pub fn chains(&self) -> Vec<Vec<BatchRange>> {
        if self.outline.is_none() {
            return vec![self.batches.clone()];
        }
        let mut chains: Vec<Vec<BatchRange>> = Vec::new();
        let mut current = None;
        for range in &self.batches {
            let phase = self.phase_of(range.first);
            if current != Some(phase) {
                chains.push(Vec::new());
                current = Some(phase);
            }
            chains.last_mut().expect("pushed above").push(*range);
        }
        chains
    }

    /// The outline of week `number`, if the plan has an outline.
    pub fn outline_week(&self, number: u32) -> Option<&WeekOutline> {
        let weeks = &self.outline.as_ref()?.weeks;
        weeks
            .get(number.checked_sub(1)? as usize)
            .filter(|w| w.number == number)
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
        assert_eq!(plan.chains(), vec![plan.batches.clone()]);
    }

    #[test]
    fn an_outlined_plan_cuts_within_phases_and_chains_them() {
        let phase = |number, week_from, week_to| Phase {
            number,
            title: String::new(),
            objective: String::new(),
            week_from,
            week_to,
        };
        let outline = Outline {
            weeks: Vec::new(),
            source: crate::domain::WeekSource::Llm,
            usage: Default::default(),
        };
        let plan = Plan::outlined(
            vec![phase(1, 1, 4), phase(2, 5, 5), phase(3, 6, 12)],
            outline,
            12,
            3,
        );
        let ranges: Vec<(u32, u32, u32)> = plan.batches.iter().map(|b| (b.index, b.first, b.last)).collect();
        assert_eq!(
            ranges,
            vec![
                (0, 1, 2),
                (1, 3, 4),
                (2, 5, 5),
                (3, 6, 8),
                (4, 9, 10),
                (5, 11, 12)
            ]
        );
        let chains: Vec<Vec<u32>> = plan
            .chains()
            .iter()
            .map(|c| c.iter().map(|b| b.index).collect())
            .collect();
        assert_eq!(chains, vec![vec![0, 1], vec![2], vec![3, 4, 5]]);
        assert!(!plan.wants_outline());
        assert!(Plan::new(Vec::new(), 12, 3).wants_outline());
        assert!(!Plan::new(Vec::new(), 3, 3).wants_outline());
    }
}
