//! No log injection (issue 17). Hostile text goes through every field the proxy logs, before
//! and after auth and on the upstream side, into the real binary at `log_level = debug`:
//! control characters, forged log records, ANSI and C1 escapes, Unicode line separators and
//! bidi overrides, very long strings and invalid UTF-8. Every record must stay one line that
//! starts with the proxy's own timestamp (within the test's run), and each field must show in
//! the log escaped (so the test is not passing because nothing was logged). The same again
//! with `log_format = json`: every record one JSON object on one line, whose message is the text
//! line's message, escaped the same way.

mod common;

use common::process::{temp_dir, write_keys, Proxy};
use common::{Client, DEADLINE, KEY, OTHER_KEY};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

/// A record a peer would like the log to show: it starts a line of its own if a newline gets
/// through, and its timestamp is long before any the proxy writes here.
const FORGED: &str = "\n2001-01-01T00:00:00Z [ERROR] (main) forged";
/// The terminal's escapes: clear the screen, set the window title, ring the bell; then the C1
/// controls NEL and CSI, and what Unicode adds: line and paragraph separators, a right-to-left
/// override and an isolate.
const ESCAPES: &str =
    "\u{1b}[2J\u{1b}]0;owned\u{7}\u{85}\u{9b}1m\u{2028}\u{2029}\u{202e}\u{2066}\r\t";

fn hostile(what: &str) -> String {
    format!("{what}{FORGED} {what}{ESCAPES}")
}

#[test]
fn peer_text_never_breaks_a_log_record() {
    hostile_peers(Format::Text);
}

#[test]
fn peer_text_never_breaks_a_json_log_record() {
    hostile_peers(Format::Json);
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Text,
    Json,
}

impl Format {
    /// How `message` shows in the log: as it is, or inside a JSON string.
    fn shown(self, message: &str) -> String {
        match self {
            Format::Text => message.to_string(),
            Format::Json => {
                let quoted = serde_json::Value::String(message.to_string()).to_string();
                quoted[1..quoted.len() - 1].to_string()
            }
        }
    }
}

fn hostile_peers(format: Format) {
    let started = SystemTime::now();
    let source = hostile_source();
    let dir = temp_dir();
    let keys = write_keys(&dir, &[KEY, &format!("{OTHER_KEY} EURUSD")]);
    let proxy = Proxy::spawn(&format!(
        "upstream_url = ws://{source}/\nsymbols = EURUSD,GBPUSD\nuser_keys_file = {}\n\
         log_level = debug\nallowed_origins = https://ok.example\n\
         upstream_backoff_min_ms = 10\nupstream_backoff_max_secs = 1\nlog_format = {}\n",
        keys.display(),
        if format == Format::Json {
            "json"
        } else {
            "text"
        }
    ));

    // Before auth: the Origin header (refused, so logged), valid UTF-8 with C1 controls and
    // separators (HTTP itself ends a header at a newline and refuses other C0 controls), and a
    // long one; bytes that are not UTF-8 in a header and in the path.
    let origin = "https://evil.example\u{85}2001-01-01T00:00:00Z [ERROR] (main) forged\u{2028}\u{202e}\u{9b}1m";
    for origin in [origin.to_string(), "O".repeat(6000)] {
        let answer = upgrade_with(proxy.addr, &format!("Origin: {origin}\r\n").into_bytes());
        assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    }
    let answer = upgrade_with(
        proxy.addr,
        b"Origin: https://bad\xff\xfe.example\x1b[2J\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let answer = raw_request(proxy.addr, b"GET /\xff\x1b[2J HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");

    // The auth message: unknown keys whose prefix (what the log shows of a key) is hostile,
    // symbols the proxy does not carry, a long one, invalid UTF-8, a hostile close reason.
    for key in [hostile("bad"), hostile("\u{1b}[31m")] {
        assert_eq!(
            refused(proxy.addr, &key, None),
            (1008, "Authentication failed".to_string())
        );
    }
    let (code, reason) = refused(proxy.addr, KEY, Some(&hostile("EURUSD")));
    assert_eq!(code, 1008);
    assert!(
        reason.starts_with(r"Unknown symbol EURUSD\n2001-01-01T00:00:00Z"),
        "{reason}"
    );
    assert!(
        reason.len() <= 123 && !reason.chars().any(char::is_control),
        "{reason:?}"
    );
    // Within max_message_bytes (4096), or it is refused before it is read.
    let (code, reason) = refused(proxy.addr, KEY, Some(&"L".repeat(3000)));
    assert_eq!(code, 1008);
    assert!(reason.len() <= 123, "{reason}");
    assert_eq!(
        refused(proxy.addr, OTHER_KEY, Some("GBPUSD")),
        (1008, "Not entitled to symbol GBPUSD".to_string())
    );
    let mut c = Client::connect(proxy.addr);
    assert_eq!(c.next().expect("greeting"), Message::text("Connected"));
    c.ws.send(Message::Frame(Frame::message(
        b"{\"userKey\":\"\xff\xfe\n2001-01-01T00:00:00Z [ERROR]\"}".to_vec(),
        OpCode::Data(Data::Text),
        true,
    )))
    .unwrap();
    assert_eq!(c.expect_close().0, 1007);
    let mut c = Client::connect(proxy.addr);
    assert_eq!(c.next().expect("greeting"), Message::text("Connected"));
    let _ = c.ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: hostile("bye").chars().take(40).collect::<String>().into(),
    }));
    let _ = c.next_within(Duration::from_millis(500));

    // After auth: the key prefix and symbols are logged; what the client sends then is not,
    // but goes through anyway.
    let mut ok = Client::auth(proxy.addr, KEY, Some("EURUSD"));
    ok.next_text();
    ok.ws.send(Message::text(hostile("after auth"))).unwrap();
    let _ = ok.ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "\u{1b}[2J\n2001-01-01T00:00:00Z".into(),
    }));
    let _ = ok.next_within(Duration::from_millis(500));

    // A keys file that fails to load on reload: its message repeats part of a line.
    std::fs::write(
        &keys,
        format!("{KEY}\n\u{1b}]0;x-key-0001\n\u{1b}]0;x-key-0001\n"),
    )
    .unwrap();

    for (what, escaped) in [
        (
            "the Origin",
            r#"Origin "https://evil.example\u{85}2001-01-01T00:00:00Z [ERROR] (main) forged\u{2028}\u{202e}\u{9b}1m" is not"#,
        ),
        ("a long Origin", r#"Origin "OOOOOOOOOO"#),
        (
            "a long Origin's length",
            "…(6000 bytes) is not in allowed_origins",
        ),
        ("a key's prefix", r#"unknown key "bad\n…""#),
        ("a key's prefix of escapes", r#"unknown key "\u{1b}[31…""#),
        // Symbols are upper-cased as they are parsed.
        (
            "a symbol",
            r#"symbol "EURUSD\n2001-01-01T00:00:00Z [ERROR] (MAIN) FORGED EURUSD\u{1b}[2J"#,
        ),
        ("a long symbol", "…(3000 bytes) is not carried"),
        (
            "an entitlement",
            r#"key "othe…" is not entitled to "GBPUSD""#,
        ),
        ("invalid UTF-8 before auth", "closed before auth with 1007"),
        (
            "an authenticated key",
            r#"authenticated key "test…" for EURUSD"#,
        ),
        (
            "the source's notice",
            r#"non-quote text(s), latest: "Welcome\n2001-01-01T00:00:00Z [ERROR] (main) forged Welcome\u{1b}[2J"#,
        ),
        (
            "the source's non-quote JSON",
            r#"e.g. "{\"bid\":1.0,\"symbol\":\"EUR\\n2001"#,
        ),
        (
            "the source's close reason",
            r#"closed by the source (code 1000, "bye\n2001-01-01T00:00:00Z [ERROR] (main) forged bye\u{1b}[2J"#,
        ),
        (
            "the source's invalid UTF-8",
            "connection failed: UTF-8 encoding error",
        ),
        ("the source's refusal", "refused the provider key"),
        (
            "the source's HTTP refusal",
            "refused the WebSocket handshake with HTTP 403",
        ),
        ("a keys file", r"key `\u{1b}]0;…` is listed twice"),
    ] {
        assert!(
            proxy.wait_for_log(&format.shown(escaped), DEADLINE),
            "{what} is not in the log as {escaped}:\n{}",
            proxy.stderr_text()
        );
    }
    match format {
        Format::Text => assert_own_records(&proxy.stderr_text(), started),
        Format::Json => assert_own_json_records(&proxy.stderr_text(), started),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// As [`assert_own_records`], for `log_format = json`: every line one JSON object with the
/// proxy's time, a level and a thread, and a message that is one line with nothing a
/// terminal would act on.
fn assert_own_json_records(log: &str, since: SystemTime) {
    let lines: Vec<&str> = log.split('\n').collect();
    assert_eq!(lines.last(), Some(&""), "the log ends with a newline");
    let mut text = String::new();
    for line in &lines[..lines.len() - 1] {
        let record: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line:?}"));
        let field = |name: &str| {
            record
                .get(name)
                .and_then(|v| v.as_str())
                .unwrap_or_else(|| panic!("no string {name}: {line:?}"))
        };
        assert_eq!(record.len(), 4, "time, level, thread, message: {line:?}");
        let level = field("level").to_ascii_uppercase();
        // The same checks as a text line's, on the text line it stands for.
        text.push_str(&format!(
            "{} [{level}] ({}) {}\n",
            field("time"),
            field("thread"),
            field("message")
        ));
    }
    assert_own_records(&text, since);
}

/// `fxproxy sim` logs what it is sent (a subscription it does not offer, a broken frame).
#[test]
fn the_simulator_logs_what_it_is_sent_escaped() {
    let started = SystemTime::now();
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_fxproxy"))
            .args([
                "sim",
                "--listen",
                "127.0.0.1:0",
                "--rate",
                "5",
                "--symbols",
                "EURUSD",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting fxproxy sim"),
    );
    let log = Arc::new(Mutex::new(String::new()));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let stderr = child.0.stderr.take().expect("piped stderr");
    let sink = Arc::clone(&log);
    thread::Builder::new()
        .name("sim-stderr".into())
        .spawn(move || {
            for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line).into_owned();
                if let Some(rest) = line.split("listening on ws://").nth(1) {
                    let _ = addr_tx.send(rest.split('/').next().unwrap_or("").to_string());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        })
        .unwrap();
    let addr: SocketAddr = addr_rx
        .recv_timeout(DEADLINE)
        .expect("the simulator's address")
        .parse()
        .unwrap();
    let subscribe = serde_json::json!({ "userKey": "k", "symbol": hostile("EURUSD,GB") });
    let mut ws = connect_ws(addr);
    ws.send(Message::text(subscribe.to_string())).unwrap();
    let mut broken = connect_ws(addr);
    broken
        .send(Message::Frame(Frame::message(
            b"\xff\xfe\n2001-01-01T00:00:00Z [ERROR] forged".to_vec(),
            OpCode::Data(Data::Text),
            true,
        )))
        .unwrap();
    let logged =
        |needle: &str| common::process::poll(DEADLINE, || log.lock().unwrap().contains(needle));
    let ignoring =
        r#"ignoring subscription to "GB\n2001-01-01T00:00:00Z [ERROR] (main) forged EURUSD"#;
    assert!(logged(ignoring), "{}", log.lock().unwrap());
    assert!(
        logged("closed (UTF-8 encoding error"),
        "{}",
        log.lock().unwrap()
    );
    drop(child);
    assert_own_records(&log.lock().unwrap(), started);
}

/// A child process killed however the test ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every line is a record of the proxy's own: its timestamp (between `since` and now), a level
/// and the thread; nothing in it a terminal or a log shipper would act on; nothing that was
/// not UTF-8 (the reader turns such bytes into U+FFFD).
fn assert_own_records(log: &str, since: SystemTime) {
    let from = since.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64 - 2000;
    let to = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 2000;
    let lines: Vec<&str> = log.split('\n').collect();
    assert_eq!(lines.last(), Some(&""), "the log ends with a newline");
    for line in &lines[..lines.len() - 1] {
        let bad = line.chars().find(|&c| {
            c.is_control()
                || c == '\u{fffd}'
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        });
        assert!(bad.is_none(), "{bad:?} in a log line: {line:?}");
        let stamp = line.split(' ').next().unwrap_or("");
        let ms =
            rfc3339_ms(stamp).unwrap_or_else(|| panic!("a line without a timestamp: {line:?}"));
        assert!(
            (from..=to).contains(&ms),
            "a timestamp not the proxy's: {line:?}"
        );
        let rest = &line[stamp.len()..];
        let level_ok = ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
            .iter()
            .any(|l| rest.starts_with(&format!(" [{l}] (")));
        assert!(level_ok, "no level and thread after the time: {line:?}");
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` as simplelog writes it, in epoch milliseconds.
fn rfc3339_ms(stamp: &str) -> Option<u64> {
    let (date, time) = stamp.strip_suffix('Z')?.split_once('T')?;
    let day: fxproxy::market::Date = date.parse().ok()?;
    let (hms, _fraction) = time.split_once('.').unwrap_or((time, ""));
    let parts: Vec<u64> = hms
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = parts[..] else { return None };
    Some(day.start_ms() + ((h * 60 + m) * 60 + s) * 1000)
}

/// A WebSocket upgrade request with extra header lines; the response's text.
fn upgrade_with(addr: SocketAddr, extra: &[u8]) -> String {
    let mut request = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        .to_vec();
    request.extend_from_slice(extra);
    request.extend_from_slice(b"\r\n");
    raw_request(addr, &request)
}

fn raw_request(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Authenticates with `key` (and `symbols`), JSON-escaped, and expects a close.
fn refused(addr: SocketAddr, key: &str, symbols: Option<&str>) -> (u16, String) {
    let mut c = Client::connect(addr);
    assert_eq!(c.next().expect("greeting"), Message::text("Connected"));
    let mut auth = serde_json::json!({ "userKey": key });
    if let Some(s) = symbols {
        auth["symbol"] = s.into();
    }
    c.ws.send(Message::text(auth.to_string())).unwrap();
    c.expect_close()
}

fn connect_ws(addr: SocketAddr) -> tungstenite::WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{addr}/"), stream).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("Connected"));
    ws
}

/// A source that sends the proxy hostile text, one connection at a time: a notice, a JSON
/// frame that is not a quote, a close reason; then a text frame and a close reason that are
/// not UTF-8; the provider's refusal with more after it; an HTTP refusal with C1 controls
/// and bytes that are not UTF-8 in its status line and headers. From then on it streams quotes like any source.
fn hostile_source() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::Builder::new()
        .name("hostile-source".into())
        .spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { return };
                stream
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                if n == 4 {
                    http_refusal(stream);
                    continue;
                }
                let Ok(mut ws) = tungstenite::accept(stream) else {
                    continue;
                };
                // The subscribe message, read so that nothing unread turns our close into a reset.
                let _ = ws.read();
                let frames: Vec<Message> = match n {
                    0 => vec![
                        Message::text(hostile("Welcome")),
                        Message::text(
                            serde_json::json!({ "symbol": hostile("EUR"), "bid": 1.0 }).to_string(),
                        ),
                        Message::text(common::quote("EURUSD", 1)),
                        Message::Close(Some(CloseFrame {
                            code: CloseCode::Normal,
                            reason: hostile("bye").chars().take(60).collect::<String>().into(),
                        })),
                    ],
                    1 => vec![Message::Frame(Frame::message(
                        b"Hello \xff\xfe\n2001-01-01T00:00:00Z [ERROR] forged".to_vec(),
                        OpCode::Data(Data::Text),
                        true,
                    ))],
                    2 => vec![Message::Frame(Frame::from_payload(
                        FrameHeader {
                            opcode: OpCode::Control(Control::Close),
                            ..FrameHeader::default()
                        },
                        b"\x03\xe8bye \xff\n2001-01-01T00:00:00Z [ERROR] forged"[..].into(),
                    ))],
                    3 => vec![Message::text(format!(
                        "User Key Used to many times{FORGED} refusal{ESCAPES}"
                    ))],
                    _ => {
                        stream_quotes(ws);
                        continue;
                    }
                };
                for frame in frames {
                    let _ = ws.send(frame);
                }
                // Until the proxy has answered or hung up.
                while ws.read().is_ok() {}
            }
        })
        .unwrap();
    addr
}

fn http_refusal(mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && matches!(stream.read(&mut byte), Ok(1)) {
        head.push(byte[0]);
    }
    let _ = stream.write_all(
        b"HTTP/1.1 403 Forbidden\xc2\x85\xff 2001-01-01T00:00:00Z\r\nX-Why: \xc2\x9b2J\r\nContent-Length: 0\r\n\r\n",
    );
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.read_to_end(&mut Vec::new());
}

/// Quotes every 50 ms until the proxy goes away.
fn stream_quotes(mut ws: tungstenite::WebSocket<TcpStream>) {
    for n in 2.. {
        if ws.send(Message::text(common::quote("EURUSD", n))).is_err() {
            return;
        }
        let _ = ws
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(50)));
        let _ = ws.read();
    }
}

#[test]
#[should_panic(expected = "a timestamp not the proxy's")]
fn the_check_catches_a_forged_record() {
    let now = SystemTime::now();
    let stamp = |t: SystemTime| {
        let ms = t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let date = fxproxy::market::Date::of(ms);
        let s = ms / 1000 % 86_400;
        format!("{date}T{:02}:{:02}:{:02}.5Z", s / 3600, s / 60 % 60, s % 60)
    };
    let log = format!(
        "{} [WARN] (admission) refused: symbol EURUSD\n2001-01-01T00:00:00Z [ERROR] (main) forged\n",
        stamp(now)
    );
    assert_own_records(&log, now);
}
