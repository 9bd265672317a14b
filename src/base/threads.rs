//! Every thread fxproxy starts: named, with a bounded stack, and counted from the moment it is
//! asked for until the kernel has really let it go. A thread whose body has returned still
//! holds its stack, its signal stack and its task for a moment; with thousands of clients
//! leaving at once that moment adds up, so a thread is counted out only once it has been
//! joined (by the `reaper` thread). Admission relies on this count to stay under the
//! process's thread ceiling (see [`crate::base::ceiling`]), and shutdown waits on it.

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// Stack of the reaper thread: it only joins threads and runs their `on_gone` callbacks.
const REAPER_STACK: usize = 64 * 1024;

/// What is run once a thread is gone: typically gives back the place it held.
type OnGone = Box<dyn FnOnce() + Send>;

enum Reap {
    /// The thread with this id has run its body and is about to exit.
    Finished(u64),
    Stop,
}

struct Entry {
    handle: JoinHandle<()>,
    on_gone: OnGone,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    /// Threads asked for and not yet joined.
    live: usize,
    entries: HashMap<u64, Entry>,
}

/// The process's threads, as fxproxy started them.
pub struct Threads {
    registry: Mutex<Registry>,
    gone: Condvar,
    reap: Sender<Reap>,
}

impl Threads {
    /// Starts the `reaper` thread, which joins every thread started here once its body is done.
    pub fn start() -> io::Result<Arc<Threads>> {
        let (reap, requests) = crossbeam_channel::unbounded();
        let threads = Arc::new(Threads {
            registry: Mutex::new(Registry::default()),
            gone: Condvar::new(),
            reap,
        });
        let reaper = Arc::clone(&threads);
        std::thread::Builder::new()
            .name("reaper".into())
            .stack_size(REAPER_STACK)
            .spawn(move || reaper.reap(requests))?;
        Ok(threads)
    }

    fn reap(&self, requests: Receiver<Reap>) {
        while let Ok(Reap::Finished(id)) = requests.recv() {
            // The spawner holds the registry lock until the entry is in, so it is here.
            let entry = self.registry.lock().entries.remove(&id);
            if let Some(entry) = entry {
                // Returns once the thread has exited: its stacks are unmapped (or cached by
                // the C library) and its task is gone.
                let _ = entry.handle.join();
                (entry.on_gone)();
                let mut registry = self.registry.lock();
                registry.live -= 1;
                if registry.live == 0 {
                    self.gone.notify_all();
                }
            }
        }
    }

    /// Starts a thread named `name` running `body`; `on_gone` runs after it has exited. On
    /// failure (the kernel refused a thread) `on_gone` has run already and the error says why.
    pub fn spawn(
        &self,
        name: String,
        stack: usize,
        body: impl FnOnce() + Send + 'static,
        on_gone: impl FnOnce() + Send + 'static,
    ) -> io::Result<()> {
        let mut registry = self.registry.lock();
        registry.next_id += 1;
        let id = registry.next_id;
        let finished = Finished {
            id,
            reap: self.reap.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name(name)
            .stack_size(stack)
            .spawn(move || {
                // Dropped last, a panic included: the reaper then joins this thread.
                let _finished = finished;
                body();
            });
        match spawned {
            Ok(handle) => {
                registry.live += 1;
                registry.entries.insert(
                    id,
                    Entry {
                        handle,
                        on_gone: Box::new(on_gone),
                    },
                );
                Ok(())
            }
            Err(e) => {
                drop(registry);
                on_gone();
                Err(e)
            }
        }
    }

    /// Threads started here that the kernel still holds (running, or finishing).
    pub fn live(&self) -> usize {
        self.registry.lock().live
    }

    /// Waits until every thread is gone or `deadline` passes; returns how many are left.
    pub fn wait_all(&self, deadline: Instant) -> usize {
        let mut registry = self.registry.lock();
        while registry.live > 0 {
            if self.gone.wait_until(&mut registry, deadline).timed_out() {
                break;
            }
        }
        registry.live
    }

    /// Ends the reaper once the threads it should join are gone (or given up on).
    pub fn stop_reaper(&self) {
        let _ = self.reap.send(Reap::Stop);
    }
}

/// Tells the reaper a thread's body is over, however it ended.
struct Finished {
    id: u64,
    reap: Sender<Reap>,
}

impl Drop for Finished {
    fn drop(&mut self) {
        let _ = self.reap.send(Reap::Finished(self.id));
    }
}

/// The text of a panic's payload, for the log.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "no message"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn a_thread_is_counted_until_it_has_been_joined() {
        let threads = Threads::start().unwrap();
        let gone = Arc::new(AtomicUsize::new(0));
        let (go, wait) = crossbeam_channel::bounded::<()>(0);
        for i in 0..3 {
            let wait = wait.clone();
            let gone = Arc::clone(&gone);
            threads
                .spawn(
                    format!("test-{i}"),
                    64 * 1024,
                    move || {
                        let _ = wait.recv();
                    },
                    move || {
                        gone.fetch_add(1, Ordering::SeqCst);
                    },
                )
                .unwrap();
        }
        assert_eq!(threads.live(), 3);
        assert_eq!(gone.load(Ordering::SeqCst), 0);
        drop(go);
        assert_eq!(
            threads.wait_all(Instant::now() + Duration::from_secs(10)),
            0
        );
        assert_eq!(gone.load(Ordering::SeqCst), 3);
        threads.stop_reaper();
    }

    #[test]
    fn a_panicking_thread_is_reaped_too() {
        let threads = Threads::start().unwrap();
        threads
            .spawn("test-panic".into(), 64 * 1024, || panic!("injected"), || {})
            .unwrap();
        assert_eq!(
            threads.wait_all(Instant::now() + Duration::from_secs(10)),
            0
        );
        threads.stop_reaper();
    }
}
