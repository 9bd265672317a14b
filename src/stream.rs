//! A client's socket as its WebSocket sees it. It counts the bytes the kernel has taken, so
//! the writer can tell a peer that reads slowly (bytes still move) from one that has stopped
//! reading (none do): the first is judged by its queue, the second is closed once it has
//! taken nothing for a while.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::ops::{Deref, DerefMut};

pub struct ClientStream {
    tcp: TcpStream,
    written: u64,
}

impl ClientStream {
    pub fn new(tcp: TcpStream) -> ClientStream {
        ClientStream { tcp, written: 0 }
    }

    /// Bytes written to the socket so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

/// The socket's own settings (timeouts, blocking mode, options, shutdown) stay at hand.
impl Deref for ClientStream {
    type Target = TcpStream;

    fn deref(&self) -> &TcpStream {
        &self.tcp
    }
}

impl DerefMut for ClientStream {
    fn deref_mut(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.tcp.write(buf)?;
        self.written += n as u64;
        Ok(n)
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
    fn counts_what_the_kernel_took() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut stream =
            ClientStream::new(TcpStream::connect(listener.local_addr().unwrap()).unwrap());
        let (mut peer, _) = listener.accept().unwrap();
        stream.write_all(b"hello").unwrap();
        assert_eq!(stream.written(), 5);
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
    }
}
