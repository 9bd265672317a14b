//! The configuration as the stages read it: [`Config`], with each key's value in its type.
//! How each key is parsed, and its default, is `settings`.

use crate::base::market::{Date, Market, MarketHours};
use crate::base::tunnel::{self, ProxyUrl, Route};
use crate::config::address::Cidr;
use crate::config::backbone::{RedisUrl, Role};
use crate::config::error::ConfigError;
use crate::config::proxy::UpstreamProxy;
use crate::config::secret::Secret;
use crate::config::value::{Header, Upstream};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// `provider`: whose protocol the upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderChoice {
    Tradermade,
    TradermadeV2,
    /// Described by `provider_template`.
    Custom,
}

impl ProviderChoice {
    pub fn name(self) -> &'static str {
        match self {
            ProviderChoice::Tradermade => "tradermade",
            ProviderChoice::TradermadeV2 => "tradermade-v2",
            ProviderChoice::Custom => "custom",
        }
    }
}

/// `client_format`: what clients are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFormat {
    /// fxproxy's v1 quote shape, whatever the provider.
    Normalized,
    /// The provider's own frames (arrays split into their elements).
    Upstream,
}

impl ClientFormat {
    pub fn name(self) -> &'static str {
        match self {
            ClientFormat::Normalized => "normalized",
            ClientFormat::Upstream => "upstream",
        }
    }
}

/// `slow_client`: what becomes of a client that falls behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowClient {
    /// Closed with 1008 `Slow consumer`.
    Disconnect,
    /// Sent the latest quote of each symbol that changed once it catches up.
    Conflate,
}

impl SlowClient {
    pub fn name(self) -> &'static str {
        match self {
            SlowClient::Disconnect => "disconnect",
            SlowClient::Conflate => "conflate",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The lower-case name as written in `proxy.conf`.
    pub fn name(&self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// How each log line is written: `text` (time, level, thread, message) or `json` (one object
/// a line with those four fields, for log shippers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// The name as written in `proxy.conf`.
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The validated contents of `proxy.conf`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from, for messages.
    pub file: PathBuf,
    /// `(key, line)` for every key the file set, in file order; see [`Config::line_of`].
    pub key_lines: Vec<(&'static str, usize)>,

    pub listen: SocketAddr,
    /// TLS on `listen` (both set) or not (neither): the certificate chain and its key, PEM.
    /// Resolved against the config file's directory; `${CREDENTIALS_DIRECTORY}` is expanded
    /// by [`load`], as in `upstream_api_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Clients must present a certificate from this CA (PEM); needs the two above.
    pub tls_client_ca_file: Option<PathBuf>,
    pub upstream: Upstream,
    /// After [`load`]: from the file, the key file or the environment, in that order.
    pub upstream_api_key: Secret,
    /// Resolved against the config file's directory. A path containing
    /// `${CREDENTIALS_DIRECTORY}` is kept as written until [`load`] expands it.
    pub upstream_api_key_file: Option<PathBuf>,
    /// CA certificates (PEM) a `wss://` upstream may be signed by, besides (or, with
    /// `upstream_bundled_roots = false`, instead of) the web PKI roots bundled in the binary.
    pub upstream_ca_file: Option<PathBuf>,
    pub upstream_bundled_roots: bool,
    /// How the upstream connection reaches the internet (see [`proxy`]).
    pub upstream_proxy: UpstreamProxy,
    /// Resolved as `upstream_api_key_file` is; read by [`load`].
    pub upstream_proxy_password_file: Option<PathBuf>,
    /// After [`load`]: from `upstream_proxy_password_file` or `FXPROXY_UPSTREAM_PROXY_PASSWORD`,
    /// for a proxy URL that names a user without a password.
    pub upstream_proxy_password: Secret,
    /// Added to the upstream's WebSocket handshake, in file order (after the template's).
    pub upstream_headers: Vec<Header>,
    /// Added to the proxy's own HTTP answers and upgrades, in file order.
    pub response_headers: Vec<Header>,
    /// Upper-case, unique, at least one.
    pub symbols: Vec<String>,
    pub subscribe_message: String,
    /// Resolved against the config file's directory.
    pub user_keys_file: PathBuf,
    pub auth_timeout: Duration,
    pub handshake_timeout: Duration,
    pub upstream_stale: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_ping: Duration,
    /// The first reconnect delay; it doubles (with jitter) up to `upstream_backoff_max`.
    pub upstream_backoff_min: Duration,
    pub upstream_backoff_max: Duration,
    pub market_hours: MarketHours,
    /// UTC dates the market is closed besides the weekend (see [`Market`]); sorted, unique.
    pub market_closed_dates: Vec<Date>,
    pub client_queue_len: usize,
    /// A client that has not answered a ping sent after quotes within this long is that far
    /// behind, and a slow consumer.
    pub max_client_lag: Duration,
    /// Idle clients are pinged this often; a client silent for two of these is dropped.
    pub client_ping: Duration,
    pub max_clients: usize,
    /// 0 means unlimited.
    pub max_clients_per_key: usize,
    /// Connections still in their HTTP request, WebSocket handshake or auth (they hold a
    /// descriptor, not a thread); when full, the oldest past a short grace is dropped to make
    /// room, else newcomers wait in the listen queue. Unset: max_clients, at least 10,000.
    pub max_pending_connections: usize,
    pub max_message_bytes: usize,
    /// Messages (pings included) an authenticated client may send per second; 0 is no limit.
    pub max_client_messages_per_sec: u32,
    /// Bytes read from a client socket at a time (tungstenite allocates this up front).
    pub client_read_buffer_bytes: usize,
    /// Frames are buffered up to this many bytes before a write; the buffer keeps its size.
    pub client_write_buffer_bytes: usize,
    /// Lower-case `scheme://host[:port]` without a trailing `/`; empty means any origin.
    pub allowed_origins: Vec<String>,
    pub http_endpoints: bool,
    /// A second address serving `/metrics`, `/livez`, `/readyz` and the state dump to
    /// operators; `None`: none (and `/metrics` stays on `listen`).
    pub admin_listen: Option<SocketAddr>,
    pub page: bool,
    /// `None` when `status_interval_secs = 0`.
    pub status_interval: Option<Duration>,
    /// How long the distributor may hold quotes to batch writes; zero means never.
    pub batch_delay: Duration,
    /// Quotes per second in total from the built-in simulator.
    pub sim_rate: u32,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    /// On a stop with the listening socket held by systemd (a restart: see
    /// `crate::server::Server::shutdown`), clients are closed with 1012 spread over this long.
    pub drain: Duration,
    /// The Redis backbone; `None`: a single instance.
    pub backbone: Option<RedisUrl>,
    /// The CA (PEM) a `rediss://` backbone's certificate must chain to; `None`: the web PKI
    /// roots bundled in the binary.
    pub backbone_ca_file: Option<PathBuf>,
    pub backbone_role: Role,
    pub backbone_name: String,
    /// The stream is trimmed to about this many entries.
    pub backbone_max_len: u64,
    /// Connections from these may say who the client is with `X-Forwarded-For`.
    pub trusted_proxies: Vec<Cidr>,

    // Providers, recording and the slow-client policy.
    pub provider: ProviderChoice,
    /// Resolved against the config file's directory; read by [`Config::provider_description`].
    pub provider_template: Option<PathBuf>,
    pub client_format: ClientFormat,
    /// Resolved against the config file's directory.
    pub record_file: Option<PathBuf>,
    pub record_max_bytes: u64,
    pub slow_client: SlowClient,
}

impl Config {
    /// A value of each field's type: empty where the key's default is unset (or the key is
    /// required), else replaced by [`Config::defaults`] from the settings; `settings`' tests
    /// hold each to it.
    pub(super) fn placeholders() -> Config {
        Config {
            file: PathBuf::new(),
            key_lines: Vec::new(),
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            upstream: Upstream::Sim,
            upstream_api_key: Secret::default(),
            upstream_api_key_file: None,
            upstream_ca_file: None,
            upstream_bundled_roots: false,
            upstream_proxy: UpstreamProxy::Environment,
            upstream_proxy_password_file: None,
            upstream_proxy_password: Secret::default(),
            upstream_headers: Vec::new(),
            response_headers: Vec::new(),
            symbols: Vec::new(),
            subscribe_message: String::new(),
            user_keys_file: PathBuf::new(),
            auth_timeout: Duration::ZERO,
            handshake_timeout: Duration::ZERO,
            upstream_stale: Duration::ZERO,
            upstream_connect_timeout: Duration::ZERO,
            upstream_ping: Duration::ZERO,
            upstream_backoff_min: Duration::ZERO,
            upstream_backoff_max: Duration::ZERO,
            market_hours: MarketHours::Always,
            market_closed_dates: Vec::new(),
            client_queue_len: 0,
            max_client_lag: Duration::ZERO,
            client_ping: Duration::ZERO,
            max_clients: 0,
            max_clients_per_key: 0,
            max_pending_connections: 0,
            max_message_bytes: 0,
            max_client_messages_per_sec: 0,
            client_read_buffer_bytes: 0,
            client_write_buffer_bytes: 0,
            allowed_origins: Vec::new(),
            http_endpoints: false,
            page: false,
            status_interval: None,
            batch_delay: Duration::ZERO,
            sim_rate: 0,
            log_level: LogLevel::Error,
            admin_listen: None,
            log_format: LogFormat::Text,
            drain: Duration::ZERO,
            backbone: None,
            backbone_ca_file: None,
            backbone_role: Role::Both,
            backbone_name: String::new(),
            backbone_max_len: 0,
            trusted_proxies: Vec::new(),
            provider: ProviderChoice::Tradermade,
            provider_template: None,
            client_format: ClientFormat::Normalized,
            record_file: None,
            record_max_bytes: 0,
            slow_client: SlowClient::Disconnect,
        }
    }

    /// The market-hours rule `market_hours` and `market_closed_dates` make. The built-in
    /// simulator streams every day of the year, so its market is always open: the page,
    /// `/healthz` and `/metrics` then say what the user sees.
    pub fn market(&self) -> Market {
        match self.upstream {
            Upstream::Sim => Market::new(MarketHours::Always, &[]),
            _ => Market::new(self.market_hours, &self.market_closed_dates),
        }
    }

    /// The line on which the file set `key`, if it did.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        self.key_lines
            .iter()
            .find(|(k, _)| *k == key)
            .map(|&(_, line)| line)
    }

    /// An error about `key` for checks made after parsing (e.g. the user keys file will not
    /// load), pointing at the line that set it when there is one.
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Setting {
            file: self.file.clone(),
            line: self.line_of(key),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// The route of the upstream connection to `url` (a `ws://` or `wss://` URL): as
    /// `upstream_proxy` says, or, unset, as `env` (the process's environment) does. A proxy
    /// URL that names a user without a password gets `upstream_proxy_password` (from the file
    /// or the environment). A proxy variable that is not a usable URL is an error, named.
    pub fn upstream_route(
        &self,
        url: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Route, ConfigError> {
        const KEY: &str = "upstream_proxy";
        let Some((tls, host)) = target(url) else {
            return Ok(Route::Direct);
        };
        let fill = |mut proxy: ProxyUrl, own: Option<&Secret>| {
            if proxy.user.is_some() && proxy.password.is_none() {
                proxy.password = own
                    .or(Some(&self.upstream_proxy_password).filter(|p| !p.is_empty()))
                    .map(|p| p.expose().to_string());
            }
            proxy
        };
        Ok(match &self.upstream_proxy {
            UpstreamProxy::Off => Route::Direct,
            UpstreamProxy::Url { proxy, password } => Route::Via {
                proxy: fill(proxy.clone(), password.as_ref()),
                from: KEY,
            },
            UpstreamProxy::Environment => match tunnel::from_environment(tls, host, env) {
                Ok(Route::Via { proxy, from }) => Route::Via {
                    proxy: fill(proxy, None),
                    from,
                },
                Ok(route) => route,
                Err(e) => {
                    return Err(self.error_at(
                        KEY,
                        format!(
                            "upstream_proxy is unset, so the environment's proxy is used for {host}, but {e} (set upstream_proxy = none to connect directly)"
                        ),
                    ))
                }
            },
        })
    }
}

/// `ws://` or `wss://` URL → (TLS, host), the host without brackets, user information or port.
fn target(url: &str) -> Option<(bool, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let tls = scheme.eq_ignore_ascii_case("wss");
    Some((tls, crate::base::host::url_host(rest)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse::parse;
    use std::path::Path;

    use crate::config::parse::minimal_with as config;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// From the fuzz target `market_dates`, whose seed `9999-12-31` once failed it: closed
    /// dates shape a provider's market; the simulated source's is always open.
    #[test]
    fn closed_dates_close_a_provider_s_market_never_the_simulated_one() {
        let closed = |config: &Config| {
            let rule: serde_json::Value =
                serde_json::from_str(&config.market().rule_json()).unwrap();
            rule["closed"].as_array().map(Vec::len)
        };
        let provider = config("market_closed_dates = 9999-12-31\n").unwrap();
        assert_eq!(closed(&provider), Some(1));
        let sim = parse(
            "upstream_url = sim\nsymbols = EURUSD\nuser_keys_file = k\nmarket_closed_dates = 9999-12-31\n",
            Path::new("proxy.conf"),
        )
        .unwrap();
        assert_eq!(closed(&sim), Some(0));
    }

    #[test]
    fn the_route_follows_the_key_then_the_environment() {
        let env = |name: &str| match name {
            "HTTPS_PROXY" => Some("http://bob@env-proxy:8080".to_string()),
            "NO_PROXY" => Some(".internal".to_string()),
            _ => None,
        };
        let url = "wss://feed.example/x";
        let c = config("").unwrap();
        let Route::Via { proxy, from } = c.upstream_route(url, &env).unwrap() else {
            panic!()
        };
        assert_eq!((proxy.host.as_str(), from), ("env-proxy", "HTTPS_PROXY"));
        assert_eq!(proxy.password, None);
        assert_eq!(
            c.upstream_route("wss://a.internal:8443/", &env).unwrap(),
            Route::Excepted { var: "NO_PROXY" }
        );
        assert_eq!(c.upstream_route(url, &no_env).unwrap(), Route::Direct);
        assert_eq!(
            config("upstream_proxy = none\n")
                .unwrap()
                .upstream_route(url, &env)
                .unwrap(),
            Route::Direct
        );
        // The key wins over the environment, NO_PROXY included.
        let c = config("upstream_proxy = http://u:p@key-proxy:3128\n").unwrap();
        let Route::Via { proxy, from } = c.upstream_route("wss://a.internal/", &env).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (proxy.host.as_str(), proxy.password.as_deref(), from),
            ("key-proxy", Some("p"), "upstream_proxy")
        );
        // The password from the file or the environment goes to a URL with a user only.
        let mut c = config("").unwrap();
        c.upstream_proxy_password = Secret::new("from-file");
        let Some(Route::Via { proxy, .. }) = c.upstream_route(url, &env).ok() else {
            panic!()
        };
        assert_eq!(proxy.password.as_deref(), Some("from-file"));
        // A bad variable is named, with the way out.
        let bad = |name: &str| (name == "HTTPS_PROXY").then(|| "https://p:1".to_string());
        let e = c.upstream_route(url, &bad).unwrap_err().to_string();
        assert!(
            e.starts_with("proxy.conf: upstream_proxy is unset, so the environment's proxy is used for feed.example, but HTTPS_PROXY: expected "),
            "{e}"
        );
        assert!(
            e.ends_with("(set upstream_proxy = none to connect directly)"),
            "{e}"
        );
    }
    #[test]
    fn targets_are_read_from_upstream_urls() {
        assert_eq!(
            target("wss://feed.example:443/x?k=1"),
            Some((true, "feed.example"))
        );
        assert_eq!(target("WS://u:p@[::1]:9/"), Some((false, "::1")));
        assert_eq!(target("ws://"), None);
    }
}
