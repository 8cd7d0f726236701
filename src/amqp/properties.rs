//! AMQP properties as readable JSON and back: the form in which a dead letter's properties are
//! stored (`dead_letters.properties`), shown by `dlq show` and published again by `dlq replay`.
//!
//! JSON has no types for AMQP's integer widths, timestamps or byte arrays, so the way back is
//! close rather than exact: integers return as 64-bit (the worker's counting headers read any
//! width), strings as long strings, and bytes (kept as lossy UTF-8 text, readable) as strings.

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString},
};
use serde_json::{Map, Number, Value};
use uuid::Uuid;

use crate::domain::JobRequest;

/// The header that names a dead letter on a broker copy, so that moving the copy into
/// Postgres twice files it once.
pub const DEAD_LETTER_ID: &str = "x-dead-letter-id";
/// The reason code and text on a broker copy.
pub const REJECT_REASON: &str = "x-reject-reason";
pub const REJECT_MESSAGE: &str = "x-reject-message";
/// When the copy was filed, in Unix milliseconds.
pub const DEAD_LETTERED_AT: &str = "x-dead-lettered-at";

/// Whether `name` is one of the headers that filing a dead letter adds: they describe the dead
/// letter, not the message, so a replay does not send them on.
pub fn is_dead_letter_header(name: &str) -> bool {
    name.starts_with("x-reject-") || name == DEAD_LETTERED_AT || name == DEAD_LETTER_ID
}

/// The properties that are strings, by their JSON name (`type` is lapin's `kind`).
fn strings(props: &BasicProperties) -> [(&'static str, &Option<ShortString>); 10] {
    [
        ("content_type", props.content_type()),
        ("content_encoding", props.content_encoding()),
        ("correlation_id", props.correlation_id()),
        ("reply_to", props.reply_to()),
        ("expiration", props.expiration()),
        ("message_id", props.message_id()),
        ("type", props.kind()),
        ("user_id", props.user_id()),
        ("app_id", props.app_id()),
        ("cluster_id", props.cluster_id()),
    ]
}

/// The properties that are set, as a JSON object; `headers` as readable JSON.
pub fn to_json(props: &BasicProperties) -> Value {
    let mut out = Map::new();
    for (name, value) in strings(props) {
        if let Some(value) = value {
            out.insert(name.into(), Value::from(value.as_str()));
        }
    }
    if let Some(mode) = props.delivery_mode() {
        out.insert("delivery_mode".into(), Value::from(*mode));
    }
    if let Some(priority) = props.priority() {
        out.insert("priority".into(), Value::from(*priority));
    }
    if let Some(timestamp) = props.timestamp() {
        out.insert("timestamp".into(), Value::from(*timestamp));
    }
    if let Some(headers) = props.headers() {
        out.insert("headers".into(), table_to_json(headers));
    }
    Value::Object(out)
}

/// A string property's builder method.
type Setter = fn(BasicProperties, ShortString) -> BasicProperties;

/// Properties from their JSON form ([`to_json`]); fields of the wrong type are left out.
pub fn from_json(value: &Value) -> BasicProperties {
    let text = |name: &str| value.get(name).and_then(Value::as_str).map(ShortString::from);
    let small = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_u64)
            .and_then(|n| u8::try_from(n).ok())
    };
    let mut props = BasicProperties::default();
    let setters: [(&str, Setter); 10] = [
        ("content_type", BasicProperties::with_content_type),
        ("content_encoding", BasicProperties::with_content_encoding),
        ("correlation_id", BasicProperties::with_correlation_id),
        ("reply_to", BasicProperties::with_reply_to),
        ("expiration", BasicProperties::with_expiration),
        ("message_id", BasicProperties::with_message_id),
        ("type", BasicProperties::with_type),
        ("user_id", BasicProperties::with_user_id),
        ("app_id", BasicProperties::with_app_id),
        ("cluster_id", BasicProperties::with_cluster_id),
    ];
    for (name, set) in setters {
        if let Some(v) = text(name) {
            props = set(props, v);
        }
    }
    if let Some(mode) = small("delivery_mode") {
        props = props.with_delivery_mode(mode);
    }
    if let Some(priority) = small("priority") {
        props = props.with_priority(priority);
    }
    if let Some(timestamp) = value.get("timestamp").and_then(Value::as_u64) {
        props = props.with_timestamp(timestamp);
    }
    if let Some(headers) = value.get("headers").and_then(Value::as_object) {
        props = props.with_headers(table_from_json(headers));
    }
    props
}

/// A field table as a JSON object: strings as text, numbers as numbers, tables and arrays
/// recursively, bytes as lossy UTF-8 text.
pub fn table_to_json(table: &FieldTable) -> Value {
    Value::Object(
        table
            .inner()
            .iter()
            .map(|(k, v)| (k.to_string(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(value: &AMQPValue) -> Value {
    let float = |f: f64| Number::from_f64(f).map_or(Value::Null, Value::Number);
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        AMQPValue::Float(f) => float(f64::from(*f)),
        AMQPValue::Double(f) => float(*f),
        AMQPValue::DecimalValue(d) => float(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => Value::from(s.as_str()),
        AMQPValue::LongString(s) => Value::from(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ByteArray(b) => Value::from(String::from_utf8_lossy(b.as_slice())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::FieldTable(t) => table_to_json(t),
        AMQPValue::Void => Value::Null,
    }
}

/// A JSON object as a field table ([`table_to_json`]'s way back).
pub fn table_from_json(map: &Map<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in map {
        table.insert(ShortString::from(k.as_str()), value_from_json(v));
    }
    table
}

fn value_from_json(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => AMQPValue::LongLongInt(i),
            (None, Some(u)) => AMQPValue::Timestamp(u),
            _ => AMQPValue::Double(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(value_from_json).collect::<Vec<_>>(),
        )),
        Value::Object(map) => AMQPValue::FieldTable(table_from_json(map)),
    }
}

/// One property or header value as text: a string as it is, anything else as compact JSON.
pub fn display(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The header in which a publisher states the job_id of a job message, beside its body: a
/// refusal of a body that cannot be read is announced under it.
pub const JOB_ID_HEADER: &str = "job_id";

/// The job_id a message's properties state: its `job_id` header, failing that its
/// `correlation_id`, when a UUID. Never its `message_id`, which client libraries fill on their own.
pub fn stated_job_id(props: &BasicProperties) -> Option<Uuid> {
    let header = props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(JOB_ID_HEADER))
        .and_then(|v| match v {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.to_string()),
            AMQPValue::ByteArray(b) => Some(String::from_utf8_lossy(b.as_slice()).into_owned()),
            _ => None,
        });
    let correlation = props.correlation_id().as_ref().map(|s| s.to_string());
    [header, correlation]
        .into_iter()
        .flatten()
        .find_map(|id| Uuid::parse_str(id.trim()).ok())
}

/// The job a message names, by the rule for a refused message's job_id: the body's `job_id`
/// (read even under a wrong content type), failing that the one its properties state
/// ([`stated_job_id`]).
pub fn readable_job_id(body: &[u8], props: &BasicProperties) -> Option<Uuid> {
    let content_type = props.content_type().as_ref().map(|s| s.as_str());
    match JobRequest::decode(body, content_type) {
        Ok(job) => Some(job.job_id),
        Err(rejection) => rejection.or_job_id(stated_job_id(props)).job_id,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn headers_read_as_text_and_numbers_and_come_back() {
        let mut inner = FieldTable::default();
        inner.insert("count".into(), AMQPValue::LongInt(2));
        let mut headers = FieldTable::default();
        headers.insert("x-reject-reason".into(), AMQPValue::LongString("not_json".into()));
        headers.insert("x-roadmap-recoveries".into(), AMQPValue::LongUInt(3));
        headers.insert("raw".into(), AMQPValue::ByteArray(b"ab\xff".as_slice().into()));
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(inner)].into()),
        );
        let props = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let stored = to_json(&props);
        assert_eq!(
            stored,
            json!({
                "content_type": "text/plain",
                "delivery_mode": 2,
                "headers": {
                    "raw": "ab\u{fffd}",
                    "x-death": [{"count": 2}],
                    "x-reject-reason": "not_json",
                    "x-roadmap-recoveries": 3,
                },
            })
        );
        let back = from_json(&stored);
        assert_eq!(
            back.content_type().as_ref().map(|s| s.as_str()),
            Some("text/plain")
        );
        assert_eq!(*back.delivery_mode(), Some(2));
        let headers = back.headers().clone().unwrap();
        assert_eq!(
            headers.inner().get("x-roadmap-recoveries"),
            Some(&AMQPValue::LongLongInt(3))
        );
        assert_eq!(to_json(&back), stored, "the JSON form is a fixed point");
    }

    #[test]
    fn dead_letter_headers_are_told_apart() {
        for name in [REJECT_REASON, REJECT_MESSAGE, DEAD_LETTERED_AT, DEAD_LETTER_ID] {
            assert!(is_dead_letter_header(name), "{name}");
        }
        assert!(!is_dead_letter_header("traceparent"));
        assert!(!is_dead_letter_header("x-roadmap-recoveries"));
    }

    #[test]
    fn the_job_id_is_read_as_for_a_refusal() {
        let id = Uuid::new_v4();
        let body = json!({"job_id": id, "user_id": "u"}).to_string();
        let mislabelled = BasicProperties::default().with_content_type("text/plain".into());
        assert_eq!(readable_job_id(body.as_bytes(), &mislabelled), Some(id));
        let mut headers = FieldTable::default();
        headers.insert(JOB_ID_HEADER.into(), AMQPValue::LongString(id.to_string().into()));
        let stated = BasicProperties::default().with_headers(headers);
        assert_eq!(readable_job_id(b"{not json", &stated), Some(id));
        let correlated = BasicProperties::default().with_correlation_id(id.simple().to_string().into());
        assert_eq!(readable_job_id(b"{not json", &correlated), Some(id));
        assert_eq!(readable_job_id(b"{not json", &BasicProperties::default()), None);
    }

    /// aiormq sets a random `message_id` on every message its publisher leaves without one:
    /// a refusal must not be announced under it.
    #[test]
    fn a_message_id_is_never_taken_for_the_job_id() {
        let library_id = Uuid::new_v4().simple().to_string();
        let props = BasicProperties::default().with_message_id(library_id.into());
        assert_eq!(readable_job_id(b"{not json", &props), None);
        // The header wins over the correlation_id.
        let (header, correlation) = (Uuid::new_v4(), Uuid::new_v4());
        let mut headers = FieldTable::default();
        headers.insert(
            JOB_ID_HEADER.into(),
            AMQPValue::LongString(header.to_string().into()),
        );
        let both = BasicProperties::default()
            .with_headers(headers)
            .with_correlation_id(correlation.to_string().into());
        assert_eq!(stated_job_id(&both), Some(header));
    }
}
