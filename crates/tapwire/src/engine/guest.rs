//! The guest side of the engine: the TAP, the smoltcp interface over it, and the frames we
//! build ourselves.
//!
//! # Theory of operation
//! [`GuestLink`] owns everything that touches the guest's link, so the rest of the engine
//! borrows it as one field next to the flow tables (a flow's smoltcp socket set and the link
//! are disjoint borrows):
//!
//! - **Receive**: the loop reads frames into `rx` (up to 64 KiB even without offloads: a
//!   device left in TSO mode still sends them) and IPv4 fragments are collected in `reasm`.
//! - **smoltcp**: [`GuestLink::ingress`] lends one frame to the interface together with the
//!   socket set it is for (a flow's, or the always-empty set for ARP, pings of our addresses
//!   and segments to answer with a RST); [`GuestLink::egress`] lets smoltcp transmit for one
//!   set. Both build a [`TapDevice`] over the TAP, the transmit buffer and the device counters
//!   on the stack: nothing is queued or allocated.
//! - **Our own frames**: UDP and ICMP replies, ICMP errors, RSTs, DHCP and router
//!   advertisements are built in `out` (UDP/ICMP payloads are received straight into it at
//!   their offset) and written by [`GuestLink::send_out`], which fragments anything over the
//!   MTU through `scratch` (IPv4 with our IP identification, IPv6 with a fragment header).
//!
//! - **Neighbour entries**: every guest frame first passes [`neighbour::Guard`] (see
//!   `Engine::guard_neighbours`): ARP/NDP frames claiming a MAC other than their Ethernet
//!   source never reach smoltcp, and an IP frame that shows a claim smoltcp took to be wrong
//!   is preceded by a synthetic ARP reply / neighbour advertisement with the real MAC.
//!
//! The device counters live in the engine's `Stats` (they are reported with it), so the
//! methods that write take them as an argument, as [`TapDevice::new`] does.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use smoltcp::iface::{Interface, PollResult, SocketSet};
use smoltcp::time::Instant;
use tapwire_proto::config::NetConfig;
use tapwire_proto::neighbour::{self, Check, HEAL_FRAME_MAX};
use tapwire_proto::reassembly::Reassembler;
use tapwire_proto::vnet;
use tapwire_proto::wire::{
    self, DropReason, Link6, LinkInfo, TcpInfo, Unreachable, ETH_LEN, L2, UDP_PAYLOAD,
};

use super::Engine;
use crate::link::device::{self, DeviceStats, TapDevice};
use crate::link::tap::Tap;

/// The TAP, the interface, the frame buffers; see the module documentation.
pub(super) struct GuestLink {
    pub tap: Tap,
    pub iface: Interface,
    /// The set smoltcp sees for frames that belong to no flow (ARP, ping of our addresses,
    /// segments to answer with a RST): always empty.
    pub no_sockets: SocketSet<'static>,
    /// Frame read from the TAP (lent out of the struct while it is handled).
    pub rx: Vec<u8>,
    /// Frame built by smoltcp.
    tx: Vec<u8>,
    /// Frame built for UDP/ICMP replies and errors.
    pub out: Vec<u8>,
    /// Fragmentation scratch.
    scratch: Vec<u8>,
    pub mtu: usize,
    /// The TAP does checksum and TCP segmentation offload (see `vnet`).
    pub offload: bool,
    /// ... and UDP segmentation offload (USO) both ways.
    pub uso: bool,
    /// Our addresses, for `wire::classify`.
    pub info: LinkInfo,
    /// Our MAC and the guest's (learnt from its frames) for the frames we build.
    pub l2: L2,
    /// What smoltcp was told about the guest's MACs, corrected by its IP frames.
    pub neighbours: neighbour::Guard,
    /// Where healing frames are addressed (see [`Engine::guard_neighbours`]).
    ours: neighbour::Ours,
    /// IPv4 reassembly (taken out while a completed packet is handled).
    pub reasm: Option<Reassembler>,
    /// The TAP may have frames to read.
    pub readable: bool,
    ip_ident: u16,
    /// Identification of the IPv6 datagrams we fragment.
    frag_ident6: u32,
}

impl GuestLink {
    /// Set up the link over `tap`: offloads as configured (if the TAP accepts them), buffers,
    /// the smoltcp interface.
    pub fn new(net: &NetConfig, tap: Tap, stats: &mut DeviceStats) -> GuestLink {
        let (offload, uso) = match tap.set_offload(net.offload, net.uso) {
            Ok(uso) => (net.offload, uso),
            Err(e) => {
                tracing::warn!("TUNSETOFFLOAD: {e}; running without TSO/checksum offload");
                (false, false)
            }
        };
        let mtu = net.mtu as usize;
        let frame_len = mtu + ETH_LEN;
        // With offloads, the guest sends and takes TCP frames of up to 64 KiB.
        let big_frame = if offload { vnet::MAX_FRAME } else { frame_len };
        let mut tx = vec![0u8; big_frame];
        let iface = {
            let mut dev = TapDevice::new(&tap, &mut tx, stats, mtu, offload);
            device::new_interface(net, &mut dev, Instant::from_micros(0))
        };
        let info = LinkInfo {
            mac: net.host_mac(),
            gateway: net.gateway(),
            dns: net.dns(),
            ipv6: net.enable_ipv6.then(|| Link6 {
                gateway: net.gateway6(),
                dns: net.dns6(),
                link_local: net.link_local6(),
            }),
        };
        GuestLink {
            tap,
            iface,
            no_sockets: device::new_socket_set(),
            // Even without offloads: a device someone else left in TSO mode still sends them.
            rx: vec![0u8; vnet::MAX_FRAME],
            tx,
            out: vec![0u8; 65_536 + UDP_PAYLOAD],
            scratch: vec![0u8; frame_len],
            mtu,
            offload,
            uso,
            info,
            l2: L2 {
                src: net.host_mac(),
                dst: [0xff; 6],
            },
            neighbours: neighbour::Guard::default(),
            ours: neighbour::Ours {
                mac: net.host_mac(),
                ip4: net.gateway(),
                ip6: net.link_local6(),
            },
            reasm: Some(Reassembler::default()),
            readable: true,
            ip_ident: 0,
            frag_ident6: 0,
        }
    }

    /// The size of the guest-facing TCP sockets' buffers.
    pub fn tcp_buffer(&self) -> usize {
        device::tcp_buffer_size(if self.offload {
            vnet::MAX_FRAME
        } else {
            self.mtu
        })
    }

    /// Hand `frame` to smoltcp with `sockets`, or with the empty set (`None`).
    #[inline]
    pub fn ingress(
        &mut self,
        now: Instant,
        frame: &[u8],
        sockets: Option<&mut SocketSet<'static>>,
        stats: &mut DeviceStats,
    ) {
        let mut dev = TapDevice {
            rx: Some(frame),
            ..TapDevice::new(&self.tap, &mut self.tx, stats, self.mtu, self.offload)
        };
        let sockets = match sockets {
            Some(s) => s,
            None => &mut self.no_sockets,
        };
        self.iface.poll_ingress_single(now, &mut dev, sockets);
    }

    /// Let smoltcp transmit what `sockets` (one flow's set, whose guest announced `mss`)
    /// has queued: each pass emits at most one segment; stop when a pass emits nothing.
    #[inline]
    pub fn egress(
        &mut self,
        now: Instant,
        sockets: &mut SocketSet<'static>,
        mss: u16,
        stats: &mut DeviceStats,
    ) {
        let mut dev = TapDevice {
            mss,
            ..TapDevice::new(&self.tap, &mut self.tx, stats, self.mtu, self.offload)
        };
        for _ in 0..4096 {
            if self.iface.poll_egress(now, &mut dev, sockets) == PollResult::None {
                break;
            }
        }
    }

    /// Interface housekeeping and anything it queued outside the flows' sockets.
    pub fn maintenance(&mut self, now: Instant, stats: &mut DeviceStats) {
        let mut dev = TapDevice::new(&self.tap, &mut self.tx, stats, self.mtu, self.offload);
        self.iface.poll_maintenance(now);
        self.iface.poll_egress(now, &mut dev, &mut self.no_sockets);
    }

    /// Write `self.out[..len]` to the guest, fragmenting if it exceeds the MTU.
    pub fn send_out(&mut self, len: usize, stats: &mut DeviceStats) {
        let ident6 = if self.out.get(12..14) == Some(&[0x86, 0xdd]) && len > self.mtu + ETH_LEN {
            self.frag_ident6 = self.frag_ident6.wrapping_add(1);
            Some(self.frag_ident6)
        } else {
            None
        };
        let tap = &self.tap;
        let frame = &self.out[..len];
        let emit = |f: &[u8]| device::write_frame(tap, f, stats);
        match ident6 {
            Some(ident) => wire::fragment6(frame, self.mtu, ident, &mut self.scratch, emit),
            None => wire::fragment(frame, self.mtu, &mut self.scratch, emit),
        }
    }

    fn next_ident(&mut self) -> u16 {
        self.ip_ident = self.ip_ident.wrapping_add(1);
        self.ip_ident
    }

    /// Send the `len` bytes at `self.out[UDP_PAYLOAD..]` to the guest as a datagram.
    pub fn send_udp(
        &mut self,
        src: SocketAddr,
        dst: SocketAddr,
        len: usize,
        stats: &mut DeviceStats,
    ) {
        let ident = self.next_ident();
        if let Some(n) = wire::finish_udp(&mut self.out, &self.l2, src, dst, len, ident) {
            self.send_out(n, stats);
        }
    }

    /// Send a train of `seg`-byte datagrams that the host kernel coalesced (`UDP_GRO`), `len`
    /// bytes at `buf[udp_payload_offset..]`, to the guest: as one USO frame when the TAP has
    /// USO and the guest can take it (`vnet::offload_udp`: each datagram within the MTU, at
    /// most 64 of them), else datagram by datagram. `buf` and `out` may be swapped.
    pub fn send_udp_train(
        &mut self,
        src: SocketAddr,
        dst: SocketAddr,
        buf: &mut Vec<u8>,
        len: usize,
        seg: u16,
        stats: &mut DeviceStats,
    ) {
        std::mem::swap(&mut self.out, buf);
        if self.uso {
            let ident = self.next_ident();
            let count = len.div_ceil(usize::from(seg).max(1));
            // The guest numbers the datagrams it cuts from `ident` on.
            self.ip_ident = self.ip_ident.wrapping_add(count.saturating_sub(1) as u16);
            if let Some(n) =
                wire::finish_udp_unsummed(&mut self.out, &self.l2, src, dst, len, ident)
            {
                if let Some(hdr) = vnet::offload_udp(&mut self.out[..n], self.mtu, seg) {
                    device::write_frame_with(&self.tap, &hdr, &self.out[..n], stats);
                    stats.uso_out += 1;
                    return;
                }
            }
        }
        // One by one: each datagram copied from the train (now in `buf`) into `out`.
        std::mem::swap(&mut self.out, buf);
        let at = wire::udp_payload_offset(src.is_ipv6());
        for (off, l) in vnet::udp_segments(len, usize::from(seg)) {
            let Some(d) = buf.get(at + off..at + off + l) else {
                break;
            };
            self.out[at..at + l].copy_from_slice(d);
            self.send_udp(src, dst, l, stats);
        }
    }

    /// Answer a guest packet (`frame`) with ICMP destination unreachable.
    pub fn send_unreachable(
        &mut self,
        net: &NetConfig,
        code: Unreachable,
        frame: &[u8],
        stats: &mut DeviceStats,
    ) {
        let Some(ip) = frame.get(ETH_LEN..) else {
            return;
        };
        let n = if frame.get(12..14) == Some(&[0x86, 0xdd]) {
            let code6 = match code {
                Unreachable::Net => 0,
                Unreachable::Host => 3,
                Unreachable::Port => 4,
            };
            wire::icmp6_error(&mut self.out, &self.l2, net.link_local6(), code6, ip)
        } else {
            wire::icmp_error(&mut self.out, &self.l2, net.gateway(), code, ip)
        };
        if let Some(n) = n {
            self.send_out(n, stats);
        }
    }

    /// Answer the guest's SYN `syn` with a RST.
    pub fn send_rst(&mut self, syn: &TcpInfo, stats: &mut DeviceStats) {
        if let Some(n) = wire::tcp_rst(&mut self.out, &self.l2, syn) {
            self.send_out(n, stats);
        }
    }
}

impl Engine {
    /// Keep smoltcp's neighbour entries for the guest honest ([`neighbour::Guard`]): false if
    /// `frame` is an ARP/NDP claim of a MAC that is not its sender's (dropped, counted as
    /// `arp`/`ndp`); an IP frame showing that a claim smoltcp took is wrong first feeds smoltcp
    /// a frame claiming the real MAC, so the guest's traffic is not black-holed.
    #[inline]
    pub(super) fn guard_neighbours(&mut self, frame: &[u8]) -> bool {
        match self.link.neighbours.check(frame) {
            Check::Pass => true,
            Check::Drop => {
                let arp = frame.get(12..14) == Some(&[0x08, 0x06]);
                self.stats.drops.bump(if arp {
                    DropReason::Arp
                } else {
                    DropReason::Ndp
                });
                false
            }
            Check::Heal { ip, mac } => {
                tracing::debug!(%ip, ?mac, "guest neighbour entry corrected from its frames");
                let mut buf = [0u8; HEAL_FRAME_MAX];
                let n = neighbour::heal_frame(&mut buf, &self.link.ours, ip, mac);
                let now = self.clock.now();
                self.link
                    .ingress(now, &buf[..n], None, &mut self.stats.device);
                true
            }
        }
    }

    /// Hand a frame to smoltcp: to flow `idx`'s socket, or to the interface alone (which
    /// answers ARP and pings of our addresses, and a segment for no flow with a RST).
    pub(super) fn ingress(&mut self, frame: &[u8], idx: Option<usize>) {
        let now = self.clock.now();
        let sockets = match idx.and_then(|i| self.tcp.flows.get_mut(i)) {
            Some(slot) => {
                slot.last_guest_us = now.total_micros();
                Some(&mut slot.sockets)
            }
            None => None,
        };
        self.link
            .ingress(now, frame, sockets, &mut self.stats.device);
        if let Some(i) = idx {
            self.tcp.sched.mark(i);
        }
    }

    /// Answer a guest packet (`frame`) with ICMP destination unreachable.
    pub(super) fn send_unreachable(&mut self, code: Unreachable, frame: &[u8]) {
        self.link
            .send_unreachable(&self.net, code, frame, &mut self.stats.device);
    }

    /// Answer the guest's SYN `syn` with a RST.
    pub(super) fn send_rst(&mut self, syn: &TcpInfo) {
        self.link.send_rst(syn, &mut self.stats.device);
    }
}
