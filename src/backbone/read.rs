//! The `backbone-read` thread: feeds this instance's distributor from the stream.
//!
//! It starts from the snapshot (`NAME:last`: the last frame per symbol and the id of the entry
//! it is current at, written in the same script call as each entry), so new clients get a warm
//! snapshot at once, then reads every entry after that id with a blocking `XREAD` that times
//! out, so the thread looks at the stop signal twice a second. After a lost connection it
//! resumes from the last id it read: nothing twice, nothing missed, as long as the stream still
//! holds that id (it keeps about `backbone_max_len` entries).
//!
//! Each entry carries `TERM SEQ` (the fencing token that began the holding it was taken in,
//! and its number within it; terms only grow, see [`super::lease`]). An entry at or below the
//! last one read is dropped (a publish repeated after Redis lost its data would otherwise reach
//! clients twice); a jump in the numbers within a term is a gap, counted and logged. One
//! exception: an entry of a lower term that is newer than any entry read (by its stream id,
//! the time Redis added it) is a new epoch, not an old entry read again: Redis was restored
//! from a copy whose counter and clock were both behind, and whoever holds the lock now is
//! followed rather than ignored.

use super::link::{self, Link, Target};
use super::settings::Keys;
use super::status::{LinkKind, Status};
use crate::base::metrics::Metrics;
use crate::base::ratelimit::RateLimited;
use crate::base::stop::Stop;
use crossbeam_channel::Sender;
use log::{info, warn};
use redis::{RedisError, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::Utf8Bytes;

/// How long one `XREAD` waits for new entries: the longest the thread takes to see a stop.
const BLOCK: Duration = Duration::from_millis(500);
/// Entries per read at most.
const COUNT: usize = 512;
/// How often the distance to the stream's head is measured.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Where the reader is in the stream.
struct Position {
    /// The id of the last entry read (`0-0` before the first).
    id: String,
    /// Its `TERM SEQ`.
    last: (u64, u64),
    /// The highest id read, kept when the reader starts over on a stream made anew.
    newest: (u64, u64),
}

/// One stream entry.
struct Entry {
    id: String,
    frame: Option<Vec<u8>>,
    pair: Option<(u64, u64)>,
}

pub struct Reader {
    link: Link,
    keys: Keys,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    complaints: RateLimited,
    stale: RateLimited,
}

impl Reader {
    pub fn new(
        target: &Target,
        keys: &Keys,
        status: &Arc<Status>,
        metrics: &Arc<Metrics>,
    ) -> Reader {
        Reader {
            link: Link::new(LinkKind::Read, target, BLOCK, status, metrics),
            keys: keys.clone(),
            status: Arc::clone(status),
            metrics: Arc::clone(metrics),
            complaints: RateLimited::new(Duration::from_secs(60)),
            stale: RateLimited::new(Duration::from_secs(60)),
        }
    }

    pub fn run(mut self, clients: &Sender<Utf8Bytes>, stop: &Stop) {
        let mut pos: Option<Position> = None;
        let mut last_probe = Instant::now();
        while !stop.is_set() {
            let Some(con) = self.link.get(stop) else {
                return;
            };
            let Some(at) = &mut pos else {
                match snapshot(con, &self.keys) {
                    Ok((frames, start)) => {
                        self.link.ok();
                        info!(
                            "backbone: snapshot of {} symbol(s) read; following the stream from {}",
                            frames.len(),
                            start.id
                        );
                        for frame in frames {
                            if self.hand_on(clients, frame).is_err() {
                                return;
                            }
                        }
                        pos = Some(start);
                    }
                    Err(e) => self.link.failed(&e),
                }
                continue;
            };
            let read: Result<Value, RedisError> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(COUNT)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.keys.stream)
                .arg(&at.id)
                .query(con);
            match read {
                Ok(reply) => {
                    self.link.ok();
                    for entry in xread_entries(&reply) {
                        if self.take(at, entry, clients).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    self.link.failed(&e);
                    continue;
                }
            }
            if last_probe.elapsed() >= PROBE_EVERY {
                last_probe = Instant::now();
                if let Err(e) = self.probe(at) {
                    self.link.failed(&e);
                }
            }
        }
    }

    /// One entry, in stream order: handed on unless it was read already.
    fn take(
        &mut self,
        at: &mut Position,
        entry: Entry,
        clients: &Sender<Utf8Bytes>,
    ) -> Result<(), ()> {
        let id = link::parse_id(&entry.id).unwrap_or_default();
        at.id = entry.id;
        let fresh = id > at.newest;
        at.newest = at.newest.max(id);
        if let Some(pair) = entry.pair {
            if pair.0 < at.last.0 && fresh {
                warn!(
                    "backbone: entry {} is newer than any read but of term {}, below term {} read before: Redis was restored from an older copy; following the new term",
                    at.id, pair.0, at.last.0
                );
                at.last = (pair.0, pair.1.saturating_sub(1));
            }
            if pair <= at.last {
                self.status.duplicates.fetch_add(1, Relaxed);
                if pair.0 < at.last.0 {
                    self.stale.note(|n| {
                        warn!(
                            "backbone: {n} entry(ies) of terms before {} read again and dropped (the stream was made anew?)",
                            at.last.0
                        )
                    });
                }
                return Ok(());
            }
            let missing = missing_between(at.last, pair);
            if missing > 0 {
                self.status.gaps.fetch_add(missing, Relaxed);
                self.complaints.note(|n| {
                    warn!(
                        "backbone: {missing} frame(s) missing before entry {} ({n} gap(s) lately): trimmed from the stream while this instance was away, or lost with Redis's data",
                        at.id
                    )
                });
            }
            at.last = pair;
        }
        match entry.frame.map(Utf8Bytes::try_from) {
            Some(Ok(frame)) => self.hand_on(clients, frame),
            _ => Ok(()),
        }
    }

    fn hand_on(&self, clients: &Sender<Utf8Bytes>, frame: Utf8Bytes) -> Result<(), ()> {
        self.status.received.fetch_add(1, Relaxed);
        self.status
            .last_received_ms
            .store(self.metrics.now_ms(), Relaxed);
        clients.send(frame).map_err(|_| ())
    }

    /// Measures how far behind the head of the stream this reader is; notices a stream that
    /// was made anew (its head is older than where the reader is) and starts over on it.
    fn probe(&mut self, at: &mut Position) -> Result<(), RedisError> {
        let Some(con) = self.link.get(&Stop::new()) else {
            return Ok(());
        };
        let reply: Value = redis::cmd("XREVRANGE")
            .arg(&self.keys.stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(con)?;
        let Some(head) = entries(&reply).into_iter().next() else {
            return Ok(());
        };
        let (head_id, ours) = (link::parse_id(&head.id), link::parse_id(&at.id));
        if let (Some(head_id), Some(ours)) = (head_id, ours) {
            if head_id < ours {
                warn!(
                    "backbone: the stream's newest entry {} is older than the last one read ({}): the stream was made anew (Redis lost its data?); reading it from its start, dropping what was read already",
                    head.id, at.id
                );
                at.id = "0-0".to_string();
            }
            self.status
                .lag_ms
                .store(head_id.0.saturating_sub(ours.0), Relaxed);
        }
        let behind = match head.pair {
            Some((token, seq)) if token == at.last.0 => seq.saturating_sub(at.last.1),
            Some((token, seq)) if token > at.last.0 => seq,
            _ => 0,
        };
        self.status.lag_frames.store(behind, Relaxed);
        Ok(())
    }
}

/// Frames known to be missing between two entries read one after the other.
fn missing_between(last: (u64, u64), next: (u64, u64)) -> u64 {
    if next.0 == last.0 {
        next.1.saturating_sub(last.1 + 1)
    } else if last.0 != 0 {
        // A new holder numbers from 1.
        next.1.saturating_sub(1)
    } else {
        0
    }
}

/// The snapshot's frames and where the stream continues after them.
fn snapshot(
    con: &mut redis::Connection,
    keys: &Keys,
) -> Result<(Vec<Utf8Bytes>, Position), RedisError> {
    let reply: Value = redis::cmd("HGETALL").arg(&keys.last).query(con)?;
    let mut frames = Vec::new();
    let (mut id, mut last) = (None, (0, 0));
    for (field, value) in pairs(&reply) {
        match link::text(field) {
            Some("@id") => id = link::text(value).map(str::to_string),
            Some("@pub") => last = link::text(value).and_then(link::parse_pair).unwrap_or(last),
            Some(f) if f.starts_with('@') => {}
            Some(_) => {
                if let Some(frame) = link::text(value) {
                    frames.push(Utf8Bytes::from(frame));
                }
            }
            None => {}
        }
    }
    let id = match id {
        Some(id) => id,
        // No snapshot (an empty feed): from the stream's newest entry, if it has any.
        None => {
            let reply: Value = redis::cmd("XREVRANGE")
                .arg(&keys.stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query(con)?;
            match entries(&reply).into_iter().next() {
                Some(head) => {
                    last = head.pair.unwrap_or(last);
                    head.id
                }
                None => "0-0".to_string(),
            }
        }
    };
    let newest = link::parse_id(&id).unwrap_or_default();
    Ok((frames, Position { id, last, newest }))
}

/// The items of an array (RESP2) or the flattened pairs of a map (RESP3).
fn items(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(items) | Value::Set(items) => items.iter().collect(),
        Value::Map(pairs) => pairs.iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

fn pairs(v: &Value) -> Vec<(&Value, &Value)> {
    let items = items(v);
    items.chunks_exact(2).map(|c| (c[0], c[1])).collect()
}

/// The entries of an `XRANGE`-style reply: `[[id, [field, value, ...]], ...]`.
fn entries(v: &Value) -> Vec<Entry> {
    items(v)
        .into_iter()
        .filter_map(|entry| {
            let parts = items(entry);
            let id = link::text(parts.first()?)?.to_string();
            let mut frame = None;
            let mut pair = None;
            for (field, value) in pairs(parts.get(1)?) {
                match link::text(field) {
                    Some("f") => {
                        if let Value::BulkString(b) = value {
                            frame = Some(b.clone());
                        }
                    }
                    Some("p") => pair = link::text(value).and_then(link::parse_pair),
                    _ => {}
                }
            }
            Some(Entry { id, frame, pair })
        })
        .collect()
}

/// The entries of an `XREAD` reply for one stream: `[[name, entries]]`, or nil on timeout.
fn xread_entries(v: &Value) -> Vec<Entry> {
    match items(v).first() {
        Some(stream) => items(stream).get(1).map_or(Vec::new(), |e| entries(e)),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn reads_xread_replies() {
        let entry = |id: &str, n: u64| {
            Value::Array(vec![
                bulk(id),
                Value::Array(vec![
                    bulk("f"),
                    bulk(&format!("{{\"n\":{n}}}")),
                    bulk("p"),
                    bulk(&format!("7 {n}")),
                ]),
            ])
        };
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("fx:stream"),
            Value::Array(vec![entry("5-0", 1), entry("5-1", 2)]),
        ])]);
        let got = xread_entries(&reply);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].id, "5-1");
        assert_eq!(got[1].pair, Some((7, 2)));
        assert_eq!(got[1].frame.as_deref(), Some(&b"{\"n\":2}"[..]));
        assert!(xread_entries(&Value::Nil).is_empty());
    }

    #[test]
    fn counts_what_is_missing() {
        assert_eq!(missing_between((7, 3), (7, 4)), 0);
        assert_eq!(missing_between((7, 3), (7, 9)), 5);
        assert_eq!(missing_between((7, 3), (8, 1)), 0);
        assert_eq!(missing_between((7, 3), (8, 4)), 3);
        assert_eq!(missing_between((0, 0), (8, 40)), 0);
    }
}
