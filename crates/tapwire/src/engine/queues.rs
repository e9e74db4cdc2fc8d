//! `--threads N`: N engine workers, one per queue of a multi-queue TAP.
//!
//! # Theory of operation
//! With `IFF_MULTI_QUEUE` the guest's kernel picks the queue of each packet it sends: the
//! queue a packet of the same flow (by a symmetric hash of its addresses and ports) was last
//! written to in the last 3 s, or else one chosen by that hash. Each worker is a whole
//! [`Engine`] on its own queue and thread, with its own smoltcp interface, flow tables, host
//! sockets and epoll set. A flow the guest opens lives on the worker that got its first
//! packet, and since that worker writes the replies on its own queue the rest of the flow
//! comes back to it: nothing is shared or locked per packet. What crosses workers goes
//! through [`Shared`]:
//!
//! - **Handed-over frames.** The first worker (index 0) alone owns the control socket, the
//!   port forwards (`-p`, `-p auto`), `--forward-to-host`, the periodic router advertisement
//!   and the exit conditions. A forwarded flow starts from our side, so after it idles for
//!   3 s the guest's next packet may arrive on any queue. The other workers therefore hand the
//!   first one every TCP segment they have no flow for that does not open one (anything but a
//!   bare SYN: the first worker has the flow, or answers with the RST), and every UDP datagram
//!   of a forwarded binding (their keys are in [`Shared::inbound_udp`]).
//! - **Neighbours.** Each interface learns the guest's MAC from ARP and neighbour
//!   advertisements; these frames are copied to every other worker (an ARP request as a
//!   reply, so that only the worker that got it answers).
//! - **Reports.** `get_stats` and `list_connections` are answered by the first worker: it asks
//!   the others ([`Report`]), each answers at its next turn, and the counters are summed, the
//!   lists joined, with one entry per queue in `"queues"`.
//!
//! A handed frame is copied into the receiving worker's inbox (at most [`INBOX_MAX`] wait;
//! their buffers are reused) and the worker is woken through its `mio::Waker` when the inbox
//! was empty; a full inbox drops the frame and counts it. A frame handled from an inbox is
//! never handed on again.
//!
//! Limits: an IPv4 datagram the guest fragments is reassembled by the worker that got its
//! fragments (they are steered by addresses alone), which may open a second UDP binding for
//! that flow; the packet capture needs `--threads 1`; flow limits (`MAX_TCP_FLOWS`, the UDP
//! table) are per worker, the TCP buffer budget is split evenly between the workers.
#![forbid(unsafe_code)]

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tapwire_proto::vnet::VnetHdr;
use tapwire_proto::wire::{TcpInfo, UdpInfo};

use super::host::TOKEN_WAKE;
use super::Engine;

/// Frames waiting in one worker's inbox at most.
pub const INBOX_MAX: usize = 256;
/// How long the first worker waits for another's report.
const REPORT_WAIT: Duration = Duration::from_millis(500);

/// What the first worker asks the others for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Report {
    Stats,
    Connections,
}

#[derive(Default)]
struct Inbox {
    frames: VecDeque<(VnetHdr, Vec<u8>)>,
    /// Buffers of frames already handled, for reuse.
    free: Vec<Vec<u8>>,
    report: Option<Report>,
}

struct Peer {
    inbox: Mutex<Inbox>,
    waker: OnceLock<mio::Waker>,
    answer: Mutex<Option<Value>>,
    answered: Condvar,
}

/// What the workers share; see the module documentation.
pub struct Shared {
    peers: Vec<Peer>,
    /// (guest, remote) keys of the first worker's UDP bindings of port forwards.
    inbound_udp: Mutex<HashSet<(SocketAddr, SocketAddr)>>,
}

/// A lock that a panicked holder left behind is still usable (the data is plain queues).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// The state for `workers` workers.
    pub fn new(workers: usize) -> Arc<Shared> {
        let peers = (0..workers)
            .map(|_| Peer {
                inbox: Mutex::new(Inbox::default()),
                waker: OnceLock::new(),
                answer: Mutex::new(None),
                answered: Condvar::new(),
            })
            .collect();
        Arc::new(Shared {
            peers,
            inbound_udp: Mutex::new(HashSet::new()),
        })
    }

    fn wake(&self, to: usize) {
        if let Some(w) = self.peers.get(to).and_then(|p| p.waker.get()) {
            if let Err(e) = w.wake() {
                tracing::warn!("waking worker {to}: {e}");
            }
        }
    }
}

/// One worker's place among the others.
pub(super) struct Shard {
    pub index: usize,
    shared: Arc<Shared>,
    /// The inbox's frames while they are handled (swapped with it; keeps its allocation).
    local: VecDeque<(VnetHdr, Vec<u8>)>,
    /// Handling a frame from the inbox: it is not handed on again.
    handling: bool,
    /// Frames handed to the first worker, ARP/NA frames copied to the others, and frames
    /// dropped because an inbox was full.
    pub handed: u64,
    pub neighbours: u64,
    pub inbox_full: u64,
}

impl Shard {
    fn workers(&self) -> usize {
        self.shared.peers.len()
    }
}

/// ARP (a request is handed on as a reply) or an IPv6 neighbour advertisement without
/// extension headers.
fn neighbour_news(frame: &[u8]) -> bool {
    match frame.get(12..14) {
        Some([0x08, 0x06]) => true,
        Some([0x86, 0xdd]) => frame.get(20) == Some(&58) && frame.get(54) == Some(&136),
        _ => false,
    }
}

impl Engine {
    /// Make this engine worker `index` of `shared` (its waker is registered here).
    pub fn attach_shard(&mut self, shared: Arc<Shared>, index: usize) -> std::io::Result<()> {
        let waker = mio::Waker::new(self.host.poll.registry(), TOKEN_WAKE)?;
        if let Some(peer) = shared.peers.get(index) {
            let _ = peer.waker.set(waker);
        }
        self.shard = Some(Box::new(Shard {
            index,
            shared,
            local: VecDeque::new(),
            handling: false,
            handed: 0,
            neighbours: 0,
            inbox_full: 0,
        }));
        Ok(())
    }

    /// The first worker, or the only engine.
    pub(super) fn is_first(&self) -> bool {
        self.shard.as_ref().is_none_or(|s| s.index == 0)
    }

    /// A worker other than the first that may hand this frame on (not one from its inbox).
    fn may_hand(&self) -> bool {
        self.shard
            .as_ref()
            .is_some_and(|s| s.index != 0 && !s.handling)
    }

    /// Copy `frame` into worker `to`'s inbox (`as_reply`: an ARP request becomes a reply).
    fn hand(&mut self, to: usize, hdr: &VnetHdr, frame: &[u8], as_reply: bool) {
        let Some(shard) = &mut self.shard else {
            return;
        };
        let Some(peer) = shard.shared.peers.get(to) else {
            return;
        };
        let was_empty = {
            let mut inbox = lock(&peer.inbox);
            if inbox.frames.len() >= INBOX_MAX {
                shard.inbox_full += 1;
                return;
            }
            let mut buf = inbox.free.pop().unwrap_or_default();
            buf.clear();
            buf.extend_from_slice(frame);
            if as_reply && buf.get(12..14) == Some(&[0x08, 0x06]) {
                if let Some(op) = buf.get_mut(21) {
                    *op = 2;
                }
            }
            inbox.frames.push_back((*hdr, buf));
            inbox.frames.len() == 1
        };
        match as_reply {
            true => shard.neighbours += 1,
            false => shard.handed += 1,
        }
        if was_empty {
            shard.shared.wake(to);
        }
    }

    /// A TCP segment for no flow of ours that opens none: the first worker's (see the module
    /// documentation). Returns whether it was handed over.
    pub(super) fn hand_tcp(&mut self, info: &TcpInfo, frame: &[u8], hdr: &VnetHdr) -> bool {
        if !self.may_hand() || (info.syn && !info.ack) {
            return false;
        }
        if self.tcp.flows.find(&(info.src, info.dst)).is_some() {
            return false;
        }
        self.hand(0, hdr, frame, false);
        true
    }

    /// A UDP datagram of one of the first worker's port-forward bindings. Returns whether it
    /// was handed over.
    pub(super) fn hand_udp(&mut self, u: &UdpInfo<'_>, frame: &[u8], hdr: &VnetHdr) -> bool {
        if !self.may_hand() || self.udp.find(&(u.src, u.dst)).is_some() {
            return false;
        }
        let inbound = match &self.shard {
            Some(s) => lock(&s.shared.inbound_udp).contains(&(u.src, u.dst)),
            None => false,
        };
        if inbound {
            self.hand(0, hdr, frame, false);
        }
        inbound
    }

    /// After smoltcp saw `frame`: copy ARP and neighbour advertisements to the other workers.
    pub(super) fn share_neighbours(&mut self, frame: &[u8], hdr: &VnetHdr) {
        let Some(shard) = &self.shard else {
            return;
        };
        if shard.handling || !neighbour_news(frame) {
            return;
        }
        let (me, n) = (shard.index, shard.workers());
        for to in (0..n).filter(|&to| to != me) {
            self.hand(to, hdr, frame, true);
        }
    }

    /// The first worker records (`add`) or forgets a port forward's UDP binding.
    pub(super) fn note_inbound_udp(&self, key: (SocketAddr, SocketAddr), add: bool) {
        if let Some(s) = &self.shard {
            let mut set = lock(&s.shared.inbound_udp);
            if add {
                set.insert(key);
            } else {
                set.remove(&key);
            }
        }
    }

    /// The waker fired: handle the inbox's frames, answer a report request.
    pub(super) fn inbox_ready(&mut self) {
        let Some(mut shard) = self.shard.take() else {
            return;
        };
        let report = {
            let Some(peer) = shard.shared.peers.get(shard.index) else {
                self.shard = Some(shard);
                return;
            };
            let mut inbox = lock(&peer.inbox);
            std::mem::swap(&mut inbox.frames, &mut shard.local);
            inbox.report.take()
        };
        let mut frames = std::mem::take(&mut shard.local);
        shard.handling = true;
        self.shard = Some(shard);
        for (hdr, frame) in &frames {
            self.handle_frame(frame, hdr);
        }
        let Some(mut shard) = self.shard.take() else {
            return;
        };
        shard.handling = false;
        if let Some(peer) = shard.shared.peers.get(shard.index) {
            let mut inbox = lock(&peer.inbox);
            let room = INBOX_MAX.saturating_sub(inbox.free.len());
            inbox
                .free
                .extend(frames.drain(..).map(|(_, buf)| buf).take(room));
        }
        frames.clear();
        shard.local = frames;
        self.shard = Some(shard);
        if let Some(kind) = report {
            let answer = match kind {
                Report::Stats => self.stats_json(),
                Report::Connections => self.connections_json(),
            };
            if let Some(s) = &self.shard {
                if let Some(peer) = s.shared.peers.get(s.index) {
                    *lock(&peer.answer) = Some(answer);
                    peer.answered.notify_all();
                }
            }
        }
    }

    /// The other workers' reports (the first worker, answering the control socket; waits at
    /// most [`REPORT_WAIT`] for each; a worker that does not answer is left out).
    fn gather(&self, kind: Report) -> Vec<(usize, Value)> {
        let Some(shard) = &self.shard else {
            return Vec::new();
        };
        let shared = &shard.shared;
        let others: Vec<usize> = (0..shard.workers()).filter(|&i| i != shard.index).collect();
        for &i in &others {
            if let Some(peer) = shared.peers.get(i) {
                *lock(&peer.answer) = None;
                lock(&peer.inbox).report = Some(kind);
            }
            shared.wake(i);
        }
        let deadline = Instant::now() + REPORT_WAIT;
        let mut out = Vec::new();
        for i in others {
            let Some(peer) = shared.peers.get(i) else {
                continue;
            };
            let mut answer = lock(&peer.answer);
            while answer.is_none() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                answer = peer
                    .answered
                    .wait_timeout(answer, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            match answer.take() {
                Some(v) => out.push((i, v)),
                None => tracing::warn!("worker {i} did not report within {REPORT_WAIT:?}"),
            }
        }
        out
    }

    /// `get_stats`: this engine's counters, with `--threads` the sum over the workers and one
    /// entry per queue.
    pub(super) fn all_stats_json(&self) -> Value {
        let mut total = self.stats_json();
        let Some(shard) = &self.shard else {
            return total;
        };
        let mut queues = vec![queue_entry(shard.index, &total)];
        for (i, v) in self.gather(Report::Stats) {
            queues.push(queue_entry(i, &v));
            add_counters(&mut total, &v);
        }
        if let Some(obj) = total.as_object_mut() {
            obj.insert("threads".to_owned(), json!(shard.workers()));
            obj.insert("queues".to_owned(), Value::Array(queues));
        }
        total
    }

    /// `list_connections`: with `--threads`, every worker's.
    pub(super) fn all_connections_json(&self) -> Value {
        let mut all = self.connections_json();
        for (_, v) in self.gather(Report::Connections) {
            if let (Some(Value::Array(to)), Some(Value::Array(from))) =
                (all.get_mut("connections"), v.get("connections"))
            {
                to.extend(from.iter().cloned());
            }
        }
        all
    }

    /// `"handed"` of `get_stats`: frames handed to the first worker, ARP/NA frames copied,
    /// frames dropped at a full inbox.
    pub(super) fn handed_json(&self) -> Option<Value> {
        self.shard.as_ref().map(
            |s| json!({"frames": s.handed, "neighbours": s.neighbours, "inbox_full": s.inbox_full}),
        )
    }
}

/// One worker's line in `"queues"`.
fn queue_entry(index: usize, stats: &Value) -> Value {
    json!({
        "queue": index,
        "frames_in": stats.get("frames_in"),
        "frames_out": stats.get("frames_out"),
        "flows": stats.get("flows"),
        "flows_total": stats.get("flows_total"),
        "handed": stats.get("handed"),
    })
}

/// Add `from`'s numbers into `into`'s, recursively (other values stay `into`'s).
fn add_counters(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(to), Value::Object(from)) => {
            for (k, v) in from {
                match to.get_mut(k) {
                    Some(t) => add_counters(t, v),
                    None => {
                        to.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t @ Value::Number(_), Value::Number(f)) => {
            if let (Some(a), Some(b)) = (t.as_u64(), f.as_u64()) {
                *t = json!(a.saturating_add(b));
            } else if let (Some(a), Some(b)) = (t.as_f64(), f.as_f64()) {
                *t = json!(a + b);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_recursively_and_the_rest_stays() {
        let mut a = json!({"n": 1, "o": {"x": 2, "s": "a"}, "b": true, "only_a": 5});
        let b = json!({"n": 10, "o": {"x": 3, "s": "b", "y": 4}, "b": false});
        add_counters(&mut a, &b);
        assert_eq!(
            a,
            json!({"n": 11, "o": {"x": 5, "s": "a", "y": 4}, "b": true, "only_a": 5})
        );
    }

    #[test]
    fn neighbour_frames_are_recognised() {
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(neighbour_news(&arp));
        let mut na = vec![0u8; 86];
        na[12..14].copy_from_slice(&[0x86, 0xdd]);
        na[20] = 58;
        na[54] = 136;
        assert!(neighbour_news(&na));
        na[54] = 135; // a solicitation stays with the worker that got it
        assert!(!neighbour_news(&na));
        let mut v4 = vec![0u8; 60];
        v4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert!(!neighbour_news(&v4));
        assert!(!neighbour_news(&[0u8; 5]));
    }
}
