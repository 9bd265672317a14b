//! A client's socket as its HTTP request and its WebSocket see it: plain TCP, or TLS over it
//! (rustls, driven by hand on the non-blocking socket). It counts the bytes the kernel has
//! taken, so the writer can tell a peer that reads slowly (bytes still move) from one that has
//! stopped reading (none do): the first is judged by its queue, the second is closed once it
//! has taken nothing for a while. Over TLS those are the encrypted bytes.
//!
//! Over TLS, rustls holds the records it has made until the socket takes them. A write first
//! sends what is held and, if the socket will not take all of it, takes nothing new and says
//! `WouldBlock`, as a full plain socket would; so at most one write's worth waits in rustls,
//! and the writer's "socket full, wait for writable" logic is the same for both. A flush
//! sends what is held and says `WouldBlock` while some is left. A read also sends what is
//! held (the handshake makes progress only through reads), and reads until the socket has
//! nothing more: the callers' edge-triggered polls rely on that.

use rustls::{ServerConfig, ServerConnection};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

/// The first byte of a TLS record carrying a handshake message, which a ClientHello is.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

pub struct ClientStream {
    tcp: TcpStream,
    /// Boxed: a plain connection pays one pointer for TLS.
    tls: Option<Box<Tls>>,
    written: u64,
}

struct Tls {
    conn: ServerConnection,
    /// Whether the first byte the peer sent has been seen to start a TLS record.
    opened: bool,
}

/// What went wrong below the HTTP request on a TLS port.
#[derive(Debug)]
pub enum TlsFailure {
    /// The peer's first byte cannot start a TLS handshake: plain HTTP (a letter) or garbage.
    NotTls(u8),
    /// The TLS handshake or a record failed (what rustls says).
    Tls(rustls::Error),
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsFailure::NotTls(b) if b.is_ascii_uppercase() => {
                f.write_str("plain HTTP on the TLS port")
            }
            TlsFailure::NotTls(b) => write!(f, "not TLS (first byte {b:#04x})"),
            TlsFailure::Tls(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for TlsFailure {}

impl TlsFailure {
    /// The TLS failure an I/O error from [`ClientStream`] stands for, if it is one.
    pub fn of(e: &io::Error) -> Option<&TlsFailure> {
        e.get_ref()?.downcast_ref::<TlsFailure>()
    }

    fn error(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }
}

impl ClientStream {
    /// A plain connection.
    pub fn new(tcp: TcpStream) -> ClientStream {
        ClientStream {
            tcp,
            tls: None,
            written: 0,
        }
    }

    /// A connection whose TLS handshake is still to come (the first reads drive it).
    pub fn tls(tcp: TcpStream, config: Arc<ServerConfig>) -> Result<ClientStream, rustls::Error> {
        let conn = ServerConnection::new(config)?;
        Ok(ClientStream {
            tcp,
            tls: Some(Box::new(Tls {
                conn,
                opened: false,
            })),
            written: 0,
        })
    }

    /// Bytes written to the socket so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Over TLS, whether the handshake is still going on.
    pub fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.conn.is_handshaking())
    }

    /// Drops TLS, to answer a peer that spoke plain HTTP on the TLS port in its own terms.
    pub fn into_plain(self) -> ClientStream {
        ClientStream::new(self.tcp)
    }

    /// Ends our side of the connection: over TLS a `close_notify` first (with whatever is
    /// still held, as far as the socket takes it), then the TCP FIN.
    pub fn shutdown_write(&mut self) {
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.conn.send_close_notify();
            let _ = send_held(&mut tls.conn, &mut self.tcp, &mut self.written);
        }
        let _ = self.tcp.shutdown(Shutdown::Write);
    }
}

/// Writes out the TLS records rustls holds: `Ok(true)` once none is left, `Ok(false)` when
/// the socket is full.
fn send_held(
    conn: &mut ServerConnection,
    tcp: &mut TcpStream,
    written: &mut u64,
) -> io::Result<bool> {
    while conn.wants_write() {
        match conn.write_tls(tcp) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *written += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

impl Tls {
    fn read(
        &mut self,
        tcp: &mut TcpStream,
        written: &mut u64,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Closed without close_notify: for us as for a plain socket, the end.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            send_held(&mut self.conn, tcp, written)?;
            if !self.opened {
                let mut first = [0u8; 1];
                match tcp.peek(&mut first)? {
                    0 => return Ok(0),
                    _ if first[0] != TLS_HANDSHAKE_RECORD => {
                        return Err(TlsFailure::NotTls(first[0]).error())
                    }
                    _ => self.opened = true,
                }
            }
            match self.conn.read_tls(tcp) {
                Ok(0) => return Ok(0),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = self.conn.process_new_packets() {
                // rustls has queued an alert saying why: it goes if the socket takes it.
                let _ = send_held(&mut self.conn, tcp, written);
                return Err(TlsFailure::Tls(e).error());
            }
        }
    }

    fn write(&mut self, tcp: &mut TcpStream, written: &mut u64, buf: &[u8]) -> io::Result<usize> {
        if !send_held(&mut self.conn, tcp, written)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.conn.writer().write(buf)?;
        send_held(&mut self.conn, tcp, written)?;
        Ok(n)
    }

    fn flush(&mut self, tcp: &mut TcpStream, written: &mut u64) -> io::Result<()> {
        self.conn.writer().flush()?;
        if send_held(&mut self.conn, tcp, written)? {
            Ok(())
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }
}

/// The socket's own settings (timeouts, blocking mode, options) stay at hand. Reads and
/// writes through this go around TLS: only for dropping what a closing peer still sends.
impl Deref for ClientStream {
    type Target = TcpStream;

    fn deref(&self) -> &TcpStream {
        &self.tcp
    }
}

impl DerefMut for ClientStream {
    fn deref_mut(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.tls.as_deref_mut() {
            None => self.tcp.read(buf),
            Some(tls) => tls.read(&mut self.tcp, &mut self.written, buf),
        }
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.tls.as_deref_mut() {
            None => {
                let n = self.tcp.write(buf)?;
                self.written += n as u64;
                Ok(n)
            }
            Some(tls) => tls.write(&mut self.tcp, &mut self.written, buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.tls.as_deref_mut() {
            None => self.tcp.flush(),
            Some(tls) => tls.flush(&mut self.tcp, &mut self.written),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn counts_what_the_kernel_took() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut stream =
            ClientStream::new(TcpStream::connect(listener.local_addr().unwrap()).unwrap());
        let (mut peer, _) = listener.accept().unwrap();
        stream.write_all(b"hello").unwrap();
        assert_eq!(stream.written(), 5);
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
    }

    fn server_config() -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// Reads on the non-blocking server side until `want` bytes came, each read ending in
    /// `WouldBlock` or data.
    fn read_all(server: &mut ClientStream, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut buf = [0u8; 4096];
        while got.len() < want {
            assert!(
                std::time::Instant::now() < until,
                "only {} bytes",
                got.len()
            );
            match server.read(&mut buf) {
                Ok(0) => panic!("closed"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
        got
    }

    #[test]
    fn a_tls_handshake_and_data_both_ways_on_a_non_blocking_socket() {
        let (server_config, client_config) = server_config();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let name = "localhost".try_into().unwrap();
            let conn = rustls::ClientConnection::new(client_config, name).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(addr).unwrap());
            tls.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
            let mut answer = vec![0u8; 100_000];
            tls.read_exact(&mut answer).unwrap();
            assert!(answer.iter().all(|b| *b == b'x'));
        });
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_nonblocking(true).unwrap();
        let mut server = ClientStream::tls(tcp, server_config).unwrap();
        assert_eq!(read_all(&mut server, 18), b"GET / HTTP/1.1\r\n\r\n");
        let handshake_bytes = server.written();
        assert!(handshake_bytes > 0, "the server's handshake messages count");
        // 100 KB through a socket that may fill: WouldBlock means nothing was taken.
        let data = vec![b'x'; 100_000];
        let mut at = 0;
        while at < data.len() {
            match server.write(&data[at..]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
        while let Err(e) = server.flush() {
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        client.join().unwrap();
        assert!(server.written() >= handshake_bytes + 100_000);
    }

    #[test]
    fn plain_http_and_garbage_on_a_tls_stream_are_named() {
        let (server_config, _) = server_config();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        for (sent, expected) in [
            (
                &b"GET / HTTP/1.1\r\n\r\n"[..],
                Some("plain HTTP on the TLS port"),
            ),
            (&b"\x00\x01garbage"[..], Some("not TLS (first byte 0x00)")),
            (&b"\x16\x03\x01\x00\x05hello"[..], None),
        ] {
            let mut peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            peer.write_all(sent).unwrap();
            let (tcp, _) = listener.accept().unwrap();
            let mut server = ClientStream::tls(tcp, Arc::clone(&server_config)).unwrap();
            let e = server.read(&mut [0u8; 64]).unwrap_err();
            let failure = TlsFailure::of(&e).expect("a TLS failure");
            match expected {
                Some(text) => assert_eq!(failure.to_string(), text),
                None => assert!(matches!(failure, TlsFailure::Tls(_)), "{failure}"),
            }
        }
    }
}
