//! Reloading the configuration while clients stay connected (SIGHUP, `systemctl reload`):
//! proxy.conf and the key file are read again at once, and every value that can change
//! without dropping a client takes effect; a broken file changes nothing.
//!
//! Each key of proxy.conf reaches a running proxy in one of three ways ([`Reach`]), defined
//! with the key in `config::settings`: at once for everyone, connected clients
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
use crate::config::settings::{Reach, Setting, SETTINGS};
use crate::config::{self, Config};
use crate::fanout::slot::Kick;
use log::{error, info, warn};
use parking_lot::Mutex;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

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
        if setting.same(running, &next) {
            continue;
        }
        if setting.reach == Reach::Restart {
            waiting.push((setting, setting.shown(&next)));
        } else {
            applied.push(setting);
        }
    }
    // Only after every comparison: the API key's file and its contents both wait.
    for (setting, _) in &waiting {
        setting.keep(&mut next, running);
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

impl Reloaded {
    /// One line for `systemctl status` (sd_notify's `STATUS=`): what changed, what waits.
    pub fn summary(&self) -> String {
        let mut line = format!("configuration reloaded: {} client key(s)", self.keys);
        if !self.applied.is_empty() {
            line.push_str(&format!("; applied {}", self.applied.join(", ")));
        }
        if !self.waiting.is_empty() {
            line.push_str(&format!("; needs a restart: {}", self.waiting.join(", ")));
        }
        line
    }
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
                setting.name,
                setting.shown(&next),
                setting.shown(&running),
                setting.reach.words()
            );
        }
        let file_name = next.file.display().to_string();
        for (setting, wanted) in &waiting {
            let place = next
                .line_of(setting.name)
                .map_or(file_name.clone(), |line| format!("{file_name}:{line}"));
            warn!(
                "reload: {place}: {} changed to {wanted} but needs a restart; still {} until then",
                setting.name,
                setting.shown(&running),
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
            applied: applied.iter().map(|s| s.name).collect(),
            waiting: waiting.iter().map(|(s, _)| s.name).collect(),
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
    crate::clients::guard::check(config, config.listen, &keys)?;
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

    /// Every key that needs a restart set, so that each can be changed alone.
    const ALL_SET: &str = "upstream_url = ws://feed.example/a\nsymbols = EURUSD\n\
        user_keys_file = users.keys\nlisten = 127.0.0.1:1\ntls_cert_file = a.pem\n\
        tls_key_file = a.key\ntls_client_ca_file = ca.pem\nupstream_api_key = key-one\n\
        upstream_ca_file = up.pem\nupstream_bundled_roots = true\n\
        subscribe_message = {\"a\":\"{api_key}\"}\nrecord_file = rec.jsonl\n\
        record_max_bytes = 4096\nbackbone = rediss://:pw-one@127.0.0.1:6379\n\
        backbone_ca_file = redis-ca.pem\n\
        backbone_role = both\nbackbone_name = fx\nbackbone_max_len = 1000\n\
        client_format = normalized\nadmin_listen = 127.0.0.1:9187\nlog_format = text\n\
        upstream_proxy = http://u@proxy.example:3128\n\
        upstream_proxy_password_file = pw\nupstream_header = X-One: 1\n\
        upstream_header = X-Two: 2\n";

    /// `ALL_SET` with `key` changed (and whatever must change with it).
    fn changed(key: &str) -> String {
        let replace = |line: &str| {
            let name = line.split('=').next().unwrap_or("").trim();
            match (name, key) {
                // Only one of the two may be set.
                ("upstream_api_key", "upstream_api_key_file") => {
                    "upstream_api_key_file = key.txt".to_string()
                }
                // The other providers take no subscribe_message.
                ("subscribe_message", "provider" | "provider_template") => String::new(),
                (n, k) if n == k => match k {
                    "listen" => "listen = 127.0.0.1:2".into(),
                    "upstream_url" => "upstream_url = ws://feed.example/b".into(),
                    "upstream_bundled_roots" => "upstream_bundled_roots = false".into(),
                    "symbols" => "symbols = EURUSD,GBPUSD".into(),
                    "subscribe_message" => "subscribe_message = {\"b\":\"{api_key}\"}".into(),
                    "record_max_bytes" => "record_max_bytes = 8192".into(),
                    // The password alone: the log shows the URL without it.
                    "backbone" => "backbone = rediss://:pw-two@127.0.0.1:6379".into(),
                    "backbone_role" => "backbone_role = edge".into(),
                    "backbone_max_len" => "backbone_max_len = 2000".into(),
                    "client_format" => "client_format = upstream".into(),
                    "admin_listen" => "admin_listen = 127.0.0.1:9188".into(),
                    "log_format" => "log_format = json".into(),
                    "upstream_proxy" => "upstream_proxy = http://u@proxy.example:3129".into(),
                    // One line of a repeated key: the whole list is a change.
                    "upstream_header" if line.contains("X-Two") => {
                        "upstream_header = X-Two: 3".into()
                    }
                    "upstream_header" => line.to_string(),
                    // A file or a name: another one.
                    _ => line.replace(" = ", " = other-"),
                },
                _ => line.to_string(),
            }
        };
        let mut text: String = ALL_SET.lines().map(|l| replace(l) + "\n").collect();
        match key {
            "provider" => text.push_str("provider = tradermade-v2\n"),
            "provider_template" => {
                text.push_str("provider = custom\nprovider_template = feed.conf\n")
            }
            _ => {}
        }
        text
    }

    #[test]
    fn every_key_that_needs_a_restart_is_still_pending_at_the_next_reload() {
        let restart = SETTINGS.iter().filter(|s| s.reach == Reach::Restart);
        for setting in restart {
            let running = parse(ALL_SET);
            let file = parse(&changed(setting.name));
            let first = merge(&running, file.clone());
            let waits = |m: &Merged| m.waiting.iter().any(|(s, _)| s.name == setting.name);
            assert!(waits(&first), "{}: not reported as waiting", setting.name);
            for other in SETTINGS.iter().filter(|s| s.reach == Reach::Restart) {
                assert!(
                    other.same(&first.next, &running),
                    "{}: after a change of {}, its running value was not kept",
                    other.name,
                    setting.name
                );
            }
            // A second SIGHUP with the same file still finds the change waiting.
            let second = merge(&first.next, file);
            assert!(
                waits(&second),
                "{}: forgotten at the second reload",
                setting.name
            );
        }
    }

    #[test]
    fn a_changed_backbone_password_is_reported_but_never_shown() {
        let merged = merge(&parse(ALL_SET), parse(&changed("backbone")));
        let (setting, shown) = &merged.waiting[0];
        assert_eq!(setting.name, "backbone");
        assert!(!shown.contains("pw-"), "{shown}");
    }

    #[test]
    fn every_key_that_needs_a_restart_keeps_its_running_value() {
        let running = parse(BASE);
        let file = parse(
            "listen = 0.0.0.0:9999\nupstream_url = wss://feed.example/x?api_key=s3cret\n\
             upstream_api_key = another-key\nsymbols = EURUSD,GBPUSD\n\
             subscribe_message = {\"k\":\"{api_key}\"}\nuser_keys_file = users.keys\n\
",
        );
        let merged = merge(&running, file);
        let waiting: Vec<&str> = merged.waiting.iter().map(|(s, _)| s.name).collect();
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
            assert!(
                setting.same(&merged.next, &running),
                "{} kept",
                setting.name
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
             log_level = debug\nallowed_origins = https://a.example\n\
             response_header = X-Served-By: fx-1\n"
        ));
        let merged = merge(&running, file);
        let applied: Vec<(&str, Reach)> =
            merged.applied.iter().map(|s| (s.name, s.reach)).collect();
        assert_eq!(
            applied,
            [
                ("market_closed_dates", Reach::Everyone),
                ("client_ping_secs", Reach::Everyone),
                ("max_clients_per_key", Reach::NewConnections),
                ("allowed_origins", Reach::NewConnections),
                ("response_header", Reach::NewConnections),
                ("log_level", Reach::Everyone),
            ]
        );
        assert!(merged.waiting.is_empty());
        assert_eq!(merged.next.max_clients_per_key, 3);
        assert_eq!(merged.next.client_ping, std::time::Duration::from_secs(5));
        assert_eq!(merged.next.market_closed_dates.len(), 1);
    }
}
