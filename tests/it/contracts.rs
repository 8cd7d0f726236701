//! Promise: the JSON Schemas in `schemas/` describe the messages the code really reads and writes.
//! Real events from a real run are validated against them, the job messages that the code builds
//! (`JobRequest::to_message`, `roadmap-worker enqueue`) too, and invalid job messages must be
//! refused by the job schema and by `JobRequest::decode` alike, so the two cannot drift apart.

use std::{collections::BTreeSet, time::Duration};

use lapin::options::BasicGetOptions;
use mock_llm::{Fault, FaultPlan, RatedFault};
use roadmap_worker::domain::{
    JobRequest, RejectReason, dead_letter_codes,
    event::{CancelRefusal, JobFailure},
};
use serde_json::{Value, json};
use uuid::Uuid;

use testkit::contract_cases::invalid_messages;
use testkit::{TestEnv, job};

const SCHEMAS: [&str; 7] = [
    "job.v1",
    "cancel.v1",
    "roadmap.accepted.v1",
    "roadmap.completed.v1",
    "roadmap.failed.v1",
    "roadmap.progress.v1",
    "roadmap.cancel_rejected.v1",
];

fn load(name: &str) -> Value {
    let path = format!("{}/schemas/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

fn compile(schema: &Value) -> jsonschema::Validator {
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("schema does not compile: {e}"))
}

/// The schema as published: unknown fields allowed where it says so.
fn validator(name: &str) -> jsonschema::Validator {
    compile(&load(name))
}

/// The schema with `additionalProperties: false` on every object that lists its properties: a
/// field that the code emits but the schema does not document fails this one.
fn strict_validator(name: &str) -> jsonschema::Validator {
    fn close(value: &mut Value) {
        match value {
            Value::Object(map) => {
                if map.contains_key("properties") {
                    map.insert("additionalProperties".into(), Value::Bool(false));
                }
                map.values_mut().for_each(close);
            }
            Value::Array(items) => items.iter_mut().for_each(close),
            _ => {}
        }
    }
    let mut schema = load(name);
    close(&mut schema);
    compile(&schema)
}

#[track_caller]
fn assert_valid(validator: &jsonschema::Validator, instance: &Value, what: &str) {
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} breaks its schema: {errors:#?}\n{instance:#}"
    );
}

#[test]
fn schemas_are_draft_2020_12_and_list_every_reject_reason() {
    for name in SCHEMAS {
        let schema = load(name);
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
        if let Err(e) = jsonschema::draft202012::meta::validate(&schema) {
            panic!("{name} is not a valid draft 2020-12 schema: {e}");
        }
        compile(&schema);
        // Each published example is valid.
        let validator = compile(&schema);
        for example in schema["examples"].as_array().into_iter().flatten() {
            assert_valid(&validator, example, &format!("the example of {name}"));
        }
    }
    let job = load("job.v1");
    let required: BTreeSet<&str> = job["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        required,
        BTreeSet::from(["job_id", "user_id", "target_role", "duration_weeks"])
    );
    assert_eq!(job["properties"]["focus_areas"]["maxItems"], 10);
    assert_ne!(
        job["additionalProperties"], false,
        "unknown fields are ignored, so the job schema must allow them"
    );
    // The completed event embeds the roadmap shape under $defs.
    let completed = load("roadmap.completed.v1");
    for def in ["roadmap", "phase", "week", "day", "task", "resource"] {
        assert!(completed["$defs"][def].is_object(), "$defs/{def}");
    }
    assert_eq!(completed["properties"]["roadmap"]["$ref"], "#/$defs/roadmap");
}

/// The strings of a schema enum at `pointer`.
fn schema_enum(name: &str, pointer: &str) -> BTreeSet<String> {
    let schema = load(name);
    let values = schema
        .pointer(pointer)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("schemas/{name}.json has no enum at {pointer}"));
    values.iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

fn code_list<'a>(codes: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    codes.into_iter().map(str::to_owned).collect()
}

/// Every reason the code can emit, walked from the code's own lists, is in the schema's enum
/// for that place, and the enum lists nothing the code cannot emit.
#[test]
fn every_reason_the_code_emits_is_in_its_schema_enum() {
    let reject = code_list(RejectReason::CODES);
    let failures = code_list(JobFailure::ALL.map(JobFailure::as_str));
    assert_eq!(
        schema_enum("roadmap.failed.v1", "/$defs/reject_reason/enum"),
        reject,
        "schemas/roadmap.failed.v1.json $defs/reject_reason against RejectReason::CODES"
    );
    assert_eq!(
        schema_enum("roadmap.failed.v1", "/$defs/failure_reason/enum"),
        failures,
        "schemas/roadmap.failed.v1.json $defs/failure_reason against JobFailure::ALL"
    );
    // The event's `reason` takes exactly those two lists.
    let failed = load("roadmap.failed.v1");
    let mut reason = failed["properties"]["reason"].clone();
    reason["$defs"] = failed["$defs"].clone();
    let reason = compile(&reason);
    for code in reject.iter().chain(&failures) {
        assert!(reason.is_valid(&json!(code)), "{code}");
    }
    assert!(!reason.is_valid(&json!("invalid_cancel")));
    assert_eq!(
        schema_enum("roadmap.cancel_rejected.v1", "/properties/reason/enum"),
        code_list(CancelRefusal::ALL.map(CancelRefusal::as_str)),
        "schemas/roadmap.cancel_rejected.v1.json reason against CancelRefusal::ALL"
    );
    let mut dead_letter = schema_enum("job.v1", "/$defs/dead_letter_reason/enum");
    dead_letter.extend(schema_enum("cancel.v1", "/$defs/dead_letter_reason/enum"));
    assert_eq!(
        dead_letter,
        code_list(dead_letter_codes()),
        "the dead_letter_reason enums of schemas/job.v1.json and cancel.v1.json against \
         dead_letter_codes()"
    );
    // The README's reason list names every code too.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for code in reject.iter().chain(&failures).chain(&dead_letter) {
        assert!(
            readme.contains(&format!("`{code}`")),
            "README.md does not name the reason `{code}`"
        );
    }
}

/// A cancel that the worker dead-letters as `invalid_cancel` breaks the cancel schema too.
#[test]
fn cancels_the_worker_refuses_break_the_cancel_schema() {
    let schema = validator("cancel.v1");
    for refused in [
        json!({"job_id": "abc", "user_id": "u"}),
        json!({"job_id": 42, "user_id": "u"}),
        json!({"job_id": "7f1d7f8e-3a5c-4a55-9d1f-6a3b2c1d0e9f"}),
        json!({"job_id": "7f1d7f8e-3a5c-4a55-9d1f-6a3b2c1d0e9f", "user_id": ""}),
    ] {
        assert!(!schema.is_valid(&refused), "{refused}");
    }
    assert!(schema.is_valid(&json!({"job_id": "7f1d7f8e-3a5c-4a55-9d1f-6a3b2c1d0e9f", "user_id": "u"})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_events_match_their_schemas() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[]).await;
    let mut events = env.watcher().await;

    // 7 weeks in batches of 3: three batches, three progress events.
    let (job_id, body) = job(7, "Site Reliability Engineer");
    env.publish(&body).await;
    let mut progress = Vec::new();
    let completed = events
        .wait_for_end(job_id, Duration::from_secs(60), |p| progress.push(p.clone()))
        .await
        .unwrap();
    assert_eq!(completed.routing_key, "roadmap.completed", "{:#}", completed.body);
    let accepted = progress.remove(0);
    assert_eq!(
        accepted.routing_key, "roadmap.accepted",
        "the acceptance comes first"
    );
    for (validator, what) in [
        (validator("roadmap.accepted.v1"), "an accepted event"),
        (
            strict_validator("roadmap.accepted.v1"),
            "an accepted event (no undocumented field)",
        ),
    ] {
        assert_valid(&validator, &accepted.body, what);
    }
    assert_eq!(
        (
            &accepted.body["user_id"],
            &accepted.body["batches_done"],
            &accepted.body["claim"]
        ),
        (&json!("user-1"), &json!(0), &json!(1))
    );

    // A refusal whose job_id and user_id are readable, and one without a user_id.
    let bad_id = Uuid::new_v4();
    env.publish(&json!({"job_id": bad_id, "user_id": "u-7", "target_role": "Chef", "duration_weeks": 99}))
        .await;
    let failed = events
        .wait_for_end(bad_id, Duration::from_secs(30), |_| {})
        .await
        .unwrap();
    let anonymous_id = Uuid::new_v4();
    env.publish(&json!({"job_id": anonymous_id, "target_role": "Chef", "duration_weeks": 3}))
        .await;
    let anonymous = events
        .wait_for_end(anonymous_id, Duration::from_secs(30), |_| {})
        .await
        .unwrap();

    // A roadmap of template weeks: the LLM answers nothing usable, every batch falls back.
    env.mock.set_plan(FaultPlan {
        rates: vec![RatedFault {
            rate: 1.0,
            fault: Fault::InvalidJson,
        }],
        ..FaultPlan::default()
    });
    let fallback_id = Uuid::new_v4();
    env.publish(&json!({
        "job_id": fallback_id, "user_id": "u-fallback", "target_role": "ü".repeat(200),
        "duration_weeks": 4, "experience_level": "advanced", "hours_per_week": 80, "language": "de-CH",
        "focus_areas": vec!["f".repeat(100); 10],
    }))
    .await;
    let fallback = events
        .wait_for_end(fallback_id, Duration::from_secs(60), |_| {})
        .await
        .unwrap();
    assert_eq!(fallback.routing_key, "roadmap.completed", "{:#}", fallback.body);
    assert_eq!(fallback.body["fallback_batches"], 2);
    let sources: BTreeSet<&str> = fallback.body["roadmap"]["weeks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, BTreeSet::from(["fallback"]));

    let (progress_schema, completed_schema, failed_schema) = (
        validator("roadmap.progress.v1"),
        validator("roadmap.completed.v1"),
        validator("roadmap.failed.v1"),
    );
    let (progress_strict, completed_strict, failed_strict) = (
        strict_validator("roadmap.progress.v1"),
        strict_validator("roadmap.completed.v1"),
        strict_validator("roadmap.failed.v1"),
    );

    assert_eq!(progress.len(), 3, "one progress event per batch");
    for (i, event) in progress.iter().enumerate() {
        assert_eq!(event.routing_key, "roadmap.progress");
        assert_valid(&progress_schema, &event.body, "a progress event");
        assert_valid(
            &progress_strict,
            &event.body,
            "a progress event (no undocumented field)",
        );
        assert_eq!(event.body["batches_done"], i + 1);
        assert_eq!(event.body["batches_total"], 3);
    }

    for event in [&completed, &fallback] {
        assert_valid(&completed_schema, &event.body, "a completed event");
        assert_valid(
            &completed_strict,
            &event.body,
            "a completed event (no undocumented field)",
        );
    }
    // What the schema cannot say: the roadmap belongs to this event and is numbered 1..N.
    let c = &completed.body;
    assert_eq!(c["job_id"], job_id.to_string());
    assert_eq!(c["user_id"], "user-1");
    assert_eq!(c["batches"], 3);
    assert_eq!(c["roadmap"]["job_id"], c["job_id"]);
    assert_eq!(c["roadmap"]["roadmap_id"], c["roadmap_id"]);
    assert_eq!(c["roadmap"]["duration_weeks"], 7);
    let numbers: Vec<u64> = c["roadmap"]["weeks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (1..=7).collect::<Vec<u64>>());
    let phases = c["roadmap"]["phases"].as_array().unwrap();
    assert_eq!(phases.first().unwrap()["week_from"], 1);
    assert_eq!(phases.last().unwrap()["week_to"], 7);

    for (event, user) in [(&failed, Some("u-7")), (&anonymous, None)] {
        assert_eq!(event.routing_key, "roadmap.failed");
        assert_valid(&failed_schema, &event.body, "a failed event");
        assert_valid(
            &failed_strict,
            &event.body,
            "a failed event (no undocumented field)",
        );
        assert_eq!(event.body["user_id"].as_str(), user);
        let reason = compile(&load("roadmap.failed.v1")["$defs"]["reject_reason"]);
        assert!(reason.is_valid(&event.body["reason"]), "{:#}", event.body);
    }
    assert_eq!(failed.body["reason"], "out_of_range");
    assert_eq!(anonymous.body["reason"], "missing_field");

    // message_id = event_id, for de-duplication by the consumer.
    for event in progress
        .iter()
        .chain([&accepted, &completed, &failed, &anonymous, &fallback])
    {
        assert_eq!(
            event.message_id.as_deref(),
            event.body["event_id"].as_str(),
            "{}",
            event.routing_key
        );
    }

    worker.stop().await;
    env.cleanup().await;
}

#[test]
fn job_messages_built_by_the_code_match_the_job_schema() {
    let schema = validator("job.v1");
    let strict = strict_validator("job.v1");
    let id = Uuid::new_v4();
    let inputs = [
        json!({"job_id": id, "user_id": "u", "target_role": "Data Engineer", "duration_weeks": 1}),
        json!({"job_id": id, "user_id": " padded ", "target_role": " Data Engineer ", "duration_weeks": 52,
               "experience_level": "advanced", "hours_per_week": 80, "language": "zh-Hans-CN",
               "focus_areas": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"], "unknown": {"x": 1}}),
        json!({"job_id": id, "user_id": "x".repeat(128), "target_role": "é".repeat(200),
               "duration_weeks": 12, "experience_level": null, "hours_per_week": null,
               "focus_areas": null, "language": null}),
        json!({"job_id": id.to_string().to_uppercase(), "user_id": "u", "target_role": "r",
               "duration_weeks": 3, "experience_level": "intermediate", "hours_per_week": 1,
               "focus_areas": ["😀".repeat(100)], "language": "es-419"}),
        testkit::job(5, "Mobile Developer").1,
    ];
    for input in inputs {
        assert_valid(&schema, &input, "a valid job message");
        let job = JobRequest::decode(input.to_string().as_bytes(), Some("application/json"))
            .unwrap_or_else(|r| panic!("{} for {input}", r.reason));
        let message = job.to_message();
        assert_valid(&schema, &message, "JobRequest::to_message()");
        assert_valid(
            &strict,
            &message,
            "JobRequest::to_message() (only contract fields)",
        );
        let again = JobRequest::decode(message.to_string().as_bytes(), Some("application/json"))
            .unwrap_or_else(|r| panic!("{} for {message}", r.reason));
        assert_eq!(again, job, "to_message() decodes to the same job");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_enqueue_body_matches_the_job_schema() {
    let env = TestEnv::new().await;
    let amqp_url =
        std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_roadmap-worker"))
        .args([
            "enqueue",
            "--amqp-namespace",
            &env.name,
            "--role",
            "Data Engineer",
            "--weeks",
            "8",
            "--user",
            "cli-user",
            "--level",
            "advanced",
            "--hours",
            "12",
            "--focus",
            "SQL",
            "--focus",
            "Spark",
            "--language",
            "de-CH",
        ])
        .env("AMQP_URL", &amqp_url)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("running roadmap-worker enqueue");
    assert!(
        output.status.success(),
        "enqueue failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let channel = env.connection.create_channel().await.unwrap();
    let message = channel
        .basic_get(
            env.topology.queue.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the enqueued job is in the queue");
    let props = &message.delivery.properties;
    assert_eq!(
        props.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    let body: Value = serde_json::from_slice(&message.delivery.data).expect("a JSON body");
    assert_valid(&validator("job.v1"), &body, "the body of `enqueue`");
    assert_valid(
        &strict_validator("job.v1"),
        &body,
        "the body of `enqueue` (only contract fields)",
    );
    let job = JobRequest::decode(&message.delivery.data, Some("application/json"))
        .unwrap_or_else(|r| panic!("{} for {body}", r.reason));
    assert_eq!(
        (
            job.user_id.as_str(),
            job.target_role.as_str(),
            job.duration_weeks,
            job.experience_level.as_str(),
            job.hours_per_week,
            job.focus_areas.clone(),
            job.language.as_str()
        ),
        (
            "cli-user",
            "Data Engineer",
            8,
            "advanced",
            12,
            vec!["SQL".to_owned(), "Spark".to_owned()],
            "de-CH"
        )
    );
    env.cleanup().await;
}

#[test]
fn invalid_job_messages_are_refused_by_schema_and_decoder_alike() {
    let schema = validator("job.v1");
    let cases = invalid_messages();
    let codes: BTreeSet<&str> = cases.iter().map(|(_, _, code)| *code).collect();
    // Every code that a JSON value (rather than raw bytes or the database) can earn is covered.
    assert_eq!(codes.len(), 11, "{codes:?}");
    for (what, message, code) in cases {
        assert!(!schema.is_valid(&message), "the schema accepts {what}: {message}");
        let refused =
            JobRequest::decode(message.to_string().as_bytes(), Some("application/json")).expect_err(what);
        assert_eq!(refused.reason.code(), code, "{what}: {message}");
    }
    // And the edges of the valid side are accepted by both.
    let id = Uuid::new_v4();
    let valid = [
        json!({"job_id": id, "user_id": " u ", "target_role": "\tr\n", "duration_weeks": 52}),
        json!({"job_id": id, "user_id": "u".repeat(128), "target_role": "r".repeat(200), "duration_weeks": 1,
               "focus_areas": vec!["f".repeat(100); 10], "hours_per_week": 80, "language": "abcdefgh-12345678"}),
        json!({"job_id": id, "user_id": format!("  {}  ", "ü".repeat(128)), "target_role": "r",
               "duration_weeks": 1, "hours_per_week": 1, "focus_areas": [], "language": "de"}),
        json!({"job_id": id, "user_id": "u", "target_role": "r", "duration_weeks": 3, "extra": [1, {"a": null}],
               "experience_level": null, "language": null, "focus_areas": null, "hours_per_week": null}),
    ];
    for message in valid {
        assert_valid(&schema, &message, "a valid edge case");
        if let Err(r) = JobRequest::decode(message.to_string().as_bytes(), None) {
            panic!("the decoder refuses {message}: {}", r.reason);
        }
    }
}
