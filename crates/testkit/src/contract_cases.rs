//! The table of `contracts.rs`: job messages that break the contract, each with the reason code
//! the decoder must give it.

use serde_json::{Value, json};

/// Messages that break the contract: the schema must refuse each, and the decoder with this code.
pub fn invalid_messages() -> Vec<(&'static str, Value, &'static str)> {
    let id = "7f1d7f8e-3a5c-4a55-9d1f-6a3b2c1d0e9f";
    let base = json!({"job_id": id, "user_id": "u", "target_role": "Data Engineer", "duration_weeks": 4});
    let with = |field: &str, value: Value| {
        let mut v = base.clone();
        v[field] = value;
        v
    };
    let without = |field: &str| {
        let mut v = base.clone();
        v.as_object_mut().unwrap().remove(field);
        v
    };
    vec![
        ("an array", json!([base.clone()]), "not_object"),
        ("a string", json!("job"), "not_object"),
        ("null", Value::Null, "not_object"),
        ("no job_id", without("job_id"), "missing_field"),
        ("no user_id", without("user_id"), "missing_field"),
        ("no target_role", without("target_role"), "missing_field"),
        ("no duration_weeks", without("duration_weeks"), "missing_field"),
        ("null job_id", with("job_id", Value::Null), "missing_field"),
        (
            "null duration_weeks",
            with("duration_weeks", Value::Null),
            "missing_field",
        ),
        ("numeric job_id", with("job_id", json!(7)), "invalid_type"),
        ("numeric user_id", with("user_id", json!(7)), "invalid_type"),
        ("string weeks", with("duration_weeks", json!("4")), "invalid_type"),
        (
            "fractional weeks",
            with("duration_weeks", json!(1.5)),
            "invalid_type",
        ),
        (
            "boolean hours",
            with("hours_per_week", json!(true)),
            "invalid_type",
        ),
        (
            "focus not a list",
            with("focus_areas", json!("SQL")),
            "invalid_type",
        ),
        (
            "focus item not a string",
            with("focus_areas", json!([1])),
            "invalid_type",
        ),
        (
            "control character",
            with("target_role", json!("Dev\u{7}Ops")),
            "invalid_type",
        ),
        ("numeric language", with("language", json!(5)), "invalid_type"),
        ("0 weeks", with("duration_weeks", json!(0)), "out_of_range"),
        ("53 weeks", with("duration_weeks", json!(53)), "out_of_range"),
        ("-1 weeks", with("duration_weeks", json!(-1)), "out_of_range"),
        (
            "huge weeks",
            with("duration_weeks", json!(u64::MAX)),
            "out_of_range",
        ),
        ("0 hours", with("hours_per_week", json!(0)), "out_of_range"),
        ("81 hours", with("hours_per_week", json!(81)), "out_of_range"),
        ("empty user_id", with("user_id", json!("")), "empty_string"),
        (
            "blank target_role",
            with("target_role", json!(" \t\n ")),
            "empty_string",
        ),
        (
            "blank focus area",
            with("focus_areas", json!(["  "])),
            "empty_string",
        ),
        (
            "user_id of 129",
            with("user_id", json!("u".repeat(129))),
            "too_long",
        ),
        (
            "target_role of 201",
            with("target_role", json!("r".repeat(201))),
            "too_long",
        ),
        (
            "focus area of 101",
            with("focus_areas", json!(["f".repeat(101)])),
            "too_long",
        ),
        (
            "11 focus areas",
            with("focus_areas", json!(vec!["a"; 11])),
            "too_many_focus_areas",
        ),
        (
            "unknown level",
            with("experience_level", json!("guru")),
            "unknown_experience_level",
        ),
        (
            "capitalised level",
            with("experience_level", json!("Beginner")),
            "unknown_experience_level",
        ),
        (
            "unknown priority",
            with("priority", json!("urgent")),
            "unknown_priority",
        ),
        ("numeric priority", with("priority", json!(1)), "invalid_type"),
        (
            "underscore tag",
            with("language", json!("en_US")),
            "invalid_language",
        ),
        ("empty tag", with("language", json!("")), "invalid_language"),
        (
            "long subtag",
            with("language", json!("en-abcdefghi")),
            "invalid_language",
        ),
        ("bad UUID", with("job_id", json!("not-a-uuid")), "invalid_job_id"),
        (
            "short UUID",
            with("job_id", json!("7f1d7f8e-3a5c-4a55-9d1f")),
            "invalid_job_id",
        ),
    ]
}
