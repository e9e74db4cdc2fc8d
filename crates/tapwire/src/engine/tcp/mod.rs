//! TCP proxying: the engine's table of TCP flows, from the guest's SYN to the flow's removal.
//!
//! # Theory of operation
//! Each flow is a [`TcpSlot`]: the splice ([`TcpFlow`], see `flow`) and a smoltcp socket set
//! holding only that flow's socket, so smoltcp never scans other flows' sockets on its behalf.
//!
//! - **Birth**: a SYN for no known (guest, destination) pair is translated (`host`); a refused
//!   destination gets a RST, an unreachable one an ICMP error. So does a destination whose
//!   host connect was just refused, and a SYN the buffer budget has no room for (see
//!   `budget`). Otherwise the flow's rings are sized by the budget, a non-blocking host
//!   `connect()` starts and a socket listening on exactly that destination, SYN-ACK paused,
//!   takes the SYN (a finished flow's socket with rings of those sizes if one is spare, see
//!   `spare`). At most [`MAX_CONNECTING`] connects are pending: past that the oldest
//!   pending one is given up (its guest gets a RST), so a SYN flood to hosts that never answer
//!   locks nobody out. Port forwards create flows the other way (see `forward`).
//! - **Connecting**: the host socket's first writable edge tells how the connect went
//!   (`getpeername`, then `SO_ERROR` only if it is not connected): success
//!   unpauses the SYN-ACK, failure removes the flow and answers the kept SYN (see
//!   [`GuestSyn`]) the way the host's connect failed.
//! - **Service**: a guest segment or a host readiness edge marks the flow dirty; smoltcp's
//!   timers and the guest timeouts ([`TcpSlot::guest_deadline`]) schedule it (see
//!   `tapwire_proto::schedule`). Each turn the loop services only dirty and due flows: pump
//!   host <-> smoltcp, let smoltcp emit the flow's segments, reschedule. The cost per packet
//!   does not grow with the number of open flows.
//! - **Removal**: when the pump says so (both FINs, a reset, an abort whose RST went out).
//!   The host socket is closed without deregistering (closing its only descriptor takes it
//!   out of the epoll set); the smoltcp socket may be kept as a spare.
#![forbid(unsafe_code)]

mod budget;
pub(super) use budget::budget_share;
mod flow;
mod spare;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;

use mio::Interest;
use smoltcp::iface::SocketSet;
use smoltcp::socket::tcp as smol_tcp;
use smoltcp::time::Instant;
use smoltcp::wire::IpListenEndpoint;
use tapwire_proto::budget::{BufferBudget, Rings};
use tapwire_proto::config::NetConfig;
use tapwire_proto::flow::FlowTable;
use tapwire_proto::nat::Verdict;
use tapwire_proto::refused::RefusedCache;
use tapwire_proto::schedule::Schedule;
use tapwire_proto::vnet;
use tapwire_proto::wire::{DropReason, TcpInfo, Unreachable};

pub use flow::{
    GuestSyn, HostStream, Outcome, Phase, TcpFlow, GUEST_ACK_TIMEOUT, HANDSHAKE_TIMEOUT,
};

use super::host::{token, KIND_TCP};
use super::{dns, udp, Engine};

/// Host connects in progress at once (SYN-flood cap).
pub const MAX_CONNECTING: usize = 1024;
/// TCP flows at once.
pub const MAX_TCP_FLOWS: usize = 32_768;

/// (guest endpoint, destination).
pub(super) type TcpKey = (SocketAddr, SocketAddr);

/// A TCP flow and the one-socket smoltcp set it owns, so smoltcp never scans other flows'
/// sockets on its behalf (see `schedule`).
pub(super) struct TcpSlot {
    pub flow: TcpFlow<mio::net::TcpStream>,
    pub sockets: SocketSet<'static>,
    /// The MSS the guest announced (with offloads, smoltcp is told a bigger one and this is
    /// the segment size of the TSO frames it sends; `u16::MAX`: the MTU decides).
    pub mss: u16,
    /// When the guest's last segment on this flow arrived (engine clock, microseconds).
    pub last_guest_us: i64,
    /// Since when we wait for the guest (see [`TcpSlot::guest_deadline`]).
    waiting_since_us: Option<i64>,
    /// The rings the budget granted (`None`: not budgeted, a port forward's flow).
    pub rings: Option<Rings>,
}

impl TcpSlot {
    /// A slot for `sock`; `flow` builds the flow around the socket's handle.
    pub fn new(
        sock: smol_tcp::Socket<'static>,
        flow: impl FnOnce(smoltcp::iface::SocketHandle) -> TcpFlow<mio::net::TcpStream>,
    ) -> TcpSlot {
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(sock);
        TcpSlot::with_set(sockets, handle, flow)
    }

    /// A slot for the socket `handle` of `sockets` (its only one).
    fn with_set(
        sockets: SocketSet<'static>,
        handle: smoltcp::iface::SocketHandle,
        flow: impl FnOnce(smoltcp::iface::SocketHandle) -> TcpFlow<mio::net::TcpStream>,
    ) -> TcpSlot {
        TcpSlot {
            flow: flow(handle),
            sockets,
            mss: u16::MAX,
            last_guest_us: 0,
            waiting_since_us: None,
            rings: None,
        }
    }

    /// Pump the flow (see [`TcpFlow::pump`]).
    fn pump(&mut self) -> Outcome {
        let sock = self.sockets.get_mut::<smol_tcp::Socket>(self.flow.handle);
        self.flow.pump(sock)
    }

    fn state(&self) -> smol_tcp::State {
        self.sockets
            .get::<smol_tcp::Socket>(self.flow.handle)
            .state()
    }

    /// When the guest must have sent something by (see [`TcpFlow::guest_timeout`]), counted
    /// from its last segment or from when we started waiting, whichever is later. A deadline
    /// already past gives up on the flow (its RST goes out with the next transmit).
    fn guest_deadline(&mut self, now_us: i64) -> Option<i64> {
        let sock = self.sockets.get_mut::<smol_tcp::Socket>(self.flow.handle);
        let Some(limit) = self.flow.guest_timeout(sock) else {
            self.waiting_since_us = None;
            return None;
        };
        let since = *self.waiting_since_us.get_or_insert(now_us);
        let deadline = since.max(self.last_guest_us) + limit.total_micros() as i64;
        if now_us >= deadline {
            self.flow.give_up(sock);
            return None;
        }
        Some(deadline)
    }
}

/// The TCP flows and their scheduling.
pub(super) struct TcpTable {
    pub flows: FlowTable<TcpKey, TcpSlot>,
    /// Flows to service this turn, and when the others next need smoltcp.
    pub sched: Schedule,
    /// Flows whose host connect is pending.
    pub connecting: usize,
    /// Pending host connects in the order they started (with stale entries; see
    /// [`TcpTable::prune_connecting_order`]).
    connecting_order: VecDeque<(usize, TcpKey)>,
    /// The flows being serviced this turn (kept to reuse its allocation).
    indices: Vec<usize>,
    /// Buffer size of the guest-facing sockets (full size; the budget may grant less).
    pub buffer: usize,
    /// The rings of the guest's flows (see `budget`).
    budget: BufferBudget,
    /// Host destinations that just refused a connect (see `budget`).
    refused: RefusedCache,
    /// Host connects started for the guest's SYNs.
    host_connects: u64,
    /// Finished flows' sockets kept for the next flows (see `spare`).
    spares: spare::Spares,
}

impl TcpTable {
    /// A table whose flows' rings are `buffer` bytes at most and `max_buffer_memory` together
    /// (`None`: a default from the RAM size).
    pub fn new(buffer: usize, max_buffer_memory: Option<u64>) -> TcpTable {
        TcpTable {
            flows: FlowTable::new(MAX_TCP_FLOWS),
            sched: Schedule::default(),
            connecting: 0,
            connecting_order: VecDeque::new(),
            indices: Vec::new(),
            buffer,
            budget: budget::budget(max_buffer_memory),
            refused: RefusedCache::default(),
            host_connects: 0,
            spares: spare::Spares::default(),
        }
    }

    /// Whether `entry` of `connecting_order` still names a flow that is connecting.
    fn is_connecting(&self, (idx, key): (usize, TcpKey)) -> bool {
        self.flows.key(idx) == Some(&key)
            && self
                .flows
                .get(idx)
                .is_some_and(|s| s.flow.phase == Phase::Connecting)
    }

    /// Drop `connecting_order` entries at the front that are no longer connecting (keeps the
    /// queue bounded by the handshakes started during the oldest pending one).
    pub fn prune_connecting_order(&mut self) {
        while let Some(&front) = self.connecting_order.front() {
            if self.is_connecting(front) {
                return;
            }
            self.connecting_order.pop_front();
        }
    }

    /// Forget flow `idx` and close its host socket (no deregistration: closing the socket's
    /// only descriptor takes it out of the epoll set).
    fn remove(&mut self, idx: usize) {
        let Some((
            _,
            TcpSlot {
                flow,
                rings,
                sockets,
                ..
            },
        )) = self.flows.remove(idx)
        else {
            return;
        };
        if let Some(rings) = rings {
            self.budget.release(rings);
            let moved = (flow.bytes_to_host, flow.bytes_to_guest);
            self.spares
                .keep(sockets, flow.handle, rings, moved, flow.segments_from_guest);
        }
        self.sched.forget(idx);
        if flow.phase == Phase::Connecting {
            self.connecting -= 1;
        }
        tracing::debug!(
            guest = %flow.guest, dst = %flow.dst,
            to_host = flow.bytes_to_host, to_guest = flow.bytes_to_guest,
            "tcp flow closed"
        );
    }
}

impl Engine {
    pub(super) fn tcp_from_guest(&mut self, info: &TcpInfo, frame: &[u8]) {
        // With offloads, smoltcp must believe the guest takes 64 KiB segments (see `vnet`).
        // A SYN is at most 14 + 60 + 60 bytes (Ethernet, IPv4 with options or IPv6, TCP).
        let mut syn = [0u8; 160];
        if self.link.offload && info.syn && frame.len() <= syn.len() {
            let copy = &mut syn[..frame.len()];
            copy.copy_from_slice(frame);
            let mss = vnet::raise_syn_mss(copy);
            self.tcp_segment(info, copy, mss);
        } else {
            self.tcp_segment(info, frame, None);
        }
    }

    /// A TCP segment from the guest; `mss`: the guest's MSS if this is its SYN or SYN-ACK.
    fn tcp_segment(&mut self, info: &TcpInfo, frame: &[u8], mss: Option<u16>) {
        let key = (info.src, info.dst);
        let idx = match self.tcp.flows.find(&key) {
            Some(idx) => idx,
            None if !info.syn || info.ack => {
                // Not ours (e.g. after removal): smoltcp answers with a RST.
                self.ingress(frame, None);
                return;
            }
            None => match self.new_tcp_flow(info, frame) {
                Some(idx) => idx,
                None => return,
            },
        };
        if let Some(slot) = self.tcp.flows.get_mut(idx) {
            slot.flow.segments_from_guest += 1;
            if let Some(mss) = mss {
                slot.mss = mss;
            }
        }
        self.ingress(frame, Some(idx));
        if info.rst {
            self.check_tcp(idx);
        }
    }

    /// Re-evaluate one flow right away (a RST may have sent a connecting socket back to
    /// LISTEN, where it must not catch another SYN).
    fn check_tcp(&mut self, idx: usize) {
        let Some(slot) = self.tcp.flows.get_mut(idx) else {
            return;
        };
        if slot.pump() == Outcome::Remove {
            self.remove_tcp(idx);
        }
    }

    /// Start a flow for a SYN; its index, or `None` if the SYN was answered (RST/ICMP) or
    /// dropped.
    fn new_tcp_flow(&mut self, info: &TcpInfo, frame: &[u8]) -> Option<usize> {
        let target = match self.host.translate(&self.net, info.dst, self.clock) {
            Verdict::Connect(t) => t,
            Verdict::Refused => {
                self.send_rst(info);
                return None;
            }
            Verdict::Unreachable(code) => {
                self.send_unreachable(code, frame);
                return None;
            }
        };
        // A destination that just refused: answer for it (before making room for a connect).
        let now_ms = self.clock.now_ms();
        if self.tcp.refused.is_refused(target, now_ms) {
            self.send_rst(info);
            return None;
        }
        if self.tcp.connecting >= MAX_CONNECTING {
            // A flood of SYNs to hosts that never answer must not lock everyone out until the
            // host's connect() times out: the oldest pending handshake makes room.
            self.evict_oldest_connecting();
        }
        if self.tcp.connecting >= MAX_CONNECTING || self.tcp.flows.len() >= MAX_TCP_FLOWS {
            self.stats.drops.bump(DropReason::Policy);
            return None;
        }
        let Some(rings) = self.tcp.budget.grant(self.tcp.buffer) else {
            self.stats.drops.bump(DropReason::Policy);
            self.send_rst(info);
            return None;
        };
        // From here on, every way out gives the rings back (`remove` once the flow exists).
        self.tcp.host_connects += 1;
        let host = match start_connect(&self.net, target, !rings.full) {
            Ok(s) => s,
            Err(e) => {
                self.tcp.budget.release(rings);
                tracing::debug!(%target, "connect: {e}");
                self.connect_failed(info, frame, target, &e);
                return None;
            }
        };
        let endpoint = IpListenEndpoint {
            addr: Some(info.dst.ip().into()),
            port: info.dst.port(),
        };
        let Some((sockets, handle)) = self.tcp.spares.take(endpoint, rings) else {
            self.tcp.budget.release(rings);
            self.stats.drops.bump(DropReason::Policy);
            return None;
        };
        let syn = GuestSyn::new(info, frame);
        let mut slot = TcpSlot::with_set(sockets, handle, |handle| {
            TcpFlow::new(host, handle, info.src, info.dst, target, Some(syn))
        });
        slot.rings = Some(rings);
        let Ok(idx) = self.tcp.flows.insert((info.src, info.dst), slot, now_ms) else {
            self.tcp.budget.release(rings);
            self.stats.drops.bump(DropReason::Policy);
            return None;
        };
        let slot = self.tcp.flows.get_mut(idx)?;
        if let Err(e) = self.host.registry().register(
            &mut slot.flow.host,
            token(KIND_TCP, idx),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!("registering a host socket: {e}");
            self.remove_tcp(idx);
            self.stats.drops.bump(DropReason::Policy);
            return None;
        }
        self.tcp.connecting += 1;
        self.tcp
            .connecting_order
            .push_back((idx, (info.src, info.dst)));
        self.stats.tcp_flows += 1;
        Some(idx)
    }

    /// Abandon the oldest pending host connect; the guest gets a RST.
    fn evict_oldest_connecting(&mut self) {
        self.tcp.prune_connecting_order();
        let Some((idx, (guest, dst))) = self.tcp.connecting_order.pop_front() else {
            return;
        };
        let Some(syn) = self.tcp.flows.get(idx).map(|s| s.flow.syn) else {
            return;
        };
        self.remove_tcp(idx);
        self.stats.drops.bump(DropReason::Policy);
        self.send_rst(&syn.info(guest, dst));
    }

    /// The guest's connect must fail the way the host's did. A refused DNS connection moves
    /// the forwarder to the next nameserver for the guest's retry.
    fn connect_failed(&mut self, syn: &TcpInfo, frame: &[u8], target: SocketAddr, e: &io::Error) {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            self.tcp.refused.refused(target, self.clock.now_ms());
            if dns::is_dns(&self.net, syn.dst) {
                self.host.resolver.failed(target.ip());
            }
        }
        match e.raw_os_error() {
            Some(libc::ENETUNREACH) => self.send_unreachable(Unreachable::Net, frame),
            Some(libc::EHOSTUNREACH) => self.send_unreachable(Unreachable::Host, frame),
            _ => self.send_rst(syn),
        }
    }

    /// Readiness of flow `idx`'s host socket: mark the flow, and finish a pending connect.
    pub(super) fn tcp_event(&mut self, idx: usize, ev: &mio::event::Event) {
        let Some(TcpSlot { flow, sockets, .. }) = self.tcp.flows.get_mut(idx) else {
            return;
        };
        self.tcp.sched.mark(idx);
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            flow.host_readable = true;
        }
        if ev.is_read_closed() {
            flow.host_read_closed = true;
        }
        if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
            flow.host_writable = true;
        }
        if flow.phase != Phase::Connecting || !flow.host_writable {
            return;
        }
        // One system call when the connect succeeded (getpeername); SO_ERROR only when it
        // did not, to tell a failure from a spurious edge.
        let result = match flow.host.peer_addr() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => match flow.host.take_error() {
                Ok(Some(e)) | Err(e) => Err(e),
                Ok(None) => Ok(false),
            },
            Err(e) => Err(e),
        };
        match result {
            Ok(true) => {
                let sock = sockets.get_mut::<smol_tcp::Socket>(flow.handle);
                flow.connected(sock);
                self.tcp.connecting -= 1;
            }
            Ok(false) => flow.host_writable = false,
            Err(e) => {
                tracing::debug!(target = %flow.target, "connect: {e}");
                let syn = flow.syn.info(flow.guest, flow.dst);
                let (quote, qlen) = flow.syn.frame(flow.guest.is_ipv6());
                let target = flow.target;
                self.remove_tcp(idx);
                self.connect_failed(&syn, &quote[..qlen], target, &e);
            }
        }
    }

    /// Service the flows that are dirty or due: pump, let smoltcp transmit, reschedule.
    pub(super) fn service_tcp(&mut self) {
        let now = self.clock.now();
        self.tcp.sched.expire(now.total_micros());
        let mut indices = std::mem::take(&mut self.tcp.indices);
        self.tcp.sched.take_dirty(&mut indices);
        for &idx in &indices {
            self.service_flow(idx, now);
        }
        self.tcp.indices = indices;
    }

    fn service_flow(&mut self, idx: usize, now: Instant) {
        let Some(slot) = self.tcp.flows.get_mut(idx) else {
            return;
        };
        if slot.pump() == Outcome::Remove {
            // smoltcp may still owe the guest a segment: in TIME-WAIT, the ACK of the guest's
            // FIN (the host closed first). Let it go out before the socket does.
            self.link
                .egress(now, &mut slot.sockets, slot.mss, &mut self.stats.device);
            self.remove_tcp(idx);
            return;
        }
        let deadline = slot.guest_deadline(now.total_micros());
        self.link
            .egress(now, &mut slot.sockets, slot.mss, &mut self.stats.device);
        // The RST of an aborted flow is out. smoltcp may also have closed the socket while
        // transmitting (a TIME-WAIT that ran out): nothing else would wake the flow, so let it
        // see that now.
        if (slot.flow.phase == Phase::Aborted || slot.state() == smol_tcp::State::Closed)
            && slot.pump() == Outcome::Remove
        {
            self.remove_tcp(idx);
            return;
        }
        // A paused SYN-ACK (host connect pending) makes smoltcp ask for a poll at once,
        // forever: such a flow waits for its host socket or the guest instead.
        if slot.flow.phase != Phase::Connecting {
            if let Some(at) = self.link.iface.poll_at(now, &slot.sockets) {
                self.tcp.sched.schedule(idx, at.total_micros());
            }
        }
        if let Some(at) = deadline {
            self.tcp.sched.schedule(idx, at);
        }
    }

    pub(super) fn remove_tcp(&mut self, idx: usize) {
        self.tcp.remove(idx);
    }
}

/// Start a non-blocking connect to `target` (bound per `--outbound-addr`). `small`: the flow
/// got small rings, so its host socket gets small fixed kernel buffers too (see `budget`).
fn start_connect(
    net: &NetConfig,
    target: SocketAddr,
    small: bool,
) -> io::Result<mio::net::TcpStream> {
    let sock = udp::host_socket(net, target, socket2::Type::STREAM, None)?;
    sock.set_tcp_nodelay(true)?;
    if small {
        // Before connect(), so the window scale announced matches the receive buffer.
        sock.set_recv_buffer_size(budget::SMALL_HOST_BUFFER)?;
        sock.set_send_buffer_size(budget::SMALL_HOST_BUFFER)?;
    }
    match sock.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(std::net::TcpStream::from(
        sock,
    )))
}
