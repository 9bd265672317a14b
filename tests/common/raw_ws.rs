//! WebSocket frames by hand, for tests that must see or send exactly what is on the wire:
//! a reader that splits a byte stream into frames without a WebSocket library (so one thread
//! can follow a thousand sockets), and a writer of masked client frames with any opcode.

// Each test crate compiles this module and uses only part of it.
#![allow(dead_code)]

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
        let b = &self.buf[self.pos..];
        if b.len() < 2 {
            return None;
        }
        let fin = b[0] & 0x80 != 0;
        let opcode = b[0] & 0x0F;
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
        if b.len() < head + len {
            return None;
        }
        let payload = b[head..head + len].to_vec();
        self.pos += head + len;
        Some(Frame {
            fin,
            opcode,
            payload,
        })
    }
}

/// A masked client frame. `first_byte` is FIN, RSV1-3 and the opcode as they go on the wire,
/// so tests can set reserved bits or send unknown opcodes.
pub fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![first_byte];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A final, masked client frame of `opcode`.
pub fn client_message(opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame(0x80 | opcode, payload)
}

/// A masked close frame with `code`, as a client answers the server's close.
pub fn client_close(code: u16) -> Vec<u8> {
    client_message(CLOSE, &code.to_be_bytes())
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
