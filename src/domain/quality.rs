//! Content checks: whether a batch reads as part of one roadmap, beside the structural checks of
//! [`check_weeks`](super::roadmap::check_weeks). A batch that passes those can still repeat the
//! tasks of the weeks before it, drift from the outline it was given, plan far more or less time
//! than the learner has, or point at resources nobody can open. Each is a [`ContentProblem`] with
//! a stable [`ProblemKind`] (the metric label); none of them makes a batch invalid: the ladder
//! asks once more with the problems, then keeps the answer and records them.
//!
//! A fifth check, a difficulty that falls back after rising, needs a level per week, and the
//! roadmap has none (only the job's `experience_level`): see the README for why none is added.
//!
//! Pure functions, no I/O.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::{Plan, Week, WeekOutline, WeekSource};

/// Two task titles are near-copies at this Jaccard similarity of their word sets or above: the
/// same words reordered, re-cased or re-punctuated, or one word added or dropped in a title of
/// five words or more ("Build a REST API with Flask" / "Build the REST API with Flask" is 5/7,
/// 0.71, kept apart; "Set up PostgreSQL locally" / "Set up PostgreSQL locally today" is 4/5,
/// 0.8, a copy). A change of topic in a short title ("Study the core ideas of SQL" / "... of
/// Python", 5/7) stays apart, which character trigrams would not keep.
pub const NEAR_COPY: f64 = 0.8;

/// A week repeats when more than this share of its tasks are near-copies of earlier tasks.
/// Routine tasks ("Write a one-page summary", "Check your solutions") recur in a good roadmap,
/// and a role's four template projects come round every fourth week: across every role family,
/// level, 1 to 80 hours and 3 to 52 weeks, the template's weeks repeat at most two thirds of
/// their tasks (0.67, a 24-week roadmap), most under 0.6. A week copied from an earlier one
/// repeats all of them.
pub const REPEATED_SHARE: f64 = 0.75;

/// A week keeps to its outline when at least this share of the outline's content words (its
/// title and goals) appear in the week's title and goals. A paraphrase keeps most of them
/// ("SQL fundamentals" / "SQL fundamentals: SELECT and JOIN"), a week on another subject
/// almost none; a third leaves room for rewording.
pub const OUTLINE_KEPT: f64 = 1.0 / 3.0;

/// Planned minutes may differ from `hours_per_week` by this share either way: a week's plan is
/// an estimate, and a learner absorbs a quarter more or less; a 10-hour week planned at 3 hours
/// (or 20) is another course.
pub const HOURS_TOLERANCE: f64 = 0.25;

/// The least a week can plan under the structural rules: 7 days of at least one task, and a
/// task worth doing takes 15 minutes (the template's own floor). A 1-hour week cannot be
/// planned within 25% of 60 minutes, so its upper bound is this.
pub const MIN_WEEK_MINUTES: u32 = 7 * 15;

/// What kind of content problem: the `kind` label of `roadmap_quality_problems_total`, the key
/// of the completion event's `quality.problems`, and the tag of a stored problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    RepeatedTasks,
    OffOutline,
    HoursOffPlan,
    UnusableResource,
}

impl ProblemKind {
    pub const ALL: [Self; 4] = [
        Self::RepeatedTasks,
        Self::OffOutline,
        Self::HoursOffPlan,
        Self::UnusableResource,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RepeatedTasks => "repeated_tasks",
            Self::OffOutline => "off_outline",
            Self::HoursOffPlan => "hours_off_plan",
            Self::UnusableResource => "unusable_resource",
        }
    }
}

/// One content problem of one week. The `Display` text is handed back to the model on a re-ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ContentProblem {
    #[error(
        "week {week} repeats {repeated} of its {tasks} tasks from earlier weeks (such as \"{example}\"); \
         give it new tasks that move the learner on"
    )]
    RepeatedTasks {
        week: u32,
        repeated: u32,
        tasks: u32,
        example: String,
    },
    #[error(
        "week {week} is \"{title}\", which drops the outline's \"{outline}\"; keep to the outline's title \
         and goals"
    )]
    OffOutline {
        week: u32,
        title: String,
        outline: String,
    },
    #[error(
        "week {week} plans {planned_minutes} minutes of tasks for a learner with {wanted_minutes} minutes a \
         week; plan within a quarter of that"
    )]
    HoursOffPlan {
        week: u32,
        planned_minutes: u32,
        wanted_minutes: u32,
    },
    #[error(
        "week {week} day {day} has the resource \"{title}\" with no usable title or URL; name a real \
         resource, with its https URL or none"
    )]
    UnusableResource { week: u32, day: u32, title: String },
}

impl ContentProblem {
    pub fn kind(&self) -> ProblemKind {
        match self {
            Self::RepeatedTasks { .. } => ProblemKind::RepeatedTasks,
            Self::OffOutline { .. } => ProblemKind::OffOutline,
            Self::HoursOffPlan { .. } => ProblemKind::HoursOffPlan,
            Self::UnusableResource { .. } => ProblemKind::UnusableResource,
        }
    }
}

/// What a batch's content checks found, stored with its checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchQuality {
    /// The problems of the weeks as stored (after the re-ask, if there was one).
    #[serde(default)]
    pub problems: Vec<ContentProblem>,
    /// The batch was asked again for content problems.
    #[serde(default)]
    pub reasked: bool,
}

impl BatchQuality {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && !self.reasked
    }
}

/// A roadmap's content problems, in its completion event's `quality`: the problems of its
/// stored batches by kind (every kind, zeros included, so that a consumer reads a stable
/// shape) and how many batches were asked again for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QualityReport {
    pub problems: BTreeMap<ProblemKind, u32>,
    pub reasked_batches: u32,
}

impl Default for QualityReport {
    fn default() -> Self {
        Self {
            problems: ProblemKind::ALL.into_iter().map(|k| (k, 0)).collect(),
            reasked_batches: 0,
        }
    }
}

impl QualityReport {
    /// Counts problems found outside any one batch (across phases) in.
    pub fn add_problems(&mut self, problems: &[ContentProblem]) {
        for problem in problems {
            *self.problems.entry(problem.kind()).or_default() += 1;
        }
    }

    /// Counts one stored batch in.
    pub fn add(&mut self, batch: &BatchQuality) {
        for problem in &batch.problems {
            *self.problems.entry(problem.kind()).or_default() += 1;
        }
        self.reasked_batches += u32::from(batch.reasked);
    }
}

/// What a batch is measured against: the job's hours and the outline of each week.
#[derive(Debug, Clone, Copy)]
pub struct Standard<'a> {
    pub hours_per_week: u32,
    /// The outline's weeks (empty for a plan without one), found by number.
    pub outline: &'a [WeekOutline],
}

/// The content problems of `weeks`, against `earlier`: the weeks just before them (the previous
/// batch's, then this batch's weeks already written). Template weeks are not judged: nobody can
/// be asked to fix them.
pub fn check_content<'a>(
    weeks: &[Week],
    earlier: impl IntoIterator<Item = &'a Week>,
    standard: Standard<'_>,
) -> Vec<ContentProblem> {
    let mut problems = Vec::new();
    let mut seen: Vec<Vec<String>> = earlier.into_iter().flat_map(task_words).collect();
    for week in weeks {
        if week.source == WeekSource::Llm {
            if let Some(p) = repeated(week, &seen) {
                problems.push(p);
            }
            if let Some(outline) = standard.outline.iter().find(|o| o.number == week.number)
                && let Some(p) = off_outline(week, outline)
            {
                problems.push(p);
            }
            if let Some(p) = hours(week, standard.hours_per_week) {
                problems.push(p);
            }
            problems.extend(resources(week));
        }
        seen.extend(task_words(week));
    }
    problems
}

/// Repeats across phase boundaries, found in the assembled roadmap: a phase's first batch is
/// written beside the phase before it, so neither its prompt nor its checks could see that
/// phase's tasks. The first batch of every chain but the first (its first `span` weeks) is
/// compared with the `span` weeks before it. Recorded only: the batches are stored, and nobody
/// is asked again.
pub fn repeats_across_phases(plan: &Plan, weeks: &[Week], span: u32) -> Vec<ContentProblem> {
    let firsts = plan
        .chains()
        .into_iter()
        .skip(1)
        .filter_map(|chain| chain.first().map(|range| range.first));
    let by_number = |n: u32| weeks.iter().find(|w| w.number == n);
    let mut problems = Vec::new();
    for first in firsts {
        let before: Vec<&Week> = (first.saturating_sub(span).max(1)..first)
            .filter_map(by_number)
            .collect();
        let seen: Vec<Vec<String>> = before.into_iter().flat_map(task_words).collect();
        for week in (first..first + span).filter_map(by_number) {
            if week.source == WeekSource::Llm
                && let Some(p) = repeated(week, &seen)
            {
                problems.push(p);
            }
        }
    }
    problems
}

/// The tasks of `week` that are near-copies of tasks in `earlier`, or of tasks before them in
/// the same week, with the first one's title: what the bench counts across batch boundaries.
pub fn repeated_tasks(week: &Week, earlier: &[Week]) -> (u32, u32, Option<String>) {
    let seen: Vec<Vec<String>> = earlier.iter().flat_map(task_words).collect();
    count_repeats(week, &seen)
}

fn count_repeats(week: &Week, seen: &[Vec<String>]) -> (u32, u32, Option<String>) {
    let (mut repeated, mut tasks, mut example) = (0, 0, None);
    let mut own: Vec<Vec<String>> = Vec::new();
    for task in week.days.iter().flat_map(|d| &d.tasks) {
        let words = word_set(&task.title);
        tasks += 1;
        if seen.iter().chain(&own).any(|s| jaccard(s, &words) >= NEAR_COPY) {
            repeated += 1;
            example.get_or_insert_with(|| task.title.clone());
        }
        own.push(words);
    }
    (repeated, tasks, example)
}

fn repeated(week: &Week, seen: &[Vec<String>]) -> Option<ContentProblem> {
    let (repeated, tasks, example) = count_repeats(week, seen);
    (f64::from(repeated) > REPEATED_SHARE * f64::from(tasks)).then(|| ContentProblem::RepeatedTasks {
        week: week.number,
        repeated,
        tasks,
        example: example.unwrap_or_default(),
    })
}

fn off_outline(week: &Week, outline: &WeekOutline) -> Option<ContentProblem> {
    let wanted = content_words(std::iter::once(&outline.title).chain(&outline.goals));
    if wanted.is_empty() {
        return None;
    }
    let written = content_words(std::iter::once(&week.title).chain(&week.goals));
    let share = |wanted: &HashSet<String>| match wanted.len() {
        0 => 0.0,
        n => wanted.intersection(&written).count() as f64 / n as f64,
    };
    // The title alone kept is enough: goals are the part a model rewords most.
    let kept = share(&wanted).max(share(&content_words(std::iter::once(&outline.title))));
    (kept < OUTLINE_KEPT).then(|| ContentProblem::OffOutline {
        week: week.number,
        title: week.title.clone(),
        outline: outline.title.clone(),
    })
}

fn hours(week: &Week, hours_per_week: u32) -> Option<ContentProblem> {
    let planned: u32 = week.days.iter().flat_map(|d| &d.tasks).map(|t| t.minutes).sum();
    let wanted = hours_per_week.saturating_mul(60);
    let low = f64::from(wanted) * (1.0 - HOURS_TOLERANCE);
    let high = (f64::from(wanted) * (1.0 + HOURS_TOLERANCE)).max(f64::from(MIN_WEEK_MINUTES));
    let planned_f = f64::from(planned);
    (planned_f < low || planned_f > high).then_some(ContentProblem::HoursOffPlan {
        week: week.number,
        planned_minutes: planned,
        wanted_minutes: wanted,
    })
}

/// Titles that name no resource: what a model writes when it has nothing to point at.
const PLACEHOLDER_TITLES: [&str; 13] = [
    "resource",
    "resources",
    "link",
    "links",
    "url",
    "tbd",
    "todo",
    "n a",
    "none",
    "example",
    "title",
    "placeholder",
    "documentation",
];

/// Hosts reserved for examples and tests (RFC 2606, RFC 6761) or local: never a real resource.
const PLACEHOLDER_HOSTS: [&str; 4] = ["example.com", "example.org", "example.net", "localhost"];
const PLACEHOLDER_SUFFIXES: [&str; 5] = [".example", ".invalid", ".test", ".localhost", ".local"];

fn resources(week: &Week) -> impl Iterator<Item = ContentProblem> + '_ {
    week.days.iter().flat_map(move |day| {
        day.tasks
            .iter()
            .flat_map(|t| &t.resources)
            .filter(|r| {
                let title = words(&r.title).join(" ");
                title.is_empty()
                    || PLACEHOLDER_TITLES.contains(&title.as_str())
                    || r.url.as_deref().is_some_and(|u| !usable_url(u))
            })
            .map(move |r| ContentProblem::UnusableResource {
                week: week.number,
                day: day.day,
                title: r.title.clone(),
            })
    })
}

/// An http(s) URL (as `check_weeks` leaves them) whose host could serve a page: a dotted name
/// that is not reserved for examples.
fn usable_url(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    let rest = lower.split_once("://").map_or("", |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = host_port
        .split(':')
        .next()
        .unwrap_or_default()
        .trim_end_matches('.');
    host.contains('.')
        && !host.starts_with('.')
        && !PLACEHOLDER_HOSTS
            .iter()
            .any(|p| host == *p || host.ends_with(&format!(".{p}")))
        && !PLACEHOLDER_SUFFIXES.iter().any(|s| host.ends_with(s))
}

/// The words of each task title of `week`, normalised.
fn task_words(week: &Week) -> impl Iterator<Item = Vec<String>> + '_ {
    week.days
        .iter()
        .flat_map(|d| &d.tasks)
        .map(|t| word_set(&t.title))
}

/// A title's words: lower case, punctuation as spaces, and a leading "Day 3:", "Week 2 -",
/// "Step 1." or bare "4)" dropped, since models number what they copy.
pub fn words(title: &str) -> Vec<String> {
    let lowered = title.to_lowercase();
    let mut words: Vec<&str> = lowered
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    loop {
        let numbered = |w: &str| w.chars().all(|c| c.is_ascii_digit());
        match words.as_slice() {
            [label, n, ..] if ["day", "week", "step", "task", "part"].contains(label) && numbered(n) => {
                words.drain(..2);
            }
            [n, ..] if numbered(n) => {
                words.remove(0);
            }
            _ => break,
        }
    }
    words.into_iter().map(str::to_owned).collect()
}

/// A title's words as a set: sorted, without duplicates, for [`jaccard`].
pub fn word_set(title: &str) -> Vec<String> {
    let mut words = words(title);
    words.sort_unstable();
    words.dedup();
    words
}

/// Jaccard similarity of two word sets from [`word_set`]; two empty titles are the same. A
/// merge of sorted lists: the checks compare every task with every earlier one.
pub fn jaccard(a: &[String], b: &[String]) -> f64 {
    let (mut i, mut j, mut common) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => (common, i, j) = (common + 1, i + 1, j + 1),
        }
    }
    let union = a.len() + b.len() - common;
    if union == 0 {
        return 1.0;
    }
    common as f64 / union as f64
}

/// Words that carry no subject, left out when comparing a week with its outline.
const STOP_WORDS: [&str; 24] = [
    "and",
    "the",
    "for",
    "with",
    "from",
    "into",
    "your",
    "you",
    "this",
    "that",
    "week",
    "its",
    "are",
    "how",
    "what",
    "why",
    "use",
    "using",
    "own",
    "one",
    "key",
    "ideas",
    "learn",
    "understand",
];

/// Content words of some texts: three letters or more, not a stop word, a plural's `s` dropped,
/// so that "Joins" in a goal meets "JOIN" in a title.
fn content_words<'a>(texts: impl Iterator<Item = &'a String>) -> HashSet<String> {
    texts
        .flat_map(|t| words(t))
        .filter(|w| w.chars().count() >= 3 && !STOP_WORDS.contains(&w.as_str()))
        .map(|w| match w.strip_suffix('s') {
            Some(stem) if stem.chars().count() >= 3 && !stem.ends_with('s') => stem.to_owned(),
            _ => w,
        })
        .collect()
}

// Tested in `template::quality_tests`, on the template's roadmaps: the domain layer may not
// import the template.
