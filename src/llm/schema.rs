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

/// The schemas above tightened for servers that enforce a schema by grammar (llama.cpp,
/// llama-cpp-python, vLLM's guided decoding), which take keywords OpenAI's strict mode refuses.
/// Small models break exactly the rules the strict subset cannot state: empty titles, a string
/// that runs on in a loop, weeks or days out of order. Here every string property is 1 to
/// `max` characters (the lengths the worker keeps), and an array whose items pin their number
/// by `enum` (weeks, days) pins each item's number by its position instead.
pub fn for_grammar(schema: &Value) -> Value {
    let mut tight = schema.clone();
    tighten(&mut tight, None);
    tight
}

/// The longest a string property may be, by its name.
fn max_length(property: Option<&str>) -> u64 {
    use crate::domain::roadmap::{MAX_TEXT, MAX_TITLE};
    match property {
        Some("title") => MAX_TITLE as u64,
        Some("url") => 500,
        _ => MAX_TEXT as u64,
    }
}

fn tighten(node: &mut Value, property: Option<&str>) {
    let Value::Object(map) = node else { return };
    if map.get("type") == Some(&json!("string")) && !map.contains_key("enum") {
        map.insert("minLength".into(), json!(1));
        map.insert("maxLength".into(), json!(max_length(property)));
    }
    if let Some(Value::Object(properties)) = map.get_mut("properties") {
        for (name, child) in properties.iter_mut() {
            tighten(child, Some(name.as_str()));
        }
    }
    if let Some(items) = map.get_mut("items") {
        tighten(items, property);
    }
    pin_by_position(map);
}

/// `items` whose objects number themselves from a fixed list (`"number": {"enum": [4, 5, 6]}`
/// with exactly that many items) become `prefixItems`, each with its own number as a `const`.
fn pin_by_position(map: &mut serde_json::Map<String, Value>) {
    let Some(items) = map.get("items") else { return };
    let Some((key, numbers)) = ["number", "day"].iter().find_map(|key| {
        let numbers = items["properties"][key]["enum"].as_array()?.clone();
        Some((*key, numbers))
    }) else {
        return;
    };
    let count = numbers.len() as u64;
    if map.get("minItems").and_then(Value::as_u64) != Some(count)
        || map.get("maxItems").and_then(Value::as_u64) != Some(count)
    {
        return;
    }
    let pinned: Vec<Value> = numbers
        .into_iter()
        .map(|n| {
            let mut item = items.clone();
            item["properties"][key] = json!({"type": "integer", "const": n});
            item
        })
        .collect();
    map.remove("items");
    map.insert("prefixItems".into(), Value::Array(pinned));
    map.insert("items".into(), json!(false));
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
    fn grammar_schemas_bound_every_string_and_pin_numbers_by_position() {
        let tight = for_grammar(&batch_schema(4, 5));
        let weeks = &tight["properties"]["weeks"];
        assert_eq!(weeks["items"], json!(false));
        let pinned = weeks["prefixItems"].as_array().unwrap();
        assert_eq!(pinned.len(), 2);
        assert_eq!(pinned[1]["properties"]["number"]["const"], 5);
        let week = &pinned[0]["properties"];
        assert_eq!(week["title"]["minLength"], 1);
        assert_eq!(week["title"]["maxLength"], 120);
        assert_eq!(week["goals"]["items"]["minLength"], 1);
        let days = week["days"]["prefixItems"].as_array().unwrap();
        assert_eq!(
            days.iter()
                .map(|d| d["properties"]["day"]["const"].clone())
                .collect::<Vec<_>>(),
            (1..=7).map(|n| json!(n)).collect::<Vec<_>>()
        );
        let task = &days[6]["properties"]["tasks"]["items"]["properties"];
        assert_eq!(task["description"]["maxLength"], 600);
        assert!(task["kind"].get("minLength").is_none(), "an enum is left alone");
        // The outline's weeks too; its phases are not numbered from a list.
        let outline = for_grammar(&outline_schema(3, 2));
        assert_eq!(
            outline["properties"]["weeks"]["prefixItems"][2]["properties"]["number"]["const"],
            3
        );
        assert!(outline["properties"]["phases"]["items"].is_object());
        // The strict subset stays as it was.
        assert!(
            batch_schema(4, 5)["properties"]["weeks"]
                .get("prefixItems")
                .is_none()
        );
    }

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
