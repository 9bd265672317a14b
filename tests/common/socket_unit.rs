//! systemd, as far as a socket unit and a `Type=notify` service go, for tests on a machine where
//! systemd is not running: what `fxproxy.socket` and `fxproxy.service` make systemd do.
//!
//! - It holds the listening socket for the unit's whole life (`ListenStream=`), so
//!   connections made while no proxy runs wait in its queue.
//! - It starts the proxy with that socket as descriptor 3, `LISTEN_FDS=1` and `LISTEN_PID`
//!   the proxy's own pid, and `NOTIFY_SOCKET` naming a datagram socket it reads.
//! - A restart is SIGTERM, waiting for the process to exit, and a start on the same socket.

// Each test crate compiles this module and uses only part of it.
#![allow(dead_code)]

use super::process::{self, Proxy};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The listen queue of the unit's socket (systemd's `Backlog=` default is SOMAXCONN).
const BACKLOG: i32 = 4096;

/// A socket unit with its service's notifications.
pub struct SocketUnit {
    socket: TcpListener,
    pub addr: SocketAddr,
    pub notify: Notifications,
}

impl SocketUnit {
    /// Listens on 127.0.0.1 on a port of the kernel's choosing.
    pub fn new() -> SocketUnit {
        let socket = TcpListener::bind("127.0.0.1:0").expect("binding the unit's socket");
        socket2::SockRef::from(&socket)
            .listen(BACKLOG)
            .expect("sizing the unit's listen queue");
        let addr = socket.local_addr().expect("the unit's address");
        SocketUnit {
            socket,
            addr,
            notify: Notifications::start(),
        }
    }

    /// Starts the service (see [`Proxy::spawn_activated`]) with `NOTIFY_SOCKET` set, and
    /// `env` besides.
    pub fn start(&self, config: &str, env: &[(&str, &str)]) -> Proxy {
        let notify = self.notify.path();
        let mut all: Vec<(&str, &str)> = vec![("NOTIFY_SOCKET", notify.as_str())];
        all.extend_from_slice(env);
        let proxy = Proxy::spawn_activated(config, &all, &self.socket);
        assert_eq!(
            proxy.addr, self.addr,
            "the proxy serves on the unit's socket"
        );
        proxy
    }

    /// Stops the service as systemd does (SIGTERM, then waits for it to exit, here up to
    /// `deadline`); the exit status, or `None` if it is still running.
    pub fn stop(&self, proxy: &mut Proxy, deadline: Duration) -> Option<ExitStatus> {
        proxy.signal("TERM");
        proxy.wait_exit(deadline)
    }
}

/// What the service said on `NOTIFY_SOCKET`, each datagram as one string, in order.
pub struct Notifications {
    path: PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Notifications {
    /// A notify socket in a new temp directory, read by a thread of its own.
    pub fn start() -> Notifications {
        let path = process::temp_dir().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("binding the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("a read timeout on the notify socket");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, done) = (Arc::clone(&messages), Arc::clone(&stop));
        let reader = thread::Builder::new()
            .name("notify-socket".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                let mut buf = vec![0u8; 4096];
                // The timeout is only so that the thread sees `stop`.
                while !done.load(Ordering::SeqCst) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        sink.lock().unwrap().push(text);
                    }
                }
            })
            .expect("the notify reader thread");
        Notifications {
            path,
            messages,
            stop,
            reader: Some(reader),
        }
    }

    /// The socket's path, for `NOTIFY_SOCKET`.
    pub fn path(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// Every datagram so far.
    pub fn all(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    /// How many datagrams so far: a mark for [`Notifications::wait_for`].
    pub fn count(&self) -> usize {
        self.messages.lock().unwrap().len()
    }

    /// The first datagram from index `from` on with a line equal to `line`, with its index;
    /// waits up to `deadline` for it.
    pub fn wait_for(&self, line: &str, from: usize, deadline: Duration) -> Option<(usize, String)> {
        let until = Instant::now() + deadline;
        loop {
            let found = self
                .messages
                .lock()
                .unwrap()
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, m)| m.lines().any(|l| l == line))
                .map(|(i, m)| (i, m.clone()));
            if found.is_some() || Instant::now() >= until {
                return found;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// As [`Notifications::wait_for`], failing the test with what came instead.
    pub fn expect(&self, line: &str, from: usize) -> (usize, String) {
        self.wait_for(line, from, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("no {line:?} from #{from}; got {:?}", self.all()))
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The `STATUS=` of a notification, if it has one.
pub fn status_of(message: &str) -> Option<&str> {
    message.lines().find_map(|l| l.strip_prefix("STATUS="))
}
