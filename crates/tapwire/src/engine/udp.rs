//! UDP proxy: a NAT table from guest (source, destination) pairs to connected host sockets.
//!
//! # Theory of operation
//! The first datagram from a guest endpoint to a destination creates a binding: a host UDP
//! socket, bound to `--outbound-addr` if given (except for loopback targets), `connect()`ed to
//! the translated destination. The guest's datagrams are queued while the loop drains the TAP
//! and sent with one `sendmmsg` per binding and batch at the end of the turn (see
//! `udp_batch`; if the host socket is full the datagram is dropped and counted, as a router
//! would). DNS queries and replies through port forwards are sent at once. Datagrams the host
//! socket receives are read with `recvmmsg` directly into frame buffers at the UDP payload
//! offset, given headers from the binding's key (source = the address the guest sent to), and
//! written to the TAP; replies bigger than the MTU are fragmented. Because the socket is
//! connected, only the destination's replies come back (port-restricted cone NAT), which is
//! what DNS, NTP, QUIC and games expect.
//!
//! Bindings expire after a quiet spell that depends on what they carried (see
//! `tapwire_proto::udp_lifetime`: 10 s for DNS, 240 s before a reply, 300 s once datagrams
//! moved both ways). The table is capped at [`MAX_FLOWS`]; a new destination in a full table
//! evicts the least recently used binding (preferring one without a reply) instead of being
//! refused.
//!
//! A DNS binding (to the forwarder's address) keeps the guest's latest query: when the
//! upstream nameserver refuses it (ECONNREFUSED), the binding moves to the next nameserver and
//! the query is sent again (see `dns`); with no other nameserver the guest gets an ICMP port
//! unreachable, as for any refused destination. Inbound bindings of UDP port forwards live in
//! the same table (see `forward`) but have no socket of their own.
#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use mio::Interest;
use tapwire_proto::config::NetConfig;
use tapwire_proto::flow::FlowTable;
use tapwire_proto::nat::Verdict;
use tapwire_proto::udp_lifetime::{self, Traffic};
use tapwire_proto::vnet::{self, VnetHdr};
use tapwire_proto::wire::{self, DropReason, UdpInfo, Unreachable, L2};

use super::dns;
use super::forward::{FwdEntry, FwdSocket};
use super::host::{token, KIND_UDP};
use super::Engine;
use crate::sys::mmsg;

pub use crate::sys::socket::{bind_outbound, host_socket};

/// Idle timeout of a binding before it has seen a reply (see `udp_lifetime`).
pub const IDLE_MS: u64 = udp_lifetime::UNREPLIED_MS;
/// Idle timeout of a DNS binding (one query, one answer).
pub const DNS_IDLE_MS: u64 = udp_lifetime::DNS_MS;
/// Most bindings at once.
pub const MAX_FLOWS: usize = 4096;

/// (guest endpoint, destination).
pub(super) type UdpKey = (SocketAddr, SocketAddr);

/// The bindings.
pub(super) type UdpTable = FlowTable<UdpKey, UdpFlow>;

/// The host side of a binding.
pub enum UdpHost {
    /// Outbound: our own socket, connected to the destination.
    Connected(mio::net::UdpSocket),
    /// Inbound through a port forward: replies leave through the forward's socket to `client`.
    Forwarded {
        /// Slab index and id of the forward (the id guards against a reused index).
        fwd: usize,
        id: u64,
        client: SocketAddr,
    },
}

/// One binding.
pub struct UdpFlow {
    pub host: UdpHost,
    /// The guest endpoint and the destination it sent to (the replies' source).
    pub guest: SocketAddr,
    pub dst: SocketAddr,
    /// The timeout before a reply is seen: [`DNS_IDLE_MS`] marks a DNS binding.
    pub idle_ms: u64,
    pub datagrams_out: u64,
    pub datagrams_in: u64,
    /// Its plain datagrams may leave coalesced into `UDP_SEGMENT` trains (`tapwire_proto::
    /// train`; off with `--disable-offload`/`--disable-udp-offload`, and once the host refused
    /// a train: its datagrams exceed the path MTU).
    pub trains: bool,
    /// DNS bindings: the guest's latest query, re-sent to the next nameserver if the current
    /// one refuses it (see `dns`). `None` for other bindings.
    pub last_query: Option<Vec<u8>>,
}

impl UdpFlow {
    /// What the binding's lifetime depends on.
    #[inline]
    pub fn traffic(&self) -> Traffic {
        Traffic {
            dns: self.idle_ms <= DNS_IDLE_MS,
            out: self.datagrams_out,
            into: self.datagrams_in,
        }
    }

    pub fn open(
        net: &NetConfig,
        guest: SocketAddr,
        dst: SocketAddr,
        target: SocketAddr,
        idle_ms: u64,
        gro: bool,
    ) -> io::Result<UdpFlow> {
        let sock = host_socket(net, target, socket2::Type::DGRAM, None)?;
        if gro {
            // Trains of the peer's datagrams go to the guest as USO frames (see `udp_batch`).
            if let Err(e) = mmsg::set_udp_gro(sock.as_fd()) {
                tracing::debug!(%target, "UDP_GRO: {e}");
            }
        }
        match sock.connect(&target.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let sock = mio::net::UdpSocket::from_std(std::net::UdpSocket::from(sock));
        Ok(UdpFlow {
            host: UdpHost::Connected(sock),
            guest,
            dst,
            idle_ms,
            datagrams_out: 0,
            datagrams_in: 0,
            trains: net.udp_offload(),
            last_query: None,
        })
    }
}

impl Engine {
    pub(super) fn udp_from_guest(&mut self, u: &UdpInfo<'_>, frame: &[u8], hdr: &VnetHdr) {
        // A USO frame is a train of `seg`-byte datagrams (see `vnet`).
        let seg = match vnet::udp_gso_from_guest(hdr, u.payload.len()) {
            Ok(seg) => seg,
            Err(_) => return self.stats.drops.bump(DropReason::Gso),
        };
        if seg.is_some() {
            self.stats.uso_in += 1;
        }
        let key = (u.src, u.dst);
        let now_ms = self.clock.now_ms();
        let idx = match self.udp.find(&key) {
            Some(idx) => idx,
            None => {
                let target = match self.host.translate(&self.net, u.dst, self.clock) {
                    Verdict::Connect(t) => t,
                    Verdict::Refused => {
                        return self.send_unreachable(Unreachable::Port, frame);
                    }
                    Verdict::Unreachable(code) => return self.send_unreachable(code, frame),
                };
                let idle = if u.dst.port() == 53 {
                    DNS_IDLE_MS
                } else {
                    IDLE_MS
                };
                let is_dns = dns::is_dns(&self.net, u.dst);
                if self.udp.is_full() && !self.evict_udp() {
                    self.stats.drops.bump(DropReason::Policy);
                    return;
                }
                let gro = self.link.uso;
                let flow = match UdpFlow::open(&self.net, u.src, u.dst, target, idle, gro) {
                    Ok(f) => UdpFlow {
                        last_query: is_dns.then(Vec::new),
                        ..f
                    },
                    Err(e) => {
                        tracing::debug!(%target, "udp socket: {e}");
                        self.stats.drops.bump(DropReason::Policy);
                        return;
                    }
                };
                match self.insert_udp(key, flow, now_ms) {
                    Some(idx) => idx,
                    None => return,
                }
            }
        };
        self.udp.touch(idx, now_ms);
        let Some(flow) = self.udp.get_mut(idx) else {
            return;
        };
        if matches!(flow.host, UdpHost::Connected(_)) && flow.last_query.is_none() {
            return self.queue_udp(idx, u.payload, seg.unwrap_or(0));
        }
        // DNS and port forwards: at once, a train datagram by datagram.
        let size = seg.map_or(u.payload.len().max(1), usize::from);
        for (off, len) in vnet::udp_segments(u.payload.len(), size) {
            let d = &u.payload[off..off + len];
            let sent = match &flow.host {
                UdpHost::Connected(sock) => sock.send(d),
                UdpHost::Forwarded { fwd, id, client } => match self.fwd.socks.get(*fwd) {
                    Some(FwdEntry {
                        id: fid,
                        sock: FwdSocket::Udp(sock),
                        ..
                    }) if fid == id => sock.send_to(d, *client),
                    _ => Err(io::Error::from(io::ErrorKind::NotConnected)),
                },
            };
            match sent {
                Ok(_) => flow.datagrams_out += 1,
                Err(e) => {
                    tracing::debug!(dst = %flow.dst, "udp send: {e}");
                    self.stats.drops.bump(DropReason::Policy);
                }
            }
            if let Some(q) = &mut flow.last_query {
                q.clear();
                q.extend_from_slice(d);
                self.host.resolver.pending.sent(key, now_ms);
            }
        }
    }

    /// Make room in a full table: remove the binding `udp_lifetime::victim` picks (after
    /// sending what is queued, so nothing queued reaches a reused index). False if empty.
    fn evict_udp(&mut self) -> bool {
        let Some(victim) = udp_lifetime::victim(&self.udp, UdpFlow::traffic) else {
            return false;
        };
        self.flush_udp();
        self.stats.udp_evicted += 1;
        self.remove_udp(victim);
        true
    }

    /// Add a binding and register its socket (if it has its own).
    pub(super) fn insert_udp(&mut self, key: UdpKey, flow: UdpFlow, now_ms: u64) -> Option<usize> {
        let Ok(idx) = self.udp.insert(key, flow, now_ms) else {
            self.stats.drops.bump(DropReason::Policy);
            return None;
        };
        if let Some(UdpFlow {
            host: UdpHost::Connected(sock),
            ..
        }) = self.udp.get_mut(idx)
        {
            if self
                .host
                .registry()
                .register(sock, token(KIND_UDP, idx), Interest::READABLE)
                .is_err()
            {
                self.remove_udp(idx);
                self.stats.drops.bump(DropReason::Policy);
                return None;
            }
        }
        self.stats.udp_flows += 1;
        Some(idx)
    }

    pub(super) fn udp_readable(&mut self, idx: usize) {
        let now_ms = self.clock.now_ms();
        loop {
            let Err(e) = self.udp_recv_batch(idx, now_ms) else {
                return;
            };
            let Some(flow) = self.udp.get(idx) else {
                return;
            };
            // E.g. ECONNREFUSED after an ICMP port unreachable: tell the guest.
            tracing::debug!(dst = %flow.dst, "udp recv: {e}");
            if e.kind() != io::ErrorKind::ConnectionRefused {
                return;
            }
            let (guest, dst) = (flow.guest, flow.dst);
            if !self.dns_failover(idx) {
                self.udp_port_unreachable(guest, dst);
            }
        }
    }

    /// The nameserver behind DNS binding `idx` refused: point the binding at the next one and
    /// send it the guest's pending query. False if there is no other nameserver to try.
    pub(super) fn dns_failover(&mut self, idx: usize) -> bool {
        let Some(flow) = self.udp.get(idx) else {
            return false;
        };
        let UdpHost::Connected(sock) = &flow.host else {
            return false;
        };
        if flow.last_query.is_none() {
            return false;
        }
        let Ok(refused) = sock.peer_addr() else {
            return false;
        };
        let dst = flow.dst;
        let Some(next) = self.host.resolver.failed(refused.ip()) else {
            return false;
        };
        let Verdict::Connect(target) = self.host.nat.translate(dst, Some(next)) else {
            return false;
        };
        let Some(flow) = self.udp.get_mut(idx) else {
            return false;
        };
        let (UdpHost::Connected(sock), Some(query)) = (&flow.host, &flow.last_query) else {
            return false;
        };
        // A nameserver of the other family needs another socket: the guest's retry gets one.
        if sock.connect(target).is_err() || sock.send(query).is_err() {
            return false;
        }
        flow.datagrams_out += 1;
        true
    }

    /// Tell the guest that `dst` refused its datagrams (quote a synthetic header).
    fn udp_port_unreachable(&mut self, guest: SocketAddr, dst: SocketAddr) {
        let mut pkt = [0u8; wire::UDP6_PAYLOAD];
        let to_us = L2 {
            src: self.link.l2.dst,
            dst: self.link.l2.src,
        };
        if let Some(n) = wire::finish_udp(&mut pkt, &to_us, guest, dst, 0, 0) {
            let copy = pkt;
            self.send_unreachable(Unreachable::Port, &copy[..n]);
        }
    }

    fn remove_udp(&mut self, idx: usize) {
        if let Some((_, flow)) = self.udp.remove(idx) {
            self.release_udp(flow);
        }
    }

    fn release_udp(&mut self, flow: UdpFlow) {
        match flow.host {
            UdpHost::Connected(mut sock) => {
                let _ = self.host.registry().deregister(&mut sock);
            }
            UdpHost::Forwarded { id, client, .. } => {
                self.fwd.clients.remove(&(id, client));
                self.note_inbound_udp((flow.guest, flow.dst), false);
            }
        }
    }

    /// Close the bindings idle for their timeout.
    pub(super) fn expire_udp(&mut self, now_ms: u64) {
        for (_, flow) in self.udp.expire(now_ms, |f| f.traffic().idle_timeout_ms()) {
            self.release_udp(flow);
        }
    }
}
