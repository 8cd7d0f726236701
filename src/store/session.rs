//! Deadlines on every Postgres wait: what a session gets unless DATABASE_URL says otherwise,
//! the pool's timeouts, and which errors pass with an outage.
//!
//! A database that stops answering without an error (a partition dropping packets, a session
//! holding a row lock, a commit waiting for a standby that is gone) must turn into an error the
//! worker already handles (retries, then a hand-back and paused intake), not a wait for ever.

use std::time::Duration;

use tokio_postgres::{Config, error::SqlState};

/// A connection attempt that takes longer has failed (libpq's `connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle connection is probed after this, then every `KEEPALIVE_INTERVAL`, and given up after
/// `KEEPALIVE_RETRIES` unanswered probes: a dead peer is found in under a minute, not two hours.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_RETRIES: u32 = 3;
/// Data sent and not acknowledged for this long fails the connection (Linux `TCP_USER_TIMEOUT`):
/// a partition that drops packets mid-statement is noticed.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
/// Server-side deadlines on every statement of the worker's sessions. Every statement the worker
/// runs takes milliseconds; these only cut one that waits.
pub const STATEMENT_TIMEOUT: &str = "30s";
pub const LOCK_TIMEOUT: &str = "10s";

/// The pool's waits: for a free connection (generous: under load thousands of jobs share a
/// few connections), to open one, and to check one before reuse.
pub const POOL_WAIT: Duration = Duration::from_secs(60);
pub const POOL_CREATE: Duration = Duration::from_secs(15);
pub const POOL_RECYCLE: Duration = Duration::from_secs(5);

/// libpq's default keepalive idle time, which tokio-postgres reports when none was set.
const DEFAULT_KEEPALIVE_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

/// Applies the defaults above to `config` wherever DATABASE_URL left the setting open, so that
/// an operator's value (`?connect_timeout=3`, `options=-c statement_timeout=5s`) always wins.
pub fn apply_defaults(config: &mut Config) {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_keepalives() {
        if config.get_keepalives_idle() == DEFAULT_KEEPALIVE_IDLE {
            config.keepalives_idle(KEEPALIVE_IDLE);
        }
        if config.get_keepalives_interval().is_none() {
            config.keepalives_interval(KEEPALIVE_INTERVAL);
        }
        if config.get_keepalives_retries().is_none() {
            config.keepalives_retries(KEEPALIVE_RETRIES);
        }
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    let mut options = config.get_options().unwrap_or_default().to_owned();
    for (name, value) in [
        ("statement_timeout", STATEMENT_TIMEOUT),
        ("lock_timeout", LOCK_TIMEOUT),
    ] {
        if !options.contains(name) {
            if !options.is_empty() {
                options.push(' ');
            }
            options.push_str(&format!("-c {name}={value}"));
        }
    }
    config.options(options);
}

/// Whether a database error passes with an outage (and is worth retrying, then waiting out):
/// a lost or refused connection, a server shutting down or starting, a read-only server (a
/// failover under way), a statement or lock timeout, a serialization failure or deadlock, or
/// a server out of resources. Anything else (a syntax error, a constraint violated) is a bug
/// or bad data: retrying it changes nothing.
pub fn is_transient(err: &tokio_postgres::Error) -> bool {
    let Some(code) = err.code() else {
        // No SQLSTATE: the connection itself failed (I/O, closed, timed out).
        return true;
    };
    let class = &code.code()[..2];
    matches!(class, "08" | "53" | "57" | "58" | "40")
        || [SqlState::READ_ONLY_SQL_TRANSACTION, SqlState::LOCK_NOT_AVAILABLE].contains(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_what_the_url_left_open_and_never_override_it() {
        let mut config: Config = "postgres://u@h/db".parse().unwrap();
        apply_defaults(&mut config);
        assert_eq!(config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert_eq!(config.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(config.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
        assert_eq!(
            config.get_options(),
            Some("-c statement_timeout=30s -c lock_timeout=10s")
        );

        let mut config: Config =
            "postgres://u@h/db?connect_timeout=3&keepalives_idle=5&options=-c%20lock_timeout%3D1s"
                .parse()
                .unwrap();
        apply_defaults(&mut config);
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(5));
        assert_eq!(
            config.get_options(),
            Some("-c lock_timeout=1s -c statement_timeout=30s")
        );
    }
}
