//! The client port's listening socket: a listen queue sized for reconnect storms, how full it
//! is (for `/metrics`), and the socket systemd may pass instead (socket activation).

use crate::config::Config;
use mio::unix::SourceFd;
use mio::{Interest, Poll, Token, Waker};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

/// The listen queue asked of the kernel, which caps it at `net.core.somaxconn` (4096 on
/// current kernels): a storm of clients waits there while the pending set is full.
pub const BACKLOG: i32 = 65_535;

/// Asks for a listen queue of [`BACKLOG`] on a bound listener (std's default is 128).
pub fn size_for_storms(listener: &TcpListener) -> io::Result<()> {
    socket2::SockRef::from(listener).listen(BACKLOG)
}

/// The token of the listener in a poll made by [`watched`].
pub const LISTENER: Token = Token(0);
/// The token of the waker in a poll made by [`watched`].
pub const WAKER: Token = Token(1);

/// A poll for a loop that accepts on its own thread (the admission loop, the admin port):
/// `listener`, made non-blocking, under [`LISTENER`], and a waker under [`WAKER`] that ends
/// the loop's wait when it must stop.
pub fn watched(listener: &TcpListener) -> io::Result<(Poll, Arc<Waker>)> {
    listener.set_nonblocking(true)?;
    let poll = Poll::new()?;
    poll.registry().register(
        &mut SourceFd(&listener.as_raw_fd()),
        LISTENER,
        Interest::READABLE,
    )?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    Ok((poll, waker))
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

/// The client port: the socket systemd passed (socket activation), or `listen` bound now.
pub struct Port {
    pub listener: TcpListener,
    pub addr: SocketAddr,
    /// Systemd holds the socket, which outlives this process: a stop is a restart.
    pub held_by_systemd: bool,
}

impl Port {
    /// Takes `passed` or binds `listen`; the error says which address failed.
    pub fn open(
        config: &Config,
        passed: Option<TcpListener>,
    ) -> Result<Port, (SocketAddr, io::Error)> {
        let held_by_systemd = passed.is_some();
        let listener = match passed {
            Some(l) => l,
            None => TcpListener::bind(config.listen).map_err(|e| (config.listen, e))?,
        };
        let addr = listener.local_addr().map_err(|e| (config.listen, e))?;
        if held_by_systemd && config.line_of("listen").is_some() && config.listen != addr {
            log::warn!(
                "listen = {} in {} is not used: systemd passed the listening socket ({addr}), whose address ListenStream= in fxproxy.socket sets",
                config.listen,
                config.file.display()
            );
        }
        Ok(Port {
            listener,
            addr,
            held_by_systemd,
        })
    }
}

/// The listening socket systemd passed (socket activation, `fxproxy.socket`): with
/// `LISTEN_FDS=1` and `LISTEN_PID` this process's id, descriptor 3. `Ok(None)` when none was
/// passed to this process. The socket stays systemd's too: new connections wait in its queue
/// while this process stops and the next one starts, so a restart refuses nobody.
///
/// Call it in `main` before any other thread starts: as `sd_listen_fds` does, it removes the
/// variables from the environment, so that nothing started later takes the socket.
pub fn from_service_manager() -> Result<Option<TcpListener>, String> {
    let fds = std::env::var("LISTEN_FDS").ok();
    let pid = std::env::var("LISTEN_PID").ok();
    let count = passed(fds.as_deref(), pid.as_deref(), std::process::id())?;
    if count == 0 {
        for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
            std::env::remove_var(var);
        }
        return Ok(None);
    }
    // Checks that descriptor 3 is a TCP socket, marks it close-on-exec, wraps it; and removes
    // LISTEN_FDS and LISTEN_PID.
    let listener = listenfd::ListenFd::from_env()
        .take_tcp_listener(0)
        .map_err(|e| format!("the socket systemd passed (descriptor 3) cannot be used: {e}"))?
        .ok_or("systemd passed no socket at descriptor 3")?;
    std::env::remove_var("LISTEN_FDNAMES");
    match socket2::SockRef::from(&listener).is_listener() {
        Ok(true) => Ok(Some(listener)),
        Ok(false) => Err(
            "the socket systemd passed is not listening (fxproxy.socket needs ListenStream=, and Accept=no)"
                .to_string(),
        ),
        Err(e) => Err(format!("the socket systemd passed: {e}")),
    }
}

/// How many sockets were passed to process `own_pid`, from `LISTEN_FDS` and `LISTEN_PID`: 0 or
/// 1, or why the proxy cannot use them. Variables meant for another process (a `LISTEN_PID`
/// that is not ours, or none: systemd always sets it) are not ours to use.
pub fn passed(fds: Option<&str>, pid: Option<&str>, own_pid: u32) -> Result<usize, String> {
    let Some(fds) = fds else { return Ok(0) };
    if pid.and_then(|p| p.trim().parse::<u32>().ok()) != Some(own_pid) {
        return Ok(0);
    }
    match fds.trim().parse::<usize>() {
        Ok(n @ (0 | 1)) => Ok(n),
        Ok(n) => Err(format!(
            "systemd passed {n} sockets (LISTEN_FDS={n}); fxproxy serves one: give fxproxy.socket a single ListenStream="
        )),
        Err(_) => Err(format!("LISTEN_FDS={fds:?} is not a number of sockets")),
    }
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
    fn sockets_passed_to_this_process_are_counted_and_others_ignored() {
        assert_eq!(passed(None, None, 42), Ok(0));
        assert_eq!(passed(Some("1"), Some("42"), 42), Ok(1));
        assert_eq!(passed(Some("0"), Some("42"), 42), Ok(0));
        // For another process, or with no LISTEN_PID: not ours.
        assert_eq!(passed(Some("1"), Some("41"), 42), Ok(0));
        assert_eq!(passed(Some("1"), None, 42), Ok(0));
        let two = passed(Some("2"), Some("42"), 42).unwrap_err();
        assert!(two.contains("single ListenStream="), "{two}");
        assert!(passed(Some("x"), Some("42"), 42).is_err());
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
