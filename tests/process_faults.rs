//! The process under load: SIGTERM while a thousand clients each take a thousand quotes a
//! second. Every client must get close 1001 and the process must exit 0 within two seconds.
//!
//! The clients are plain sockets followed by one thread with `mio` and a hand-written frame
//! reader, so the test's own cost stays far below the proxy's and cannot be what fails.

mod common;

use common::process::Proxy;
use common::raw_ws::{self, authenticated_socket, FrameReader};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const CLIENTS: usize = 1000;
const QUOTES_PER_SEC: u32 = 1000;

struct Conn {
    stream: TcpStream,
    frames: FrameReader,
    quotes: u64,
    close: Option<u16>,
    ended: bool,
}

/// What the reader thread saw.
struct Seen {
    conns: Vec<Conn>,
}

/// Follows every socket until each has ended or `deadline` passes: counts quote frames,
/// answers the server's close with a close (as a client library would), notes the code.
fn follow(
    mut conns: Vec<Conn>,
    receiving: Arc<AtomicUsize>,
    delivered: Arc<AtomicU64>,
    quit: Arc<AtomicBool>,
    deadline: Instant,
) -> Seen {
    let mut poll = Poll::new().unwrap();
    for (i, c) in conns.iter().enumerate() {
        c.stream.set_nonblocking(true).unwrap();
        let fd = c.stream.as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&fd), Token(i), Interest::READABLE)
            .unwrap();
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut open = conns.len();
    while open > 0 && Instant::now() < deadline && !quit.load(Ordering::SeqCst) {
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        for event in events.iter() {
            let c = &mut conns[event.token().0];
            if c.ended {
                continue;
            }
            // Edge-triggered: read until the socket would block.
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        c.ended = true;
                        open -= 1;
                        break;
                    }
                    Ok(n) => c.frames.push(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        c.ended = true;
                        open -= 1;
                        break;
                    }
                }
            }
            while let Some(frame) = c.frames.next_frame() {
                match frame.opcode {
                    raw_ws::TEXT => {
                        if c.quotes == 0 {
                            receiving.fetch_add(1, Ordering::SeqCst);
                        }
                        c.quotes += 1;
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    raw_ws::CLOSE if c.close.is_none() => {
                        c.close = frame.close_code();
                        let _ = c.stream.write_all(&raw_ws::client_close(1000));
                    }
                    _ => {
                        if let Some(pong) = raw_ws::pong_for(&frame) {
                            let _ = c.stream.write_all(&pong);
                        }
                    }
                }
            }
        }
    }
    Seen { conns }
}

#[test]
fn sigterm_under_full_load_gives_every_client_1001_and_exits_0_within_2_s() {
    let wanted = 2 * CLIENTS as u64 + 256;
    assert!(
        common::storm::raise_fd_limit(wanted) >= wanted,
        "this test needs {wanted} open files; raise `ulimit -n`"
    );
    let dir = common::process::temp_dir();
    let keys = common::process::write_keys(&dir, &[common::KEY]);
    // This test's one reader thread, at a million frames a second, falls a second or two
    // behind now and then; it is about shutdown, not the slow-client policy, so the queues
    // are long enough to absorb that.
    let mut proxy = Proxy::spawn(&format!(
        "upstream_url = sim\nsim_rate = {QUOTES_PER_SEC}\nsymbols = EURUSD,GBPUSD,USDJPY,AUDUSD,USDCHF\n\
         user_keys_file = {}\nstatus_interval_secs = 0\nclient_queue_len = 16384\n\
         max_client_lag_secs = 30\n",
        keys.display()
    ));
    let conns: Vec<Conn> = (0..CLIENTS)
        .map(|_| Conn {
            stream: authenticated_socket(proxy.addr, common::KEY),
            frames: FrameReader::default(),
            quotes: 0,
            close: None,
            ended: false,
        })
        .collect();
    let receiving = Arc::new(AtomicUsize::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let quit = Arc::new(AtomicBool::new(false));
    let reader = {
        let (receiving, delivered, quit) = (
            Arc::clone(&receiving),
            Arc::clone(&delivered),
            Arc::clone(&quit),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        thread::Builder::new()
            .name("clients".into())
            .spawn(move || follow(conns, receiving, delivered, quit, deadline))
            .unwrap()
    };
    let all_receiving = common::process::poll(Duration::from_secs(30), || {
        receiving.load(Ordering::SeqCst) == CLIENTS
    });
    if !all_receiving {
        quit.store(true, Ordering::SeqCst);
        let seen = reader.join().expect("the reader thread");
        let ended = seen.conns.iter().filter(|c| c.ended).count();
        let codes: Vec<_> = seen.conns.iter().filter_map(|c| c.close).collect();
        panic!(
            "only {} of {CLIENTS} clients received quotes; {ended} connections ended, close codes {codes:?}; metrics:\n{}",
            receiving.load(Ordering::SeqCst),
            common::http_get(proxy.addr, "GET /metrics HTTP/1.0\r\n\r\n")
        );
    }
    // A second of full load, measured, before the signal.
    let before = delivered.load(Ordering::SeqCst);
    let window = Instant::now();
    thread::sleep(Duration::from_secs(1));
    let rate = (delivered.load(Ordering::SeqCst) - before) as f64 / window.elapsed().as_secs_f64();

    let signalled = Instant::now();
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(5));
    let took = signalled.elapsed();
    let seen = reader.join().expect("the reader thread");

    let mut codes = std::collections::BTreeMap::new();
    for c in &seen.conns {
        *codes.entry(c.close).or_insert(0usize) += 1;
    }
    eprintln!(
        "{CLIENTS} clients, {QUOTES_PER_SEC} quotes/s: {rate:.0} deliveries/s before SIGTERM; exit after {:.2} s; close codes {codes:?}",
        took.as_secs_f64()
    );
    assert_eq!(
        codes.get(&Some(1001)),
        Some(&CLIENTS),
        "every client gets 1001: {codes:?}"
    );
    let status = status.expect("the proxy exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", proxy.stderr_text());
    assert!(took < Duration::from_secs(2), "exit took {took:?}");
}
