//! Redacting types for secrets and for service URLs that may carry a password: their `Debug`
//! and `Display` never show the secret, so it cannot reach a log line, an error or a metric.

use std::{fmt, str::FromStr};

/// A secret such as an API key. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The only way to read the value: call sites that need it are easy to audit.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// A service URL that may carry a password. `Display`/`Debug` show it with the password masked.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceUrl(Secret);

impl ServiceUrl {
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The URL with any password replaced by `***`, safe for logs and errors.
    pub fn redacted(&self) -> String {
        redact_url(self.expose())
    }
}

/// Masks the password of a URL (`scheme://user:pass@host`) or of a libpq key/value string.
pub fn redact_url(raw: &str) -> String {
    if let Ok(mut url) = url::Url::parse(raw) {
        let masked = url.password().is_none() || url.set_password(Some("***")).is_ok();
        if masked && url.has_host() {
            mask_query_password(&mut url);
            return url.to_string();
        }
    }
    // Not a URL (libpq "key=value" form) or unparsable: mask what follows `password=` / `:...@`.
    let mut out = String::with_capacity(raw.len());
    for word in raw.split(' ') {
        if !out.is_empty() {
            out.push(' ');
        }
        match word.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => {
                out.push_str(k);
                out.push_str("=***");
            }
            _ => match (word.find("://"), word.rfind('@')) {
                (Some(s), Some(at)) if at > s => {
                    let creds = &word[s + 3..at];
                    let user = creds.split(':').next().unwrap_or("");
                    out.push_str(&format!("{}{user}:***{}", &word[..s + 3], &word[at..]));
                }
                _ => out.push_str(word),
            },
        }
    }
    out
}

/// libpq also takes the password as a URL parameter (`?password=...`).
fn mask_query_password(url: &mut url::Url) {
    let Some(query) = url.query() else { return };
    let is_password = |pair: &str| {
        pair.split('=')
            .next()
            .is_some_and(|k| k.eq_ignore_ascii_case("password"))
    };
    if !query.split('&').any(is_password) {
        return;
    }
    let masked: Vec<&str> = query
        .split('&')
        .map(|pair| if is_password(pair) { "password=***" } else { pair })
        .collect();
    url.set_query(Some(&masked.join("&")));
}

impl fmt::Debug for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceUrl({})", self.redacted())
    }
}

impl fmt::Display for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl FromStr for ServiceUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(Secret::new(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        let url: ServiceUrl = "postgres://app:s3cr3t@db:5432/roadmap".parse().unwrap();
        assert_eq!(url.to_string(), "postgres://app:***@db:5432/roadmap");
        assert!(!format!("{url:?}").contains("s3cr3t"));
        assert_eq!(
            redact_url("host=db user=app password=s3cr3t dbname=x"),
            "host=db user=app password=*** dbname=x"
        );
        assert_eq!(
            redact_url("postgres://app@db/roadmap?sslmode=require&password=s3cr3t"),
            "postgres://app@db/roadmap?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
    }

    #[test]
    fn secrets_never_print() {
        let key = Secret::new("sk-live-123");
        assert!(!format!("{key:?} {key}").contains("sk-live"));
    }
}
