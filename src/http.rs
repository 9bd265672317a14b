//! Just enough HTTP/1.1 for the client port: read a request head with a deadline, parse it,
//! answer plain requests (`/healthz`, `/metrics`, the page) and accept WebSocket upgrades.
//! Doing the upgrade here rather than inside tungstenite lets one port serve both, and lets
//! the proxy refuse a connection (client limit, origin) with a proper HTTP status.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Request heads larger than this are refused: no browser or client library needs more.
pub const MAX_HEAD: usize = 8 * 1024;

#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    pub fn is_websocket_upgrade(&self) -> bool {
        self.header_has_token("Upgrade", "websocket")
    }

    /// The path without its query string; the page's key travels in the fragment, which a
    /// browser never sends.
    pub fn route(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }
}

#[derive(Debug)]
pub enum HeadError {
    Malformed(&'static str),
    TooLarge,
    TimedOut,
    Closed,
    Stopping,
    Io(io::Error),
}

/// Where the head ends (index just past the blank line), if it is complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Parses a complete request head (request line and headers, ending in a blank line).
pub fn parse_head(head: &[u8]) -> Result<Request, &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().ok_or("empty request")?;
    let mut parts = request_line.split(' ');
    let (method, path, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(p), Some(v), None) => (m, p, v),
        _ => return Err("malformed request line"),
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("malformed method");
    }
    if !path.starts_with('/') {
        return Err("request target must be a path");
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err("unsupported HTTP version");
    }
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or("malformed header line")?;
        if name.is_empty() || name.contains(|c: char| c.is_whitespace()) {
            return Err("malformed header name");
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        headers,
    })
}

/// Reads one request head within `deadline`, in slices so `stopping` is seen within
/// `slice`. Returns the request and any bytes read past its head (a client may send its
/// first WebSocket frame right behind the upgrade request).
pub fn read_head(
    stream: &mut TcpStream,
    deadline: Instant,
    slice: Duration,
    stopping: &dyn Fn() -> bool,
) -> Result<(Request, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if stopping() {
            return Err(HeadError::Stopping);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::TimedOut);
        }
        stream
            .set_read_timeout(Some(left.min(slice)))
            .map_err(HeadError::Io)?;
        match stream.read(&mut chunk) {
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if is_timeout(&e) => continue,
            Err(e) => return Err(HeadError::Io(e)),
        }
        if let Some(end) = head_end(&buf) {
            let request = parse_head(&buf[..end]).map_err(HeadError::Malformed)?;
            return Ok((request, buf.split_off(end)));
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A complete response that closes the connection.
pub fn response(status: u16, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    response_with(status, "", content_type, body, head_only)
}

/// As [`response`], with `extra` header lines (each ending in CRLF) after the status line.
fn response_with(
    status: u16,
    extra: &str,
    content_type: &str,
    body: &str,
    head_only: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\n{extra}Content-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        reason_phrase(status),
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Writes a response, then closes gently: shut the write side and read what the client still
/// sends, so the kernel does not answer unread bytes with a reset that eats the response.
pub fn respond_and_close(stream: &mut TcpStream, bytes: &[u8]) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(bytes).is_ok() {
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut sink = [0u8; 512];
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            match stream.read(&mut sink) {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
    }
}

/// Why an upgrade request was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub struct UpgradeRefusal {
    pub reason: &'static str,
    /// The client asked for a protocol version other than 13: answer 426 and name ours.
    pub wrong_version: bool,
}

impl UpgradeRefusal {
    fn bad(reason: &'static str) -> UpgradeRefusal {
        UpgradeRefusal {
            reason,
            wrong_version: false,
        }
    }

    /// 400, or 426 with `Sec-WebSocket-Version: 13` as RFC 6455 (4.4) asks.
    pub fn response(&self) -> Vec<u8> {
        let body = format!("{}\n", self.reason);
        if self.wrong_version {
            response_with(
                426,
                "Sec-WebSocket-Version: 13\r\n",
                "text/plain",
                &body,
                false,
            )
        } else {
            response(400, "text/plain", &body, false)
        }
    }
}

/// The 101 response accepting a WebSocket upgrade, or why the request is not a valid one.
pub fn accept_upgrade(request: &Request) -> Result<Vec<u8>, UpgradeRefusal> {
    if request.method != "GET" {
        return Err(UpgradeRefusal::bad("WebSocket upgrade must use GET"));
    }
    if !request.header_has_token("Connection", "upgrade") {
        return Err(UpgradeRefusal::bad("missing Connection: Upgrade"));
    }
    if request.header("Sec-WebSocket-Version") != Some("13") {
        return Err(UpgradeRefusal {
            reason: "unsupported Sec-WebSocket-Version (13 is required)",
            wrong_version: true,
        });
    }
    // The key is 16 random bytes in base64: 24 characters ending in `==`.
    let key = request
        .header("Sec-WebSocket-Key")
        .filter(|k| !k.is_empty())
        .ok_or(UpgradeRefusal::bad("missing Sec-WebSocket-Key"))?;
    if key.len() != 24
        || !key.ends_with("==")
        || !key[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    {
        return Err(UpgradeRefusal::bad(
            "Sec-WebSocket-Key is not 16 bytes in base64",
        ));
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes())
}

/// Whether a browser's `Origin` is allowed: an empty list allows all; clients that are not
/// browsers send no Origin and are always allowed.
pub fn origin_allowed(request: &Request, allowed: &[String]) -> bool {
    match request.header("Origin") {
        None => true,
        Some(_) if allowed.is_empty() => true,
        Some(origin) => {
            let origin = origin.trim_end_matches('/').to_ascii_lowercase();
            allowed.contains(&origin)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /feed HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: https://Dash.Example/\r\n\r\n";

    #[test]
    fn parses_a_websocket_upgrade() {
        let req = parse_head(UPGRADE.as_bytes()).unwrap();
        assert_eq!((req.method.as_str(), req.route()), ("GET", "/feed"));
        assert!(req.is_websocket_upgrade());
        let resp = String::from_utf8(accept_upgrade(&req).unwrap()).unwrap();
        // The RFC 6455 example key and its accept value.
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn refuses_bad_upgrades_with_the_right_status() {
        let with = |from: &str, to: &str| parse_head(UPGRADE.replace(from, to).as_bytes()).unwrap();
        let version = accept_upgrade(&with("Version: 13", "Version: 8")).unwrap_err();
        let text = String::from_utf8(version.response()).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n"));
        for (from, to) in [
            ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            ("dGhlIHNhbXBsZSBub25jZQ==", "short"),
            ("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ!="),
            ("keep-alive, Upgrade", "keep-alive"),
        ] {
            let refusal = accept_upgrade(&with(from, to)).unwrap_err();
            let text = String::from_utf8(refusal.response()).unwrap();
            assert!(text.starts_with("HTTP/1.1 400 "), "{to:?}: {text}");
            assert!(text.ends_with(&format!("{}\n", refusal.reason)));
        }
    }

    #[test]
    fn checks_origins() {
        let req = parse_head(UPGRADE.as_bytes()).unwrap();
        assert!(origin_allowed(&req, &[]));
        assert!(origin_allowed(&req, &["https://dash.example".into()]));
        assert!(!origin_allowed(&req, &["https://other.example".into()]));
        let plain = parse_head(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert!(origin_allowed(&plain, &["https://other.example".into()]));
    }

    #[test]
    fn refuses_malformed_heads() {
        for bad in [
            "GARBAGE\r\n\r\n",
            "GET /x HTTP/2\r\n\r\n",
            "GET x HTTP/1.1\r\n\r\n",
            "get / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
        ] {
            assert!(parse_head(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn query_strings_are_not_part_of_the_route() {
        let req = parse_head(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(req.route(), "/metrics");
    }

    #[test]
    fn responses_carry_their_length() {
        let r = String::from_utf8(response(404, "text/plain", "not found\n", false)).unwrap();
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(r.contains("Content-Length: 10\r\n") && r.ends_with("\r\n\r\nnot found\n"));
    }
}
