//! The text of proxy.conf read into a [`Config`]: `key = value` lines, comments, each key at
//! most once (but those that repeat, each line adding one), each value parsed by its setting;
//! then the checks that span several keys.
//!
//! Syntax: a line whose first non-blank character is `#` is a comment; elsewhere a `#`
//! preceded by whitespace starts a trailing comment, except on a line whose value runs to the
//! end of the line (`subscribe_message`, whose JSON template may contain `#`).

use crate::base::logsafe::escaped;
use crate::config::backbone::RedisUrl;
use crate::config::error::ConfigError;
use crate::config::model::{Config, ProviderChoice};
use crate::config::proxy::UpstreamProxy;
use crate::config::settings::{self, DefaultValue, SETTINGS};
use crate::config::value::Upstream;
use std::path::Path;

/// Keys of which one at most may be set.
const EXCLUSIVE: &[(&str, &str)] = &[("upstream_api_key", "upstream_api_key_file")];

/// Parses the text of a config file; `file` is only used for messages and for resolving
/// relative paths. Touches neither the file system nor the environment.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let base = file.parent().unwrap_or(Path::new(""));
    let mut config = settings::defaults();
    config.file = file.to_path_buf();

    // Some Windows editors start UTF-8 files with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let split = trimmed.split_once('=').map(|(k, v)| (k.trim(), v));
        let Some((key, value)) = split.filter(|(k, _)| !k.is_empty()) else {
            return Err(ConfigError::NotKeyValue {
                file: file.to_path_buf(),
                line,
                text: trimmed.to_string(),
            });
        };
        let Some(setting) = settings::find(key) else {
            return Err(ConfigError::UnknownKey {
                file: file.to_path_buf(),
                line,
                key: escaped(key).to_string(),
                near: suggestion(key),
            });
        };
        let key = setting.name;
        if let Some(first) = config.line_of(key).filter(|_| !setting.repeats()) {
            return Err(ConfigError::SetTwice {
                file: file.to_path_buf(),
                line,
                key,
                first,
            });
        }
        let value = if setting.to_end_of_line() {
            value.trim()
        } else {
            strip_trailing_comment(value).trim()
        };
        for &(a, b) in EXCLUSIVE {
            let other = if key == a {
                b
            } else if key == b {
                a
            } else {
                continue;
            };
            if let Some(other_line) = config.line_of(other) {
                return Err(ConfigError::Exclusive {
                    file: file.to_path_buf(),
                    line,
                    key,
                    other,
                    other_line,
                });
            }
        }
        setting
            .set(&mut config, value, base)
            .map_err(|problem| ConfigError::BadValue {
                file: file.to_path_buf(),
                line,
                key,
                problem,
            })?;
        config.key_lines.push((key, line));
    }
    check(&mut config)?;
    Ok(config)
}

/// What only the whole file can tell: keys that go together, values that follow others, and
/// the required keys.
fn check(config: &mut Config) -> Result<(), ConfigError> {
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
    check_tls(config)?;
    if config.backbone_ca_file.is_some() && !config.backbone.as_ref().is_some_and(RedisUrl::tls) {
        return Err(config.error_at(
            "backbone_ca_file",
            "is for a backbone reached over TLS: set backbone = rediss://HOST:PORT",
        ));
    }
    check_proxy_password(config)?;
    // Unset, it follows max_clients upward: a storm of max_clients connecting at once must
    // never find the pending set full.
    if config.line_of("max_pending_connections").is_none() {
        config.max_pending_connections = config.max_pending_connections.max(config.max_clients);
    }
    check_provider_keys(config)?;
    for setting in SETTINGS {
        let DefaultValue::Required(_) = setting.default else {
            continue;
        };
        // Another provider's template may give the URL; `feed::provider::describe` checks it.
        let given_by_template =
            setting.name == "upstream_url" && config.provider != ProviderChoice::Tradermade;
        if config.line_of(setting.name).is_none() && !given_by_template {
            return Err(ConfigError::Missing {
                file: config.file.clone(),
                key: setting.name,
                note: None,
            });
        }
    }
    Ok(())
}

/// The proxy's password file goes with a proxy URL that names a user and no password; the
/// file itself is read by `credentials::resolve_proxy_password`.
fn check_proxy_password(c: &Config) -> Result<(), ConfigError> {
    const KEY: &str = "upstream_proxy_password_file";
    if c.upstream_proxy_password_file.is_none() {
        return Ok(());
    }
    match &c.upstream_proxy {
        UpstreamProxy::Off => Err(c.error_at(
            KEY,
            "upstream_proxy is `none`: there is no proxy to give a password to",
        )),
        UpstreamProxy::Url {
            password: Some(_), ..
        } => Err(c.error_at(
            KEY,
            format!(
                "the URL of upstream_proxy (line {}) holds a password already; give it in one place only",
                c.line_of("upstream_proxy").unwrap_or(0)
            ),
        )),
        UpstreamProxy::Url { proxy, .. } if proxy.user.is_none() => Err(c.error_at(
            KEY,
            "upstream_proxy names no user for the password: write it as http://USER@HOST:PORT",
        )),
        _ => Ok(()),
    }
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

/// The provider keys that only make sense together.
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

/// The known key nearest to an unknown one, if it is plausibly a typo.
fn suggestion(unknown: &str) -> Option<&'static str> {
    let unknown = unknown.to_ascii_lowercase();
    let limit = if unknown.len() > 10 { 3 } else { 2 };
    let mut best: Option<(usize, &'static str)> = None;
    for known in SETTINGS.iter().map(|s| s.name) {
        let d = edit_distance(&unknown, known);
        if d <= limit && best.map_or(true, |(bd, _)| d < bd) {
            best = Some((d, known));
        }
    }
    best.map(|(_, k)| k).or_else(|| {
        // `auth_timeout` for `auth_timeout_secs`: a prefix is too far by edits but obvious.
        (unknown.len() >= 4)
            .then(|| {
                SETTINGS
                    .iter()
                    .map(|s| s.name)
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

/// For tests: `extra` lines after a minimal configuration with a provider's upstream.
#[cfg(test)]
pub(crate) fn minimal_with(extra: &str) -> Result<Config, ConfigError> {
    let minimal = "upstream_url = wss://feed.example/x\nsymbols = EURUSD\nuser_keys_file = k\n";
    parse(&format!("{minimal}{extra}"), Path::new("proxy.conf"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::backbone::Role;
    use crate::config::credentials::resolve_tls_paths;
    use crate::config::secret::Secret;
    use crate::config::{
        load, ClientFormat, LogFormat, LogLevel, MarketHours, Replay, SlowClient,
        DEFAULT_SUBSCRIBE_MESSAGE,
    };
    use std::ffi::OsStr;
    use std::path::PathBuf;
    use std::time::Duration;

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
                "key `backbone`: expected redis://HOST:PORT[/DB], rediss://HOST:PORT[/DB] (TLS) or redis+sentinel://",
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
        let tls = parse(
            &format!(
                "{MINIMAL}backbone = rediss://redis.example:6380\nbackbone_ca_file = redis-ca.pem\n"
            ),
            Path::new("/etc/fxproxy/proxy.conf"),
        )
        .unwrap();
        assert_eq!(
            tls.backbone_ca_file,
            Some(PathBuf::from("/etc/fxproxy/redis-ca.pem"))
        );
        let message = parse_err(&format!(
            "{MINIMAL}backbone = redis://r:6379\nbackbone_ca_file = redis-ca.pem\n"
        ));
        assert!(
            message.starts_with(
                "proxy.conf:5: key `backbone_ca_file`: is for a backbone reached over TLS"
            ),
            "{message}"
        );
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
        assert!(matches!(
            e,
            ConfigError::Missing {
                key: "upstream_url",
                ..
            }
        ));
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

    #[test]
    fn load_reads_the_file_and_names_it_when_it_cannot() {
        let e = load(Path::new("/nonexistent/fxproxy/proxy.conf")).unwrap_err();
        assert!(matches!(e, ConfigError::Unreadable { .. }));
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

    #[test]
    fn operations_keys() {
        let c = parse_ok(MINIMAL);
        assert_eq!((c.admin_listen, c.log_format), (None, LogFormat::Text));
        let c = parse_ok(&format!(
            "{MINIMAL}admin_listen = 10.0.0.5:9187\nlog_format = JSON\n"
        ));
        assert_eq!(c.admin_listen, Some("10.0.0.5:9187".parse().unwrap()));
        assert_eq!(c.log_format, LogFormat::Json);
        for (line, expected) in [
            (
                "log_format = logfmt",
                "key `log_format`: expected `text` or `json`, got \"logfmt\"",
            ),
            (
                "admin_listen = localhost:9187",
                "key `admin_listen`: expected an address such as 127.0.0.1:9187",
            ),
        ] {
            let m = parse_err(&format!("{MINIMAL}{line}\n"));
            assert!(m.contains(expected), "{line}: {m}");
        }
    }

    const PROXIED: &str =
        "upstream_url = wss://feed.example/x\nsymbols = EURUSD\nuser_keys_file = k\n";

    #[test]
    fn a_password_file_needs_a_proxy_with_a_user_and_no_password() {
        for (lines, expected) in [
            (
                "upstream_proxy = none\nupstream_proxy_password_file = pw\n",
                "proxy.conf:5: key `upstream_proxy_password_file`: upstream_proxy is `none`",
            ),
            (
                "upstream_proxy = http://u:p@h:1\nupstream_proxy_password_file = pw\n",
                "proxy.conf:5: key `upstream_proxy_password_file`: the URL of upstream_proxy (line 4) holds a password already",
            ),
            (
                "upstream_proxy = http://h:1\nupstream_proxy_password_file = pw\n",
                "proxy.conf:5: key `upstream_proxy_password_file`: upstream_proxy names no user",
            ),
        ] {
            let e = parse_err(&format!("{PROXIED}{lines}"));
            assert!(e.starts_with(expected), "{e}");
        }
        assert!(parse(
            &format!("{PROXIED}upstream_proxy = http://u@h:1\nupstream_proxy_password_file = pw\n"),
            Path::new("proxy.conf")
        )
        .is_ok());
        assert!(
            parse(
                &format!("{PROXIED}upstream_proxy_password_file = pw\n"),
                Path::new("proxy.conf")
            )
            .is_ok(),
            "for the environment's"
        );
    }
}
