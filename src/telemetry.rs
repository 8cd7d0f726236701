//! Logging: a tracing subscriber writing human text or JSON lines to stderr, filtered by RUST_LOG.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// Installs the global subscriber; later calls (tests) are no-ops.
pub fn init(format: LogFormat) {
    // Without RUST_LOG: our own info lines, but not the database server's NOTICEs or the
    // migration runner's chatter.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=warn,refinery_core=warn"));
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
