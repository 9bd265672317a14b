//! Configurations that would let anyone in are refused at start-up (and by `--check-config`),
//! and a key file changed into one is not loaded:
//! - the demo key in the `users.keys` fxproxy ships is public (the README prints it): it may
//!   serve this host only, not with `listen` on an address other hosts can reach;
//! - a client certificate as the only credential (`tls_client_ca_file`, no key listed) needs
//!   `allowed_origins`: a browser presents its certificate to any page's WebSocket, so without
//!   an Origin list every web page its user visits could open the feed (cross-site WebSocket
//!   hijacking).

use crate::base::logsafe::redacted_key;
use crate::clients::keys::KeyStore;
use crate::config::Config;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// Both checks: an error that says what to change, naming the file at fault. `listen` is the
/// address clients reach (under socket activation, the socket's, not proxy.conf's).
pub fn check(config: &Config, listen: SocketAddr, keys: &KeyStore) -> Result<(), String> {
    demo_key(listen, keys, &config.user_keys_file)?;
    certificate_only(config, keys)
}

/// An error at `allowed_origins`, when a certificate alone admits a client and any origin may
/// open the WebSocket.
fn certificate_only(config: &Config, keys: &KeyStore) -> Result<(), String> {
    if config.tls_client_ca_file.is_none() || !keys.is_empty() || !config.allowed_origins.is_empty()
    {
        return Ok(());
    }
    Err(config
        .error_at(
            "allowed_origins",
            format!(
                "with tls_client_ca_file and no key in {}, a client certificate is the only \
                 credential, and a browser presents its certificate to any web page's WebSocket: \
                 set allowed_origins to the origins of your own pages (e.g. \
                 https://dash.example.com), or list keys in the key file",
                config.user_keys_file.display()
            ),
        )
        .to_string())
}

/// The key file as shipped, so any key in it counts, whatever it is renamed to next.
const SHIPPED: &str = include_str!("../../users.keys");

/// An error naming the key file, when it holds a shipped key and `listen` is not loopback.
fn demo_key(listen: SocketAddr, keys: &KeyStore, file: &Path) -> Result<(), String> {
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
                demo_key(listen.parse().unwrap(), &demo, file),
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
            let e = demo_key(listen.parse().unwrap(), &demo, file).unwrap_err();
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
        assert_eq!(
            demo_key("0.0.0.0:8765".parse().unwrap(), &own, file),
            Ok(())
        );
    }

    #[test]
    fn a_certificate_alone_needs_an_origin_list() {
        let conf = |extra: &str| {
            crate::config::parse(
                &format!(
                    "upstream_url = sim\nsymbols = EURUSD\nuser_keys_file = k\n\
                     tls_cert_file = c.pem\ntls_key_file = k.pem\n{extra}"
                ),
                Path::new("/etc/fxproxy/proxy.conf"),
            )
            .unwrap()
        };
        let none = store("# certificates alone\n");
        let with_ca = conf("tls_client_ca_file = ca.pem\n");
        let e = check(&with_ca, with_ca.listen, &none).unwrap_err();
        assert!(
            e.starts_with("/etc/fxproxy/proxy.conf: with tls_client_ca_file and no key in"),
            "{e}"
        );
        assert!(e.contains("set allowed_origins"), "{e}");
        let listed = conf("tls_client_ca_file = ca.pem\nallowed_origins = https://a.example\n");
        assert_eq!(check(&listed, listed.listen, &none), Ok(()));
        assert_eq!(
            check(&with_ca, with_ca.listen, &store("alice-key-0001\n")),
            Ok(())
        );
        assert_eq!(check(&conf(""), conf("").listen, &none), Ok(()));
    }
}
