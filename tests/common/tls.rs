//! TLS for the tests: a certificate authority of their own (rcgen), server and client
//! certificates written as PEM files, rustls client configs that trust the CA, and
//! [`Endpoint`]: where clients connect, plain or TLS alike, so a test can run on both.

// Each test crate compiles this module and uses only part of it.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// The year `n` years after this one (UTC): certificates lapse then, so that they stay valid
/// whatever the date the tests run on, and each lapses on a date of its own.
pub fn years_ahead(n: u64) -> i32 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as u64;
    (fxproxy::market::Date::of(ms).ymd().0 + n) as i32
}

/// Epoch seconds of midnight UTC starting `(year, month, day)`, as a certificate's expiry
/// shows in `/metrics`.
pub fn epoch_secs((y, m, d): (i32, u8, u8)) -> f64 {
    let date: fxproxy::market::Date = format!("{y:04}-{m:02}-{d:02}").parse().expect("a date");
    (date.start_ms() / 1000) as f64
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test CA: it signs server and client certificates.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, as PEM files, and as DER for a rustls client.
pub struct Issued {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Issued {
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone().into())
    }
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("fxproxy test CA {name}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    /// The CA's own certificate and key as a server's pair, `dir/NAME.crt` and `dir/NAME.key`:
    /// what `openssl req -x509` makes, a CA certificate used as a server's own.
    pub fn write_own_pair(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert_file, key_file) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_file, self.cert.pem()).unwrap();
        std::fs::write(&key_file, self.key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    /// Writes the CA certificate (PEM) to `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.cert.pem()).unwrap();
        path.to_path_buf()
    }

    /// A server certificate for 127.0.0.1 and localhost, lapsing at midnight UTC on
    /// `lapses` (y, m, d), written as `dir/NAME.crt` and `dir/NAME.key`.
    pub fn server(&self, dir: &Path, name: &str, lapses: (i32, u8, u8)) -> Issued {
        self.issue(
            dir,
            name,
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            lapses,
        )
    }

    /// A server certificate for `names` only, lapsing in 2040.
    pub fn server_named(&self, dir: &Path, name: &str, names: &[&str]) -> Issued {
        self.issue(
            dir,
            name,
            names.iter().map(|n| n.to_string()).collect(),
            ExtendedKeyUsagePurpose::ServerAuth,
            (2040, 1, 1),
        )
    }

    /// A client certificate for mutual TLS.
    pub fn client(&self, dir: &Path, name: &str) -> Issued {
        self.issue(
            dir,
            name,
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            (years_ahead(10), 1, 1),
        )
    }

    fn issue(
        &self,
        dir: &Path,
        name: &str,
        names: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
        (y, m, d): (i32, u8, u8),
    ) -> Issued {
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("fxproxy test {name}"));
        params.extended_key_usages = vec![usage];
        params.not_after = rcgen::date_time_ymd(y, m, d);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (cert_file, key_file) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        // The chain as certbot writes fullchain.pem: the server's own certificate, then the CA.
        std::fs::write(&cert_file, format!("{}{}", cert.pem(), self.cert.pem())).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        Issued {
            cert_file,
            key_file,
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }

    /// A client that trusts this CA only.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(self.roots())
                .with_no_client_auth(),
        )
    }

    /// A client that trusts this CA and speaks only `version` (rustls knows 1.2 and 1.3).
    pub fn client_config_only(
        &self,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Arc<ClientConfig> {
        Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(self.roots())
                .with_no_client_auth(),
        )
    }

    /// A client that trusts this CA and presents `cert` (mutual TLS).
    pub fn client_config_with(&self, cert: &Issued) -> Arc<ClientConfig> {
        Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(self.roots())
                .with_client_auth_cert(vec![cert.cert_der.clone()], cert.key_der())
                .unwrap(),
        )
    }
}

/// A test CA and a server certificate from it, in `dir`, and the proxy.conf lines that serve
/// it: what a test needs for a TLS port.
pub struct TlsSetup {
    pub ca: TestCa,
    pub ca_file: PathBuf,
    pub server: Issued,
    /// The day the server certificate lapses (read once: a test may run across a New Year).
    pub server_lapses: (i32, u8, u8),
}

impl TlsSetup {
    pub fn new(dir: &Path) -> TlsSetup {
        let ca = TestCa::new("main");
        let ca_file = ca.write(&dir.join("ca.pem"));
        let server_lapses = (years_ahead(10), 1, 1);
        let server = ca.server(dir, "server", server_lapses);
        TlsSetup {
            ca,
            ca_file,
            server,
            server_lapses,
        }
    }

    /// `tls_cert_file` and `tls_key_file` for proxy.conf.
    pub fn config(&self) -> String {
        format!(
            "tls_cert_file = {}\ntls_key_file = {}\n",
            self.server.cert_file.display(),
            self.server.key_file.display()
        )
    }
}

/// Where a test's clients connect: an address, and over TLS the client config to use.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub tls: Option<Arc<ClientConfig>>,
}

impl Endpoint {
    pub fn plain(addr: SocketAddr) -> Endpoint {
        Endpoint { addr, tls: None }
    }

    pub fn tls(addr: SocketAddr, config: Arc<ClientConfig>) -> Endpoint {
        Endpoint {
            addr,
            tls: Some(config),
        }
    }

    pub fn ws_url(&self) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}/", self.addr)
    }

    /// A connection, its TLS handshake (if any) done; reads wait `read_timeout` at most.
    pub fn wire(&self, read_timeout: Duration) -> io::Result<Wire> {
        let tcp = TcpStream::connect(self.addr)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let wire = match &self.tls {
            None => Wire::Plain(tcp),
            Some(config) => {
                let name = ServerName::IpAddress(self.addr.ip().into());
                let conn = ClientConnection::new(Arc::clone(config), name)
                    .map_err(|e| io::Error::new(io::ErrorKind::Other, e))?;
                let raw = tcp.try_clone()?;
                let mut tls = StreamOwned::new(conn, tcp);
                while tls.conn.is_handshaking() {
                    tls.conn.complete_io(&mut tls.sock)?;
                }
                Wire::Tls(Arc::new(Mutex::new(tls)), raw)
            }
        };
        wire.tcp().set_read_timeout(Some(read_timeout))?;
        Ok(wire)
    }

    /// Sends a raw HTTP request and returns the whole response.
    pub fn http_get(&self, raw: &str) -> String {
        let mut wire = self.wire(super::DEADLINE).expect("connecting");
        wire.write_all(raw.as_bytes()).unwrap();
        let mut out = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match wire.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                // The proxy may close without close_notify after its response.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => panic!("reading the response: {e}"),
            }
        }
        String::from_utf8_lossy(&out).to_string()
    }

    /// The body of `/metrics`.
    pub fn scrape(&self) -> String {
        let r = self.http_get("GET /metrics HTTP/1.1\r\n\r\n");
        super::body_of(&r).to_string()
    }

    /// One series, scraped now.
    pub fn metric(&self, series: &str) -> f64 {
        super::metric(&self.scrape(), series)
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Endpoint {
        Endpoint::plain(addr)
    }
}

impl From<&Endpoint> for Endpoint {
    fn from(ep: &Endpoint) -> Endpoint {
        ep.clone()
    }
}

/// A client's connection, plain or TLS. Cloned, both halves use one TLS session (behind a
/// lock), so one thread can write while another reads.
pub enum Wire {
    Plain(TcpStream),
    Tls(
        Arc<Mutex<StreamOwned<ClientConnection, TcpStream>>>,
        TcpStream,
    ),
}

impl Wire {
    /// The socket itself, for its options (timeouts, blocking mode, shutdown).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Wire::Plain(s) | Wire::Tls(_, s) => s,
        }
    }

    pub fn try_clone(&self) -> io::Result<Wire> {
        Ok(match self {
            Wire::Plain(s) => Wire::Plain(s.try_clone()?),
            Wire::Tls(tls, s) => Wire::Tls(Arc::clone(tls), s.try_clone()?),
        })
    }

    fn locked(
        tls: &Mutex<StreamOwned<ClientConnection, TcpStream>>,
    ) -> MutexGuard<'_, StreamOwned<ClientConnection, TcpStream>> {
        tls.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(s) => s.read(buf),
            Wire::Tls(tls, _) => Wire::locked(tls).read(buf),
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(s) => s.write(buf),
            Wire::Tls(tls, _) => {
                let mut tls = Wire::locked(tls);
                let n = tls.write(buf)?;
                tls.flush()?;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Wire::Plain(s) => s.flush(),
            Wire::Tls(tls, _) => Wire::locked(tls).flush(),
        }
    }
}

/// A ClientHello as a TLS client's first flight: for peers that start a handshake and never
/// finish it.
pub fn client_hello() -> Vec<u8> {
    let config = TestCa::new("hello").client_config();
    let mut conn =
        ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}
