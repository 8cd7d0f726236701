//! Proptest strategies for job messages, used by `decoder_props.rs`: arbitrary bytes and JSON, valid
//! messages, and valid messages with fields removed or set to values near (or far from) their rules.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use uuid::Uuid;

pub fn content_type() -> BoxedStrategy<Option<String>> {
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
pub fn jsonish_bytes() -> BoxedStrategy<Vec<u8>> {
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

pub fn json_value() -> BoxedStrategy<Value> {
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

pub const FIELDS: [&str; 8] = [
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
pub fn valid_message() -> BoxedStrategy<Value> {
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

pub fn mutated_message() -> BoxedStrategy<Value> {
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
