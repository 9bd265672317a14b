//! `--scrape R`: a Prometheus-like scraper beside the clients, `GET /metrics` R times a second
//! on its own thread for the whole run (connect phase included), each on a new connection as
//! Prometheus' own scraper does after an idle gap. What the proxy does to answer them must not
//! show in the clients' accept times or delivery latency; the report gives both, and the
//! scrapes' own times.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// How long one scrape may take before it counts as failed.
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Scraper {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Scrapes>,
}

/// What the scrapes came to.
pub struct Scrapes {
    /// Scrape times in nanoseconds: connect to the last byte of the answer.
    pub hist: Histogram<u64>,
    pub failed: u64,
    /// The first failure, to say why.
    pub first_failure: Option<String>,
    pub bytes: u64,
}

impl Scraper {
    /// Starts scraping `http://{addr}{path}` `rate` times a second.
    pub fn start(addr: SocketAddr, path: String, rate: f64) -> std::io::Result<Scraper> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::Builder::new()
            .name("scraper".into())
            .spawn(move || run(addr, &path, rate, &flag))?;
        Ok(Scraper { stop, handle })
    }

    pub fn finish(self) -> Scrapes {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_else(|_| Scrapes {
            hist: crate::clients::new_histogram(),
            failed: 0,
            first_failure: Some("the scraper thread panicked".into()),
            bytes: 0,
        })
    }
}

fn run(addr: SocketAddr, path: &str, rate: f64, stop: &AtomicBool) -> Scrapes {
    let mut out = Scrapes {
        hist: crate::clients::new_histogram(),
        failed: 0,
        first_failure: None,
        bytes: 0,
    };
    let every = Duration::from_secs_f64(1.0 / rate);
    let mut due = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < due {
            thread::sleep((due - now).min(Duration::from_millis(100)));
            continue;
        }
        // On schedule, not after the last answer: a slow answer does not slow the scraper
        // down, as a Prometheus with many targets would not.
        due += every;
        if now > due + every * 10 {
            due = now;
        }
        match scrape(addr, path) {
            Ok(bytes) => {
                let _ = out.hist.record(now.elapsed().as_nanos() as u64);
                out.bytes += bytes;
            }
            Err(e) => {
                out.failed += 1;
                out.first_failure.get_or_insert(e);
            }
        }
    }
    out
}

/// One scrape: its answer's size, or why it failed.
fn scrape(addr: SocketAddr, path: &str) -> Result<u64, String> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    let head = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
    if !head.starts_with("HTTP/1.1 200 ") {
        return Err(head.lines().next().unwrap_or("no answer").to_string());
    }
    Ok(answer.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn scrapes_on_schedule_and_counts_failures() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            for (i, stream) in listener.incoming().take(4).enumerate() {
                let mut s = stream.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf);
                let answer: &[u8] = if i == 1 {
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok\n\n"
                };
                s.write_all(answer).unwrap();
            }
        });
        let scraper = Scraper::start(addr, "/metrics".into(), 50.0).unwrap();
        server.join().unwrap();
        let scrapes = scraper.finish();
        assert_eq!(scrapes.hist.len(), 3, "three answered 200");
        assert!(scrapes.failed >= 1);
        assert!(scrapes
            .first_failure
            .unwrap()
            .starts_with("HTTP/1.1 503 Service Unavailable"));
    }
}
