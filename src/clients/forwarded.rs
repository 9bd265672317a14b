//! Who a client really is behind a load balancer: `X-Forwarded-For`, believed only from the
//! addresses in `trusted_proxies`, so the log names the client and not the balancer. Anyone
//! else could write any address in that header, so from anyone else it is ignored.

use crate::config::address::Cidr;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The far end of a connection as the log names it: the socket's address, and the client's
/// own address when a trusted proxy said who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub socket: SocketAddr,
    pub client: Option<IpAddr>,
}

impl Peer {
    pub fn direct(socket: SocketAddr) -> Peer {
        Peer {
            socket,
            client: None,
        }
    }

    /// The client behind `socket`, from the `X-Forwarded-For` values (`headers`, in the order
    /// they came) when `socket` is a trusted proxy. The list is read from the right: each
    /// proxy appends the address it saw, so the rightmost address that is not itself a trusted
    /// proxy is the client; what lies left of it was written by the client and proves nothing.
    pub fn forwarded<'a>(
        socket: SocketAddr,
        headers: impl Iterator<Item = &'a str>,
        trusted: &[Cidr],
    ) -> Peer {
        let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
        if !is_trusted(socket.ip()) {
            return Peer::direct(socket);
        }
        let hops: Vec<&str> = headers.flat_map(|h| h.split(',')).map(str::trim).collect();
        let mut client = None;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                // Garbage in the chain: nothing left of it can be trusted either.
                break;
            };
            client = Some(ip);
            if !is_trusted(ip) {
                break;
            }
        }
        Peer { socket, client }
    }
}

/// One `X-Forwarded-For` entry: an address, perhaps with a port, IPv6 perhaps in brackets.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.client {
            Some(client) => write!(f, "{client} (via {})", self.socket),
            None => write!(f, "{}", self.socket),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(socket: &str, xff: &[&str], trusted: &str) -> String {
        let trusted = crate::config::address::parse_list(trusted).unwrap();
        Peer::forwarded(socket.parse().unwrap(), xff.iter().copied(), &trusted).to_string()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        // A trusted balancer: the client is the address it appended.
        assert_eq!(
            peer("127.0.0.1:5000", &["203.0.113.7"], "127.0.0.1"),
            "203.0.113.7 (via 127.0.0.1:5000)"
        );
        // The client wrote its own header first; the balancer appended the truth.
        assert_eq!(
            peer("127.0.0.1:5000", &["1.1.1.1, 203.0.113.7"], "127.0.0.1"),
            "203.0.113.7 (via 127.0.0.1:5000)"
        );
        // Two trusted hops (CDN then balancer), in two header lines.
        assert_eq!(
            peer("10.0.0.2:5000", &["198.51.100.4", "10.0.0.9"], "10.0.0.0/8"),
            "198.51.100.4 (via 10.0.0.2:5000)"
        );
        // Not from a trusted proxy: the header is ignored.
        assert_eq!(
            peer("192.0.2.1:5000", &["203.0.113.7"], "127.0.0.1"),
            "192.0.2.1:5000"
        );
        assert_eq!(
            peer("127.0.0.1:5000", &["203.0.113.7"], ""),
            "127.0.0.1:5000"
        );
        // Trusted, but no header.
        assert_eq!(peer("127.0.0.1:5000", &[], "127.0.0.1"), "127.0.0.1:5000");
        // Ports and brackets are allowed; garbage stops the walk.
        assert_eq!(
            peer("127.0.0.1:5000", &["[2001:db8::1]:443"], "127.0.0.1"),
            "2001:db8::1 (via 127.0.0.1:5000)"
        );
        assert_eq!(
            peer("127.0.0.1:5000", &["203.0.113.7, nonsense"], "127.0.0.1"),
            "127.0.0.1:5000"
        );
    }
}
