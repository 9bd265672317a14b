//! Who a client really is behind a load balancer: `X-Forwarded-For`, believed only from the
//! addresses in `trusted_proxies`, so the log names the client and not the balancer. Anyone
//! else could write any address in that header, so from anyone else it is ignored.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// An address or a network (`10.0.0.0/8`, `::1`) in `trusted_proxies`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parses `ADDR` or `ADDR/BITS`; the message says what was expected.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let bad =
            || format!("expected an IP address or a network such as 10.0.0.0/8, got {text:?}");
        let (addr, bits) = match text.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (text, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) if !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()) => {
                b.parse::<u8>().ok().filter(|n| *n <= max).ok_or_else(bad)?
            }
            Some(_) => return Err(bad()),
        };
        Ok(Cidr { net, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client seen on an IPv6 socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.bits),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.bits),
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.bits)
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let whole = usize::from(bits / 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[whole] & mask == b[whole] & mask
    }
}

/// Parses `trusted_proxies`: comma-separated addresses and networks; empty is none.
pub fn parse_list(v: &str) -> Result<Vec<Cidr>, String> {
    if v.trim().is_empty() {
        return Ok(Vec::new());
    }
    v.split(',').map(|part| Cidr::parse(part.trim())).collect()
}

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
        let trusted = parse_list(trusted).unwrap();
        Peer::forwarded(socket.parse().unwrap(), xff.iter().copied(), &trusted).to_string()
    }

    #[test]
    fn networks_parse_and_match() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let odd = Cidr::parse("192.168.4.0/22").unwrap();
        assert!(odd.contains("192.168.7.255".parse().unwrap()));
        assert!(!odd.contains("192.168.8.0".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "host",
            "10.0.0.0/",
            "::/129",
            "1.2.3.4/-1",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_list(" ").unwrap(), vec![]);
        assert_eq!(parse_list("127.0.0.1, 10.0.0.0/8").unwrap().len(), 2);
        assert!(parse_list("127.0.0.1,").is_err());
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
