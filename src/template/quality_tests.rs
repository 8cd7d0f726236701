//! The content checks of `domain::quality` on examples: the thresholds' worked cases, a good
//! roadmap (the template's, for every family, hours and length) with no problem, and each
//! problem found on the misbehaviour it is for. Here, beside the template, because the domain
//! layer may not import it.

use crate::{
    domain::{ExperienceLevel, JobProfile, Plan, Resource, Week, WeekOutline, WeekSource, quality::*},
    template,
};

fn similarity(a: &str, b: &str) -> f64 {
    jaccard(&word_set(a), &word_set(b))
}

#[test]
fn titles_are_normalised_before_they_are_compared() {
    assert_eq!(words("Day 3: Build a REST-API!"), words("build a rest api"));
    assert_eq!(words("Week 2 - Step 1. Review"), words("review"));
    assert_eq!(words("4) Read the docs"), words("Read the docs"));
    assert_eq!(
        similarity("Set up Postgres, locally", "set up POSTGRES locally"),
        1.0
    );
}

#[test]
fn the_near_copy_threshold_on_its_worked_examples() {
    // Copies: reordered, re-cased, or one word added to a title of four or more.
    assert!(similarity("Set up PostgreSQL locally", "Set up PostgreSQL locally today") >= NEAR_COPY);
    assert!(similarity("Day 1: Read the Rust book", "Read the Rust book") >= NEAR_COPY);
    assert!(similarity("Docker volumes and networks", "Networks and volumes in Docker") >= NEAR_COPY);
    // Not copies: a word changed, or another topic in the same frame.
    assert!(similarity("Build a REST API with Flask", "Build the REST API with Flask") < NEAR_COPY);
    assert!(similarity("Study the core ideas of SQL", "Study the core ideas of Python") < NEAR_COPY);
    assert!(similarity("Read up on Docker", "Read up on Kubernetes") < NEAR_COPY);
}

fn profile(role: &str, level: ExperienceLevel, hours: u32) -> JobProfile {
    JobProfile {
        target_role: role.into(),
        experience_level: level,
        hours_per_week: hours,
        focus_areas: vec!["testing".into()],
        language: "en".into(),
    }
}

/// The template roadmap as a model would have written it, with its outline.
fn roadmap(p: &JobProfile, weeks: u32) -> (Vec<Week>, Vec<WeekOutline>) {
    let (phases, outline) = template::outline(p, weeks);
    let weeks = (1..=weeks)
        .map(|n| Week {
            source: WeekSource::Llm,
            ..template::week(p, &phases, n, weeks)
        })
        .collect();
    (weeks, outline)
}

/// Every batch of `weeks` in batches of `size`, checked against the batch before it.
fn problems_by_batch(
    p: &JobProfile,
    weeks: &[Week],
    outline: &[WeekOutline],
    size: u32,
) -> Vec<ContentProblem> {
    let plan = Plan::new(Vec::new(), weeks.len() as u32, size);
    let standard = Standard {
        hours_per_week: p.hours_per_week,
        outline,
    };
    let slice = |first: u32, last: u32| &weeks[first as usize - 1..last as usize];
    let mut found = Vec::new();
    for (i, batch) in plan.batches.iter().enumerate() {
        let earlier = match i {
            0 => &[][..],
            _ => slice(plan.batches[i - 1].first, plan.batches[i - 1].last),
        };
        found.extend(check_content(slice(batch.first, batch.last), earlier, standard));
    }
    found
}

#[test]
fn a_good_roadmap_has_no_content_problem() {
    use ExperienceLevel::{Advanced, Beginner, Intermediate};
    let roles = [
        "iOS Developer",
        "Application Security Engineer",
        "Full-Stack Developer",
        "Data Engineer",
        "ML Engineer",
        "DevOps / SRE",
        "Frontend Developer",
        "Backend Engineer",
        "Chef",
    ];
    for (r, role) in roles.into_iter().enumerate() {
        // Each family at one level (levels only drop early topics), to keep the test quick.
        for level in [[Beginner, Intermediate, Advanced][r % 3]] {
            for hours in [1, 3, 4, 10, 25, 80] {
                let p = profile(role, level, hours);
                for length in [3, 12, 24, 52] {
                    let (weeks, outline) = roadmap(&p, length);
                    let found = problems_by_batch(&p, &weeks, &outline, 3);
                    assert_eq!(found, [], "{role} {level:?} {hours} h {length} weeks");
                }
            }
        }
    }
}

#[test]
fn a_batch_that_copies_the_previous_one_repeats_its_tasks() {
    let p = profile("Data Engineer", ExperienceLevel::Beginner, 10);
    let (mut weeks, outline) = roadmap(&p, 6);
    for n in 3..6 {
        weeks[n].days = weeks[n - 3].days.clone();
    }
    let found = problems_by_batch(&p, &weeks, &outline, 3);
    let repeated: Vec<u32> = found
        .iter()
        .filter_map(|p| match p {
            ContentProblem::RepeatedTasks {
                week,
                repeated,
                tasks,
                ..
            } => {
                assert_eq!(repeated, tasks);
                Some(*week)
            }
            _ => None,
        })
        .collect();
    assert_eq!(repeated, [4, 5, 6]);
    assert!(
        found.iter().all(|p| p.kind() == ProblemKind::RepeatedTasks),
        "{found:?}"
    );
    // Within one batch too: week 2 a copy of week 1.
    let (mut weeks, outline) = roadmap(&p, 3);
    weeks[1].days = weeks[0].days.clone();
    let found = problems_by_batch(&p, &weeks, &outline, 3);
    assert!(
        matches!(found[..], [ContentProblem::RepeatedTasks { week: 2, .. }]),
        "{found:?}"
    );
    let shown = found[0].to_string();
    assert!(shown.starts_with("week 2 repeats"), "{shown}");
}

#[test]
fn a_week_that_ignores_its_outline_drops_it() {
    let p = profile("Backend Engineer", ExperienceLevel::Intermediate, 8);
    let (mut weeks, outline) = roadmap(&p, 3);
    weeks[1].title = "General study week".into();
    weeks[1].goals = vec!["Keep learning every day".into()];
    // A paraphrase keeps enough of the outline's words.
    weeks[2].title = format!("{} in practice", outline[2].title);
    weeks[2].goals.truncate(1);
    let found = problems_by_batch(&p, &weeks, &outline, 3);
    assert_eq!(
        found,
        [ContentProblem::OffOutline {
            week: 2,
            title: "General study week".into(),
            outline: outline[1].title.clone(),
        }]
    );
}

#[test]
fn hours_outside_a_quarter_of_the_learners_are_off_plan() {
    let p = profile("Frontend Developer", ExperienceLevel::Beginner, 10);
    let (mut weeks, outline) = roadmap(&p, 3);
    // 3 hours planned for a 10-hour week; 20 hours in another.
    for task in weeks[0].days.iter_mut().flat_map(|d| &mut d.tasks) {
        task.minutes = task.minutes * 3 / 10;
    }
    for task in weeks[2].days.iter_mut().flat_map(|d| &mut d.tasks) {
        task.minutes *= 2;
    }
    let found = problems_by_batch(&p, &weeks, &outline, 3);
    let kinds: Vec<(ProblemKind, u32)> = found
        .iter()
        .map(|p| match p {
            ContentProblem::HoursOffPlan {
                week, wanted_minutes, ..
            } => {
                assert_eq!(*wanted_minutes, 600);
                (p.kind(), *week)
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [(ProblemKind::HoursOffPlan, 1), (ProblemKind::HoursOffPlan, 3)]
    );
    // A 1-hour week cannot be planned under 7 tasks of 15 minutes: 105 minutes pass.
    let p = profile("Chef", ExperienceLevel::Beginner, 1);
    let (weeks, outline) = roadmap(&p, 1);
    let planned: u32 = weeks[0]
        .days
        .iter()
        .flat_map(|d| &d.tasks)
        .map(|t| t.minutes)
        .sum();
    assert_eq!(planned, MIN_WEEK_MINUTES);
    assert_eq!(problems_by_batch(&p, &weeks, &outline, 1), []);
}

#[test]
fn resources_need_a_real_title_and_a_usable_url() {
    let p = profile("Data Engineer", ExperienceLevel::Beginner, 10);
    let (mut weeks, outline) = roadmap(&p, 1);
    let resource = |title: &str, url: Option<&str>| Resource {
        title: title.into(),
        url: url.map(Into::into),
    };
    weeks[0].days[1].tasks[0].resources = vec![
        resource("Python documentation", Some("https://docs.python.org/3/")),
        resource("Your own learning journal", None),
        resource("Link", Some("https://docs.python.org/3/")),
        resource("SQL tutorial", Some("https://example.com/sql")),
        resource("Notes", Some("http://localhost:8080/notes")),
        resource("Docs", Some("https://www.example.org")),
        resource("Intranet", Some("https://wiki/")),
    ];
    let found = problems_by_batch(&p, &weeks, &outline, 1);
    let titles: Vec<&str> = found
        .iter()
        .map(|p| match p {
            ContentProblem::UnusableResource {
                week: 1,
                day: 2,
                title,
            } => title.as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(titles, ["Link", "SQL tutorial", "Notes", "Docs", "Intranet"]);
}

#[test]
fn template_weeks_are_not_judged_and_problems_round_trip() {
    let p = profile("Chef", ExperienceLevel::Beginner, 10);
    let (mut weeks, outline) = roadmap(&p, 2);
    weeks[1].days = weeks[0].days.clone();
    weeks[1].source = WeekSource::Fallback;
    assert_eq!(problems_by_batch(&p, &weeks, &outline, 2), []);
    let quality = BatchQuality {
        problems: vec![ContentProblem::HoursOffPlan {
            week: 1,
            planned_minutes: 180,
            wanted_minutes: 600,
        }],
        reasked: true,
    };
    let json = serde_json::to_value(&quality).unwrap();
    assert_eq!(json["problems"][0]["kind"], "hours_off_plan");
    assert_eq!(serde_json::from_value::<BatchQuality>(json).unwrap(), quality);
    for kind in ProblemKind::ALL {
        assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
    }
}

/// A phase's first batch is written beside the phase before it: a copy of that phase's last
/// weeks is found in the assembled roadmap, and a good roadmap has none.
#[test]
fn repeats_across_phase_boundaries_are_found_after_assembly() {
    let p = profile("Data Engineer", ExperienceLevel::Beginner, 10);
    let (phases, outline) = template::outline(&p, 12);
    let outline = crate::domain::Outline {
        weeks: outline,
        source: WeekSource::Llm,
        usage: Default::default(),
    };
    let plan = Plan::outlined(phases, outline, 12, 3);
    let (mut weeks, _) = roadmap(&p, 12);
    assert_eq!(repeats_across_phases(&plan, &weeks, 3), [], "a good roadmap");
    // The second phase's first week copies the first phase's last.
    let second = plan.chains()[1][0].first;
    let copied = weeks[second as usize - 2].days.clone();
    weeks[second as usize - 1].days = copied;
    let found = repeats_across_phases(&plan, &weeks, 3);
    assert!(
        matches!(found.as_slice(), [ContentProblem::RepeatedTasks { week, .. }] if *week == second),
        "{found:?}"
    );
}
