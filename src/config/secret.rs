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

/// Masks every secret in a service URL or a libpq connection string, for logs and errors: a URL's
/// password, secret query parameters (`?password=`, `?sslpassword=`, `?key=`), and the values of
/// secret keywords in libpq `key=value` form, quoted (`password='s3 cr\'3t'`) or not. Text that is
/// neither (an error message that mentions a URL) is read as words, and each word masked alike.
pub fn redact_url(raw: &str) -> String {
    if let Ok(mut url) = url::Url::parse(raw)
        && !url.cannot_be_a_base()
        && (url.password().is_none() || url.set_password(Some("***")).is_ok())
    {
        if let Some(query) = url.query().and_then(redact_query) {
            url.set_query(Some(&query));
        }
        return url.to_string();
    }
    redact_keywords(raw)
}

/// Names of settings whose values are secrets, in URL queries and libpq strings alike.
fn is_secret_key(key: &str) -> bool {
    // `(password` or `&password` when the key was cut out of running text.
    let key = key
        .trim_start_matches(|c: char| !c.is_alphanumeric())
        .to_ascii_lowercase();
    ["password", "passwd", "secret", "token"]
        .iter()
        .any(|s| key.contains(s))
        || matches!(
            key.as_str(),
            "pwd" | "pass" | "key" | "apikey" | "api_key" | "api-key"
        )
}

/// The query with each secret parameter's value replaced by `***`, or `None` if it has none.
/// Other parameters are kept byte for byte.
fn redact_query(query: &str) -> Option<String> {
    let mut changed = false;
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| {
            let raw_key = pair.split_once('=').map_or(pair, |(k, _)| k);
            // The key as the server reads it: `pass%77ord` is `password`.
            let key = url::form_urlencoded::parse(raw_key.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            if is_secret_key(&key) {
                changed = true;
                format!("{raw_key}=***")
            } else {
                pair.to_owned()
            }
        })
        .collect();
    changed.then(|| pairs.join("&"))
}

/// libpq `key=value` settings separated by whitespace, with spaces allowed around `=`; every
/// character other than secret values is kept as written.
fn redact_keywords(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    loop {
        let trimmed = rest.trim_start();
        out.push_str(&rest[..rest.len() - trimmed.len()]);
        rest = trimmed;
        if rest.is_empty() {
            return out;
        }
        // `key` is empty only if `rest` starts with `=`, which is consumed below: every turn
        // moves on.
        let key_len = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let (key, after_key) = rest.split_at(key_len);
        // libpq keywords are words; `postgres://db/x?user=app` is a URL with a query instead.
        let keyword = key
            .trim_start_matches(|c: char| !c.is_alphanumeric())
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-');
        if !keyword {
            let word_len = rest.find(char::is_whitespace).unwrap_or(rest.len());
            out.push_str(&redact_word(&rest[..word_len]));
            rest = &rest[word_len..];
            continue;
        }
        let Some(after_eq) = after_key.trim_start().strip_prefix('=') else {
            // A bare word, such as a URL in an error message.
            out.push_str(&redact_word(key));
            rest = after_key;
            continue;
        };
        // libpq skips whitespace after `=` too: `password= x` sets the password to `x`.
        let value = after_eq.trim_start();
        let (value, tail) = value.split_at(libpq_value_len(value));
        out.push_str(key);
        out.push_str(&after_key[..after_key.len() - value.len() - tail.len()]);
        if is_secret_key(key) {
            out.push_str("***");
        } else {
            out.push_str(&redact_word(value));
        }
        rest = tail;
    }
}

/// The length of the libpq value at the start of `s`: single-quoted, or up to whitespace; a
/// backslash escapes the next character in both. An unterminated quote runs to the end.
fn libpq_value_len(s: &str) -> usize {
    let quoted = s.starts_with('\'');
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(usize::from(quoted)) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '\'' if quoted => return i + 1,
            c if !quoted && c.is_whitespace() => return i,
            _ => {}
        }
    }
    s.len()
}

/// One word that may be a URL the parser refused: the password of `scheme://user:pass@` and
/// secret query parameters are masked.
fn redact_word(word: &str) -> String {
    let (head, query) = match word.split_once('?') {
        Some((head, query)) => (head, redact_query(query).map(|q| format!("?{q}"))),
        None => (word, None),
    };
    let query = query.unwrap_or_else(|| word[head.len()..].to_owned());
    match (head.find("://"), head.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let user = head[s + 3..at].split(':').next().unwrap_or("");
            format!("{}{user}:***{}{query}", &head[..s + 3], &head[at..])
        }
        _ => format!("{head}{query}"),
    }
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
    use proptest::prelude::*;

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
    fn query_passwords_are_redacted() {
        let cases = [
            (
                "postgres://db/x?user=app&password=s3cr3t",
                "postgres://db/x?user=app&password=***",
            ),
            (
                "postgres://app:s3cr3t@db:5432/x?sslpassword=s3cr3t&sslmode=require&password=s3cr3t",
                "postgres://app:***@db:5432/x?sslpassword=***&sslmode=require&password=***",
            ),
            // Percent-encoded and upper-case keys are the same key to the server.
            (
                "postgres://db/x?pass%77ord=s3cr3t&PASSWORD=s3cr3t",
                "postgres://db/x?pass%77ord=***&PASSWORD=***",
            ),
            (
                "https://llm.example/v1?key=s3cr3t&alt=json",
                "https://llm.example/v1?key=***&alt=json",
            ),
            ("postgres://db/x?password", "postgres://db/x?password=***"),
            (
                "postgresql:///x?host=/run/pg&password=s3cr3t",
                "postgresql:///x?host=/run/pg&password=***",
            ),
            // Nothing secret: the URL is left as it was.
            (
                "postgres://db/x?user=app&sslkey=%2Fk",
                "postgres://db/x?user=app&sslkey=%2Fk",
            ),
            ("amqp://127.0.0.1:5672/%2f", "amqp://127.0.0.1:5672/%2f"),
        ];
        for (raw, redacted) in cases {
            assert_eq!(redact_url(raw), redacted, "{raw}");
        }
    }

    #[test]
    fn quoted_libpq_passwords_are_redacted() {
        let cases = [
            (
                "host=db password='s3 cr3t' dbname=x",
                "host=db password=*** dbname=x",
            ),
            (
                r"host=db password='s3 \'cr3t\' \\ s3cr3t' dbname=x",
                "host=db password=*** dbname=x",
            ),
            ("password = 's3 cr3t'  host=db", "password = ***  host=db"),
            (
                r"host=db password=s3\ cr3t dbname=x",
                "host=db password=*** dbname=x",
            ),
            (
                "host=db password= s3cr3t dbname=x",
                "host=db password= *** dbname=x",
            ),
            ("host=db password='s3 cr3t", "host=db password=***"),
            ("host=db password=", "host=db password=***"),
            (
                "sslpassword='s3 cr3t' application_name='my app'",
                "sslpassword=*** application_name='my app'",
            ),
            ("\thost=db\npassword=s3cr3t ", "\thost=db\npassword=*** "),
            // Running text with URLs the parser refuses (port out of range).
            (
                "connecting to amqp://guest:s3cr3t@mq:99999/%2f (password=s3cr3t) failed",
                "connecting to amqp://guest:***@mq:99999/%2f (password=*** failed",
            ),
            (
                "bad url postgres://db:99999/x?user=app&password=s3cr3t",
                "bad url postgres://db:99999/x?user=app&password=***",
            ),
        ];
        for (raw, redacted) in cases {
            let out = redact_url(raw);
            assert_eq!(out, redacted, "{raw}");
            assert!(!out.contains("s3") && !out.contains("cr3t"), "{out}");
        }
    }

    fn libpq_text() -> impl Strategy<Value = String> {
        let chars = prop::sample::select(vec![
            'a', 'Z', '1', ' ', '\t', '\'', '\\', '=', 'é', ':', '@', '?', '&',
        ]);
        prop::collection::vec(chars, 0..40).prop_map(String::from_iter)
    }

    proptest::proptest! {
        #[test]
        fn redaction_is_total(text in prop_oneof![any::<String>(), libpq_text()]) {
            let _ = redact_url(&text);
            let _ = redact_url(&format!("password={text}"));
            let _ = redact_url(&format!("postgres://db/x?{text}"));
        }

        #[test]
        fn any_password_is_masked(password in libpq_text()) {
            let quoted = password.replace('\\', "\\\\").replace('\'', "\\'");
            let libpq = format!("host=db password='{quoted}' dbname=x");
            prop_assert_eq!(redact_url(&libpq), "host=db password=*** dbname=x");
            let encoded: String = url::form_urlencoded::byte_serialize(password.as_bytes()).collect();
            let url = format!("postgres://db/x?a=1&password={encoded}&b=2");
            prop_assert_eq!(redact_url(&url), "postgres://db/x?a=1&password=***&b=2");
        }
    }

    #[test]
    fn secrets_never_print() {
        let key = Secret::new("sk-live-123");
        assert!(!format!("{key:?} {key}").contains("sk-live"));
    }
}
