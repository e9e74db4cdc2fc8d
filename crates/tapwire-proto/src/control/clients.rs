//! The control socket's clients as a sans-IO table: how much of a request each has sent, when
//! a request is complete, and which connection may be accepted, evicted or expired.
//!
//! # Theory of operation
//! The server (`tapwire::control::server`) owns the sockets; this table owns every decision,
//! so that the policy is tested with bytes and a fake clock and fuzzed without I/O:
//!
//! ```text
//! accept? --admit()--> Accept | Evict(oldest stalled) | Full (leave it in the kernel backlog)
//! Reading --received(bytes, eof)--> complete: EOF, a whole JSON value, or > MAX_REQUEST bytes
//!         ------------------------> Replying (the request is handed out exactly once)
//! Replying --the reply is written--> remove()
//! ```
//!
//! A client whose request has arrived is never evicted to make room: at [`MAX_CLIENTS`] the
//! server stops accepting and leaves newcomers in the kernel's listen backlog, where they wait
//! their turn as with slirp4netns, and accepts again as soon as a slot frees. Only a client that
//! has *stalled* (connected for [`STALL_MS`] without a complete request) may be evicted, and
//! only while the table is full and someone is waiting, so connections that send nothing can
//! never lock the API. Every client, stalled or not, is dropped after [`CLIENT_TIMEOUT_MS`]
//! ([`expired`](Clients::expired)). A client's buffer never holds more than
//! [`MAX_REQUEST`] + 1 bytes: the excess of an oversize request is discarded (it gets the
//! "too large message" error).
#![forbid(unsafe_code)]

use slab::Slab;

use super::MAX_REQUEST;

/// Connections served at once (the rest wait in the listen backlog).
pub const MAX_CLIENTS: usize = 64;
/// A client that has not finished its request and read its reply by then is dropped.
pub const CLIENT_TIMEOUT_MS: u64 = 10_000;
/// A client connected this long without a complete request has stalled: it may be evicted
/// when the table is full and another connection waits.
pub const STALL_MS: u64 = 1_000;

/// What to do with the next pending connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// There is room.
    Accept,
    /// Full: remove this stalled client first, then accept.
    Evict(usize),
    /// Full of clients that are not stalled: leave the connection in the backlog.
    Full,
}

/// Where a client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Its request is incomplete.
    Reading,
    /// Its request was handed out; the reply is being written.
    Replying,
}

#[derive(Debug)]
struct Client<S> {
    io: S,
    buf: Vec<u8>,
    phase: Phase,
    since_ms: u64,
}

/// The clients, each with its I/O handle `S` (the stream; anything in tests).
#[derive(Debug)]
pub struct Clients<S> {
    slab: Slab<Client<S>>,
}

impl<S> Default for Clients<S> {
    fn default() -> Self {
        Clients { slab: Slab::new() }
    }
}

impl<S> Clients<S> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// May another connection be accepted at `now_ms`?
    pub fn admit(&self, now_ms: u64) -> Admit {
        if self.slab.len() < MAX_CLIENTS {
            return Admit::Accept;
        }
        self.slab
            .iter()
            .filter(|(_, c)| c.phase == Phase::Reading)
            .filter(|(_, c)| now_ms.saturating_sub(c.since_ms) >= STALL_MS)
            .min_by_key(|(_, c)| c.since_ms)
            .map_or(Admit::Full, |(i, _)| Admit::Evict(i))
    }

    /// Add a client connected at `now_ms`; returns its key.
    pub fn insert(&mut self, io: S, now_ms: u64) -> usize {
        self.slab.insert(Client {
            io,
            buf: Vec::new(),
            phase: Phase::Reading,
            since_ms: now_ms,
        })
    }

    /// Remove a client (done, gone, evicted or expired); returns its handle.
    pub fn remove(&mut self, key: usize) -> Option<S> {
        self.slab.try_remove(key).map(|c| c.io)
    }

    pub fn io_mut(&mut self, key: usize) -> Option<&mut S> {
        self.slab.get_mut(key).map(|c| &mut c.io)
    }

    pub fn phase(&self, key: usize) -> Option<Phase> {
        self.slab.get(key).map(|c| c.phase)
    }

    /// Bytes buffered for `key` (at most `MAX_REQUEST + 1`).
    pub fn buffered(&self, key: usize) -> usize {
        self.slab.get(key).map_or(0, |c| c.buf.len())
    }

    /// Whether `key` still wants request bytes (reading more would only be discarded).
    pub fn wants_bytes(&self, key: usize) -> bool {
        self.slab
            .get(key)
            .is_some_and(|c| c.phase == Phase::Reading && c.buf.len() <= MAX_REQUEST)
    }

    /// The client sent `data` (possibly empty), then EOF if `eof`. Returns the complete request
    /// the first time it is complete (then the client is [`Phase::Replying`]); bytes after
    /// that, and beyond `MAX_REQUEST + 1`, are discarded.
    pub fn received(&mut self, key: usize, data: &[u8], eof: bool) -> Option<Vec<u8>> {
        let c = self.slab.get_mut(key)?;
        if c.phase != Phase::Reading {
            return None;
        }
        let room = (MAX_REQUEST + 1).saturating_sub(c.buf.len());
        c.buf.extend_from_slice(&data[..data.len().min(room)]);
        if !(eof || c.buf.len() > MAX_REQUEST || is_json_value(&c.buf)) {
            return None;
        }
        c.phase = Phase::Replying;
        Some(std::mem::take(&mut c.buf))
    }

    /// Clients connected longer than [`CLIENT_TIMEOUT_MS`] at `now_ms` (to be removed).
    pub fn expired(&self, now_ms: u64) -> Vec<usize> {
        self.slab
            .iter()
            .filter(|(_, c)| now_ms.saturating_sub(c.since_ms) > CLIENT_TIMEOUT_MS)
            .map(|(i, _)| i)
            .collect()
    }

    pub fn keys(&self) -> impl Iterator<Item = usize> + '_ {
        self.slab.iter().map(|(i, _)| i)
    }
}

/// A request sent without the closing shutdown is complete once it parses as one JSON value
/// (slirp4netns does a single read and tolerates such clients).
fn is_json_value(buf: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(buf).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(now: u64) -> Clients<u32> {
        let mut t = Clients::new();
        for i in 0..MAX_CLIENTS {
            assert_eq!(t.admit(now), Admit::Accept);
            t.insert(i as u32, now);
        }
        t
    }

    #[test]
    fn complete_requests_are_never_evicted() {
        let mut t = full(0);
        // Every client has sent its request and waits for its reply.
        for k in t.keys().collect::<Vec<_>>() {
            assert!(t
                .received(k, br#"{"execute":"list_hostfwd"}"#, true)
                .is_some());
        }
        for now in [0, STALL_MS, CLIENT_TIMEOUT_MS] {
            assert_eq!(t.admit(now), Admit::Full, "at {now} ms");
        }
        // A slot frees: the next one is accepted.
        t.remove(3);
        assert_eq!(t.admit(0), Admit::Accept);
    }

    #[test]
    fn the_oldest_stalled_client_is_evicted_when_full() {
        let mut t = Clients::new();
        let first = t.insert(0u32, 10);
        for i in 1..MAX_CLIENTS {
            let k = t.insert(i as u32, 20);
            assert!(t.received(k, b"{}", false).is_some());
        }
        assert_eq!(t.admit(20), Admit::Full, "nobody stalled yet");
        assert_eq!(t.admit(10 + STALL_MS), Admit::Evict(first));
        // Half a request does not protect it; a complete one does.
        assert!(t.received(first, b"{\"exec", false).is_none());
        assert_eq!(t.admit(10 + STALL_MS), Admit::Evict(first));
        assert!(t.received(first, b"ute\":1}", false).is_some());
        assert_eq!(t.admit(10 + STALL_MS), Admit::Full);
    }

    #[test]
    fn completion_eof_json_or_oversize() {
        let mut t = Clients::new();
        let a = t.insert((), 0);
        assert_eq!(t.received(a, b"{\"a\":", false), None);
        assert_eq!(t.received(a, b"", true).as_deref(), Some(&b"{\"a\":"[..]));
        assert_eq!(t.phase(a), Some(Phase::Replying));
        // Handed out once; later bytes are ignored.
        assert_eq!(t.received(a, b"{}", true), None);

        let b = t.insert((), 0);
        assert_eq!(
            t.received(b, b" {\"x\": [1, 2]} ", false).unwrap().len(),
            15
        );

        let c = t.insert((), 0);
        let big = vec![b' '; 3000];
        assert_eq!(t.received(c, &big, false), None);
        assert!(t.wants_bytes(c));
        let got = t.received(c, &big, false).unwrap();
        assert_eq!(got.len(), MAX_REQUEST + 1, "buffer bounded");
        assert!(!t.wants_bytes(c));
    }

    #[test]
    fn expiry_covers_every_phase() {
        let mut t = Clients::new();
        let a = t.insert((), 0);
        let b = t.insert((), 5);
        t.received(b, b"{}", true);
        assert!(t.expired(CLIENT_TIMEOUT_MS).is_empty());
        assert_eq!(t.expired(CLIENT_TIMEOUT_MS + 1), vec![a]);
        let mut both = t.expired(CLIENT_TIMEOUT_MS + 6);
        both.sort_unstable();
        assert_eq!(both, vec![a, b]);
        assert_eq!(t.remove(a), Some(()));
        assert_eq!(t.remove(a), None);
        assert_eq!(t.received(a, b"{}", true), None, "unknown key");
    }
}
