//! `record_file`: every text frame the upstream sends, with the time it arrived, as one JSON
//! line each (`{"recv_ms":1763993385123,"text":"…"}`), for replaying a customer's problem
//! (`upstream_url = replay:PATH`) and for benchmarks with real data shapes.
//!
//! The upstream thread only offers each frame to a bounded channel and never waits: the
//! `recorder` thread formats and writes. A full channel drops the line (counted); a failed
//! write (a full disk, a directory gone) is logged once and ends the recording, while the
//! proxy goes on serving. At `record_max_bytes` the file is renamed to `PATH.1` (replacing the
//! previous one) and a new one started.

use crate::base::metrics::Metrics;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use log::{error, info, warn};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::Utf8Bytes;

/// Frames waiting for the writer: seconds of a busy feed, should the disk stall.
const CHANNEL: usize = 16 * 1024;
/// How often a dropped line may be logged.
const DROP_LOG_EVERY: Duration = Duration::from_secs(60);

/// The upstream thread's end of the recording.
pub struct Recorder {
    tx: Sender<(u64, Utf8Bytes)>,
    /// Set by the writer when it gives up; the upstream then stops offering.
    stopped: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    last_drop_log: Option<Instant>,
}

/// What the `recorder` thread runs; see [`Recorder::start`].
pub struct Writer {
    rx: Receiver<(u64, Utf8Bytes)>,
    file: RotatingFile,
    stopped: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl Recorder {
    /// Opens (appends to) `path`; returns the upstream's end and the writer for a thread of
    /// its own. An error here (the file cannot be opened) is the caller's to report.
    pub fn start(
        path: &Path,
        max_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> io::Result<(Recorder, Writer)> {
        let file = RotatingFile::open(path, max_bytes)?;
        let (tx, rx) = crossbeam_channel::bounded(CHANNEL);
        let stopped = Arc::new(AtomicBool::new(false));
        metrics.recording.store(1, Ordering::Relaxed);
        info!(
            "recording every upstream frame to {} (rotated at {} bytes)",
            path.display(),
            max_bytes
        );
        let writer = Writer {
            rx,
            file,
            stopped: Arc::clone(&stopped),
            metrics: Arc::clone(&metrics),
        };
        Ok((
            Recorder {
                tx,
                stopped,
                metrics,
                last_drop_log: None,
            },
            writer,
        ))
    }

    /// Offers a frame received at `recv_ms`; never waits.
    pub fn record(&mut self, recv_ms: u64, text: &Utf8Bytes) {
        if self.stopped.load(Ordering::Relaxed) {
            return;
        }
        match self.tx.try_send((recv_ms, text.clone())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.metrics.record_dropped.fetch_add(1, Ordering::Relaxed);
                if self
                    .last_drop_log
                    .map_or(true, |t| t.elapsed() >= DROP_LOG_EVERY)
                {
                    self.last_drop_log = Some(Instant::now());
                    warn!("recording: the disk is not keeping up; frames are left out of the recording (fxproxy_record_dropped_total)");
                }
            }
            Err(TrySendError::Disconnected(_)) => self.stopped.store(true, Ordering::Relaxed),
        }
    }
}

impl Writer {
    /// The `recorder` thread's body: writes until the upstream drops its end (shutdown) or a
    /// write fails.
    pub fn run(mut self) {
        let outcome = self.drain();
        self.stopped.store(true, Ordering::Relaxed);
        self.metrics.recording.store(0, Ordering::Relaxed);
        if let Err(e) = outcome {
            error!(
                "recording to {} stopped: {e}; quotes are still served",
                self.file.path.display()
            );
        }
    }

    fn drain(&mut self) -> io::Result<()> {
        let mut line = Vec::with_capacity(512);
        while let Ok(first) = self.rx.recv() {
            // Everything waiting goes out in one flush: a line reaches the file within
            // moments, without a system call per frame on a busy feed.
            for (recv_ms, text) in std::iter::once(first).chain(self.rx.try_iter()) {
                line.clear();
                line_of(recv_ms, &text, &mut line);
                self.file.write_line(&line)?;
                self.metrics.recorded_frames.fetch_add(1, Ordering::Relaxed);
            }
            self.file.flush()?;
        }
        self.file.flush()
    }
}

/// `{"recv_ms":N,"text":"…"}` and a newline.
pub fn line_of(recv_ms: u64, text: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"recv_ms\":");
    out.extend_from_slice(recv_ms.to_string().as_bytes());
    out.extend_from_slice(b",\"text\":");
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
    out.extend_from_slice(b"}\n");
}

/// The recording file, renamed to `PATH.1` when the next line would take it past its limit.
struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    out: BufWriter<File>,
    bytes: u64,
}

impl RotatingFile {
    fn open(path: &Path, max_bytes: u64) -> io::Result<RotatingFile> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let bytes = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            max_bytes,
            out: BufWriter::with_capacity(64 * 1024, file),
            bytes,
        })
    }

    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.bytes > 0 && self.bytes + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(line)?;
        self.bytes += line.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let mut previous = self.path.clone().into_os_string();
        previous.push(".1");
        std::fs::rename(&self.path, &previous)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.out = BufWriter::with_capacity(64 * 1024, file);
        self.bytes = 0;
        info!(
            "recording: {} reached {} bytes; the previous part is now {}",
            self.path.display(),
            self.max_bytes,
            Path::new(&previous).display()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_json_with_the_frame_as_it_came() {
        let mut out = Vec::new();
        line_of(17, "{\"a\":\"b\\n\"}\n", &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "{\"recv_ms\":17,\"text\":\"{\\\"a\\\":\\\"b\\\\n\\\"}\\n\"}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["text"], "{\"a\":\"b\\n\"}\n");
    }

    #[test]
    fn rotates_keeping_one_previous_file() {
        let dir = std::env::temp_dir().join(format!("fxproxy-record-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rec.jsonl");
        let mut f = RotatingFile::open(&path, 100).unwrap();
        for n in 0..10 {
            f.write_line(format!("{n:039}\n").as_bytes()).unwrap();
        }
        f.flush().unwrap();
        let now = std::fs::read_to_string(&path).unwrap();
        let before = std::fs::read_to_string(dir.join("rec.jsonl.1")).unwrap();
        // 40 bytes a line, at most 100 a file: two lines each, the last two and two before.
        assert_eq!(now.lines().count(), 2);
        assert!(now.ends_with(&format!("{:039}\n", 9)));
        assert!(before.ends_with(&format!("{:039}\n", 7)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
