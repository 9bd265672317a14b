//! Reaching a host through an HTTP proxy, as company networks require: the proxy's URL
//! (`http://[user:password@]HOST:PORT`), the route to a host as the environment gives it
//! (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`, read as curl reads them), and the `CONNECT`
//! exchange that turns a connection to the proxy into a tunnel to the host (RFC 9110, 9.3.6).
//! The upstream and `fxproxy watch` both use it; TLS for a `wss://` URL then runs end to end
//! through the tunnel, checked against the host, never the proxy.
//!
//! Everything but [`establish`] is pure; the environment is given as a function, so the rules
//! are tested without touching the process's own.

use crate::base::host::split_host_port;
use crate::base::logsafe;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::IpAddr;

/// The port of a proxy URL that names none: curl's default.
pub const DEFAULT_PORT: u16 = 1080;
/// The proxy's answer to `CONNECT` is a status line and a few headers; more is not a proxy.
const MAX_ANSWER: usize = 8 * 1024;
/// Headers in the proxy's answer at most.
const MAX_ANSWER_HEADERS: usize = 32;

/// What a proxy URL should look like, for messages.
pub const EXPECTED: &str = "http://[USER:PASSWORD@]HOST:PORT";

/// An HTTP proxy: where it is and, if it wants them, the credentials for `Proxy-Authorization`
/// (Basic). The password never appears in `Debug` output or in [`ProxyUrl::shown`].
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// A name or an IP address; an IPv6 address without its brackets.
    pub host: String,
    pub port: u16,
    /// Percent-decoded, as the URL's user information is.
    pub user: Option<String>,
    pub password: Option<String>,
}

impl ProxyUrl {
    /// Parses `http://[user[:password]@]host[:port][/]`; without a scheme `http://` is taken,
    /// without a port [`DEFAULT_PORT`], as curl does. A message never repeats the user
    /// information, which may hold the password.
    pub fn parse(text: &str) -> Result<ProxyUrl, String> {
        let text = text.trim();
        let bad = |why: &str| {
            format!(
                "expected {EXPECTED}, got {}{why}",
                logsafe::quoted(&without_credentials(text))
            )
        };
        let rest = match text.split_once("://") {
            None => text,
            Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
                "http" => rest,
                "https" => {
                    return Err(bad(
                        " (a proxy spoken to over TLS is not supported: use http://; a wss:// \
                         upstream is still TLS end to end, inside the tunnel)",
                    ))
                }
                s if s.starts_with("socks") => {
                    return Err(bad(" (SOCKS proxies are not supported, only HTTP CONNECT)"))
                }
                _ => return Err(bad("")),
            },
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) || authority.chars().any(char::is_whitespace) {
            return Err(bad(""));
        }
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, password) = match u.split_once(':') {
                    Some((user, password)) => (user, Some(password)),
                    None => (u, None),
                };
                let decode = |s: &str| {
                    percent_decode(s).ok_or_else(|| {
                        bad(" (a `%` in the user or password is not followed by two hex digits)")
                    })
                };
                let user = decode(user)?;
                if user.is_empty() {
                    return Err(bad(" (the user before `@` is empty)"));
                }
                (Some(user), password.map(decode).transpose()?)
            }
        };
        let (host, port) = split_host_port(host_port).ok_or_else(|| bad(""))?;
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => Some(p)
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| bad(" (the port must be a number from 1 to 65535)"))?,
        };
        let name_ok = |h: &str| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        };
        if !(name_ok(host) || host.parse::<IpAddr>().is_ok()) {
            return Err(bad(""));
        }
        Ok(ProxyUrl {
            host: host.to_ascii_lowercase(),
            port,
            user,
            password,
        })
    }

    /// The URL as a log may show it: the user information, if any, as `…`.
    pub fn shown(&self) -> String {
        let credentials = if self.user.is_some() { "…@" } else { "" };
        format!("http://{credentials}{}", authority(&self.host, self.port))
    }

    /// The `Proxy-Authorization` value (Basic), if the URL names a user.
    fn authorization(&self) -> Option<String> {
        let user = self.user.as_ref()?;
        let pair = format!("{user}:{}", self.password.as_deref().unwrap_or(""));
        Some(format!(
            "Basic {}",
            data_encoding::BASE64.encode(pair.as_bytes())
        ))
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({})", self.shown())
    }
}

/// `text` with everything between its scheme and its last `@` replaced by `…`: the user
/// information, even where a password holds an unencoded `/`, `?` or `#`.
fn without_credentials(text: &str) -> String {
    let (scheme, rest) = match text.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), text),
    };
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}…@{host}"),
        None => text.to_string(),
    }
}

/// `%XX` decoded; `None` on a `%` without two hex digits or a result that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `host:port` as a request target or a URL writes it: an IPv6 address in brackets.
pub fn authority(host: &str, port: u16) -> String {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Where a connection to a host goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Direct,
    /// Direct, because this variable (`NO_PROXY` or `no_proxy`) lists the host.
    Excepted {
        var: &'static str,
    },
    /// Through this proxy; `from` says who chose it (`upstream_proxy`, `HTTPS_PROXY`,
    /// `--proxy`...).
    Via {
        proxy: ProxyUrl,
        from: &'static str,
    },
}

impl Route {
    pub fn proxy(&self) -> Option<&ProxyUrl> {
        match self {
            Route::Via { proxy, .. } => Some(proxy),
            _ => None,
        }
    }
}

/// The route the environment gives a connection to `host` (a `wss://`/`https://` one when
/// `tls`), as curl reads it: `https_proxy` or `HTTPS_PROXY` for TLS, `http_proxy` or
/// `HTTP_PROXY` otherwise, each lower-case name first and an empty value as unset; then
/// `no_proxy` or `NO_PROXY` may except the host (see [`no_proxy_lists`]). An error names the
/// variable whose value is not a usable proxy URL.
pub fn from_environment(
    tls: bool,
    host: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Route, String> {
    let names = if tls {
        ["https_proxy", "HTTPS_PROXY"]
    } else {
        ["http_proxy", "HTTP_PROXY"]
    };
    let Some((var, value)) = first_set(&names, env) else {
        return Ok(Route::Direct);
    };
    if let Some((no_var, list)) = first_set(&["no_proxy", "NO_PROXY"], env) {
        if no_proxy_lists(&list, host) {
            return Ok(Route::Excepted { var: no_var });
        }
    }
    let proxy = ProxyUrl::parse(&value).map_err(|e| format!("{var}: {e}"))?;
    Ok(Route::Via { proxy, from: var })
}

/// The first of `names` set to something other than blanks, with its value.
fn first_set(
    names: &[&'static str],
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<(&'static str, String)> {
    names.iter().find_map(|&name| {
        env(name)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (name, v.trim().to_string()))
    })
}

/// Whether a `NO_PROXY` list names `host`, as curl reads one: entries separated by commas or
/// blanks; `*` is every host; a name matches itself and every name under it (`example.com`
/// and `.example.com` both match `example.com` and `feed.example.com`); an IP address matches
/// itself and a CIDR range (`10.0.0.0/8`, `fd00::/8`) the addresses in it. A port on an entry
/// is ignored, as are case and a trailing dot. Names are not resolved: a host given as a
/// name is not matched by an address, nor the reverse.
pub fn no_proxy_lists(list: &str, host: &str) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let host_ip = host.parse::<IpAddr>().ok();
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let entry = entry.to_ascii_lowercase();
            match host_ip {
                Some(ip) => ip_entry_matches(&entry, ip),
                None => {
                    let name = strip_port(&entry)
                        .trim_start_matches('.')
                        .trim_end_matches('.');
                    !name.is_empty()
                        && (host == name
                            || host
                                .strip_suffix(name)
                                .is_some_and(|above| above.ends_with('.')))
                }
            }
        })
}

/// An entry naming an address or a range, against an address.
fn ip_entry_matches(entry: &str, ip: IpAddr) -> bool {
    if let Some((net, bits)) = entry.split_once('/') {
        let net = net.trim_start_matches('[').trim_end_matches(']');
        return match (net.parse::<IpAddr>(), bits.parse::<u32>()) {
            (Ok(net), Ok(bits)) => in_range(ip, net, bits),
            _ => false,
        };
    }
    let address = if entry.parse::<IpAddr>().is_ok() {
        entry
    } else {
        strip_port(entry)
    };
    address
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok_and(|a| a == ip)
}

/// `host:port` → `host`, `[v6]:port` → `[v6]`; anything else as it is.
fn strip_port(entry: &str) -> &str {
    if entry.starts_with('[') {
        return entry.find(']').map_or(entry, |end| &entry[..=end]);
    }
    match entry.split_once(':') {
        Some((host, port)) if !port.contains(':') => host,
        _ => entry,
    }
}

/// Whether `ip` is in `net/bits`; addresses of the other family never are.
fn in_range(ip: IpAddr, net: IpAddr, bits: u32) -> bool {
    let (ip, net, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (u128::from(u32::from(a)), u128::from(u32::from(n)), 32),
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n), 128),
        _ => return false,
    };
    if bits > width {
        return false;
    }
    let shift = width - bits;
    // A shift by the whole width (bits = 0) would overflow: every address is in /0.
    shift >= width || (ip >> shift) == (net >> shift)
}

/// The `CONNECT` request for a tunnel to `host:port`.
pub fn connect_request(proxy: &ProxyUrl, host: &str, port: u16) -> String {
    let target = authority(host, port);
    let mut request = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: fxproxy/{}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(auth) = proxy.authorization() {
        request.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    request.push_str("\r\n");
    request
}

/// Why a tunnel was not opened.
#[derive(Debug)]
pub enum TunnelError {
    /// Writing the request or reading the answer failed (a timeout included).
    Io { proxy: String, error: io::Error },
    /// The proxy closed the connection before its answer was complete.
    Closed { proxy: String },
    /// What came back is not an HTTP answer, or is too long to be one.
    NotHttp { proxy: String, why: String },
    /// 407 (or 401): the proxy wants credentials, or other ones; `sent` says whether any were
    /// sent.
    Credentials {
        proxy: String,
        status_line: String,
        sent: bool,
    },
    /// Any other answer but 2xx: the proxy will not open this tunnel.
    Refused {
        proxy: String,
        target: String,
        status_line: String,
    },
}

impl fmt::Display for TunnelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TunnelError::Io { proxy, error } => write!(f, "the proxy {proxy}: {error}"),
            TunnelError::Closed { proxy } => write!(
                f,
                "the proxy {proxy} closed the connection without answering CONNECT"
            ),
            TunnelError::NotHttp { proxy, why } => {
                write!(f, "the proxy {proxy} did not answer CONNECT in HTTP: {why}")
            }
            TunnelError::Credentials {
                proxy,
                status_line,
                sent: true,
            } => write!(
                f,
                "the proxy {proxy} refused the credentials ({}): check the user and password",
                logsafe::quoted(status_line)
            ),
            TunnelError::Credentials {
                proxy,
                status_line,
                sent: false,
            } => write!(
                f,
                "the proxy {proxy} asks for credentials ({}): give them in its URL, {EXPECTED}",
                logsafe::quoted(status_line)
            ),
            TunnelError::Refused {
                proxy,
                target,
                status_line,
            } => write!(
                f,
                "the proxy {proxy} refused the tunnel to {target} ({})",
                logsafe::quoted(status_line)
            ),
        }
    }
}

impl std::error::Error for TunnelError {}

/// Opens a tunnel to `host:port` on `stream`, a connection to `proxy`: sends `CONNECT` and
/// reads the answer. On success the stream carries the host's bytes from then on; nothing past
/// the answer has been read (it is read a byte at a time: a few hundred bytes, once per
/// connection). The stream's own timeouts bound the wait.
pub fn establish(
    stream: &mut (impl Read + Write),
    proxy: &ProxyUrl,
    host: &str,
    port: u16,
) -> Result<(), TunnelError> {
    let shown = proxy.shown();
    let io_error = |error| TunnelError::Io {
        proxy: shown.clone(),
        error,
    };
    stream
        .write_all(connect_request(proxy, host, port).as_bytes())
        .and_then(|()| stream.flush())
        .map_err(io_error)?;
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_ANSWER {
            return Err(TunnelError::NotHttp {
                proxy: shown,
                why: format!("no end to its answer's head within {MAX_ANSWER} bytes"),
            });
        }
        match stream.read(&mut byte) {
            Ok(0) => return Err(TunnelError::Closed { proxy: shown }),
            Ok(_) => head.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(e)),
        }
    }
    let answer = parse_answer(&head).map_err(|why| TunnelError::NotHttp {
        proxy: shown.clone(),
        why,
    })?;
    match answer.status {
        200..=299 => Ok(()),
        // 407 is the standard answer; some proxies (tinyproxy among them) answer wrong
        // credentials with 401.
        401 | 407 => Err(TunnelError::Credentials {
            proxy: shown,
            status_line: answer.status_line,
            sent: proxy.user.is_some(),
        }),
        _ => Err(TunnelError::Refused {
            proxy: shown,
            target: authority(host, port),
            status_line: answer.status_line,
        }),
    }
}

/// A proxy's answer to `CONNECT`.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// `HTTP/1.1 407 Proxy Authentication Required`, as the proxy wrote it (peer text: show
    /// it with `logsafe`).
    pub status_line: String,
}

/// Reads a complete answer head (status line, headers, blank line) with httparse.
pub fn parse_answer(head: &[u8]) -> Result<Answer, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_ANSWER_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("its answer ended early".to_string()),
        Err(e) => {
            return Err(format!(
                "{e} in {}",
                logsafe::quoted_bytes(
                    head.split(|&b| b == b'\r' || b == b'\n')
                        .next()
                        .unwrap_or(head)
                )
            ))
        }
    }
    let status = response.code.ok_or("no status code")?;
    let line_end = head.iter().position(|&b| b == b'\r').unwrap_or(head.len());
    Ok(Answer {
        status,
        status_line: String::from_utf8_lossy(&head[..line_end]).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn url(text: &str) -> ProxyUrl {
        ProxyUrl::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn proxy_urls_parse_as_curl_reads_them() {
        let p = url("http://proxy.corp:3128");
        assert_eq!(
            (p.host.as_str(), p.port, p.user.clone()),
            ("proxy.corp", 3128, None)
        );
        assert_eq!(p.shown(), "http://proxy.corp:3128");
        let p = url("HTTP://alice:s%40cr%3At@Proxy.Corp:8080/");
        assert_eq!(p.host, "proxy.corp");
        assert_eq!(p.user.as_deref(), Some("alice"));
        assert_eq!(p.password.as_deref(), Some("s@cr:t"));
        assert_eq!(p.shown(), "http://…@proxy.corp:8080");
        // No scheme: http; no port: curl's 1080.
        assert_eq!(url("10.0.0.1").port, DEFAULT_PORT);
        assert_eq!(url("10.0.0.1:3128").host, "10.0.0.1");
        let p = url("http://[fd00::1]:3128");
        assert_eq!((p.host.as_str(), p.port), ("fd00::1", 3128));
        assert_eq!(p.shown(), "http://[fd00::1]:3128");
        // A user without a password: an empty one is sent.
        let p = url("http://bob@proxy:1");
        assert_eq!(
            (p.user.as_deref(), p.password.as_deref()),
            (Some("bob"), None)
        );
        // The password's `@` may be left unencoded: the last `@` ends the user information.
        assert_eq!(url("http://u:p@ss@h:2").password.as_deref(), Some("p@ss"));
    }

    #[test]
    fn bad_proxy_urls_are_explained_without_their_credentials() {
        for (text, why) in [
            ("https://u:secret@proxy:443", "not supported: use http://"),
            (
                "socks5://u:secret@proxy:1080",
                "SOCKS proxies are not supported",
            ),
            ("ftp://proxy:21", ""),
            ("http://u:secret@proxy:0", "from 1 to 65535"),
            ("http://u:secret@proxy:99999", "from 1 to 65535"),
            ("http://u:secret@proxy:+80", "from 1 to 65535"),
            ("http://u:secret@proxy:80/path", ""),
            ("http://u:sec/ret@proxy:80", ""),
            ("u:sec?ret@proxy:80", ""),
            ("http://u:se%zzcret@proxy:80", "two hex digits"),
            ("http://:secret@proxy:80", "user before `@` is empty"),
            ("http://u:secret@pro xy:80", ""),
            ("http://u:secret@[nonsense]:80", ""),
            ("http://u:secret@", ""),
        ] {
            let e = ProxyUrl::parse(text).unwrap_err();
            assert!(
                e.starts_with("expected http://[USER:PASSWORD@]HOST:PORT, got "),
                "{e}"
            );
            assert!(e.contains(why), "{text}: {e}");
            assert!(
                !e.contains("secret") && !e.contains("se%zz") && !e.contains("ret@"),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn the_password_is_kept_out_of_debug_output() {
        let p = url("http://alice:hunter2@proxy:3128");
        let debug = format!(
            "{p:?} {:?}",
            Route::Via {
                proxy: p.clone(),
                from: "x"
            }
        );
        assert!(
            !debug.contains("hunter2") && !debug.contains("alice"),
            "{debug}"
        );
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name: &str| vars.get(name).cloned()
    }

    fn via(route: Result<Route, String>) -> (String, &'static str) {
        match route {
            Ok(Route::Via { proxy, from }) => (proxy.shown(), from),
            other => panic!("expected a proxy, got {other:?}"),
        }
    }

    #[test]
    fn the_environment_names_the_proxy_per_scheme_lower_case_first() {
        let e = env(&[
            ("HTTPS_PROXY", "http://upper:3128"),
            ("https_proxy", "http://lower:3128"),
            ("HTTP_PROXY", "http://plain:3128"),
        ]);
        assert_eq!(
            via(from_environment(true, "feed.example", &e)),
            ("http://lower:3128".into(), "https_proxy")
        );
        assert_eq!(
            via(from_environment(false, "feed.example", &e)),
            ("http://plain:3128".into(), "HTTP_PROXY")
        );
        // An empty lower-case variable is unset; the upper-case one is read.
        let e = env(&[("https_proxy", " "), ("HTTPS_PROXY", "upper:8080")]);
        assert_eq!(
            via(from_environment(true, "feed.example", &e)),
            ("http://upper:8080".into(), "HTTPS_PROXY")
        );
        assert_eq!(
            from_environment(true, "feed.example", &env(&[("HTTP_PROXY", "p:1")])),
            Ok(Route::Direct),
            "HTTP_PROXY is for ws://, not wss://"
        );
        let e = from_environment(true, "h", &env(&[("HTTPS_PROXY", "socks5://p:1")]));
        assert!(e.unwrap_err().starts_with("HTTPS_PROXY: expected "));
    }

    #[test]
    fn no_proxy_excepts_hosts_as_curl_does() {
        let e = env(&[
            ("HTTPS_PROXY", "http://p:3128"),
            ("NO_PROXY", "internal.example, 10.0.0.0/8"),
            ("no_proxy", ".corp.example,192.168.1.7:443 [::1]"),
        ]);
        // Lower case wins: only its list counts.
        assert_eq!(
            from_environment(true, "feed.corp.example", &e),
            Ok(Route::Excepted { var: "no_proxy" })
        );
        assert_eq!(
            via(from_environment(true, "internal.example", &e)).1,
            "HTTPS_PROXY"
        );
        // A bad proxy URL does not matter to a host it is not used for.
        let e = env(&[("HTTPS_PROXY", "socks5://p"), ("NO_PROXY", "*")]);
        assert_eq!(
            from_environment(true, "anything", &e),
            Ok(Route::Excepted { var: "NO_PROXY" })
        );

        let cases = [
            ("*", "feed.example", true),
            ("example.com", "example.com", true),
            ("example.com", "feed.example.com", true),
            (".example.com", "example.com", true),
            (".example.com", "a.b.example.com", true),
            ("example.com", "badexample.com", false),
            ("example.com", "example.com.evil", false),
            ("EXAMPLE.com.", "Feed.Example.COM.", true),
            ("example.com:8443", "example.com", true),
            ("a.example, b.example", "b.example", true),
            ("a.example b.example", "b.example", true),
            ("", "example.com", false),
            (",,", "example.com", false),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1:9", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("10.0.0.0/8", "10.200.3.4", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("0.0.0.0/0", "8.8.8.8", true),
            ("192.168.1.7/32", "192.168.1.7", true),
            ("192.168.1.0/33", "192.168.1.7", false),
            ("::1", "[::1]", true),
            ("[::1]:443", "::1", true),
            ("fd00::/8", "fd12:3456::1", true),
            ("fd00::/8", "10.0.0.1", false),
            ("10.0.0.0/8", "fd00::1", false),
            // Names are not resolved.
            ("localhost", "127.0.0.1", false),
            ("127.0.0.1", "localhost", false),
        ];
        for (list, host, expected) in cases {
            assert_eq!(
                no_proxy_lists(list, host),
                expected,
                "NO_PROXY={list:?} host {host}"
            );
        }
    }

    #[test]
    fn the_connect_request_names_the_target_and_the_credentials() {
        let plain = connect_request(&url("http://p:3128"), "feed.example", 443);
        assert!(plain.starts_with(
            "CONNECT feed.example:443 HTTP/1.1\r\nHost: feed.example:443\r\nUser-Agent: fxproxy/"
        ));
        assert!(!plain.contains("Proxy-Authorization") && plain.ends_with("\r\n\r\n"));
        let auth = connect_request(&url("http://user:pass@p:3128"), "::1", 8443);
        assert!(
            auth.starts_with("CONNECT [::1]:8443 HTTP/1.1\r\n"),
            "{auth}"
        );
        // RFC 7617's example pair is `Aladdin:open sesame`; this is `user:pass`.
        assert!(auth.contains("\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\n"));
    }

    #[test]
    fn answers_are_read_with_their_status_line() {
        let ok = parse_answer(b"HTTP/1.0 200 Connection established\r\nProxy-agent: x\r\n\r\n");
        assert_eq!(
            ok,
            Ok(Answer {
                status: 200,
                status_line: "HTTP/1.0 200 Connection established".into()
            })
        );
        assert!(parse_answer(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    /// A stream that answers with `answer` and records what was written.
    struct Scripted {
        answer: io::Cursor<Vec<u8>>,
        written: Vec<u8>,
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.answer.read(buf)
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn exchange(proxy: &str, answer: &[u8]) -> (Result<(), TunnelError>, Scripted) {
        let mut s = Scripted {
            answer: io::Cursor::new(answer.to_vec()),
            written: Vec::new(),
        };
        let result = establish(&mut s, &url(proxy), "feed.example", 443);
        (result, s)
    }

    #[test]
    fn a_tunnel_opens_on_2xx_and_reads_nothing_past_the_answer() {
        let (result, s) = exchange(
            "http://p:3128",
            b"HTTP/1.1 200 OK\r\n\r\n\x16\x03\x01 the host's bytes",
        );
        assert!(result.is_ok());
        assert_eq!(
            &s.answer.get_ref()[s.answer.position() as usize..],
            b"\x16\x03\x01 the host's bytes"
        );
        assert!(s.written.starts_with(b"CONNECT feed.example:443 "));
    }

    #[test]
    fn refusals_are_said_in_words_with_the_proxy_s_status_line() {
        let (r, _) = exchange(
            "http://u:wrong@p:3128",
            b"HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n",
        );
        let e = r.unwrap_err();
        assert!(matches!(e, TunnelError::Credentials { sent: true, .. }));
        assert_eq!(
            e.to_string(),
            "the proxy http://…@p:3128 refused the credentials \
             (\"HTTP/1.0 407 Proxy Authentication Required\"): check the user and password"
        );
        let (r, _) = exchange("http://p:3128", b"HTTP/1.1 407 Auth\r\n\r\n");
        assert!(r.unwrap_err().to_string().contains("asks for credentials"));
        let (r, _) = exchange(
            "http://u:wrong@p:3128",
            b"HTTP/1.0 401 Unauthorized\r\n\r\n",
        );
        assert!(r
            .unwrap_err()
            .to_string()
            .contains("refused the credentials (\"HTTP/1.0 401 Unauthorized\")"));
        let (r, _) = exchange("http://p:3128", b"HTTP/1.1 403 Forbidden\r\n\r\n");
        let e = r.unwrap_err();
        assert!(matches!(e, TunnelError::Refused { .. }));
        assert_eq!(
            e.to_string(),
            "the proxy http://p:3128 refused the tunnel to feed.example:443 (\"HTTP/1.1 403 Forbidden\")"
        );
        // Peer text cannot write log lines of its own, nor turn the terminal's text around.
        let (r, _) = exchange(
            "http://p:3128",
            "HTTP/1.1 502 Bad\u{202e} Gateway\r\n\r\n".as_bytes(),
        );
        let e = r.unwrap_err().to_string();
        assert!(e.contains(r#"("HTTP/1.1 502 Bad\u{202e} Gateway")"#), "{e}");
        let (r, _) = exchange("http://p:3128", b"HTTP/1.1 502 Bad\x1b[2J\r\n\r\n");
        let e = r.unwrap_err().to_string();
        assert!(e.contains(r#"in "HTTP/1.1 502 Bad\u{1b}[2J""#), "{e}");
        let (r, _) = exchange("http://p:3128", b"HTTP/1.1 200 OK\r\n");
        assert!(matches!(r, Err(TunnelError::Closed { .. })));
        let (r, _) = exchange("http://p:3128", &[b'x'; MAX_ANSWER + 10]);
        assert!(matches!(r, Err(TunnelError::NotHttp { .. })));
    }
}
