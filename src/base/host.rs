//! Host and port as URLs and `HOST:PORT` settings write them, an IPv6 address in brackets:
//! taken apart in one place for the upstream URL, the outbound proxy and Redis's addresses.

/// `host` and the text of its port, if any: `name:port`, `1.2.3.4:port`, `[v6]:port`, `[v6]`.
/// `None` when brackets hold no IPv6 address or something other than `:port` follows them.
pub fn split_host_port(text: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    match text.split_once(':') {
        Some((host, port)) => Some((host, Some(port))),
        None => Some((text, None)),
    }
}

/// The host of a URL, given what follows its `scheme://`: user info, port, path, query and
/// fragment dropped, an IPv6 address without its brackets. `None` when there is no host.
pub fn url_host(after_scheme: &str) -> Option<&str> {
    let authority = after_scheme.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => host_port.split(':').next()?,
    };
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_ports_as_urls_write_them() {
        assert_eq!(
            split_host_port("a.example:80"),
            Some(("a.example", Some("80")))
        );
        assert_eq!(split_host_port("a.example"), Some(("a.example", None)));
        assert_eq!(split_host_port("[::1]:6379"), Some(("::1", Some("6379"))));
        assert_eq!(split_host_port("[::1]"), Some(("::1", None)));
        assert_eq!(split_host_port("[nope]:1"), None);
        assert_eq!(split_host_port("[::1]x"), None);
        assert_eq!(url_host("u:p@[::1]:9/feed?k=1"), Some("::1"));
        assert_eq!(url_host("feed.example:443/x#f"), Some("feed.example"));
        assert_eq!(url_host("/path"), None);
        assert_eq!(url_host(""), None);
    }
}
