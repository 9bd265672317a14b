//! WebSocket frames by hand, for tests that must see or send exactly what is on the wire:
//! a reader that splits a byte stream into frames without a WebSocket library (so one thread
//! can follow a thousand sockets), and a writer of masked client frames with any opcode.

// Each test crate compiles this module and uses only part of it.
#![allow(dead_code)]

pub const CONT: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// One frame as the server sent it (servers do not mask).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The close code of a close frame (1005 when it has none).
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == CLOSE).then(|| match self.payload.as_slice() {
            [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
            _ => 1005,
        })
    }
}

/// Splits a byte stream into frames as the bytes arrive. Consumed bytes are dropped once
/// per `push`, not once per frame, so a thousand quotes in one read cost a thousand header
/// parses and no more.
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    pos: usize,
}

impl FrameReader {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.drain(..self.pos);
        self.pos = 0;
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if the bytes so far hold one.
    pub fn next_frame(&mut self) -> Option<Frame> {
        let (frame, used) = parse_frame(&self.buf[self.pos..])?;
        self.pos += used;
        Some(frame)
    }
}

/// Splits one server frame (unmasked) off the front of `buf`: the frame and the bytes it took.
pub fn parse_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    let b = buf;
    if b.len() < 2 {
        return None;
    }
    assert_eq!(b[1] & 0x80, 0, "a server frame must not be masked");
    let (len, head) = match b[1] & 0x7F {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 if b.len() >= 10 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[2..10]);
            (u64::from_be_bytes(n) as usize, 10)
        }
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    let payload = b.get(head..head + len)?.to_vec();
    let frame = Frame {
        fin: b[0] & 0x80 != 0,
        opcode: b[0] & 0x0F,
        payload,
    };
    Some((frame, head + len))
}

/// One client frame as bytes on the wire, any flags allowed: `rsv` is the three reserved bits
/// (0 to 7), and `masked = false` makes the unmasked frame a client must never send.
pub fn frame(fin: bool, rsv: u8, opcode: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
    let mask_bit = u8::from(masked) << 7;
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A whole, masked client frame: what a well-behaved client sends.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, 0, opcode, true, payload)
}

/// The pong a client owes for `frame`, if it is a ping: every WebSocket library answers one
/// as it reads, and fxproxy relies on that to know a client has read what came before.
pub fn pong_for(frame: &Frame) -> Option<Vec<u8>> {
    (frame.opcode == PING).then(|| client_frame(PONG, &frame.payload))
}

/// A masked close frame with `code`, as a client answers the server's close.
pub fn client_close(code: u16) -> Vec<u8> {
    client_frame(CLOSE, &code.to_be_bytes())
}

/// Connects, takes the greeting, authenticates, and hands back the bare socket, for a test
/// that reads the frames itself ([`FrameReader`]). Nothing but the greeting is read before the
/// auth message goes, so no quote is left behind in tungstenite's buffer.
pub fn authenticated_socket(addr: std::net::SocketAddr, key: &str) -> std::net::TcpStream {
    let stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("a read timeout");
    let (mut ws, _) = tungstenite::client(format!("ws://{addr}/"), stream).expect("handshake");
    assert_eq!(
        ws.read().expect("greeting"),
        tungstenite::Message::text("Connected")
    );
    ws.send(tungstenite::Message::text(format!(
        r#"{{"userKey":"{key}"}}"#
    )))
    .expect("auth");
    ws.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_frames_split_anywhere() {
        let mut wire = vec![0x81, 3, b'a', b'b', b'c', 0x88, 2, 0x03, 0xE9];
        wire.extend_from_slice(&[0x81, 126, 0x01, 0x00]);
        wire.extend(std::iter::repeat(b'x').take(256));
        let mut r = FrameReader::default();
        let mut frames = Vec::new();
        for chunk in wire.chunks(3) {
            r.push(chunk);
            while let Some(f) = r.next_frame() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].payload, b"abc");
        assert_eq!(frames[1].close_code(), Some(1001));
        assert_eq!(frames[2].payload.len(), 256);
    }
}
