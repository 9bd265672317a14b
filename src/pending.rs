//! Connections that have not yet authenticated: still sending their HTTP request, their
//! WebSocket handshake or their auth message. Each costs a thread until its deadline, so the
//! set is bounded; when it is full the oldest member is shut down to make room for the
//! newcomer. A flood of silent or trickling connections (slowloris) then only ever displaces
//! itself: a real client finishes its handshake in a millisecond and leaves the set long
//! before it could become the oldest.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Pending {
    max: usize,
    /// Oldest first.
    members: Mutex<VecDeque<Entry>>,
    pub evictions: AtomicU64,
}

struct Entry {
    id: u64,
    /// A second handle to the socket, so it can be shut down from here while its own thread
    /// blocks in a read.
    handle: TcpStream,
    /// Upgraded, so it holds one of the `max_clients` places until it authenticates or goes.
    holds_place: bool,
}

impl Pending {
    pub fn new(max: usize) -> Pending {
        Pending {
            max: max.max(1),
            members: Mutex::new(VecDeque::new()),
            evictions: AtomicU64::new(0),
        }
    }

    /// Adds connection `id`, first shutting down the oldest members while the set is full.
    /// The connection stays a member until the returned guard is dropped. Returns how many
    /// were shut down.
    pub fn enter(&self, id: u64, stream: &TcpStream) -> (Member<'_>, usize) {
        let mut evicted = 0;
        // Without a spare descriptor the newcomer cannot be tracked; it still has its
        // handshake and auth deadlines.
        if let Ok(handle) = stream.try_clone() {
            let mut members = self.members.lock();
            while members.len() >= self.max {
                if let Some(oldest) = members.pop_front() {
                    // Its thread's blocked read returns at once and the thread ends.
                    let _ = oldest.handle.shutdown(Shutdown::Both);
                    evicted += 1;
                }
            }
            members.push_back(Entry {
                id,
                handle,
                holds_place: false,
            });
        }
        self.evictions.fetch_add(evicted as u64, Ordering::Relaxed);
        (Member { set: self, id }, evicted)
    }

    /// Shuts down the oldest member that holds a `max_clients` place, so that a newcomer can
    /// have the place once its thread has gone: upgrades that never authenticate must not
    /// keep real clients out any more than silent sockets may. False if none holds one.
    pub fn evict_oldest_holding_a_place(&self) -> bool {
        let mut members = self.members.lock();
        let Some(i) = members.iter().position(|m| m.holds_place) else {
            return false;
        };
        if let Some(oldest) = members.remove(i) {
            let _ = oldest.handle.shutdown(Shutdown::Both);
        }
        self.evictions.fetch_add(1, Ordering::Relaxed);
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.members.lock().len()
    }
}

/// Membership of one connection; dropping it (authenticated, refused or gone) leaves the set.
pub struct Member<'a> {
    set: &'a Pending,
    id: u64,
}

impl Member<'_> {
    /// Records that this connection now holds one of the `max_clients` places.
    pub fn holds_a_place(&self) {
        let mut members = self.set.members.lock();
        if let Some(m) = members.iter_mut().find(|m| m.id == self.id) {
            m.holds_place = true;
        }
    }
}

impl Drop for Member<'_> {
    fn drop(&mut self) {
        let mut members = self.set.members.lock();
        if let Some(i) = members.iter().position(|m| m.id == self.id) {
            members.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn the_oldest_member_is_shut_down_when_the_set_is_full() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let pending = Pending::new(2);
        let (_c1, s1) = pair(&listener);
        let (_c2, s2) = pair(&listener);
        let (_c3, s3) = pair(&listener);
        let (m1, e1) = pending.enter(1, &s1);
        let (_m2, e2) = pending.enter(2, &s2);
        assert_eq!((e1, e2, pending.len()), (0, 0, 2));
        let (_m3, e3) = pending.enter(3, &s3);
        assert_eq!((e3, pending.len()), (1, 2));
        assert_eq!(pending.evictions.load(Ordering::Relaxed), 1);
        // The evicted connection's own handle now reads end-of-stream instead of blocking.
        let mut s1 = s1;
        let mut buf = [0u8; 8];
        assert_eq!(s1.read(&mut buf).unwrap(), 0);
        // Its guard leaving later finds nothing to remove and disturbs no one.
        drop(m1);
        assert_eq!(pending.len(), 2);
    }

    #[test]
    fn only_a_member_holding_a_place_gives_it_up() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let pending = Pending::new(4);
        let (_c1, s1) = pair(&listener);
        let (_c2, s2) = pair(&listener);
        let (_m1, _) = pending.enter(1, &s1);
        let (m2, _) = pending.enter(2, &s2);
        assert!(!pending.evict_oldest_holding_a_place());
        m2.holds_a_place();
        assert!(pending.evict_oldest_holding_a_place());
        assert_eq!(pending.len(), 1);
        let mut s2 = s2;
        let mut buf = [0u8; 8];
        assert_eq!(s2.read(&mut buf).unwrap(), 0);
        assert!(!pending.evict_oldest_holding_a_place());
        assert_eq!(pending.evictions.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_member_leaves_when_its_guard_drops() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let pending = Pending::new(4);
        let (_c, s) = pair(&listener);
        let (m, _) = pending.enter(7, &s);
        assert_eq!(pending.len(), 1);
        drop(m);
        assert_eq!(pending.len(), 0);
    }
}
