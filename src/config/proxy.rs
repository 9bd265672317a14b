//! `upstream_proxy`: how the connection to the provider reaches the internet. Unset, as curl
//! does: `HTTPS_PROXY` (for `wss://`) or `HTTP_PROXY` (for `ws://`), unless `NO_PROXY` lists
//! the host; `none`: always direct; a URL: that HTTP proxy, whatever the environment says. The
//! proxy's password may come from its URL, `upstream_proxy_password_file` or the environment
//! (`FXPROXY_UPSTREAM_PROXY_PASSWORD`), as the provider key can, and is never shown. The rules
//! themselves are `base::tunnel`'s, shared with `fxproxy watch`. Only the upstream connection
//! is proxied: clients, the backbone's Redis and the built-in sources are not.

use crate::base::tunnel::{self, ProxyUrl, Route};
use crate::config::secret::Secret;
use crate::config::value::Invalid;
use crate::config::{Config, ConfigError};

/// The environment variable that supplies the proxy's password when neither its URL nor
/// `upstream_proxy_password_file` does.
pub const PROXY_PASSWORD_ENV: &str = "FXPROXY_UPSTREAM_PROXY_PASSWORD";

/// `upstream_proxy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamProxy {
    /// Unset: the environment's proxy variables, read as curl reads them.
    Environment,
    /// `none`: direct, whatever the environment says.
    Off,
    /// This proxy; its URL's password, if it had one, is kept apart as a [`Secret`].
    Url {
        proxy: ProxyUrl,
        password: Option<Secret>,
    },
}

impl UpstreamProxy {
    pub fn parse(v: &str) -> Result<UpstreamProxy, Invalid> {
        if v.is_empty() {
            return Ok(UpstreamProxy::Environment);
        }
        if v.eq_ignore_ascii_case("none") {
            return Ok(UpstreamProxy::Off);
        }
        let mut proxy =
            ProxyUrl::parse(v).map_err(|e| Invalid::Unusable(format!("{e}; or `none`")))?;
        let password = proxy.password.take().map(Secret::new);
        Ok(UpstreamProxy::Url { proxy, password })
    }

    /// As proxy.conf would write it, without the credentials.
    pub fn shown(&self) -> String {
        match self {
            UpstreamProxy::Environment => String::new(),
            UpstreamProxy::Off => "none".to_string(),
            UpstreamProxy::Url { proxy, .. } => proxy.shown(),
        }
    }
}

/// The checks that need several keys; the password file itself is read by
/// `secret::resolve_proxy_password`.
pub fn check(c: &Config) -> Result<(), ConfigError> {
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

/// `ws://` or `wss://` URL → (TLS, host), the host without brackets, user information or port.
fn target(url: &str) -> Option<(bool, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let tls = scheme.eq_ignore_ascii_case("wss");
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => host_port.split(':').next()?,
    };
    (!host.is_empty()).then_some((tls, host))
}

impl Config {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use std::path::Path;

    const MINIMAL: &str =
        "upstream_url = wss://feed.example/x\nsymbols = EURUSD\nuser_keys_file = k\n";

    fn config(extra: &str) -> Result<Config, ConfigError> {
        parse(&format!("{MINIMAL}{extra}"), Path::new("proxy.conf"))
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn the_key_takes_a_url_none_or_nothing() {
        assert_eq!(
            config("").unwrap().upstream_proxy,
            UpstreamProxy::Environment
        );
        assert_eq!(
            config("upstream_proxy = NONE\n").unwrap().upstream_proxy,
            UpstreamProxy::Off
        );
        let c = config("upstream_proxy = http://alice:pa%20ss@proxy.corp:3128\n").unwrap();
        let UpstreamProxy::Url { proxy, password } = &c.upstream_proxy else {
            panic!("{:?}", c.upstream_proxy);
        };
        assert_eq!(proxy.password, None, "kept apart");
        assert_eq!(password.as_ref().map(Secret::expose), Some("pa ss"));
        assert_eq!(c.upstream_proxy.shown(), "http://…@proxy.corp:3128");
        assert!(!format!("{c:?}").contains("pa ss"));
        let e = config("upstream_proxy = socks5://u:hidden@p:1\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("proxy.conf:4: key `upstream_proxy`: expected http://[USER:PASSWORD@]HOST:PORT, got \"socks5://…@p:1\""),
            "{e}"
        );
        assert!(e.ends_with("; or `none`") && !e.contains("hidden"), "{e}");
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
            let e = config(lines).unwrap_err().to_string();
            assert!(e.starts_with(expected), "{e}");
        }
        assert!(
            config("upstream_proxy = http://u@h:1\nupstream_proxy_password_file = pw\n").is_ok()
        );
        assert!(
            config("upstream_proxy_password_file = pw\n").is_ok(),
            "for the environment's"
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
