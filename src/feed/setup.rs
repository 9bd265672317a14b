//! The feed as the configuration asks for it, built once at start-up: the provider's protocol
//! and the translator, the way out to the upstream (the TLS roots it is checked against, an
//! HTTP proxy, extra handshake headers), the built-in sources and the recorder; and from them
//! the upstream thread's [`Settings`]. `--check-config` makes the same [`Plan`], so it checks
//! what start-up would.

use crate::base::metrics::Metrics;
use crate::base::tls::{client_config, TlsError};
use crate::base::tunnel::{ProxyUrl, Route};
use crate::config::{Config, ConfigError, Upstream};
use crate::feed::headers::{self, Filled};
use crate::feed::provider::{self, Provider};
use crate::feed::record::{Recorder, Writer};
use crate::feed::replay::ReplayServer;
use crate::feed::sim::{SimOptions, SimServer};
use crate::feed::template;
use crate::feed::translate::Translator;
use crate::feed::upstream::{self, display_url, Settings};
use crate::feed::v2;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// What the feed is to be, checked: nothing is started yet.
pub struct Plan {
    pub provider: Arc<Provider>,
    pub translator: Translator,
    /// How the upstream connection goes out.
    pub network: Network,
    /// The roots a `wss://` upstream is checked against when `upstream_ca_file` is set; else
    /// `None`: tungstenite's own, the bundled web PKI roots.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// How the upstream connection goes out: through which HTTP proxy, if any, and with which
/// extra headers in its handshake.
pub struct Network {
    pub proxy: Option<ProxyUrl>,
    pub headers: Vec<Filled>,
    /// What the start-up log (and `--check-config`) says of it: the proxy and where it came
    /// from, the headers' names; never a password or a header's value.
    pub said: Vec<String>,
}

impl Plan {
    /// Reads the provider's template (resolving an unset `upstream_url` to its `url`), checks
    /// the symbols against it, and works out the way out to the upstream. Errors name the
    /// file, the line and the key at fault.
    pub fn new(config: &mut Config) -> Result<Plan, ConfigError> {
        let provider = Arc::new(template::describe(config)?);
        let translator =
            Translator::new(Arc::clone(&provider), config.client_format, &config.symbols)
                .map_err(|e| config.error_at("symbols", e.to_string()))?;
        let network = network(config, &provider)?;
        let tls = match &config.upstream_ca_file {
            Some(ca) => Some(
                client_config(Some(ca), config.upstream_bundled_roots)
                    .map_err(|e: TlsError| config.error_at(e.key, e.message))?,
            ),
            None => None,
        };
        Ok(Plan {
            provider,
            translator,
            network,
            tls,
        })
    }

    /// How the hub finds a frame's symbol (and the backbone's publisher, the same way).
    pub fn symbol_of(&self) -> impl Fn(&str) -> Option<usize> + Send + Sync + 'static {
        let symbol_of = self.translator.symbol_of();
        move |frame| symbol_of.id(frame)
    }

    /// How a frame becomes a v2 tick for the clients that speak v2, stamped by `metrics`'
    /// clock where the frame carries no time.
    pub fn v2_tick(
        &self,
        metrics: &Arc<Metrics>,
    ) -> impl Fn(&str, &str, bool) -> Option<String> + Send + Sync + 'static {
        let v2_of = self.translator.v2_of();
        let metrics = Arc::clone(metrics);
        move |frame, symbol, last| {
            let kind = if last {
                v2::Kind::LastQuote
            } else {
                v2::Kind::Quote
            };
            v2_of.tick(frame, symbol, kind, metrics.now_ms())
        }
    }

    /// The upstream thread's settings: where it connects (the provider, or one of the built-in
    /// `sources`) and what it sends there, its timing, and where its frames are recorded.
    pub fn settings(
        self,
        config: &Config,
        sources: &Sources,
        recorder: Option<Recorder>,
    ) -> Result<Settings, ConfigError> {
        let provider = &self.provider;
        let key = config.upstream_api_key.expose().to_string();
        let messages = provider
            .messages(&key, &config.symbols)
            .map_err(|e| config.error_at("symbols", e.to_string()))?;
        let heartbeat = provider
            .heartbeat_message(&key, &config.symbols)
            .map_err(|e| config.error_at("symbols", e.to_string()))?
            .zip(provider.heartbeat.as_ref().map(|(_, every)| *every));
        let (url, steps) = match (&config.upstream, &sources.sim, &sources.replay) {
            (Upstream::Url(url), _, _) => (
                provider.url_with_key(url, &key),
                messages
                    .into_iter()
                    .zip(provider.steps.iter().map(|s| s.expect.clone()))
                    .collect(),
            ),
            (Upstream::Sim, Some(sim), _) => (
                format!("ws://{}/", sim.local_addr()),
                vec![(provider::subscribe_text(config), None)],
            ),
            // A recording holds the source's replies already: nothing to send, nobody to wait for.
            (Upstream::Replay(_), _, Some(replay)) => {
                (format!("ws://{}/", replay.local_addr()), Vec::new())
            }
            // An edge never connects upstream: it reads the backbone; and `describe` resolved
            // a URL the template gives.
            _ => (String::new(), Vec::new()),
        };
        let (ping_every, dead_after) = upstream::timing(provider, config);
        Ok(Settings {
            url,
            key,
            steps,
            reply_timeout: provider.reply_timeout,
            heartbeat,
            translator: self.translator,
            connect_timeout: config.upstream_connect_timeout,
            ping_every,
            dead_after,
            stale_after: config.upstream_stale,
            market: config.market(),
            backoff_min: config.upstream_backoff_min,
            backoff_max: config.upstream_backoff_max,
            recorder,
            tls: self.tls,
            proxy: self.network.proxy,
            headers: self.network.headers,
            live: None,
            on_refused: None,
        })
    }
}

/// The way out for a `ws://`/`wss://` upstream: `upstream_proxy` or the environment's proxy
/// variables (read now), and the template's and `upstream_header`'s headers with the key in
/// them. The built-in sources are never proxied and get no headers.
fn network(config: &Config, provider: &Provider) -> Result<Network, ConfigError> {
    let mut network = Network {
        proxy: None,
        headers: Vec::new(),
        said: Vec::new(),
    };
    let Upstream::Url(url) = &config.upstream else {
        return Ok(network);
    };
    let shown = display_url(url);
    match config.upstream_route(url, &|name| std::env::var(name).ok())? {
        Route::Via { proxy, from } => {
            network.said.push(format!(
                "upstream {shown}: through the HTTP proxy {} (from {from})",
                proxy.shown()
            ));
            network.proxy = Some(proxy);
        }
        Route::Excepted { var } => network
            .said
            .push(format!("upstream {shown}: direct, as {var} lists its host")),
        Route::Direct => {}
    }
    let key = if config.line_of("upstream_header").is_some() {
        "upstream_header"
    } else {
        "provider_template"
    };
    network.headers = headers::filled(
        &provider.headers,
        &config.upstream_headers,
        config.upstream_api_key.expose(),
    )
    .map_err(|m| config.error_at(key, m))?;
    if !network.headers.is_empty() {
        network.said.push(format!(
            "upstream {shown}: handshake headers {} (values not shown)",
            headers::names(&network.headers)
        ));
    }
    Ok(network)
}

/// The built-in sources the configuration asks for: the simulator (`upstream_url = sim`) or a
/// recording played back (`replay:`), each a WebSocket server on an ephemeral loopback port.
#[derive(Default)]
pub struct Sources {
    pub sim: Option<SimServer>,
    pub replay: Option<ReplayServer>,
}

/// Why a built-in source did not start.
#[derive(Debug)]
pub enum SourceError {
    /// The simulator's socket or threads.
    Sim(io::Error),
    /// The recording to play back cannot be read.
    Recording(io::Error),
}

impl Sources {
    /// Starts them; none on an edge of a backbone, which connects to no source.
    pub fn start(config: &Config) -> Result<Sources, SourceError> {
        let ingests = config.backbone.is_none() || config.backbone_role.ingests();
        if !ingests {
            return Ok(Sources::default());
        }
        let sim = match config.upstream {
            Upstream::Sim => Some(
                SimServer::start(SimOptions {
                    listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                    rate: config.sim_rate,
                    symbols: Vec::new(),
                })
                .map_err(SourceError::Sim)?,
            ),
            _ => None,
        };
        let replay = match &config.upstream {
            Upstream::Replay(replay) => {
                Some(ReplayServer::start(replay).map_err(SourceError::Recording)?)
            }
            _ => None,
        };
        Ok(Sources { sim, replay })
    }

    pub fn stop(self) {
        if let Some(sim) = self.sim {
            sim.stop();
        }
        if let Some(replay) = self.replay {
            replay.stop();
        }
    }
}

/// The recorder `record_file` asks for, and the writer its own thread runs.
pub fn recorder(config: &Config, metrics: &Arc<Metrics>) -> io::Result<Option<(Recorder, Writer)>> {
    let Some(path) = &config.record_file else {
        return Ok(None);
    };
    Recorder::start(path, config.record_max_bytes, Arc::clone(metrics))
        .map(Some)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open record_file {}: {e}", path.display()),
            )
        })
}
