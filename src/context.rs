//! What every connection and service thread shares: the configuration, the hub, the
//! counters, the socket watcher, the client keys, the thread registry and the stop signal.

use crate::activity::Activity;
use crate::ceiling::Ceiling;
use crate::config::Config;
use crate::distributor::Hub;
use crate::keys::KeyStore;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::places::Places;
use crate::stop::Stop;
use crate::threads::Threads;
use crate::watcher::Watcher;
use parking_lot::RwLock;
use std::net::SocketAddr;
use std::sync::Arc;

pub struct Context {
    /// The running configuration: a reload (SIGHUP) replaces it, keeping the values that
    /// need a restart as they were (see [`crate::reload`]).
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
    /// Test-only echo service (see [`crate::Server::start_echo`]).
    pub echo: bool,
    /// What each client thread is doing, for the state dump (SIGUSR1).
    pub activity: Activity,
    keys: RwLock<Arc<KeyStore>>,
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
        echo: bool,
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
            echo,
            activity: Activity::default(),
            keys: RwLock::new(Arc::new(keys)),
        }
    }

    /// The running configuration, as of now. A loop that reads it on every turn keeps a
    /// [`crate::live::Cached`] copy of [`Context::live_config`] instead.
    pub fn config(&self) -> Arc<Config> {
        self.config.get()
    }

    pub fn live_config(&self) -> &Arc<Live<Config>> {
        &self.config
    }

    /// Replaces the running configuration (see [`crate::reload`]).
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
