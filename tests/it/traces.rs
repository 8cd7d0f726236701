//! Promise: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, the worker exports its spans over OTLP and
//! continues the web backend's trace: a job message's W3C `traceparent` becomes the parent of
//! the job's spans (job, outline, batch, LLM call), and its events carry the trace on.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, extract::State, routing::post};
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, ShortString},
};
use serde_json::Value;

use testkit::{TestEnv, eventually, job, sigterm};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// An OTLP/HTTP receiver that keeps every JSON export it is sent.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let app = Router::new()
        .route(
            "/v1/traces",
            post(
                |State(got): State<Arc<Mutex<Vec<Value>>>>, body: String| async move {
                    if let Ok(v) = serde_json::from_str(&body) {
                        got.lock().unwrap().push(v);
                    }
                    "{}"
                },
            ),
        )
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), got)
}

/// Every span in the exports: (trace id, name).
fn spans(exports: &[Value]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for export in exports {
        for rs in export["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    out.push((
                        span["traceId"].as_str().unwrap_or_default().to_lowercase(),
                        span["name"].as_str().unwrap_or_default().to_owned(),
                    ));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backends_trace_goes_through_every_batch_and_llm_call_into_the_events() {
    let env = TestEnv::new().await;
    let (endpoint, got) = receiver().await;
    let mut worker = env.spawn_worker_process(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    let mut events = env.watcher().await;
    let (job_id, body) = job(6, "Data Engineer");
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(format!("00-{TRACE_ID}-00f067aa0ba902b7-01").as_str().into()),
    );
    let props = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_headers(headers);
    env.publish_with(body.to_string().as_bytes(), props).await;
    let end = events
        .wait_for_end(job_id, Duration::from_secs(60), |_| {})
        .await
        .expect("the job ends");
    assert_eq!(end.routing_key, "roadmap.completed");
    let carried = end
        .headers
        .get("traceparent")
        .expect("the event carries the trace");
    assert!(carried.starts_with(&format!("00-{TRACE_ID}-")), "{carried}");

    // A drained worker flushes its spans as it exits.
    sigterm(&worker);
    let _ = tokio::time::timeout(Duration::from_secs(30), worker.wait()).await;
    let names = eventually(
        Duration::from_secs(10),
        "the job's spans at the receiver",
        || async {
            let all = spans(&got.lock().unwrap());
            let ours: Vec<String> = all
                .into_iter()
                .filter(|(t, _)| t == TRACE_ID)
                .map(|(_, n)| n)
                .collect();
            ours.iter().any(|n| n == "llm call").then_some(ours)
        },
    )
    .await;
    for name in ["job", "outline", "batch", "llm call"] {
        assert!(
            names.iter().any(|n| n == name),
            "no {name:?} span in the trace: {names:?}"
        );
    }
    println!("{} spans of trace {TRACE_ID} received", names.len());
    env.cleanup().await;
}
