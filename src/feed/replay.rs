//! `upstream_url = replay:PATH[?speed=N|max][&loop=1]`: a recording (see [`crate::feed::record`])
//! played back as a source. Like the simulator, it is a WebSocket server on an ephemeral
//! loopback port that the upstream thread connects to, so every frame takes the real path:
//! the upstream's reading and sorting, the distributor, the clients.
//!
//! Frames go out at the pace they were recorded (or `speed` times faster; `max`: as fast as
//! the proxy takes them). The place in the recording outlives a connection: a proxy that
//! reconnects goes on where it left off. At the end the source falls silent, or starts again
//! with `loop=1`. Nothing the proxy sends is answered (there is nobody to answer it): the
//! recording already holds the replies the provider gave.

use crate::config::Replay;
use log::{info, warn};
use serde::Deserialize;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{HandshakeError, Message, WebSocket};

const STACK_SIZE: usize = 256 * 1024;
/// The longest the player goes without reading what the proxy sent (pings, a close) and
/// looking at the shutdown flag.
const POLL: Duration = Duration::from_millis(100);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames written before a flush when they are all due at once.
const MAX_BATCH: usize = 256;

/// A running player; [`ReplayServer::stop`] (or dropping it) ends it.
pub struct ReplayServer {
    addr: SocketAddr,
    shutdown: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ReplayServer {
    /// Opens the recording (an error if it cannot be read) and starts the `replay` thread on
    /// 127.0.0.1 with an ephemeral port.
    pub fn start(replay: &Replay) -> io::Result<ReplayServer> {
        let recording = Recording::open(replay.path.clone())?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let shutdown = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&shutdown);
        let player = Player {
            recording,
            speed: replay.speed,
            looped: replay.looped,
            shutdown: flag,
            over: false,
        };
        let thread = thread::Builder::new()
            .name("replay".into())
            .stack_size(STACK_SIZE)
            .spawn(move || player.serve(listener))?;
        let pace = match replay.speed {
            None => "as fast as it is taken".to_string(),
            // Compared, not matched: Rust 1.71 (our rust-version) warns on float patterns.
            Some(s) if s != 1.0 => format!("at {s} times the recorded pace"),
            Some(_) => "at the recorded pace".to_string(),
        };
        info!(
            "replaying {} {pace}{}",
            replay.path.display(),
            if replay.looped { ", in a loop" } else { "" }
        );
        Ok(ReplayServer {
            addr,
            shutdown,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shutdown.store(true, Ordering::SeqCst);
        // Wakes an accept() that nothing else would (as the simulator does). Refused means
        // the player has seen the flag already and dropped its listener on the way out.
        let woken = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let deadline = Instant::now() + Duration::from_secs(1);
        while woken.is_err() && !thread.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        if woken.is_ok() || thread.is_finished() {
            let _ = thread.join();
        } else {
            warn!("replay: the player on {} did not stop", self.addr);
        }
    }
}

impl Drop for ReplayServer {
    fn drop(&mut self) {
        self.shut();
    }
}

/// One line of a recording.
#[derive(Deserialize)]
struct Line {
    recv_ms: u64,
    text: String,
}

/// The recording, read a line at a time (it may be large), with a place that outlives a
/// connection.
struct Recording {
    path: PathBuf,
    reader: BufReader<File>,
    /// The next frame, read ahead.
    next: Option<(u64, String)>,
    frames: u64,
    bad_lines: u64,
}

impl Recording {
    fn open(path: PathBuf) -> io::Result<Recording> {
        let file = File::open(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open the recording {}: {e}", path.display()),
            )
        })?;
        let mut recording = Recording {
            path,
            reader: BufReader::new(file),
            next: None,
            frames: 0,
            bad_lines: 0,
        };
        recording.advance();
        Ok(recording)
    }

    /// Reads the next good line into `next` (`None` at the end).
    fn advance(&mut self) {
        self.next = None;
        let mut text = String::new();
        loop {
            text.clear();
            match self.reader.read_line(&mut text) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    warn!(
                        "replay: reading {} failed: {e}; the recording ends here",
                        self.path.display()
                    );
                    return;
                }
            }
            if text.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Line>(&text) {
                Ok(line) => {
                    self.next = Some((line.recv_ms, line.text));
                    return;
                }
                Err(e) => {
                    self.bad_lines += 1;
                    if self.bad_lines == 1 {
                        warn!(
                            "replay: {} has a line that is not {{\"recv_ms\":N,\"text\":\"…\"}} ({e}); such lines are skipped",
                            self.path.display()
                        );
                    }
                }
            }
        }
    }

    fn rewind(&mut self) -> io::Result<()> {
        self.reader.seek(SeekFrom::Start(0))?;
        self.advance();
        Ok(())
    }
}

struct Player {
    recording: Recording,
    speed: Option<f64>,
    looped: bool,
    shutdown: Arc<AtomicBool>,
    /// The recording has ended (and does not loop).
    over: bool,
}

/// Why a connection ended.
enum End {
    PeerGone,
    Shutdown,
}

impl Player {
    fn serve(mut self, listener: TcpListener) {
        for incoming in listener.incoming() {
            if self.shutdown.load(Ordering::SeqCst) {
                return;
            }
            let Ok(stream) = incoming else {
                // EMFILE and the like repeat at once; pausing keeps this from spinning.
                thread::sleep(POLL);
                continue;
            };
            match self.handshake(stream) {
                Ok(mut ws) => match self.play(&mut ws) {
                    End::Shutdown => {
                        let _ = ws.close(Some(CloseFrame {
                            code: CloseCode::Away,
                            reason: "replay stopping".into(),
                        }));
                        let _ = ws.flush();
                        return;
                    }
                    End::PeerGone => {}
                },
                Err(e) => warn!("replay: a connection failed its WebSocket upgrade: {e}"),
            }
        }
    }

    fn handshake(&self, stream: TcpStream) -> Result<WebSocket<TcpStream>, String> {
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let _ = stream.set_nodelay(true);
        stream
            .set_read_timeout(Some(POLL))
            .map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(POLL))
            .map_err(|e| e.to_string())?;
        let mut attempt = tungstenite::accept(stream);
        loop {
            match attempt {
                Ok(ws) => return Ok(ws),
                Err(HandshakeError::Interrupted(mid))
                    if Instant::now() < deadline && !self.shutdown.load(Ordering::SeqCst) =>
                {
                    attempt = mid.handshake()
                }
                Err(HandshakeError::Interrupted(_)) => return Err("timed out".into()),
                Err(HandshakeError::Failure(e)) => return Err(e.to_string()),
            }
        }
    }

    /// Plays frames on `ws` until the proxy goes away or the player is stopped.
    fn play(&mut self, ws: &mut WebSocket<TcpStream>) -> End {
        // The recorded moment that plays now, and when it played.
        let mut base: Option<(Instant, u64)> = None;
        let mut next_read = Instant::now();
        loop {
            if self.shutdown.load(Ordering::SeqCst) {
                return End::Shutdown;
            }
            let now = Instant::now();
            if now >= next_read {
                if !read_pass(ws) {
                    return End::PeerGone;
                }
                next_read = now + POLL;
            }
            let mut sent = 0;
            while let Some((recv_ms, _)) = &self.recording.next {
                let recv_ms = *recv_ms;
                let due = match (self.speed, base) {
                    (None, _) => now,
                    // A recording may go back in time (a clock step, parts joined): start the
                    // pace again from there.
                    (Some(_), Some((_, at_ms))) if recv_ms < at_ms => {
                        base = Some((now, recv_ms));
                        now
                    }
                    (Some(speed), Some((at, at_ms))) => {
                        at + Duration::from_secs_f64((recv_ms - at_ms) as f64 / 1000.0 / speed)
                    }
                    (Some(_), None) => {
                        base = Some((now, recv_ms));
                        now
                    }
                };
                if due > now || sent >= MAX_BATCH {
                    break;
                }
                let Some((_, text)) = self.recording.next.take() else {
                    break;
                };
                if !send(ws, Message::text(text)) {
                    return End::PeerGone;
                }
                self.recording.frames += 1;
                sent += 1;
                self.recording.advance();
            }
            if sent > 0 {
                if !flush(ws, &self.shutdown) {
                    return End::PeerGone;
                }
                continue;
            }
            if self.recording.next.is_none() {
                self.at_the_end(&mut base);
                if self.recording.next.is_some() {
                    continue;
                }
            }
            let wake = match (&self.recording.next, self.speed, base) {
                (Some((recv_ms, _)), Some(speed), Some((at, at_ms))) if *recv_ms >= at_ms => {
                    at + Duration::from_secs_f64((recv_ms - at_ms) as f64 / 1000.0 / speed)
                }
                _ => next_read,
            };
            thread::sleep(
                wake.min(next_read)
                    .saturating_duration_since(Instant::now()),
            );
        }
    }

    fn at_the_end(&mut self, base: &mut Option<(Instant, u64)>) {
        if self.over {
            return;
        }
        let frames = self.recording.frames;
        if self.looped && frames > 0 {
            match self.recording.rewind() {
                Ok(()) => {
                    *base = None;
                    return;
                }
                Err(e) => warn!("replay: cannot go back to the start: {e}"),
            }
        }
        self.over = true;
        info!(
            "replay: the recording is over ({frames} frames{}); the source stays connected and silent",
            if self.recording.bad_lines > 0 {
                format!(", {} unreadable lines skipped", self.recording.bad_lines)
            } else {
                String::new()
            }
        );
    }
}

/// Queues a frame; a write timeout is not an error (the frame stays buffered for the flush).
fn send(ws: &mut WebSocket<TcpStream>, message: Message) -> bool {
    match ws.write(message) {
        Ok(()) => true,
        Err(tungstenite::Error::Io(e)) if crate::base::io::is_timeout(&e) => true,
        Err(_) => false,
    }
}

/// Writes out what is buffered; a proxy that reads slowly holds the player here (TCP
/// back-pressure, as a real source feels it), looking at the shutdown flag between tries.
fn flush(ws: &mut WebSocket<TcpStream>, shutdown: &AtomicBool) -> bool {
    loop {
        match ws.flush() {
            Ok(()) => return true,
            Err(tungstenite::Error::Io(e)) if crate::base::io::is_timeout(&e) => {
                if shutdown.load(Ordering::SeqCst) {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
}

/// Reads what the proxy sent without waiting: pings get their pong, a close is noticed.
/// False once the proxy is gone.
fn read_pass(ws: &mut WebSocket<TcpStream>) -> bool {
    if ws.get_mut().set_nonblocking(true).is_err() {
        return false;
    }
    let alive = loop {
        match ws.read() {
            Ok(Message::Close(_)) => {
                let _ = ws.flush();
                break false;
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if crate::base::io::is_timeout(&e) => break true,
            Err(_) => break false,
        }
    };
    alive && ws.get_mut().set_nonblocking(false).is_ok()
}
