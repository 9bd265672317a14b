//! `upstream_proxy`: how the connection to the provider reaches the internet. Unset, as curl
//! does: `HTTPS_PROXY` (for `wss://`) or `HTTP_PROXY` (for `ws://`), unless `NO_PROXY` lists
//! the host; `none`: always direct; a URL: that HTTP proxy, whatever the environment says. The
//! proxy's password may come from its URL, `upstream_proxy_password_file` or the environment
//! (`FXPROXY_UPSTREAM_PROXY_PASSWORD`), as the provider key can, and is never shown. The rules
//! themselves are `base::tunnel`'s, shared with `fxproxy watch`. Only the upstream connection
//! is proxied: clients, the backbone's Redis and the built-in sources are not.

use crate::base::tunnel::ProxyUrl;
use crate::config::secret::Secret;
use crate::config::value::Invalid;

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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::parse::minimal_with as config;

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
}
