//! TLS for every Postgres connection: libpq's `sslmode` and `sslrootcert`, read from
//! DATABASE_URL, and the rustls certificate checks that each mode asks for.

use std::{path::Path, str::FromStr, sync::Arc};

use anyhow::{Context as _, anyhow, bail};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{self, CryptoProvider},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::ParsedCertificate,
};
use tokio_postgres::Config;
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::warn;

use super::conninfo::TlsParams;
use crate::config::{CaFile, DbSettings};

/// libpq's `sslmode`, but `allow` (plaintext first, TLS only if the server insists), which
/// tokio-postgres cannot do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, plaintext when it does not. A server that offers TLS and
    /// then fails the handshake is an error, not a reason to fall back to plaintext.
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS, and the certificate must chain to a trusted CA; its host name is not checked.
    VerifyCa,
    /// TLS, and the certificate must chain to a trusted CA and name the host connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        match value {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            "allow" => Err("sslmode=allow is not supported; use prefer or disable".into()),
            other => Err(format!(
                "sslmode={other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            )),
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres negotiates; it knows no verify modes, so those are `require` with our
    /// own certificate check.
    fn negotiation(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Pg;
        match self {
            Self::Disable => Pg::Disable,
            Self::Prefer => Pg::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => Pg::Require,
        }
    }
}

/// How this process talks TLS to Postgres.
#[derive(Clone)]
pub(crate) struct Tls {
    mode: SslMode,
    /// Where the trusted CA certificates come from; `None` when the certificate is not checked.
    trust: Option<String>,
    connector: MakeRustlsConnect,
}

impl Tls {
    pub(crate) fn mode(&self) -> SslMode {
        self.mode
    }

    pub(crate) fn connector(&self) -> MakeRustlsConnect {
        self.connector.clone()
    }

    /// A sentence for a connection refused in the TLS handshake, with rustls's reason; `None`
    /// when `err` did not come from rustls.
    pub(crate) fn explain(&self, err: &tokio_postgres::Error) -> Option<String> {
        let cause = rustls_cause(err)?;
        Some(match (cause, &self.trust) {
            (
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                ),
                _,
            ) => format!(
                "the server's certificate does not name the host connected to \
                 (verify-ca would not check the name): {cause}"
            ),
            (rustls::Error::InvalidCertificate(_), Some(trust)) => {
                format!("the server's certificate was not trusted by the CA certificates in {trust}: {cause}")
            }
            (rustls::Error::InvalidCertificate(_), None) => {
                format!("the server's certificate was refused: {cause}")
            }
            _ => format!("the TLS handshake failed: {cause}"),
        })
    }
}

/// rustls's error behind a failed connection: tokio-postgres wraps it in the `io::Error` that
/// tokio-rustls returns.
fn rustls_cause(err: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        let inner = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        if let Some(found) = inner.and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// The tokio-postgres config and the TLS for DATABASE_URL and DATABASE_CA_FILE. Every error
/// shows the URL with its password masked.
pub(crate) fn parse(settings: &DbSettings) -> anyhow::Result<(Config, Tls)> {
    let url = &settings.url;
    let params = TlsParams::split(url.expose());
    let mut config = Config::from_str(&params.rest).map_err(|e| {
        anyhow!(
            "DATABASE_URL {url} is not a valid Postgres URL: {}",
            super::chain(&e)
        )
    })?;
    let (mode, roots) =
        resolve(&params, settings.ca_file.as_ref()).map_err(|e| anyhow!("DATABASE_URL {url}: {e}"))?;
    config.ssl_mode(mode.negotiation());
    let tls = build(mode, roots)?;
    Ok((config, tls))
}

/// Where the CA certificates come from.
enum Roots {
    File { ca: CaFile, setting: &'static str },
    Platform,
}

fn resolve(params: &TlsParams, ca_file: Option<&CaFile>) -> Result<(SslMode, Option<Roots>), String> {
    let explicit = params.sslmode.as_deref().map(SslMode::parse).transpose()?;
    let roots = match (ca_file, params.sslrootcert.as_deref()) {
        (Some(ca), Some(root)) if Path::new(root) != ca.path() => {
            return Err(format!(
                "sslrootcert={root} and DATABASE_CA_FILE={} name different files; set one of them",
                ca.path().display()
            ));
        }
        (Some(ca), _) => Some(Roots::File {
            ca: ca.clone(),
            setting: "DATABASE_CA_FILE",
        }),
        (None, Some("system")) => Some(Roots::Platform),
        (None, Some(root)) => Some(Roots::File {
            ca: CaFile::load(root).map_err(|e| format!("sslrootcert: {e}"))?,
            setting: "sslrootcert",
        }),
        (None, None) => None,
    };
    let mode = match (explicit, &roots) {
        // As libpq 16 has it: a public CA vouches for names, so a weaker check would trust any
        // certificate that any public CA has signed.
        (None, Some(Roots::Platform)) => SslMode::VerifyFull,
        (Some(mode), Some(Roots::Platform)) if mode != SslMode::VerifyFull => {
            return Err(format!(
                "sslmode={} cannot be used with sslrootcert=system; use verify-full",
                mode.as_str()
            ));
        }
        (explicit, _) => explicit.unwrap_or(SslMode::Prefer),
    };
    Ok((mode, roots))
}

fn build(mode: SslMode, roots: Option<Roots>) -> anyhow::Result<Tls> {
    let roots = match (mode, roots) {
        (SslMode::Disable, _) => None,
        // As libpq does: a root certificate given with prefer or require still has the chain
        // checked, as verify-ca does.
        (_, Some(Roots::File { ca, setting })) => {
            Some((ca.roots(), format!("{setting} {}", ca.path().display())))
        }
        (SslMode::Prefer | SslMode::Require, _) => None,
        (SslMode::VerifyCa | SslMode::VerifyFull, _) => {
            Some((platform_roots(mode)?, "the platform's trust store".to_owned()))
        }
    };
    let check_name = mode == SslMode::VerifyFull;
    let (roots, trust) = match roots {
        Some((roots, trust)) => (Some(Arc::new(roots)), Some(trust)),
        None => (None, None),
    };
    let config = client_config(roots, check_name)?;
    Ok(Tls {
        mode,
        trust,
        connector: MakeRustlsConnect::new(config),
    })
}

fn platform_roots(mode: SslMode) -> anyhow::Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        warn!(%error, "skipping platform CA certificates that could not be read");
    }
    let mut roots = RootCertStore::empty();
    let (added, _unparsable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        bail!(
            "sslmode={} needs CA certificates, and this machine's trust store has none: set DATABASE_CA_FILE",
            mode.as_str()
        );
    }
    Ok(roots)
}

fn client_config(roots: Option<Arc<RootCertStore>>, check_name: bool) -> anyhow::Result<ClientConfig> {
    // Named rather than taken from rustls's process default, which rustls cannot choose by
    // itself once any dependency also compiles in aws-lc-rs.
    let provider = Arc::new(crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("setting up TLS for Postgres")?;
    let mut config = match roots {
        Some(roots) if check_name => builder.with_root_certificates(roots).with_no_client_auth(),
        roots => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoNameCheck { roots, provider }))
            .with_no_client_auth(),
    };
    // PostgreSQL 17 refuses direct TLS (`sslnegotiation=direct`) without this ALPN protocol;
    // older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// Checks the certificate chain against `roots` but not the host name (verify-ca); with no roots
/// it checks no certificate at all (require and prefer without a CA file). Handshake signatures
/// are verified either way.
#[derive(Debug)]
struct NoNameCheck {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoNameCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    use tokio_postgres::config::SslMode as Pg;

    use super::*;

    fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    fn ca_file(ca: &CertifiedIssuer<'static, KeyPair>) -> CaFile {
        let path = std::env::temp_dir().join(format!("rw-tls-ca-{}.pem", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, ca.pem()).unwrap();
        let loaded = CaFile::load(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        loaded
    }

    fn settings(url: &str, ca_file: Option<CaFile>) -> DbSettings {
        DbSettings {
            url: url.parse().unwrap(),
            pool_size: 1,
            ca_file,
        }
    }

    fn refusal(url: &str) -> String {
        match parse(&settings(url, None)) {
            Ok(_) => panic!("{url} was accepted"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn a_managed_ha_url_keeps_every_host_and_the_read_write_requirement() {
        // The libpq convention for a primary with standbys: try each host, take the one that
        // accepts writes (a failover then needs no change of setting).
        let url =
            "postgres://u@a.example:5441,b.example:5442/db?target_session_attrs=read-write&sslmode=disable";
        let (config, _) = parse(&settings(url, None)).unwrap();
        assert_eq!(config.get_hosts().len(), 2);
        assert_eq!(config.get_ports(), [5441, 5442]);
        assert_eq!(
            config.get_target_session_attrs(),
            tokio_postgres::config::TargetSessionAttrs::ReadWrite
        );
    }

    #[test]
    fn each_mode_maps_to_what_tokio_postgres_negotiates_and_prefer_is_the_default() {
        let ca = ca_file(&new_ca("test CA"));
        let cases = [
            ("postgres://db/x", SslMode::Prefer, Pg::Prefer),
            ("postgres://db/x?sslmode=disable", SslMode::Disable, Pg::Disable),
            ("host=db dbname=x sslmode=require", SslMode::Require, Pg::Require),
            (
                "postgres://db/x?sslmode=verify-ca",
                SslMode::VerifyCa,
                Pg::Require,
            ),
            ("host=db sslmode='verify-full'", SslMode::VerifyFull, Pg::Require),
        ];
        for (url, mode, negotiated) in cases {
            let (config, tls) = parse(&settings(url, Some(ca.clone()))).unwrap();
            assert_eq!(tls.mode(), mode, "{url}");
            assert_eq!(config.get_ssl_mode(), negotiated, "{url}");
        }
    }

    #[test]
    fn unknown_modes_and_bad_urls_are_refused_clearly_without_the_password() {
        let cases = [
            (
                "postgres://app:s3cr3t@db/x?sslmode=verify_full",
                r#"sslmode="verify_full" is not one of"#,
            ),
            (
                "host=db password=s3cr3t sslmode=allow",
                "sslmode=allow is not supported",
            ),
            (
                "postgres://app@db/x?password=s3cr3t&sslmode=",
                r#"sslmode="" is not one of"#,
            ),
            (
                "postgres://app:s3cr3t@db/x?sslcert=/c.pem",
                "unknown option `sslcert`",
            ),
            (
                "postgres://app:s3cr3t@db/x?sslrootcert=/nonexistent.pem",
                "sslrootcert: cannot read /nonexistent.pem",
            ),
        ];
        for (url, expected) in cases {
            let err = refusal(url);
            assert!(err.contains(expected), "{url}: {err}");
            assert!(err.starts_with("DATABASE_URL "), "{url}: {err}");
            assert!(!err.contains("s3cr3t"), "{url}: {err}");
        }
    }

    #[test]
    fn a_root_certificate_is_named_once_and_system_needs_verify_full() {
        let ca = ca_file(&new_ca("test CA"));
        let params = |raw: &str| TlsParams::split(raw);
        let err = resolve(&params("host=db sslrootcert=/other.pem"), Some(&ca))
            .err()
            .unwrap();
        assert!(err.contains("name different files"), "{err}");
        let same = format!("host=db sslrootcert={}", ca.path().display());
        assert!(resolve(&params(&same), Some(&ca)).is_ok());

        let (mode, roots) = resolve(&params("host=db sslrootcert=system"), None).unwrap();
        assert_eq!(mode, SslMode::VerifyFull);
        assert!(matches!(roots, Some(Roots::Platform)));
        let err = resolve(&params("host=db sslrootcert=system sslmode=require"), None)
            .err()
            .unwrap();
        assert!(err.contains("use verify-full"), "{err}");
    }

    #[test]
    fn verify_ca_checks_the_chain_but_not_the_name_and_require_checks_nothing() {
        let (ours, theirs) = (new_ca("our CA"), new_ca("their CA"));
        let leaf = |ca: &CertifiedIssuer<'static, KeyPair>| {
            let params = CertificateParams::new(vec!["db.internal".to_owned()]).unwrap();
            params
                .signed_by(&KeyPair::generate().unwrap(), ca)
                .unwrap()
                .der()
                .clone()
        };
        let provider = Arc::new(crypto::ring::default_provider());
        let verify_ca = NoNameCheck {
            roots: Some(Arc::new(ca_file(&ours).roots())),
            provider: provider.clone(),
        };
        let require = NoNameCheck {
            roots: None,
            provider,
        };
        let other_name = ServerName::try_from("127.0.0.1").unwrap();
        let check = |v: &NoNameCheck, cert: &CertificateDer<'_>| {
            v.verify_server_cert(cert, &[], &other_name, &[], UnixTime::now())
                .map(|_| ())
        };
        assert_eq!(check(&verify_ca, &leaf(&ours)), Ok(()));
        assert_eq!(
            check(&verify_ca, &leaf(&theirs)),
            Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))
        );
        assert_eq!(check(&require, &leaf(&theirs)), Ok(()));
    }
}
