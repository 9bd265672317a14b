//! Just enough HTTP/1.1 for the client port: parse a request head (with `httparse`, the
//! parser hyper uses) within our own limits, build the answers to plain requests, and accept
//! WebSocket upgrades. Doing the upgrade here rather than inside tungstenite lets one port
//! serve both, and lets the proxy refuse a connection (client limit, origin) with a proper
//! HTTP status. No I/O here: the admission loop reads and writes (see [`super::admission`]).

use crate::config::value::Header;

/// Request heads larger than this are refused: no browser or client library needs more.
pub const MAX_HEAD: usize = 8 * 1024;
/// Header lines at most; more is refused like an oversized head.
const MAX_HEADERS: usize = 64;

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

    /// Every value of a header that may come on several lines, in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
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

/// Why a request head was refused: 400 for `Malformed`, 431 for `TooLarge`.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    Malformed(&'static str),
    TooLarge,
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is incomplete,
/// `Ok(Some((request, length)))` once the blank line has arrived (bytes past `length` belong
/// to what follows, such as a first WebSocket frame).
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let length = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => {
            return Err(HeadError::Malformed("unsupported HTTP version"))
        }
        Err(e) => return Err(HeadError::Malformed(malformed(e))),
    };
    if length > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    // httparse takes any token as a method; methods are upper case (RFC 9110 9.1).
    let method = parsed.method.unwrap_or("");
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HeadError::Malformed("malformed method"));
    }
    let path = parsed.path.unwrap_or("");
    if !path.starts_with('/') {
        return Err(HeadError::Malformed("request target must be a path"));
    }
    let mut fields = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HeadError::Malformed("header value is not UTF-8"))?;
        fields.push((h.name.to_string(), value.trim().to_string()));
    }
    Ok(Some((
        Request {
            method: method.to_string(),
            path: path.to_string(),
            headers: fields,
        },
        length,
    )))
}

fn malformed(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "malformed header name",
        httparse::Error::HeaderValue => "malformed header value",
        httparse::Error::NewLine => "malformed line ending",
        httparse::Error::Status | httparse::Error::Token => "malformed request line",
        _ => "malformed request",
    }
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
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A complete response that closes the connection. Browsers must take it as its type says
/// (`nosniff`: no text turned into a script or a page) and tell nobody where they came from.
pub fn response(status: u16, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    response_with(status, "", content_type, body, head_only)
}

/// As [`response`], with `extra` header lines (each ending in CRLF) after the status line.
pub fn response_with(
    status: u16,
    extra: &str,
    content_type: &str,
    body: &str,
    head_only: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\n{extra}Content-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\nConnection: close\r\n\r\n",
        reason_phrase(status),
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// `headers` as header lines, each ending in CRLF (`response_header`'s, for [`with_headers`]).
pub fn header_lines(headers: &[Header]) -> String {
    headers
        .iter()
        .map(|h| format!("{}: {}\r\n", h.name, h.value))
        .collect()
}

/// `response`, a complete response of ours, with `lines` (from [`header_lines`]) added after
/// its status line. The names were checked at start-up: none is one fxproxy sets itself.
pub fn with_headers(mut response: Vec<u8>, lines: &str) -> Vec<u8> {
    if lines.is_empty() {
        return response;
    }
    let Some(end) = response.windows(2).position(|w| w == b"\r\n") else {
        return response;
    };
    response.splice(end + 2..end + 2, lines.bytes());
    response
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
    // The key is 16 random bytes in base64 (RFC 6455, 4.1): decoded by the base64 tungstenite
    // uses for the accept value, which takes only the canonical 24 characters.
    let key = request
        .header("Sec-WebSocket-Key")
        .filter(|k| !k.is_empty())
        .ok_or(UpgradeRefusal::bad("missing Sec-WebSocket-Key"))?;
    if !matches!(data_encoding::BASE64.decode(key.as_bytes()), Ok(nonce) if nonce.len() == 16) {
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

    /// A complete head, parsed.
    fn head(text: &[u8]) -> Request {
        parse_head(text).unwrap().expect("a complete head").0
    }

    const UPGRADE: &str = "GET /feed HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: https://Dash.Example/\r\n\r\n";

    #[test]
    fn parses_a_websocket_upgrade() {
        let req = head(UPGRADE.as_bytes());
        assert_eq!((req.method.as_str(), req.route()), ("GET", "/feed"));
        assert!(req.is_websocket_upgrade());
        let resp = String::from_utf8(accept_upgrade(&req).unwrap()).unwrap();
        // The RFC 6455 example key and its accept value.
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn refuses_bad_upgrades_with_the_right_status() {
        let with = |from: &str, to: &str| head(UPGRADE.replace(from, to).as_bytes());
        let version = accept_upgrade(&with("Version: 13", "Version: 8")).unwrap_err();
        let text = String::from_utf8(version.response()).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n"));
        for (from, to) in [
            ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            ("dGhlIHNhbXBsZSBub25jZQ==", "short"),
            ("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ!="),
            // 24 characters that are not 16 bytes: padding missing or misplaced, bits set
            // past the 16th byte (the old hand-written check let that one through).
            ("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQAA"),
            ("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25j=Q=="),
            ("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZR=="),
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
        let req = head(UPGRADE.as_bytes());
        assert!(origin_allowed(&req, &[]));
        assert!(origin_allowed(&req, &["https://dash.example".into()]));
        assert!(!origin_allowed(&req, &["https://other.example".into()]));
        let plain = head(b"GET / HTTP/1.1\r\n\r\n");
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
        let (_, length) = parse_head(b"GET / HTTP/1.1\r\n\r\nrest").unwrap().unwrap();
        assert_eq!(length, 18);
        assert!(parse_head(b"GET / HTTP/1.1\r\n").unwrap().is_none());
        assert!(parse_head(b"GET / HT").unwrap().is_none());
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(parse_head(long.as_bytes()).err(), Some(HeadError::TooLarge));
        let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse_head(many.as_bytes()).err(), Some(HeadError::TooLarge));
    }

    #[test]
    fn query_strings_are_not_part_of_the_route() {
        let req = head(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n");
        assert_eq!(req.route(), "/metrics");
    }

    #[test]
    fn response_headers_go_after_the_status_line() {
        let lines = header_lines(&[
            crate::config::value::response_header("Strict-Transport-Security: max-age=60").unwrap(),
            crate::config::value::response_header("X-Served-By: fx-1").unwrap(),
        ]);
        assert_eq!(
            lines,
            "Strict-Transport-Security: max-age=60\r\nX-Served-By: fx-1\r\n"
        );
        let r = String::from_utf8(with_headers(
            response(200, "text/plain", "ok\n", false),
            &lines,
        ))
        .unwrap();
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=60\r\nX-Served-By: fx-1\r\nContent-Type: text/plain\r\n"),
            "{r}"
        );
        assert!(r.ends_with("\r\n\r\nok\n"));
        let req = head(UPGRADE.as_bytes());
        let upgrade =
            String::from_utf8(with_headers(accept_upgrade(&req).unwrap(), &lines)).unwrap();
        assert!(upgrade.starts_with(
            "HTTP/1.1 101 Switching Protocols\r\nStrict-Transport-Security: max-age=60\r\n"
        ));
        assert!(upgrade.ends_with("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"));
        assert_eq!(with_headers(b"x".to_vec(), ""), b"x");
    }

    #[test]
    fn responses_carry_their_length() {
        let r = String::from_utf8(response(404, "text/plain", "not found\n", false)).unwrap();
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(r.contains("Content-Length: 10\r\n") && r.ends_with("\r\n\r\nnot found\n"));
    }
}
