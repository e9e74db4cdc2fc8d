//! Batched UDP I/O for the NAT bindings: many datagrams per host-socket syscall.
//!
//! # Theory of operation
//! Per-datagram syscalls, not copying, bound a userspace UDP forwarder, so both directions
//! move datagrams in batches over buffers allocated once ([`UdpBatch::new`]):
//!
//! - **Guest → host.** While the loop drains the TAP (up to `RX_BUDGET` frames a turn), a
//!   datagram for a connected binding is not sent at once: its payload is copied into `arena`
//!   and `(binding, span)` appended to `queue`. When the queue or the arena is full, and after
//!   the last frame of the turn, [`Engine::flush_udp`] sends the queue binding by binding,
//!   each binding's datagrams in their order with one `sendmmsg` per [`mmsg::MAX_BATCH`]
//!   (a stream of datagrams to one peer costs one syscall per batch instead of one each).
//!   A datagram the host socket refuses (full buffer, pending ICMP error) is dropped and
//!   counted, as the unbatched path did. Nothing queued outlives the turn, and the queue is
//!   flushed before any binding is removed (eviction), so a queued span can never reach a
//!   reused slab index.
//! - **Host → guest.** A readable binding is drained with `recvmmsg` into [`RX_BATCH`]
//!   buffers the size of the link's frame buffer, each received at the UDP payload offset.
//!   To write one to the guest the engine swaps it with the link's frame buffer (`out`, where
//!   the headers are built and fragmentation reads from), so no datagram is copied; the
//!   buffers just rotate.
//!
//! The TAP itself has no batched read or write: every frame is still one `read`/`write`.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::AsFd;

use tapwire_proto::wire::{self, DropReason};

use super::udp::UdpHost;
use super::Engine;
use crate::sys::mmsg;

/// Datagrams received per `recvmmsg`.
pub const RX_BATCH: usize = 32;
/// Guest datagrams queued per turn before a flush.
pub const TX_QUEUE: usize = 256;
/// Bytes of guest payload queued before a flush.
pub const TX_ARENA: usize = 512 * 1024;

/// The preallocated batch buffers; see the module documentation.
pub(super) struct UdpBatch {
    /// Receive buffers, each as long as the link's frame buffer.
    rx: Vec<Vec<u8>>,
    rx_lens: [usize; RX_BATCH],
    /// Queued guest payloads.
    arena: Vec<u8>,
    /// (binding index, start in `arena`, length, already sent).
    queue: Vec<(usize, usize, usize, bool)>,
    /// Scratch spans for one binding's `sendmmsg`.
    spans: Vec<(usize, usize)>,
}

impl UdpBatch {
    pub fn new(frame_buffer_len: usize) -> UdpBatch {
        UdpBatch {
            rx: (0..RX_BATCH).map(|_| vec![0u8; frame_buffer_len]).collect(),
            rx_lens: [0; RX_BATCH],
            arena: vec![0u8; TX_ARENA],
            queue: Vec::with_capacity(TX_QUEUE),
            spans: Vec::with_capacity(mmsg::MAX_BATCH),
        }
    }

    fn arena_used(&self) -> usize {
        self.queue.last().map_or(0, |&(_, s, l, _)| s + l)
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

impl Engine {
    /// Queue `payload` for connected binding `idx` (sent by [`flush_udp`](Self::flush_udp)).
    pub(super) fn queue_udp(&mut self, idx: usize, payload: &[u8]) {
        if payload.len() > TX_ARENA {
            // Cannot happen (a datagram is at most 64 KiB) but never index past the arena.
            self.stats.drops.bump(DropReason::Policy);
            return;
        }
        let b = &self.udp_batch;
        if b.queue.len() >= TX_QUEUE || b.arena_used() + payload.len() > TX_ARENA {
            self.flush_udp();
        }
        let b = &mut self.udp_batch;
        let start = b.arena_used();
        b.arena[start..start + payload.len()].copy_from_slice(payload);
        b.queue.push((idx, start, payload.len(), false));
    }

    /// Send every queued guest datagram, binding by binding, in order within each binding.
    pub(super) fn flush_udp(&mut self) {
        let mut queue = std::mem::take(&mut self.udp_batch.queue);
        let mut spans = std::mem::take(&mut self.udp_batch.spans);
        for i in 0..queue.len() {
            let (idx, _, _, done) = queue[i];
            if done {
                continue;
            }
            // This binding's datagrams from here on, in order, a batch at a time.
            let mut j = i;
            while j < queue.len() {
                spans.clear();
                while j < queue.len() && spans.len() < mmsg::MAX_BATCH {
                    let (k, start, len, done) = queue[j];
                    if k == idx && !done {
                        spans.push((start, len));
                        queue[j].3 = true;
                    }
                    j += 1;
                }
                self.send_spans(idx, &spans);
            }
        }
        queue.clear();
        self.udp_batch.queue = queue;
        self.udp_batch.spans = spans;
    }

    /// `sendmmsg` `spans` of the arena on binding `idx`; what does not go is dropped, counted.
    fn send_spans(&mut self, idx: usize, spans: &[(usize, usize)]) {
        if spans.is_empty() {
            return;
        }
        let arena = &self.udp_batch.arena;
        let Some(flow) = self.udp.get_mut(idx) else {
            self.drop_n(spans.len());
            return;
        };
        let UdpHost::Connected(sock) = &flow.host else {
            self.drop_n(spans.len());
            return;
        };
        let mut sent = 0;
        while sent < spans.len() {
            match mmsg::send_batch(sock.as_fd(), arena, &spans[sent..]) {
                Ok(0) => break,
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(dst = %flow.dst, "udp send: {e}");
                    // Skip the datagram the error belongs to; the rest may still go.
                    self.stats.drops.bump(DropReason::Policy);
                    sent += 1;
                    if e.kind() == io::ErrorKind::WouldBlock {
                        // The socket buffer is full: the rest would fail the same way.
                        let rest = spans.len() - sent;
                        for _ in 0..rest {
                            self.stats.drops.bump(DropReason::Policy);
                        }
                        break;
                    }
                }
            }
        }
        flow.datagrams_out += sent as u64;
    }

    fn drop_n(&mut self, n: usize) {
        for _ in 0..n {
            self.stats.drops.bump(DropReason::Policy);
        }
    }

    /// Drain binding `idx`'s socket with `recvmmsg`, writing each datagram to the guest.
    /// `Err` is the socket's error (the caller handles refusals), `Ok` when it would block.
    pub(super) fn udp_recv_batch(&mut self, idx: usize, now_ms: u64) -> io::Result<()> {
        loop {
            let Some(flow) = self.udp.get_mut(idx) else {
                return Ok(());
            };
            let UdpHost::Connected(sock) = &flow.host else {
                return Ok(());
            };
            let at = wire::udp_payload_offset(flow.guest.is_ipv6());
            let b = &mut self.udp_batch;
            let n = match mmsg::recv_batch(sock.as_fd(), &mut b.rx, at, &mut b.rx_lens) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            flow.datagrams_in += n as u64;
            if flow.last_query.is_some() {
                self.host.resolver.pending.answered((flow.guest, flow.dst));
            }
            let (src, dst) = (flow.dst, flow.guest);
            self.udp.touch(idx, now_ms);
            for i in 0..n {
                let len = self.udp_batch.rx_lens[i];
                std::mem::swap(&mut self.link.out, &mut self.udp_batch.rx[i]);
                self.link.send_udp(src, dst, len, &mut self.stats.device);
            }
            // Edge-triggered readiness: go round until the socket would block.
        }
    }
}
