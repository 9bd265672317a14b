//! Healthy traffic for the fault tests: numbered quotes from the test upstream at a steady
//! pace to clients that check every one, in order, and how late each came.

// Each test crate compiles this module and uses only part of it.
#![allow(dead_code)]

use super::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use tungstenite::Message;

/// Healthy clients must see each quote within this long of its sending, however busy the
/// proxy is with the faulty ones. Loose on purpose: the test machine is shared.
pub const LAG_LIMIT: Duration = Duration::from_secs(4);

/// The frames the feed sends: `frame(n)` for n = 0, 1, 2, ...
pub type FrameFn = fn(u64) -> String;

pub fn small_quote(n: u64) -> String {
    quote("EURUSD", n)
}

/// A 32 KiB quote: a few hundred of them fill a peer's socket buffers.
pub fn big_quote(n: u64) -> String {
    format!(
        r#"{{"symbol":"EURUSD","n":{n},"pad":"{}"}}"#,
        "x".repeat(32 * 1024)
    )
}

/// The last frame of a feed, on another symbol: a client that sees it knows the count.
pub fn sentinel(total: u64) -> String {
    quote("GBPUSD", total)
}

/// What one healthy client received.
#[derive(Debug)]
pub struct Delivery {
    pub quotes: u64,
    pub max_lag: Duration,
}

/// Quotes sent at a steady pace to healthy clients, each read on its own thread.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    feeder: JoinHandle<(TestUpstream, u64)>,
    readers: Vec<JoinHandle<Result<Delivery, String>>>,
    give_up: Arc<Mutex<Option<Instant>>>,
    sent_at: Arc<Mutex<Vec<Instant>>>,
}

impl Traffic {
    /// Starts sending `frame(n)` every `every` and reading on every client. The clients must
    /// be registered already (see [`wait_registered`]) so that none misses the first quote.
    pub fn start(
        up: TestUpstream,
        clients: Vec<Client>,
        every: Duration,
        frame: FrameFn,
    ) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent_at = Arc::new(Mutex::new(Vec::<Instant>::new()));
        let give_up = Arc::new(Mutex::new(None::<Instant>));
        let readers = clients
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let sent_at = Arc::clone(&sent_at);
                let give_up = Arc::clone(&give_up);
                thread::Builder::new()
                    .name(format!("healthy-{i}"))
                    .spawn(move || read_all(i, c, frame, &sent_at, &give_up))
                    .unwrap()
            })
            .collect();
        let feeder = {
            let stop = Arc::clone(&stop);
            let sent_at = Arc::clone(&sent_at);
            thread::Builder::new()
                .name("feeder".into())
                .spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let text = frame(n);
                        sent_at.lock().unwrap().push(Instant::now());
                        up.send(&text);
                        n += 1;
                        thread::sleep(every);
                    }
                    up.send(&sentinel(n));
                    (up, n)
                })
                .unwrap()
        };
        Traffic {
            stop,
            feeder,
            readers,
            give_up,
            sent_at,
        }
    }

    pub fn sent(&self) -> usize {
        self.sent_at.lock().unwrap().len()
    }

    /// Waits until at least `n` more quotes have been sent, so the faults overlap traffic.
    pub fn wait_for_more(&self, n: usize) {
        let target = self.sent() + n;
        eventually(&format!("{target} quotes sent"), || self.sent() >= target);
    }

    /// Stops the feed and checks that every healthy client got every quote, in order, each
    /// within [`LAG_LIMIT`]. Returns the upstream (for more quotes) and what each client got.
    pub fn finish(self) -> (TestUpstream, Vec<Delivery>) {
        // On a loaded machine the feeder may not have run at all yet (seen: a test's faults
        // all done before its first quote): the faults must overlap some traffic.
        self.wait_for_more(3);
        self.stop.store(true, Ordering::SeqCst);
        let (up, total) = self.feeder.join().expect("the feeder");
        *self.give_up.lock().unwrap() = Some(Instant::now() + DEADLINE * 2);
        let deliveries: Vec<Delivery> = self
            .readers
            .into_iter()
            .map(|r| {
                r.join()
                    .expect("a healthy reader")
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect();
        for (i, d) in deliveries.iter().enumerate() {
            assert_eq!(d.quotes, total, "healthy client {i}");
            assert!(
                d.max_lag < LAG_LIMIT,
                "healthy client {i} was slowed down: a quote took {:?}",
                d.max_lag
            );
        }
        assert!(total > 0, "no quotes flowed");
        eprintln!(
            "healthy clients: {} x {total} quotes, max lag {:?}",
            deliveries.len(),
            deliveries.iter().map(|d| d.max_lag).max().unwrap()
        );
        (up, deliveries)
    }
}

/// A healthy client's reading loop: every frame must be the next quote, until the sentinel.
fn read_all(
    i: usize,
    mut c: Client,
    frame: FrameFn,
    sent_at: &Mutex<Vec<Instant>>,
    give_up: &Mutex<Option<Instant>>,
) -> Result<Delivery, String> {
    let mut next = 0u64;
    let mut max_lag = Duration::ZERO;
    loop {
        if give_up.lock().unwrap().is_some_and(|t| Instant::now() > t) {
            return Err(format!(
                "healthy client {i}: only {next} quotes, no sentinel, by the deadline"
            ));
        }
        match c.ws.read() {
            Ok(Message::Text(t)) => {
                if t.as_str() == sentinel(next) {
                    return Ok(Delivery {
                        quotes: next,
                        max_lag,
                    });
                }
                if t.as_str() != frame(next) {
                    let shown: String = t.chars().take(80).collect();
                    return Err(format!(
                        "healthy client {i}: expected quote {next}, got {shown}"
                    ));
                }
                let lag = sent_at.lock().unwrap()[next as usize].elapsed();
                max_lag = max_lag.max(lag);
                next += 1;
            }
            Ok(Message::Close(f)) => {
                return Err(format!(
                    "healthy client {i} was closed after {next} quotes: {f:?}"
                ))
            }
            Ok(_) => {}
            Err(e) if read_timed_out(&e) => {}
            Err(e) => {
                return Err(format!(
                    "healthy client {i}: read failed after {next} quotes: {e}"
                ))
            }
        }
    }
}

/// `n` clients of `KEY` for EURUSD (the feed) and GBPUSD (its sentinel).
pub fn healthy_clients(addr: SocketAddr, n: usize) -> Vec<Client> {
    healthy_clients_to(&super::tls::Endpoint::plain(addr), n)
}

/// As [`healthy_clients`], over plain TCP or TLS as `to` says.
pub fn healthy_clients_to(to: &super::tls::Endpoint, n: usize) -> Vec<Client> {
    (0..n)
        .map(|_| Client::auth_to(to, KEY, Some("EURUSD,GBPUSD")))
        .collect()
}
