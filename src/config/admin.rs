//! Settings of the operator page (`src/admin`): off unless ADMIN_ADDR is set, and then only with
//! ADMIN_TOKEN.

use std::net::SocketAddr;

use clap::Args;

use super::Secret;

/// The shortest ADMIN_TOKEN accepted: a token that can be guessed protects nothing.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Clone, Default, Args)]
pub struct AdminSettings {
    /// Address of the read-only operator page (a listener of its own, apart from METRICS_ADDR,
    /// so that metrics scrapers never reach it). Unset: no operator page.
    #[arg(
        long = "admin-addr",
        id = "admin_addr",
        env = "ADMIN_ADDR",
        value_name = "ADMIN_ADDR"
    )]
    pub addr: Option<SocketAddr>,
    /// Secret an operator presents to the page, as `Authorization: Bearer` or through its
    /// login form; required with ADMIN_ADDR, at least 16 characters.
    #[arg(
        long = "admin-token",
        id = "admin_token",
        env = "ADMIN_TOKEN",
        value_name = "ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<Secret>,
}

/// Why the operator page cannot start as configured; each names the variable to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminConfigError {
    #[error(
        "ADMIN_ADDR is set but ADMIN_TOKEN is not: the operator page needs a token (set ADMIN_TOKEN, or unset ADMIN_ADDR)"
    )]
    MissingToken,
    #[error("ADMIN_TOKEN is shorter than {MIN_TOKEN_LEN} characters")]
    ShortToken,
}

impl AdminSettings {
    /// The page's address and token, `None` when it is off, or the refusal that names the
    /// variable to set. Checked before anything connects, so that a replica never runs with an
    /// operator page open to anyone.
    pub fn enabled(&self) -> Result<Option<(SocketAddr, Secret)>, AdminConfigError> {
        let Some(addr) = self.addr else {
            return Ok(None);
        };
        let token = self.token.clone().ok_or(AdminConfigError::MissingToken)?;
        if token.expose().chars().count() < MIN_TOKEN_LEN {
            return Err(AdminConfigError::ShortToken);
        }
        Ok(Some((addr, token)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_needs_a_long_enough_token() {
        let addr = Some("127.0.0.1:9465".parse().unwrap());
        assert_eq!(AdminSettings::default().enabled(), Ok(None));
        let missing = AdminSettings { addr, token: None };
        assert_eq!(missing.enabled(), Err(AdminConfigError::MissingToken));
        assert!(missing.enabled().unwrap_err().to_string().contains("ADMIN_TOKEN"));
        let short = AdminSettings {
            addr,
            token: Some(Secret::new("short")),
        };
        assert_eq!(short.enabled(), Err(AdminConfigError::ShortToken));
        let good = AdminSettings {
            addr,
            token: Some(Secret::new("0123456789abcdef")),
        };
        assert!(good.enabled().unwrap().is_some());
    }
}
