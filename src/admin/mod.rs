//! The operator page: a read-only, server-rendered view of the jobs running, the recent
//! failures, the dead letters, the provider budget and the replicas, on a listener of its own
//! (ADMIN_ADDR) behind a token (ADMIN_TOKEN).
//!
//! A client shows the token as `Authorization: Bearer <token>`, or a person signs in through
//! `/login`, which keeps it in an HttpOnly, SameSite=Strict cookie. Only GET reads anything; the
//! two POSTs (login, logout) set or clear the cookie. No page carries a script.

mod job_view;
mod queries;
mod views;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Form, Router,
    extract::{Path, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{Html, IntoResponse, Redirect, Response},
    routing::get,
};
use deadpool_postgres::Pool;
use maud::Markup;
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde::Deserialize;
use subtle::ConstantTimeEq as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::config::{Secret, WorkerSettings, redact_url};

pub use self::views::BAR_FILL;

/// How long a page may take, the wait for a database connection included. Past it the page
/// says the database is unavailable (503) instead of leaving the browser waiting.
const PAGE_DEADLINE: Duration = Duration::from_secs(5);

/// Pages read at once. The page borrows the worker's own pool, so it takes at most this many of
/// its connections, however many tabs refresh.
const PAGES_AT_ONCE: usize = 2;

/// The cookie that carries the token for a person signed in through `/login`.
const COOKIE: &str = "roadmap_admin";

/// The provider budget's limits as this replica is configured (the table keeps only clocks).
#[derive(Debug, Clone)]
pub struct BudgetLimits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub accounting: String,
    /// OWNER_GRACE_SECS as the replicas use it: a heartbeat older than this is a dead replica.
    pub owner_grace_secs: i64,
}

/// What the page needs.
#[derive(Debug)]
pub struct Admin {
    pool: Pool,
    token: Secret,
    limits: BudgetLimits,
    pages: Semaphore,
}

impl Admin {
    pub fn new(pool: Pool, token: Secret, settings: &WorkerSettings) -> Self {
        let budget = &settings.budget;
        let accounting = budget
            .accounting
            .map_or_else(|| "the provider's own".to_owned(), |a| a.as_str().to_owned());
        Self {
            pool,
            token,
            limits: BudgetLimits {
                rpm: budget.rpm_limit.map(u64::from),
                tpm: budget.tpm_limit,
                accounting,
                owner_grace_secs: settings.owner_grace().as_secs() as i64,
            },
            pages: Semaphore::new(PAGES_AT_ONCE),
        }
    }

    /// Whether `presented` is the token, compared in constant time so that response times do
    /// not reveal how much of a guess was right (only the length can differ in time).
    fn is_token(&self, presented: &str) -> bool {
        presented.as_bytes().ct_eq(self.token.expose().as_bytes()).into()
    }

    /// Whether the request carries the token, as a bearer header or as the login cookie.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        bearer(headers).is_some_and(|t| self.is_token(t))
            || cookie(headers).is_some_and(|t| self.is_token(&t))
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The token kept in the login cookie. It is stored percent-encoded, so that any token is a
/// valid cookie value.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .and_then(|(_, value)| percent_decode_str(value).decode_utf8().ok())
        .map(|t| t.into_owned())
}

/// Binds `addr` and serves the page until `shutdown`. Returns the bound address (port 0 picks
/// one).
pub async fn serve(
    addr: SocketAddr,
    admin: Admin,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding ADMIN_ADDR {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let admin = Arc::new(admin);
    let pages = Router::new()
        .route("/", get(overview))
        .route("/jobs/{job_id}", get(job))
        .route_layer(middleware::from_fn_with_state(admin.clone(), require_token));
    let app = Router::new()
        .route("/login", get(login_form).post(login))
        .route("/logout", axum::routing::post(logout))
        .merge(pages)
        .fallback(|| async { (StatusCode::NOT_FOUND, html(views::not_found("No such page."))) })
        .layer(middleware::from_fn(safety_headers))
        .with_state(admin);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "operator page stopped");
        }
    });
    info!(addr = %bound, "operator page listening");
    Ok(bound)
}

fn html(markup: Markup) -> Html<String> {
    Html(markup.into_string())
}

/// Headers on every answer: nothing is cached (the pages change every few seconds and carry
/// user data), no script may run and no other site may frame the page.
async fn safety_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn require_token(State(admin): State<Arc<Admin>>, request: Request, next: Next) -> Response {
    if admin.authorized(request.headers()) {
        next.run(request).await
    } else {
        unauthorized(views::unauthorized())
    }
}

fn unauthorized(page: Markup) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"roadmap-worker\"")],
        html(page),
    )
        .into_response()
}

/// A page read from the database within [`PAGE_DEADLINE`], or the 503 page.
async fn read<T>(
    admin: &Admin,
    what: &str,
    call: impl Future<Output = Result<T, crate::store::StoreError>>,
) -> Result<T, Response> {
    let bounded = queries::within(PAGE_DEADLINE, async {
        // Closed only if the semaphore is dropped, which it never is while the page serves.
        let _permit = admin.pages.acquire().await;
        call.await
    });
    bounded.await.map_err(|e| {
        // An error may quote a connection string: masked before it is logged or shown.
        let detail = redact_url(&e.to_string());
        warn!(error = %detail, page = what, "operator page could not read the database");
        (StatusCode::SERVICE_UNAVAILABLE, html(views::unavailable(&detail))).into_response()
    })
}

async fn overview(State(admin): State<Arc<Admin>>) -> Response {
    match read(&admin, "overview", queries::overview(&admin.pool)).await {
        Ok(o) => html(views::overview(&o, &admin.limits)).into_response(),
        Err(unavailable) => unavailable,
    }
}

async fn job(State(admin): State<Arc<Admin>>, Path(job_id): Path<String>) -> Response {
    let not_found = |what: String| (StatusCode::NOT_FOUND, html(views::not_found(&what))).into_response();
    let Ok(id) = Uuid::parse_str(&job_id) else {
        return not_found(format!("“{job_id}” is not a job id."));
    };
    match read(&admin, "job", queries::job(&admin.pool, id)).await {
        Ok(Some(page)) => html(job_view::job(&page)).into_response(),
        Ok(None) => not_found(format!("No job {id} in the database.")),
        Err(unavailable) => unavailable,
    }
}

async fn login_form() -> Html<String> {
    html(views::login(false))
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

/// Sets the cookie for the right token. HttpOnly keeps it from scripts, SameSite=Strict from
/// requests that other sites start; no Max-Age, so it ends with the browser session. Secure is
/// left out because the page is plain HTTP on its own address; put a TLS proxy in front to
/// reach it from elsewhere.
async fn login(State(admin): State<Arc<Admin>>, Form(form): Form<Login>) -> Response {
    if !admin.is_token(form.token.trim()) {
        return unauthorized(views::login(true));
    }
    let value = utf8_percent_encode(form.token.trim(), NON_ALPHANUMERIC);
    let cookie = format!("{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/");
    let mut response = Redirect::to("/").into_response();
    match HeaderValue::from_str(&cookie) {
        Ok(v) => {
            response.headers_mut().insert(header::SET_COOKIE, v);
        }
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
    response
}

async fn logout() -> Response {
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("roadmap_admin=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn tokens_come_as_bearer_or_cookie() {
        let h = headers(&[(header::AUTHORIZATION, "bearer abc def")]);
        assert_eq!(bearer(&h), Some("abc def"));
        assert_eq!(bearer(&headers(&[(header::AUTHORIZATION, "Basic abc")])), None);
        let h = headers(&[(header::COOKIE, "a=1; roadmap_admin=x%3By%20z; b=2")]);
        assert_eq!(cookie(&h).as_deref(), Some("x;y z"));
        assert_eq!(cookie(&headers(&[(header::COOKIE, "other=1")])), None);
    }
}
