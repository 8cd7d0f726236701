//! The roadmap shape and the checks that LLM output must pass to become part of one.
//!
//! LLM output is untrusted: it is parsed into these types, then [`check_weeks`] rejects what is
//! structurally wrong (numbering, counts) and sanitises what can be repaired safely (control
//! characters, over-long text, non-http(s) URLs).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::job::ExperienceLevel;

pub const DAYS_PER_WEEK: usize = 7;
pub const MAX_TASKS_PER_DAY: usize = 6;
pub const MAX_TITLE: usize = 120;
pub const MAX_TEXT: usize = 600;
pub const MAX_GOALS: usize = 6;
const MAX_RESOURCES: usize = 5;
const MAX_URL: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roadmap {
    pub roadmap_id: Uuid,
    pub job_id: Uuid,
    pub target_role: String,
    pub experience_level: ExperienceLevel,
    pub hours_per_week: u32,
    pub language: String,
    pub duration_weeks: u32,
    pub phases: Vec<Phase>,
    pub weeks: Vec<Week>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phase {
    pub number: u32,
    pub title: String,
    pub objective: String,
    pub week_from: u32,
    pub week_to: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Week {
    pub number: u32,
    pub phase: u32,
    pub title: String,
    pub goals: Vec<String>,
    pub days: Vec<Day>,
    /// Who wrote the week; never taken from the LLM's own output.
    #[serde(default)]
    pub source: WeekSource,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeekSource {
    #[default]
    Llm,
    Fallback,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Day {
    pub day: u32,
    pub title: String,
    pub tasks: Vec<Task>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub title: String,
    pub description: String,
    pub kind: TaskKind,
    pub minutes: u32,
    #[serde(default)]
    pub resources: Vec<Resource>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    Learn,
    Practice,
    Project,
    Review,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// What the LLM returns for one batch.
#[derive(Debug, Clone, Deserialize)]
pub struct BatchOutput {
    pub weeks: Vec<Week>,
}

/// One thing wrong with weeks written by the model. The `Display` text is phrased so that it can
/// be handed back to the model on a re-ask.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeekProblem {
    #[error("expected weeks {wanted:?} in order, got {got:?}")]
    Numbering { wanted: Vec<u32>, got: Vec<u32> },
    #[error("week {week} has an empty title")]
    EmptyTitle { week: u32 },
    #[error("week {week} has {days} days, it must have exactly {DAYS_PER_WEEK}")]
    DayCount { week: u32, days: usize },
    #[error("week {week} day {day} has an empty title")]
    EmptyDayTitle { week: u32, day: u32 },
    #[error("week {week} day {day} has {tasks} tasks, it must have 1 to {MAX_TASKS_PER_DAY}")]
    TaskCount { week: u32, day: u32, tasks: usize },
    #[error("week {week} day {day} has a task without a title")]
    UntitledTask { week: u32, day: u32 },
}

/// Checks weeks written for `expected` (inclusive week numbers) and sanitises their text.
/// `phase_of` gives the phase each week belongs to by the plan; the plan wins over the model.
/// On failure returns every problem found.
pub fn check_weeks(
    mut weeks: Vec<Week>,
    expected: std::ops::RangeInclusive<u32>,
    phase_of: impl Fn(u32) -> u32,
) -> Result<Vec<Week>, Vec<WeekProblem>> {
    let mut problems = Vec::new();
    let numbers: Vec<u32> = weeks.iter().map(|w| w.number).collect();
    let wanted: Vec<u32> = expected.clone().collect();
    if numbers != wanted {
        problems.push(WeekProblem::Numbering { wanted, got: numbers });
    }
    for week in &mut weeks {
        week.source = WeekSource::Llm;
        week.phase = phase_of(week.number);
        clean_in_place(&mut week.title, MAX_TITLE);
        week.goals.truncate(MAX_GOALS);
        for goal in &mut week.goals {
            clean_in_place(goal, 200);
        }
        week.goals.retain(|g| !g.is_empty());
        if week.title.is_empty() {
            problems.push(WeekProblem::EmptyTitle { week: week.number });
        }
        if week.days.len() != DAYS_PER_WEEK {
            problems.push(WeekProblem::DayCount {
                week: week.number,
                days: week.days.len(),
            });
        }
        for (i, day) in week.days.iter_mut().enumerate() {
            day.day = i as u32 + 1;
            clean_in_place(&mut day.title, MAX_TITLE);
            let (week, day_number) = (week.number, day.day);
            if day.title.is_empty() {
                problems.push(WeekProblem::EmptyDayTitle {
                    week,
                    day: day_number,
                });
            }
            if day.tasks.is_empty() || day.tasks.len() > MAX_TASKS_PER_DAY {
                problems.push(WeekProblem::TaskCount {
                    week,
                    day: day_number,
                    tasks: day.tasks.len(),
                });
            }
            for task in &mut day.tasks {
                sanitise_task(task);
                if task.title.is_empty() {
                    problems.push(WeekProblem::UntitledTask {
                        week,
                        day: day_number,
                    });
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(weeks)
    } else {
        Err(problems)
    }
}

fn sanitise_task(task: &mut Task) {
    clean_in_place(&mut task.title, MAX_TITLE);
    clean_in_place(&mut task.description, MAX_TEXT);
    task.minutes = task.minutes.clamp(5, 480);
    task.resources.truncate(MAX_RESOURCES);
    for resource in &mut task.resources {
        clean_in_place(&mut resource.title, MAX_TITLE);
        resource.url = resource.url.take().and_then(|u| safe_url(&u));
    }
    task.resources.retain(|r| !r.title.is_empty());
}

/// Keeps a URL only if it is a plain http(s) address of reasonable length.
fn safe_url(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let lower = raw.to_ascii_lowercase();
    let ok = (lower.starts_with("https://") || lower.starts_with("http://"))
        && raw.len() <= MAX_URL
        && !raw.chars().any(|c| c.is_control() || c.is_whitespace());
    ok.then(|| raw.to_owned())
}

/// [`clean`] in place: text that needs nothing done (most of it) is left as it is, unallocated.
pub fn clean_in_place(s: &mut String, max: usize) {
    if !is_clean(s, max) {
        *s = clean(s, max);
    }
}

fn is_clean(s: &str, max: usize) -> bool {
    s.len() <= max
        && !s.starts_with(char::is_whitespace)
        && !s.ends_with(char::is_whitespace)
        && !s.chars().any(char::is_control)
}

/// Strips control characters (newlines become spaces), trims, and caps the length in characters.
pub fn clean(s: &str, max: usize) -> String {
    // Most text needs nothing done: one scan, one copy.
    if is_clean(s, max) {
        return s.to_owned();
    }
    let mapped: String = s
        .chars()
        .map(|c| if c == '\n' || c == '\t' { ' ' } else { c })
        .filter(|c| !c.is_control())
        .collect();
    mapped
        .trim()
        .chars()
        .take(max)
        .collect::<String>()
        .trim_end()
        .to_owned()
}

/// Why an assembled roadmap is inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoadmapProblem {
    #[error("weeks are {got:?}, expected 1..={duration_weeks}")]
    Numbering { got: Vec<u32>, duration_weeks: u32 },
    #[error("week {week} has {days} days")]
    DayCount { week: u32, days: usize },
}

/// Checks an assembled roadmap: weeks 1..N, no gap, no repeat, 7 days each.
pub fn check_roadmap(roadmap: &Roadmap) -> Result<(), RoadmapProblem> {
    let numbers: Vec<u32> = roadmap.weeks.iter().map(|w| w.number).collect();
    let wanted: Vec<u32> = (1..=roadmap.duration_weeks).collect();
    if numbers != wanted {
        return Err(RoadmapProblem::Numbering {
            got: numbers,
            duration_weeks: roadmap.duration_weeks,
        });
    }
    if let Some(w) = roadmap.weeks.iter().find(|w| w.days.len() != DAYS_PER_WEEK) {
        return Err(RoadmapProblem::DayCount {
            week: w.number,
            days: w.days.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(title: &str, url: Option<&str>) -> Task {
        Task {
            title: title.into(),
            description: "d".into(),
            kind: TaskKind::Learn,
            minutes: 60,
            resources: vec![Resource {
                title: "r".into(),
                url: url.map(Into::into),
            }],
        }
    }

    fn week(number: u32, days: usize) -> Week {
        Week {
            number,
            phase: 9,
            title: format!("Week {number}"),
            goals: vec!["g".into()],
            days: (1..=days as u32)
                .map(|d| Day {
                    day: d,
                    title: format!("Day {d}"),
                    tasks: vec![task("t", None)],
                })
                .collect(),
            source: WeekSource::Fallback,
        }
    }

    #[test]
    fn accepts_and_normalises_good_weeks() {
        let mut w = week(4, 7);
        w.days[0].tasks = vec![
            task("a\u{0}b\nc", Some("javascript:alert(1)")),
            task("ok", Some("https://x.io/a")),
        ];
        let out = check_weeks(vec![w, week(5, 7)], 4..=5, |_| 2).unwrap();
        assert_eq!(out[0].phase, 2);
        assert_eq!(out[0].source, WeekSource::Llm);
        assert_eq!(out[0].days[0].tasks[0].title, "ab c");
        assert_eq!(out[0].days[0].tasks[0].resources[0].url, None);
        assert_eq!(
            out[0].days[0].tasks[1].resources[0].url.as_deref(),
            Some("https://x.io/a")
        );
    }

    #[test]
    fn rejects_wrong_numbers_and_day_counts() {
        let problems: Vec<String> = check_weeks(vec![week(1, 6), week(3, 7)], 1..=2, |_| 1)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(problems[0].contains("expected weeks [1, 2]"), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("has 6 days")), "{problems:?}");
    }
}
