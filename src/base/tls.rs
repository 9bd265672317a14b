//! TLS from PEM files, as both ends use it: the roots a `wss://` connection made by fxproxy
//! trusts (the upstream, `fxproxy watch`), reading certificates, and errors that name the
//! proxy.conf key of the file at fault. The client port's own TLS is `clients::tls`.
//!
//! Only TLS 1.2 and 1.3, with rustls's default cipher suites and key exchange groups (ring).

use crate::base::x509;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
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
/// binary (unless `bundled` is false) and the CA certificates in `ca_file`. A certificate in
/// `ca_file` that a server presents as its own, exactly, is accepted too: pinned on purpose
/// (what `openssl req -x509` makes is a CA certificate, which rustls refuses as a server's
/// own; see [`Pinned`]).
pub fn client_config(ca_file: Option<&Path>, bundled: bool) -> Result<Arc<ClientConfig>, TlsError> {
    const KEY: &str = "upstream_ca_file";
    let mut roots = RootCertStore::empty();
    if bundled {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    let mut pinned = Vec::new();
    if let Some(path) = ca_file {
        for cert in read_certs(KEY, path)? {
            roots
                .add(cert.clone())
                .map_err(|e| fail(KEY, path, format!("not a usable CA certificate: {e}")))?;
            pinned.push(cert);
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
    let failed = |e: &dyn fmt::Display| TlsError {
        key: KEY,
        message: e.to_string(),
    };
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| failed(&e))?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { pinned, webpki }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The web PKI's verdict on a server's certificate, except that one of `pinned` (the
/// certificates of `upstream_ca_file`) presented exactly as the server's own is accepted while
/// it is in date: the operator put that very certificate there. The handshake's signature is
/// still checked against it, so only the holder of its key gets through.
#[derive(Debug)]
struct Pinned {
    pinned: Vec<CertificateDer<'static>>,
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let in_date = x509::not_after_ms(end_entity)
            .is_some_and(|not_after| not_after / 1000 > now.as_secs());
        if in_date
            && self
                .pinned
                .iter()
                .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return Ok(ServerCertVerified::assertion());
        }
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// What a failed TLS handshake with a server means, in words that say what to do, where
/// rustls's own name for it would leave an operator guessing.
pub fn explain(e: &rustls::Error) -> String {
    let hint = match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(other))
            if other.0.to_string() == "CaUsedAsEndEntity" =>
        {
            "the server presents a CA certificate as its own (basicConstraints CA:TRUE, which \
             `openssl req -x509` sets by default), and rustls accepts no CA certificate as a \
             server's. Put that exact certificate in upstream_ca_file to pin it, or give the \
             server a certificate issued by a CA (see docs/security.md)"
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the server's certificate is not issued by a CA fxproxy trusts: set upstream_ca_file \
             to the CA that issued it (or to the certificate itself, to pin it)"
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "the server's certificate does not name the host in the URL",
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the server's certificate has expired",
        _ => return e.to_string(),
    };
    format!("{e}: {hint}")
}
