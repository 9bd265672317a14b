//! Wires the proxy together: binds the client port, starts the upstream, distributor, watcher,
//! accept and housekeeping threads, and takes them all down again in under two seconds.

use crate::client;
use crate::clock::Clock;
use crate::config::{Config, Upstream};
use crate::distributor::{self, Hub, Kick};
use crate::keys::KeyStore;
use crate::metrics::Metrics;
use crate::pending::Pending;
use crate::sim::{SimOptions, SimServer};
use crate::stop::Stop;
use crate::upstream;
use crate::watcher::Watcher;
use log::{error, info, warn};
use parking_lot::{Condvar, Mutex, RwLock};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Stack for each client thread: the writer loop is shallow; measured use is far below this.
const CLIENT_STACK: usize = 128 * 1024;
/// Stack for the few service threads (TLS handshakes and logging run there).
const SERVICE_STACK: usize = 512 * 1024;
/// How long shutdown waits for clients to take their close frames.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);
/// Threads that are not clients: upstream, distributor, accept, housekeeping, and slack.
const SERVICE_THREADS: usize = 16;
/// How often the key file's modification time is looked at.
const KEY_FILE_CHECK: Duration = Duration::from_secs(2);

/// What every connection thread shares.
pub struct Context {
    pub config: Config,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub watcher: Arc<Watcher>,
    pub stop: Arc<Stop>,
    /// Connections not yet authenticated, bounded by `max_pending_connections`.
    pub pending: Pending,
    /// Test-only echo service (see [`Server::start_echo`]).
    pub echo: bool,
    keys: RwLock<Arc<KeyStore>>,
    connections: AtomicUsize,
    threads: Threads,
    /// Raised when a service thread fails; the process should stop with an error.
    failure: Arc<Failure>,
}

/// A service thread's failure: recorded, logged, and told to whoever waits on the alarm.
struct Failure {
    failed: AtomicBool,
    alarm: Arc<Stop>,
}

impl Failure {
    fn raise(&self, thread: &str, why: &str) {
        error!(
            "internal error: the {thread} thread failed ({why}); stopping so the service manager can restart fxproxy"
        );
        self.failed.store(true, Ordering::SeqCst);
        self.alarm.set();
    }
}

impl Context {
    pub fn keys(&self) -> Arc<KeyStore> {
        Arc::clone(&self.keys.read())
    }

    /// Takes a place among `max_clients` WebSocket connections, if one is free.
    pub fn admit(&self) -> Option<Admitted<'_>> {
        let before = self.connections.fetch_add(1, Ordering::SeqCst);
        if before >= self.config.max_clients {
            self.connections.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Admitted(&self.connections))
    }

    /// Takes a place whether or not one is free: for a newcomer taking over the place of a
    /// connection that is being evicted and has yet to give it back.
    pub fn take_place(&self) -> Admitted<'_> {
        self.connections.fetch_add(1, Ordering::SeqCst);
        Admitted(&self.connections)
    }
}

/// A place among `max_clients`, given back on drop.
pub struct Admitted<'a>(&'a AtomicUsize);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts live threads so shutdown can wait for them with a deadline.
#[derive(Default)]
struct Threads {
    live: Mutex<usize>,
    done: Condvar,
}

struct ThreadGuard(Arc<Context>);

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        let mut live = self.0.threads.live.lock();
        *live -= 1;
        if *live == 0 {
            self.0.threads.done.notify_all();
        }
    }
}

/// Starts a service thread. Should one panic, the proxy cannot go on correctly (no quotes, no
/// new clients): the panic is logged, the failure recorded and the alarm raised, so the
/// process shuts down with close 1001 for every client and exits 1, and the service manager
/// starts it again. A silent half-working proxy would be worse.
fn spawn_service(
    ctx: &Arc<Context>,
    name: &str,
    body: impl FnOnce(&Arc<Context>) + Send + 'static,
) -> io::Result<()> {
    let thread = name.to_string();
    spawn(ctx, thread.clone(), SERVICE_STACK, move |ctx| {
        if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| body(ctx))) {
            ctx.failure.raise(&thread, panic_message(&*payload));
        }
    })
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

fn spawn(
    ctx: &Arc<Context>,
    name: String,
    stack: usize,
    body: impl FnOnce(&Arc<Context>) + Send + 'static,
) -> io::Result<()> {
    *ctx.threads.live.lock() += 1;
    let guard = ThreadGuard(Arc::clone(ctx));
    let result = std::thread::Builder::new()
        .name(name)
        .stack_size(stack)
        .spawn(move || {
            let guard = guard;
            body(&guard.0);
        });
    // On failure the closure, and with it the guard, has been dropped: the count is right.
    result.map(|_| ())
}

#[derive(Debug)]
pub enum StartError {
    Bind(SocketAddr, io::Error),
    Keys(String),
    Thread(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            StartError::Keys(e) => write!(f, "{e}"),
            StartError::Thread(e) => write!(f, "cannot start a thread: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A running proxy.
pub struct Server {
    ctx: Arc<Context>,
    addr: SocketAddr,
    sim: Option<SimServer>,
}

impl Server {
    pub fn start(config: Config) -> Result<Server, StartError> {
        Server::start_with(config, Arc::new(Stop::new()), false, Clock::system())
    }

    /// Starts the proxy; `alarm` is set if it fails on its own (a service thread panicked),
    /// so a caller waiting for a termination signal on it wakes up and shuts down.
    pub fn start_with_alarm(config: Config, alarm: Arc<Stop>) -> Result<Server, StartError> {
        Server::start_with(config, alarm, false, Clock::system())
    }

    /// Starts the proxy on `clock` instead of the system clock: quote times, ages and the
    /// market's hours all follow it, so a test can make it Friday night or Saturday.
    pub fn start_with_clock(config: Config, clock: Clock) -> Result<Server, StartError> {
        Server::start_with(config, Arc::new(Stop::new()), false, clock)
    }

    /// For tests only: every accepted connection goes through the production accept path
    /// (request parsing, limits, handshake, timeouts, buffer sizes, message budget and the
    /// mapping of protocol errors to close codes), but instead of the greeting and the auth
    /// it echoes each message back. This is what the Autobahn fuzzing client expects.
    #[doc(hidden)]
    pub fn start_echo(config: Config) -> Result<Server, StartError> {
        Server::start_with(config, Arc::new(Stop::new()), true, Clock::system())
    }

    fn start_with(
        config: Config,
        alarm: Arc<Stop>,
        echo: bool,
        clock: Clock,
    ) -> Result<Server, StartError> {
        // rustls needs one process-wide crypto provider for wss://; ring is the one compiled
        // in. An error only means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let keys = KeyStore::load(&config.user_keys_file).map_err(StartError::Keys)?;
        let listener =
            TcpListener::bind(config.listen).map_err(|e| StartError::Bind(config.listen, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Bind(config.listen, e))?;
        let metrics = Arc::new(Metrics::with_clock(clock));
        let hub = Arc::new(Hub::new(
            &config.symbols,
            config.client_queue_len,
            config.max_clients_per_key,
            config.batch_delay,
            Arc::clone(&metrics),
        ));
        let failure = Arc::new(Failure {
            failed: AtomicBool::new(false),
            alarm,
        });
        let on_failure = Arc::clone(&failure);
        let (watcher, watcher_thread) = Watcher::start(move |why| on_failure.raise("watcher", why))
            .map_err(StartError::Thread)?;
        drop(watcher_thread);
        let sim = match config.upstream {
            Upstream::Sim => Some(
                SimServer::start(SimOptions {
                    listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                    rate: config.sim_rate,
                    symbols: Vec::new(),
                })
                .map_err(StartError::Thread)?,
            ),
            Upstream::Url(_) => None,
        };
        let url = match (&config.upstream, &sim) {
            (Upstream::Url(url), _) => url.clone(),
            (Upstream::Sim, Some(sim)) => format!("ws://{}/", sim.local_addr()),
            (Upstream::Sim, None) => unreachable!("the simulator was started above"),
        };
        let settings = upstream::Settings {
            url,
            subscribe: config.subscribe_text(),
            connect_timeout: config.upstream_connect_timeout,
            ping_every: config.upstream_ping,
            stale_after: config.upstream_stale,
            market: config.market(),
            backoff_min: config.upstream_backoff_min,
            backoff_max: config.upstream_backoff_max,
        };
        let config_pending = config.max_pending_connections;
        let ctx = Arc::new(Context {
            config,
            hub,
            metrics,
            watcher,
            stop: Arc::new(Stop::new()),
            pending: Pending::new(config_pending),
            echo,
            keys: RwLock::new(Arc::new(keys)),
            connections: AtomicUsize::new(0),
            threads: Threads::default(),
            failure,
        });
        // The channel from upstream to distributor is bounded: should the distributor ever
        // fall behind, the upstream read waits and TCP pushes back on the source.
        let (frames_tx, frames_rx) = crossbeam_channel::bounded(8192);
        spawn_service(&ctx, "distributor", move |ctx| {
            distributor::run(Arc::clone(&ctx.hub), frames_rx)
        })
        .map_err(StartError::Thread)?;
        spawn_service(&ctx, "upstream", move |ctx| {
            upstream::run(
                settings,
                frames_tx,
                Arc::clone(&ctx.metrics),
                Arc::clone(&ctx.stop),
            )
        })
        .map_err(StartError::Thread)?;
        spawn_service(&ctx, "accept", move |ctx| accept_loop(ctx, listener))
            .map_err(StartError::Thread)?;
        spawn_service(&ctx, "housekeeping", housekeeping).map_err(StartError::Thread)?;
        info!("listening on {addr}");
        Ok(Server { ctx, addr, sim })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop_signal(&self) -> Arc<Stop> {
        Arc::clone(&self.ctx.stop)
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.ctx.metrics)
    }

    /// Whether a service thread failed (see [`Server::start_with_alarm`]).
    pub fn failed(&self) -> bool {
        self.ctx.failure.failed.load(Ordering::SeqCst)
    }

    /// Stops accepting, sends every client close 1001, closes the upstream and waits (at
    /// most about two seconds in all) for the threads to finish.
    pub fn shutdown(self) {
        let started = Instant::now();
        let ctx = &self.ctx;
        ctx.stop.set();
        // A blocking accept() only returns for a connection: make one.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_millis(200));
        let kicked = ctx.hub.kick_where(Kick::Shutdown, |_| true);
        info!("shutting down: closing {kicked} client(s)");
        {
            let deadline = started + SHUTDOWN_GRACE;
            let mut live = ctx.threads.live.lock();
            while *live > 0 {
                if ctx.threads.done.wait_until(&mut live, deadline).timed_out() {
                    warn!("shutdown: {} thread(s) still busy; leaving them", *live);
                    break;
                }
            }
        }
        ctx.watcher.stop();
        if let Some(sim) = self.sim {
            sim.stop();
        }
        info!("stopped in {:.2} s", started.elapsed().as_secs_f64());
    }
}

fn accept_loop(ctx: &Arc<Context>, listener: TcpListener) {
    let mut next_id: u64 = 0;
    let mut starved_logged = false;
    let mut spawn_failures = distributor::RateLimited::new(Duration::from_secs(10));
    for conn in listener.incoming() {
        if ctx.stop.is_set() {
            return;
        }
        match conn {
            Ok(stream) => {
                starved_logged = false;
                // A last line of defence for threads and descriptors: connections in their
                // handshake are bounded apart (`Pending`), the oldest making room for new.
                let most =
                    ctx.config.max_clients + ctx.config.max_pending_connections + SERVICE_THREADS;
                if *ctx.threads.live.lock() > most {
                    ctx.metrics
                        .rejected_connections
                        .fetch_add(1, Ordering::Relaxed);
                    drop(stream);
                    continue;
                }
                next_id += 1;
                let peer = stream
                    .peer_addr()
                    .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
                let name = format!("client-{next_id}");
                let id = next_id;
                if let Err(e) = spawn(ctx, name, CLIENT_STACK, move |ctx| {
                    client::serve(ctx, stream, peer, id)
                }) {
                    spawn_failures.note(|n| {
                        error!("cannot start a thread for a new client ({n} refused): {e}; raise TasksMax / kernel.threads-max / vm.max_map_count")
                    });
                }
            }
            Err(e) if is_out_of_descriptors(&e) => {
                // Keep serving the clients we have; try again after a pause rather than spin.
                if !starved_logged {
                    error!("cannot accept new clients: {e}; raise LimitNOFILE (the open-file limit). Existing clients are unaffected; retrying");
                    starved_logged = true;
                }
                if ctx.stop.wait(Duration::from_millis(250)) {
                    return;
                }
            }
            Err(e) => warn!("accept failed: {e}"),
        }
    }
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

/// Re-reads the key file when it changes and writes the periodic status line.
fn housekeeping(ctx: &Arc<Context>) {
    let path = ctx.config.user_keys_file.clone();
    let mut stamp = file_stamp(&path);
    let mut last_key_check = Instant::now();
    let mut last_status = Instant::now();
    let mut counters = [0u64; 3];
    while !ctx.stop.wait(Duration::from_secs(1)) {
        if last_key_check.elapsed() >= KEY_FILE_CHECK {
            last_key_check = Instant::now();
            let now = file_stamp(&path);
            if now != stamp {
                stamp = now;
                reload_keys(ctx);
            }
        }
        if let Some(every) = ctx.config.status_interval {
            let elapsed = last_status.elapsed();
            if elapsed >= every {
                last_status = Instant::now();
                info!("{}", ctx.metrics.status_line(&mut counters, elapsed));
            }
        }
    }
}

/// Modification time, size and inode: an editor that writes a new file and renames it over
/// the old one changes the inode even within one timestamp tick.
fn file_stamp(path: &std::path::Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

fn reload_keys(ctx: &Context) {
    match KeyStore::load(&ctx.config.user_keys_file) {
        Ok(store) => {
            ctx.metrics.key_reloads.fetch_add(1, Ordering::Relaxed);
            let store = Arc::new(store);
            *ctx.keys.write() = Arc::clone(&store);
            let kicked = ctx
                .hub
                .kick_where(Kick::KeyRevoked, |c| !ctx.hub.still_entitled(c, &store));
            info!(
                "reloaded {} client key(s); disconnected {kicked} client(s) whose key was removed or narrowed",
                store.len()
            );
        }
        Err(e) => {
            ctx.metrics
                .key_reload_failures
                .fetch_add(1, Ordering::Relaxed);
            error!("key file changed but cannot be used, keeping the previous keys: {e}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_service_thread_raises_the_alarm_and_marks_the_server_failed() {
        let dir = std::env::temp_dir().join(format!("fxproxy-failure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("keys"), "a-client-key-123\n").unwrap();
        let text = "listen = 127.0.0.1:0\nupstream_url = sim\nsymbols = EURUSD\n\
                    user_keys_file = keys\nstatus_interval_secs = 0\n";
        let config = crate::config::parse(text, &dir.join("proxy.conf")).unwrap();
        let alarm = Arc::new(Stop::new());
        let server = Server::start_with_alarm(config, Arc::clone(&alarm)).unwrap();
        assert!(!server.failed());
        spawn_service(&server.ctx, "test-fault", |_| panic!("injected fault")).unwrap();
        assert!(alarm.wait(Duration::from_secs(10)), "the alarm is raised");
        assert!(server.failed());
        server.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
