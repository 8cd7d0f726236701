//! The CA certificates that Postgres server certificates are checked against, read and checked
//! where the setting is parsed.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, pem::PemObject as _},
};

/// A PEM file of CA certificates (DATABASE_CA_FILE, or `sslrootcert` in DATABASE_URL). It is read
/// once: a file that cannot be read, holds no certificate or holds a broken one stops the process
/// at start, rather than at the first TLS handshake, maybe hours later.
#[derive(Clone)]
pub struct CaFile {
    path: PathBuf,
    certs: Vec<CertificateDer<'static>>,
}

impl CaFile {
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, String> {
        let path = path.into();
        let shown = path.display();
        let pem = std::fs::read(&path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{shown} is not a readable PEM file: {e}"))?;
        if certs.is_empty() {
            return Err(format!(
                "{shown} holds no PEM certificate (no -----BEGIN CERTIFICATE----- block)"
            ));
        }
        let mut roots = RootCertStore::empty();
        for (i, cert) in certs.iter().enumerate() {
            roots.add(cert.clone()).map_err(|e| {
                format!(
                    "certificate {} of {shown} is not a valid CA certificate: {e}",
                    i + 1
                )
            })?;
        }
        Ok(Self { path, certs })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's certificates as trust anchors; `load` has checked that each one is valid.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(self.certs.iter().cloned());
        roots
    }
}

impl fmt::Debug for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaFile")
            .field("path", &self.path)
            .field("certificates", &self.certs.len())
            .finish()
    }
}

impl FromStr for CaFile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("the path is empty (unset the variable to use no CA file)".into());
        }
        Self::load(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads a file holding `text`, removed again before the result is checked.
    fn load(text: &str) -> (PathBuf, Result<CaFile, String>) {
        let path = std::env::temp_dir().join(format!("rw-cafile-{}.pem", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, text).unwrap();
        let loaded = CaFile::load(&path);
        std::fs::remove_file(&path).unwrap();
        (path, loaded)
    }

    #[test]
    fn unreadable_empty_and_broken_files_are_refused_with_their_path() {
        let missing = CaFile::load("/nonexistent/ca.pem").unwrap_err();
        assert!(missing.contains("cannot read /nonexistent/ca.pem"), "{missing}");

        let err = load("not a certificate\n").1.unwrap_err();
        assert!(err.contains("holds no PEM certificate"), "{err}");

        let (path, loaded) = load("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        let err = loaded.unwrap_err();
        assert!(err.contains("not a valid CA certificate"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");

        let err = "".parse::<CaFile>().unwrap_err();
        assert!(err.contains("the path is empty"), "{err}");
    }
}
