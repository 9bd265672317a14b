//! The client port's listening socket: a listen queue sized for reconnect storms, and how
//! full it is (for `/metrics`).

use std::io;
use std::net::{SocketAddr, TcpListener};

/// The listen queue asked of the kernel, which caps it at `net.core.somaxconn` (4096 on
/// current kernels): a storm of clients waits there while the pending set is full.
pub const BACKLOG: i32 = 65_535;

/// Asks for a listen queue of [`BACKLOG`] on a bound listener (std's default is 128).
pub fn size_for_storms(listener: &TcpListener) -> io::Result<()> {
    socket2::SockRef::from(listener).listen(BACKLOG)
}

/// The kernel's listen queue for `addr`: connections waiting for `accept`, and the queue's
/// length (what fxproxy asks for, capped by `net.core.somaxconn`).
pub fn queue(addr: SocketAddr) -> Option<(u64, u64)> {
    let file = if addr.is_ipv4() {
        "/proc/self/net/tcp"
    } else {
        "/proc/self/net/tcp6"
    };
    let used = queue_in(&std::fs::read_to_string(file).ok()?, addr.port())?;
    let somaxconn: u64 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some((used, somaxconn.min(BACKLOG as u64)))
}

/// Connections waiting for `accept` on `port`, from the text of `/proc/net/tcp`: for the
/// first socket in state LISTEN (`0A`) there, `rx_queue` is that count.
pub fn queue_in(table: &str, port: u16) -> Option<u64> {
    let port = format!(":{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1)?;
        let state = fields.nth(1)?;
        if state != "0A" || !local.ends_with(&port) {
            return None;
        }
        let (_, rx) = fields.next()?.split_once(':')?;
        u64::from_str_radix(rx, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_listen_queue_of_a_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:223D 00000000:0000 0A 00001000:00000003 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   \
            1: 0100007F:223D 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0\n";
        assert_eq!(queue_in(table, 8765), Some(3));
        assert_eq!(queue_in(table, 8766), None);
    }

    #[test]
    fn a_real_listener_shows_its_queue() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _waiting = std::net::TcpStream::connect(addr).unwrap();
        let (used, max) = queue(addr).expect("the listener is in /proc/net/tcp");
        assert_eq!(used, 1);
        assert!(max >= 128, "somaxconn is {max}");
    }
}
