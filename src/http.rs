//! /metrics, /healthz (liveness) and /readyz (Postgres, RabbitMQ and the LLM provider all usable).

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Dependency, Metrics};

/// How long /readyz waits for Postgres: a probe that hangs would tell an orchestrator nothing.
const PROBE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// What /readyz looks at.
#[derive(Clone)]
pub struct Health {
    pub metrics: Metrics,
    pub pool: Pool,
    /// The current broker connection; `None` between sessions.
    pub amqp: tokio::sync::watch::Receiver<Option<Arc<lapin::Connection>>>,
    /// Whether the current session's publisher channel is open (the broker may close it on
    /// its own).
    pub publisher_open: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").finish_non_exhaustive()
    }
}

/// Binds `addr` and serves until `shutdown`. Returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding METRICS_ADDR {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(health));
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let metrics = &health.metrics;
    let pool = health.pool.status();
    let idle = pool.available as i64;
    metrics.set_db_pool(pool.size as i64 - idle, idle, pool.waiting as i64);
    metrics.sample_process();
    (
        [("content-type", "text/plain; version=0.0.4")],
        health.metrics.render(),
    )
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let mut problems = Vec::new();
    let probe = async {
        let client = health.pool.get().await.map_err(|_| "postgres: unreachable")?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|_| "postgres: query failed")?;
        Ok::<_, &str>(())
    };
    match tokio::time::timeout(PROBE_DEADLINE, probe).await {
        Ok(Ok(())) => {}
        Ok(Err(problem)) => problems.push(problem),
        Err(_) => problems.push("postgres: no answer within 5 s"),
    }
    let connected = health
        .amqp
        .borrow()
        .as_ref()
        .is_some_and(|c| c.status().connected());
    if !connected {
        problems.push("rabbitmq: disconnected");
    } else if !(health.publisher_open)() {
        // Reopened within a second or two (`roadmap_channels_reopened_total{channel="publisher"}`);
        // one that stays closed holds every event and hand-back.
        problems.push("rabbitmq: publisher channel closed");
    }
    if health.metrics.provider_ready.get() == 0 {
        problems.push("llm provider: refusing requests (check LLM_API_KEY / LLM_MODEL)");
    }
    let paused = |d: Dependency| health.metrics.is_intake_paused(d);
    if paused(Dependency::Database) {
        problems.push("intake paused: the database was unreachable past the retries; probing");
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n")
    }
}
