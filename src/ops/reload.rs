//! Reloading the configuration while clients stay connected (SIGHUP, `systemctl reload`):
//! proxy.conf and the key file are read again at once, and every value that can change
//! without dropping a client takes effect; a broken file changes nothing.
//!
//! Each key of proxy.conf reaches a running proxy in one of three ways ([`Reach`]), listed in
//! [`SETTINGS`] (and in the table of docs/configuration.md): at once for everyone, connected clients
//! included; for connections made from now on (sizes and limits a connection was admitted
//! under stay with it); or only after a restart (what the listening socket, the upstream
//! connection and the hub were built from). Those last keep their running value, so
//! [`crate::clients::context::Context::config`] always tells what is in force, and are logged as
//! needing a restart.
//!
//! A reload is all or nothing: proxy.conf is parsed and validated, the key file read, and
//! every [`Step`] prepared (the TLS certificate pair will be one) before anything changes;
//! only when all of that succeeded is each step committed and the new configuration
//! published. The key file's own change detection (a poll every two seconds, see
//! [`Reloader::poll_keys`]) goes through the same lock, so the two never interleave.

use crate::clients::context::Context;
use crate::clients::keys::KeyStore;
use crate::config::{self, Config, Upstream};
use crate::fanout::slot::Kick;
use crate::feed::upstream::display_url;
use log::{error, info, warn};
use parking_lot::Mutex;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

/// Whom a new value of a key reaches.
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
    fn words(self) -> &'static str {
        match self {
            Reach::Everyone => "applies at once, to connected clients too",
            Reach::NewConnections => "applies to new connections",
            Reach::Restart => "needs a restart",
        }
    }
}

/// How a value may be shown in the log.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shown {
    Value,
    /// A URL without its query string, where some providers put the key.
    Url,
    /// A credential, or text that may hold one: named, never shown.
    Hidden,
}

/// One key of proxy.conf as a reload sees it.
pub struct Setting {
    pub key: &'static str,
    pub reach: Reach,
    /// The value as a string, to compare and (unless hidden) to log.
    value: fn(&Config) -> String,
    shown: Shown,
}

fn secs(d: std::time::Duration) -> String {
    d.as_secs().to_string()
}

/// Every key of proxy.conf, in the order of the shipped file, and whom a change reaches.
pub static SETTINGS: &[Setting] = &[
    Setting {
        key: "listen",
        reach: Reach::Restart,
        value: |c| c.listen.to_string(),
        shown: Shown::Value,
    },
    Setting {
        key: "tls_cert_file",
        reach: Reach::Restart,
        value: |c| {
            c.tls_cert_file
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        },
        shown: Shown::Value,
    },
    Setting {
        key: "tls_key_file",
        reach: Reach::Restart,
        value: |c| {
            c.tls_key_file
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        },
        shown: Shown::Value,
    },
    Setting {
        key: "tls_client_ca_file",
        reach: Reach::Restart,
        value: |c| {
            c.tls_client_ca_file
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        },
        shown: Shown::Value,
    },
    Setting {
        key: "upstream_url",
        reach: Reach::Restart,
        value: |c| match &c.upstream {
            Upstream::Sim => "sim".to_string(),
            Upstream::Url(url) => url.clone(),
            Upstream::ProviderUrl => "(the provider template's url)".to_string(),
            Upstream::Replay(replay) => format!(
                "replay:{} (speed {}, loop {})",
                replay.path.display(),
                replay.speed.map_or("max".to_string(), |s| s.to_string()),
                replay.looped
            ),
        },
        shown: Shown::Url,
    },
    Setting {
        key: "upstream_api_key",
        reach: Reach::Restart,
        value: |c| c.upstream_api_key.expose().to_string(),
        shown: Shown::Hidden,
    },
    Setting {
        key: "upstream_api_key_file",
        reach: Reach::Restart,
        value: |c| {
            c.upstream_api_key_file
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        },
        shown: Shown::Value,
    },
    Setting {
        key: "upstream_ca_file",
        reach: Reach::Restart,
        value: |c| {
            c.upstream_ca_file
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        },
        shown: Shown::Value,
    },
    Setting {
        key: "upstream_bundled_roots",
        reach: Reach::Restart,
        value: |c| c.upstream_bundled_roots.to_string(),
        shown: Shown::Value,
    },
    Setting {
        key: "symbols",
        reach: Reach::Restart,
        value: |c| c.symbols.join(","),
        shown: Shown::Value,
    },
    Setting {
        key: "subscribe_message",
        reach: Reach::Restart,
        value: |c| c.subscribe_message.clone(),
        shown: Shown::Hidden,
    },
    Setting {
        key: "provider",
        reach: Reach::Restart,
        value: |c| c.provider.name().to_string(),
        shown: Shown::Value,
    },
    Setting {
        key: "provider_template",
        reach: Reach::Restart,
        value: |c| {
            c.provider_template
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        },
        shown: Shown::Value,
    },
    Setting {
        key: "client_format",
        reach: Reach::Restart,
        value: |c| format!("{:?}", c.client_format).to_lowercase(),
        shown: Shown::Value,
    },
    Setting {
        key: "record_file",
        reach: Reach::Restart,
        value: |c| {
            c.record_file
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        },
        shown: Shown::Value,
    },
    Setting {
        key: "record_max_bytes",
        reach: Reach::Restart,
        value: |c| c.record_max_bytes.to_string(),
        shown: Shown::Value,
    },
    Setting {
        key: "slow_client",
        reach: Reach::NewConnections,
        value: |c| format!("{:?}", c.slow_client).to_lowercase(),
        shown: Shown::Value,
    },
    Setting {
        key: "user_keys_file",
        reach: Reach::Everyone,
        value: |c| c.user_keys_file.display().to_string(),
        shown: Shown::Value,
    },
    Setting {
        key: "auth_timeout_secs",
        reach: Reach::NewConnections,
        value: |c| secs(c.auth_timeout),
        shown: Shown::Value,
    },
    Setting {
        key: "handshake_timeout_secs",
        reach: Reach::NewConnections,
        value: |c| secs(c.handshake_timeout),
        shown: Shown::Value,
    },
    Setting {
        key: "upstream_stale_secs",
        reach: Reach::Everyone,
        value: |c| secs(c.upstream_stale),
        shown: Shown::Value,
    },
    Setting {
        key: "upstream_connect_timeout_secs",
        reach: Reach::Everyone,
        value: |c| secs(c.upstream_connect_timeout),
        shown: Shown::Value,
    },
    Setting {
        key: "upstream_ping_secs",
        reach: Reach::Everyone,
        value: |c| secs(c.upstream_ping),
        shown: Shown::Value,
    },
    Setting {
        key: "upstream_backoff_min_ms",
        reach: Reach::Everyone,
        value: |c| c.upstream_backoff_min.as_millis().to_string(),
        shown: Shown::Value,
    },
    Setting {
        key: "upstream_backoff_max_secs",
        reach: Reach::Everyone,
        value: |c| secs(c.upstream_backoff_max),
        shown: Shown::Value,
    },
    Setting {
        key: "market_hours",
        reach: Reach::Everyone,
        value: |c| c.market_hours.name().to_string(),
        shown: Shown::Value,
    },
    Setting {
        key: "market_closed_dates",
        reach: Reach::Everyone,
        value: |c| {
            let dates: Vec<String> = c
                .market_closed_dates
                .iter()
                .map(|d| d.to_string())
                .collect();
            dates.join(",")
        },
        shown: Shown::Value,
    },
    Setting {
        key: "client_queue_len",
        reach: Reach::Everyone,
        value: |c| c.client_queue_len.to_string(),
        shown: Shown::Value,
    },
    Setting {
        key: "max_client_lag_secs",
        reach: Reach::Everyone,
        value: |c| secs(c.max_client_lag),
        shown: Shown::Value,
    },
    Setting {
        key: "client_ping_secs",
        reach: Reach::Everyone,
        value: |c| secs(c.client_ping),
        shown: Shown::Value,
    },
    Setting {
        key: "max_clients",
        reach: Reach::NewConnections,
        value: |c| c.max_clients.to_string(),
        shown: Shown::Value,
    },
    Setting {
        key: "max_clients_per_key",
        reach: Reach::NewConnections,
        value: |c| c.max_clients_per_key.to_string(),
        shown: Shown::Value,
    },
    Setting {
        key: "max_pending_connections",
        reach: Reach::NewConnections,
        value: |c| c.max_pending_connections.to_string(),
        shown: Shown::Value,
    },
    Setting {
        key: "max_message_bytes",
        reach: Reach::NewConnections,
        value: |c| c.max_message_bytes.to_string(),
        shown: Shown::Value,
    },
    Setting {
        key: "max_client_messages_per_sec",
        reach: Reach::Everyone,
        value: |c| c.max_client_messages_per_sec.to_string(),
        shown: Shown::Value,
    },
    Setting {
        key: "client_read_buffer_bytes",
        reach: Reach::NewConnections,
        value: |c| c.client_read_buffer_bytes.to_string(),
        shown: Shown::Value,
    },
    Setting {
        key: "client_write_buffer_bytes",
        reach: Reach::NewConnections,
        value: |c| c.client_write_buffer_bytes.to_string(),
        shown: Shown::Value,
    },
    Setting {
        key: "allowed_origins",
        reach: Reach::NewConnections,
        value: |c| c.allowed_origins.join(","),
        shown: Shown::Value,
    },
    Setting {
        key: "http_endpoints",
        reach: Reach::Everyone,
        value: |c| c.http_endpoints.to_string(),
        shown: Shown::Value,
    },
    Setting {
        key: "page",
        reach: Reach::Everyone,
        value: |c| c.page.to_string(),
        shown: Shown::Value,
    },
    Setting {
        key: "status_interval_secs",
        reach: Reach::Everyone,
        value: |c| c.status_interval.map_or("0".to_string(), secs),
        shown: Shown::Value,
    },
    Setting {
        key: "batch_delay_ms",
        reach: Reach::Everyone,
        value: |c| c.batch_delay.as_millis().to_string(),
        shown: Shown::Value,
    },
    Setting {
        key: "sim_rate",
        reach: Reach::Everyone,
        value: |c| c.sim_rate.to_string(),
        shown: Shown::Value,
    },
    Setting {
        key: "log_level",
        reach: Reach::Everyone,
        value: |c| c.log_level.name().to_string(),
        shown: Shown::Value,
    },
    Setting {
        key: "backbone",
        reach: Reach::Restart,
        value: |c| c.backbone.as_ref().map_or(String::new(), |u| u.shown()),
        shown: Shown::Value,
    },
    Setting {
        key: "backbone_role",
        reach: Reach::Restart,
        value: |c| c.backbone_role.name().to_string(),
        shown: Shown::Value,
    },
    Setting {
        key: "backbone_name",
        reach: Reach::Restart,
        value: |c| c.backbone_name.clone(),
        shown: Shown::Value,
    },
    Setting {
        key: "backbone_max_len",
        reach: Reach::Restart,
        value: |c| c.backbone_max_len.to_string(),
        shown: Shown::Value,
    },
    Setting {
        key: "trusted_proxies",
        reach: Reach::NewConnections,
        value: |c| {
            c.trusted_proxies
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        },
        shown: Shown::Value,
    },
];

impl Setting {
    fn show(&self, c: &Config) -> String {
        match self.shown {
            Shown::Value => {
                let v = (self.value)(c);
                if v.is_empty() {
                    "(empty)".to_string()
                } else {
                    v
                }
            }
            Shown::Url => display_url(&(self.value)(c)).to_string(),
            Shown::Hidden => "(not shown)".to_string(),
        }
    }
}

/// Puts the running value of a key that needs a restart back into `next`.
fn keep_running(next: &mut Config, running: &Config, key: &str) {
    match key {
        "listen" => next.listen = running.listen,
        "upstream_url" => next.upstream = running.upstream.clone(),
        "upstream_api_key" => next.upstream_api_key = running.upstream_api_key.clone(),
        "upstream_api_key_file" => {
            next.upstream_api_key_file = running.upstream_api_key_file.clone()
        }
        "symbols" => next.symbols = running.symbols.clone(),
        "subscribe_message" => next.subscribe_message = running.subscribe_message.clone(),
        // A key marked Restart without a line here fails the unit test below.
        _ => {}
    }
}

/// What a reload of a file over the running configuration comes to.
pub struct Merged {
    /// The file's configuration with the running value of every key that needs a restart.
    pub next: Config,
    /// Keys changed whose new value takes effect.
    pub applied: Vec<&'static Setting>,
    /// Keys changed that wait for a restart, each with the file's value as it may be shown.
    pub waiting: Vec<(&'static Setting, String)>,
}

pub fn merge(running: &Config, file: Config) -> Merged {
    let mut next = file;
    let mut applied = Vec::new();
    let mut waiting = Vec::new();
    for setting in SETTINGS {
        if (setting.value)(running) == (setting.value)(&next) {
            continue;
        }
        if setting.reach == Reach::Restart {
            waiting.push((setting, setting.show(&next)));
        } else {
            applied.push(setting);
        }
    }
    // Only after every comparison: the API key's file and its contents both wait.
    for (setting, _) in &waiting {
        keep_running(&mut next, running, setting.key);
    }
    Merged {
        next,
        applied,
        waiting,
    }
}

/// Makes one change once every step has been prepared.
pub type Commit = Box<dyn FnOnce() + Send>;

/// A part of the proxy with something of its own to reload (the TLS certificate pair, say):
/// given the new configuration, it reads and checks what it needs and returns how to switch
/// to it, or says why it cannot, in which case the whole reload is refused and nothing
/// changes. It must not change anything itself: only its [`Commit`] may.
pub type Step = Box<dyn Fn(&Config) -> Result<Commit, String> + Send + Sync>;

/// A reload that went through.
#[derive(Debug)]
pub struct Reloaded {
    /// Keys whose new value is now in force.
    pub applied: Vec<&'static str>,
    /// Keys changed in the file that keep their running value until a restart.
    pub waiting: Vec<&'static str>,
    /// Client keys now in force, and clients closed because theirs was removed or narrowed.
    pub keys: usize,
    pub disconnected: usize,
}

/// A key file's modification time, size and inode: an editor that writes a new file and
/// renames it over the old one changes the inode even within one timestamp tick.
type Stamp = Option<(SystemTime, u64, u64)>;

fn file_stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// Reloads the running configuration; one per proxy.
pub struct Reloader {
    ctx: Arc<Context>,
    steps: Mutex<Vec<(String, Step)>>,
    /// Held for a whole reload, so that SIGHUP and the key file poll take turns; holds the
    /// key file's stamp as last read.
    busy: Mutex<Stamp>,
}

impl Reloader {
    pub fn new(ctx: Arc<Context>) -> Reloader {
        let stamp = file_stamp(&ctx.config().user_keys_file);
        Reloader {
            ctx,
            steps: Mutex::new(Vec::new()),
            busy: Mutex::new(stamp),
        }
    }

    /// Adds a step to every reload from now on, after those added before; `name` says in the
    /// log what failed.
    pub fn add_step(&self, name: &str, step: Step) {
        self.steps.lock().push((name.to_string(), step));
    }

    /// Reads proxy.conf and the key file again and applies them (see the module's doc).
    /// On error nothing changed; the error is logged and counted already.
    pub fn reload(&self) -> Result<Reloaded, String> {
        let mut stamp = self.busy.lock();
        let result = self.try_reload(&mut stamp);
        let metrics = &self.ctx.metrics;
        match &result {
            Ok(_) => metrics.config_reloads.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                error!("configuration reload failed; the running configuration is kept: {e}");
                metrics
                    .config_reload_failures
                    .fetch_add(1, Ordering::Relaxed)
            }
        };
        result
    }

    fn try_reload(&self, stamp: &mut Stamp) -> Result<Reloaded, String> {
        let running = self.ctx.config();
        let mut file = config::load(&running.file).map_err(|e| e.to_string())?;
        // As at start-up: the template is read and checked, and an unset upstream_url
        // becomes the template's, so that it compares equal to the running one.
        crate::feed::template::describe(&mut file).map_err(|e| e.to_string())?;
        let Merged {
            next,
            applied,
            waiting,
        } = merge(&running, file);
        // Everything is read and checked before anything changes.
        let keys_stamp = file_stamp(&next.user_keys_file);
        let keys = load_keys(&next)?;
        let commits = {
            let steps = self.steps.lock();
            let mut commits = Vec::with_capacity(steps.len());
            for (name, step) in steps.iter() {
                commits.push(step(&next).map_err(|e| format!("{name}: {e}"))?);
            }
            commits
        };

        for setting in &applied {
            info!(
                "reload: {} = {} (was {}): {}",
                setting.key,
                setting.show(&next),
                setting.show(&running),
                setting.reach.words()
            );
        }
        let file_name = next.file.display().to_string();
        for (setting, wanted) in &waiting {
            let place = next
                .line_of(setting.key)
                .map_or(file_name.clone(), |line| format!("{file_name}:{line}"));
            warn!(
                "reload: {place}: {} changed to {wanted} but needs a restart; still {} until then",
                setting.key,
                setting.show(&running),
            );
        }
        if next.log_level != running.log_level {
            crate::ops::logging::set_level(next.log_level.name());
        }
        let ctx = &self.ctx;
        ctx.hub.set_limits(
            next.client_queue_len,
            next.max_clients_per_key,
            next.batch_delay,
        );
        ctx.places.set_max_clients(next.max_clients);
        ctx.metrics
            .config_pending_restart
            .store(waiting.len() as u64, Ordering::Relaxed);
        let file = next.file.clone();
        ctx.set_config(next);
        *stamp = keys_stamp;
        let (count, disconnected) = self.set_keys(keys);
        for commit in commits {
            commit();
        }
        info!(
            "configuration reloaded from {}: {} change(s) applied, {} waiting for a restart; {count} client key(s), {disconnected} client(s) disconnected whose key was removed or narrowed",
            file.display(),
            applied.len(),
            waiting.len()
        );
        Ok(Reloaded {
            applied: applied.iter().map(|s| s.key).collect(),
            waiting: waiting.iter().map(|(s, _)| s.key).collect(),
            keys: count,
            disconnected,
        })
    }

    /// Re-reads the key file if it changed since it was last read (the housekeeping thread
    /// asks every two seconds): new keys can connect, clients of removed keys are closed.
    pub fn poll_keys(&self) {
        let mut stamp = self.busy.lock();
        let path = self.ctx.config().user_keys_file.clone();
        let now = file_stamp(&path);
        if now == *stamp {
            return;
        }
        *stamp = now;
        let metrics = &self.ctx.metrics;
        match load_keys(&self.ctx.config()) {
            Ok(store) => {
                metrics.key_reloads.fetch_add(1, Ordering::Relaxed);
                let (count, kicked) = self.set_keys(store);
                info!(
                    "reloaded {count} client key(s); disconnected {kicked} client(s) whose key was removed or narrowed"
                );
            }
            Err(e) => {
                metrics.key_reload_failures.fetch_add(1, Ordering::Relaxed);
                error!("key file changed but cannot be used, keeping the previous keys: {e}")
            }
        }
    }

    /// Puts `store` in force and closes (1008) every client its key no longer allows.
    fn set_keys(&self, store: KeyStore) -> (usize, usize) {
        let ctx = &self.ctx;
        let store = Arc::new(store);
        ctx.set_keys(Arc::clone(&store));
        // With client certificates and no key listed, the certificate alone admits: nobody's
        // key is then taken away.
        let kicked = ctx.hub.kick_where(Kick::KeyRevoked, |c| {
            ctx.keys_checked(&store) && !store.still_allows(&c.key, ctx.hub.symbols_of(c))
        });
        (store.len(), kicked)
    }
}

/// The key file `config` names, refused (like at start-up) if it holds a key from the shipped
/// file while `listen` is not a loopback address.
fn load_keys(config: &Config) -> Result<KeyStore, String> {
    let file = &config.user_keys_file;
    let keys = KeyStore::load(file)?;
    crate::clients::demo_key::check(config.listen, &keys, file)?;
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn parse(text: &str) -> Config {
        config::parse(text, Path::new("/etc/fxproxy/proxy.conf")).unwrap()
    }

    const BASE: &str = "upstream_url = sim\nsymbols = EURUSD\nuser_keys_file = users.keys\n";

    #[test]
    fn every_key_of_proxy_conf_is_listed_once_in_file_order() {
        let listed: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
        assert_eq!(listed, config::KEYS);
    }

    #[test]
    fn every_key_that_needs_a_restart_keeps_its_running_value() {
        let running = parse(BASE);
        let file = parse(
            "listen = 0.0.0.0:9999\nupstream_url = wss://feed.example/x?api_key=s3cret\n\
             upstream_api_key = another-key\nsymbols = EURUSD,GBPUSD\n\
             subscribe_message = {\"k\":\"{api_key}\"}\nuser_keys_file = users.keys\n",
        );
        let merged = merge(&running, file);
        let waiting: Vec<&str> = merged.waiting.iter().map(|(s, _)| s.key).collect();
        assert_eq!(
            waiting,
            [
                "listen",
                "upstream_url",
                "upstream_api_key",
                "symbols",
                "subscribe_message"
            ]
        );
        assert!(merged.applied.is_empty());
        for setting in SETTINGS {
            assert_eq!(
                (setting.value)(&merged.next),
                (setting.value)(&running),
                "{} kept",
                setting.key
            );
        }
        // What the log may say: no key, no query string, no subscribe text.
        let shown: Vec<&str> = merged.waiting.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(
            shown,
            [
                "0.0.0.0:9999",
                "wss://feed.example/x",
                "(not shown)",
                "EURUSD,GBPUSD",
                "(not shown)"
            ]
        );
        // The file variant of the API key waits as well.
        let mut with_file = running.clone();
        with_file.upstream_api_key_file = Some(PathBuf::from("/run/creds/key"));
        let back = merge(&running, with_file);
        assert_eq!(back.waiting.len(), 1);
        assert_eq!(back.next.upstream_api_key_file, None);
    }

    #[test]
    fn live_keys_take_the_file_value() {
        let running = parse(BASE);
        let file = parse(&format!(
            "{BASE}max_clients_per_key = 3\nclient_ping_secs = 5\nmarket_closed_dates = 2026-12-25\n\
             log_level = debug\nallowed_origins = https://a.example\n"
        ));
        let merged = merge(&running, file);
        let applied: Vec<(&str, Reach)> = merged.applied.iter().map(|s| (s.key, s.reach)).collect();
        assert_eq!(
            applied,
            [
                ("market_closed_dates", Reach::Everyone),
                ("client_ping_secs", Reach::Everyone),
                ("max_clients_per_key", Reach::NewConnections),
                ("allowed_origins", Reach::NewConnections),
                ("log_level", Reach::Everyone),
            ]
        );
        assert!(merged.waiting.is_empty());
        assert_eq!(merged.next.max_clients_per_key, 3);
        assert_eq!(merged.next.client_ping, std::time::Duration::from_secs(5));
        assert_eq!(merged.next.market().closed_dates().len(), 1);
    }
}
