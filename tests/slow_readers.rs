//! Clients that read slowly or not at all. The kernel holds little unsent for any client
//! (`TCP_NOTSENT_LOWAT`), so a client that stops reading fills its queue within seconds and
//! the slow-client policy acts on time, while one that reads slowly but keeps up is never
//! troubled, and the fast clients beside them get every quote.

mod common;

use common::raw_ws::{pong_for, FrameReader, CLOSE, TEXT};
use common::storm::{join, Outcome};
use common::traffic::*;
use common::*;
use socket2::{Domain, Socket, Type};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// 200 quotes a second, as the measurement.
const FEED_EVERY: Duration = Duration::from_millis(5);
/// What a stalled client may pin in the proxy's kernel buffers.
const PIN_LIMIT: u64 = 64 * 1024;

/// A client socket, its receive buffer set before it connects (as a small device's is) or
/// left to the kernel, which grows it to megabytes for a client that stops reading.
fn client_with_receive_buffer(addr: SocketAddr, bytes: Option<usize>) -> TcpStream {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    if let Some(bytes) = bytes {
        sock.set_recv_buffer_size(bytes).unwrap();
    }
    sock.connect(&addr.into()).unwrap();
    sock.into()
}

/// Bytes the kernel holds and the peer has not acknowledged on the proxy's end of the
/// connection whose client end is `client_port` (`tx_queue` in /proc/net/tcp).
fn pinned_by(proxy: SocketAddr, client_port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{:04X}", proxy.port());
    let remote = format!(":{client_port:04X}");
    table
        .lines()
        .skip(1)
        .find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 4 && f[1].ends_with(&local) && f[2].ends_with(&remote) {
                u64::from_str_radix(f[4].split(':').next()?, 16).ok()
            } else {
                None
            }
        })
        .unwrap_or(0)
}

/// Reads `s` to its end: the quotes' numbers in order, and the close frame's code and reason.
fn read_to_close(s: &mut TcpStream) -> (Vec<u64>, Option<(u16, String)>) {
    let mut frames = FrameReader::default();
    let mut chunk = [0u8; 16 * 1024];
    let mut numbers = Vec::new();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    loop {
        while let Some(f) = frames.next_frame() {
            if f.opcode == TEXT {
                let text = String::from_utf8_lossy(&f.payload).to_string();
                if let Some(n) = quote_number(&text) {
                    numbers.push(n);
                }
            } else if f.opcode == CLOSE {
                let code = f.close_code().unwrap_or(1005);
                let reason = String::from_utf8_lossy(&f.payload[2.min(f.payload.len())..]);
                return (numbers, Some((code, reason.to_string())));
            }
        }
        match s.read(&mut chunk) {
            Ok(n) if n > 0 => frames.push(&chunk[..n]),
            _ => return (numbers, None),
        }
    }
}

/// The `n` of a `quote("EURUSD", n)`.
fn quote_number(text: &str) -> Option<u64> {
    let ts = text.split("\"ts\":\"").nth(1)?.split('"').next()?;
    ts.parse::<u64>().ok()?.checked_sub(1_700_000_000_000)
}

#[test]
fn a_small_client_that_stops_reading_is_closed_as_a_slow_consumer_within_ten_seconds() {
    stops_reading(Some(4096));
}

#[test]
fn a_client_that_stops_reading_is_closed_within_ten_seconds_however_much_its_kernel_takes() {
    stops_reading(None);
}

/// A client on a socket with `receive_buffer` takes its first quote, then reads nothing
/// while the feed runs at 200 quotes/s.
fn stops_reading(receive_buffer: Option<usize>) {
    let up = TestUpstream::start();
    let proxy = TestProxy::simple(&up);
    up.expect_subscribe();
    let healthy = healthy_clients(proxy.addr, 2);
    proxy.wait_for_clients(2);
    let traffic = Traffic::start(up, healthy, FEED_EVERY, small_quote);
    traffic.wait_for_more(10);

    // A small device's socket: it takes its first quote, then reads nothing more.
    let socket = client_with_receive_buffer(proxy.addr, receive_buffer);
    let port = socket.local_addr().unwrap().port();
    let Outcome::Served(mut stalled) = join(socket, KEY) else {
        panic!("the stalled client could not join");
    };
    let stopped = Instant::now();
    let (mut pinned, mut behind_after, mut deepest) = (0u64, None, 0.0f64);
    let closed_after = loop {
        pinned = pinned.max(pinned_by(proxy.addr, port));
        let text = scrape(proxy.addr);
        if behind_after.is_none() && metric(&text, "fxproxy_clients_behind") >= 1.0 {
            behind_after = Some(stopped.elapsed());
        }
        deepest = deepest.max(metric(&text, "fxproxy_client_queue_depth_sum"));
        if metric(&text, "fxproxy_slow_consumer_disconnects_total") >= 1.0 {
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(30),
            "still not closed after 30 s"
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert!(
        closed_after < Duration::from_secs(10),
        "closed only {closed_after:?} after it stopped reading"
    );
    // Its lag shows: the quotes it has not been sent wait in its queue.
    assert!(
        deepest >= 200.0,
        "/metrics showed at most {deepest} frames queued"
    );
    assert!(
        pinned < PIN_LIMIT,
        "the stalled client pinned {pinned} bytes of kernel memory"
    );

    // When it reads again: the quotes it was sent, in order, then why it was closed.
    let (numbers, close) = read_to_close(&mut stalled);
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "out of order or with gaps"
    );
    assert_eq!(close, Some((1008, "Slow consumer".to_string())));
    let (_, deliveries) = traffic.finish();
    eprintln!(
        "stopped reading (receive buffer {receive_buffer:?}): up to {deepest} frames queued (more \
         than half its queue after {behind_after:?}), closed as a slow consumer after {closed_after:?}; at most {pinned} \
         bytes pinned in the proxy's kernel buffers; it had been sent {} quotes; the healthy \
         clients got all {}",
        numbers.len(),
        deliveries[0].quotes
    );
}

#[test]
fn a_client_that_reads_slowly_but_keeps_up_is_never_closed() {
    let up = TestUpstream::start();
    let proxy = TestProxy::simple(&up);
    up.expect_subscribe();
    let healthy = healthy_clients(proxy.addr, 1);
    proxy.wait_for_clients(1);
    // 200 quotes a second, about 22 KB/s; the slow reader takes 1 KiB every 20 ms (it could
    // take 50 KB/s), on a small socket, answering pings as it meets them: pinged every 32 KiB,
    // it answers within 20 ms or so.
    let traffic = Traffic::start(up, healthy, FEED_EVERY, small_quote);
    traffic.wait_for_more(2);
    let socket = client_with_receive_buffer(proxy.addr, Some(4096));
    let Outcome::Served(mut slow) = join(socket, KEY) else {
        panic!("the slow client could not join");
    };
    let mut frames = FrameReader::default();
    let mut numbers = Vec::new();
    let mut bite = [0u8; 1024];
    slow.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        if let Ok(n) = slow.read(&mut bite) {
            assert!(n > 0, "closed by the proxy");
            frames.push(&bite[..n]);
        }
        while let Some(f) = frames.next_frame() {
            assert_ne!(f.opcode, CLOSE, "closed: {:?}", f.close_code());
            if let Some(pong) = pong_for(&f) {
                slow.write_all(&pong).unwrap();
            }
            if f.opcode == TEXT {
                numbers.extend(quote_number(&String::from_utf8_lossy(&f.payload)));
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(numbers.len() > 400, "only {} quotes", numbers.len());
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(
        metric_of(proxy.addr, "fxproxy_slow_consumer_disconnects_total"),
        0.0
    );
    assert_eq!(metric_of(proxy.addr, "fxproxy_clients_connected"), 2.0);
    traffic.finish();
}
