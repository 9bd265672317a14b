//! `admin_listen`: a second address for operators, serving `/metrics`, `/livez`, `/readyz`
//! (and `/healthz`) and the state dump (`/debug/state`) in plain HTTP, so that the client port
//! can face the internet while the admin one stays on loopback or a management network.
//!
//! One thread, `admin`, serves it: it waits for connections in a poll (with a waker, so
//! shutdown ends it at once) and answers them one at a time, each with a deadline for reading
//! its request and one for writing the answer. Whoever reaches this address is trusted not to
//! hold it up on purpose; a slow scraper delays the next by [`READ_DEADLINE`] at most. Nothing
//! here touches the client port's threads.

use crate::clients::admission::Asker;
use crate::clients::context::Context;
use crate::clients::http::{self, HeadError};
use crate::clients::listener;
use crate::ops::endpoints;
use log::debug;
use mio::{Events, Poll, Waker};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a connection has to send its request head.
pub const READ_DEADLINE: Duration = Duration::from_secs(2);
/// How long the answer may take to write (a state dump of thousands of clients is hundreds of
/// kilobytes).
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// How long what the peer still sends after our answer is read and dropped, so the answer is
/// not lost to a reset.
const LINGER: Duration = Duration::from_millis(500);

/// The admin address, bound and not yet served.
pub struct Admin {
    poll: Poll,
    listener: TcpListener,
    waker: Arc<Waker>,
}

impl Admin {
    pub fn bind(addr: SocketAddr) -> io::Result<Admin> {
        let listener = TcpListener::bind(addr)?;
        let (poll, waker) = listener::watched(&listener)?;
        Ok(Admin {
            poll,
            listener,
            waker,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Wakes the thread to see the stop signal.
    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    /// Serves until `ctx.stop` is set (and the waker woken).
    pub fn run(mut self, ctx: &Context, asker: &Asker) -> io::Result<()> {
        let mut events = Events::with_capacity(8);
        loop {
            if ctx.stop.is_set() {
                return Ok(());
            }
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            // Edge-triggered: take every connection waiting.
            loop {
                if ctx.stop.is_set() {
                    return Ok(());
                }
                match self.listener.accept() {
                    Ok((stream, peer)) => {
                        if let Err(e) = serve(ctx, asker, stream) {
                            debug!("admin {peer}: {e}");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        // Out of descriptors, say: the clients matter more; try at the next
                        // connection.
                        debug!("admin: accept failed: {e}");
                        break;
                    }
                }
            }
        }
    }
}

/// Reads one request, answers it and closes.
fn serve(ctx: &Context, asker: &Asker, mut stream: TcpStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    let response = match read_head(&mut stream)? {
        Ok(request) => endpoints::respond_admin(ctx, asker, &request),
        Err(HeadError::Malformed(why)) => {
            http::response(400, "text/plain", &format!("bad request: {why}\n"), false)
        }
        Err(HeadError::TooLarge) => {
            http::response(431, "text/plain", "request head too large\n", false)
        }
    };
    write_within(&mut stream, &response, Instant::now() + WRITE_DEADLINE)?;
    stream.shutdown(Shutdown::Write)?;
    let until = Instant::now() + LINGER;
    let mut sink = [0u8; 512];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        stream.set_read_timeout(Some(left))?;
        if !matches!(stream.read(&mut sink), Ok(n) if n > 0) {
            return Ok(());
        }
    }
}

/// Writes all of `bytes` by `until`, however slowly the peer reads.
fn write_within(stream: &mut TcpStream, mut bytes: &[u8], until: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The request head, read within [`READ_DEADLINE`]; an I/O error (the deadline among them)
/// means there is nobody to answer.
fn read_head(stream: &mut TcpStream) -> io::Result<Result<http::Request, HeadError>> {
    let until = Instant::now() + READ_DEADLINE;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match http::parse_head(&buf) {
            Ok(None) => {}
            Ok(Some((request, _))) => return Ok(Ok(request)),
            Err(e) => return Ok(Err(e)),
        }
    }
}
