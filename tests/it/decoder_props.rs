//! Properties of `JobRequest::decode` over arbitrary bytes, arbitrary JSON and mutated valid
//! messages: it never panics; it either returns a job that keeps every rule of the contract, or a
//! refusal with a known reason code; and it agrees with `schemas/job.v1.json` on which JSON
//! messages are acceptable, except where the schema's own comment says they differ.

use std::{collections::BTreeSet, sync::LazyLock};

use proptest::prelude::*;
use roadmap_worker::domain::{
    ExperienceLevel, JobRequest, Rejection,
    job::{MAX_BODY_BYTES, MAX_FOCUS_AREAS, is_language_tag},
};
use serde_json::{Value, json};
use uuid::Uuid;

use testkit::job_strategies::{
    FIELDS, content_type, json_value, jsonish_bytes, mutated_message, valid_message,
};

fn load(name: &str) -> Value {
    let path = format!("{}/schemas/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

static JOB_SCHEMA: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&load("job.v1"))
        .expect("schemas/job.v1.json compiles")
});

/// The reason codes the contract knows, as listed in the failed event's schema.
static CODES: LazyLock<BTreeSet<String>> = LazyLock::new(|| {
    load("roadmap.failed.v1")["$defs"]["reject_reason"]["enum"]
        .as_array()
        .expect("$defs/reject_reason lists the codes")
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
});

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 384,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// `s` is acceptable contract text: trimmed, 1..=max characters, no control characters.
fn is_clean_text(s: &str, max: usize) -> bool {
    s == s.trim() && !s.is_empty() && s.chars().count() <= max && !s.chars().any(char::is_control)
}

/// What must hold of any result of `decode`, whatever the input.
fn check_outcome(result: &Result<JobRequest, Rejection>, input: Option<&Value>) -> Result<(), TestCaseError> {
    match result {
        Ok(job) => {
            prop_assert!(is_clean_text(&job.user_id, 128), "user_id {:?}", job.user_id);
            prop_assert!(
                is_clean_text(&job.target_role, 200),
                "target_role {:?}",
                job.target_role
            );
            prop_assert!((1..=52).contains(&job.duration_weeks));
            prop_assert!((1..=80).contains(&job.hours_per_week));
            prop_assert!(job.focus_areas.len() <= MAX_FOCUS_AREAS);
            for area in &job.focus_areas {
                prop_assert!(is_clean_text(area, 100), "focus area {:?}", area);
            }
            prop_assert!(is_language_tag(&job.language), "language {:?}", job.language);
            // The job is what the message said, with the contract's defaults.
            if let Some(Value::Object(obj)) = input {
                let given = |k: &str| obj.get(k).filter(|v| !v.is_null());
                let id = obj["job_id"].as_str().unwrap();
                prop_assert_eq!(job.job_id, Uuid::parse_str(id).unwrap());
                prop_assert_eq!(Some(job.user_id.as_str()), obj["user_id"].as_str().map(str::trim));
                prop_assert_eq!(
                    i64::from(job.duration_weeks),
                    obj["duration_weeks"].as_i64().unwrap()
                );
                let hours = given("hours_per_week").map_or(10, |v| v.as_i64().unwrap());
                prop_assert_eq!(i64::from(job.hours_per_week), hours);
                let level = given("experience_level").map_or("beginner", |v| v.as_str().unwrap());
                prop_assert_eq!(job.experience_level.as_str(), level);
                let language = given("language").map_or("en", |v| v.as_str().unwrap());
                prop_assert_eq!(job.language.as_str(), language);
                let areas: Vec<&str> = given("focus_areas")
                    .map(|v| {
                        v.as_array()
                            .unwrap()
                            .iter()
                            .map(|a| a.as_str().unwrap().trim())
                            .collect()
                    })
                    .unwrap_or_default();
                prop_assert_eq!(
                    job.focus_areas.iter().map(String::as_str).collect::<Vec<_>>(),
                    areas
                );
            }
            // What the code publishes for a job decodes to the same job.
            let again = JobRequest::decode(job.to_message().to_string().as_bytes(), Some("application/json"));
            prop_assert_eq!(again.as_ref().ok(), Some(job));
        }
        Err(rejection) => {
            let code = rejection.reason.code();
            prop_assert!(
                !code.is_empty() && CODES.contains(code),
                "unknown code {:?}",
                code
            );
            prop_assert!(!rejection.reason.to_string().is_empty());
            // The identity kept for the failed event is only ever a valid one.
            if let Some(user) = &rejection.user_id {
                prop_assert!(is_clean_text(user, 128), "rejection user_id {:?}", user);
            }
            if let Some(id) = rejection.job_id {
                let read = input
                    .and_then(|v| v.get("job_id"))
                    .and_then(Value::as_str)
                    .and_then(|s| Uuid::parse_str(s).ok());
                prop_assert_eq!(Some(id), read, "the job_id of the rejection is the message's");
            }
        }
    }
    Ok(())
}

/// Where the worker accepts what the schema does not advertise (documented in the schema's
/// `$comment`): a job_id in another spelling of a UUID than the hyphenated one.
fn worker_is_lenient(message: &Value) -> bool {
    let hyphenated = |s: &str| s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4;
    message
        .get("job_id")
        .and_then(Value::as_str)
        .is_some_and(|s| Uuid::parse_str(s).is_ok() && !hyphenated(s))
}

fn decode_value(value: &Value) -> Result<JobRequest, Rejection> {
    JobRequest::decode(value.to_string().as_bytes(), Some("application/json"))
}

/// Decoder and schema agree on whether a JSON message is acceptable.
fn check_agreement(message: &Value) -> Result<(), TestCaseError> {
    let decoded = decode_value(message);
    check_outcome(&decoded, Some(message))?;
    let schema_ok = JOB_SCHEMA.is_valid(message);
    if schema_ok {
        prop_assert!(
            decoded.is_ok(),
            "the schema accepts what the worker refuses ({}): {}",
            decoded.as_ref().err().map_or("", |r| r.reason.code()),
            message
        );
    } else if !worker_is_lenient(message) {
        let errors: Vec<String> = JOB_SCHEMA.iter_errors(message).map(|e| e.to_string()).collect();
        prop_assert!(
            decoded.is_err(),
            "the worker accepts what the schema refuses ({:?}): {}",
            errors,
            message
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_and_refusals_have_known_codes(
        body in prop_oneof![prop::collection::vec(any::<u8>(), 0..300), jsonish_bytes()],
        ct in content_type(),
    ) {
        let result = JobRequest::decode(&body, ct.as_deref());
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        check_outcome(&result, parsed.as_ref())?;
        if let Some(ct) = &ct {
            let essence = ct.split(';').next().unwrap_or("").trim();
            if !essence.eq_ignore_ascii_case("application/json") {
                prop_assert_eq!(result.map_err(|r| r.reason.code()).err(), Some("wrong_content_type"));
            }
        }
    }

    #[test]
    fn arbitrary_json_is_decoded_as_the_schema_says(value in json_value()) {
        check_agreement(&value)?;
    }

    #[test]
    fn mutated_valid_messages_are_decoded_as_the_schema_says(message in mutated_message()) {
        check_agreement(&message)?;
    }

    #[test]
    fn valid_messages_are_accepted(message in valid_message()) {
        prop_assert!(JOB_SCHEMA.is_valid(&message), "{}", message);
        let job = decode_value(&message);
        prop_assert!(job.is_ok(), "{}: {:?}", message, job.err());
        check_outcome(&job, Some(&message))?;
    }

    #[test]
    fn oversized_or_deep_bodies_are_refused_before_parsing(
        extra in 1usize..2048,
        depth in 17usize..4000,
        deep in any::<bool>(),
    ) {
        let body = if deep {
            format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
        } else {
            let pad = "x".repeat(MAX_BODY_BYTES + extra);
            json!({"job_id": Uuid::new_v4(), "user_id": "u", "target_role": "r", "duration_weeks": 3, "pad": pad})
                .to_string()
                .into_bytes()
        };
        let refused = JobRequest::decode(&body, Some("application/json"));
        let code = refused.as_ref().err().map(|r| r.reason.code());
        let expected = if body.len() > MAX_BODY_BYTES { "body_too_large" } else { "nesting_too_deep" };
        prop_assert_eq!(code, Some(expected));
        check_outcome(&refused, None)?;
    }
}

/// Values at and around the edge of each field's rule.
fn edge_values(field: &str) -> Vec<Value> {
    let texts = |max: usize| -> Vec<Value> {
        let mut out = vec![
            json!(""),
            json!(" "),
            json!("\t\n"),
            json!("\u{a0}"),
            json!("\u{85}"),
        ];
        for n in [1, max - 1, max, max + 1] {
            for unit in ["a", "é", "😀", "\u{feff}", "\u{200b}", "\u{180e}"] {
                let core = unit.repeat(n);
                out.push(json!(core));
                out.push(json!(format!(" {core} ")));
                out.push(json!(format!("\u{3000}{core}\u{85}\n")));
                out.push(json!(format!("\r\u{b}\u{c}{core}\u{a0}\u{1680}")));
                out.push(json!(format!(
                    "\u{2000}\u{200a}\u{2028}{core}\u{2029}\u{202f}\u{205f}"
                )));
            }
            let core = "b".repeat(n);
            for ctl in ["\u{0}", "\u{7}", "\t", "\n", "\u{7f}", "\u{85}", "\u{9f}"] {
                out.push(json!(format!("b{ctl}{core}")));
                out.push(json!(format!("{core}{ctl}")));
            }
        }
        out
    };
    let mut values = vec![
        json!(null),
        json!(true),
        json!(7),
        json!(1.5),
        json!([]),
        json!({}),
    ];
    match field {
        "job_id" => {
            let id = Uuid::new_v4();
            for s in [
                id.to_string(),
                id.to_string().to_uppercase(),
                id.simple().to_string(),
                id.braced().to_string(),
                id.urn().to_string(),
                id.to_string()[..35].to_owned(),
                format!("{id}0"),
                format!(" {id}"),
                Uuid::nil().to_string(),
                String::new(),
            ] {
                values.push(json!(s));
            }
        }
        "user_id" => values.extend(texts(128)),
        "target_role" => values.extend(texts(200)),
        "duration_weeks" | "hours_per_week" => {
            for n in [-1i64, 0, 1, 2, 51, 52, 53, 79, 80, 81, i64::MIN, i64::MAX] {
                values.push(json!(n));
            }
            values.extend([json!(u64::MAX), json!(-0.5), json!("3")]);
        }
        "experience_level" => {
            for s in [
                "beginner",
                "intermediate",
                "advanced",
                "Beginner",
                "expert",
                "",
                " beginner",
            ] {
                values.push(json!(s));
            }
        }
        "focus_areas" => {
            for n in [0, 1, 9, 10, 11] {
                values.push(json!(vec!["area"; n]));
            }
            for text in texts(100) {
                values.push(json!([text]));
                values.push(json!(["ok", text, "fine"]));
            }
            values.extend([json!([null]), json!([1]), json!([["nested"]]), json!("area")]);
        }
        "language" => {
            for s in [
                "en",
                "EN",
                "de-CH",
                "zh-Hans-CN",
                "es-419",
                "abc",
                "abcd",
                "abcde",
                "abcdefgh",
                "abcdefghi",
                "e",
                "",
                "en-",
                "-en",
                "en--x",
                "en_US",
                "en us",
                " en",
                "en ",
                "en\n",
                "123",
                "de-ä",
                "en-a",
                "en-abcdefgh",
                "en-abcdefghi",
                "abcdefgh-abcdefgh-abcdefgh-abcdefgh",
                "abcdefgh-abcdefgh-abcdefgh-abcde-abc",
            ] {
                values.push(json!(s));
            }
        }
        _ => unreachable!("{field}"),
    }
    values
}

/// Every edge value of every field, in an otherwise valid message: the decoder and the schema
/// agree (a table, so that a limit moved by one in either fails every run).
#[test]
fn every_edge_value_of_every_field_is_decoded_as_the_schema_says() {
    let base = json!({"job_id": Uuid::new_v4(), "user_id": "u", "target_role": "r", "duration_weeks": 3});
    let mut checked = 0;
    for field in FIELDS {
        let mut message = base.clone();
        message.as_object_mut().unwrap().remove(field);
        check_agreement(&message).unwrap_or_else(|e| panic!("without {field}: {e}"));
        for value in edge_values(field) {
            let mut message = base.clone();
            message[field] = value;
            check_agreement(&message).unwrap_or_else(|e| panic!("{field}: {e}"));
            checked += 1;
        }
    }
    assert!(checked > 400, "{checked}");
}

#[test]
fn every_level_is_decoded() {
    for level in [
        ExperienceLevel::Beginner,
        ExperienceLevel::Intermediate,
        ExperienceLevel::Advanced,
    ] {
        let message = json!({"job_id": Uuid::new_v4(), "user_id": "u", "target_role": "r",
                             "duration_weeks": 2, "experience_level": level.as_str()});
        assert_eq!(decode_value(&message).unwrap().experience_level, level);
    }
}
