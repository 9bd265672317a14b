//! What every connection and service thread shares: the configuration, the hub, the
//! counters, the socket watcher, the client keys, the thread registry and the stop signal.

use crate::backbone;
use crate::base::ceiling::Ceiling;
use crate::base::heartbeat::Heartbeats;
use crate::base::live::Live;
use crate::base::metrics::Metrics;
use crate::base::stop::Stop;
use crate::base::threads::Threads;
use crate::clients::activity::Activity;
use crate::clients::http::Request;
use crate::clients::keys::KeyStore;
use crate::clients::places::Places;
use crate::clients::tls::ServerTls;
use crate::clients::watcher::Watcher;
use crate::config::Config;
use crate::fanout::distributor::Hub;
use parking_lot::RwLock;
use std::net::SocketAddr;
use std::sync::Arc;

/// What an admitted connection is given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Serve {
    /// The greeting, the auth, then quotes: the only choice in the binary users run.
    #[default]
    Quotes,
    /// Each message echoed back, in place of the greeting and the auth: the Autobahn test's
    /// server (the `autobahn` feature; see `clients::echo`).
    #[cfg(feature = "autobahn")]
    Echo,
}

pub struct Context {
    /// The running configuration: a reload (SIGHUP) replaces it, keeping the values that
    /// need a restart as they were (see [`crate::ops::reload`]).
    config: Arc<Live<Config>>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub watcher: Arc<Watcher>,
    pub stop: Arc<Stop>,
    pub threads: Arc<Threads>,
    /// What the kernel lets this process have, measured at start-up.
    pub ceiling: Ceiling,
    /// The `max_clients` places (fewer under the thread ceiling).
    pub places: Arc<Places>,
    /// The address clients connect to (its listen queue shows in `/metrics`).
    pub listen: SocketAddr,
    /// What an admitted connection is given.
    pub serve: Serve,
    /// The Redis backbone's state, when there is one.
    pub backbone: Option<Arc<backbone::Status>>,
    /// TLS on the client port, when `tls_cert_file` is set.
    pub tls: Option<Arc<ServerTls>>,
    /// What each client thread is doing, for the state dump (SIGUSR1).
    pub activity: Activity,
    /// How a plain HTTP request (not an upgrade) on the client port is answered: the
    /// operations' endpoints (`/healthz`, `/metrics`, the page), which the server plugs in.
    pub answer_http: fn(&Context, &Request) -> Vec<u8>,
    /// The listening socket outlives this process (systemd's socket activation): a stop is a
    /// restart, and clients are told 1012 rather than 1001 (see [`crate::clients::closes::on_stop`]).
    pub restart_on_stop: bool,
    /// Set when a stop begins with a drain: the admission loop accepts no more connections
    /// (they wait in the listen queue for the next process) and finishes those it holds.
    pub draining: Arc<Stop>,
    /// Set by the admission loop once it has stopped accepting for a drain: from then on a
    /// client closed and reconnecting cannot land on this process again.
    pub not_accepting: Arc<Stop>,
    /// Beaten by the distributor and the admission loop; what the watchdog looks at.
    pub heartbeats: Arc<Heartbeats>,
    keys: RwLock<Arc<KeyStore>>,
}

/// Until the server plugs the endpoints in, nothing is served.
fn not_found(_: &Context, request: &Request) -> Vec<u8> {
    let head_only = request.method == "HEAD";
    crate::clients::http::response(404, "text/plain", "not found\n", head_only)
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        watcher: Arc<Watcher>,
        threads: Arc<Threads>,
        ceiling: Ceiling,
        places: Arc<Places>,
        listen: SocketAddr,
        keys: KeyStore,
        tls: Option<Arc<ServerTls>>,
    ) -> Context {
        Context {
            config: Arc::new(Live::new(config)),
            hub,
            metrics,
            watcher,
            stop: Arc::new(Stop::new()),
            threads,
            ceiling,
            places,
            listen,
            serve: Serve::Quotes,
            backbone: None,
            tls,
            activity: Activity::default(),
            answer_http: not_found,
            restart_on_stop: false,
            draining: Arc::new(Stop::new()),
            not_accepting: Arc::new(Stop::new()),
            heartbeats: Arc::new(Heartbeats::default()),
            keys: RwLock::new(Arc::new(keys)),
        }
    }

    /// Whether connections are echoed instead of greeted and authenticated: only ever in the
    /// Autobahn build.
    pub fn echoing(&self) -> bool {
        self.serve != Serve::Quotes
    }

    /// Whether `keys` decides who may connect. Not when clients must present a certificate
    /// and the key file lists no key: the certificate alone admits them (any `userKey`).
    pub fn keys_checked(&self, keys: &KeyStore) -> bool {
        !(keys.is_empty() && self.tls.as_ref().is_some_and(|t| t.client_auth()))
    }

    /// The running configuration, as of now. A loop that reads it on every turn keeps a
    /// [`crate::base::live::Cached`] copy of [`Context::live_config`] instead.
    pub fn config(&self) -> Arc<Config> {
        self.config.get()
    }

    pub fn live_config(&self) -> &Arc<Live<Config>> {
        &self.config
    }

    /// Replaces the running configuration (see [`crate::ops::reload`]).
    pub fn set_config(&self, config: Config) {
        self.config.set(config);
    }

    pub fn keys(&self) -> Arc<KeyStore> {
        Arc::clone(&self.keys.read())
    }

    pub fn set_keys(&self, keys: Arc<KeyStore>) {
        *self.keys.write() = keys;
    }
}
