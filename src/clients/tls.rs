//! TLS configuration, read from PEM files. On the client port: the certificate chain and key
//! (and, for mutual TLS, the CA whose certificates clients must present) become a rustls
//! `ServerConfig` that the admission loop takes afresh for each new connection; when the files
//! change (a renewal by certbot or another ACME client) they are read again and the new config
//! replaces the old one for new connections only, while connected clients keep the session
//! they have. A broken new pair is logged and counted, and the old one stays. What a `wss://`
//! connection made by fxproxy trusts is `base::tls`.

use crate::base::metrics::Metrics;
use crate::base::tls::{client_config, fail, provider, read, read_certs, TlsError};
use crate::base::x509;
use log::{error, info, warn};
use parking_lot::{Mutex, RwLock};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::PrivateKeyDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

/// A certificate this close to its end is warned about each time it is read.
const EXPIRY_WARNING_MS: u64 = 14 * 24 * 3600 * 1000;

/// The files `tls_cert_file`, `tls_key_file` and `tls_client_ca_file` name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate first, then the intermediates (certbot's `fullchain.pem`).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate issued by one of these; `None`: no client
    /// certificates are asked for.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The files the config names, if it asks for TLS on the client port.
    pub fn of(config: &crate::config::Config) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: config.tls_cert_file.clone()?,
            key: config.tls_key_file.clone()?,
            client_ca: config.tls_client_ca_file.clone(),
        })
    }
}

/// A usable server config and what the log and `/metrics` say about it.
pub struct Loaded {
    pub config: Arc<ServerConfig>,
    /// When the server's certificate lapses (epoch ms), if it could be read.
    pub not_after_ms: Option<u64>,
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    const KEY: &str = "tls_key_file";
    let bytes = read(KEY, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => fail(
            KEY,
            path,
            "no private key in the file (expected a PEM block `BEGIN PRIVATE KEY`, `BEGIN EC \
             PRIVATE KEY` or `BEGIN RSA PRIVATE KEY`; an encrypted key must be decrypted first)",
        ),
        e => fail(KEY, path, format!("not a valid PEM file: {e}")),
    })
}

/// Reads the files and builds the server config; the error names the file at fault.
pub fn load(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let chain = read_certs("tls_cert_file", &files.cert)?;
    let key = read_key(&files.key)?;
    let not_after_ms = x509::not_after_ms(&chain[0]);
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("tls_cert_file", &files.cert, e))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            const KEY: &str = "tls_client_ca_file";
            let mut roots = RootCertStore::empty();
            for cert in read_certs(KEY, ca)? {
                roots
                    .add(cert)
                    .map_err(|e| fail(KEY, ca, format!("not a usable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| fail(KEY, ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| pair_error(files, &e))?;
    // What is served over TLS is HTTP/1.1 (the page, the endpoints, the WebSocket upgrade).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        not_after_ms,
    })
}

fn pair_error(files: &TlsFiles, e: &rustls::Error) -> TlsError {
    use rustls::{Error, InconsistentKeys};
    match e {
        Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => TlsError {
            key: "tls_key_file",
            message: format!(
                "{}: the private key does not match the certificate in {} (the server's own \
                 certificate must come first in that file, then its chain)",
                files.key.display(),
                files.cert.display()
            ),
        },
        Error::InvalidCertificate(_) | Error::InconsistentKeys(_) => fail(
            "tls_cert_file",
            &files.cert,
            format!("the first certificate cannot be used: {e}"),
        ),
        e => fail(
            "tls_key_file",
            &files.key,
            format!("the private key cannot be used: {e}"),
        ),
    }
}

/// What `--check-config` says of the TLS files: one line each for what is in use, or the
/// error naming the config line and the file at fault.
pub fn check(config: &crate::config::Config) -> Result<Vec<String>, String> {
    let at = |e: TlsError| config.error_at(e.key, e.message).to_string();
    let mut lines = Vec::new();
    if let Some(files) = TlsFiles::of(config) {
        let loaded = load(&files).map_err(at)?;
        let until = loaded
            .not_after_ms
            .map_or("an expiry date that cannot be read".to_string(), |ms| {
                format!("valid until {}", crate::base::market::iso_utc(ms))
            });
        lines.push(format!(
            "TLS on the client port: {} with {} ({until})",
            files.cert.display(),
            files.key.display()
        ));
        if let Some(ca) = &files.client_ca {
            lines.push(format!(
                "client certificates required, from {}",
                ca.display()
            ));
        }
    }
    if let Some(ca) = &config.upstream_ca_file {
        client_config(Some(ca), config.upstream_bundled_roots).map_err(at)?;
        let also = if config.upstream_bundled_roots {
            " and the bundled web PKI roots"
        } else {
            " only"
        };
        lines.push(format!("upstream trusts {}{also}", ca.display()));
    }
    Ok(lines)
}

/// Modification time, size and inode of each file: certbot renews by pointing the `live/`
/// symlinks at new files, an editor or `mv` replaces the inode; either changes the stamp.
type Stamps = Vec<Option<(SystemTime, u64, u64)>>;

fn stamps(files: &TlsFiles) -> Stamps {
    use std::os::unix::fs::MetadataExt;
    let stamp = |path: &Path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len(), meta.ino()))
    };
    let mut all = vec![stamp(&files.cert), stamp(&files.key)];
    all.extend(files.client_ca.as_deref().map(stamp));
    all
}

/// The files as loaded and as last seen.
struct Watch {
    loaded: Stamps,
    seen: Stamps,
}

/// TLS on the client port: the config new connections get, and the files it came from.
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    watch: Mutex<Watch>,
}

impl ServerTls {
    /// Reads the files; the error names the file at fault. The expiry goes into `metrics`.
    pub fn start(files: TlsFiles, metrics: &Metrics) -> Result<ServerTls, TlsError> {
        let seen = stamps(&files);
        let loaded = load(&files)?;
        note_expiry(&files, loaded.not_after_ms, metrics);
        let client_auth = match &files.client_ca {
            Some(ca) => format!(
                "; clients must present a certificate issued by a CA in {}",
                ca.display()
            ),
            None => String::new(),
        };
        info!(
            "TLS on the client port (wss:// and https://) with {}{client_auth}",
            files.cert.display()
        );
        Ok(ServerTls {
            files,
            current: RwLock::new(loaded.config),
            watch: Mutex::new(Watch {
                loaded: seen.clone(),
                seen,
            }),
        })
    }

    /// The config for a new connection.
    pub fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.read())
    }

    /// Whether clients must present a certificate.
    pub fn client_auth(&self) -> bool {
        self.files.client_ca.is_some()
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Looks at the files (housekeeping does, every few seconds) and reads them again once
    /// they have changed and then stayed as they are between two looks: a renewal writes the
    /// certificate and the key one after the other, and a pair caught half-written would be
    /// refused for nothing.
    pub fn look(&self, metrics: &Metrics) {
        let now = stamps(&self.files);
        {
            let mut watch = self.watch.lock();
            let settled = now == watch.seen;
            watch.seen = now.clone();
            if now == watch.loaded || !settled {
                return;
            }
        }
        reload(self, metrics);
    }
}

/// Reads the certificate files again now: on success new connections get the new certificate
/// and connected clients keep their sessions; a broken pair is logged and counted in
/// `/metrics`, and the previous one stays in use. Returns whether the new files were taken.
/// Housekeeping calls it when the files change; a reload signal may call it too.
pub fn reload(tls: &ServerTls, metrics: &Metrics) -> bool {
    let before = stamps(&tls.files);
    let taken = match load(&tls.files) {
        Ok(loaded) => {
            *tls.current.write() = loaded.config;
            metrics.tls_reloads.fetch_add(1, Ordering::Relaxed);
            info!(
                "TLS certificate re-read from {}: new connections get it, connected clients keep theirs",
                tls.files.cert.display()
            );
            note_expiry(&tls.files, loaded.not_after_ms, metrics);
            true
        }
        Err(e) => {
            metrics.tls_reload_failures.fetch_add(1, Ordering::Relaxed);
            error!("TLS certificate files changed but cannot be used, keeping the previous certificate: {e}");
            false
        }
    };
    // A broken pair is reported once, not at every look, until the files change again.
    let mut watch = tls.watch.lock();
    watch.loaded = before.clone();
    watch.seen = before;
    taken
}

fn note_expiry(files: &TlsFiles, not_after_ms: Option<u64>, metrics: &Metrics) {
    let Some(at) = not_after_ms else {
        warn!(
            "{}: cannot read the certificate's expiry date; fxproxy_tls_certificate_expiry_seconds is not set",
            files.cert.display()
        );
        return;
    };
    metrics.tls_cert_not_after_ms.store(at, Ordering::Relaxed);
    let now = metrics.now_ms();
    let when = crate::base::market::iso_utc(at);
    if at <= now {
        error!(
            "{}: the certificate expired at {when}; clients will refuse it until it is renewed",
            files.cert.display()
        );
    } else if at - now < EXPIRY_WARNING_MS {
        warn!(
            "{}: the certificate expires at {when}, in {} days",
            files.cert.display(),
            (at - now) / (24 * 3600 * 1000)
        );
    } else {
        info!(
            "{}: the certificate is valid until {when}",
            files.cert.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pki {
        dir: PathBuf,
        files: TlsFiles,
    }

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k, cert.pem())
    }

    fn pki(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("fxproxy-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key, _) = write_pair(&dir, "a");
        Pki {
            files: TlsFiles {
                cert,
                key,
                client_ca: None,
            },
            dir,
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn error(files: &TlsFiles) -> TlsError {
        match load(files) {
            Ok(_) => panic!("loaded"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_good_pair_loads_and_its_expiry_is_read() {
        let p = pki("good");
        let loaded = load(&p.files).unwrap();
        assert!(loaded.not_after_ms.is_some());
        assert_eq!(loaded.config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn missing_empty_and_mismatched_files_are_named() {
        let p = pki("bad");
        let missing = TlsFiles {
            cert: p.dir.join("nope.crt"),
            ..p.files.clone()
        };
        let e = error(&missing);
        assert_eq!(e.key, "tls_cert_file");
        assert!(e.message.contains("nope.crt: cannot read the file"), "{e}");

        std::fs::write(p.dir.join("empty"), "").unwrap();
        let e = error(&TlsFiles {
            key: p.dir.join("empty"),
            ..p.files.clone()
        });
        assert_eq!(e.key, "tls_key_file");
        assert!(
            e.message.contains("empty: no private key in the file"),
            "{e}"
        );
        let e = error(&TlsFiles {
            cert: p.dir.join("empty"),
            ..p.files.clone()
        });
        assert!(
            e.message.contains("empty: no certificate in the file"),
            "{e}"
        );

        let (_, other_key, _) = write_pair(&p.dir, "b");
        let e = error(&TlsFiles {
            key: other_key,
            ..p.files.clone()
        });
        assert_eq!(e.key, "tls_key_file");
        assert!(
            e.message
                .contains("b.key: the private key does not match the certificate in"),
            "{e}"
        );

        // A key where the certificate belongs.
        let e = error(&TlsFiles {
            cert: p.files.key.clone(),
            ..p.files.clone()
        });
        assert_eq!(e.key, "tls_cert_file");
    }

    #[test]
    fn a_changed_pair_is_taken_once_settled_and_a_broken_one_is_refused_once() {
        let p = pki("reload");
        let metrics = Metrics::new();
        let tls = ServerTls::start(p.files.clone(), &metrics).unwrap();
        let first = tls.config();
        tls.look(&metrics);
        assert!(Arc::ptr_eq(&first, &tls.config()), "nothing changed");

        // A new pair, written over the old files.
        let (c, k, _) = write_pair(&p.dir, "new");
        std::fs::rename(&c, &p.files.cert).unwrap();
        tls.look(&metrics);
        assert!(
            Arc::ptr_eq(&first, &tls.config()),
            "changing: wait for it to settle"
        );
        std::fs::rename(&k, &p.files.key).unwrap();
        tls.look(&metrics);
        assert!(Arc::ptr_eq(&first, &tls.config()));
        tls.look(&metrics);
        let second = tls.config();
        assert!(!Arc::ptr_eq(&first, &second), "settled: taken");
        assert_eq!(metrics.tls_reloads.load(Ordering::Relaxed), 1);

        // A certificate whose key is elsewhere: refused once, the previous config kept.
        let (c, _, _) = write_pair(&p.dir, "stray");
        std::fs::rename(&c, &p.files.cert).unwrap();
        for _ in 0..4 {
            tls.look(&metrics);
        }
        assert!(Arc::ptr_eq(&second, &tls.config()));
        assert_eq!(metrics.tls_reload_failures.load(Ordering::Relaxed), 1);
        // Asked directly (a reload signal), it is refused again.
        assert!(!reload(&tls, &metrics));
        assert_eq!(metrics.tls_reload_failures.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn client_config_trusts_the_bundled_roots_a_file_or_both() {
        let p = pki("client");
        assert!(client_config(None, true).is_ok());
        assert!(client_config(Some(&p.files.cert), false).is_ok());
        assert!(client_config(Some(&p.files.cert), true).is_ok());
        let e = client_config(None, false).unwrap_err();
        assert!(e.message.contains("no root certificate to trust"), "{e}");
        let e = client_config(Some(&p.files.key), true).unwrap_err();
        assert!(e.message.contains("no certificate in the file"), "{e}");
    }
}
