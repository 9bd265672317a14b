//! Wakes a client's writer thread when its socket has something to read (a ping, a close, a
//! dead connection's EOF), so idle clients cost no CPU and a ping is answered at once.
//!
//! The watcher never touches a socket's data: tungstenite cannot share a socket between
//! threads, so the writer thread that owns the `WebSocket` does every read and write. The
//! watcher only turns "readable" (or "writable again") into a flag and an unpark. One watcher
//! thread serves every client; it is the reason a client costs one thread, not a reader and a writer.

use crate::fanout::slot::ClientSlot;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

const WAKE_TOKEN: Token = Token(usize::MAX);

pub struct Watcher {
    registry: Registry,
    waker: Waker,
    stopping: AtomicBool,
    slots: Mutex<HashMap<usize, Arc<ClientSlot>>>,
}

impl Watcher {
    /// Starts the `watcher` thread. Without it no client's ping would be answered, so should
    /// it fail (an error from the poll, or a panic), `on_failure` is called with why.
    pub fn start(
        on_failure: impl FnOnce(&str) + Send + 'static,
    ) -> io::Result<(Arc<Watcher>, JoinHandle<()>)> {
        let poll = Poll::new()?;
        let watcher = Arc::new(Watcher {
            registry: poll.registry().try_clone()?,
            waker: Waker::new(poll.registry(), WAKE_TOKEN)?,
            stopping: AtomicBool::new(false),
            slots: Mutex::new(HashMap::new()),
        });
        let inner = Arc::clone(&watcher);
        let handle = std::thread::Builder::new()
            .name("watcher".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.run(poll))) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => on_failure(&format!("the socket poll failed: {e}")),
                    Err(payload) => on_failure(crate::base::threads::panic_message(&*payload)),
                }
            })?;
        Ok((watcher, handle))
    }

    fn run(&self, mut poll: Poll) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        while !self.stopping.load(Ordering::Acquire) {
            if let Err(e) = poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let slots = self.slots.lock();
            for event in events.iter() {
                if let Some(slot) = slots.get(&event.token().0) {
                    // An error or hang-up is news for the reader: its read finds out what.
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        slot.readable.store(true, Ordering::SeqCst);
                    }
                    if event.is_writable() || event.is_write_closed() {
                        slot.writable.store(true, Ordering::SeqCst);
                    }
                    slot.wake();
                }
            }
        }
        Ok(())
    }

    /// Watches `fd` for `slot`'s writer. Edge-triggered: the writer must read until
    /// `WouldBlock` each time it is woken, and once right after this call for anything that
    /// arrived before it. Writability is reported too, but an edge comes only after a write
    /// found the socket full, so a client that keeps up causes no events.
    pub fn watch(&self, fd: RawFd, slot: &Arc<ClientSlot>) -> io::Result<()> {
        let token = slot.id as usize;
        self.slots.lock().insert(token, Arc::clone(slot));
        let result = self.registry.register(
            &mut SourceFd(&fd),
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        );
        if result.is_err() {
            self.slots.lock().remove(&token);
        }
        result
    }

    /// Stops watching; call before the socket is closed.
    pub fn unwatch(&self, fd: RawFd, slot: &ClientSlot) {
        let _ = self.registry.deregister(&mut SourceFd(&fd));
        self.slots.lock().remove(&(slot.id as usize));
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }
}
