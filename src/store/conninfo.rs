//! The TLS parameters of DATABASE_URL that tokio-postgres 0.7 does not know (`sslmode`'s verify
//! modes, `sslrootcert`), taken out before it parses the rest, in URL and key=value forms.

/// DATABASE_URL without the parameters that tokio-postgres does not know, and their values.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct TlsParams {
    pub(super) rest: String,
    pub(super) sslmode: Option<String>,
    pub(super) sslrootcert: Option<String>,
}

impl TlsParams {
    /// A string that neither form parses is passed on whole, for tokio-postgres to refuse.
    pub(super) fn split(raw: &str) -> Self {
        let url = ["postgres://", "postgresql://"]
            .iter()
            .find_map(|scheme| raw.strip_prefix(scheme));
        let split = match url {
            Some(after_scheme) => Some(Self::split_url(raw, after_scheme)),
            None => Self::split_key_values(raw),
        };
        split.unwrap_or_else(|| Self {
            rest: raw.to_owned(),
            ..Self::default()
        })
    }

    /// Keeps `key`'s value if it is one of ours.
    fn take(&mut self, key: &str, value: String) -> bool {
        match key {
            "sslmode" => self.sslmode = Some(value),
            "sslrootcert" => self.sslrootcert = Some(value),
            _ => return false,
        }
        true
    }

    fn split_url(raw: &str, after_scheme: &str) -> Self {
        // Where tokio-postgres looks: the credentials end at the first `@`, and the parameters
        // start at the first `?` after them.
        let host_at = after_scheme.find('@').map_or(0, |at| at + 1);
        let base_len = raw.len() - after_scheme.len() + host_at;
        let Some(query_at) = raw[base_len..].find('?').map(|q| base_len + q) else {
            return Self {
                rest: raw.to_owned(),
                ..Self::default()
            };
        };
        let mut out = Self::default();
        let mut kept = Vec::new();
        for pair in raw[query_at + 1..].split('&') {
            let taken = pair
                .split_once('=')
                .is_some_and(|(key, value)| out.take(&decode(key), decode(value)));
            if !taken {
                kept.push(pair);
            }
        }
        out.rest = raw[..query_at].to_owned();
        if !kept.is_empty() {
            out.rest.push('?');
            out.rest.push_str(&kept.join("&"));
        }
        out
    }

    /// libpq's `key = value` form, as tokio-postgres reads it; `None` if it does not parse.
    fn split_key_values(raw: &str) -> Option<Self> {
        let mut out = Self::default();
        let mut kept = Vec::new();
        let mut rest = raw.trim_start();
        while !rest.is_empty() {
            let start = raw.len() - rest.len();
            let key_len = rest
                .find(|c: char| c.is_whitespace() || c == '=')
                .unwrap_or(rest.len());
            let key = &rest[..key_len];
            if key.is_empty() {
                return None;
            }
            rest = rest[key_len..].trim_start().strip_prefix('=')?.trim_start();
            let (value, value_len) = key_value(rest)?;
            rest = &rest[value_len..];
            if !out.take(key, value) {
                kept.push(&raw[start..raw.len() - rest.len()]);
            }
            rest = rest.trim_start();
        }
        out.rest = kept.join(" ");
        Some(out)
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The value at the start of `s`, `'quoted'` or bare up to white space, `\` escaping the next
/// character; with the number of bytes it takes.
fn key_value(s: &str) -> Option<(String, usize)> {
    let quoted = s.starts_with('\'');
    let mut chars = s.char_indices().skip(usize::from(quoted));
    let mut value = String::new();
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' => value.extend(chars.next().map(|(_, escaped)| escaped)),
            '\'' if quoted => return Some((value, at + 1)),
            c if !quoted && c.is_whitespace() => return Some((value, at)),
            c => value.push(c),
        }
    }
    (!quoted).then_some((value, s.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(raw: &str) -> (String, Option<String>, Option<String>) {
        let p = TlsParams::split(raw);
        (p.rest, p.sslmode, p.sslrootcert)
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    #[test]
    fn url_parameters_are_taken_out_and_the_rest_kept_verbatim() {
        assert_eq!(
            split(
                "postgres://app:p%40ss@db:5432/roadmap?sslmode=verify-full&application_name=a%20b\
                 &sslrootcert=%2Fetc%2Fca.pem"
            ),
            (
                "postgres://app:p%40ss@db:5432/roadmap?application_name=a%20b".into(),
                some("verify-full"),
                some("/etc/ca.pem")
            )
        );
        assert_eq!(
            split("postgresql://db/roadmap?sslmode=require"),
            ("postgresql://db/roadmap".into(), some("require"), None)
        );
        assert_eq!(
            split("postgres://db/roadmap"),
            ("postgres://db/roadmap".into(), None, None)
        );
        // A `?` in the password is part of the credentials, as tokio-postgres reads them.
        assert_eq!(
            split("postgres://app:a?b@db/x?sslmode=disable"),
            ("postgres://app:a?b@db/x".into(), some("disable"), None)
        );
        // The last of repeated parameters wins, as in libpq.
        assert_eq!(
            split("postgres://db/x?sslmode=disable&sslmode=require").1,
            some("require")
        );
    }

    #[test]
    fn key_value_parameters_are_taken_out_with_quotes_and_escapes() {
        assert_eq!(
            split(
                r"host=db user=app password='p w\'d' sslmode = verify-ca sslrootcert='/a b/ca.pem' dbname=x"
            ),
            (
                r"host=db user=app password='p w\'d' dbname=x".into(),
                some("verify-ca"),
                some("/a b/ca.pem")
            )
        );
        assert_eq!(
            split("host=db sslmode=require"),
            ("host=db".into(), some("require"), None)
        );
        assert_eq!(split("host=db"), ("host=db".into(), None, None));
    }

    #[test]
    fn strings_that_do_not_parse_are_passed_on_whole() {
        for raw in [
            "host=db sslmode='unterminated",
            "=x sslmode=require",
            "host sslmode=require",
        ] {
            assert_eq!(split(raw), (raw.into(), None, None), "{raw}");
        }
    }
}
