//! TLS for a run with `--tls`: a self-signed certificate for 127.0.0.1 made for the run (the
//! target serves it), and the client config that trusts exactly it; or, for `--url wss://…`,
//! a client config trusting the CA in `--ca-file`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// The certificate and key files the target serves, and the clients' config.
pub struct RunTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client: Arc<ClientConfig>,
}

/// A fresh ECDSA P-256 certificate for 127.0.0.1 and localhost, written into `dir`.
pub fn self_signed(dir: &Path) -> Result<RunTls, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .and_then(|p| p.self_signed(&key))
        .map_err(|e| e.to_string())?;
    let (cert_path, key_path) = (dir.join("bench-cert.pem"), dir.join("bench-key.pem"));
    std::fs::write(&cert_path, cert.pem()).map_err(|e| e.to_string())?;
    std::fs::write(&key_path, key.serialize_pem()).map_err(|e| e.to_string())?;
    Ok(RunTls {
        cert: cert_path.clone(),
        key: key_path,
        client: client_config(&cert_path)?,
    })
}

/// A client config trusting the certificates in a PEM file (a CA, or the server's own).
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", ca.display()))?;
    for c in certs {
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
