//! The `fxproxy` command: parses the arguments, runs the chosen command and turns its outcome
//! into an exit code (0 clean stop, 2 bad configuration or arguments, 1 anything else).

use fxproxy::cli::{self, Command};
use fxproxy::server::StartError;
use fxproxy::{config, logging, sim, watch, Server};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match cli::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fxproxy: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("fxproxy {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => match config::load(&config)
            .map_err(|e| e.to_string())
            .and_then(|c| fxproxy::keys::KeyStore::load(&c.user_keys_file).map(|k| (c, k)))
            .and_then(|(c, k)| {
                fxproxy::demo_key::check(c.listen, &k, &c.user_keys_file).map(|()| (c, k))
            })
            .and_then(|(c, k)| fxproxy::tls::check(&c).map(|tls| (c, k, tls)))
        {
            Ok((c, keys, tls)) => {
                println!(
                    "{}: valid ({} symbols, {} client keys)",
                    config.display(),
                    c.symbols.len(),
                    keys.len()
                );
                for line in tls {
                    println!("{line}");
                }
                // What this host would let the proxy have, as the start-up log says it.
                let (line, warnings) =
                    fxproxy::server::capacity_report(&c, &fxproxy::ceiling::measure());
                println!("{line}");
                for w in warnings {
                    eprintln!("fxproxy: warning: {w}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fxproxy: {e}");
                ExitCode::from(2)
            }
        },
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
        } => run_watch(url, key, symbols, ca_file),
    }
}

/// Waits for SIGINT/SIGTERM. ctrlc's handler runs on its own thread and only sets the flag.
fn termination_signal() -> Result<Arc<fxproxy::stop::Stop>, ExitCode> {
    let stop = Arc::new(fxproxy::stop::Stop::new());
    let handler_stop = Arc::clone(&stop);
    ctrlc::set_handler(move || handler_stop.set()).map_err(|e| {
        eprintln!("fxproxy: cannot install the signal handler: {e}");
        ExitCode::from(1)
    })?;
    Ok(stop)
}

fn run(path: &std::path::Path) -> ExitCode {
    let config = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fxproxy: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(config.log_level.name());
    logging::log_panics();
    let signal = match termination_signal() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let server = match Server::start_with_alarm(config, Arc::clone(&signal)) {
        Ok(s) => s,
        // The key file, the provider's template, a recording to replay, the file to record
        // to, or the TLS pair: all named by the configuration.
        Err(
            e @ (StartError::Keys(_)
            | StartError::Config(_)
            | StartError::File(_)
            | StartError::Tls(_)),
        ) => {
            log::error!("{e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(1);
        }
    };
    while !signal.wait(Duration::from_secs(3600)) {}
    let failed = server.failed();
    if !failed {
        log::info!("termination signal received");
    }
    server.shutdown();
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn run_sim(listen: std::net::SocketAddr, rate: u32, symbols: Vec<String>) -> ExitCode {
    logging::init("info");
    let signal = match termination_signal() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let server = match sim::SimServer::start(sim::SimOptions {
        listen,
        rate,
        symbols,
    }) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot start the simulator on {listen}: {e}");
            return ExitCode::from(1);
        }
    };
    log::info!(
        "simulated source listening on ws://{}/ at {rate} quotes/s",
        server.local_addr()
    );
    while !signal.wait(Duration::from_secs(3600)) {}
    server.stop();
    ExitCode::SUCCESS
}

fn run_watch(
    url: String,
    key: Option<String>,
    symbols: Option<Vec<String>>,
    ca_file: Option<std::path::PathBuf>,
) -> ExitCode {
    logging::init("warn");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(key) = key.or_else(|| std::env::var("FXPROXY_KEY").ok()) else {
        eprintln!(
            "fxproxy watch: a key is required: --key KEY or the FXPROXY_KEY environment variable"
        );
        return ExitCode::from(2);
    };
    let stop = Arc::new(AtomicBool::new(false));
    let handler_stop = Arc::clone(&stop);
    if let Err(e) = ctrlc::set_handler(move || handler_stop.store(true, Ordering::SeqCst)) {
        eprintln!("fxproxy: cannot install the signal handler: {e}");
        return ExitCode::from(1);
    }
    let opts = watch::WatchOptions {
        url,
        key,
        symbols,
        ca_file,
    };
    let mut out = std::io::stdout();
    match watch::run(&opts, &mut out, &stop) {
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
