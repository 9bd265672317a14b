//! Plain HTTP requests on the client port (`/healthz`, `/metrics`, the page) answered off the
//! admission thread. Writing `/metrics` reads `/proc` and looks at every client's queue; on
//! the thread that accepts clients, a flood of scrapes at fifteen thousand clients would
//! hold up accepts. So the admission loop hands each request to the `http` thread
//! ([`Answerer::run`]) and goes on; the answer comes back through a channel and the loop's
//! waker, and the loop writes it out as it writes everything else, without blocking.
//!
//! The hand-off is bounded ([`QUEUE`]): past that many requests waiting for an answer, a
//! request is answered at once with 503, so a flood of requests costs the admission loop no
//! more than reading them.

use crate::clients::context::Context;
use crate::clients::http::{self, Request};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use log::error;
use mio::Waker;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Requests waiting for the `http` thread at most; more are answered 503 by the admission loop.
pub const QUEUE: usize = 64;

/// A request for the `http` thread, and where its connection waits in the admission loop.
pub struct Job {
    pub slot: usize,
    pub id: u64,
    pub request: Request,
}

/// The whole response to a [`Job`], for the connection in `slot` if it is still `id`.
pub struct Answer {
    pub slot: usize,
    pub id: u64,
    pub response: Vec<u8>,
}

/// The admission loop's end: hands requests over and takes the answers back.
pub struct Asking {
    jobs: Sender<Job>,
    pub answers: Receiver<Answer>,
}

/// The `http` thread's end.
pub struct Answerer {
    jobs: Receiver<Job>,
    answers: Sender<Answer>,
    waker: Arc<Waker>,
}

/// A connected pair; `waker` wakes the admission loop when an answer is ready.
pub fn pair(waker: Arc<Waker>) -> (Asking, Answerer) {
    let (jobs_tx, jobs) = crossbeam_channel::bounded(QUEUE);
    // Never more than QUEUE answers are outstanding: one per job taken.
    let (answers, answers_rx) = crossbeam_channel::unbounded();
    (
        Asking {
            jobs: jobs_tx,
            answers: answers_rx,
        },
        Answerer {
            jobs,
            answers,
            waker,
        },
    )
}

impl Asking {
    /// Hands `job` to the `http` thread; gives it back when too many wait already (or the
    /// thread is gone), for the caller to answer 503.
    pub fn ask(&self, job: Job) -> Result<(), Job> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(job) | TrySendError::Disconnected(job) => job,
        })
    }
}

/// What a request is answered when the `http` thread cannot take it now.
pub fn busy(request: &Request) -> Vec<u8> {
    let head_only = request.method == "HEAD";
    http::response(
        503,
        "text/plain",
        "busy: too many requests at once\n",
        head_only,
    )
}

impl Answerer {
    /// Answers requests until the admission loop is gone (it drops its end as it stops).
    pub fn run(self, ctx: &Context) {
        while let Ok(job) = self.jobs.recv() {
            #[cfg(test)]
            tests::maybe_stall(&job.request);
            // A bug in an endpoint answers that request with 500; the next is served as usual.
            let response =
                panic::catch_unwind(AssertUnwindSafe(|| (ctx.answer_http)(ctx, &job.request)))
                    .unwrap_or_else(|payload| {
                        ctx.metrics.internal_errors.fetch_add(1, Ordering::Relaxed);
                        error!(
                            "internal error while answering {}: {}",
                            crate::base::logsafe::quoted(job.request.route()),
                            crate::base::logsafe::escaped(crate::base::threads::panic_message(
                                &*payload
                            ))
                        );
                        http::response(500, "text/plain", "internal error\n", false)
                    });
            let answer = Answer {
                slot: job.slot,
                id: job.id,
                response,
            };
            if self.answers.send(answer).is_err() || self.waker.wake().is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::feed::protocol::GREETING;
    use crate::Server;
    use crossbeam_channel::Receiver;
    use parking_lot::Mutex;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;
    use tungstenite::Message;

    /// A request for this path holds the `http` thread until the test lets it go: an
    /// endpoint as slow as you like.
    const STALL: &str = "/test-only/stall";

    static RELEASE: Mutex<Option<Receiver<()>>> = Mutex::new(None);

    /// A fault injected into the `http` thread, in unit tests only.
    pub fn maybe_stall(request: &Request) {
        if request.route() == STALL {
            let release = RELEASE.lock().take();
            if let Some(release) = release {
                let _ = release.recv_timeout(Duration::from_secs(30));
            }
        }
    }

    fn send_request(addr: SocketAddr, path: &str) -> TcpStream {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        s
    }

    fn answer_of(mut s: TcpStream) -> String {
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn a_slow_endpoint_holds_up_neither_accepts_nor_clients() {
        let (release, released) = crossbeam_channel::bounded(1);
        *RELEASE.lock() = Some(released);
        let dir = std::env::temp_dir().join(format!("fxproxy-answering-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("keys"), "a-client-key-123\n").unwrap();
        let text = "listen = 127.0.0.1:0\nupstream_url = sim\nsim_rate = 50\nsymbols = EURUSD\n\
                    user_keys_file = keys\nstatus_interval_secs = 0\nmarket_hours = always\n";
        let server = Server::start(config::parse(text, &dir.join("proxy.conf")).unwrap()).unwrap();
        let addr = server.local_addr();

        // The `http` thread is stuck in an endpoint from here on.
        let stalled = send_request(addr, STALL);
        // A client still connects, authenticates and receives quotes meanwhile.
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (mut ws, _) = tungstenite::client(format!("ws://{addr}/"), stream).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text(GREETING));
        ws.send(Message::text(r#"{"userKey":"a-client-key-123"}"#))
            .unwrap();
        loop {
            match ws.read().expect("a quote while the http thread is stuck") {
                Message::Text(t) if t.contains("EURUSD") => break,
                _ => {}
            }
        }
        // Requests past what may wait for the thread are answered at once: busy. Only those
        // have an answer while the thread is stuck.
        let waiting: Vec<TcpStream> = (0..QUEUE + 8)
            .map(|_| send_request(addr, "/healthz"))
            .collect();
        let answered = |s: &TcpStream| {
            s.set_nonblocking(true).unwrap();
            let has = matches!(s.peek(&mut [0u8; 1]), Ok(n) if n > 0);
            s.set_nonblocking(false).unwrap();
            has
        };
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while waiting.iter().filter(|s| answered(s)).count() < 8 {
            assert!(std::time::Instant::now() < until, "no busy answers");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Once the thread is free again, everything waiting is answered.
        drop(release);
        assert!(answer_of(stalled).starts_with("HTTP/1.1 404 "));
        let answers: Vec<String> = waiting.into_iter().map(answer_of).collect();
        let busy = answers
            .iter()
            .filter(|a| {
                a.starts_with("HTTP/1.1 503 ") && a.ends_with("busy: too many requests at once\n")
            })
            .count();
        let healthy = answers
            .iter()
            .filter(|a| a.starts_with("HTTP/1.1 200 "))
            .count();
        assert!(busy >= 8, "{busy} answered busy");
        assert_eq!(busy + healthy, QUEUE + 8, "{answers:?}");
        server.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
