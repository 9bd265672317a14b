//! `proxy.conf`: parsing `key = value` lines into a validated [`Config`], with errors that
//! name the file, the line and the key.
//!
//! [`parse`] is pure; [`load`] reads the file and then resolves the upstream API key from
//! `upstream_api_key_file` or the `FXPROXY_UPSTREAM_API_KEY` environment variable.
//!
//! Syntax: a line whose first non-blank character is `#` is a comment; elsewhere a `#` preceded
//! by whitespace starts a trailing comment, except on a `subscribe_message` line, whose JSON
//! template may contain `#` and so runs to the end of the line.
//!
//! Adding a key: a field in [`Config`], its default in [`Config::with_required`], its name in
//! `KEYS` and one arm in `apply`.
//!
//! May import: `base` only; every stage reads the configuration, so it knows none of them.

pub mod address;
pub mod backbone;

use crate::base::logsafe::redacted_key;
use crate::base::market::{Date, Market};
use address::Cidr;
use backbone::{RedisUrl, Role};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The environment variable that supplies the upstream key when the file sets neither
/// `upstream_api_key` nor `upstream_api_key_file`.
pub const API_KEY_ENV: &str = "FXPROXY_UPSTREAM_API_KEY";

/// Replaced in `upstream_api_key_file` by the directory systemd's `LoadCredential=` provides.
const CREDENTIALS_PLACEHOLDER: &str = "${CREDENTIALS_DIRECTORY}";

/// Every key the file may set, in the order of the shipped `proxy.conf`.
pub const KEYS: &[&str] = &[
    "listen",
    "tls_cert_file",
    "tls_key_file",
    "tls_client_ca_file",
    "upstream_url",
    "upstream_api_key",
    "upstream_api_key_file",
    "upstream_ca_file",
    "upstream_bundled_roots",
    "symbols",
    "subscribe_message",
    // Providers, recording and the slow-client policy.
    "provider",
    "provider_template",
    "client_format",
    "record_file",
    "record_max_bytes",
    "slow_client",
    "user_keys_file",
    "auth_timeout_secs",
    "handshake_timeout_secs",
    "upstream_stale_secs",
    "upstream_connect_timeout_secs",
    "upstream_ping_secs",
    "upstream_backoff_min_ms",
    "upstream_backoff_max_secs",
    "market_hours",
    "market_closed_dates",
    "client_queue_len",
    "max_client_lag_secs",
    "client_ping_secs",
    "max_clients",
    "max_clients_per_key",
    "max_pending_connections",
    "max_message_bytes",
    "max_client_messages_per_sec",
    "client_read_buffer_bytes",
    "client_write_buffer_bytes",
    "allowed_origins",
    "http_endpoints",
    "page",
    "status_interval_secs",
    "batch_delay_ms",
    "sim_rate",
    "log_level",
    // The service: how a stop closes clients.
    "drain_secs",
    "backbone",
    "backbone_role",
    "backbone_name",
    "backbone_max_len",
    "trusted_proxies",
];

const REQUIRED: &[&str] = &["upstream_url", "symbols", "user_keys_file"];

pub const DEFAULT_SUBSCRIBE_MESSAGE: &str = r#"{"userKey":"{api_key}","symbol":"{symbols}"}"#;

/// Where quotes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Upstream {
    /// The built-in simulated source (`upstream_url = sim`).
    Sim,
    /// A `ws://` or `wss://` URL, as written in the file.
    Url(String),
    /// `upstream_url` unset: the provider template's `url`.
    ProviderUrl,
    /// `replay:PATH[?speed=N|max][&loop=1]`: a recording played back as a source.
    Replay(Replay),
}

/// A recording to play back (see `crate::feed::replay`).
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// Resolved against the config file's directory.
    pub path: PathBuf,
    /// `None`: as fast as the proxy takes the frames (`speed=max`).
    pub speed: Option<f64>,
    pub looped: bool,
}

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

/// `slow_client`: what becomes of a client that falls behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowClient {
    /// Closed with 1008 `Slow consumer`.
    Disconnect,
    /// Sent the latest quote of each symbol that changed once it catches up.
    Conflate,
}

pub use crate::base::market::MarketHours;

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

/// A credential that never appears in full in `Debug` output; read it with [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for sending upstream; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", redacted_key(&self.0))
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
    pub page: bool,
    /// `None` when `status_interval_secs = 0`.
    pub status_interval: Option<Duration>,
    /// How long the distributor may hold quotes to batch writes; zero means never.
    pub batch_delay: Duration,
    /// Quotes per second in total from the built-in simulator.
    pub sim_rate: u32,
    pub log_level: LogLevel,
    /// On a stop with the listening socket held by systemd (a restart: see
    /// `crate::server::Server::shutdown`), clients are closed with 1012 spread over this long.
    pub drain: Duration,
    /// The Redis backbone; `None`: a single instance.
    pub backbone: Option<RedisUrl>,
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
    /// A config with the given required values and every other key at its default.
    pub fn with_required(
        upstream: Upstream,
        symbols: Vec<String>,
        user_keys_file: PathBuf,
    ) -> Config {
        Config {
            file: PathBuf::new(),
            key_lines: Vec::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8765)),
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            upstream,
            upstream_api_key: Secret::default(),
            upstream_api_key_file: None,
            upstream_ca_file: None,
            upstream_bundled_roots: true,
            symbols,
            subscribe_message: DEFAULT_SUBSCRIBE_MESSAGE.to_string(),
            user_keys_file,
            auth_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            upstream_stale: Duration::from_secs(30),
            upstream_connect_timeout: Duration::from_secs(10),
            upstream_ping: Duration::from_secs(15),
            upstream_backoff_min: Duration::from_millis(1000),
            upstream_backoff_max: Duration::from_secs(60),
            market_hours: MarketHours::Fx,
            market_closed_dates: Vec::new(),
            client_queue_len: 1024,
            max_client_lag: Duration::from_secs(5),
            client_ping: Duration::from_secs(30),
            max_clients: 10_000,
            max_clients_per_key: 0,
            max_pending_connections: 10_000,
            max_message_bytes: 4096,
            max_client_messages_per_sec: 50,
            client_read_buffer_bytes: 1024,
            client_write_buffer_bytes: 4096,
            allowed_origins: Vec::new(),
            http_endpoints: true,
            page: true,
            status_interval: Some(Duration::from_secs(60)),
            batch_delay: Duration::from_millis(20),
            sim_rate: 20,
            log_level: LogLevel::Info,
            drain: Duration::from_secs(2),
            backbone: None,
            backbone_role: Role::Both,
            backbone_name: "fxproxy".to_string(),
            backbone_max_len: 100_000,
            trusted_proxies: Vec::new(),
            provider: ProviderChoice::Tradermade,
            provider_template: None,
            client_format: ClientFormat::Normalized,
            record_file: None,
            record_max_bytes: 100_000_000,
            slow_client: SlowClient::Disconnect,
        }
    }

    /// The market-hours rule `market_hours` and `market_closed_dates` make.
    pub fn market(&self) -> Market {
        Market::new(self.market_hours, &self.market_closed_dates)
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
        ConfigError {
            file: self.file.clone(),
            line: self.line_of(key),
            key: Some(key.to_string()),
            message: message.into(),
        }
    }
}

/// What is wrong with the configuration, and where.
///
/// Displayed as `FILE:LINE: key `KEY`: MESSAGE`; without a line (a missing required key, an
/// unreadable config file) as `FILE: MESSAGE`, so such messages name the key themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based.
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl ConfigError {
    fn at(file: &Path, line: usize, key: Option<&str>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            line: Some(line),
            key: key.map(str::to_string),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(key) = &self.key {
                write!(f, ": key `{key}`")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Reads and parses `path`, then resolves the upstream API key from `upstream_api_key_file`
/// (with `${CREDENTIALS_DIRECTORY}` expanded) or the `FXPROXY_UPSTREAM_API_KEY` environment
/// variable.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        key: None,
        message: format!("cannot read the configuration file: {e}"),
    })?;
    let mut config = parse(&text, path)?;
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY");
    resolve_api_key(
        &mut config,
        credentials.as_deref(),
        std::env::var(API_KEY_ENV).ok(),
        |p| std::fs::read_to_string(p),
    )?;
    resolve_tls_paths(&mut config, credentials.as_deref())?;
    Ok(config)
}

/// Parses the text of a config file; `file` is only used for messages and for resolving
/// relative paths. Touches neither the file system nor the environment.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let base = file.parent().unwrap_or(Path::new(""));
    let mut config = Config::with_required(Upstream::Sim, Vec::new(), PathBuf::new());
    config.file = file.to_path_buf();

    // Some Windows editors start UTF-8 files with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let split = trimmed.split_once('=').map(|(k, v)| (k.trim(), v));
        let Some((key, value)) = split.filter(|(k, _)| !k.is_empty()) else {
            return Err(ConfigError::at(
                file,
                line_no,
                None,
                format!("expected `key = value`, got {trimmed:?}"),
            ));
        };
        let Some(&known) = KEYS.iter().find(|k| **k == key) else {
            let mut message = format!("unknown key `{}`", crate::base::logsafe::escaped(key));
            if let Some(near) = suggestion(key) {
                message.push_str(&format!(" (did you mean `{near}`?)"));
            }
            return Err(ConfigError::at(file, line_no, None, message));
        };
        if let Some(first) = config.line_of(known) {
            return Err(ConfigError::at(
                file,
                line_no,
                Some(known),
                format!("set twice (first on line {first})"),
            ));
        }
        let value = if known == "subscribe_message" {
            value.trim()
        } else {
            strip_trailing_comment(value).trim()
        };
        let conflict = match known {
            "upstream_api_key" => Some("upstream_api_key_file"),
            "upstream_api_key_file" => Some("upstream_api_key"),
            _ => None,
        };
        if let Some(other) = conflict {
            if let Some(first) = config.line_of(other) {
                return Err(ConfigError::at(
                    file,
                    line_no,
                    Some(known),
                    format!("`{other}` is already set on line {first}; set only one of the two"),
                ));
            }
        }
        apply(&mut config, known, value, base)
            .map_err(|message| ConfigError::at(file, line_no, Some(known), message))?;
        config.key_lines.push((known, line_no));
    }

    if config.upstream_backoff_min > config.upstream_backoff_max {
        return Err(config.error_at(
            "upstream_backoff_min_ms",
            format!(
                "the first reconnect delay ({} ms) is longer than upstream_backoff_max_secs ({} s)",
                config.upstream_backoff_min.as_millis(),
                config.upstream_backoff_max.as_secs()
            ),
        ));
    }
    check_tls(&config)?;
    // Unset, it follows max_clients upward: a storm of max_clients connecting at once must
    // never find the pending set full.
    if config.line_of("max_pending_connections").is_none() {
        config.max_pending_connections = config.max_pending_connections.max(config.max_clients);
    }
    check_provider_keys(&mut config)?;
    for key in REQUIRED {
        // Another provider's template may give the URL; `provider_description` checks it.
        let given_by_template =
            *key == "upstream_url" && config.provider != ProviderChoice::Tradermade;
        if config.line_of(key).is_none() && !given_by_template {
            return Err(ConfigError {
                file: file.to_path_buf(),
                line: None,
                key: Some((*key).to_string()),
                message: format!("missing required key `{key}`"),
            });
        }
    }
    Ok(config)
}

/// Sets one key from its (comment-free, trimmed) value. The message says what was expected.
fn apply(c: &mut Config, key: &str, v: &str, base: &Path) -> Result<(), String> {
    match key {
        "listen" => {
            c.listen = v
                .parse()
                .map_err(|_| format!("expected an address such as 127.0.0.1:8765, got {v:?}"))?
        }
        "tls_cert_file" => c.tls_cert_file = optional_path(v, base),
        "tls_key_file" => c.tls_key_file = optional_path(v, base),
        "tls_client_ca_file" => c.tls_client_ca_file = optional_path(v, base),
        "upstream_ca_file" => c.upstream_ca_file = optional_path(v, base),
        "upstream_bundled_roots" => c.upstream_bundled_roots = boolean(v)?,
        "upstream_url" => c.upstream = parse_upstream(v, base)?,
        "upstream_api_key" => c.upstream_api_key = Secret::new(v),
        "upstream_api_key_file" => c.upstream_api_key_file = Some(key_file_path(v, base)?),
        "symbols" => c.symbols = parse_symbols(v)?,
        "subscribe_message" => {
            if v.is_empty() {
                return Err("expected the text to send upstream, got nothing".to_string());
            }
            c.subscribe_message = v.to_string();
        }
        "user_keys_file" => c.user_keys_file = relative_to(base, nonempty_path(v)?),
        "auth_timeout_secs" => c.auth_timeout = secs(v, 1, 3600)?,
        "handshake_timeout_secs" => c.handshake_timeout = secs(v, 1, 60)?,
        "upstream_stale_secs" => c.upstream_stale = secs(v, 1, 86_400)?,
        "upstream_connect_timeout_secs" => c.upstream_connect_timeout = secs(v, 1, 300)?,
        "upstream_ping_secs" => c.upstream_ping = secs(v, 1, 3600)?,
        "upstream_backoff_min_ms" => {
            let n = whole(v, 10, 60_000).ok_or_else(|| {
                format!("expected a whole number of milliseconds from 10 to 60000, got {v:?}")
            })?;
            c.upstream_backoff_min = Duration::from_millis(n);
        }
        "upstream_backoff_max_secs" => c.upstream_backoff_max = secs(v, 1, 3600)?,
        "market_hours" => {
            c.market_hours = match v.to_ascii_lowercase().as_str() {
                "fx" => MarketHours::Fx,
                "always" => MarketHours::Always,
                _ => return Err(format!("expected `fx` or `always`, got {v:?}")),
            }
        }
        "market_closed_dates" => c.market_closed_dates = parse_dates(v)?,
        "client_queue_len" => c.client_queue_len = count(v, "", 1, 1_000_000)?,
        "max_client_lag_secs" => c.max_client_lag = secs(v, 1, 3600)?,
        "client_ping_secs" => c.client_ping = secs(v, 1, 3600)?,
        "max_clients" => c.max_clients = count(v, "", 1, 1_000_000)?,
        "max_clients_per_key" => {
            c.max_clients_per_key = count(v, " (0 for unlimited)", 0, 1_000_000)?
        }
        "max_pending_connections" => c.max_pending_connections = count(v, "", 1, 1_000_000)?,
        "max_message_bytes" => c.max_message_bytes = count(v, " of bytes", 128, 16_777_216)?,
        "max_client_messages_per_sec" => {
            c.max_client_messages_per_sec = whole(v, 0, 1_000_000)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    format!("expected 0 (no limit) or a whole number from 1 to 1000000, got {v:?}")
                })?
        }
        "client_read_buffer_bytes" => {
            c.client_read_buffer_bytes = count(v, " of bytes", 256, 1_048_576)?
        }
        "client_write_buffer_bytes" => {
            c.client_write_buffer_bytes = count(v, " of bytes", 256, 1_048_576)?
        }
        "allowed_origins" => c.allowed_origins = parse_origins(v)?,
        "http_endpoints" => c.http_endpoints = boolean(v)?,
        "page" => c.page = boolean(v)?,
        "drain_secs" => {
            let n = whole(v, 0, 600).ok_or_else(|| {
                format!(
                    "expected 0 (all at once) or a whole number of seconds up to 600, got {v:?}"
                )
            })?;
            c.drain = Duration::from_secs(n);
        }
        "status_interval_secs" => {
            let n = whole(v, 0, 86_400).ok_or_else(|| {
                format!("expected 0 (off) or a whole number of seconds from 1 to 86400, got {v:?}")
            })?;
            c.status_interval = (n > 0).then(|| Duration::from_secs(n));
        }
        "batch_delay_ms" => {
            let n = whole(v, 0, 1000).ok_or_else(|| {
                format!("expected a whole number of milliseconds from 0 to 1000, got {v:?}")
            })?;
            c.batch_delay = Duration::from_millis(n);
        }
        "sim_rate" => {
            c.sim_rate = whole(v, 1, 1_000_000)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    format!(
                        "expected a whole number of quotes per second from 1 to 1000000, got {v:?}"
                    )
                })?
        }
        "log_level" => {
            c.log_level = match v.to_ascii_lowercase().as_str() {
                "error" => LogLevel::Error,
                "warn" => LogLevel::Warn,
                "info" => LogLevel::Info,
                "debug" => LogLevel::Debug,
                "trace" => LogLevel::Trace,
                _ => {
                    return Err(format!(
                        "expected error, warn, info, debug or trace, got {v:?}"
                    ))
                }
            }
        }
        "backbone" => {
            c.backbone = if v.is_empty() {
                None
            } else {
                Some(RedisUrl::parse(v)?)
            }
        }
        "backbone_role" => c.backbone_role = Role::parse(v)?,
        "backbone_name" => c.backbone_name = backbone::parse_name(v)?,
        "backbone_max_len" => {
            c.backbone_max_len = whole(v, 1000, 100_000_000).ok_or_else(|| {
                format!(
                    "expected a whole number of stream entries from 1000 to 100000000, got {v:?}"
                )
            })?
        }
        "trusted_proxies" => c.trusted_proxies = address::parse_list(v)?,
        "provider" => {
            c.provider = match v.to_ascii_lowercase().as_str() {
                "tradermade" => ProviderChoice::Tradermade,
                "tradermade-v2" => ProviderChoice::TradermadeV2,
                "custom" => ProviderChoice::Custom,
                _ => {
                    return Err(format!(
                        "expected `tradermade`, `tradermade-v2` or `custom`, got {v:?}"
                    ))
                }
            }
        }
        "provider_template" => c.provider_template = Some(relative_to(base, nonempty_path(v)?)),
        "client_format" => {
            c.client_format = match v.to_ascii_lowercase().as_str() {
                "normalized" => ClientFormat::Normalized,
                "upstream" => ClientFormat::Upstream,
                _ => return Err(format!("expected `normalized` or `upstream`, got {v:?}")),
            }
        }
        "record_file" => {
            c.record_file = (!v.is_empty()).then(|| relative_to(base, v));
        }
        "record_max_bytes" => {
            c.record_max_bytes = whole(v, 1024, 1_000_000_000_000).ok_or_else(|| {
                format!("expected a whole number of bytes from 1024 to 1000000000000, got {v:?}")
            })?
        }
        "slow_client" => {
            c.slow_client = match v.to_ascii_lowercase().as_str() {
                "disconnect" => SlowClient::Disconnect,
                "conflate" => SlowClient::Conflate,
                _ => return Err(format!("expected `disconnect` or `conflate`, got {v:?}")),
            }
        }
        other => return Err(format!("key `{other}` is listed in KEYS but has no parser")),
    }
    Ok(())
}

/// Cuts a trailing comment: `#` after whitespace. A `#` glued to a word (`a#b`) stays.
fn strip_trailing_comment(value: &str) -> &str {
    let bytes = value.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &value[..i];
        }
    }
    value
}

/// Digits only (no sign, no spaces), within `min..=max`.
fn whole(v: &str, min: u64, max: u64) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u64>().ok().filter(|n| (min..=max).contains(n))
}

fn secs(v: &str, min: u64, max: u64) -> Result<Duration, String> {
    whole(v, min, max)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("expected a whole number of seconds from {min} to {max}, got {v:?}"))
}

fn count(v: &str, unit: &str, min: u64, max: u64) -> Result<usize, String> {
    whole(v, min, max)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("expected a whole number{unit} from {min} to {max}, got {v:?}"))
}

fn boolean(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" => Ok(true),
        "false" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "expected true or false (or yes/no, on/off), got {v:?}"
        )),
    }
}

fn parse_upstream(v: &str, base: &Path) -> Result<Upstream, String> {
    if v.eq_ignore_ascii_case("sim") {
        return Ok(Upstream::Sim);
    }
    if let Some(spec) = v.strip_prefix("replay:") {
        return parse_replay(spec, base).map(Upstream::Replay);
    }
    let expected = "expected `sim`, `replay:PATH` or a ws:// or wss:// URL with a host";
    let lower = v.to_ascii_lowercase();
    let Some(rest) = lower
        .strip_prefix("ws://")
        .or_else(|| lower.strip_prefix("wss://"))
    else {
        return Err(format!("{expected}, got {v:?}"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host = if host_port.starts_with('[') {
        host_port
            .split(']')
            .next()
            .unwrap_or("")
            .trim_start_matches('[')
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    if host.is_empty() || v.chars().any(char::is_whitespace) {
        return Err(format!("{expected}, got {v:?}"));
    }
    Ok(Upstream::Url(v.to_string()))
}

/// `PATH[?speed=N|max][&loop=1]`, after `replay:`.
fn parse_replay(spec: &str, base: &Path) -> Result<Replay, String> {
    let expected = "expected `replay:PATH`, optionally with `?speed=N` (N times the recorded pace, or `max`) and `&loop=1`";
    let (path, query) = spec.split_once('?').unwrap_or((spec, ""));
    if path.is_empty() {
        return Err(format!("{expected}, got no path"));
    }
    let mut replay = Replay {
        path: relative_to(base, path),
        speed: Some(1.0),
        looped: false,
    };
    for param in query.split('&').filter(|p| !p.is_empty()) {
        match param.split_once('=') {
            Some(("speed", "max")) => replay.speed = None,
            Some(("speed", n)) => {
                let speed = n
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0 && *s <= 1e6)
                    .ok_or_else(|| {
                        format!("{expected}; `speed` wants a number above 0 or `max`, got {n:?}")
                    })?;
                replay.speed = Some(speed);
            }
            Some(("loop", "1" | "true")) => replay.looped = true,
            Some(("loop", "0" | "false")) => replay.looped = false,
            _ => return Err(format!("{expected}, got {param:?}")),
        }
    }
    Ok(replay)
}

/// The provider keys that only make sense together, checked once the whole file is read.
fn check_provider_keys(c: &mut Config) -> Result<(), ConfigError> {
    let provider = c.provider;
    if provider == ProviderChoice::Custom && c.provider_template.is_none() {
        return Err(c.error_at(
            "provider",
            "`provider = custom` needs `provider_template`, the file that describes the protocol (see providers/ for examples)",
        ));
    }
    if provider != ProviderChoice::Custom && c.line_of("provider_template").is_some() {
        return Err(c.error_at(
            "provider_template",
            format!(
                "applies to `provider = custom` only (provider is {})",
                provider.name()
            ),
        ));
    }
    if provider != ProviderChoice::Tradermade && c.line_of("subscribe_message").is_some() {
        return Err(c.error_at(
            "subscribe_message",
            format!(
                "applies to `provider = tradermade` only; with {} the messages are in its template",
                provider.name()
            ),
        ));
    }
    if c.line_of("upstream_url").is_none() && provider != ProviderChoice::Tradermade {
        c.upstream = Upstream::ProviderUrl;
    }
    if provider != ProviderChoice::Tradermade && c.upstream == Upstream::Sim {
        return Err(c.error_at(
            "upstream_url",
            format!(
                "the built-in simulator speaks the tradermade protocol, not {} (a recording of that provider plays with `replay:PATH`)",
                provider.name()
            ),
        ));
    }
    Ok(())
}

fn parse_symbols(v: &str) -> Result<Vec<String>, String> {
    let mut symbols: Vec<String> = Vec::new();
    for part in v.split(',') {
        let symbol = part.trim().to_ascii_uppercase();
        if symbol.is_empty() {
            return Err(format!("expected comma-separated symbols such as EURUSD,GBPUSD, got an empty entry in {v:?}"));
        }
        let valid_char =
            |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || "._/:-".contains(c);
        if symbol.len() > 32 || !symbol.chars().all(valid_char) {
            return Err(format!(
                "symbol {symbol:?} must be 1 to 32 characters of A-Z, 0-9 and . _ / : -"
            ));
        }
        if symbols.contains(&symbol) {
            return Err(format!("symbol {symbol} is listed twice"));
        }
        symbols.push(symbol);
    }
    Ok(symbols)
}

/// Comma-separated `YYYY-MM-DD` dates; empty is none.
fn parse_dates(v: &str) -> Result<Vec<Date>, String> {
    if v.is_empty() {
        return Ok(Vec::new());
    }
    let mut dates = v
        .split(',')
        .map(|d| {
            d.trim().parse::<Date>().map_err(|()| {
                format!(
                    "expected UTC dates as YYYY-MM-DD, comma-separated (e.g. 2026-12-25,2027-01-01), got {:?}",
                    d.trim()
                )
            })
        })
        .collect::<Result<Vec<Date>, String>>()?;
    dates.sort();
    dates.dedup();
    Ok(dates)
}

fn parse_origins(v: &str) -> Result<Vec<String>, String> {
    if v.is_empty() {
        return Ok(Vec::new());
    }
    let mut origins = Vec::new();
    for part in v.split(',') {
        let origin = part.trim().trim_end_matches('/').to_ascii_lowercase();
        let host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        let bad = |c: char| c.is_whitespace() || "/?#@".contains(c);
        if host.is_empty() || host.starts_with(':') || host.contains(bad) {
            return Err(format!(
                "expected comma-separated origins such as https://example.com, got {:?}",
                part.trim()
            ));
        }
        if !origins.contains(&origin) {
            origins.push(origin);
        }
    }
    Ok(origins)
}

fn nonempty_path(v: &str) -> Result<&str, String> {
    if v.is_empty() {
        Err("expected a file path, got nothing".to_string())
    } else {
        Ok(v)
    }
}

fn relative_to(base: &Path, v: &str) -> PathBuf {
    base.join(v)
}

/// A path that may be left empty (unset), kept as written when it uses
/// `${CREDENTIALS_DIRECTORY}` (see [`key_file_path`]).
fn optional_path(v: &str, base: &Path) -> Option<PathBuf> {
    key_file_path(v, base).ok()
}

/// A path with `${CREDENTIALS_DIRECTORY}` is kept as written: [`load`] expands it and only
/// then resolves it, because the variable is not read while parsing.
fn key_file_path(v: &str, base: &Path) -> Result<PathBuf, String> {
    let v = nonempty_path(v)?;
    if v.contains(CREDENTIALS_PLACEHOLDER) {
        Ok(PathBuf::from(v))
    } else {
        Ok(relative_to(base, v))
    }
}

/// Expands `${CREDENTIALS_DIRECTORY}` in a key file path and resolves the result against
/// `base`; paths without the placeholder were resolved by [`parse`] and are returned as they are.
fn expand_credentials(
    path: &Path,
    credentials_dir: Option<&OsStr>,
    base: &Path,
) -> Result<PathBuf, String> {
    // Placeholder paths come from a &str in `key_file_path`, so they are valid UTF-8.
    let Some(text) = path
        .to_str()
        .filter(|t| t.contains(CREDENTIALS_PLACEHOLDER))
    else {
        return Ok(path.to_path_buf());
    };
    let Some(dir) = credentials_dir.filter(|d| !d.is_empty()) else {
        return Err(
            "uses ${CREDENTIALS_DIRECTORY} but that environment variable is not set \
             (it is set by systemd's LoadCredential=)"
                .to_string(),
        );
    };
    let mut expanded = OsString::new();
    for (i, piece) in text.split(CREDENTIALS_PLACEHOLDER).enumerate() {
        if i > 0 {
            expanded.push(dir);
        }
        expanded.push(piece);
    }
    // The directory is joined as an OsString so a non-UTF-8 path survives intact.
    Ok(base.join(expanded))
}

/// The TLS keys that only make sense together.
fn check_tls(c: &Config) -> Result<(), ConfigError> {
    match (&c.tls_cert_file, &c.tls_key_file) {
        (Some(_), None) => {
            return Err(c.error_at(
                "tls_cert_file",
                "set tls_key_file too: the certificate's private key (PEM)",
            ))
        }
        (None, Some(_)) => {
            return Err(c.error_at(
                "tls_key_file",
                "set tls_cert_file too: the certificate chain (PEM) for this key",
            ))
        }
        _ => {}
    }
    if c.tls_client_ca_file.is_some() && c.tls_cert_file.is_none() {
        return Err(c.error_at(
            "tls_client_ca_file",
            "client certificates need TLS: set tls_cert_file and tls_key_file too",
        ));
    }
    if !c.upstream_bundled_roots && c.upstream_ca_file.is_none() {
        return Err(c.error_at(
            "upstream_bundled_roots",
            "with false, upstream_ca_file must name the CA (PEM) that signs the upstream's certificate",
        ));
    }
    Ok(())
}

/// Expands `${CREDENTIALS_DIRECTORY}` in the TLS file paths (systemd's `LoadCredential=`).
fn resolve_tls_paths(
    config: &mut Config,
    credentials_dir: Option<&OsStr>,
) -> Result<(), ConfigError> {
    let base = config.file.parent().unwrap_or(Path::new("")).to_path_buf();
    let expand = |config: &Config, key: &str, path: &Option<PathBuf>| {
        path.as_ref()
            .map(|p| expand_credentials(p, credentials_dir, &base))
            .transpose()
            .map_err(|m| config.error_at(key, m))
    };
    let cert = expand(config, "tls_cert_file", &config.tls_cert_file)?;
    let key = expand(config, "tls_key_file", &config.tls_key_file)?;
    let client_ca = expand(config, "tls_client_ca_file", &config.tls_client_ca_file)?;
    let upstream_ca = expand(config, "upstream_ca_file", &config.upstream_ca_file)?;
    config.tls_cert_file = cert;
    config.tls_key_file = key;
    config.tls_client_ca_file = client_ca;
    config.upstream_ca_file = upstream_ca;
    Ok(())
}

/// Fills `config.upstream_api_key`: an explicit `upstream_api_key` (even empty) wins; else the
/// key file's contents with trailing whitespace trimmed; else `env_key`.
fn resolve_api_key(
    config: &mut Config,
    credentials_dir: Option<&OsStr>,
    env_key: Option<String>,
    read: impl Fn(&Path) -> io::Result<String>,
) -> Result<(), ConfigError> {
    const KEY: &str = "upstream_api_key_file";
    if let Some(path) = config.upstream_api_key_file.clone() {
        let base = config.file.parent().unwrap_or(Path::new("")).to_path_buf();
        let path = expand_credentials(&path, credentials_dir, &base)
            .map_err(|m| config.error_at(KEY, m))?;
        let text = read(&path)
            .map_err(|e| config.error_at(KEY, format!("cannot read {}: {e}", path.display())))?;
        let key = text.trim_end();
        if key.is_empty() {
            return Err(config.error_at(KEY, format!("{} is empty", path.display())));
        }
        config.upstream_api_key = Secret::new(key);
        config.upstream_api_key_file = Some(path);
    } else if config.line_of("upstream_api_key").is_none() {
        if let Some(key) = env_key {
            config.upstream_api_key = Secret::new(key.trim());
        }
    }
    Ok(())
}

/// The known key nearest to an unknown one, if it is plausibly a typo.
fn suggestion(unknown: &str) -> Option<&'static str> {
    let unknown = unknown.to_ascii_lowercase();
    let limit = if unknown.len() > 10 { 3 } else { 2 };
    let mut best: Option<(usize, &'static str)> = None;
    for &known in KEYS {
        let d = edit_distance(&unknown, known);
        if d <= limit && best.map_or(true, |(bd, _)| d < bd) {
            best = Some((d, known));
        }
    }
    best.map(|(_, k)| k).or_else(|| {
        // `auth_timeout` for `auth_timeout_secs`: a prefix is too far by edits but obvious.
        (unknown.len() >= 4)
            .then(|| {
                KEYS.iter()
                    .copied()
                    .find(|k| k.starts_with(unknown.as_str()))
            })
            .flatten()
    })
}

/// Levenshtein distance over bytes; keys are ASCII.
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, &ca) in a.as_bytes().iter().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const MINIMAL: &str = "upstream_url = sim\nsymbols = EURUSD\nuser_keys_file = users.keys\n";

    fn parse_ok(text: &str) -> Config {
        parse(text, Path::new("proxy.conf")).expect("config should parse")
    }

    fn parse_err(text: &str) -> String {
        parse(text, Path::new("proxy.conf"))
            .expect_err("config should be rejected")
            .to_string()
    }

    #[test]
    fn unset_max_pending_connections_follows_max_clients_upward() {
        let base = "upstream_url = sim\nsymbols = EURUSD\nuser_keys_file = k\n";
        let with = |extra: &str| {
            parse(&format!("{base}{extra}"), Path::new("proxy.conf"))
                .unwrap()
                .max_pending_connections
        };
        assert_eq!(with(""), 10_000);
        assert_eq!(with("max_clients = 8\n"), 10_000);
        assert_eq!(with("max_clients = 20000\n"), 20_000);
        assert_eq!(
            with("max_clients = 20000\nmax_pending_connections = 32\n"),
            32
        );
    }

    #[test]
    fn defaults_apply_to_unset_keys() {
        let c = parse_ok(MINIMAL);
        assert_eq!(c.listen, "127.0.0.1:8765".parse().unwrap());
        assert_eq!(c.upstream, Upstream::Sim);
        assert!(c.upstream_api_key.is_empty());
        assert_eq!(c.upstream_api_key_file, None);
        assert_eq!(c.symbols, ["EURUSD"]);
        assert_eq!(c.subscribe_message, DEFAULT_SUBSCRIBE_MESSAGE);
        assert_eq!(c.user_keys_file, PathBuf::from("users.keys"));
        assert_eq!(c.auth_timeout, Duration::from_secs(10));
        assert_eq!(c.handshake_timeout, Duration::from_secs(5));
        assert_eq!(c.upstream_stale, Duration::from_secs(30));
        assert_eq!(c.upstream_connect_timeout, Duration::from_secs(10));
        assert_eq!(c.upstream_ping, Duration::from_secs(15));
        assert_eq!(c.upstream_backoff_min, Duration::from_secs(1));
        assert_eq!(c.upstream_backoff_max, Duration::from_secs(60));
        assert_eq!(c.market_hours, MarketHours::Fx);
        assert!(c.market_closed_dates.is_empty());
        assert_eq!(c.client_queue_len, 1024);
        assert_eq!(c.max_client_lag, Duration::from_secs(5));
        assert_eq!(c.client_ping, Duration::from_secs(30));
        assert_eq!(c.max_clients, 10_000);
        assert_eq!(c.max_clients_per_key, 0);
        assert_eq!(c.max_pending_connections, 10_000);
        assert_eq!(c.max_message_bytes, 4096);
        assert_eq!(c.max_client_messages_per_sec, 50);
        assert!(c.allowed_origins.is_empty());
        assert!(c.http_endpoints);
        assert!(c.page);
        assert_eq!(c.status_interval, Some(Duration::from_secs(60)));
        assert_eq!(c.batch_delay, Duration::from_millis(20));
        assert_eq!(c.sim_rate, 20);
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.tls_cert_file, None);
        assert_eq!(c.tls_key_file, None);
        assert_eq!(c.tls_client_ca_file, None);
        assert_eq!(c.upstream_ca_file, None);
        assert!(c.upstream_bundled_roots);
        assert_eq!(c.line_of("symbols"), Some(2));
        assert_eq!(c.line_of("listen"), None);
    }

    /// The shipped file lists every key commented out with its default; uncommented, those
    /// values must parse to the same config as leaving them out.
    #[test]
    fn every_default_written_out_parses_to_the_defaults() {
        let text = format!(
            "{MINIMAL}listen = 127.0.0.1:8765\nupstream_api_key =\n\
             subscribe_message = {DEFAULT_SUBSCRIBE_MESSAGE}\nauth_timeout_secs = 10\n\
             handshake_timeout_secs = 5\nupstream_stale_secs = 30\n\
             upstream_connect_timeout_secs = 10\nupstream_ping_secs = 15\nmarket_hours = fx\n\
             market_closed_dates =\n\
             upstream_backoff_min_ms = 1000\nupstream_backoff_max_secs = 60\n\
             client_queue_len = 1024\nmax_client_lag_secs = 5\nclient_ping_secs = 30\nmax_clients = 10000\n\
             max_clients_per_key = 0\nmax_pending_connections = 10000\n\
             max_message_bytes = 4096\nmax_client_messages_per_sec = 50\nallowed_origins =\n\
             client_read_buffer_bytes = 1024\nclient_write_buffer_bytes = 4096\n\
             http_endpoints = true\npage = true\nstatus_interval_secs = 60\nbatch_delay_ms = 20\n\
             sim_rate = 20\nlog_level = info\ndrain_secs = 2\nbackbone =\nbackbone_role = both\n\
             backbone_name = fxproxy\nbackbone_max_len = 100000\ntrusted_proxies =\n\
             provider = tradermade\nclient_format = normalized\nrecord_file =\n\
             record_max_bytes = 100000000\nslow_client = disconnect\ntls_cert_file =\n\
             tls_key_file =\ntls_client_ca_file =\nupstream_ca_file =\nupstream_bundled_roots = true\n"
        );
        let c = parse_ok(&text);
        let d = parse_ok(MINIMAL);
        let strip = |c: &Config| {
            let mut c = c.clone();
            c.key_lines.clear();
            format!("{c:?}")
        };
        assert_eq!(strip(&c), strip(&d));
        // Every key but the file variant of the API key and the template (for `provider =
        // custom` only) was set, and each has a parser.
        assert_eq!(c.key_lines.len(), KEYS.len() - 2);
    }

    #[test]
    fn the_shipped_proxy_conf_parses_and_lists_every_key() {
        let shipped = include_str!("../../proxy.conf");
        parse(shipped, Path::new("proxy.conf")).expect("the shipped proxy.conf parses");
        for key in KEYS {
            let listed = shipped.lines().any(|l| {
                let l = l.trim_start_matches('#').trim_start();
                l.starts_with(key) && l[key.len()..].trim_start().starts_with('=')
            });
            assert!(listed, "proxy.conf does not list `{key}`");
        }
    }

    #[test]
    fn every_listed_key_has_a_parser() {
        for key in KEYS {
            let mut c = Config::with_required(Upstream::Sim, vec![], PathBuf::new());
            if let Err(m) = apply(&mut c, key, "", Path::new("")) {
                assert!(!m.contains("has no parser"), "{key}: {m}");
            }
        }
    }

    #[test]
    fn values_are_parsed_and_normalised() {
        let c = parse_ok(
            "upstream_url = wss://marketdata.tradermade.com/feedadv\n\
             symbols = eurusd, GBPUSD ,xau/usd\n\
             user_keys_file = /etc/fxproxy/users.keys\n\
             listen = [::]:9000\nstatus_interval_secs = 0\nbatch_delay_ms = 250\n\
             market_hours = Always\nhttp_endpoints = no\npage = OFF\nlog_level = DEBUG\n\
             market_closed_dates = 2027-01-01, 2026-12-25,2026-12-25\n\
             allowed_origins = HTTPS://Example.com/, http://localhost:3000\n\
             max_message_bytes = 128\nsim_rate = 1000000\n",
        );
        assert_eq!(
            c.upstream,
            Upstream::Url("wss://marketdata.tradermade.com/feedadv".into())
        );
        assert_eq!(c.symbols, ["EURUSD", "GBPUSD", "XAU/USD"]);
        assert_eq!(c.user_keys_file, PathBuf::from("/etc/fxproxy/users.keys"));
        assert_eq!(c.listen, "[::]:9000".parse().unwrap());
        assert_eq!(c.status_interval, None);
        assert_eq!(c.batch_delay, Duration::from_millis(250));
        assert_eq!(c.market_hours, MarketHours::Always);
        let dates: Vec<String> = c
            .market_closed_dates
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(dates, ["2026-12-25", "2027-01-01"]);
        assert_eq!(c.market().closed_dates().len(), 2);
        assert!(!c.http_endpoints && !c.page);
        assert_eq!(c.log_level.name(), "debug");
        assert_eq!(
            c.allowed_origins,
            ["https://example.com", "http://localhost:3000"]
        );
        assert_eq!(c.max_message_bytes, 128);
        assert_eq!(c.sim_rate, 1_000_000);
    }

    #[test]
    fn bad_values_name_file_line_and_key() {
        let cases = [
            (
                "auth_timeout_secs = ten",
                r#"proxy.conf:4: key `auth_timeout_secs`: expected a whole number of seconds from 1 to 3600, got "ten""#,
            ),
            (
                "auth_timeout_secs = 0",
                "expected a whole number of seconds from 1 to 3600, got \"0\"",
            ),
            ("handshake_timeout_secs = 61", "from 1 to 60, got \"61\""),
            ("upstream_stale_secs = -1", "from 1 to 86400"),
            ("upstream_connect_timeout_secs = 301", "from 1 to 300"),
            ("upstream_ping_secs = 1.5", "from 1 to 3600"),
            ("client_ping_secs = +5", "from 1 to 3600"),
            (
                "listen = localhost",
                "key `listen`: expected an address such as 127.0.0.1:8765",
            ),
            (
                "market_hours = weekdays",
                "key `market_hours`: expected `fx` or `always`",
            ),
            (
                "market_closed_dates = 2026-12-25,2026-13-01",
                r#"proxy.conf:4: key `market_closed_dates`: expected UTC dates as YYYY-MM-DD, comma-separated (e.g. 2026-12-25,2027-01-01), got "2026-13-01""#,
            ),
            ("market_closed_dates = 2026-02-29", "got \"2026-02-29\""),
            ("market_closed_dates = 25/12/2026", "got \"25/12/2026\""),
            ("market_closed_dates = 2026-12-25,", "got \"\""),
            (
                "client_queue_len = 0",
                "key `client_queue_len`: expected a whole number from 1 to 1000000",
            ),
            (
                "max_clients = 1000001",
                "key `max_clients`: expected a whole number from 1 to 1000000",
            ),
            (
                "max_clients_per_key = x",
                "expected a whole number (0 for unlimited) from 0 to 1000000",
            ),
            (
                "max_message_bytes = 4KiB",
                "expected a whole number of bytes from 128 to 16777216",
            ),
            ("max_message_bytes = 127", "from 128 to 16777216"),
            (
                "allowed_origins = example.com",
                "key `allowed_origins`: expected comma-separated origins",
            ),
            (
                "allowed_origins = https://a.com/path",
                "\"https://a.com/path\"",
            ),
            ("allowed_origins = https://a.com,,https://b.com", "got \"\""),
            (
                "http_endpoints = maybe",
                "key `http_endpoints`: expected true or false",
            ),
            ("page = 1", "key `page`: expected true or false"),
            (
                "status_interval_secs = 86401",
                "expected 0 (off) or a whole number of seconds from 1 to 86400",
            ),
            (
                "batch_delay_ms = 1001",
                "expected a whole number of milliseconds from 0 to 1000",
            ),
            (
                "sim_rate = 0",
                "expected a whole number of quotes per second from 1 to 1000000",
            ),
            (
                "log_level = verbose",
                "key `log_level`: expected error, warn, info, debug or trace",
            ),
            (
                "subscribe_message =",
                "key `subscribe_message`: expected the text to send upstream",
            ),
            (
                "upstream_api_key_file =",
                "key `upstream_api_key_file`: expected a file path",
            ),
            (
                "backbone = 127.0.0.1:6379",
                "key `backbone`: expected redis://HOST:PORT or redis://HOST:PORT/DB",
            ),
            (
                "backbone_role = leader",
                "key `backbone_role`: expected `both`, `ingest` or `edge`",
            ),
            (
                "backbone_name = fx prod",
                "key `backbone_name`: expected 1 to 64",
            ),
            ("backbone_max_len = 10", "from 1000 to 100000000"),
            (
                "trusted_proxies = 10.0.0.0/33",
                "key `trusted_proxies`: expected an IP address or a network",
            ),
        ];
        for (line, expected) in cases {
            let text = format!("{MINIMAL}{line}\n");
            let message = parse_err(&text);
            assert!(
                message.starts_with("proxy.conf:4: key `"),
                "{line}: {message}"
            );
            assert!(message.contains(expected), "{line}: {message}");
        }
    }

    #[test]
    fn backbone_keys() {
        let c = parse_ok(&format!(
            "{MINIMAL}backbone = redis://10.0.0.5:6380/2\nbackbone_role = Edge\n\
             backbone_name = fx-eu\nbackbone_max_len = 5000\ntrusted_proxies = 127.0.0.1, 10.0.0.0/8\n"
        ));
        assert_eq!(
            c.backbone.as_ref().map(|u| u.shown()),
            Some("redis://10.0.0.5:6380/2".to_string())
        );
        assert_eq!(c.backbone_role, Role::Edge);
        assert_eq!(c.backbone_name, "fx-eu");
        assert_eq!(c.backbone_max_len, 5000);
        assert_eq!(c.trusted_proxies.len(), 2);
        assert!(parse_ok(MINIMAL).backbone.is_none());
    }

    #[test]
    fn bad_required_values_are_rejected() {
        let with = |line: &str| parse_err(&format!("{line}\nsymbols = A\nuser_keys_file = k\n"));
        for url in [
            "http://example.com",
            "ws://",
            "wss:///feed",
            "ws://:80/",
            "ws://a b",
            "",
            "simulator",
        ] {
            let m = with(&format!("upstream_url = {url}"));
            assert!(
                m.starts_with("proxy.conf:1: key `upstream_url`: expected `sim`, `replay:PATH` or a ws:// or wss:// URL with a host"),
                "{url}: {m}"
            );
        }
        assert_eq!(
            parse_ok("upstream_url = ws://[::1]:9/\nsymbols = A\nuser_keys_file = k").upstream,
            Upstream::Url("ws://[::1]:9/".into())
        );

        let with =
            |line: &str| parse_err(&format!("upstream_url = sim\n{line}\nuser_keys_file = k\n"));
        assert!(with("symbols =")
            .starts_with("proxy.conf:2: key `symbols`: expected comma-separated symbols"));
        assert!(with("symbols = EURUSD,").contains("empty entry"));
        assert!(with("symbols = EURUSD,eurusd").ends_with("symbol EURUSD is listed twice"));
        assert!(with("symbols = EUR USD").contains("symbol \"EUR USD\" must be 1 to 32 characters"));
        assert!(with(&format!("symbols = {}", "A".repeat(33))).contains("must be 1 to 32"));
        assert!(
            parse_ok(&format!(
                "upstream_url = sim\nsymbols = {}\nuser_keys_file = k",
                "A".repeat(32)
            ))
            .symbols[0]
                .len()
                == 32
        );

        let m = parse_err("upstream_url = sim\nsymbols = A\nuser_keys_file =\n");
        assert_eq!(
            m,
            "proxy.conf:3: key `user_keys_file`: expected a file path, got nothing"
        );
    }

    #[test]
    fn structural_errors() {
        assert_eq!(
            parse_err("upstream_url = sim\nsymbols EURUSD\n"),
            r#"proxy.conf:2: expected `key = value`, got "symbols EURUSD""#
        );
        assert_eq!(
            parse_err("upstream_url = sim\n\nupstream_url = ws://x\n"),
            "proxy.conf:3: key `upstream_url`: set twice (first on line 1)"
        );
        assert_eq!(
            parse_err("upstream_url = sim\nuser_keys_file = k\n"),
            "proxy.conf: missing required key `symbols`"
        );
        let e = parse(
            "symbols = A\nuser_keys_file = k\n",
            Path::new("/etc/p.conf"),
        )
        .unwrap_err();
        assert_eq!(e.line, None);
        assert_eq!(e.key.as_deref(), Some("upstream_url"));
        assert_eq!(
            e.to_string(),
            "/etc/p.conf: missing required key `upstream_url`"
        );
    }

    #[test]
    fn unknown_keys_suggest_the_nearest_known_one() {
        assert_eq!(
            parse_err("listn = 1.2.3.4:5\n"),
            "proxy.conf:1: unknown key `listn` (did you mean `listen`?)"
        );
        assert!(parse_err("auth_timout_secs = 3").ends_with("(did you mean `auth_timeout_secs`?)"));
        assert!(parse_err("auth_timeout = 3").ends_with("(did you mean `auth_timeout_secs`?)"));
        assert!(parse_err("Symbols = A").ends_with("(did you mean `symbols`?)"));
        assert_eq!(
            parse_err("colour = blue"),
            "proxy.conf:1: unknown key `colour`"
        );
        assert_eq!(
            parse_err("co\u{1b}[2Jl\rour = blue"),
            r"proxy.conf:1: unknown key `co\u{1b}[2Jl\rour`"
        );
        assert_eq!(
            parse_err(" = 3"),
            r#"proxy.conf:1: expected `key = value`, got "= 3""#
        );
        assert!(parse_ok(&format!("\u{feff}{MINIMAL}")).upstream == Upstream::Sim);
    }

    #[test]
    fn comments() {
        let c = parse_ok(
            "# a comment\n   # an indented comment = with equals\n\n\
             upstream_url = sim # the simulator\n\
             symbols = EURUSD,GBPUSD\t# two\n\
             user_keys_file = keys#1.txt\n\
             subscribe_message = {\"k\":\"{api_key}\", \"tag\":\"#1\"} # kept\n",
        );
        assert_eq!(c.upstream, Upstream::Sim);
        assert_eq!(c.symbols, ["EURUSD", "GBPUSD"]);
        assert_eq!(c.user_keys_file, PathBuf::from("keys#1.txt"));
        assert_eq!(
            c.subscribe_message,
            r##"{"k":"{api_key}", "tag":"#1"} # kept"##
        );
        assert_eq!(c.line_of("upstream_url"), Some(4));
        // A value that is only a comment is empty.
        assert!(parse_ok(&format!("{MINIMAL}allowed_origins = # none\n"))
            .allowed_origins
            .is_empty());
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let text = "upstream_url = sim\nsymbols = A\nuser_keys_file = users.keys\nupstream_api_key_file = secret/key\n";
        let c = parse(text, Path::new("/etc/fxproxy/proxy.conf")).unwrap();
        assert_eq!(c.user_keys_file, PathBuf::from("/etc/fxproxy/users.keys"));
        assert_eq!(
            c.upstream_api_key_file,
            Some(PathBuf::from("/etc/fxproxy/secret/key"))
        );
        let c = parse(text, Path::new("conf/proxy.conf")).unwrap();
        assert_eq!(c.user_keys_file, PathBuf::from("conf/users.keys"));
        let c = parse(
            &text.replace("users.keys", "/var/lib/users.keys"),
            Path::new("/etc/proxy.conf"),
        )
        .unwrap();
        assert_eq!(c.user_keys_file, PathBuf::from("/var/lib/users.keys"));
    }

    fn reader(files: &[(&str, &str)]) -> impl Fn(&Path) -> io::Result<String> {
        let files: HashMap<PathBuf, String> = files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect();
        move |p: &Path| {
            files
                .get(p)
                .cloned()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not found"))
        }
    }

    fn resolved(extra: &str, cred: Option<&str>, env: Option<&str>) -> Result<Config, ConfigError> {
        let mut c = parse(
            &format!("{MINIMAL}{extra}"),
            Path::new("/etc/fxproxy/proxy.conf"),
        )?;
        let files = reader(&[
            ("/etc/fxproxy/key.txt", "from-file\n"),
            ("/run/creds/upkey", "from-creds \r\n"),
            ("/etc/fxproxy/empty", "\n"),
        ]);
        resolve_api_key(&mut c, cred.map(OsStr::new), env.map(str::to_string), files)?;
        Ok(c)
    }

    #[test]
    fn api_key_precedence() {
        let key = |extra: &str, cred, env| {
            resolved(extra, cred, env)
                .unwrap()
                .upstream_api_key
                .expose()
                .to_string()
        };
        assert_eq!(
            key("upstream_api_key = inline\n", None, Some("env")),
            "inline"
        );
        // Set explicitly, even to nothing, the file's value wins over the environment.
        assert_eq!(key("upstream_api_key =\n", None, Some("env")), "");
        assert_eq!(
            key("upstream_api_key_file = key.txt\n", None, Some("env")),
            "from-file"
        );
        assert_eq!(key("", None, Some(" env \n")), "env");
        assert_eq!(key("", None, None), "");
        assert_eq!(
            key(
                "upstream_api_key_file = ${CREDENTIALS_DIRECTORY}/upkey\n",
                Some("/run/creds"),
                None
            ),
            "from-creds"
        );
        let c = resolved(
            "upstream_api_key_file = ${CREDENTIALS_DIRECTORY}/upkey\n",
            Some("/run/creds"),
            None,
        )
        .unwrap();
        assert_eq!(
            c.upstream_api_key_file,
            Some(PathBuf::from("/run/creds/upkey"))
        );
    }

    #[test]
    fn api_key_errors() {
        let err = |extra: &str, cred| resolved(extra, cred, None).unwrap_err().to_string();
        assert_eq!(
            err("upstream_api_key = a\nupstream_api_key_file = key.txt\n", None),
            "/etc/fxproxy/proxy.conf:5: key `upstream_api_key_file`: `upstream_api_key` is already set on line 4; set only one of the two"
        );
        assert_eq!(
            err("upstream_api_key_file = missing\n", None),
            "/etc/fxproxy/proxy.conf:4: key `upstream_api_key_file`: cannot read /etc/fxproxy/missing: not found"
        );
        assert_eq!(
            err("upstream_api_key_file = empty\n", None),
            "/etc/fxproxy/proxy.conf:4: key `upstream_api_key_file`: /etc/fxproxy/empty is empty"
        );
        let m = err(
            "upstream_api_key_file = ${CREDENTIALS_DIRECTORY}/upkey\n",
            None,
        );
        assert!(m.starts_with("/etc/fxproxy/proxy.conf:4: key `upstream_api_key_file`: uses ${CREDENTIALS_DIRECTORY} but"), "{m}");
    }

    #[test]
    fn load_reads_the_file_and_names_it_when_it_cannot() {
        let e = load(Path::new("/nonexistent/fxproxy/proxy.conf")).unwrap_err();
        assert_eq!(e.line, None);
        assert!(
            e.to_string().starts_with(
                "/nonexistent/fxproxy/proxy.conf: cannot read the configuration file: "
            ),
            "{e}"
        );

        let dir = std::env::temp_dir().join(format!("fxproxy-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("upstream.key"), "k123456789\n").unwrap();
        let conf = dir.join("proxy.conf");
        std::fs::write(
            &conf,
            format!("{MINIMAL}upstream_api_key_file = upstream.key\n"),
        )
        .unwrap();
        let c = load(&conf).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(c.upstream_api_key.expose(), "k123456789");
        assert_eq!(c.user_keys_file, dir.join("users.keys"));
    }

    #[test]
    fn tls_keys_go_together_and_resolve_like_the_other_files() {
        let c = parse(
            &format!(
                "{MINIMAL}tls_cert_file = tls/fullchain.pem\ntls_key_file = /keys/privkey.pem\n\
                 tls_client_ca_file = clients.pem\nupstream_ca_file = ca.pem\n\
                 upstream_bundled_roots = no\n"
            ),
            Path::new("/etc/fxproxy/proxy.conf"),
        )
        .unwrap();
        assert_eq!(
            c.tls_cert_file,
            Some(PathBuf::from("/etc/fxproxy/tls/fullchain.pem"))
        );
        assert_eq!(c.tls_key_file, Some(PathBuf::from("/keys/privkey.pem")));
        assert_eq!(
            c.tls_client_ca_file,
            Some(PathBuf::from("/etc/fxproxy/clients.pem"))
        );
        assert_eq!(
            c.upstream_ca_file,
            Some(PathBuf::from("/etc/fxproxy/ca.pem"))
        );
        assert!(!c.upstream_bundled_roots);

        for (lines, expected) in [
            (
                "tls_cert_file = a.pem\n",
                "proxy.conf:4: key `tls_cert_file`: set tls_key_file too",
            ),
            (
                "tls_key_file = k.pem\ntls_cert_file =\n",
                "proxy.conf:4: key `tls_key_file`: set tls_cert_file too",
            ),
            (
                "tls_client_ca_file = ca.pem\n",
                "proxy.conf:4: key `tls_client_ca_file`: client certificates need TLS",
            ),
            (
                "upstream_bundled_roots = false\n",
                "proxy.conf:4: key `upstream_bundled_roots`: with false, upstream_ca_file must name",
            ),
            (
                "upstream_bundled_roots = maybe\n",
                "proxy.conf:4: key `upstream_bundled_roots`: expected true or false",
            ),
        ] {
            let m = parse_err(&format!("{MINIMAL}{lines}"));
            assert!(m.starts_with(expected), "{lines}: {m}");
        }

        // Under systemd the pair may come as credentials.
        let mut c = parse(
            &format!(
                "{MINIMAL}tls_cert_file = ${{CREDENTIALS_DIRECTORY}}/tls_cert\n\
                 tls_key_file = ${{CREDENTIALS_DIRECTORY}}/tls_key\n"
            ),
            Path::new("/etc/fxproxy/proxy.conf"),
        )
        .unwrap();
        let unset = resolve_tls_paths(&mut c.clone(), None)
            .unwrap_err()
            .to_string();
        assert!(
            unset.starts_with(
                "/etc/fxproxy/proxy.conf:4: key `tls_cert_file`: uses ${CREDENTIALS_DIRECTORY}"
            ),
            "{unset}"
        );
        resolve_tls_paths(&mut c, Some(OsStr::new("/run/credentials/fxproxy.service"))).unwrap();
        assert_eq!(
            c.tls_key_file,
            Some(PathBuf::from("/run/credentials/fxproxy.service/tls_key"))
        );
    }

    #[test]
    fn provider_keys() {
        let c = parse_ok(MINIMAL);
        assert_eq!(c.provider, ProviderChoice::Tradermade);
        assert_eq!(c.client_format, ClientFormat::Normalized);
        assert_eq!(c.slow_client, SlowClient::Disconnect);
        assert_eq!(
            (c.record_file.clone(), c.record_max_bytes),
            (None, 100_000_000)
        );
        let c = parse(
            "provider = TraderMade-v2\nsymbols = EURUSD\nuser_keys_file = k\nclient_format = upstream\n\
             slow_client = conflate\nrecord_file = rec/feed.jsonl\nrecord_max_bytes = 4096\n",
            Path::new("/etc/fxproxy/proxy.conf"),
        )
        .unwrap();
        assert_eq!(c.provider, ProviderChoice::TradermadeV2);
        assert_eq!(
            c.upstream,
            Upstream::ProviderUrl,
            "the template gives the URL"
        );
        assert_eq!(c.client_format, ClientFormat::Upstream);
        assert_eq!(c.slow_client, SlowClient::Conflate);
        assert_eq!(
            c.record_file,
            Some(PathBuf::from("/etc/fxproxy/rec/feed.jsonl"))
        );
        assert_eq!(c.record_max_bytes, 4096);

        for (line, expected) in [
            (
                "provider = polygon",
                "expected `tradermade`, `tradermade-v2` or `custom`",
            ),
            ("client_format = raw", "expected `normalized` or `upstream`"),
            ("slow_client = drop", "expected `disconnect` or `conflate`"),
            ("record_max_bytes = 1000", "from 1024 to 1000000000000"),
            ("provider_template =", "expected a file path"),
        ] {
            let m = parse_err(&format!("{MINIMAL}{line}\n"));
            assert!(m.starts_with("proxy.conf:4: key `"), "{line}: {m}");
            assert!(m.contains(expected), "{line}: {m}");
        }
        assert_eq!(
            parse_err(&format!("{MINIMAL}provider = custom\n")),
            "proxy.conf:4: key `provider`: `provider = custom` needs `provider_template`, the file that describes the protocol (see providers/ for examples)"
        );
        assert_eq!(
            parse_err(&format!("{MINIMAL}provider_template = t.conf\n")),
            "proxy.conf:4: key `provider_template`: applies to `provider = custom` only (provider is tradermade)"
        );
        assert!(parse_err(&format!(
            "{MINIMAL}provider = tradermade-v2\nsubscribe_message = x\n"
        ))
        .starts_with(
            "proxy.conf:5: key `subscribe_message`: applies to `provider = tradermade` only"
        ));
        assert!(parse_err(&format!("{MINIMAL}provider = tradermade-v2\n"))
            .starts_with("proxy.conf:1: key `upstream_url`: the built-in simulator speaks the tradermade protocol"));
    }

    #[test]
    fn replay_urls() {
        let replay = |v: &str| {
            parse(
                &format!("upstream_url = {v}\nsymbols = A\nuser_keys_file = k\n"),
                Path::new("/srv/proxy.conf"),
            )
            .map(|c| c.upstream)
        };
        let r = |path: &str, speed, looped| {
            Ok(Upstream::Replay(Replay {
                path: PathBuf::from(path),
                speed,
                looped,
            }))
        };
        assert_eq!(
            replay("replay:rec.jsonl"),
            r("/srv/rec.jsonl", Some(1.0), false)
        );
        assert_eq!(
            replay("replay:/tmp/r.jsonl?speed=10&loop=1"),
            r("/tmp/r.jsonl", Some(10.0), true)
        );
        assert_eq!(replay("replay:r?speed=max"), r("/srv/r", None, false));
        assert_eq!(
            replay("replay:r?speed=0.5&loop=0"),
            r("/srv/r", Some(0.5), false)
        );
        for bad in [
            "replay:",
            "replay:r?speed=0",
            "replay:r?speed=fast",
            "replay:r?loop=2",
            "replay:r?x=1",
        ] {
            let e = replay(bad).unwrap_err().to_string();
            assert!(
                e.contains("key `upstream_url`: expected `replay:PATH`"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let mut c = parse_ok(MINIMAL);
        c.upstream_api_key = Secret::new("supersecretkey");
        let debug = format!("{c:?}");
        assert!(!debug.contains("supersecretkey"));
        assert!(debug.contains("Secret(supe…)"));
    }
}
