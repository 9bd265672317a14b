//! Every key of proxy.conf, defined once: its name, its default, how its value is parsed into
//! the [`Config`], whom a new value reaches on a reload, how the log may show it, and its
//! one-line documentation. The parser, the reload, the shipped proxy.conf and the key table
//! of docs/configuration.md are all drawn from (or checked against) this one list, as
//! ripgrep defines each flag once.
//!
//! Adding a key: a field in [`Config`] and one [`Setting`] here; the unit tests then say
//! what proxy.conf and docs/configuration.md must show (`FXPROXY_BLESS=1 cargo test --lib
//! config::settings` rewrites the docs' table).

use crate::base::market::MarketHours;
use crate::config::address;
use crate::config::backbone::{self, RedisUrl, Role};
use crate::config::model::{ClientFormat, Config, LogFormat, LogLevel, ProviderChoice, SlowClient};
use crate::config::proxy::UpstreamProxy;
use crate::config::secret::Secret;
use crate::config::value::{self, Header, Invalid};
use std::path::{Path, PathBuf};
use std::time::Duration;
use DefaultValue::{Follows, Is, Repeated, Required};

/// What a reload does with a new value of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// At once, connected clients and the upstream connection included.
    Everyone,
    /// Connections accepted (or upgraded) from now on; connected clients keep theirs.
    NewConnections,
    /// Only a restart: the running value stays.
    Restart,
}

impl Reach {
    /// As the docs' key table says it.
    pub fn short(self) -> &'static str {
        match self {
            Reach::Everyone => "at once",
            Reach::NewConnections => "new connections",
            Reach::Restart => "restart",
        }
    }

    pub fn words(self) -> &'static str {
        match self {
            Reach::Everyone => "applies at once, to connected clients too",
            Reach::NewConnections => "applies to new connections",
            Reach::Restart => "needs a restart",
        }
    }
}

/// How a value may be shown in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shown {
    Value,
    /// A URL without its query string, where some providers put the key.
    Url,
    /// A credential, or text that may hold one: named, never shown.
    Hidden,
}

/// What a key is when the file does not set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultValue {
    /// This value, written as proxy.conf would write it (empty: unset).
    Is(&'static str),
    /// None: the file must set the key. The note says when it need not (or is empty).
    Required(&'static str),
    /// Worked out from other keys once the file is read, never below `floor`; `doc` says how.
    Follows {
        floor: &'static str,
        doc: &'static str,
    },
    /// None, and the key may be set on several lines, each adding one value to a list (a
    /// header, say). A reload compares and keeps the whole list.
    Repeated,
}

/// The field (or fields) of [`Config`] a key sets: compared on a reload, and kept at its
/// running value when the key needs a restart.
pub struct Field {
    same: fn(&Config, &Config) -> bool,
    keep: fn(&mut Config, &Config),
}

/// A key's field, compared whole: a changed password in the backbone URL is a change, though
/// the log shows the URL without it.
macro_rules! field {
    ($f:ident) => {
        Field {
            same: |a, b| a.$f == b.$f,
            keep: |next, running| next.$f = running.$f.clone(),
        }
    };
}

/// One key of proxy.conf.
pub struct Setting {
    pub name: &'static str,
    pub default: DefaultValue,
    pub reach: Reach,
    /// For the key table of docs/configuration.md (Markdown).
    pub doc: &'static str,
    /// Parses the value (trimmed, comment cut) into the config; `base` is the config file's
    /// directory, which relative paths are resolved against.
    set: fn(&mut Config, &str, &Path) -> Result<(), Invalid>,
    field: Field,
    /// The value as proxy.conf would write it.
    show: fn(&Config) -> String,
    shown: Shown,
}

impl Setting {
    pub fn set(&self, config: &mut Config, value: &str, base: &Path) -> Result<(), Invalid> {
        (self.set)(config, value, base)
    }

    /// Whether `a` and `b` have the same value of this key.
    pub fn same(&self, a: &Config, b: &Config) -> bool {
        (self.field.same)(a, b)
    }

    /// Puts `running`'s value of this key into `next`.
    pub fn keep(&self, next: &mut Config, running: &Config) {
        (self.field.keep)(next, running)
    }

    /// The value as the log may show it.
    pub fn shown(&self, config: &Config) -> String {
        let value = (self.show)(config);
        match self.shown {
            Shown::Hidden => "(not shown)".to_string(),
            _ if value.is_empty() => "(empty)".to_string(),
            Shown::Url => value.split('?').next().unwrap_or("").to_string(),
            Shown::Value => value,
        }
    }

    /// Whether the key may be set on several lines, each adding a value.
    pub fn repeats(&self) -> bool {
        self.default == Repeated
    }

    /// Whether the value runs to the end of the line: `subscribe_message` is JSON, in which a
    /// `#` is text, not the start of a comment.
    pub fn to_end_of_line(&self) -> bool {
        self.name == "subscribe_message"
    }

    /// The default as the docs' key table says it.
    pub fn default_doc(&self) -> String {
        match self.default {
            Is("") => "unset".to_string(),
            Is(value) => format!("`{value}`"),
            Required("") => "required".to_string(),
            Required(note) => format!("required ({note})"),
            Follows { doc, .. } => doc.to_string(),
            Repeated => "none; one line per value".to_string(),
        }
    }
}

/// The names of `headers`, for the log: their values may hold a credential.
fn header_names(headers: &[Header]) -> String {
    headers
        .iter()
        .map(|h| format!("{}: …", h.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The text of a path that may be unset.
fn path_text(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map_or(String::new(), |p| p.display().to_string())
}

fn nonempty<'a>(v: &'a str, what: &str) -> Result<&'a str, Invalid> {
    if v.is_empty() {
        Err(Invalid::Unusable(format!("expected {what}, got nothing")))
    } else {
        Ok(v)
    }
}

/// The subscribe message of TraderMade's first protocol.
pub const DEFAULT_SUBSCRIBE_MESSAGE: &str = r#"{"userKey":"{api_key}","symbol":"{symbols}"}"#;

/// Every key of proxy.conf, in the order of the shipped file.
pub static SETTINGS: &[Setting] = &[
    Setting {
        name: "listen",
        default: Is("127.0.0.1:8765"),
        reach: Reach::Restart,
        doc: "address for client connections, `/healthz`, `/metrics` and the page",
        set: |c, v, _base| {
            c.listen = value::address(v)?;
            Ok(())
        },
        field: field!(listen),
        show: |c| c.listen.to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "tls_cert_file",
        default: Is(""),
        reach: Reach::Restart,
        doc: "with `tls_key_file`: serve `wss://` and `https://` on `listen` with this certificate (PEM; the server's certificate first, then its chain, as certbot's `fullchain.pem`). Re-read when it changes (see [TLS](security.md#tls)); empty or unset: plain `ws://` and `http://`",
        set: |c, v, base| {
            c.tls_cert_file = value::credential_path(v, base);
            Ok(())
        },
        field: field!(tls_cert_file),
        show: |c| path_text(&c.tls_cert_file),
        shown: Shown::Value,
    },
    Setting {
        name: "tls_key_file",
        default: Is(""),
        reach: Reach::Restart,
        doc: "the certificate's private key (PEM: PKCS#8, SEC1 or PKCS#1; not encrypted)",
        set: |c, v, base| {
            c.tls_key_file = value::credential_path(v, base);
            Ok(())
        },
        field: field!(tls_key_file),
        show: |c| path_text(&c.tls_key_file),
        shown: Shown::Value,
    },
    Setting {
        name: "tls_client_ca_file",
        default: Is(""),
        reach: Reach::Restart,
        doc: "clients must present a certificate issued by a CA in this PEM file (mutual TLS); the client key is still checked unless `user_keys_file` lists no key (see [TLS](security.md#tls))",
        set: |c, v, base| {
            c.tls_client_ca_file = value::credential_path(v, base);
            Ok(())
        },
        field: field!(tls_client_ca_file),
        show: |c| path_text(&c.tls_client_ca_file),
        shown: Shown::Value,
    },
    Setting {
        name: "upstream_url",
        default: Required("optional with a provider template that has a `url`"),
        reach: Reach::Restart,
        doc: "`ws://` or `wss://` URL of the source, `sim` for the built-in simulated source, or `replay:PATH[?speed=N\\|max][&loop=1]` to play a recording",
        set: |c, v, base| {
            c.upstream = value::upstream(v, base)?;
            Ok(())
        },
        field: field!(upstream),
        show: |c| c.upstream.to_string(),
        shown: Shown::Url,
    },
    Setting {
        name: "upstream_api_key",
        default: Is(""),
        reach: Reach::Restart,
        doc: "the provider key sent upstream",
        set: |c, v, _base| {
            c.upstream_api_key = Secret::new(v);
            Ok(())
        },
        field: field!(upstream_api_key),
        show: |c| c.upstream_api_key.expose().to_string(),
        shown: Shown::Hidden,
    },
    Setting {
        name: "upstream_api_key_file",
        default: Is(""),
        reach: Reach::Restart,
        doc: "a file holding the provider key (trailing newline ignored); `${CREDENTIALS_DIRECTORY}` is expanded for systemd's `LoadCredential=`. Setting both this and `upstream_api_key` is an error; with neither, `FXPROXY_UPSTREAM_API_KEY` is used",
        set: |c, v, base| {
            c.upstream_api_key_file = Some(value::credential_path(v, base).ok_or_else(|| Invalid::Unusable("expected a file path, got nothing".into()))?);
            Ok(())
        },
        field: field!(upstream_api_key_file),
        show: |c| path_text(&c.upstream_api_key_file),
        shown: Shown::Value,
    },
    Setting {
        name: "upstream_ca_file",
        default: Is(""),
        reach: Reach::Restart,
        doc: "CA certificates (PEM) a `wss://` upstream's certificate may chain to, besides the bundled web PKI roots",
        set: |c, v, base| {
            c.upstream_ca_file = value::credential_path(v, base);
            Ok(())
        },
        field: field!(upstream_ca_file),
        show: |c| path_text(&c.upstream_ca_file),
        shown: Shown::Value,
    },
    Setting {
        name: "upstream_bundled_roots",
        default: Is("true"),
        reach: Reach::Restart,
        doc: "`false`: trust `upstream_ca_file` only, not the bundled web PKI roots",
        set: |c, v, _base| {
            c.upstream_bundled_roots = value::boolean(v)?;
            Ok(())
        },
        field: field!(upstream_bundled_roots),
        show: |c| c.upstream_bundled_roots.to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "upstream_proxy",
        default: Is(""),
        reach: Reach::Restart,
        doc: "`http://[USER:PASSWORD@]HOST:PORT`: reach the upstream through this HTTP proxy (`CONNECT`; a `wss://` upstream stays TLS end to end, checked against its own name); `none`: directly; unset: `HTTPS_PROXY` (for `wss://`) or `HTTP_PROXY` (for `ws://`) unless `NO_PROXY` lists the host, as curl reads them. Clients, the backbone's Redis and `sim` are never proxied (see [Outbound proxy](#outbound-proxy))",
        set: |c, v, _base| {
            c.upstream_proxy = UpstreamProxy::parse(v)?;
            Ok(())
        },
        field: field!(upstream_proxy),
        show: |c| c.upstream_proxy.shown(),
        shown: Shown::Value,
    },
    Setting {
        name: "upstream_proxy_password_file",
        default: Is(""),
        reach: Reach::Restart,
        doc: "a file holding the proxy's password, for a proxy URL that names a user and no password (trailing newline ignored; `${CREDENTIALS_DIRECTORY}` is expanded); unset: `FXPROXY_UPSTREAM_PROXY_PASSWORD` from the environment, if set",
        set: |c, v, base| {
            c.upstream_proxy_password_file = Some(value::credential_path(v, base).ok_or_else(|| Invalid::Unusable("expected a file path, got nothing".into()))?);
            Ok(())
        },
        // The file's path and what it holds: a new password waits for a restart too.
        field: Field {
            same: |a, b| {
                a.upstream_proxy_password_file == b.upstream_proxy_password_file
                    && a.upstream_proxy_password == b.upstream_proxy_password
            },
            keep: |next, running| {
                next.upstream_proxy_password_file = running.upstream_proxy_password_file.clone();
                next.upstream_proxy_password = running.upstream_proxy_password.clone();
            },
        },
        show: |c| path_text(&c.upstream_proxy_password_file),
        shown: Shown::Value,
    },
    Setting {
        name: "upstream_header",
        default: Repeated,
        reach: Reach::Restart,
        doc: "`Name: value`, a header sent in the upstream's WebSocket handshake, one line per header, after the provider template's (replacing one of the same name); `{api_key}` is replaced by the provider key. Not `Host`, `Upgrade`, `Connection`, `Sec-WebSocket-*`. The log shows the names only (see [Custom headers](providers.md#custom-headers-in-the-upstream-handshake))",
        set: |c, v, _base| {
            c.upstream_headers.push(value::upstream_header(v)?);
            Ok(())
        },
        field: field!(upstream_headers),
        show: |c| header_names(&c.upstream_headers),
        shown: Shown::Value,
    },
    Setting {
        name: "symbols",
        default: Required(""),
        reach: Reach::Restart,
        doc: "comma-separated symbols to subscribe upstream",
        set: |c, v, _base| {
            c.symbols = value::symbol_list(v)?;
            Ok(())
        },
        field: field!(symbols),
        show: |c| c.symbols.join(","),
        shown: Shown::Value,
    },
    Setting {
        name: "subscribe_message",
        default: Is(DEFAULT_SUBSCRIBE_MESSAGE),
        reach: Reach::Restart,
        doc: "text sent upstream after connecting; `{api_key}` and `{symbols}` are substituted (`provider = tradermade` only)",
        set: |c, v, _base| {
            c.subscribe_message = nonempty(v, "the text to send upstream")?.to_string();
            Ok(())
        },
        field: field!(subscribe_message),
        show: |c| c.subscribe_message.clone(),
        shown: Shown::Hidden,
    },
    Setting {
        name: "provider",
        default: Is("tradermade"),
        reach: Reach::Restart,
        doc: "the upstream protocol: `tradermade`, `tradermade-v2` or `custom` (see [Providers](providers.md#providers))",
        set: |c, v, _base| {
            c.provider = value::one_of(v, &[("tradermade", ProviderChoice::Tradermade), ("tradermade-v2", ProviderChoice::TradermadeV2), ("custom", ProviderChoice::Custom)], "`tradermade`, `tradermade-v2` or `custom`")?;
            Ok(())
        },
        field: field!(provider),
        show: |c| c.provider.name().to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "provider_template",
        default: Is(""),
        reach: Reach::Restart,
        doc: "with `provider = custom`: the template file that describes the protocol (see [Writing a template](providers.md#writing-a-template))",
        set: |c, v, base| {
            c.provider_template = Some(value::path(v, base)?);
            Ok(())
        },
        field: field!(provider_template),
        show: |c| path_text(&c.provider_template),
        shown: Shown::Value,
    },
    Setting {
        name: "client_format",
        default: Is("normalized"),
        reach: Reach::Restart,
        doc: "`normalized` (fxproxy's quote shape whatever the provider) or `upstream` (the provider's own frames, arrays split)",
        set: |c, v, _base| {
            c.client_format = value::one_of(v, &[("normalized", ClientFormat::Normalized), ("upstream", ClientFormat::Upstream)], "`normalized` or `upstream`")?;
            Ok(())
        },
        field: field!(client_format),
        show: |c| c.client_format.name().to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "record_file",
        default: Is(""),
        reach: Reach::Restart,
        doc: "record every upstream frame with its receive time, as JSON lines (see [Record and replay](providers.md#record-and-replay)); empty: off",
        set: |c, v, base| {
            c.record_file = (!v.is_empty()).then(|| base.join(v));
            Ok(())
        },
        field: field!(record_file),
        show: |c| path_text(&c.record_file),
        shown: Shown::Value,
    },
    Setting {
        name: "record_max_bytes",
        default: Is("100000000"),
        reach: Reach::Restart,
        doc: "the recording is rotated to `FILE.1` at this size",
        set: |c, v, _base| {
            c.record_max_bytes = value::number(v, 1024, 1_000_000_000_000, "a whole number of bytes from 1024 to 1000000000000")?;
            Ok(())
        },
        field: field!(record_max_bytes),
        show: |c| c.record_max_bytes.to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "slow_client",
        default: Is("disconnect"),
        reach: Reach::NewConnections,
        doc: "a client that falls behind is closed (`disconnect`, 1008 `Slow consumer`) or sent the latest quote per symbol as it catches up (`conflate`); a client may choose with `\"conflate\": true` or `false` in its auth message (see [Slow clients](clients.md#slow-clients))",
        set: |c, v, _base| {
            c.slow_client = value::one_of(v, &[("disconnect", SlowClient::Disconnect), ("conflate", SlowClient::Conflate)], "`disconnect` or `conflate`")?;
            Ok(())
        },
        field: field!(slow_client),
        show: |c| c.slow_client.name().to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "user_keys_file",
        default: Required(""),
        reach: Reach::Everyone,
        doc: "client keys, one per line: `KEY` or `KEY SYM1,SYM2` (entitled to those symbols only); `#` comments; keys of at least 8 characters. Re-read when it changes, and at once on SIGHUP",
        set: |c, v, base| {
            c.user_keys_file = value::path(v, base)?;
            Ok(())
        },
        field: field!(user_keys_file),
        show: |c| c.user_keys_file.display().to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "auth_timeout_secs",
        default: Is("10"),
        reach: Reach::NewConnections,
        doc: "time a new client has to send its auth message",
        set: |c, v, _base| {
            c.auth_timeout = value::secs(v, 1, 3600)?;
            Ok(())
        },
        field: field!(auth_timeout),
        show: |c| c.auth_timeout.as_secs().to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "handshake_timeout_secs",
        default: Is("5"),
        reach: Reach::NewConnections,
        doc: "time a new connection has to send its HTTP request",
        set: |c, v, _base| {
            c.handshake_timeout = value::secs(v, 1, 60)?;
            Ok(())
        },
        field: field!(handshake_timeout),
        show: |c| c.handshake_timeout.as_secs().to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "upstream_stale_secs",
        default: Is("30"),
        reach: Reach::Everyone,
        doc: "no quote for this long while the market is open: reconnect",
        set: |c, v, _base| {
            c.upstream_stale = value::secs(v, 1, 86_400)?;
            Ok(())
        },
        field: field!(upstream_stale),
        show: |c| c.upstream_stale.as_secs().to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "upstream_connect_timeout_secs",
        default: Is("10"),
        reach: Reach::Everyone,
        doc: "limit on the upstream TCP + TLS + WebSocket handshake",
        set: |c, v, _base| {
            c.upstream_connect_timeout = value::secs(v, 1, 300)?;
            Ok(())
        },
        field: field!(upstream_connect_timeout),
        show: |c| c.upstream_connect_timeout.as_secs().to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "upstream_ping_secs",
        default: Is("15"),
        reach: Reach::Everyone,
        doc: "ping the upstream this often; no frame at all for two periods: reconnect",
        set: |c, v, _base| {
            c.upstream_ping = value::secs(v, 1, 3600)?;
            Ok(())
        },
        field: field!(upstream_ping),
        show: |c| c.upstream_ping.as_secs().to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "upstream_backoff_min_ms",
        default: Is("1000"),
        reach: Reach::Everyone,
        doc: "the first reconnect delay after the upstream fails; each next one doubles (with jitter)",
        set: |c, v, _base| {
            c.upstream_backoff_min = value::millis(v, 10, 60_000)?;
            Ok(())
        },
        field: field!(upstream_backoff_min),
        show: |c| c.upstream_backoff_min.as_millis().to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "upstream_backoff_max_secs",
        default: Is("60"),
        reach: Reach::Everyone,
        doc: "the longest reconnect delay; the provider's refusal `User Key Used to many times` waits this long at once",
        set: |c, v, _base| {
            c.upstream_backoff_max = value::secs(v, 1, 3600)?;
            Ok(())
        },
        field: field!(upstream_backoff_max),
        show: |c| c.upstream_backoff_max.as_secs().to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "market_hours",
        default: Is("fx"),
        reach: Reach::Everyone,
        doc: "when the market is open: `fx` (Sunday 21:00 to Friday 22:00 UTC) or `always`; while it is closed a silent feed is not stale and `/healthz` says `market_closed` (see [Market hours](#market-hours-weekends-and-holidays)); with `upstream_url = sim` it is always open, as the simulator streams every day",
        set: |c, v, _base| {
            c.market_hours = value::one_of(v, &[("fx", MarketHours::Fx), ("always", MarketHours::Always)], "`fx` or `always`")?;
            Ok(())
        },
        field: field!(market_hours),
        show: |c| c.market_hours.name().to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "market_closed_dates",
        default: Is(""),
        reach: Reach::Everyone,
        doc: "UTC dates the market is also closed, comma-separated `YYYY-MM-DD` (e.g. `2026-12-25,2027-01-01`); each from 21:00 UTC the evening before to 22:00 UTC on the date",
        set: |c, v, _base| {
            c.market_closed_dates = value::dates(v)?;
            Ok(())
        },
        field: field!(market_closed_dates),
        show: |c| c.market_closed_dates.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","),
        shown: Shown::Value,
    },
    Setting {
        name: "client_queue_len",
        default: Is("1024"),
        reach: Reach::Everyone,
        doc: "frames queued per client before it is a slow consumer (see [Slow clients](clients.md#slow-clients))",
        set: |c, v, _base| {
            c.client_queue_len = value::count(v, "", 1, 1_000_000)?;
            Ok(())
        },
        field: field!(client_queue_len),
        show: |c| c.client_queue_len.to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "max_client_lag_secs",
        default: Is("5"),
        reach: Reach::Everyone,
        doc: "a client that has not answered, within this long, a ping sent after quotes is that far behind and a slow consumer (see [Slow clients](clients.md#slow-clients))",
        set: |c, v, _base| {
            c.max_client_lag = value::secs(v, 1, 3600)?;
            Ok(())
        },
        field: field!(max_client_lag),
        show: |c| c.max_client_lag.as_secs().to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "client_ping_secs",
        default: Is("30"),
        reach: Reach::Everyone,
        doc: "ping each client this often; a client that answers nothing for two periods is dropped",
        set: |c, v, _base| {
            c.client_ping = value::secs(v, 1, 3600)?;
            Ok(())
        },
        field: field!(client_ping),
        show: |c| c.client_ping.as_secs().to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "max_clients",
        default: Is("10000"),
        reach: Reach::NewConnections,
        doc: "WebSocket connections at most; one more gets HTTP 503, unless a connection that has not authenticated yet holds a place: the oldest such gives its place to the newcomer",
        set: |c, v, _base| {
            c.max_clients = value::count(v, "", 1, 1_000_000)?;
            Ok(())
        },
        field: field!(max_clients),
        show: |c| c.max_clients.to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "max_clients_per_key",
        default: Is("0"),
        reach: Reach::NewConnections,
        doc: "connections per client key at most; `0` is no limit",
        set: |c, v, _base| {
            c.max_clients_per_key = value::count(v, " (0 for unlimited)", 0, 1_000_000)?;
            Ok(())
        },
        field: field!(max_clients_per_key),
        show: |c| c.max_clients_per_key.to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "max_pending_connections",
        default: Follows { floor: "10000", doc: "`max_clients`, at least `10000`" },
        reach: Reach::NewConnections,
        doc: "connections still sending their HTTP request, WebSocket handshake or auth message, at most (each holds a descriptor and a few kilobytes, no thread); when full, the oldest is dropped to make room once it has been pending for 0.1 s (still sending its request head) or 0.5 s (upgraded, its auth message awaited), and while all are younger new ones wait in the kernel's listen queue, so neither a slowloris flood nor a reconnect storm locks real clients out (see [Reconnect storms](scaling-out.md#reconnect-storms))",
        set: |c, v, _base| {
            c.max_pending_connections = value::count(v, "", 1, 1_000_000)?;
            Ok(())
        },
        field: field!(max_pending_connections),
        show: |c| c.max_pending_connections.to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "max_message_bytes",
        default: Is("4096"),
        reach: Reach::NewConnections,
        doc: "largest frame or message a client may send (larger: close 1009)",
        set: |c, v, _base| {
            c.max_message_bytes = value::count(v, " of bytes", 128, 16_777_216)?;
            Ok(())
        },
        field: field!(max_message_bytes),
        show: |c| c.max_message_bytes.to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "max_client_messages_per_sec",
        default: Is("50"),
        reach: Reach::Everyone,
        doc: "messages, pings included, a client may send per second, in bursts of up to as many; more: close 1008 `Too many messages`. `0` is no limit",
        set: |c, v, _base| {
            c.max_client_messages_per_sec = value::small(v, 0, 1_000_000, "0 (no limit) or a whole number from 1 to 1000000")?;
            Ok(())
        },
        field: field!(max_client_messages_per_sec),
        show: |c| c.max_client_messages_per_sec.to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "client_read_buffer_bytes",
        default: Is("1024"),
        reach: Reach::NewConnections,
        doc: "bytes read from a client socket at a time (allocated per connection up front; tungstenite's default is 128 KiB)",
        set: |c, v, _base| {
            c.client_read_buffer_bytes = value::count(v, " of bytes", 256, 1_048_576)?;
            Ok(())
        },
        field: field!(client_read_buffer_bytes),
        show: |c| c.client_read_buffer_bytes.to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "client_write_buffer_bytes",
        default: Is("4096"),
        reach: Reach::NewConnections,
        doc: "quotes are written in chunks of up to this many bytes; the buffer keeps its size for the connection",
        set: |c, v, _base| {
            c.client_write_buffer_bytes = value::count(v, " of bytes", 256, 1_048_576)?;
            Ok(())
        },
        field: field!(client_write_buffer_bytes),
        show: |c| c.client_write_buffer_bytes.to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "allowed_origins",
        default: Is(""),
        reach: Reach::NewConnections,
        doc: "browser origins allowed (comma-separated, e.g. `https://dash.example.com`); an `Origin` not listed gets HTTP 403; empty allows all, except with client certificates as the only credential, where it is required (see [TLS](security.md#tls))",
        set: |c, v, _base| {
            c.allowed_origins = value::origins(v)?;
            Ok(())
        },
        field: field!(allowed_origins),
        show: |c| c.allowed_origins.join(","),
        shown: Shown::Value,
    },
    Setting {
        name: "response_header",
        default: Repeated,
        reach: Reach::NewConnections,
        doc: "`Name: value`, a header added to every HTTP answer and WebSocket upgrade on `listen`, one line per header (e.g. `Strict-Transport-Security: max-age=31536000` with TLS). Not the headers fxproxy sets itself (`Content-Type`, `Content-Length`, `Connection`, `Upgrade`, `Cache-Control`, `Sec-WebSocket-*`) nor the page's security headers (`Content-Security-Policy`, `X-Frame-Options`, `X-Content-Type-Options`, `Referrer-Policy`) (see [Response headers](security.md#response-headers))",
        set: |c, v, _base| {
            c.response_headers.push(value::response_header(v)?);
            Ok(())
        },
        field: field!(response_headers),
        show: |c| c.response_headers.iter().map(|h| format!("{}: {}", h.name, h.value)).collect::<Vec<_>>().join(", "),
        shown: Shown::Value,
    },
    Setting {
        name: "http_endpoints",
        default: Is("true"),
        reach: Reach::Everyone,
        doc: "serve `/livez`, `/readyz`, `/healthz` and `/metrics` on `listen` (see [HTTP endpoints](operations.md#http-endpoints))",
        set: |c, v, _base| {
            c.http_endpoints = value::boolean(v)?;
            Ok(())
        },
        field: field!(http_endpoints),
        show: |c| c.http_endpoints.to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "admin_listen",
        default: Is(""),
        reach: Reach::Restart,
        doc: "a second address, plain `http://`, for operators: `/metrics`, `/livez`, `/readyz`, `/healthz` and the state dump at `/debug/state`; once set, `/metrics` is served there only (see [The admin address](operations.md#the-admin-address)). Empty: none",
        set: |c, v, _base| {
            c.admin_listen = if v.is_empty() {
                None
            } else {
                Some(v.parse().map_err(|_| {
                    Invalid::expected("an address such as 127.0.0.1:9187, or nothing", v)
                })?)
            };
            Ok(())
        },
        field: field!(admin_listen),
        show: |c| c.admin_listen.map_or(String::new(), |a| a.to_string()),
        shown: Shown::Value,
    },
    Setting {
        name: "page",
        default: Is("true"),
        reach: Reach::Everyone,
        doc: "serve the quotes page at `/`",
        set: |c, v, _base| {
            c.page = value::boolean(v)?;
            Ok(())
        },
        field: field!(page),
        show: |c| c.page.to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "status_interval_secs",
        default: Is("60"),
        reach: Reach::Everyone,
        doc: "a status line in the log this often; `0` turns it off",
        set: |c, v, _base| {
            let n = value::number(v, 0, 86_400, "0 (off) or a whole number of seconds from 1 to 86400")?; c.status_interval = (n > 0).then(|| Duration::from_secs(n));
            Ok(())
        },
        field: field!(status_interval),
        show: |c| c.status_interval.map_or(0, |d| d.as_secs()).to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "batch_delay_ms",
        default: Is("20"),
        reach: Reach::Everyone,
        doc: "under heavy load (quotes faster than one per period and more than 50,000 deliveries a second), each client gets what arrived in the last period in one write: far less CPU per quote for at most this much added latency (see [BENCHMARKS.md](../BENCHMARKS.md)); `0` sends every quote at once",
        set: |c, v, _base| {
            c.batch_delay = value::millis(v, 0, 1000)?;
            Ok(())
        },
        field: field!(batch_delay),
        show: |c| c.batch_delay.as_millis().to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "sim_rate",
        default: Is("20"),
        reach: Reach::Everyone,
        doc: "quotes per second in total from the built-in simulator",
        set: |c, v, _base| {
            c.sim_rate = value::small(v, 1, 1_000_000, "a whole number of quotes per second from 1 to 1000000")?;
            Ok(())
        },
        field: field!(sim_rate),
        show: |c| c.sim_rate.to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "log_level",
        default: Is("info"),
        reach: Reach::Everyone,
        doc: "`error`, `warn`, `info`, `debug` or `trace`",
        set: |c, v, _base| {
            c.log_level = value::one_of(v, &[("error", LogLevel::Error), ("warn", LogLevel::Warn), ("info", LogLevel::Info), ("debug", LogLevel::Debug), ("trace", LogLevel::Trace)], "error, warn, info, debug or trace")?;
            Ok(())
        },
        field: field!(log_level),
        show: |c| c.log_level.name().to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "log_format",
        default: Is("text"),
        reach: Reach::Restart,
        doc: "`text` (time, level, thread, message) or `json` (one object a line with those four fields, for log shippers); either way, under systemd each line carries its priority for the journal (see [Logs](operations.md#logs))",
        set: |c, v, _base| {
            c.log_format = value::one_of(
                v,
                &[("text", LogFormat::Text), ("json", LogFormat::Json)],
                "`text` or `json`",
            )?;
            Ok(())
        },
        field: field!(log_format),
        show: |c| c.log_format.name().to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "drain_secs",
        default: Is("2"),
        reach: Reach::Everyone,
        doc: "on a stop while systemd holds the listening socket (`fxproxy.socket`: a restart), clients are told 1012 (Service Restart) spread over this many seconds, so that their reconnects, which wait in the socket's queue for the next process, do not come as one wave; `0`: all at once. Without the socket unit a stop closes every client at once with 1001 (see [Restarts clients ride through](install.md#restarts-clients-ride-through))",
        set: |c, v, _base| {
            c.drain = Duration::from_secs(value::number(
                v,
                0,
                600,
                "0 (all at once) or a whole number of seconds up to 600",
            )?);
            Ok(())
        },
        field: field!(drain),
        show: |c| c.drain.as_secs().to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "backbone",
        default: Is(""),
        reach: Reach::Restart,
        doc: "`redis://HOST:PORT[/DB]` (`redis://:PASSWORD@HOST:PORT` for a Redis with a password), `rediss://HOST:PORT[/DB]` (TLS to Redis) or `redis+sentinel://HOST:PORT,HOST:PORT,HOST:PORT/MASTER_NAME[/DB]` (the master Redis Sentinel names; the password as in `redis://`): the Redis that several instances of one feed share (see [Scaling out](scaling-out.md#scaling-out-several-instances-one-provider-connection)); unset, a single instance",
        set: |c, v, _base| {
            c.backbone = if v.is_empty() { None } else { Some(RedisUrl::parse(v)?) };
            Ok(())
        },
        field: field!(backbone),
        show: |c| c.backbone.as_ref().map_or(String::new(), RedisUrl::shown),
        shown: Shown::Value,
    },
    Setting {
        name: "backbone_ca_file",
        default: Is(""),
        reach: Reach::Restart,
        doc: "for a `rediss://` backbone: the CA certificate (PEM) Redis's certificate must chain to, as `redis-cli --cacert`; unset, the web PKI roots bundled in the binary",
        set: |c, v, base| {
            c.backbone_ca_file = value::credential_path(v, base);
            Ok(())
        },
        field: field!(backbone_ca_file),
        show: |c| path_text(&c.backbone_ca_file),
        shown: Shown::Value,
    },
    Setting {
        name: "backbone_role",
        default: Is("both"),
        reach: Reach::Restart,
        doc: "`both` (serve clients from Redis and compete to hold the provider connection), `ingest` (only compete and publish; WebSocket clients get 503) or `edge` (only serve clients from Redis; `upstream_url` is not used)",
        set: |c, v, _base| {
            c.backbone_role = Role::parse(v)?;
            Ok(())
        },
        field: field!(backbone_role),
        show: |c| c.backbone_role.name().to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "backbone_name",
        default: Is("fxproxy"),
        reach: Reach::Restart,
        doc: "the prefix of every Redis key (`NAME:lock`, `NAME:fence`, `NAME:stream`, `NAME:last`), so several feeds or environments share one Redis",
        set: |c, v, _base| {
            c.backbone_name = backbone::parse_name(v)?;
            Ok(())
        },
        field: field!(backbone_name),
        show: |c| c.backbone_name.clone(),
        shown: Shown::Value,
    },
    Setting {
        name: "backbone_max_len",
        default: Is("100000"),
        reach: Reach::Restart,
        doc: "entries the Redis stream keeps, about: how long an instance may lose Redis and still resume without a gap (100,000 is 50 s at 2,000 frames/s)",
        set: |c, v, _base| {
            c.backbone_max_len = value::number(v, 1000, 100_000_000, "a whole number of stream entries from 1000 to 100000000")?;
            Ok(())
        },
        field: field!(backbone_max_len),
        show: |c| c.backbone_max_len.to_string(),
        shown: Shown::Value,
    },
    Setting {
        name: "trusted_proxies",
        default: Is(""),
        reach: Reach::NewConnections,
        doc: "load balancers (addresses or networks, comma-separated, e.g. `127.0.0.1, 10.0.0.0/8`) whose `X-Forwarded-For` names the client in the log; from anyone else the header is ignored",
        set: |c, v, _base| {
            c.trusted_proxies = address::parse_list(v)?;
            Ok(())
        },
        field: field!(trusted_proxies),
        show: |c| c.trusted_proxies.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(","),
        shown: Shown::Value,
    },
];

/// Every key at its default, as [`SETTINGS`] defines it; required keys unset.
pub fn defaults() -> Config {
    let mut config = Config::placeholders();
    for setting in SETTINGS {
        let text = match setting.default {
            // Unset is the field's empty value, which the placeholder is already.
            DefaultValue::Is("") | DefaultValue::Required(_) | DefaultValue::Repeated => continue,
            DefaultValue::Is(text) => text,
            DefaultValue::Follows { floor, .. } => floor,
        };
        // Every default parses: `settings`' tests hold each one to it.
        if let Err(e) = setting.set(&mut config, text, Path::new("")) {
            unreachable!("the default of {} does not parse: {e}", setting.name);
        }
    }
    config
}

/// The setting of `name`, if proxy.conf has such a key.
pub fn find(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

/// The key table of docs/configuration.md, as Markdown.
pub fn reference_table() -> String {
    let mut out =
        String::from("| key | meaning | default | a reload reaches |\n| --- | --- | --- | --- |\n");
    for s in SETTINGS {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            s.name,
            s.doc,
            s.default_doc(),
            s.reach.short()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const REQUIRED: &str = "upstream_url = sim\nsymbols = EURUSD\nuser_keys_file = users.keys\n";

    fn without_lines(c: &Config) -> String {
        let mut c = c.clone();
        c.key_lines.clear();
        format!("{c:?}")
    }

    #[test]
    fn every_default_written_out_parses_to_the_defaults() {
        let mut text = REQUIRED.to_string();
        for s in SETTINGS {
            match s.default {
                Is(value) | Follows { floor: value, .. } => {
                    // Unset paths cannot be written as `key =`: a path is expected.
                    let c = parse(&format!("{REQUIRED}{} = {value}\n", s.name), Path::new("p"));
                    if value.is_empty() && c.is_err() {
                        continue;
                    }
                    text.push_str(&format!("{} = {value}\n", s.name));
                }
                Required(_) | Repeated => {}
            }
        }
        let written = parse(&text, Path::new("p")).expect("every default parses");
        let unset = parse(REQUIRED, Path::new("p")).unwrap();
        assert_eq!(without_lines(&written), without_lines(&unset));
        let repeated = SETTINGS.iter().filter(|s| s.repeats()).count();
        assert_eq!(
            written.key_lines.len(),
            SETTINGS.len() - 3 - repeated,
            "all but the three paths that take no empty value, and the keys that repeat"
        );
    }

    #[test]
    fn an_unset_default_is_the_field_s_empty_value() {
        let unset = parse(REQUIRED, Path::new("p")).unwrap();
        for s in SETTINGS.iter().filter(|s| s.default == Is("")) {
            let mut set = unset.clone();
            if s.set(&mut set, "", Path::new("")).is_ok() {
                assert!(s.same(&set, &unset), "{}", s.name);
            }
        }
    }

    #[test]
    fn the_shipped_proxy_conf_lists_every_key_with_its_default() {
        let shipped = include_str!("../../proxy.conf");
        parse(shipped, Path::new("proxy.conf")).expect("the shipped proxy.conf parses");
        for s in SETTINGS {
            // `key = value`, or `#key = value` commented out; prose is `# words`.
            let line = shipped.lines().find_map(|l| {
                let (key, value) = l.strip_prefix('#').unwrap_or(l).split_once('=')?;
                (key.trim_end() == s.name).then(|| (l.starts_with('#'), value.trim()))
            });
            let Some((commented, value)) = line else {
                panic!("proxy.conf does not list `{}`", s.name);
            };
            match s.default {
                Is(default) | Follows { floor: default, .. } => {
                    assert!(commented, "`{}` should be commented out", s.name);
                    assert_eq!(value, default, "the default of `{}`", s.name);
                }
                Required(_) => assert!(!commented, "`{}` is required", s.name),
                // An example, commented out: none is the default.
                Repeated => assert!(commented, "`{}` should be commented out", s.name),
            }
        }
    }

    #[test]
    fn a_repeated_key_adds_a_value_per_line_and_is_compared_and_kept_whole() {
        let two = parse(
            &format!(
                "{REQUIRED}response_header = X-One: 1\nupstream_header = User-Agent: a\n\
                 response_header = X-Two: 2\n"
            ),
            Path::new("p"),
        )
        .unwrap();
        let names: Vec<&str> = two
            .response_headers
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(names, ["X-One", "X-Two"], "in file order");
        assert_eq!(two.line_of("response_header"), Some(4));
        let setting = find("response_header").unwrap();
        assert!(setting.repeats() && !find("listen").unwrap().repeats());
        assert_eq!(setting.shown(&two), "X-One: 1, X-Two: 2");
        assert_eq!(
            find("upstream_header").unwrap().shown(&two),
            "User-Agent: …",
            "values may hold a credential"
        );

        // One value of the list changed is a change; keeping takes the whole running list.
        let changed = parse(
            &format!("{REQUIRED}response_header = X-One: 1\nresponse_header = X-Two: 3\n"),
            Path::new("p"),
        )
        .unwrap();
        assert!(!setting.same(&two, &changed));
        let mut next = parse(REQUIRED, Path::new("p")).unwrap();
        assert!(!setting.same(&next, &two));
        setting.keep(&mut next, &two);
        assert!(setting.same(&next, &two));
        assert_eq!(next.response_headers.len(), 2);

        // Other keys are still set once.
        assert!(parse(
            &format!("{REQUIRED}page = true\npage = false\n"),
            Path::new("p")
        )
        .unwrap_err()
        .to_string()
        .contains("set twice"));
    }

    /// The key table of docs/configuration.md is this list. `FXPROXY_BLESS=1` rewrites it.
    #[test]
    fn the_docs_key_table_is_drawn_from_the_settings() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let start = doc
            .find("| key | meaning | default |")
            .expect("the key table");
        let end = doc[start..]
            .find("\n\n")
            .map_or(doc.len(), |n| start + n + 1);
        let expected = reference_table();
        if doc[start..end] != expected {
            if std::env::var_os("FXPROXY_BLESS").is_some() {
                std::fs::write(path, format!("{}{expected}{}", &doc[..start], &doc[end..]))
                    .unwrap();
            } else {
                panic!(
                    "docs/configuration.md's key table is not the settings'; run \
                     `FXPROXY_BLESS=1 cargo test --lib config::settings` to rewrite it"
                );
            }
        }
    }
}
