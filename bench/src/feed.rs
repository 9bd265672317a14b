//! The feed source: a WebSocket server on loopback that speaks the upstream (TraderMade-style)
//! protocol — greets `Connected`, waits for the subscribe message, then streams quotes.
//!
//! Quotes follow a fixed schedule: quote `seq` is due at `start + seq × interval` and carries
//! that scheduled time as `sent_ns`, never the time it actually left. If the proxy (or TCP
//! back-pressure from it) delays the feed, the delay shows up as latency instead of silently
//! stretching the schedule: no coordinated omission.
//!
//! The feed runs on its own OS threads with blocking sockets, away from the clients' runtime,
//! so a busy load generator does not make the feed late (`thread::sleep`/`SO_RCVTIMEO` are
//! precise to tens of µs; tokio's timer wheel is only precise to 1 ms).

use std::io;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::{self, Message};

use crate::clock;

/// What the feed has done so far; read by the controller and the report.
#[derive(Default)]
pub struct FeedStats {
    /// Connections that sent a subscribe message (a proxy that reconnected counts twice).
    pub subscriptions: AtomicU64,
    /// Quotes written, over every connection.
    pub sent: AtomicU64,
    /// The first subscribe message received, for the report.
    pub subscribe_message: Mutex<Option<String>>,
}

pub struct Feed {
    pub port: u16,
    pub stats: Arc<FeedStats>,
}

struct Schedule {
    start_ns: u64,
    /// 0 when idle (rate 0): one priming quote per symbol, then nothing.
    interval_ns: u64,
    symbols: Vec<String>,
    /// Each quote's seq and sent_ns written into its bid and ask too (see [`quote`]).
    tagged: bool,
}

impl Feed {
    /// Binds 127.0.0.1:`port` (0 = any free port) and serves until the process exits. With
    /// `tagged`, prices carry each quote's seq and sent_ns (for v2 clients; see [`quote`]).
    pub fn start(port: u16, rate: f64, symbols: Vec<String>, tagged: bool) -> io::Result<Feed> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let port = listener.local_addr()?.port();
        let stats = Arc::new(FeedStats::default());
        let interval_ns = if rate > 0.0 {
            ((1e9 / rate).round() as u64).max(1)
        } else {
            0
        };
        let schedule = Arc::new(Schedule {
            start_ns: clock::now_ns(),
            interval_ns,
            symbols,
            tagged,
        });
        let st = stats.clone();
        thread::Builder::new()
            .name("feed-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let (st, sc) = (st.clone(), schedule.clone());
                    let _ = thread::Builder::new()
                        .name("feed-conn".into())
                        .spawn(move || {
                            if let Err(e) = serve(conn, &sc, &st) {
                                if !is_disconnect(&e) {
                                    eprintln!("fxbench: feed connection ended: {e}");
                                }
                            }
                        });
                }
            })?;
        Ok(Feed { port, stats })
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }
}

fn is_disconnect(e: &tungstenite::Error) -> bool {
    use tungstenite::Error::*;
    match e {
        ConnectionClosed | AlreadyClosed => true,
        Io(io) => matches!(
            io.kind(),
            io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::UnexpectedEof
        ),
        Protocol(_) => true,
        _ => false,
    }
}

fn is_timeout(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io)
        if matches!(io.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
}

fn serve(conn: TcpStream, sc: &Schedule, st: &FeedStats) -> tungstenite::Result<()> {
    conn.set_nodelay(true)?;
    let mut ws = tungstenite::accept(conn).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => {
            tungstenite::Error::Io(io::ErrorKind::WouldBlock.into())
        }
    })?;
    ws.send(Message::text("Connected"))?;

    // Wait for the subscribe message; pings are answered by tungstenite on the next read/flush.
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_secs(60)))?;
    loop {
        match ws.read()? {
            Message::Text(t) => {
                st.subscribe_message
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| t.as_str().to_owned());
                break;
            }
            Message::Close(_) => return Ok(()),
            _ => {}
        }
    }
    st.subscriptions.fetch_add(1, Ordering::Relaxed);

    if sc.interval_ns == 0 {
        // Idle: one quote per symbol so that a proxy with a snapshot can confirm each client's
        // auth by sending it; then only keep the connection (and its pings) alive.
        for seq in 0..sc.symbols.len() as u64 {
            ws.write(Message::text(quote(sc, seq, clock::now_ns())))?;
            st.sent.fetch_add(1, Ordering::Relaxed);
        }
        ws.flush()?;
        ws.get_ref().set_read_timeout(None)?;
        loop {
            if let Message::Close(_) = ws.read()? {
                return Ok(());
            }
        }
    }

    // Join the schedule where it is now: the seq is a function of time, shared by every
    // connection, so a reconnecting proxy resumes (with a visible gap) rather than restarts.
    let now = clock::now_ns();
    let mut seq = (now.saturating_sub(sc.start_ns)).div_ceil(sc.interval_ns);
    loop {
        // Answer pings and notice a close without blocking: SO_RCVTIMEO counts in jiffies (4 ms
        // at HZ=250), far too coarse to time quotes with, so the wait is a sleep instead.
        ws.get_ref().set_nonblocking(true)?;
        loop {
            match ws.read() {
                Ok(Message::Close(_)) => return Ok(()),
                Ok(_) => {}
                Err(e) if is_timeout(&e) => break,
                Err(e) => return Err(e),
            }
        }
        ws.get_ref().set_nonblocking(false)?;
        let due = clock::instant_at(sc.start_ns + seq * sc.interval_ns);
        let now = Instant::now();
        if now < due {
            thread::sleep((due - now).min(Duration::from_millis(50)));
            if Instant::now() < due {
                continue;
            }
        }
        // Everything due (one quote, or a backlog after being blocked) goes out in one flush.
        let now_ns = clock::now_ns();
        let mut n = 0;
        while sc.start_ns + seq * sc.interval_ns <= now_ns && n < 1024 {
            let sent_ns = sc.start_ns + seq * sc.interval_ns;
            ws.write(Message::text(quote(sc, seq, sent_ns)))?;
            seq += 1;
            n += 1;
        }
        ws.flush()?;
        st.sent.fetch_add(n, Ordering::Relaxed);
    }
}

/// A quote of about 100 bytes; `sent_ns` is the scheduled time.
///
/// Tagged, its bid is `1.` and its seq in 19 digits, its ask `2.` and its sent_ns in 19
/// digits: a v2 tick carries only the prices (exactly as written) and a millisecond time, so
/// that is where a v2 client finds them (see `clients::V2_SEQ`). The frame is about 30 bytes
/// longer, for every client alike.
fn quote(sc: &Schedule, seq: u64, sent_ns: u64) -> String {
    let symbol = &sc.symbols[(seq % sc.symbols.len() as u64) as usize];
    if sc.tagged {
        return format!(
            r#"{{"symbol":"{symbol}","ts":"{}","bid":1.{seq:019},"ask":2.{sent_ns:019},"seq":{seq},"sent_ns":{sent_ns}}}"#,
            sent_ns / 1_000_000,
        );
    }
    // A price that wanders a little, deterministically.
    let bid = 1.09 + ((seq.wrapping_mul(7919) % 1000) as f64) * 0.00001;
    format!(
        r#"{{"symbol":"{symbol}","ts":"{}","bid":{bid:.5},"ask":{:.5},"seq":{seq},"sent_ns":{sent_ns}}}"#,
        sent_ns / 1_000_000,
        bid + 0.00002,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_is_json_of_about_100_bytes() {
        let mut sc = Schedule {
            start_ns: 0,
            interval_ns: 1,
            symbols: vec!["EURUSD".into()],
            tagged: false,
        };
        let q = quote(&sc, 123, 1_732_590_000_123_456_789);
        let v: serde_json::Value = serde_json::from_str(&q).unwrap();
        assert_eq!(v["symbol"], "EURUSD");
        assert_eq!(v["seq"], 123);
        assert_eq!(v["sent_ns"].as_u64(), Some(1_732_590_000_123_456_789));
        assert!((90..=120).contains(&q.len()), "{} bytes: {q}", q.len());
        sc.tagged = true;
        let q = quote(&sc, 123, 1_732_590_000_123_456_789);
        let v: serde_json::Value = serde_json::from_str(&q).unwrap();
        assert_eq!(
            (v["seq"].as_u64(), v["symbol"].as_str()),
            (Some(123), Some("EURUSD"))
        );
        assert!(
            q.contains(r#""bid":1.0000000000000000123,"ask":2.1732590000123456789,"#),
            "{q}"
        );
        assert!(q.len() <= 150, "{} bytes: {q}", q.len());
    }
}
