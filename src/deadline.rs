//! A client's TCP stream with a deadline for each batch of writes.
//!
//! The socket's own write timeout bounds one `write()` call, and a peer that reads a few
//! bytes now and then lets every call make a little progress: a batch of quotes could then
//! take hours to flush while the thread that owns the client can do nothing else, not even
//! notice it was dropped as a slow consumer. So a writer arms a deadline before each batch,
//! and once it has passed every further write fails with `TimedOut`. A batch that finishes
//! in time costs one clock read per `write()` call.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

pub struct DeadlineStream {
    tcp: TcpStream,
    deadline: Option<Instant>,
}

impl DeadlineStream {
    pub fn new(tcp: TcpStream) -> DeadlineStream {
        DeadlineStream {
            tcp,
            deadline: None,
        }
    }

    /// Writes from now on must be done within `budget`.
    pub fn arm(&mut self, budget: Duration) {
        self.deadline = Some(Instant::now() + budget);
    }
}

/// The socket's own settings (timeouts, blocking mode, shutdown) stay at hand.
impl Deref for DeadlineStream {
    type Target = TcpStream;

    fn deref(&self) -> &TcpStream {
        &self.tcp
    }
}

impl DerefMut for DeadlineStream {
    fn deref_mut(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer took in too little for too long",
            ));
        }
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn writes_fail_once_the_deadline_has_passed() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (tcp, _) = listener.accept().unwrap();
        let mut s = DeadlineStream::new(tcp);
        assert_eq!(s.write(b"before any deadline").unwrap(), 19);
        s.arm(Duration::from_secs(60));
        assert_eq!(s.write(b"in time").unwrap(), 7);
        s.arm(Duration::ZERO);
        let err = s.write(b"too late").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // The socket's settings are still reachable.
        s.set_nodelay(true).unwrap();
        assert!(s.nodelay().unwrap());
    }
}
