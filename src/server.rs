//! Wires the proxy together: binds the client port (or takes the socket systemd passed),
//! works out the thread ceiling, starts the upstream, distributor, watcher, admission and
//! housekeeping threads, hands each admitted client a thread of its own, and takes them all
//! down again: in under two seconds, or, when systemd holds the listening socket (a restart),
//! after closing the clients over `drain_secs`. Its [`Control`] is what the signals reach: a
//! reload (SIGHUP), a state dump (SIGUSR1), and cutting a drain short.

use crate::backbone;
use crate::base::ceiling::{self, Ceiling};
use crate::base::clock::Clock;
use crate::base::heartbeat::Heartbeats;
use crate::base::live::Cached;
use crate::base::metrics::Metrics;
use crate::base::stop::Stop;
use crate::base::threads::{panic_message, Threads};
use crate::clients::admission::{Admission, Asker, HandOff};
use crate::clients::client;
use crate::clients::context::{Context, Serve};
use crate::clients::guard;
use crate::clients::keys::KeyStore;
use crate::clients::listener::Port;
use crate::clients::places::Places;
use crate::clients::tls::{self, ServerTls, TlsFiles};
use crate::clients::watcher::Watcher;
use crate::config::{Config, ConfigError};
use crate::fanout::distributor::{self, Hub, V2Ticks};
use crate::fanout::slot::Kick;
use crate::feed::record::Writer;
use crate::feed::setup::{self, Plan, SourceError, Sources};
use crate::feed::sim::SimServer;
use crate::feed::upstream;
use crate::feed::v2;
use crate::ops::admin::Admin;
use crate::ops::reload::{Commit, Reloaded, Reloader};
use log::{error, info, warn};
use mio::Waker;
use parking_lot::Mutex;
use std::cell::Cell;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Stack for each client thread: the writer loop is shallow; measured use is far below this.
pub const CLIENT_STACK: usize = 128 * 1024;
/// Stack for the few service threads (TLS handshakes and logging run there).
const SERVICE_STACK: usize = 512 * 1024;
/// How long shutdown waits for clients to take their close frames.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);
/// Threads that are not clients: main, upstream, distributor, watcher, admission, http,
/// admin, housekeeping, reaper, signals, signals-stop and ctrlc's own, state-dump, watchdog,
/// the simulator's, the recorder, the backbone's, and slack.
pub const SERVICE_THREADS: u64 = 20;
/// How often the key file's modification time is looked at.
const KEY_FILE_CHECK: Duration = Duration::from_secs(2);
/// A drain closes the clients due at once, then sleeps at least this long: ten thousand
/// clients over two seconds are closed fifty at a time, not one every 200 µs.
const DRAIN_TICK: Duration = Duration::from_millis(10);

/// A service thread's failure: recorded, logged, and told to whoever waits on the alarm.
struct Failure {
    failed: AtomicBool,
    alarm: Arc<Stop>,
}

impl Failure {
    fn raise(&self, thread: &str, why: &str) {
        error!(
            "internal error: the {thread} thread failed ({}); stopping so the service manager can restart fxproxy",
            crate::base::logsafe::escaped(why)
        );
        self.failed.store(true, Ordering::SeqCst);
        self.alarm.set();
    }
}

/// Starts a service thread. Should one panic, the proxy cannot go on correctly (no quotes, no
/// new clients): the panic is logged, the failure recorded and the alarm raised, so the
/// process shuts down with close 1001 for every client and exits 1, and the service manager
/// starts it again. A silent half-working proxy would be worse.
fn spawn_service(
    threads: &Threads,
    failure: &Arc<Failure>,
    name: &str,
    body: impl FnOnce() + Send + 'static,
) -> io::Result<()> {
    let thread = name.to_string();
    let failure = Arc::clone(failure);
    threads.spawn(
        thread.clone(),
        SERVICE_STACK,
        move || {
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(body)) {
                failure.raise(&thread, panic_message(&*payload));
            }
        },
        || {},
    )
}

#[derive(Debug)]
pub enum StartError {
    Bind(SocketAddr, io::Error),
    Keys(String),
    /// A TLS file (certificate, key, CA) is missing, unreadable or wrong.
    Tls(String),
    Thread(io::Error),
    /// The provider's template, or what it makes of the configuration.
    Config(ConfigError),
    /// The recording to replay, or the file to record to, cannot be opened.
    File(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            StartError::Keys(e) | StartError::Tls(e) => write!(f, "{e}"),
            StartError::Thread(e) => write!(f, "cannot start a thread: {e}"),
            StartError::Config(e) => write!(f, "{e}"),
            StartError::File(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// What the start-up log and `--check-config` say about the thread ceiling and `max_clients`.
pub fn capacity_report(config: &Config, ceiling: &Ceiling) -> (String, Vec<String>) {
    let clients = ceiling.clients(SERVICE_THREADS);
    let serving = (config.max_clients as u64).min(clients);
    let line = format!(
        "thread ceiling: {ceiling}; serving at most {serving} clients ({})",
        if serving < config.max_clients as u64 {
            "the thread ceiling"
        } else {
            "max_clients"
        }
    );
    let warnings = ceiling.warnings(
        config.max_clients as u64,
        config.max_pending_connections as u64,
        SERVICE_THREADS,
    );
    (line, warnings)
}

/// What the service manager hands the proxy besides its configuration.
pub struct Launch {
    /// The listening socket systemd passed (socket activation; see
    /// [`crate::clients::listener::from_service_manager`]). `None`: bind `listen`.
    pub listener: Option<TcpListener>,
    /// How long the distributor and the admission loop may go without a heartbeat when idle
    /// (see [`crate::ops::notify::beat_every`]).
    pub beat_every: Duration,
    /// What an admitted connection is given: quotes, but for the Autobahn test's server.
    pub serve: Serve,
}

impl Default for Launch {
    fn default() -> Launch {
        Launch {
            listener: None,
            beat_every: crate::base::heartbeat::DEFAULT_EVERY,
            serve: Serve::Quotes,
        }
    }
}

/// A running proxy.
pub struct Server {
    ctx: Arc<Context>,
    addr: SocketAddr,
    sources: Sources,
    admission: Arc<Waker>,
    /// `admin_listen`: its address, and the waker that ends its thread.
    admin: Option<(SocketAddr, Arc<Waker>)>,
    failure: Arc<Failure>,
    control: Control,
}

/// What a signal can ask of a running proxy; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Control {
    ctx: Arc<Context>,
    reloader: Arc<Reloader>,
    asker: Asker,
    /// A state dump is being written.
    dumping: Arc<AtomicBool>,
    /// Set to cut a drain short (a second SIGTERM).
    hurry: Arc<Stop>,
}

impl Control {
    /// Reloads proxy.conf and the key file (SIGHUP; see [`crate::ops::reload`]). An error means
    /// nothing changed; it has been logged and counted already.
    pub fn reload(&self) -> Result<Reloaded, String> {
        if self.ctx.stop.is_set() {
            return Err("the proxy is stopping".to_string());
        }
        self.reloader.reload()
    }

    /// Cuts a drain short: the clients not closed yet are closed at once (a second SIGTERM
    /// or SIGINT while the proxy drains).
    pub fn hurry(&self) {
        self.hurry.set();
    }

    /// The reload machinery, for a part of the proxy with something of its own to re-read
    /// on a reload (see [`Reloader::add_step`]).
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// Starts writing a state dump to the log (SIGUSR1; see [`crate::ops::dump`]) on a thread of
    /// its own, unless one is being written already. True if it started.
    pub fn dump_state(&self) -> bool {
        if self.ctx.stop.is_set() {
            return false;
        }
        if self.dumping.swap(true, Ordering::SeqCst) {
            warn!("a state dump is being written already; not starting another");
            return false;
        }
        let ctx = Arc::clone(&self.ctx);
        let asker = self.asker.clone();
        let dumping = Arc::clone(&self.dumping);
        let started = self.ctx.threads.spawn(
            "state-dump".to_string(),
            SERVICE_STACK,
            move || {
                // A bug in the dump must not take the proxy down: it is only a dump.
                if let Err(payload) =
                    panic::catch_unwind(AssertUnwindSafe(|| crate::ops::dump::write(&ctx, &asker)))
                {
                    error!("the state dump failed: {}", panic_message(&*payload));
                }
            },
            // Another may start once this thread is gone.
            move || dumping.store(false, Ordering::SeqCst),
        );
        match started {
            Ok(()) => true,
            Err(e) => {
                error!("cannot start a thread for the state dump: {e}");
                false
            }
        }
    }
}

impl Server {
    pub fn start(config: Config) -> Result<Server, StartError> {
        let alarm = Arc::new(Stop::new());
        Server::start_with(config, alarm, Clock::system(), Launch::default())
    }

    /// Starts the proxy; `alarm` is set if it fails on its own (a service thread panicked),
    /// so a caller waiting for a termination signal on it wakes up and shuts down.
    pub fn start_with_alarm(config: Config, alarm: Arc<Stop>) -> Result<Server, StartError> {
        Server::start_with(config, alarm, Clock::system(), Launch::default())
    }

    /// As [`Server::start_with_alarm`], with what the service manager handed the process.
    pub fn start_launched(
        config: Config,
        alarm: Arc<Stop>,
        launch: Launch,
    ) -> Result<Server, StartError> {
        Server::start_with(config, alarm, Clock::system(), launch)
    }

    /// Starts the proxy on `clock` instead of the system clock: quote times, ages and the
    /// market's hours all follow it, so a test can make it Friday night or Saturday.
    pub fn start_with_clock(config: Config, clock: Clock) -> Result<Server, StartError> {
        let alarm = Arc::new(Stop::new());
        Server::start_with(config, alarm, clock, Launch::default())
    }

    /// For the Autobahn test only (the `autobahn` feature): every accepted connection goes
    /// through the production accept path, but instead of the greeting and the auth it echoes
    /// each message back (see `clients::echo`). This is what the fuzzing client expects.
    #[cfg(feature = "autobahn")]
    pub fn start_echo(config: Config) -> Result<Server, StartError> {
        let alarm = Arc::new(Stop::new());
        let launch = Launch {
            serve: Serve::Echo,
            ..Launch::default()
        };
        Server::start_with(config, alarm, Clock::system(), launch)
    }

    fn start_with(
        mut config: Config,
        alarm: Arc<Stop>,
        clock: Clock,
        launch: Launch,
    ) -> Result<Server, StartError> {
        // rustls needs one process-wide crypto provider for wss://; ring is the one compiled
        // in. An error only means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Everything the configuration names is read and checked before anything starts.
        let feed = Plan::new(&mut config).map_err(StartError::Config)?;
        let keys = KeyStore::load(&config.user_keys_file).map_err(StartError::Keys)?;
        // Refused before anything is bound. Under socket activation the socket's address, not
        // `listen`, says who can connect.
        let reachable_at = match &launch.listener {
            Some(passed) => passed
                .local_addr()
                .map_err(|e| StartError::Bind(config.listen, e))?,
            None => config.listen,
        };
        guard::check(&config, reachable_at, &keys).map_err(StartError::Keys)?;
        let port =
            Port::open(&config, launch.listener).map_err(|(at, e)| StartError::Bind(at, e))?;
        let backbone = backbone::Settings::of(&config, port.addr).map_err(StartError::Config)?;
        let metrics = Arc::new(Metrics::with_clock(clock));
        let server_tls = server_tls(&config, &metrics)?;
        let (addr, restart_on_stop) = (port.addr, port.held_by_systemd);
        let mut admission = Admission::new(port.listener).map_err(|e| StartError::Bind(addr, e))?;
        let admin = bind_admin(&config)?;
        let (ceiling, places) = capacity(&config);
        // The stages, from the feed to the clients.
        let hub = Arc::new(hub(&config, &metrics, &feed));
        let failure = Arc::new(Failure {
            failed: AtomicBool::new(false),
            alarm,
        });
        let watcher = start_watcher(&failure)?;
        let threads = Threads::start().map_err(StartError::Thread)?;
        let sources = Sources::start(&config).map_err(|e| match e {
            SourceError::Sim(e) => StartError::Thread(e),
            SourceError::Recording(e) => StartError::File(e),
        })?;
        let (recorder, record_writer) = setup::recorder(&config, &metrics)
            .map_err(StartError::File)?
            .unzip();
        let publish_symbol_of: backbone::SymbolOf = Box::new(feed.symbol_of());
        for line in &feed.network.said {
            info!("{line}");
        }
        let upstream = feed
            .settings(&config, &sources, recorder)
            .map_err(StartError::Config)?;
        let status = backbone.as_ref().map(backbone_status);
        let mut context = Context::new(
            config, hub, metrics, watcher, threads, ceiling, places, addr, keys, server_tls,
        );
        context.serve = launch.serve;
        context.backbone = status.clone();
        context.answer_http = crate::ops::endpoints::respond;
        context.restart_on_stop = restart_on_stop;
        context.heartbeats = Arc::new(Heartbeats::new(launch.beat_every));
        let ctx = Arc::new(context);
        let reloader = Arc::new(Reloader::new(Arc::clone(&ctx)));
        add_reload_steps(&reloader, &ctx, sources.sim.as_ref());
        let spawn = |name: &str, body: Box<dyn FnOnce() + Send>| {
            spawn_service(&ctx.threads, &failure, name, body)
        };
        start_feed(
            &ctx,
            upstream,
            record_writer,
            backbone.zip(status),
            publish_symbol_of,
            &spawn,
        )?;
        let (waker, asker) = (admission.waker(), admission.asker());
        if let Some(answerer) = admission.answerer() {
            // Plain requests on the client port (/metrics among them), off the admission
            // thread; ends when the admission loop stops and drops its end.
            let http_ctx = Arc::clone(&ctx);
            spawn("http", Box::new(move || answerer.run(&http_ctx))).map_err(StartError::Thread)?;
        }
        let admin = match admin {
            Some(admin) => Some(start_admin(admin, &ctx, &asker, &failure, &spawn)?),
            None => None,
        };
        start_admission(admission, &ctx, &failure, &spawn)?;
        let housekeeping_ctx = Arc::clone(&ctx);
        let housekeeping_reloader = Arc::clone(&reloader);
        spawn(
            "housekeeping",
            Box::new(move || housekeeping(&housekeeping_ctx, &housekeeping_reloader)),
        )
        .map_err(StartError::Thread)?;
        let scheme = if ctx.tls.is_some() { "wss" } else { "ws" };
        if restart_on_stop {
            info!("listening on {addr} ({scheme}://) on the socket systemd passed (socket activation): a stop closes clients with 1012 over drain_secs, and new connections wait in the socket's queue");
        } else {
            info!("listening on {addr} ({scheme}://)");
        }
        let control = Control {
            ctx: Arc::clone(&ctx),
            reloader,
            asker,
            dumping: Arc::new(AtomicBool::new(false)),
            hurry: Arc::new(Stop::new()),
        };
        Ok(Server {
            ctx,
            addr,
            sources,
            admission: waker,
            admin,
            failure,
            control,
        })
    }

    /// The `admin_listen` address, once bound (port 0 resolved), if one is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(at, _)| *at)
    }

    /// What signals reach: reload and state dump.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Reloads proxy.conf and the key file, as SIGHUP does.
    pub fn reload(&self) -> Result<Reloaded, String> {
        self.control.reload()
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
        self.failure.failed.load(Ordering::SeqCst)
    }

    /// The distributor's and the admission loop's heartbeats, for the watchdog.
    pub fn heartbeats(&self) -> Arc<Heartbeats> {
        Arc::clone(&self.ctx.heartbeats)
    }

    /// `drain_secs` as it is now (a reload may have changed it).
    pub fn drain(&self) -> Duration {
        self.ctx.config().drain
    }

    /// Whether systemd holds the listening socket, so that a stop is a restart (clients get
    /// 1012, spread over `drain_secs`).
    pub fn restarts_on_stop(&self) -> bool {
        self.ctx.restart_on_stop
    }

    /// Stops the proxy. How depends on who holds the listening socket:
    ///
    /// - This process alone (it bound `listen`): the proxy is going away. Accepting stops,
    ///   every client gets 1001 at once, the upstream closes, and the threads are waited for
    ///   (at most about two seconds in all).
    /// - systemd too (socket activation): the socket outlives the process, so this stop is a
    ///   restart and clients can come back at once. Accepting stops (new connections wait in
    ///   the socket's queue for the next process), quotes keep flowing, and the clients are
    ///   told 1012 (Service Restart) a few at a time over `drain_secs`, so that their
    ///   reconnects reach the next process spread out rather than as one wave; then as above.
    ///   A second SIGTERM ([`Control::hurry`]) closes the rest at once.
    pub fn shutdown(self) {
        let started = Instant::now();
        let ctx = &self.ctx;
        let restart = ctx.restart_on_stop;
        if restart {
            self.drain_clients();
        }
        ctx.stop.set();
        let _ = self.admission.wake();
        if let Some((_, admin)) = &self.admin {
            let _ = admin.wake();
        }
        let why = if restart {
            Kick::Restart
        } else {
            Kick::Shutdown
        };
        let kicked = ctx.hub.kick_where(why, |c| c.kicked() == Kick::None);
        info!("shutting down: closing {kicked} client(s)");
        let left = ctx.threads.wait_all(Instant::now() + SHUTDOWN_GRACE);
        if left > 0 {
            warn!("shutdown: {left} thread(s) still busy; leaving them");
        }
        ctx.watcher.stop();
        ctx.threads.stop_reaper();
        self.sources.stop();
        info!("stopped in {:.2} s", started.elapsed().as_secs_f64());
    }

    /// Accepts no more connections and closes the clients with 1012, spread evenly over
    /// `drain_secs`, while quotes keep flowing to those not closed yet. Clients that join
    /// meanwhile (their handshake began before the drain) are closed in turn, or at the end.
    fn drain_clients(&self) {
        let ctx = &self.ctx;
        ctx.draining.set();
        let _ = self.admission.wake();
        // A client closed before the admission loop has stopped accepting could reconnect to
        // this process and be dropped at the end: the closes wait for it (briefly: should the
        // loop be gone, nothing is accepted anyway).
        if !ctx.not_accepting.wait(SHUTDOWN_GRACE) {
            warn!("the admission loop did not stop accepting in time; draining anyway");
        }
        let drain = ctx.config().drain;
        let total = ctx.hub.client_count();
        info!(
            "restarting: accepting no more connections (they wait in the socket's queue); closing {total} client(s) with 1012 over {} s",
            drain.as_secs()
        );
        if total == 0 || drain.is_zero() {
            return;
        }
        let started = Instant::now();
        let mut due_so_far = 0;
        loop {
            let elapsed = started.elapsed();
            let due = if elapsed >= drain {
                total
            } else {
                // The i-th client is due at drain * i / total: one at once, the last at the end.
                1 + (total as u128 * elapsed.as_nanos() / drain.as_nanos()) as usize
            };
            if due > due_so_far {
                let left = Cell::new(due - due_so_far);
                ctx.hub.kick_where(Kick::Restart, |c| {
                    let take = left.get() > 0 && c.kicked() == Kick::None;
                    if take {
                        left.set(left.get() - 1);
                    }
                    take
                });
                due_so_far = due;
            }
            if due_so_far >= total {
                return;
            }
            let next_due = started + drain.mul_f64(due_so_far as f64 / total as f64);
            let wait = next_due
                .saturating_duration_since(Instant::now())
                .max(DRAIN_TICK);
            if self.control.hurry.wait(wait) {
                info!("second termination signal: closing the remaining clients at once");
                return;
            }
        }
    }
}

/// How the hub serves v2 clients: each frame as a v2 tick, made by the feed's rules for what
/// the translator hands on, timed by the proxy's clock where the frame has no time.
/// A service thread starter, as `start_with` hands it to the stages.
type Spawn<'a> = &'a dyn Fn(&str, Box<dyn FnOnce() + Send>) -> io::Result<()>;

/// `admin_listen` bound now, so that a taken address stops start-up.
fn bind_admin(config: &Config) -> Result<Option<Admin>, StartError> {
    let Some(at) = config.admin_listen else {
        return Ok(None);
    };
    Admin::bind(at)
        .map(Some)
        .map_err(|e| StartError::Bind(at, io::Error::new(e.kind(), format!("admin_listen: {e}"))))
}

/// What the kernel lets this process have, measured before the clients come (once the
/// open-file limit is as high as this process may set it), and the `max_clients` places.
fn capacity(config: &Config) -> (Ceiling, Arc<Places>) {
    if let Some((from, to)) = ceiling::raise_open_files() {
        info!("open-file limit raised from {from} to {to} (the hard limit)");
    }
    let ceiling = ceiling::measure();
    let (line, warnings) = capacity_report(config, &ceiling);
    info!("{line}");
    for w in warnings {
        warn!("{w}");
    }
    let places = Places::new(
        config.max_clients,
        usize::try_from(ceiling.clients(SERVICE_THREADS)).unwrap_or(usize::MAX),
    );
    (ceiling, places)
}

/// The hub, finding each frame's symbol and making its v2 tick as the feed says.
fn hub(config: &Config, metrics: &Arc<Metrics>, feed: &Plan) -> Hub {
    metrics.upstream_symbols.configure(&config.symbols);
    Hub::new(
        &config.symbols,
        config.client_queue_len,
        config.max_clients_per_key,
        config.batch_delay,
        Arc::clone(metrics),
        Box::new(feed.symbol_of()),
    )
    .with_v2(V2Ticks {
        encode: Box::new(feed.v2_tick(metrics)),
        symbol: v2::tick_symbol,
    })
}

/// The socket watcher, whose failure stops the proxy.
fn start_watcher(failure: &Arc<Failure>) -> Result<Arc<Watcher>, StartError> {
    let on_failure = Arc::clone(failure);
    let (watcher, thread) =
        Watcher::start(move |why| on_failure.raise("watcher", why)).map_err(StartError::Thread)?;
    drop(thread);
    Ok(watcher)
}

/// What the start-up log says of the backbone, and its state for `/healthz` and `/metrics`.
fn backbone_status(b: &backbone::Settings) -> Arc<backbone::Status> {
    info!(
        "backbone {}: role {}, keys {}:*, this instance is \"{}\"",
        b.url.shown(),
        b.role.name(),
        b.name,
        b.instance
    );
    Arc::new(backbone::Status::new(
        b.role,
        b.url.shown(),
        b.instance.clone(),
    ))
}

/// The feed's threads: the distributor, the recorder, and the upstream thread, straight to
/// the distributor or, past one host, through the backbone's.
fn start_feed(
    ctx: &Arc<Context>,
    mut upstream: upstream::Settings,
    record_writer: Option<Writer>,
    backbone: Option<(backbone::Settings, Arc<backbone::Status>)>,
    publish_symbol_of: backbone::SymbolOf,
    spawn: Spawn<'_>,
) -> Result<(), StartError> {
    upstream.live = Some(Cached::new(ctx.live_config()));
    let hub = Arc::clone(&ctx.hub);
    upstream.on_refused = Some(Box::new(move |refused| {
        let closed = hub.kick_refused(refused);
        if closed > 0 {
            info!("closing {closed} client(s): the provider refused every symbol they receive");
        }
    }));
    // The channel from upstream to distributor is bounded: should the distributor ever fall
    // behind, the upstream read waits and TCP pushes back on the source.
    let (frames_tx, frames_rx) = crossbeam_channel::bounded(8192);
    let (hub, beats) = (Arc::clone(&ctx.hub), Arc::clone(&ctx.heartbeats));
    spawn(
        "distributor",
        Box::new(move || distributor::run(hub, frames_rx, &beats.distributor)),
    )
    .map_err(StartError::Thread)?;
    if let Some(writer) = record_writer {
        // Ends when the upstream thread drops its end of the channel.
        spawn("recorder", Box::new(move || writer.run())).map_err(StartError::Thread)?;
    }
    let (metrics, stop) = (Arc::clone(&ctx.metrics), Arc::clone(&ctx.stop));
    let Some((settings, status)) = backbone else {
        return spawn(
            "upstream",
            Box::new(move || upstream::run(upstream, frames_tx, metrics, stop)),
        )
        .map_err(StartError::Thread);
    };
    // Through Redis: the upstream thread runs only on an ingest, and connects only while
    // this instance holds the lock.
    let outlet = backbone::start(
        &settings,
        &status,
        frames_tx,
        &metrics,
        &stop,
        spawn,
        publish_symbol_of,
    )
    .map_err(StartError::Thread)?;
    match outlet {
        Some(outlet) => spawn(
            "upstream",
            Box::new(move || upstream::run(upstream, outlet, metrics, stop)),
        )
        .map_err(StartError::Thread),
        None => Ok(()),
    }
}

/// The `admin` thread serving `admin_listen`; its address and the waker that ends it.
fn start_admin(
    admin: Admin,
    ctx: &Arc<Context>,
    asker: &Asker,
    failure: &Arc<Failure>,
    spawn: Spawn<'_>,
) -> Result<(SocketAddr, Arc<Waker>), StartError> {
    let at = admin.local_addr().map_err(StartError::Thread)?;
    let waker = admin.waker();
    let (admin_ctx, admin_asker) = (Arc::clone(ctx), asker.clone());
    let admin_failure = Arc::clone(failure);
    spawn(
        "admin",
        Box::new(move || {
            if let Err(e) = admin.run(&admin_ctx, &admin_asker) {
                admin_failure.raise("admin", &format!("the socket poll failed: {e}"));
            }
        }),
    )
    .map_err(StartError::Thread)?;
    info!("admin endpoints on {at} (http://): /metrics, /livez, /readyz, /debug/state");
    Ok((at, waker))
}

/// The `admission` thread, which hands each authenticated client a thread of its own.
fn start_admission(
    admission: Admission,
    ctx: &Arc<Context>,
    failure: &Arc<Failure>,
    spawn: Spawn<'_>,
) -> Result<(), StartError> {
    let admission_ctx = Arc::clone(ctx);
    let admission_failure = Arc::clone(failure);
    spawn(
        "admission",
        Box::new(move || {
            let hand_off = hand_off(Arc::clone(&admission_ctx));
            if let Err(e) = admission.run(&admission_ctx, hand_off) {
                admission_failure.raise("admission", &format!("the socket poll failed: {e}"));
            }
        }),
    )
    .map_err(StartError::Thread)
}

/// TLS on the client port from the config, its certificate's expiry into `metrics`. The
/// error names the file and the line.
fn server_tls(config: &Config, metrics: &Metrics) -> Result<Option<Arc<ServerTls>>, StartError> {
    let Some(files) = TlsFiles::of(config) else {
        return Ok(None);
    };
    let tls = ServerTls::start(files, metrics).map_err(|e| tls_error(config, e))?;
    Ok(Some(Arc::new(tls)))
}

fn tls_error(config: &Config, e: crate::base::tls::TlsError) -> StartError {
    StartError::Tls(config.error_at(e.key, e.message).to_string())
}

/// Starts each admitted client's thread. Should the kernel refuse it, the connection comes
/// back to the admission loop, which closes it with 1013.
fn hand_off(ctx: Arc<Context>) -> HandOff {
    Box::new(move |admitted, place| {
        let name = format!("client-{}", admitted.id);
        // The connection goes to the thread through this cell, so that it can be had back if
        // the thread never starts.
        let cell = Arc::new(Mutex::new(Some(admitted)));
        let inside = Arc::clone(&cell);
        let thread_ctx = Arc::clone(&ctx);
        let started = ctx.threads.spawn(
            name,
            CLIENT_STACK,
            move || {
                let admitted = inside.lock().take();
                if let Some(admitted) = admitted {
                    client::serve(&thread_ctx, admitted);
                }
            },
            // The place is given back only once the thread is gone.
            move || drop(place),
        );
        match started {
            Err(e) => match cell.lock().take() {
                Some(admitted) => Err((e, admitted)),
                None => Ok(()),
            },
            Ok(()) => Ok(()),
        }
    })
}

/// What a reload does besides the configuration and the keys (see [`crate::ops::reload`]): the
/// simulator's pace, and the capacity warnings of start-up again when the limits changed.
/// A part of the proxy with something of its own to re-read on SIGHUP adds its step here.
fn add_reload_steps(reloader: &Reloader, ctx: &Arc<Context>, sim: Option<&SimServer>) {
    if let Some(sim) = sim {
        let set_rate = Arc::new(sim.rate_control());
        reloader.add_step(
            "simulated source",
            Box::new(move |next| {
                let set_rate = Arc::clone(&set_rate);
                let rate = next.sim_rate;
                Ok(Box::new(move || set_rate(rate)) as Commit)
            }),
        );
    }
    if let Some(tls) = ctx.tls.clone() {
        // The certificate pair is read again on SIGHUP too (as on a change of the files): a
        // pair that does not load refuses the reload, and the running one stays.
        let metrics = Arc::clone(&ctx.metrics);
        reloader.add_step(
            "TLS certificate",
            Box::new(move |_next| {
                tls::load(tls.files()).map_err(|e| e.to_string())?;
                let (tls, metrics) = (Arc::clone(&tls), Arc::clone(&metrics));
                Ok(Box::new(move || {
                    tls::reload(&tls, &metrics);
                }) as Commit)
            }),
        );
    }
    let ctx = Arc::clone(ctx);
    reloader.add_step(
        "capacity",
        Box::new(move |next| {
            let running = ctx.config();
            let same = running.max_clients == next.max_clients
                && running.max_pending_connections == next.max_pending_connections;
            let report = (!same).then(|| capacity_report(next, &ctx.ceiling));
            Ok(Box::new(move || {
                if let Some((line, warnings)) = report {
                    info!("{line}");
                    for w in warnings {
                        warn!("{w}");
                    }
                }
            }) as Commit)
        }),
    );
}

/// Re-reads the key file when it changes and writes the periodic status line.
fn housekeeping(ctx: &Arc<Context>, reloader: &Reloader) {
    let mut last_key_check = Instant::now();
    let mut last_status = Instant::now();
    let mut counters = [0u64; 3];
    while !ctx.stop.wait(Duration::from_secs(1)) {
        if last_key_check.elapsed() >= KEY_FILE_CHECK {
            last_key_check = Instant::now();
            reloader.poll_keys();
            if let Some(tls) = &ctx.tls {
                tls.look(&ctx.metrics);
            }
        }
        if let Some(every) = ctx.config().status_interval {
            let elapsed = last_status.elapsed();
            if elapsed >= every {
                last_status = Instant::now();
                let behind = ctx.hub.queue_stats().behind;
                info!(
                    "{}",
                    crate::ops::metrics::status_line(&ctx.metrics, &mut counters, elapsed, behind)
                );
            }
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
        spawn_service(&server.ctx.threads, &server.failure, "test-fault", || {
            panic!("injected fault")
        })
        .unwrap();
        assert!(alarm.wait(Duration::from_secs(10)), "the alarm is raised");
        assert!(server.failed());
        server.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
