//! Deterministic template content: the phase outline of every roadmap, the embedded mock LLM's weeks, and fallback weeks.
//!
//! Templates are English-only: they stand in exactly when the LLM (the only translator) is not
//! available, so `profile.language` is deliberately ignored. Variety comes from the role family,
//! the week's progress, the experience level and an FNV-1a hash, never from randomness, so a
//! retried or resumed job gets byte-identical fallback weeks.

// `clean` is what `check_weeks` applies to model output; using it here keeps template weeks
// unchanged by that check.
use crate::domain::{
    Day, JobProfile, Phase, Resource, Task, TaskKind, Week, WeekOutline, WeekSource, roadmap::clean,
};

const MAX_TITLE: usize = 120;
const MAX_TEXT: usize = 600;
/// Roles may be 200 characters long and focus areas 100; shortened so they cannot crowd out titles.
const MAX_ROLE: usize = 60;

mod catalog;

use catalog::{FAMILIES, LEVEL_WORDS, RHYTHM, STAGES};

/// The phase outline for a roadmap of `duration_weeks` weeks (1..=52): 1 phase for 1-2 weeks, 2 for 3-5, 3 for 6-11, 4 for 12+.
/// Phases are numbered from 1, cover weeks 1..=duration_weeks contiguously with no gap or overlap, titles and objectives mention the role.
pub fn phases(profile: &JobProfile, duration_weeks: u32) -> Vec<Phase> {
    let plan = Plan::new(profile, duration_weeks);
    let count = match plan.total {
        0..=2 => 1,
        3..=5 => 2,
        6..=11 => 3,
        _ => 4,
    };
    let focus = match profile.focus_areas.as_slice() {
        [] => String::new(),
        areas => format!(", with extra attention to {}", areas.join(", ")),
    };
    let level = profile.experience_level.as_str();
    split(STAGES[count as usize - 1], '|')
        .zip(0..count)
        .map(|(stage, i)| {
            let (week_from, week_to) = (i * plan.total / count + 1, (i + 1) * plan.total / count);
            let (first, last) = (plan.topic(week_from), plan.topic(week_to));
            let covers = if first == last {
                format!("Concentrate on {first}")
            } else {
                format!("Progress from {first} to {last}")
            };
            let role = &plan.role;
            let objective = format!("{covers} on the way to the {role} role, at {level} level{focus}.");
            Phase {
                number: i + 1,
                title: clean(&format!("{stage} for the {role} role"), MAX_TITLE),
                objective: clean(&objective, MAX_TEXT),
                week_from,
                week_to,
            }
        })
        .collect()
}

/// The template outline: [`phases`], and each week's title and goals as [`week`] writes them.
/// It stands in for the model's outline, and is the mock LLM's answer to an outline call.
pub fn outline(profile: &JobProfile, duration_weeks: u32) -> (Vec<Phase>, Vec<WeekOutline>) {
    let phases = phases(profile, duration_weeks);
    let weeks = (1..=duration_weeks)
        .map(|n| {
            let week = week(profile, &phases, n, duration_weeks);
            WeekOutline {
                number: n,
                title: week.title,
                goals: week.goals,
            }
        })
        .collect();
    (phases, weeks)
}

/// One complete week: `number` (1-based), `phase` = the phase containing it, exactly 7 days (day = 1..=7),
/// each with 1..=4 tasks, source = WeekSource::Fallback (callers overwrite when used as mock LLM output).
pub fn week(profile: &JobProfile, phases: &[Phase], number: u32, duration_weeks: u32) -> Week {
    let plan = Plan::new(profile, duration_weeks.max(number));
    let n = number.max(1);
    let index = plan.topic_index(n);
    let topic = plan.topics[index];
    // Sentences read better about "a production-ready web app" than about "Capstone: ...".
    let subject = topic.strip_prefix("Capstone: ").unwrap_or(topic);
    let areas = &profile.focus_areas;
    let focus = areas
        .get((n as usize - 1) % areas.len().max(1))
        .map(|f| clean(f, MAX_ROLE));

    // When weeks outnumber topics a topic spans consecutive weeks; the suffix keeps titles apart.
    let repeat = (1..n).filter(|&m| plan.topic_index(m) == index).count();
    let mut title = match repeat {
        0 => topic.to_owned(),
        2 => format!("{topic} (deeper practice)"),
        3 => format!("{topic} (applied project)"),
        k => format!("{topic} (part {})", k + 1),
    };
    if plan.generic {
        title = format!("{}: {title}", plan.role);
    }
    if let Some(area) = focus.as_ref().filter(|_| n.is_multiple_of(2)) {
        title = format!("{title}, focus on {area}");
    }

    let projects: Vec<&str> = split(plan.family[2], '|').collect();
    let pick = (plan.hash as usize % projects.len() + n as usize - 1) % projects.len();
    let mut project = projects[pick].to_owned();
    if subject != topic {
        project.push_str(" at capstone scope");
    }
    let next = match plan.topic(n + 1) {
        _ if n >= plan.total => format!("your next steps toward the {} role", plan.role),
        next if next == topic => format!("more advanced material on {subject}"),
        next => format!("next week's topic ({next})"),
    };
    let level = profile.experience_level as usize;
    let words: Vec<&str> = LEVEL_WORDS[level].split('|').collect();
    let focus_line = focus
        .as_ref()
        .map(|f| format!(" Tie it to your focus area: {f}."));
    let reference = if plan.generic {
        "a trusted reference book or course"
    } else {
        "the official documentation"
    };
    // A topic that spans weeks names the week's turn in its tasks, as in its title: without it a
    // continued week's tasks would be the week before's, word for word (the content checks of
    // `domain::quality` call that a repeated week).
    let task_subject = match repeat {
        0 => subject.to_owned(),
        k => format!("{subject} ({})", CONTINUED[(k - 1).min(CONTINUED.len() - 1)]),
    };
    let vars = [
        ("{t}", task_subject.as_str()),
        ("{p}", &project),
        ("{role}", &plan.role),
        ("{ref}", reference),
        ("{adj}", words[0]),
        ("{depth}", words[1]),
        ("{count}", words[2]),
        ("{focus}", &focus_line.unwrap_or_default()),
        ("{next}", &next),
    ];
    let fill = |t: &str| fill_in(t, &vars);

    let goals = [
        Some(format!("Explain the key ideas of {subject} in your own words")),
        Some(format!("Complete this week's project: {project}")),
        focus
            .as_ref()
            .map(|f| format!("Connect {subject} to your focus area: {f}")),
        Some(format!("Take one concrete step toward the {} role", plan.role)),
    ];

    // A week has 168 hours; the cap also keeps the arithmetic far from overflow.
    let (budget, docs) = ((profile.hours_per_week.min(168) * 60 + 3) / 7, plan.docs());
    let days = RHYTHM.iter().zip(1u32..).map(|(rhythm, day)| {
        let (label, tasks) = rhythm.split_once(';').unwrap_or_default();
        let seed = fnv1a(format!("{}#{n}#{day}", plan.key).as_bytes());
        let tasks = day_tasks(tasks, fill, budget, &docs, seed);
        Day {
            day,
            title: clean(&format!("{label}: {subject}"), MAX_TITLE),
            tasks,
        }
    });
    Week {
        number,
        phase: phases
            .iter()
            .find(|p| (p.week_from..=p.week_to).contains(&number))
            .or(phases.last())
            .map_or(1, |p| p.number),
        title: clean(&title, MAX_TITLE),
        goals: goals.iter().flatten().map(|g| clean(g, 200)).collect(),
        days: days.collect(),
        source: WeekSource::Fallback,
    }
}

/// `template` with each `{name}` of `vars` replaced, in one pass: text that a value brings in
/// (a role may contain braces) is never replaced again.
fn fill_in(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        match vars.iter().find(|(name, _)| tail.starts_with(name)) {
            Some((name, value)) => {
                out.push_str(value);
                rest = &tail[name.len()..];
            }
            None => {
                out.push('{');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The turn a topic takes in its second, third and later weeks: word-disjoint from each other,
/// and long enough to set a continued task apart from the first week's.
const CONTINUED: [&str; 4] = [
    "part two, going deeper",
    "part three, hands-on practice",
    "part four, applied at scale",
    "later part, consolidation round",
];

/// What every week of one roadmap shares.
struct Plan {
    /// The family's fields: keywords, topics, projects, docs.
    family: Vec<&'static str>,
    generic: bool,
    /// The normalised role: the hash input, so that "Data Engineer" and "data engineer" agree.
    key: String,
    hash: u64,
    role: String,
    topics: Vec<&'static str>,
    total: u32,
}

impl Plan {
    fn new(profile: &JobProfile, duration_weeks: u32) -> Self {
        let key = normalise(&profile.target_role);
        let family = FAMILIES
            .iter()
            .map(|f| f.split('#').collect::<Vec<_>>())
            .find(|f| split(f[0], '|').any(|k| key.contains(&k.replace('_', " "))))
            .unwrap_or_else(|| FAMILIES[FAMILIES.len() - 1].split('#').collect());
        let all: Vec<&str> = split(family[1], '|').collect();
        // Experienced learners skip the most basic topics but still reach the capstone.
        let skip = [0, 1, 3][profile.experience_level as usize];
        Self {
            generic: family[0].is_empty(),
            family,
            hash: fnv1a(key.as_bytes()),
            key,
            role: clean(&profile.target_role, MAX_ROLE),
            topics: all[skip..].to_vec(),
            total: duration_weeks.max(1),
        }
    }

    /// Maps a week to a topic by progress, so that every roadmap runs from basics to capstone:
    /// short ones sample the list (first and last included), long ones give each topic an equal
    /// run of weeks.
    fn topic_index(&self, week: u32) -> usize {
        let (n, total) = (week.clamp(1, self.total) as usize - 1, self.total as usize);
        let len = self.topics.len();
        if total >= len {
            n * len / total
        } else {
            n * (len - 1) / (total - 1).max(1)
        }
    }

    fn topic(&self, week: u32) -> &'static str {
        self.topics[self.topic_index(week)]
    }

    /// The family's docs that suit this role: untagged ones plus those tagged with a role word;
    /// all of them if that leaves none (e.g. "Mobile developer" names no platform).
    fn docs(&self) -> Vec<Resource> {
        let entries = split(self.family[3], ';').map(|e| e.split('|').map(str::trim).collect());
        let entries: Vec<Vec<&str>> = entries.collect();
        let tagged = |tags: &str| tags.split(' ').any(|t| self.key.contains(&format!(" {t} ")));
        let chosen: Vec<_> = entries
            .iter()
            .filter(|e| e[0].is_empty() || tagged(e[0]))
            .collect();
        let chosen = if chosen.is_empty() {
            entries.iter().collect()
        } else {
            chosen
        };
        let url = |u: &str| u.starts_with("https://").then(|| u.to_owned());
        let resource = |e: &&Vec<&str>| Resource {
            title: e[1].to_owned(),
            url: url(e[2]),
        };
        chosen.iter().map(resource).collect()
    }
}

/// Builds one day's tasks from its rhythm entry, splitting `budget` minutes by weight.
fn day_tasks(
    spec: &str,
    fill: impl Fn(&str) -> String,
    budget: u32,
    docs: &[Resource],
    seed: u64,
) -> Vec<Task> {
    // Every task gets at least 15 minutes, so a small budget keeps only the first tasks.
    let keep = (budget as usize / 15).clamp(1, 4);
    let specs: Vec<Vec<&str>> = split(spec, ';')
        .take(keep)
        .map(|t| t.split('|').collect())
        .collect();
    let weight = |s: &[&str]| s[1].parse::<u32>().unwrap_or(1);
    let total_weight: u32 = specs.iter().map(|s| weight(s)).sum();
    let mut minutes: Vec<u32> = specs.iter().map(|s| budget * weight(s) / total_weight).collect();
    minutes[0] += budget - minutes.iter().sum::<u32>();
    let task = |(i, (s, minutes)): (usize, (&Vec<&str>, u32))| {
        let kind = match s[0] {
            "learn" => TaskKind::Learn,
            "practice" => TaskKind::Practice,
            "project" => TaskKind::Project,
            _ => TaskKind::Review,
        };
        // FNV-1a's low bits mix poorly, so the choices read the high bits.
        let options: Vec<&str> = s[3].split('^').collect();
        let title = options[(seed >> (40 + i * 5)) as usize % options.len()];
        let (first, count) = (
            (seed >> 20) as usize % docs.len().max(1) + i,
            s[2].parse().unwrap_or(0).min(docs.len()),
        );
        Task {
            title: clean(&fill(title), MAX_TITLE),
            description: clean(&fill(s[4]), MAX_TEXT),
            kind,
            minutes: minutes.clamp(15, 480),
            resources: (0..count)
                .map(|j| docs[(first + j) % docs.len()].clone())
                .collect(),
        }
    };
    specs.iter().zip(minutes).enumerate().map(task).collect()
}

fn split(list: &str, separator: char) -> impl Iterator<Item = &str> {
    list.split(separator).map(str::trim).filter(|s| !s.is_empty())
}

/// Lower-cases the role and reduces it to space-separated words, padded with spaces so that
/// keywords can anchor on word boundaries ("Full-Stack" becomes " full stack ").
fn normalise(role: &str) -> String {
    let words: Vec<&str> = role
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    format!(" {} ", words.join(" ").to_lowercase())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let step = |hash: u64, &b: &u8| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, step)
}

#[cfg(test)]
mod quality_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ExperienceLevel::{self, Advanced, Beginner, Intermediate};
    use crate::domain::roadmap::check_weeks;

    /// One role per family, in the order of `FAMILIES`.
    const ROLES: &str = "iOS Developer,Application Security Engineer,Full-Stack Developer,\
                         Data Engineer,ML Engineer,DevOps / SRE,Frontend Developer,\
                         Backend Engineer,Chef";

    fn profile(role: &str, level: ExperienceLevel, hours: u32, focus: &[&str]) -> JobProfile {
        JobProfile {
            target_role: role.into(),
            experience_level: level,
            hours_per_week: hours,
            focus_areas: focus.iter().map(|f| f.to_string()).collect(),
            language: "en".into(),
        }
    }

    fn roadmap(p: &JobProfile, n: u32) -> Vec<Week> {
        let outline = phases(p, n);
        (1..=n).map(|w| week(p, &outline, w, n)).collect()
    }

    #[test]
    fn phases_cover_every_duration_contiguously() {
        for (n, role) in (1..=52).zip(ROLES.split(',').cycle()) {
            let outline = phases(&profile(role, [Beginner, Advanced][n as usize % 2], 5, &[]), n);
            let expected = [1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 3].get(n as usize - 1);
            assert_eq!(outline.len(), *expected.unwrap_or(&4));
            let mut next = 1;
            for (phase, number) in outline.iter().zip(1..) {
                assert_eq!((phase.number, phase.week_from), (number, next), "{n}");
                assert!(phase.week_to >= phase.week_from && phase.title.contains(role));
                assert!(phase.objective.contains(role));
                next = phase.week_to + 1;
            }
            assert_eq!(next, n + 1);
        }
    }

    #[test]
    fn weeks_are_valid_and_unchanged_by_the_domain_checks() {
        let kinds = [TaskKind::Learn, TaskKind::Practice, TaskKind::Project];
        for (r, role) in ROLES.split(',').enumerate() {
            let family = &Plan::new(&profile(role, Beginner, 1, &[]), 1).family;
            assert_eq!(family.join("#"), FAMILIES[r], "{role}");
            for (l, level) in [Beginner, Intermediate, Advanced].into_iter().enumerate() {
                let hours = [1, 10, 80][(r + l) % 3];
                let p = profile(role, level, hours, &["testing", "system design"][..r % 3]);
                for n in [1, 3, 12, 52] {
                    let weeks = roadmap(&p, n);
                    assert!(weeks.windows(2).all(|w| w[0].title != w[1].title));
                    for w in weeks {
                        let (number, phase) = (w.number, w.phase);
                        let checked = check_weeks(vec![w.clone()], number..=number, |_| phase);
                        let checked = checked.unwrap_or_else(|e| panic!("{role} {number}: {e:?}"));
                        assert_eq!((&checked[0].title, &checked[0].days), (&w.title, &w.days));
                        assert_eq!(w.source, WeekSource::Fallback);
                        for (i, day) in w.days.iter().enumerate() {
                            assert!((1..=4).contains(&day.tasks.len()));
                            assert!(w.days[..i].iter().all(|d| d.title != day.title));
                        }
                        let tasks: Vec<&Task> = w.days.iter().flat_map(|d| &d.tasks).collect();
                        for t in &tasks {
                            assert!((15..=480).contains(&t.minutes) && t.resources.len() <= 2);
                            assert!(!t.title.contains('{') && !t.description.contains('{'));
                            let mut urls = t.resources.iter().filter_map(|r| r.url.as_deref());
                            assert!(urls.all(|u| u.starts_with("https://")));
                        }
                        let has = |k: &TaskKind| tasks.iter().any(|t| t.kind == *k);
                        assert!(hours < 10 || kinds.iter().all(has) && has(&TaskKind::Review));
                    }
                }
            }
        }
    }

    #[test]
    fn content_follows_role_level_focus_and_budget() {
        let first = |role, level| roadmap(&profile(role, level, 10, &[]), 12)[0].title.clone();
        let frontend = first("Frontend Developer", Beginner);
        assert_ne!(frontend, first("Data Scientist", Beginner));
        assert_ne!(frontend, first("Frontend Developer", Advanced));
        let chef = roadmap(&profile("Chef", Beginner, 10, &["pastry"]), 6);
        let text = serde_json::to_string(&chef).unwrap();
        assert!(text.contains("Chef") && text.contains("pastry"));
        for role in ["Security guard", "Restaurant server", "Domain expert"] {
            assert!(Plan::new(&profile(role, Beginner, 5, &[]), 1).generic, "{role}");
        }
        // Short and long roadmaps alike run from the basics to the capstone.
        for n in [2, 5, 52] {
            let weeks = roadmap(&profile("Backend Engineer", Beginner, 14, &[]), n);
            assert!(weeks[0].title.starts_with("How the web works"));
            assert!(weeks[n as usize - 1].title.starts_with("Capstone"), "{n}");
            let minutes = |d: &Day| d.tasks.iter().map(|t| t.minutes).sum::<u32>();
            assert!(weeks[0].days.iter().all(|d| minutes(d) == 120));
        }
    }

    #[test]
    fn output_is_deterministic() {
        let p = profile("Cloud Engineer", Intermediate, 9, &["aws", "cost"]);
        assert_eq!(phases(&p, 20), phases(&p, 20));
        assert_eq!(roadmap(&p, 20), roadmap(&p, 20));
    }
}
