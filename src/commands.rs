//! What each command of the command line does (see [`crate::cli`]): run the proxy, check a
//! configuration, run the simulator or the terminal client. Each turns its outcome into an
//! exit code: 0 clean stop, 2 bad configuration or arguments, 1 anything else.

use crate::base::stop::Stop;
use crate::cli::{self, Command};
use crate::clients::listener;
use crate::config::{self, Config};
use crate::feed::sim;
use crate::ops::logging;
use crate::ops::notify::{self, Notifier, Watchdog};
use crate::ops::signals::{self, Signal};
use crate::server::{Launch, StartError};
use crate::watch;
use crate::Server;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Runs `command` to its end.
pub fn run_command(command: Command) -> ExitCode {
    match command {
        Command::Help => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("fxproxy {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => check_config(&config),
        Command::Run { config } => run(&config),
        Command::Sim {
            listen,
            rate,
            symbols,
        } => run_sim(listen, rate, symbols),
        Command::Watch {
            url,
            key,
            symbols,
            ca_file,
            proxy,
        } => run_watch(url, key, symbols, ca_file, proxy),
    }
}

/// `--check-config`: everything start-up would read and check, and what this host would let
/// the proxy have; exit 0 when valid, 2 with the reason when not.
fn check_config(path: &std::path::Path) -> ExitCode {
    let checked = config::load(path)
        .and_then(|mut c| {
            // The provider's template read and checked, and the way out to the upstream (its
            // TLS roots, its proxy, its headers) worked out, as start-up would.
            let plan = crate::feed::setup::Plan::new(&mut c)?;
            Ok((c, plan.network.said))
        })
        .map_err(|e| e.to_string())
        .and_then(|(c, said)| {
            let keys = crate::clients::keys::KeyStore::load(&c.user_keys_file)?;
            crate::clients::guard::check(&c, c.listen, &keys)?;
            let tls = crate::clients::tls::check(&c)?;
            Ok((c, said, keys, tls))
        });
    let (c, said, keys, tls) = match checked {
        Ok(checked) => checked,
        Err(e) => {
            eprintln!("fxproxy: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "{}: valid ({} symbols, {} client keys)",
        path.display(),
        c.symbols.len(),
        keys.len()
    );
    for line in tls.iter().chain(&said) {
        println!("{line}");
    }
    // What this host would let the proxy have, as the start-up log says it.
    let _ = crate::base::ceiling::raise_open_files();
    let (line, warnings) = crate::server::capacity_report(&c, &crate::base::ceiling::measure());
    println!("{line}");
    for w in warnings {
        eprintln!("fxproxy: warning: {w}");
    }
    ExitCode::SUCCESS
}

/// Blocks `which` in this thread and so in every thread started after: call before any.
fn block_signals(which: &[Signal]) -> Result<signals::Blocked, ExitCode> {
    signals::block(which).map_err(|e| {
        eprintln!("fxproxy: cannot block signals: {e}");
        ExitCode::from(1)
    })
}

/// The signal threads of a running command: ctrlc's for the stop signals, ours for the rest.
struct SignalThreads {
    stop: signals::StopSignals,
    others: signals::Listener,
}

impl SignalThreads {
    /// `on_stop` for each of `stop_on` (through ctrlc), `on_signal` for each of `others`; all
    /// were blocked by [`block_signals`] before any thread started.
    fn start(
        blocked: &signals::Blocked,
        stop_on: &[Signal],
        on_stop: impl FnMut() + Send + 'static,
        others: &[Signal],
        on_signal: impl FnMut(Signal) + Send + 'static,
    ) -> Result<SignalThreads, ExitCode> {
        let fail = |e: std::io::Error| {
            eprintln!("fxproxy: cannot start the signal threads: {e}");
            ExitCode::from(1)
        };
        let others = blocked.listen(others, on_signal).map_err(fail)?;
        let stop = blocked.on_stop(stop_on, on_stop).map_err(fail)?;
        Ok(SignalThreads { stop, others })
    }

    fn stop(self) {
        self.stop.stop();
        self.others.stop();
    }
}

/// The server: starts the proxy, serves until SIGINT or SIGTERM, and stops it.
fn run(path: &std::path::Path) -> ExitCode {
    let config = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fxproxy: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(config.log_level.name(), config.log_format);
    logging::log_panics();
    // Before any other thread starts: the socket systemd may pass is taken, and its variables
    // removed from the environment.
    let systemd = match from_systemd() {
        Ok(s) => s,
        Err(code) => return code,
    };
    // Before the server starts its threads, so that every one of them has them blocked.
    let blocked = match block_signals(&[
        Signal::Interrupt,
        Signal::Terminate,
        Signal::HangUp,
        Signal::User1,
    ]) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let signal = Arc::new(Stop::new());
    let server = match start_server(config, &signal, systemd.launch) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let threads = match server_signals(&blocked, &server, &signal, &systemd.notifier) {
        Ok(t) => t,
        Err(code) => {
            server.shutdown();
            return code;
        }
    };
    let watchdog = systemd.watchdog_period.and_then(|period| {
        Watchdog::start(Arc::clone(&systemd.notifier), server.heartbeats(), period)
            .map_err(|e| log::error!("cannot start the watchdog thread: {e}; systemd will restart fxproxy when WatchdogSec= passes"))
            .ok()
    });
    serve_until_stopped(server, &signal, &systemd.notifier, watchdog, threads)
}

/// What the service manager (systemd) gave the proxy and asks of it.
struct FromSystemd {
    /// The listening socket it passed, if any, and how often the watchdog's heartbeats go.
    launch: Launch,
    notifier: Arc<Notifier>,
    /// `WatchdogSec=`, when systemd watches the proxy.
    watchdog_period: Option<Duration>,
}

/// Takes the listening socket systemd may pass, and reads how it is to be notified; exit 2
/// when what it passed cannot be used.
fn from_systemd() -> Result<FromSystemd, ExitCode> {
    let passed = match listener::from_service_manager() {
        Ok(l) => l,
        Err(e) => {
            log::error!("{e}");
            return Err(ExitCode::from(2));
        }
    };
    let notifier = Arc::new(Notifier::from_env());
    let watchdog_period = notify::watchdog_period_from_env().filter(|_| notifier.enabled());
    let launch = Launch {
        listener: passed,
        beat_every: notify::beat_every(watchdog_period),
        ..Launch::default()
    };
    Ok(FromSystemd {
        launch,
        notifier,
        watchdog_period,
    })
}

/// Starts the proxy's threads; exit 2 for what the configuration names, 1 for anything else.
fn start_server(config: Config, signal: &Arc<Stop>, launch: Launch) -> Result<Server, ExitCode> {
    match Server::start_launched(config, Arc::clone(signal), launch) {
        Ok(s) => Ok(s),
        // The key file, the provider's template, a recording to replay, the file to record
        // to, or the TLS pair: all named by the configuration.
        Err(
            e @ (StartError::Keys(_)
            | StartError::Config(_)
            | StartError::File(_)
            | StartError::Tls(_)),
        ) => {
            log::error!("{e}");
            Err(ExitCode::from(2))
        }
        Err(e) => {
            log::error!("{e}");
            Err(ExitCode::from(1))
        }
    }
}

/// The server's signals: SIGINT and SIGTERM stop it (a second one closes the remaining clients
/// at once), SIGHUP reloads the configuration, SIGUSR1 writes a state dump.
fn server_signals(
    blocked: &signals::Blocked,
    server: &Server,
    signal: &Arc<Stop>,
    notifier: &Arc<Notifier>,
) -> Result<SignalThreads, ExitCode> {
    let control = server.control();
    let stop = Arc::clone(signal);
    let stop_control = server.control();
    let reload_notifier = Arc::clone(notifier);
    SignalThreads::start(
        blocked,
        &[Signal::Interrupt, Signal::Terminate],
        move || {
            if stop.is_set() {
                // A second stop signal while the clients are being closed: close the rest now.
                log::info!("SIGINT or SIGTERM received again: closing the remaining clients now");
                stop_control.hurry();
            } else {
                log::info!("SIGINT or SIGTERM received: stopping");
                stop.set();
            }
        },
        &[Signal::HangUp, Signal::User1],
        move |received| match received {
            Signal::HangUp => {
                log::info!("SIGHUP received: reloading the configuration");
                reload_notifier.reloading();
                // Logged and counted either way; a broken file changed nothing, and systemctl
                // status says so.
                let outcome = control.reload().map(|r| r.summary());
                reload_notifier.reloaded(&outcome);
            }
            Signal::User1 => {
                log::info!("SIGUSR1 received: writing a state dump");
                control.dump_state();
            }
            // Not listened to here: they go through ctrlc.
            Signal::Interrupt | Signal::Terminate => {}
        },
    )
}

/// Tells systemd the proxy is ready, waits for a stop signal, then stops the watchdog, the
/// server (closing its clients) and the signal threads. Exit 1 if the server failed.
fn serve_until_stopped(
    server: Server,
    signal: &Stop,
    notifier: &Notifier,
    watchdog: Option<Watchdog>,
    threads: SignalThreads,
) -> ExitCode {
    let socket = if server.restarts_on_stop() {
        "on the socket systemd passed"
    } else {
        "on its own socket"
    };
    notifier.ready(&format!("serving on {} ({socket})", server.local_addr()));
    while !signal.wait(Duration::from_secs(3600)) {}
    let failed = server.failed();
    notifier.stopping(&if server.restarts_on_stop() {
        format!(
            "restarting: closing clients with 1012 over {} s",
            server.drain().as_secs()
        )
    } else {
        "stopping: closing clients with 1001".to_string()
    });
    if let Some(watchdog) = watchdog {
        watchdog.stop();
    }
    server.shutdown();
    threads.stop();
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn run_sim(addr: std::net::SocketAddr, rate: u32, symbols: Vec<String>) -> ExitCode {
    logging::init("info", logging::LogFormat::Text);
    let blocked = match block_signals(&[Signal::Interrupt, Signal::Terminate, Signal::HangUp]) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let server = match sim::SimServer::start(sim::SimOptions {
        listen: addr,
        rate,
        symbols,
    }) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot start the simulator on {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    log::info!(
        "simulated source listening on ws://{}/ at {rate} quotes/s",
        server.local_addr()
    );
    let signal = Arc::new(Stop::new());
    let stop = Arc::clone(&signal);
    let threads = match SignalThreads::start(
        &blocked,
        &[Signal::Interrupt, Signal::Terminate],
        move || stop.set(),
        &[Signal::HangUp],
        |_| log::info!("SIGHUP received: the simulator has nothing to reload"),
    ) {
        Ok(t) => t,
        Err(code) => return code,
    };
    while !signal.wait(Duration::from_secs(3600)) {}
    server.stop();
    threads.stop();
    ExitCode::SUCCESS
}

fn run_watch(
    url: String,
    key: Option<String>,
    symbols: Option<Vec<String>>,
    ca_file: Option<std::path::PathBuf>,
    proxy: watch::ProxyFlag,
) -> ExitCode {
    logging::init("warn", logging::LogFormat::Text);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(key) = key.or_else(|| std::env::var("FXPROXY_KEY").ok()) else {
        eprintln!(
            "fxproxy watch: a key is required: --key KEY or the FXPROXY_KEY environment variable"
        );
        return ExitCode::from(2);
    };
    let route = match watch::route(&url, &proxy, &|name| std::env::var(name).ok()) {
        Ok(route) => route,
        Err(e) => {
            eprintln!("fxproxy watch: {e}");
            return ExitCode::from(2);
        }
    };
    // Ctrl-C (and SIGTERM, and SIGHUP when the terminal goes) is how a ticker is stopped:
    // the watch says goodbye to the proxy and exits quietly with 128 + the signal's number,
    // as a shell reports a command it interrupted (130 for Ctrl-C), so `watch … && next`
    // does not go on as if the watch had ended by itself.
    let blocked = match block_signals(&[Signal::Interrupt, Signal::Terminate, Signal::HangUp]) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stopped_by = Arc::new(AtomicI32::new(0));
    let stopped = move |stop: &AtomicBool, by: &AtomicI32, signal: Signal| {
        let _ = by.compare_exchange(0, signal.number(), Ordering::SeqCst, Ordering::SeqCst);
        stop.store(true, Ordering::SeqCst);
    };
    let (ctrl_c_stop, ctrl_c_by) = (Arc::clone(&stop), Arc::clone(&stopped_by));
    let (handler_stop, handler_by) = (Arc::clone(&stop), Arc::clone(&stopped_by));
    // Ctrl-C through ctrlc; SIGTERM and SIGHUP told apart on the signals thread, for the exit
    // status (ctrlc runs one closure for every signal it takes, and cannot say which).
    let threads = match SignalThreads::start(
        &blocked,
        &[Signal::Interrupt],
        move || stopped(&ctrl_c_stop, &ctrl_c_by, Signal::Interrupt),
        &[Signal::Terminate, Signal::HangUp],
        move |received| stopped(&handler_stop, &handler_by, received),
    ) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let opts = watch::WatchOptions {
        url,
        key,
        symbols,
        ca_file,
        route,
    };
    let mut out = std::io::stdout();
    let result = watch::run(&opts, &mut out, &stop);
    threads.stop();
    let signal = stopped_by.load(Ordering::SeqCst);
    if signal != 0 {
        return ExitCode::from(128 + signal as u8);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `fxproxy watch … | head` closing the pipe is a normal way to stop.
        Err(watch::WatchError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fxproxy watch: {e}");
            ExitCode::from(1)
        }
    }
}
