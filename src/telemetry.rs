//! Logging: a tracing subscriber writing human text or JSON lines to stderr, filtered by RUST_LOG.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// lapin logs every message the broker returns (an event no queue took) as a warning with its
/// whole body; the relay reports those itself, once, without the payload.
pub const QUIET_RETURNS: &str = "lapin::returned_messages=error";

/// Installs the global subscriber at `level` (`info`, `warn`) unless RUST_LOG says otherwise;
/// later calls (tests) are no-ops.
pub fn init(format: LogFormat, level: &str) {
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
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}
