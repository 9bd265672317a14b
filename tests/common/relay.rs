//! A fault-injecting TCP relay for tests. It listens on 127.0.0.1, forwards each connection it
//! accepts to a target, and on command delays, swallows, cuts, resets or corrupts the traffic,
//! of the connections already open as well as new ones. Put it between the proxy and a test
//! upstream to play a bad network or a broken provider: proxy → relay → `TestUpstream`.
//!
//! Each connection is served by two named threads, one a direction. A forwarder waits for bytes
//! with `peek`, so it decides what to do with them before it takes them: bytes a black hole
//! does not read stay in the kernel, where TCP holds the sender back as a hung peer would, and
//! a socket closed while it still holds unread bytes is answered with a reset (RST). That is
//! how [`Mode::Reset`] resets without `SO_LINGER` 0, which std offers only on nightly.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// What the relay does to the traffic. [`Relay::set_mode`] applies it at once to every open
/// connection and to each one accepted after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything, both ways, as it comes.
    PassThrough,
    /// Forward everything, both ways, each chunk this much later.
    Delay(Duration),
    /// Forward nothing and read nothing, either way, with the sockets left open: the peers see
    /// a silent connection (a dead NAT entry, a hung server). New connections are held alike;
    /// another mode releases what was held.
    BlackHole,
    /// Close every connection abruptly, with a TCP reset, and each new one as it arrives. The
    /// reset goes out when the client side holds bytes the relay has not read: at once for a
    /// held or new connection (a client sends its request first), else at the client's next
    /// bytes. The target side is closed at once.
    Reset,
    /// Forward this many more bytes toward the client on each connection, then close it both
    /// ways with a FIN, mid-message if that is where the count ends. `Truncate(0)` closes at
    /// once.
    Truncate(usize),
    /// Write these bytes toward the client on each connection once, now, or first thing for a
    /// new connection (before the target's first byte), then pass everything through.
    Garbage(Vec<u8>),
}

/// A running relay; dropping it closes every connection and ends all its threads.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    /// Tells this relay's threads from another's in a thread listing.
    id: usize,
    target: SocketAddr,
    state: Mutex<State>,
    /// Signalled on every mode change and on shutdown: wakes the forwarders a black hole holds.
    changed: Condvar,
    accepted: AtomicUsize,
    resets: AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct State {
    mode: Mode,
    closing: bool,
    links: Vec<Weak<Link>>,
}

/// One relayed connection. Its sockets close when the last forwarder lets go of it.
struct Link {
    client: TcpStream,
    /// None for a connection accepted in [`Mode::Reset`]: there is nothing to forward to.
    target: Option<TcpStream>,
    /// Set once the link is finished; a forwarder that sees it stops without another write.
    dead: AtomicBool,
    /// Set when the link is finished by [`Mode::Reset`]: the client side must then be closed
    /// with its unread bytes still in place, never shut down.
    reset: AtomicBool,
    /// Bytes still to forward toward the client under [`Mode::Truncate`]. The lock also keeps
    /// injected garbage from landing inside a forwarded chunk.
    to_client: Mutex<Option<usize>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked mid-way must not take the relay's teardown down with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Relay {
    /// A relay on 127.0.0.1 with an ephemeral port, forwarding to `target`.
    pub fn start(target: SocketAddr) -> Relay {
        Relay::bind(SocketAddr::from(([127, 0, 0, 1], 0)), target)
            .expect("binding the relay to 127.0.0.1:0")
    }

    /// A relay listening on `addr`. Tests use it to bring a relay back on the port an earlier
    /// one had, so a proxy that lost its upstream finds it again at the same address.
    pub fn bind(addr: SocketAddr, target: SocketAddr) -> io::Result<Relay> {
        static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            target,
            state: Mutex::new(State {
                mode: Mode::PassThrough,
                closing: false,
                links: Vec::new(),
            }),
            changed: Condvar::new(),
            accepted: AtomicUsize::new(0),
            resets: AtomicUsize::new(0),
            threads: Mutex::new(Vec::new()),
        });
        let for_thread = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name(format!("relay{}-accept", shared.id))
            .spawn(move || accept_loop(&for_thread, listener))?;
        Ok(Relay {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:PORT/`: the relay's address as an upstream URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// The prefix of this relay's thread names, `relayN-`.
    pub fn thread_prefix(&self) -> String {
        format!("relay{}-", self.shared.id)
    }

    /// Changes what the relay does, for the open connections and the ones to come.
    pub fn set_mode(&self, mode: Mode) {
        let mut state = lock(&self.shared.state);
        state.mode = mode;
        state.links.retain(|l| l.strong_count() > 0);
        for link in state.links.iter().filter_map(Weak::upgrade) {
            link.apply(&state.mode);
        }
        self.shared.changed.notify_all();
    }

    /// Connections accepted so far: each is one connection attempt by the client.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections closed with a reset so far (the client side held unread bytes).
    pub fn resets(&self) -> usize {
        self.shared.resets.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.state)
            .links
            .iter()
            .filter(|l| l.strong_count() > 0)
            .count()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        {
            let mut state = lock(&self.shared.state);
            state.closing = true;
            for link in state.links.iter().filter_map(Weak::upgrade) {
                link.kill();
            }
            self.shared.changed.notify_all();
        }
        // The acceptor is blocked in accept(): a connection of our own wakes it to see
        // `closing` (tiny_http ends its accept loop the same way).
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for t in threads {
            let _ = t.join();
        }
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: TcpListener) {
    for (n, stream) in listener.incoming().enumerate() {
        if lock(&shared.state).closing {
            return;
        }
        let client = match stream {
            Ok(s) => s,
            Err(_) => {
                // Out of descriptors or the like: do not spin on it.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let resetting = lock(&shared.state).mode == Mode::Reset;
        let target = if resetting {
            None
        } else {
            match TcpStream::connect(shared.target) {
                Ok(t) => Some(t),
                // The target is down: the client sees its connection close.
                Err(_) => continue,
            }
        };
        let _ = client.set_nodelay(true);
        if let Some(t) = &target {
            let _ = t.set_nodelay(true);
        }
        let link = Arc::new(Link {
            client,
            target,
            dead: AtomicBool::new(false),
            reset: AtomicBool::new(false),
            to_client: Mutex::new(None),
        });
        {
            let mut state = lock(&shared.state);
            if state.closing {
                return;
            }
            state.links.retain(|l| l.strong_count() > 0);
            state.links.push(Arc::downgrade(&link));
            link.apply(&state.mode);
        }
        let mut threads = lock(&shared.threads);
        threads.retain(|t| !t.is_finished());
        let directions: &[bool] = if link.target.is_some() {
            &[true, false]
        } else {
            &[true]
        };
        for &up in directions {
            let (shared, for_thread) = (Arc::clone(shared), Arc::clone(&link));
            let name = format!("relay{}-{}{n}", shared.id, if up { "up" } else { "dn" });
            match thread::Builder::new()
                .name(name)
                .spawn(move || forward(&shared, &for_thread, up))
            {
                Ok(t) => threads.push(t),
                Err(_) => link.kill(),
            }
        }
    }
}

/// Moves bytes one way, client → target (`up`) or target → client, as the mode says.
fn forward(shared: &Shared, link: &Link, up: bool) {
    let Some(target) = link.target.as_ref() else {
        // Accepted in Reset mode, so this is the one forwarder and there is nothing to forward
        // to: wait for the client's first bytes and leave them unread, so closing sends RST.
        let pending = matches!(link.client.peek(&mut [0u8; 1]), Ok(n) if n > 0);
        if pending && link.reset.load(Ordering::SeqCst) {
            shared.resets.fetch_add(1, Ordering::SeqCst);
        }
        return;
    };
    let (mut src, dst) = if up {
        (&link.client, target)
    } else {
        (target, &link.client)
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Waits for bytes without taking them; Ok(0) is the end of the stream.
        let pending = matches!(src.peek(&mut buf[..1]), Ok(n) if n > 0);
        let mode = {
            let mut state = lock(&shared.state);
            while state.mode == Mode::BlackHole && !state.closing && !link.dead() {
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.closing {
                return;
            }
            state.mode.clone()
        };
        if mode == Mode::Reset {
            link.finish_with_reset();
        }
        if link.dead() {
            if up && pending && link.reset.load(Ordering::SeqCst) {
                // Returning drops this thread's hold on the client socket with the bytes
                // unread; the last hold to go closes it, and the kernel sends the reset.
                shared.resets.fetch_add(1, Ordering::SeqCst);
            }
            return;
        }
        let read = if pending { src.read(&mut buf) } else { Ok(0) };
        let n = match read {
            Ok(0) | Err(_) => {
                link.close();
                shared.changed.notify_all();
                return;
            }
            Ok(n) => n,
        };
        if let Mode::Delay(d) = mode {
            thread::sleep(d);
        }
        let sent = if up {
            let mut dst = dst;
            dst.write_all(&buf[..n]).is_ok()
        } else {
            link.write_to_client(&buf[..n])
        };
        if !sent {
            link.close();
            shared.changed.notify_all();
            return;
        }
    }
}

impl Link {
    fn dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Applies a mode change to this link; the forwarders do the rest as bytes come.
    fn apply(&self, mode: &Mode) {
        match mode {
            Mode::Reset => self.finish_with_reset(),
            Mode::Truncate(0) => self.close(),
            Mode::Truncate(n) => *lock(&self.to_client) = Some(*n),
            Mode::Garbage(bytes) => {
                let mut budget = lock(&self.to_client);
                *budget = None;
                let mut client = &self.client;
                let _ = client.write_all(bytes);
            }
            Mode::PassThrough | Mode::Delay(_) | Mode::BlackHole => {
                *lock(&self.to_client) = None;
            }
        }
    }

    /// Writes toward the client within the truncation budget; false once the link is done.
    fn write_to_client(&self, bytes: &[u8]) -> bool {
        let mut budget = lock(&self.to_client);
        let mut client = &self.client;
        match *budget {
            None => client.write_all(bytes).is_ok(),
            Some(left) => {
                let n = left.min(bytes.len());
                let ok = client.write_all(&bytes[..n]).is_ok();
                *budget = Some(left - n);
                if left == n {
                    drop(budget);
                    self.close();
                    return false;
                }
                ok
            }
        }
    }

    /// Ends the link abruptly: the target side closes now; the client side is left for the
    /// last forwarder to drop with its unread bytes in place, which the kernel turns into RST.
    fn finish_with_reset(&self) {
        if !self.dead.swap(true, Ordering::SeqCst) {
            self.reset.store(true, Ordering::SeqCst);
            if let Some(t) = &self.target {
                let _ = t.shutdown(Shutdown::Both);
            }
        }
    }

    /// Ends the link in order: a FIN each way, which also wakes both forwarders.
    fn close(&self) {
        if !self.dead.swap(true, Ordering::SeqCst) {
            self.kill();
        }
    }

    /// Shuts both sockets down whatever state the link is in (relay shutdown).
    fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(t) = &self.target {
            let _ = t.shutdown(Shutdown::Both);
        }
    }
}
