//! The signals fxproxy acts on, told apart: SIGINT and SIGTERM stop it, SIGHUP reloads it,
//! SIGUSR1 asks for a state dump.
//!
//! All of them are blocked in the main thread before any other thread starts (threads inherit
//! the mask, so they are blocked everywhere). SIGHUP and SIGUSR1 are read from a `signalfd`
//! by the `signals` thread, which calls an ordinary closure for each ([`Blocked::listen`]);
//! it waits in a poll together with a waker, so [`Listener::stop`] ends it at once. The stop
//! signals go through `ctrlc` ([`Blocked::on_stop`]): its handler must run on some thread, and
//! the one thread that leaves them unblocked is `signals-stop`, which does nothing but wait.
//! So no blocking call of any working thread is cut short with EINTR (what `fxproxy watch`
//! once reported as a lost connection on Ctrl-C), and none of it needs unsafe code.

use crate::base::stop::Stop;
use log::error;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::sys::signal::{SigSet, Signal as Sig};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::io;
use std::os::unix::io::AsRawFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

const SIGNALS: Token = Token(0);
const WAKE: Token = Token(1);
/// The thread runs the closure given, which may reload the configuration.
const STACK: usize = 256 * 1024;
/// `signals-stop` only waits (the handler that runs on it only writes to a pipe).
const STOP_STACK: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
    HangUp,
    User1,
}

impl Signal {
    fn sig(self) -> Sig {
        match self {
            Signal::Interrupt => Sig::SIGINT,
            Signal::Terminate => Sig::SIGTERM,
            Signal::HangUp => Sig::SIGHUP,
            Signal::User1 => Sig::SIGUSR1,
        }
    }

    fn from_number(n: u32) -> Option<Signal> {
        [
            Signal::Interrupt,
            Signal::Terminate,
            Signal::HangUp,
            Signal::User1,
        ]
        .into_iter()
        .find(|s| s.number() as u32 == n)
    }

    /// `SIGINT`, `SIGTERM`, …
    pub fn name(self) -> &'static str {
        self.sig().as_str()
    }

    pub fn number(self) -> i32 {
        self.sig() as i32
    }
}

/// Signals blocked in this thread and every thread it starts, waiting for [`Blocked::listen`].
pub struct Blocked {
    set: SigSet,
}

/// Blocks `signals` in the calling thread, and so in every thread it starts from now on. Call
/// it in `main` before any thread is started: a thread started earlier would still take the
/// signal, with its default action. Signals that come before [`Blocked::listen`] wait.
pub fn block(signals: &[Signal]) -> io::Result<Blocked> {
    let set = set_of(signals);
    set.thread_block().map_err(io::Error::from)?;
    Ok(Blocked { set })
}

fn set_of(signals: &[Signal]) -> SigSet {
    let mut set = SigSet::empty();
    for s in signals {
        set.add(s.sig());
    }
    set
}

impl Blocked {
    /// Starts the `signals` thread, which calls `on_signal` for each of `signals` (blocked
    /// already), one at a time.
    pub fn listen(
        &self,
        signals: &[Signal],
        on_signal: impl FnMut(Signal) + Send + 'static,
    ) -> io::Result<Listener> {
        let set = set_of(signals);
        debug_assert!(signals.iter().all(|s| self.set.contains(s.sig())));
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(io::Error::from)?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut SourceFd(&fd.as_raw_fd()), SIGNALS, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let stopping = Arc::new(AtomicBool::new(false));
        let thread_stopping = Arc::clone(&stopping);
        let handle = std::thread::Builder::new()
            .name("signals".into())
            .stack_size(STACK)
            .spawn(move || run(poll, &fd, &thread_stopping, on_signal))?;
        Ok(Listener {
            waker,
            stopping,
            handle: Some(handle),
        })
    }

    /// Calls `on_stop` (on ctrlc's thread) for each of `signals`, SIGINT and optionally
    /// SIGTERM, through `ctrlc`. Once per process. Until [`StopSignals::stop`], those signals
    /// are unblocked on `signals-stop` alone, so their handler interrupts nobody's work.
    pub fn on_stop(
        &self,
        signals: &[Signal],
        on_stop: impl FnMut() + Send + 'static,
    ) -> io::Result<StopSignals> {
        let set = set_of(signals);
        debug_assert!(signals.iter().all(|s| self.set.contains(s.sig())));
        ctrlc::set_handler(on_stop).map_err(|e| io::Error::new(io::ErrorKind::Other, e))?;
        let done = Arc::new(Stop::new());
        let thread_done = Arc::clone(&done);
        let handle = std::thread::Builder::new()
            .name("signals-stop".into())
            .stack_size(STOP_STACK)
            .spawn(move || {
                if let Err(e) = set.thread_unblock() {
                    error!("cannot receive Ctrl-C or SIGTERM ({e}); stopping");
                    return;
                }
                // The handler interrupts this wait; it only has to go on waiting.
                while !thread_done.wait(Duration::from_secs(3600)) {}
                // Blocked again before the thread goes: a late signal waits, unhandled.
                let _ = set.thread_block();
            })?;
        Ok(StopSignals {
            done,
            handle: Some(handle),
        })
    }
}

/// The stop signals' thread (see [`Blocked::on_stop`]).
pub struct StopSignals {
    done: Arc<Stop>,
    handle: Option<JoinHandle<()>>,
}

impl StopSignals {
    /// Ends the thread; Ctrl-C and SIGTERM stay blocked from then on.
    pub fn stop(mut self) {
        self.done.set();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// The running `signals` thread.
pub struct Listener {
    waker: Arc<Waker>,
    stopping: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Listener {
    /// Ends the thread (once the closure has returned, if it is running) and waits for it.
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn run(mut poll: Poll, fd: &SignalFd, stopping: &AtomicBool, mut on_signal: impl FnMut(Signal)) {
    let mut events = Events::with_capacity(8);
    while !stopping.load(Ordering::SeqCst) {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // Every signal above is blocked for good: without this thread SIGTERM would be
            // ignored. Stop, the one thing left to do that the operator asked for.
            error!("cannot wait for signals any more ({e}); stopping");
            on_signal(Signal::Terminate);
            return;
        }
        // Edge-triggered: read until nothing is left.
        loop {
            match fd.read_signal() {
                Ok(Some(info)) => {
                    if let Some(signal) = Signal::from_number(info.ssi_signo) {
                        // A bug in what a signal does must not leave the proxy deaf to the next.
                        if let Err(payload) =
                            panic::catch_unwind(AssertUnwindSafe(|| on_signal(signal)))
                        {
                            error!(
                                "internal error while handling {}: {}",
                                signal.name(),
                                crate::base::threads::panic_message(&*payload)
                            );
                        }
                    }
                }
                Ok(None) => break,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    error!("cannot read a signal ({e}); stopping");
                    on_signal(Signal::Terminate);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_named_and_numbered_as_kill_knows_them() {
        assert_eq!(Signal::HangUp.name(), "SIGHUP");
        assert_eq!(Signal::Interrupt.number(), 2);
        assert_eq!(Signal::Terminate.number(), 15);
        let usr1 = Signal::User1.number() as u32;
        assert_eq!(Signal::from_number(usr1), Some(Signal::User1));
        assert_eq!(Signal::from_number(Sig::SIGUSR2 as u32), None);
    }
}
