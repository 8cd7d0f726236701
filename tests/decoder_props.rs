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
use serde_json::{Map, Value, json};
use uuid::Uuid;

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

fn content_type() -> BoxedStrategy<Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json".to_owned())),
        Just(Some("application/json; charset=utf-8".to_owned())),
        Just(Some("text/plain".to_owned())),
        "[ -~]{0,40}".prop_map(Some),
    ]
    .boxed()
}

/// Bytes that are mostly JSON punctuation, so the parser gets further than with noise.
fn jsonish_bytes() -> BoxedStrategy<Vec<u8>> {
    let alphabet: Vec<u8> = br#"{}[]":,.-+0123456789eEtrufalsn \ job_id"#.to_vec();
    prop::collection::vec(prop::sample::select(alphabet), 0..200).boxed()
}

/// JSON leaves. Floats always have a fraction: 3.0 is where schema and decoder differ by design.
fn leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-100i64..100).prop_map(Value::from),
        (-1000i32..1000).prop_map(|n| json!(f64::from(n) + 0.5)),
        any::<String>().prop_map(Value::String),
        any_text().prop_map(Value::String),
    ]
    .boxed()
}

fn json_value() -> BoxedStrategy<Value> {
    let key = prop_oneof![
        prop::sample::select(FIELDS.to_vec()).prop_map(str::to_owned),
        "[a-z_]{0,12}",
    ];
    leaf()
        .prop_recursive(4, 48, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
            ]
        })
        .boxed()
}

const FIELDS: [&str; 8] = [
    "job_id",
    "user_id",
    "target_role",
    "duration_weeks",
    "experience_level",
    "hours_per_week",
    "focus_areas",
    "language",
];

/// Text near the edges of a string rule whose limit is `max` characters: mostly visible
/// characters, sometimes with whitespace padding (trimmed by the worker) or a control character
/// inside (refused).
fn text(max: usize) -> BoxedStrategy<String> {
    let visible = prop_oneof![
        Just("a"),
        Just("é"),
        Just("😀"),
        Just("\u{feff}"),
        Just("\u{200b}")
    ];
    let odd = prop_oneof![
        Just(" "),
        Just("\t"),
        Just("\n"),
        Just("\u{85}"),
        Just("\u{a0}"),
        Just("\u{3000}"),
        Just("\u{7}"),
        Just("\u{1b}"),
        Just("\u{9f}"),
    ];
    let fill = prop_oneof![4 => visible, 1 => odd.clone()];
    let length = prop_oneof![Just(0), Just(1), Just(2), Just(max - 1), Just(max), Just(max + 1),];
    let padding = prop_oneof![3 => Just(""), 1 => Just(" "), 1 => Just("\t\n"), 1 => Just("\u{2003}")];
    let noise = prop_oneof![3 => Just(vec![]), 1 => prop::collection::vec(odd, 1..3)];
    (padding.clone(), fill, length, noise, padding)
        .prop_map(|(pre, fill, n, noise, post)| {
            let mut s = String::from(pre);
            s.push_str(&fill.repeat(n));
            // Noise lands inside the text, where a control character is refused.
            for (i, u) in noise.into_iter().enumerate() {
                let mut at = (pre.len() + i * 7 + 1).min(s.len());
                while !s.is_char_boundary(at) {
                    at -= 1;
                }
                s.insert_str(at, u);
            }
            s.push_str(post);
            s
        })
        .boxed()
}

fn any_text() -> BoxedStrategy<String> {
    prop_oneof![text(100), text(128), text(200)].boxed()
}

fn uuid_text() -> BoxedStrategy<String> {
    any::<u128>()
        .prop_flat_map(|n| {
            let id = Uuid::from_u128(n);
            prop_oneof![
                Just(id.to_string()),
                Just(id.to_string().to_uppercase()),
                // Spellings the uuid crate parses but the schema does not advertise.
                Just(id.simple().to_string()),
                Just(id.braced().to_string()),
                Just(id.urn().to_string()),
                Just(id.to_string()[..35].to_owned()),
                Just(format!(" {id}")),
                Just(format!("{id}x")),
                Just(String::new()),
            ]
        })
        .boxed()
}

fn language() -> BoxedStrategy<String> {
    prop_oneof![
        prop::sample::select(vec![
            "en",
            "de-CH",
            "zh-Hans-CN",
            "es-419",
            "EN",
            "en_US",
            "",
            "e",
            "en-",
            "-en",
            "toolonglanguage",
            "abcde",
            "abcdefgh-12345678",
            "en-abcdefghi",
            "123",
            "en us",
            " en",
            "abcdefgh-abcdefgh-abcdefgh-abcdefgh",
            "abcdefgh-abcdefgh-abcdefgh-abcde-abc",
            "abcd",
            "abcd-CH",
            "abcdefghi",
            "en-a",
            "de-ä",
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z]{1,9}(-[a-zA-Z0-9]{0,9}){0,3}",
    ]
    .boxed()
}

fn integer() -> BoxedStrategy<Value> {
    prop_oneof![
        (-2i64..90).prop_map(Value::from),
        prop::sample::select(vec![-1i64, 0, 1, 2, 51, 52, 53, 79, 80, 81]).prop_map(Value::from),
        prop::sample::select(vec![
            json!(i64::MIN),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(1.5),
            json!(-0.5),
            json!("3"),
            json!(null),
            json!(true),
        ]),
    ]
    .boxed()
}

/// A valid message: every field within the rules, optional fields present or not.
fn valid_message() -> BoxedStrategy<Value> {
    (
        any::<u128>(),
        "[a-zA-Z0-9_-]{1,40}",
        "[A-Za-z][A-Za-z +#.]{0,60}",
        1u32..=52,
        prop::option::of(prop::sample::select(vec!["beginner", "intermediate", "advanced"])),
        prop::option::of(1u32..=80),
        prop::option::of(prop::collection::vec("[a-zA-Z0-9]{1,20}", 0..=10)),
        prop::option::of(prop::sample::select(vec![
            "en",
            "de-CH",
            "fr",
            "pt-BR",
            "zh-Hans-CN",
        ])),
    )
        .prop_map(|(id, user, role, weeks, level, hours, focus, lang)| {
            let mut m = json!({
                "job_id": Uuid::from_u128(id),
                "user_id": user,
                "target_role": role,
                "duration_weeks": weeks,
            });
            if let Some(level) = level {
                m["experience_level"] = json!(level);
            }
            if let Some(hours) = hours {
                m["hours_per_week"] = json!(hours);
            }
            if let Some(focus) = focus {
                m["focus_areas"] = json!(focus);
            }
            if let Some(lang) = lang {
                m["language"] = json!(lang);
            }
            m
        })
        .boxed()
}

/// A value for `field` that may or may not keep its rule.
fn field_value(field: &'static str) -> BoxedStrategy<Value> {
    match field {
        "job_id" => prop_oneof![4 => uuid_text().prop_map(Value::String), 1 => leaf()].boxed(),
        "user_id" => prop_oneof![4 => text(128).prop_map(Value::String), 1 => leaf()].boxed(),
        "target_role" => prop_oneof![4 => text(200).prop_map(Value::String), 1 => leaf()].boxed(),
        "duration_weeks" | "hours_per_week" => integer(),
        "experience_level" => prop_oneof![
            prop::sample::select(vec![
                "beginner",
                "intermediate",
                "advanced",
                "Beginner",
                "guru",
                ""
            ])
            .prop_map(|s| json!(s)),
            leaf(),
        ]
        .boxed(),
        "focus_areas" => prop_oneof![
            3 => prop::collection::vec(text(100).prop_map(Value::String), 0..4).prop_map(Value::Array),
            1 => prop::collection::vec("[a-z]{1,8}".prop_map(Value::String), 9..13).prop_map(Value::Array),
            1 => prop::collection::vec(leaf(), 0..4).prop_map(Value::Array),
            1 => leaf(),
        ]
        .boxed(),
        "language" => prop_oneof![4 => language().prop_map(Value::String), 1 => leaf()].boxed(),
        _ => json_value(),
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Remove(&'static str),
    Set(&'static str, Value),
}

fn mutation() -> BoxedStrategy<Mutation> {
    let each: Vec<(u32, BoxedStrategy<Mutation>)> = FIELDS
        .iter()
        .copied()
        .chain(["extra"])
        .flat_map(|field| {
            [
                (1, Just(Mutation::Remove(field)).boxed()),
                (
                    4,
                    field_value(field)
                        .prop_map(move |v| Mutation::Set(field, v))
                        .boxed(),
                ),
            ]
        })
        .collect();
    prop::strategy::Union::new_weighted(each).boxed()
}

fn mutated_message() -> BoxedStrategy<Value> {
    let mutations = prop_oneof![3 => prop::collection::vec(mutation(), 1..2), 1 => prop::collection::vec(mutation(), 2..4)];
    (valid_message(), mutations)
        .prop_map(|(mut message, mutations)| {
            let obj = message.as_object_mut().unwrap();
            for m in mutations {
                match m {
                    Mutation::Remove(k) => {
                        obj.remove(k);
                    }
                    Mutation::Set(k, v) => {
                        obj.insert(k.to_owned(), v);
                    }
                }
            }
            message
        })
        .boxed()
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
