//! Structured-output schemas for one batch. Week numbers and day counts are pinned per batch, so
//! a schema-constrained decoder cannot return the wrong weeks.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use serde_json::{Value, json};

/// Batch schemas by week range, each built once: every call for the same weeks carries the
/// same schema, and thousands of calls in flight share it rather than hold a copy each. Ranges
/// are few (a batch is at most 12 of at most 52 weeks), so the cache stays small.
#[derive(Debug, Clone, Default)]
pub struct SchemaCache(Arc<Mutex<SchemasByRange>>);

/// Week range (first, last) to its schema.
type SchemasByRange = HashMap<(u32, u32), Arc<Value>>;

impl SchemaCache {
    pub fn batch(&self, first: u32, last: u32) -> Arc<Value> {
        let mut cache = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .entry((first, last))
            .or_insert_with(|| Arc::new(batch_schema(first, last)))
            .clone()
    }
}

/// JSON Schema (OpenAI strict subset: every property required, no extra properties) for the
/// weeks `first..=last`.
pub fn batch_schema(first: u32, last: u32) -> Value {
    let numbers: Vec<u32> = (first..=last).collect();
    let count = numbers.len();
    let resource = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["title", "url"],
        "properties": {
            "title": {"type": "string"},
            "url": {"type": ["string", "null"]}
        }
    });
    let task = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["title", "description", "kind", "minutes", "resources"],
        "properties": {
            "title": {"type": "string"},
            "description": {"type": "string"},
            "kind": {"type": "string", "enum": ["learn", "practice", "project", "review"]},
            "minutes": {"type": "integer"},
            "resources": {"type": "array", "items": resource, "maxItems": 5}
        }
    });
    let day = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["day", "title", "tasks"],
        "properties": {
            "day": {"type": "integer", "enum": [1, 2, 3, 4, 5, 6, 7]},
            "title": {"type": "string"},
            "tasks": {"type": "array", "items": task, "minItems": 1, "maxItems": 6}
        }
    });
    let week = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["number", "phase", "title", "goals", "days"],
        "properties": {
            "number": {"type": "integer", "enum": numbers},
            "phase": {"type": "integer"},
            "title": {"type": "string"},
            "goals": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 6},
            "days": {"type": "array", "items": day, "minItems": 7, "maxItems": 7}
        }
    });
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["weeks"],
        "properties": {
            "weeks": {"type": "array", "items": week, "minItems": count, "maxItems": count}
        }
    })
}

/// JSON Schema (same subset) for the outline of a `duration_weeks`-week roadmap with at most
/// `max_phases` phases.
pub fn outline_schema(duration_weeks: u32, max_phases: u32) -> Value {
    let numbers: Vec<u32> = (1..=duration_weeks).collect();
    let count = numbers.len();
    let phase = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["number", "title", "objective", "week_from", "week_to"],
        "properties": {
            "number": {"type": "integer"},
            "title": {"type": "string"},
            "objective": {"type": "string"},
            "week_from": {"type": "integer"},
            "week_to": {"type": "integer"}
        }
    });
    let week = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["number", "title", "goals"],
        "properties": {
            "number": {"type": "integer", "enum": numbers},
            "title": {"type": "string"},
            "goals": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 6}
        }
    });
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["phases", "weeks"],
        "properties": {
            "phases": {"type": "array", "items": phase, "minItems": 1, "maxItems": max_phases},
            "weeks": {"type": "array", "items": week, "minItems": count, "maxItems": count}
        }
    })
}

/// Converts the JSON Schemas above to Gemini's `responseSchema` (an OpenAPI 3.0 subset): no
/// `additionalProperties`, `nullable` instead of type unions, enums of strings only.
pub fn to_gemini(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (key, value) in map {
                match key.as_str() {
                    "additionalProperties" => {}
                    "type" => match value {
                        Value::Array(types) => {
                            let main = types
                                .iter()
                                .find(|t| *t != "null")
                                .cloned()
                                .unwrap_or(Value::Null);
                            out.insert("type".into(), main);
                            out.insert("nullable".into(), Value::Bool(true));
                        }
                        other => {
                            out.insert("type".into(), other.clone());
                        }
                    },
                    "enum" if value.as_array().is_some_and(|v| v.iter().any(|x| !x.is_string())) => {
                        let nums: Vec<i64> = value
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_i64)
                            .collect();
                        if let (Some(min), Some(max)) = (nums.iter().min(), nums.iter().max()) {
                            out.insert("minimum".into(), json!(min));
                            out.insert("maximum".into(), json!(max));
                        }
                    }
                    _ => {
                        out.insert(key.clone(), to_gemini(value));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(to_gemini).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weeks_are_pinned() {
        let s = batch_schema(4, 6);
        let weeks = &s["properties"]["weeks"];
        assert_eq!(weeks["minItems"], 3);
        assert_eq!(weeks["items"]["properties"]["number"]["enum"], json!([4, 5, 6]));
        let g = to_gemini(&s);
        let number = &g["properties"]["weeks"]["items"]["properties"]["number"];
        assert_eq!(
            (number["minimum"].as_i64(), number["maximum"].as_i64()),
            (Some(4), Some(6))
        );
        assert!(!g.to_string().contains("additionalProperties"));
    }

    /// Servers that enforce the schema by grammar make the model write fields in the order of
    /// `properties`: titles before the text they head, a week's days last.
    #[test]
    fn properties_are_sent_in_writing_order() {
        let names = |v: &Value| {
            v["properties"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        };
        let s: Value = serde_json::from_str(&batch_schema(1, 2).to_string()).unwrap();
        let week = &s["properties"]["weeks"]["items"];
        assert_eq!(names(week), ["number", "phase", "title", "goals", "days"]);
        let day = &week["properties"]["days"]["items"];
        assert_eq!(names(day), ["day", "title", "tasks"]);
        let task = &day["properties"]["tasks"]["items"];
        assert_eq!(
            names(task),
            ["title", "description", "kind", "minutes", "resources"]
        );
        let o = outline_schema(4, 2);
        assert_eq!(names(&o), ["phases", "weeks"]);
        let phase = &o["properties"]["phases"]["items"];
        assert_eq!(
            names(phase),
            ["number", "title", "objective", "week_from", "week_to"]
        );
        assert_eq!(names(&to_gemini(week)), names(week));
    }
}
