//! /metrics, /healthz (liveness) and /readyz (Postgres, RabbitMQ and the LLM provider all usable).

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Dependency, Metrics};

/// What /readyz looks at.
#[derive(Clone)]
pub struct Health {
    pub metrics: Metrics,
    pub pool: Pool,
    /// The current broker connection; `None` between sessions.
    pub amqp: tokio::sync::watch::Receiver<Option<Arc<lapin::Connection>>>,
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
    match health.pool.get().await {
        Ok(client) => {
            if client.simple_query("SELECT 1").await.is_err() {
                problems.push("postgres: query failed");
            }
        }
        Err(_) => problems.push("postgres: unreachable"),
    }
    let connected = health
        .amqp
        .borrow()
        .as_ref()
        .is_some_and(|c| c.status().connected());
    if !connected {
        problems.push("rabbitmq: disconnected");
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
