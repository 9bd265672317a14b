//! TLS from PEM files, as both ends use it: the roots a `wss://` connection made by fxproxy
//! trusts (the upstream, `fxproxy watch`), reading certificates, and errors that name the
//! proxy.conf key of the file at fault. The client port's own TLS is `clients::tls`.
//!
//! Only TLS 1.2 and 1.3, with rustls's default cipher suites and key exchange groups (ring).

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// Which file is wrong, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    /// The proxy.conf key naming the file at fault.
    pub key: &'static str,
    pub message: String,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TlsError {}

pub fn fail(key: &'static str, path: &Path, what: impl fmt::Display) -> TlsError {
    TlsError {
        key,
        message: format!("{}: {what}", path.display()),
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| fail(key, path, format!("cannot read the file: {e}")))
}

/// Every certificate in a PEM file, in file order; at least one.
pub fn read_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| fail(key, path, format!("not a valid PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(fail(
            key,
            path,
            "no certificate in the file (expected PEM blocks `-----BEGIN CERTIFICATE-----`)",
        ));
    }
    Ok(certs)
}

/// The roots a `wss://` connection made by fxproxy trusts: the web PKI roots bundled in the
/// binary (unless `bundled` is false) and the CA certificates in `ca_file`.
pub fn client_config(ca_file: Option<&Path>, bundled: bool) -> Result<Arc<ClientConfig>, TlsError> {
    const KEY: &str = "upstream_ca_file";
    let mut roots = RootCertStore::empty();
    if bundled {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = ca_file {
        for cert in read_certs(KEY, path)? {
            roots
                .add(cert)
                .map_err(|e| fail(KEY, path, format!("not a usable CA certificate: {e}")))?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError {
            key: KEY,
            message: "no root certificate to trust: set upstream_ca_file, or \
                      upstream_bundled_roots = true"
                .to_string(),
        });
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            key: KEY,
            message: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
