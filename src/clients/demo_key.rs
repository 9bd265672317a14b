//! The demo key in the `users.keys` fxproxy ships is public (the README prints it): it may
//! serve this host only. With it in the key file and `listen` on an address other hosts can
//! reach, fxproxy refuses to start (and `--check-config` says why), and a key file changed to
//! hold it is not loaded.

use crate::base::logsafe::redacted_key;
use crate::clients::keys::KeyStore;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// The key file as shipped, so any key in it counts, whatever it is renamed to next.
const SHIPPED: &str = include_str!("../../users.keys");

/// An error naming the key file, when it holds a shipped key and `listen` is not loopback.
pub fn check(listen: SocketAddr, keys: &KeyStore, file: &Path) -> Result<(), String> {
    if is_loopback(listen.ip()) {
        return Ok(());
    }
    let shipped = KeyStore::parse(SHIPPED).unwrap_or_default();
    let Some(key) = shipped
        .entries()
        .iter()
        .find(|entry| keys.contains(&entry.key))
    else {
        return Ok(());
    };
    Err(format!(
        "{}: holds the demo key `{}` shipped with fxproxy, which anyone can read in its README, \
         and listen = {listen} is not a loopback address: replace it with a key of your own \
         (e.g. `openssl rand -hex 24`) before serving a network",
        file.display(),
        redacted_key(&key.key)
    ))
}

/// 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104: only this host can connect. An unspecified
/// address (0.0.0.0, ::) is every interface, so it is not.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(text: &str) -> KeyStore {
        KeyStore::parse(text).unwrap()
    }

    #[test]
    fn the_shipped_file_holds_the_readme_key() {
        assert!(KeyStore::parse(SHIPPED)
            .unwrap()
            .contains("demo-key-change-me"));
    }

    #[test]
    fn the_demo_key_may_serve_only_this_host() {
        let file = Path::new("/etc/fxproxy/users.keys");
        let demo = store("alice-key-0001\ndemo-key-change-me EURUSD\n");
        for listen in [
            "127.0.0.1:8765",
            "127.1.2.3:0",
            "[::1]:8765",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert_eq!(
                check(listen.parse().unwrap(), &demo, file),
                Ok(()),
                "{listen}"
            );
        }
        for listen in [
            "0.0.0.0:8765",
            "[::]:8765",
            "192.168.1.5:8765",
            "[::ffff:10.0.0.1]:1",
        ] {
            let e = check(listen.parse().unwrap(), &demo, file).unwrap_err();
            assert!(
                e.starts_with("/etc/fxproxy/users.keys: holds the demo key `demo…`"),
                "{e}"
            );
            assert!(
                e.contains(&format!("listen = {listen} is not a loopback address")),
                "{e}"
            );
            assert!(e.contains("replace it"), "{e}");
            assert!(!e.contains("demo-key-change-me"), "{e}");
        }
        let own = store("alice-key-0001\n# demo-key-change-me\n");
        assert_eq!(check("0.0.0.0:8765".parse().unwrap(), &own, file), Ok(()));
    }
}
