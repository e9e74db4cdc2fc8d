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
//!   counted, as the unbatched path did. A guest USO frame (a train of datagrams of one
//!   size, see `vnet`) is queued whole and goes as one message with `UDP_SEGMENT`; so do a
//!   binding's plain datagrams that lie back to back in the arena with one size, coalesced
//!   at the flush (`tapwire_proto::train`: one send path in the host kernel instead of one
//!   per datagram). If the host refuses a train (`EMSGSIZE`/`EINVAL`: its datagrams exceed
//!   the path MTU) it is cut here and its datagrams sent one by one, in place, so the order
//!   holds; a binding whose coalesced train was refused is not coalesced again. Nothing
//!   queued outlives the turn, and the queue is flushed before any binding is removed
//!   (eviction), so a queued span can never reach a reused slab index.
//! - **Host → guest.** A readable binding is drained with `recvmmsg` into [`RX_BATCH`]
//!   buffers the size of the link's frame buffer, each received at the UDP payload offset.
//!   To write one to the guest the engine swaps it with the link's frame buffer (`out`, where
//!   the headers are built and fragmentation reads from), so no datagram is copied; the
//!   buffers just rotate. With USO the sockets have `UDP_GRO`: a buffer may hold a train of
//!   the peer's datagrams, which goes to the guest as one USO frame
//!   (`GuestLink::send_udp_train`), or datagram by datagram when the guest cannot take it.
//!   Plain datagrams of one size that follow each other in a batch are copied behind the
//!   first into its buffer and go the same way (`UdpBatch::coalesce`): one TAP write for up
//!   to 64 datagrams, which the guest's kernel cuts back.
//!
//! The TAP itself has no batched read or write: every frame is still one `read`/`write`,
//! so a guest that sends datagram by datagram still costs a TAP read per datagram.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use tapwire_proto::train::Train;
use tapwire_proto::vnet;
use tapwire_proto::wire::{self, DropReason};

use super::udp::UdpHost;
use super::Engine;
use crate::sys::mmsg::{self, Span};

/// The host refused a `UDP_SEGMENT` train as such: its datagrams exceed the path MTU
/// (`EMSGSIZE` since Linux 6.x, `EINVAL` before) or some other GSO rule (`EIO`: a route
/// through IPsec, or a device without checksum offload before Linux 6.11).
fn train_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EMSGSIZE | libc::EIO)
    )
}

/// Send the train `span` of `arena` cut into its datagrams, in order, a `sendmmsg` per
/// [`mmsg::MAX_BATCH`]; returns how many were lost.
fn send_cut(fd: BorrowedFd<'_>, arena: &[u8], span: Span) -> u64 {
    let mut batch = [Span::default(); mmsg::MAX_BATCH];
    let mut n = 0;
    let mut lost = 0;
    let mut flush = |batch: &[Span]| {
        let mut sent = 0;
        while sent < batch.len() {
            match mmsg::send_batch(fd, arena, &batch[sent..]) {
                Ok(0) => break,
                Ok(k) => sent += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The socket buffer is full: the rest would fail the same way.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => sent += 1,
            }
        }
        lost += (batch.len() - sent.min(batch.len())) as u64;
    };
    for (off, len) in vnet::udp_segments(span.len, usize::from(span.seg)) {
        batch[n] = Span {
            start: span.start + off,
            len,
            seg: 0,
        };
        n += 1;
        if n == batch.len() {
            flush(&batch);
            n = 0;
        }
    }
    flush(&batch[..n]);
    lost
}

/// Append train `t` to a binding's batch: as a plain datagram if it holds only one.
fn push_train(spans: &mut Vec<Span>, counts: &mut Vec<u16>, t: Train) {
    spans.push(Span {
        start: t.start,
        len: t.len,
        seg: t.seg,
    });
    counts.push(if t.seg == 0 { 0 } else { t.count });
}

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
    /// The `UDP_GRO` segment size of each received buffer (0: one datagram).
    rx_segs: [u16; RX_BATCH],
    /// Queued guest payloads.
    arena: Vec<u8>,
    /// (binding index, the payload in `arena` and its USO segment size, already sent).
    queue: Vec<(usize, Span, bool)>,
    /// Scratch spans for one binding's `sendmmsg`, and the datagrams of each coalesced train
    /// among them (0: not coalesced).
    spans: Vec<Span>,
    counts: Vec<u16>,
}

impl UdpBatch {
    pub fn new(frame_buffer_len: usize) -> UdpBatch {
        UdpBatch {
            rx: (0..RX_BATCH).map(|_| vec![0u8; frame_buffer_len]).collect(),
            rx_lens: [0; RX_BATCH],
            rx_segs: [0; RX_BATCH],
            arena: vec![0u8; TX_ARENA],
            queue: Vec::with_capacity(TX_QUEUE),
            spans: Vec::with_capacity(mmsg::MAX_BATCH),
            counts: Vec::with_capacity(mmsg::MAX_BATCH),
        }
    }

    fn arena_used(&self) -> usize {
        self.queue.last().map_or(0, |(_, s, _)| s.start + s.len)
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The plain datagrams received in `rx[i..n]` (payloads at `at`) that make a train from
    /// `i` on (`tapwire_proto::train`), copied behind the first one in `rx[i]`. Returns the
    /// index after the last one taken and the train (`seg` 0: `rx[i]` alone).
    fn coalesce(&mut self, i: usize, n: usize, at: usize) -> (usize, Train) {
        let mut train = Train::one(0, self.rx_lens[i]);
        let room = self.rx[i].len().saturating_sub(at);
        let mut k = i + 1;
        // Every length was bounded by its buffer (`recv_batch` passes no `MSG_TRUNC`); checked
        // again so that the copy below cannot index past one.
        while k < n
            && self.rx_segs[k] == 0
            && at + self.rx_lens[k] <= self.rx[k].len()
            && train.len + self.rx_lens[k] <= room
            && train.join(train.len, self.rx_lens[k])
        {
            k += 1;
        }
        let (head, tail) = self.rx.split_at_mut(i + 1);
        let mut off = at + self.rx_lens[i];
        for m in i + 1..k {
            let l = self.rx_lens[m];
            head[i][off..off + l].copy_from_slice(&tail[m - i - 1][at..at + l]);
            off += l;
        }
        (k, train)
    }
}

impl Engine {
    /// Queue `payload` for connected binding `idx` (sent by [`flush_udp`](Self::flush_udp)),
    /// a train of `seg`-byte datagrams unless `seg` is 0.
    pub(super) fn queue_udp(&mut self, idx: usize, payload: &[u8], seg: u16) {
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
        let span = Span {
            start,
            len: payload.len(),
            seg,
        };
        b.queue.push((idx, span, false));
    }

    /// Send every queued guest datagram, binding by binding, in order within each binding;
    /// a binding's plain datagrams that lie back to back in the arena with one size leave as
    /// `UDP_SEGMENT` trains (`tapwire_proto::train`) where its `trains` allows.
    pub(super) fn flush_udp(&mut self) {
        let mut queue = std::mem::take(&mut self.udp_batch.queue);
        let mut spans = std::mem::take(&mut self.udp_batch.spans);
        let mut counts = std::mem::take(&mut self.udp_batch.counts);
        for i in 0..queue.len() {
            let (idx, _, done) = queue[i];
            if done {
                continue;
            }
            // This binding's datagrams from here on, in order, a batch at a time.
            let mut j = i;
            while j < queue.len() {
                // Read per batch: a refused train turns it off for the batches after it.
                let trains = self.udp.get(idx).is_some_and(|f| f.trains);
                spans.clear();
                counts.clear();
                let mut open: Option<Train> = None;
                while j < queue.len() && spans.len() + usize::from(open.is_some()) < mmsg::MAX_BATCH
                {
                    let (k, span, done) = queue[j];
                    j += 1;
                    if k != idx || done {
                        continue;
                    }
                    queue[j - 1].2 = true;
                    if let Some(t) = &mut open {
                        if span.seg == 0 && t.join(span.start, span.len) {
                            continue;
                        }
                    }
                    if let Some(t) = open.take() {
                        push_train(&mut spans, &mut counts, t);
                    }
                    if trains && span.seg == 0 {
                        open = Some(Train::one(span.start, span.len));
                    } else {
                        spans.push(span);
                        counts.push(0);
                    }
                }
                if let Some(t) = open.take() {
                    push_train(&mut spans, &mut counts, t);
                }
                self.send_spans(idx, &spans, &counts);
            }
        }
        queue.clear();
        self.udp_batch.queue = queue;
        self.udp_batch.spans = spans;
        self.udp_batch.counts = counts;
    }

    /// `sendmmsg` `spans` of the arena on binding `idx` (`counts[i]`: the datagrams of a
    /// coalesced train, 0 for a datagram or a guest's USO frame); what does not go is dropped,
    /// counted.
    fn send_spans(&mut self, idx: usize, spans: &[Span], counts: &[u16]) {
        if spans.is_empty() {
            return;
        }
        let datagrams = |i: usize| u64::from(counts[i].max(1));
        let arena = &self.udp_batch.arena;
        let Some(flow) = self.udp.get_mut(idx) else {
            self.drop_n((0..spans.len()).map(datagrams).sum());
            return;
        };
        let UdpHost::Connected(sock) = &flow.host else {
            self.drop_n((0..spans.len()).map(datagrams).sum());
            return;
        };
        let mut sent = 0;
        let mut out = 0;
        while sent < spans.len() {
            if counts[sent] != 0 && !flow.trains {
                // Coalesced before a train of this batch was refused: the host would refuse
                // it too, so it goes one by one without the failing send.
                let lost = send_cut(sock.as_fd(), arena, spans[sent]);
                self.stats.drops.bump_n(DropReason::Policy, lost);
                out += datagrams(sent).saturating_sub(lost);
                sent += 1;
                continue;
            }
            match mmsg::send_batch(sock.as_fd(), arena, &spans[sent..]) {
                Ok(0) => break,
                Ok(n) => {
                    for &c in &counts[sent..(sent + n).min(counts.len())] {
                        out += u64::from(c.max(1));
                        if c != 0 {
                            self.stats.trains_out += 1;
                            self.stats.train_datagrams += u64::from(c);
                        }
                    }
                    sent += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A train the host refused as such, or a coalesced one that met a pending
                // error of the socket (an ICMP refusal, reported and cleared by this send):
                // cut it here, in its place, so its datagrams go one by one as they would have.
                Err(e)
                    if spans[sent].seg != 0
                        && (train_refused(&e)
                            || counts[sent] != 0 && e.kind() != io::ErrorKind::WouldBlock) =>
                {
                    if !train_refused(&e) {
                        tracing::debug!(dst = %flow.dst, "udp send: {e}");
                    } else if counts[sent] != 0 {
                        // Ours, not the guest's: this binding's datagrams go one by one from
                        // now on.
                        self.stats.trains_cut += 1;
                        flow.trains = false;
                    } else {
                        self.stats.uso_cut += 1;
                    }
                    let lost = send_cut(sock.as_fd(), arena, spans[sent]);
                    self.stats.drops.bump_n(DropReason::Policy, lost);
                    out += datagrams(sent).saturating_sub(lost);
                    sent += 1;
                }
                Err(e) => {
                    tracing::debug!(dst = %flow.dst, "udp send: {e}");
                    // Skip the datagram the error belongs to; the rest may still go.
                    self.stats.drops.bump_n(DropReason::Policy, datagrams(sent));
                    sent += 1;
                    if e.kind() == io::ErrorKind::WouldBlock {
                        // The socket buffer is full: the rest would fail the same way.
                        let rest = (sent..spans.len()).map(datagrams).sum();
                        self.stats.drops.bump_n(DropReason::Policy, rest);
                        break;
                    }
                }
            }
        }
        flow.datagrams_out += out;
    }

    fn drop_n(&mut self, n: u64) {
        self.stats.drops.bump_n(DropReason::Policy, n);
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
            let n =
                match mmsg::recv_batch(sock.as_fd(), &mut b.rx, at, &mut b.rx_lens, &mut b.rx_segs)
                {
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
            let mut i = 0;
            while i < n {
                let (len, seg) = (self.udp_batch.rx_lens[i], self.udp_batch.rx_segs[i]);
                let stats = &mut self.stats.device;
                if seg != 0 && len > usize::from(seg) {
                    let buf = &mut self.udp_batch.rx[i];
                    self.link.send_udp_train(src, dst, buf, len, seg, stats);
                    i += 1;
                    continue;
                }
                // Plain datagrams of one size in a row: one USO frame where the guest takes it.
                let fits_mtu = self.link.uso && at - wire::ETH_LEN + len <= self.link.mtu;
                let (k, train) = if fits_mtu {
                    self.udp_batch.coalesce(i, n, at)
                } else {
                    (i + 1, Train::one(0, len))
                };
                if train.seg != 0 {
                    self.stats.trains_in += 1;
                    let buf = &mut self.udp_batch.rx[i];
                    self.link
                        .send_udp_train(src, dst, buf, train.len, train.seg, stats);
                } else {
                    std::mem::swap(&mut self.link.out, &mut self.udp_batch.rx[i]);
                    self.link.send_udp(src, dst, len, stats);
                }
                i = k;
            }
            // Edge-triggered readiness: go round until the socket would block.
        }
    }
}
