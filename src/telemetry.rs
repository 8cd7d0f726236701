//! Logging and traces: a tracing subscriber writing human text or JSON lines to stderr, filtered
//! by RUST_LOG, and, with `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans exported over OTLP/HTTP
//! (`OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf`, the default, or `http/json`). A job's
//! spans continue the W3C trace (`traceparent`) of its message, and its events carry it on.

use std::sync::OnceLock;

use opentelemetry::{
    Context, global,
    propagation::{Injector, TextMapPropagator},
    trace::TracerProvider as _,
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::LogFormat;

/// lapin logs every message the broker returns (an event no queue took) as a warning with its
/// whole body; the relay reports those itself, once, without the payload.
pub const QUIET_RETURNS: &str = "lapin::returned_messages=error";

/// Set once traces are exported: only then are trace contexts read and written.
static TRACING: OnceLock<()> = OnceLock::new();

/// Flushes and stops the span exporter when dropped (the end of `main`).
#[derive(Debug)]
pub struct Telemetry(Option<SdkTracerProvider>);

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber at `level` (`info`, `warn`) unless RUST_LOG says otherwise;
/// later calls (tests) are no-ops.
pub fn init(format: LogFormat, level: &str) -> Telemetry {
    // Without RUST_LOG: our own lines, but not the database server's NOTICEs or the migration
    // runner's chatter.
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| format!("{level},tokio_postgres=warn,refinery_core=warn"));
    let spec = if spec.contains("lapin::returned_messages") {
        spec
    } else {
        format!("{spec},{QUIET_RETURNS}")
    };
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("RUST_LOG {spec:?} is not a valid log filter ({e}); using info");
        EnvFilter::new(format!("info,{QUIET_RETURNS}"))
    });
    let logs = match format {
        // Colours only for a person at a terminal: a file or a pipe gets plain text.
        LogFormat::Human => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
    };
    let provider = otlp_provider();
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("roadmap-worker"))
            // Only our own spans (job, outline, batch, llm call), not every crate's.
            .with_filter(EnvFilter::new("roadmap_worker=info"))
    });
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces)
        .try_init();
    Telemetry(provider)
}

/// The OTLP exporter, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
fn otlp_provider() -> Option<SdkTracerProvider> {
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())?;
    let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
        Ok("http/json") => Protocol::HttpJson,
        _ => Protocol::HttpBinary,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build();
    let exporter = match exporter {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("OTEL_EXPORTER_OTLP_ENDPOINT is set but the exporter cannot start ({e}); no traces");
            return None;
        }
    };
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "roadmap-worker".into());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    global::set_text_map_propagator(TraceContextPropagator::new());
    let _ = TRACING.set(());
    Some(provider)
}

/// Continues, in `span`, the W3C trace of a message's `traceparent` (and `tracestate`).
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|_| TRACING.get().is_some()) else {
        return;
    };
    let mut headers = std::collections::HashMap::new();
    headers.insert("traceparent".to_owned(), traceparent.to_owned());
    if let Some(state) = tracestate {
        headers.insert("tracestate".to_owned(), state.to_owned());
    }
    let parent: Context = TraceContextPropagator::new().extract(&headers);
    let _ = span.set_parent(parent);
}

/// The current span's W3C `traceparent`, to carry on in an event's headers; `None` without
/// trace export.
pub fn traceparent() -> Option<String> {
    TRACING.get()?;
    struct One(Option<String>);
    impl Injector for One {
        fn set(&mut self, key: &str, value: String) {
            if key == "traceparent" {
                self.0 = Some(value);
            }
        }
    }
    let mut out = One(None);
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut out);
    out.0
}
