//! Shared by the hostile-input tests: reading the dead-letter queue, collecting events, and the
//! corpus of hostile messages with the reason code each must earn.

use std::time::{Duration, Instant};

use roadmap_worker::client::{EventWatcher, ReceivedEvent};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{DeadLetter, TestEnv};

/// Waits until `count` dead letters have arrived in all, and returns them.
pub async fn wait_for_dead_letters(env: &TestEnv, count: usize, timeout: Duration) -> Vec<DeadLetter> {
    let start = Instant::now();
    let mut all = Vec::new();
    while all.len() < count {
        all.extend(env.dead_letters().await);
        assert!(
            start.elapsed() < timeout,
            "timed out with {} of {count} dead letters",
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    all
}

/// Collects events until `done` says the set is complete, or panics after `timeout`.
pub async fn collect_events(
    watcher: &mut EventWatcher,
    timeout: Duration,
    mut done: impl FnMut(&[ReceivedEvent]) -> bool,
) -> Vec<ReceivedEvent> {
    let deadline = Instant::now() + timeout;
    let mut events = Vec::new();
    while !done(&events) {
        let left = deadline.saturating_duration_since(Instant::now());
        match watcher.next(left).await.unwrap() {
            Some(event) => events.push(event),
            None => panic!(
                "timed out after {timeout:?}; events so far: {:#?}",
                events.iter().map(|e| &e.body).collect::<Vec<_>>()
            ),
        }
    }
    events
}

/// One hostile message and what must come of it.
#[derive(Debug)]
pub struct Case {
    pub name: &'static str,
    pub body: Vec<u8>,
    pub content_type: Option<&'static str>,
    pub code: &'static str,
    /// The job_id and user_id of the `roadmap.failed` event it must cause, if any.
    pub announced: Option<(Uuid, Option<String>)>,
}

pub const USER: &str = "hostile-user";

/// The corpus. Every case has a distinct body (dead letters are matched by their bytes) and, where
/// it carries a job_id, its own one.
pub fn corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    let json_ct = Some("application/json");
    let mut raw = |name, body: Vec<u8>, content_type, code| {
        cases.push(Case {
            name,
            body,
            content_type,
            code,
            announced: None,
        });
    };
    // Not JSON at all, or not an object.
    raw("text", b"this is not json".to_vec(), json_ct, "not_json");
    raw("empty body", Vec::new(), json_ct, "not_json");
    raw(
        "truncated object",
        br#"{"job_id": "#.to_vec(),
        json_ct,
        "not_json",
    );
    raw(
        "single quotes",
        br#"{'job_id': 'x'}"#.to_vec(),
        json_ct,
        "not_json",
    );
    raw(
        "trailing garbage",
        br#"{"a": 1} trailing"#.to_vec(),
        json_ct,
        "not_json",
    );
    raw(
        "byte order mark",
        b"\xef\xbb\xbf{\"a\": 2}".to_vec(),
        json_ct,
        "not_json",
    );
    raw(
        "lone surrogate",
        br#"{"user_id": "\ud800"}"#.to_vec(),
        json_ct,
        "not_json",
    );
    raw("array", b"[1, 2, 3]".to_vec(), json_ct, "not_object");
    raw("string", br#""roadmap please""#.to_vec(), json_ct, "not_object");
    raw("number", b"42".to_vec(), json_ct, "not_object");
    raw("null", b"null".to_vec(), json_ct, "not_object");
    raw(
        "array with charset",
        b"[true]".to_vec(),
        Some("application/json; charset=utf-8"),
        "not_object",
    );
    // Transport-level faults.
    raw("invalid UTF-8", b"\xff\xfe\xfd".to_vec(), json_ct, "invalid_utf8");
    raw(
        "invalid UTF-8 inside a string",
        b"{\"job_id\": \"x\", \"user_id\": \"\xc3\x28\"}".to_vec(),
        json_ct,
        "invalid_utf8",
    );
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    raw(
        "10000 nested arrays",
        deep.into_bytes(),
        json_ct,
        "nesting_too_deep",
    );
    let id = Uuid::new_v4();
    let nested = format!(
        r#"{{"job_id":"{id}","user_id":"u","target_role":"r","duration_weeks":3,"x":{}1{}}}"#,
        "[".repeat(17),
        "]".repeat(17)
    );
    raw(
        "unknown field nested 18 deep",
        nested.into_bytes(),
        json_ct,
        "nesting_too_deep",
    );

    let valid = |id: Uuid| json!({"job_id": id, "user_id": USER, "target_role": "Backend Developer", "duration_weeks": 3});
    let id = Uuid::new_v4();
    let mut big = valid(id);
    big["padding"] = json!("x".repeat(65 * 1024));
    raw(
        "body over 64 KiB",
        big.to_string().into_bytes(),
        json_ct,
        "body_too_large",
    );
    let id = Uuid::new_v4();
    raw(
        "text/plain",
        valid(id).to_string().into_bytes(),
        Some("text/plain"),
        "wrong_content_type",
    );
    let id = Uuid::new_v4();
    raw(
        "application/xml",
        valid(id).to_string().into_bytes(),
        Some("application/xml"),
        "wrong_content_type",
    );
    let id = Uuid::new_v4();
    raw(
        "octet-stream",
        valid(id).to_string().into_bytes(),
        Some("application/octet-stream"),
        "wrong_content_type",
    );

    // A valid job under the wrong label still names its job and sender: those are announced.
    for case in cases.iter_mut().filter(|c| c.code == "wrong_content_type") {
        let body: Value = serde_json::from_slice(&case.body).unwrap();
        let id = Uuid::parse_str(body["job_id"].as_str().unwrap()).unwrap();
        case.announced = Some((id, Some(USER.to_owned())));
    }

    // JSON objects that break a field rule. `announce` says whether the job_id is readable.
    let mut field = |name, edit: &dyn Fn(&mut Value), code, announce: bool, user: Option<&str>| {
        let id = Uuid::new_v4();
        let mut body = valid(id);
        edit(&mut body);
        cases.push(Case {
            name,
            body: body.to_string().into_bytes(),
            content_type: Some("application/json"),
            code,
            announced: announce.then(|| (id, user.map(str::to_owned))),
        });
    };
    let set = |k: &'static str, v: Value| move |b: &mut Value| b[k] = v.clone();
    let remove = |k: &'static str| {
        move |b: &mut Value| {
            b.as_object_mut().unwrap().remove(k);
        }
    };
    let u = Some(USER);
    field("no job_id", &remove("job_id"), "missing_field", false, u);
    field(
        "null job_id",
        &set("job_id", Value::Null),
        "missing_field",
        false,
        u,
    );
    field("no user_id", &remove("user_id"), "missing_field", true, None);
    field("no target_role", &remove("target_role"), "missing_field", true, u);
    field(
        "no duration_weeks",
        &remove("duration_weeks"),
        "missing_field",
        true,
        u,
    );
    field(
        "numeric job_id",
        &set("job_id", json!(12345)),
        "invalid_type",
        false,
        u,
    );
    field(
        "numeric user_id",
        &set("user_id", json!(7)),
        "invalid_type",
        true,
        None,
    );
    field(
        "array target_role",
        &set("target_role", json!(["Dev"])),
        "invalid_type",
        true,
        u,
    );
    field(
        "string weeks",
        &set("duration_weeks", json!("3")),
        "invalid_type",
        true,
        u,
    );
    field(
        "1.5 weeks",
        &set("duration_weeks", json!(1.5)),
        "invalid_type",
        true,
        u,
    );
    field(
        "string hours",
        &set("hours_per_week", json!("ten")),
        "invalid_type",
        true,
        u,
    );
    field(
        "numeric level",
        &set("experience_level", json!(3)),
        "invalid_type",
        true,
        u,
    );
    field(
        "numeric language",
        &set("language", json!(5)),
        "invalid_type",
        true,
        u,
    );
    field(
        "focus a string",
        &set("focus_areas", json!("rust")),
        "invalid_type",
        true,
        u,
    );
    field(
        "focus item a number",
        &set("focus_areas", json!(["ok", 1])),
        "invalid_type",
        true,
        u,
    );
    field(
        "focus item null",
        &set("focus_areas", json!([null])),
        "invalid_type",
        true,
        u,
    );
    let ctl = set("target_role", json!("Dev\u{1b}[31mOps"));
    field("escape sequence in role", &ctl, "invalid_type", true, u);
    field(
        "0 weeks",
        &set("duration_weeks", json!(0)),
        "out_of_range",
        true,
        u,
    );
    field(
        "53 weeks",
        &set("duration_weeks", json!(53)),
        "out_of_range",
        true,
        u,
    );
    field(
        "-1 weeks",
        &set("duration_weeks", json!(-1)),
        "out_of_range",
        true,
        u,
    );
    let huge = set("duration_weeks", json!(u64::MAX));
    field("2^64-1 weeks", &huge, "out_of_range", true, u);
    field(
        "0 hours",
        &set("hours_per_week", json!(0)),
        "out_of_range",
        true,
        u,
    );
    field(
        "81 hours",
        &set("hours_per_week", json!(81)),
        "out_of_range",
        true,
        u,
    );
    field(
        "empty user_id",
        &set("user_id", json!("")),
        "empty_string",
        true,
        None,
    );
    field(
        "blank user_id",
        &set("user_id", json!("  \t ")),
        "empty_string",
        true,
        None,
    );
    field(
        "blank role",
        &set("target_role", json!(" \n ")),
        "empty_string",
        true,
        u,
    );
    field(
        "blank focus area",
        &set("focus_areas", json!([" "])),
        "empty_string",
        true,
        u,
    );
    let long_user = set("user_id", json!("u".repeat(129)));
    field("user_id of 129", &long_user, "too_long", true, None);
    let long_role = set("target_role", json!("r".repeat(201)));
    field("target_role of 201", &long_role, "too_long", true, u);
    let long_focus = set("focus_areas", json!(["f".repeat(101)]));
    field("focus area of 101", &long_focus, "too_long", true, u);
    let many = set("focus_areas", json!(vec!["area"; 11]));
    field("11 focus areas", &many, "too_many_focus_areas", true, u);
    let guru = set("experience_level", json!("guru"));
    field("unknown level", &guru, "unknown_experience_level", true, u);
    let upper = set("experience_level", json!("ADVANCED"));
    field("upper-case level", &upper, "unknown_experience_level", true, u);
    let words = set("language", json!("english language"));
    field("language with a space", &words, "invalid_language", true, u);
    field(
        "en_US",
        &set("language", json!("en_US")),
        "invalid_language",
        true,
        u,
    );
    field(
        "empty language",
        &set("language", json!("")),
        "invalid_language",
        true,
        u,
    );
    field(
        "digit language",
        &set("language", json!("123")),
        "invalid_language",
        true,
        u,
    );
    field(
        "bad UUID",
        &set("job_id", json!("not-a-uuid")),
        "invalid_job_id",
        false,
        u,
    );
    field(
        "empty job_id",
        &set("job_id", json!("")),
        "invalid_job_id",
        false,
        u,
    );
    let injected = set("job_id", json!("00000000-0000-0000-0000-000000000000' OR '1'='1"));
    field("SQL in job_id", &injected, "invalid_job_id", false, u);
    cases
}
