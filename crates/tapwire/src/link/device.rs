//! The smoltcp side of the link: the interface and a device adapter over the TAP.
//!
//! # Theory of operation
//! smoltcp terminates the guest's TCP connections and answers ARP and ping for the gateway and
//! DNS addresses; UDP and ICMP proxying bypass it (see `wire`). The interface owns both special
//! addresses and runs with any-IP on, so a segment to *any* destination reaches a socket that
//! listens on that exact (address, port): the engine creates such a socket when it sees a SYN.
//!
//! The device adapter [`TapDevice`] does not queue: the engine reads one frame from the TAP,
//! classifies it, and lends it to smoltcp with [`Interface::poll_ingress_single`] through
//! `rx`; frames smoltcp emits are built in one preallocated buffer and written to the TAP at
//! once. Nothing is allocated per packet. Checksums are verified once by `wire::classify`, so
//! the device tells smoltcp to compute checksums on transmit only.
//!
//! With offloads on (see `vnet`), the device tells smoltcp the link carries 64 KiB frames and
//! not to sum TCP at all: each TCP frame leaves with a partial checksum and, past the guest's
//! MTU, as a TSO super-segment the guest's kernel takes whole.
#![forbid(unsafe_code)]

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, IpListenEndpoint};

use crate::link::capture::Capture;
use crate::link::tap::Tap;
use tapwire_proto::config::NetConfig;
use tapwire_proto::vnet::{self, VnetHdr};
use tapwire_proto::wire::ETH_LEN;

/// Frame counters kept by the device, and the packet capture when one runs (it goes where
/// the counters go: every path that writes a frame has them).
#[derive(Debug, Default)]
pub struct DeviceStats {
    pub frames_out: u64,
    pub bytes_out: u64,
    /// Writes the TAP refused (queue full or namespace gone).
    pub write_errors: u64,
    /// UDP super-datagrams (USO frames) written, each standing for several datagrams.
    pub uso_out: u64,
    /// The packet capture (`--pcap`, `start_capture`); `None` costs one test per frame.
    pub capture: Option<Box<Capture>>,
}

/// A copy of the counters (a report); the capture stays where it is.
impl Clone for DeviceStats {
    fn clone(&self) -> Self {
        DeviceStats {
            frames_out: self.frames_out,
            bytes_out: self.bytes_out,
            write_errors: self.write_errors,
            uso_out: self.uso_out,
            capture: None,
        }
    }
}

/// Record `frame` in the packet capture, if one runs.
#[inline]
pub fn capture(stats: &mut DeviceStats, frame: &[u8]) {
    if let Some(c) = &mut stats.capture {
        c.frame(frame);
    }
}

/// A one-frame-at-a-time view of the TAP for smoltcp.
pub struct TapDevice<'a> {
    pub tap: &'a Tap,
    /// The frame to hand to smoltcp on the next `receive`, if any.
    pub rx: Option<&'a [u8]>,
    /// Transmit buffer, at least MTU + Ethernet header long ([`vnet::MAX_FRAME`] with
    /// offloads).
    pub tx: &'a mut [u8],
    pub mtu: usize,
    /// Checksum and segmentation offload to the guest (the TAP accepted `TUNSETOFFLOAD`).
    pub offload: bool,
    /// The guest's MSS for the flow being served: the segment size of TSO frames.
    pub mss: u16,
    pub stats: &'a mut DeviceStats,
}

impl<'a> TapDevice<'a> {
    /// A device with nothing to receive, serving flows whose MSS the MTU decides.
    pub fn new(
        tap: &'a Tap,
        tx: &'a mut [u8],
        stats: &'a mut DeviceStats,
        mtu: usize,
        offload: bool,
    ) -> TapDevice<'a> {
        TapDevice {
            tap,
            rx: None,
            tx,
            mtu,
            offload,
            mss: u16::MAX,
            stats,
        }
    }

    fn tx_token(&mut self) -> TxToken<'_> {
        TxToken {
            tap: self.tap,
            buf: self.tx,
            offload: self.offload.then_some((self.mtu, self.mss)),
            stats: self.stats,
        }
    }
}

pub struct RxToken<'a>(&'a [u8]);

pub struct TxToken<'a> {
    tap: &'a Tap,
    buf: &'a mut [u8],
    /// With offloads: the guest's MTU and MSS.
    offload: Option<(usize, u16)>,
    stats: &'a mut DeviceStats,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(self.buf.len());
        let frame = &mut self.buf[..len];
        let r = f(frame);
        let hdr = match self.offload {
            Some((mtu, mss)) => vnet::offload_tcp(frame, mtu, mss),
            None => VnetHdr::default(),
        };
        write_frame_with(self.tap, &hdr, frame, self.stats);
        r
    }
}

/// Write one complete frame (checksums done, within the MTU) to the TAP, counting it. Errors
/// are counted, not returned: a full TAP queue drops the frame exactly as a full NIC ring
/// would, and TCP retransmits.
pub fn write_frame(tap: &Tap, frame: &[u8], stats: &mut DeviceStats) {
    write_frame_with(tap, &VnetHdr::default(), frame, stats)
}

/// [`write_frame`] with a virtio-net header asking for offloads.
pub fn write_frame_with(tap: &Tap, hdr: &VnetHdr, frame: &[u8], stats: &mut DeviceStats) {
    match tap.write(hdr, frame) {
        Ok(_) => {
            stats.frames_out += 1;
            stats.bytes_out += frame.len() as u64;
            capture(stats, frame);
        }
        Err(_) => stats.write_errors += 1,
    }
}

impl Device for TapDevice<'_> {
    type RxToken<'b>
        = RxToken<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxToken<'b>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let frame = self.rx.take()?;
        Some((RxToken(frame), self.tx_token()))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        Some(self.tx_token())
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = if self.offload {
            vnet::MAX_FRAME
        } else {
            self.mtu + ETH_LEN
        };
        let mut csum = ChecksumCapabilities::default();
        csum.ipv4 = Checksum::Tx;
        csum.tcp = if self.offload {
            Checksum::None
        } else {
            Checksum::Tx
        };
        csum.udp = Checksum::Tx;
        csum.icmpv4 = Checksum::Tx;
        csum.icmpv6 = Checksum::Tx;
        caps.checksum = csum;
        caps
    }
}

/// Build the interface: our MAC, the gateway and DNS addresses, any-IP.
pub fn new_interface(net: &NetConfig, device: &mut TapDevice<'_>, now: Instant) -> Interface {
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(net.host_mac())));
    config.random_seed = random_seed();
    let mut iface = Interface::new(config, device, now);
    iface.update_ip_addrs(|addrs| {
        // Capacity is 5 (iface-max-addr-count-5): two IPv4 and three IPv6 addresses fit.
        let _ = addrs.push(IpCidr::new(net.gateway().into(), net.prefix));
        let _ = addrs.push(IpCidr::new(net.dns().into(), net.prefix));
        if net.enable_ipv6 {
            let _ = addrs.push(IpCidr::new(net.gateway6().into(), 64));
            let _ = addrs.push(IpCidr::new(net.dns6().into(), 64));
            let _ = addrs.push(IpCidr::new(net.link_local6().into(), 64));
        }
    });
    iface.set_any_ip(true);
    iface
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Buffer sizes of the guest-facing TCP sockets. The receive buffer fixes the window scale.
pub fn tcp_buffer_size(mtu: usize) -> usize {
    if mtu > 16_000 {
        1 << 20
    } else {
        256 << 10
    }
}

/// A guest-facing TCP socket listening on exactly `endpoint`, tuned for a lossless local link:
/// no delayed ACK, no Nagle (the guest already coalesces), SYN-ACK held until the host side
/// connects. `rx`/`tx`: its ring sizes (the TCP budget's grant; `rx` is the guest's window).
pub fn new_tcp_socket(
    endpoint: IpListenEndpoint,
    rx: usize,
    tx: usize,
) -> Option<tcp::Socket<'static>> {
    let mut s = new_tcp_socket_sized(rx, tx);
    s.pause_synack(true);
    s.listen(endpoint).ok()?;
    Some(s)
}

/// Make a finished socket (CLOSED or TIME-WAIT) a fresh one of [`new_tcp_socket`] listening on
/// `endpoint`, rings kept: `listen` resets the connection state and empties both rings; the
/// congestion controller (which `listen` keeps) starts anew. `false`: it cannot listen.
pub fn reuse_tcp_socket(s: &mut tcp::Socket<'static>, endpoint: IpListenEndpoint) -> bool {
    if s.is_open() || s.listen(endpoint).is_err() {
        return false;
    }
    s.set_congestion_control(s.congestion_control());
    s.pause_synack(true);
    true
}

/// A guest-facing TCP socket, tuned as [`new_tcp_socket`], not yet listening or connected
/// (port forwards connect it to the guest).
pub fn new_tcp_socket_unbound(buffer: usize) -> tcp::Socket<'static> {
    new_tcp_socket_sized(buffer, buffer)
}

/// Ring pages are only backed once data is written (see `startup::bound_heap`), so a ring
/// costs memory only as far as it is ever filled.
fn new_tcp_socket_sized(rx: usize, tx: usize) -> tcp::Socket<'static> {
    let rx = tcp::SocketBuffer::new(vec![0u8; rx]);
    let tx = tcp::SocketBuffer::new(vec![0u8; tx]);
    let mut s = tcp::Socket::new(rx, tx);
    s.set_ack_delay(None);
    s.set_nagle_enabled(false);
    // No smoltcp timeout: it counts from the peer's last segment even across idle periods.
    // The engine enforces `tcp::TcpFlow::guest_timeout` instead.
    s
}

/// An empty socket set.
pub fn new_socket_set() -> SocketSet<'static> {
    SocketSet::new(Vec::new())
}
