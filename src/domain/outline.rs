//! The roadmap's outline: its phases and each week's title and goals, written by one LLM call
//! before any batch, so that the phases fit the role and can then be written side by side.

use serde::{Deserialize, Serialize};

use super::{
    Phase, WeekSource,
    event::Usage,
    roadmap::{MAX_GOALS, MAX_TEXT, MAX_TITLE, clean},
};

/// Most phases an outline may have: beyond this a phase is a week or two and the parallel
/// phases only add prompts.
pub const MAX_PHASES: usize = 8;

/// The stored outline of a job, part of its plan once written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outline {
    pub weeks: Vec<WeekOutline>,
    /// Whether the model wrote it or the template stood in for it.
    pub source: WeekSource,
    /// What the outline call cost; counted in the job's usage.
    pub usage: Usage,
}

/// One week of the outline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeekOutline {
    pub number: u32,
    pub title: String,
    pub goals: Vec<String>,
}

/// What the LLM returns for the outline call.
#[derive(Debug, Clone, Deserialize)]
pub struct OutlineOutput {
    pub phases: Vec<Phase>,
    pub weeks: Vec<WeekOutline>,
}

/// One thing wrong with an outline written by the model, phrased for a re-ask.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutlineProblem {
    #[error("there must be 1 to {max} phases, got {got}")]
    PhaseCount { got: usize, max: usize },
    #[error(
        "phases must be numbered 1.. in order and cover weeks 1..={duration_weeks} without gap or overlap; phase {phase} covers {from}..={to}"
    )]
    PhaseCover {
        phase: u32,
        from: u32,
        to: u32,
        duration_weeks: u32,
    },
    #[error("phase {phase} has an empty title or objective")]
    EmptyPhase { phase: u32 },
    #[error("expected outline weeks 1..={duration_weeks} in order, got {got:?}")]
    Numbering { got: Vec<u32>, duration_weeks: u32 },
    #[error("outline week {week} has an empty title or no goals")]
    EmptyWeek { week: u32 },
}

/// Checks an outline for a roadmap of `duration_weeks` weeks and sanitises its text. Returns
/// the phases and weeks, or every problem found.
pub fn check_outline(
    output: OutlineOutput,
    duration_weeks: u32,
) -> Result<(Vec<Phase>, Vec<WeekOutline>), Vec<OutlineProblem>> {
    let OutlineOutput {
        mut phases,
        mut weeks,
    } = output;
    let mut problems = Vec::new();
    let max = MAX_PHASES.min(duration_weeks as usize).max(1);
    if phases.is_empty() || phases.len() > max {
        problems.push(OutlineProblem::PhaseCount {
            got: phases.len(),
            max,
        });
    }
    let mut next = 1;
    for (i, phase) in phases.iter_mut().enumerate() {
        phase.title = clean(&phase.title, MAX_TITLE);
        phase.objective = clean(&phase.objective, MAX_TEXT);
        if phase.number != i as u32 + 1 || phase.week_from != next || phase.week_to < phase.week_from {
            problems.push(OutlineProblem::PhaseCover {
                phase: phase.number,
                from: phase.week_from,
                to: phase.week_to,
                duration_weeks,
            });
        }
        if phase.title.is_empty() || phase.objective.is_empty() {
            problems.push(OutlineProblem::EmptyPhase { phase: phase.number });
        }
        next = phase.week_to.saturating_add(1);
    }
    if let Some(last) = phases.last()
        && last.week_to != duration_weeks
    {
        problems.push(OutlineProblem::PhaseCover {
            phase: last.number,
            from: last.week_from,
            to: last.week_to,
            duration_weeks,
        });
    }
    let numbers: Vec<u32> = weeks.iter().map(|w| w.number).collect();
    if numbers != (1..=duration_weeks).collect::<Vec<_>>() {
        problems.push(OutlineProblem::Numbering {
            got: numbers,
            duration_weeks,
        });
    }
    for week in &mut weeks {
        week.title = clean(&week.title, MAX_TITLE);
        week.goals.truncate(MAX_GOALS);
        week.goals = week
            .goals
            .iter()
            .map(|g| clean(g, 200))
            .filter(|g| !g.is_empty())
            .collect();
        if week.title.is_empty() || week.goals.is_empty() {
            problems.push(OutlineProblem::EmptyWeek { week: week.number });
        }
    }
    if problems.is_empty() {
        Ok((phases, weeks))
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(number: u32, week_from: u32, week_to: u32) -> Phase {
        Phase {
            number,
            title: format!("Phase {number}"),
            objective: "Learn".into(),
            week_from,
            week_to,
        }
    }

    fn weeks(n: u32) -> Vec<WeekOutline> {
        (1..=n)
            .map(|number| WeekOutline {
                number,
                title: format!("Week {number}"),
                goals: vec!["A goal".into()],
            })
            .collect()
    }

    #[test]
    fn a_contiguous_outline_passes_and_gaps_or_overlaps_do_not() {
        let good = OutlineOutput {
            phases: vec![phase(1, 1, 4), phase(2, 5, 12)],
            weeks: weeks(12),
        };
        assert!(check_outline(good, 12).is_ok());
        for phases in [
            vec![phase(1, 1, 4), phase(2, 6, 12)],
            vec![phase(1, 1, 4), phase(2, 4, 12)],
            vec![phase(1, 1, 4), phase(2, 5, 11)],
            vec![phase(2, 1, 12)],
            vec![],
        ] {
            let bad = OutlineOutput {
                phases: phases.clone(),
                weeks: weeks(12),
            };
            assert!(check_outline(bad, 12).is_err(), "{phases:?}");
        }
    }

    #[test]
    fn weeks_must_be_numbered_and_have_a_title_and_goals() {
        let mut missing = weeks(6);
        missing.remove(2);
        let mut untitled = weeks(6);
        untitled[1].title = " \n".into();
        untitled[3].goals = vec![String::new()];
        let problems = check_outline(
            OutlineOutput {
                phases: vec![phase(1, 1, 6)],
                weeks: untitled,
            },
            6,
        )
        .unwrap_err();
        assert_eq!(
            problems,
            vec![
                OutlineProblem::EmptyWeek { week: 2 },
                OutlineProblem::EmptyWeek { week: 4 }
            ]
        );
        assert!(
            check_outline(
                OutlineOutput {
                    phases: vec![phase(1, 1, 6)],
                    weeks: missing
                },
                6
            )
            .is_err()
        );
    }

    #[test]
    fn too_many_phases_are_refused() {
        let phases: Vec<Phase> = (1..=9).map(|n| phase(n, n, n)).collect();
        let output = OutlineOutput {
            phases,
            weeks: weeks(9),
        };
        let problems = check_outline(output, 9).unwrap_err();
        assert!(matches!(problems[0], OutlineProblem::PhaseCount { got: 9, .. }));
    }
}
