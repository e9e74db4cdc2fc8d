//! Frame classification and reply-frame building (sans-IO).
//!
//! # Theory of operation
//! Every frame the guest writes to the TAP passes through [`classify`] exactly once, before
//! anything else looks at it. `classify` validates the frame completely (lengths, IPv4 header
//! checksum, transport checksum, TCP flag sanity) and says who handles it:
//!
//! - [`Class::Stack`]: ARP for our addresses and ICMP echo to the gateway/DNS addresses go to
//!   smoltcp unchanged (it answers them).
//! - [`Class::Tcp`]: a TCP segment; the engine creates a flow for a fresh SYN, then hands the
//!   frame to smoltcp, which terminates the guest's connection.
//! - [`Class::Udp`] / [`Class::Echo`]: datagrams and echo requests that the engine proxies itself,
//!   without smoltcp (no per-packet socket scan, no copies into socket rings).
//! - [`Class::Drop`]: everything else, with a [`DropReason`] the engine counts. Malformed input
//!   never panics and never allocates: once a `new_checked` of smoltcp's wire views succeeds its
//!   accessors cannot panic, and every slice here is bounds-checked.
//!
//! Because validation happens here, smoltcp is configured not to verify checksums again. A
//! TCP/UDP checksum the guest left to offload (see `vnet`) is not checked at all:
//! [`classify_offloaded`].
//!
//! The builders ([`finish_udp`], [`finish_echo_reply`], [`icmp_error`], [`tcp_rst`]) write
//! Ethernet + IPv4 headers around a payload that the caller has already placed at its final
//! offset in the frame buffer (`UDP_PAYLOAD`, `ICMP_OFFSET`), so a datagram read from a host
//! socket lands in the frame once and is never copied again. [`fragment`] splits an IPv4 packet
//! that does not fit the MTU (rare: large UDP replies).
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

use smoltcp::wire::{
    ArpOperation, ArpPacket, EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv6Packet,
    IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket,
};

/// Ethernet header length.
pub const ETH_LEN: usize = 14;
/// Offset of the IPv4 header in a frame.
pub const IP_OFFSET: usize = ETH_LEN;
/// IPv4 header length (we never emit options).
pub const IP_LEN: usize = 20;
/// Offset of an ICMP message in a frame.
pub const ICMP_OFFSET: usize = ETH_LEN + IP_LEN;
/// Offset of a UDP payload in a frame.
pub const UDP_PAYLOAD: usize = ETH_LEN + IP_LEN + 8;
/// IPv6 header length (we never emit extension headers).
pub const IP6_LEN: usize = 40;
/// Offset of a UDP payload in an IPv6 frame.
pub const UDP6_PAYLOAD: usize = ETH_LEN + IP6_LEN + 8;

/// Offset of the transport header in a frame of this family.
pub fn l4_offset(v6: bool) -> usize {
    ETH_LEN + if v6 { IP6_LEN } else { IP_LEN }
}

/// Offset of a UDP payload in a frame of this family.
pub fn udp_payload_offset(v6: bool) -> usize {
    l4_offset(v6) + 8
}

/// Why a frame was dropped. Each has a counter in [`DropCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// Shorter than its headers say.
    Truncated,
    /// Not addressed to our MAC, broadcast or multicast.
    NotOurMac,
    /// An ethertype we do not handle.
    Ethertype,
    /// ARP that is malformed or not for one of our addresses.
    Arp,
    /// IPv4 header invalid (version, lengths).
    BadIpHeader,
    /// IPv4 header, TCP, UDP or ICMP checksum wrong.
    Checksum,
    /// IPv4 options present.
    IpOptions,
    /// IPv4 fragment.
    Fragment,
    /// Source or destination address that cannot be proxied (broadcast, multicast, zero...).
    Address,
    /// Nonsensical TCP flag combination, or a zero port.
    TcpFlags,
    /// Malformed DHCP request.
    Dhcp,
    /// Malformed or unexpected neighbor discovery (NS/NA/RS), or NS for an address not ours.
    Ndp,
    /// IP protocol we do not proxy.
    Protocol,
    /// ICMP other than echo request.
    Icmp,
    /// IPv6 (not enabled).
    Ipv6,
    /// Refused by policy or resource caps (flow table full, no ICMP sockets, no resolver).
    Policy,
    /// A segmentation offload type we did not enable (see `vnet`), or a TAP read shorter than
    /// its virtio-net header.
    Gso,
}

impl DropReason {
    /// All reasons, in counter order.
    pub const ALL: [DropReason; 17] = [
        DropReason::Truncated,
        DropReason::NotOurMac,
        DropReason::Ethertype,
        DropReason::Arp,
        DropReason::BadIpHeader,
        DropReason::Checksum,
        DropReason::IpOptions,
        DropReason::Fragment,
        DropReason::Address,
        DropReason::TcpFlags,
        DropReason::Dhcp,
        DropReason::Ndp,
        DropReason::Protocol,
        DropReason::Icmp,
        DropReason::Ipv6,
        DropReason::Policy,
        DropReason::Gso,
    ];

    /// Stable name, used in statistics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::NotOurMac => "not_our_mac",
            DropReason::Ethertype => "ethertype",
            DropReason::Arp => "arp",
            DropReason::BadIpHeader => "bad_ip_header",
            DropReason::Checksum => "checksum",
            DropReason::IpOptions => "ip_options",
            DropReason::Fragment => "fragment",
            DropReason::Address => "address",
            DropReason::TcpFlags => "tcp_flags",
            DropReason::Dhcp => "dhcp",
            DropReason::Ndp => "ndp",
            DropReason::Protocol => "protocol",
            DropReason::Icmp => "icmp",
            DropReason::Ipv6 => "ipv6",
            DropReason::Policy => "policy",
            DropReason::Gso => "gso",
        }
    }
}

/// One counter per [`DropReason`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DropCounters([u64; DropReason::ALL.len()]);

impl DropCounters {
    pub fn bump(&mut self, reason: DropReason) {
        self.0[reason as usize] += 1;
    }
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize]
    }
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    /// (name, count) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (r.name(), self.get(*r)))
    }
}

/// What the classifier needs to know about the virtual link.
#[derive(Debug, Clone, Copy)]
pub struct LinkInfo {
    /// Our MAC (the gateway's).
    pub mac: [u8; 6],
    /// Gateway address (network+2).
    pub gateway: Ipv4Addr,
    /// DNS forwarder address (network+3).
    pub dns: Ipv4Addr,
    /// IPv6 addresses, when IPv6 is enabled.
    pub ipv6: Option<Link6>,
}

/// Our IPv6 addresses on the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link6 {
    /// Gateway (prefix::2), stands for host ::1.
    pub gateway: Ipv6Addr,
    /// DNS forwarder (prefix::3).
    pub dns: Ipv6Addr,
    /// Our link-local address: the router address in RAs.
    pub link_local: Ipv6Addr,
}

impl Link6 {
    /// Whether `a` is one of our own IPv6 addresses.
    pub fn is_ours(&self, a: Ipv6Addr) -> bool {
        a == self.gateway || a == self.dns || a == self.link_local
    }
}

/// Flags of a TCP segment that matter to flow creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpInfo {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub syn: bool,
    pub ack: bool,
    pub rst: bool,
    pub fin: bool,
    pub seq: u32,
    /// Length of the TCP segment's data plus SYN/FIN (sequence space consumed).
    pub seq_len: u32,
}

/// A UDP datagram from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpInfo<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: &'a [u8],
}

/// An ICMP echo request from the guest to a non-local address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoInfo<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ident: u16,
    pub seq: u16,
    /// The whole ICMP message (header included).
    pub message: &'a [u8],
}

/// The classifier's verdict; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class<'a> {
    Stack,
    Tcp(TcpInfo),
    Udp(UdpInfo<'a>),
    Echo(EchoInfo<'a>),
    /// A DHCP request (UDP 68 -> 67); the payload.
    Dhcp(&'a [u8]),
    /// An IPv6 router solicitation from this address (unspecified before SLAAC).
    RouterSolicit(Ipv6Addr),
    Drop(DropReason),
}

fn unicast(addr: Ipv4Addr) -> bool {
    !(addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast())
}

/// Classify and validate one frame from the guest.
pub fn classify<'a>(frame: &'a [u8], link: &LinkInfo) -> Class<'a> {
    classify_offloaded(frame, link, false)
}

/// [`classify`] a frame whose TCP/UDP checksum the guest left partial (`NEEDS_CSUM` in its
/// virtio-net header, see `vnet`) when `partial`: that checksum is not verified (it covers
/// only the pseudo-header); everything else is.
pub fn classify_offloaded<'a>(frame: &'a [u8], link: &LinkInfo, partial: bool) -> Class<'a> {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Class::Drop(DropReason::Truncated);
    };
    let dst_mac = eth.dst_addr();
    if dst_mac != EthernetAddress(link.mac) && !dst_mac.is_broadcast() && !dst_mac.is_multicast() {
        return Class::Drop(DropReason::NotOurMac);
    }
    let payload = &frame[ETH_LEN..];
    match eth.ethertype() {
        EthernetProtocol::Arp => classify_arp(payload, link),
        EthernetProtocol::Ipv4 => classify_ipv4(payload, link, partial),
        EthernetProtocol::Ipv6 => match &link.ipv6 {
            Some(l6) => classify_ipv6(payload, l6, partial),
            None => Class::Drop(DropReason::Ipv6),
        },
        _ => Class::Drop(DropReason::Ethertype),
    }
}

fn classify_arp<'a>(payload: &'a [u8], link: &LinkInfo) -> Class<'a> {
    let Ok(arp) = ArpPacket::new_checked(payload) else {
        return Class::Drop(DropReason::Truncated);
    };
    if arp.hardware_len() != 6 || arp.protocol_len() != 4 {
        return Class::Drop(DropReason::Arp);
    }
    let Ok(target) = <[u8; 4]>::try_from(arp.target_protocol_addr()) else {
        return Class::Drop(DropReason::Arp);
    };
    let target = Ipv4Addr::from(target);
    let op_ok = matches!(arp.operation(), ArpOperation::Request | ArpOperation::Reply);
    if op_ok && (target == link.gateway || target == link.dns) {
        Class::Stack
    } else {
        Class::Drop(DropReason::Arp)
    }
}

fn classify_ipv4<'a>(payload: &'a [u8], link: &LinkInfo, partial: bool) -> Class<'a> {
    let Ok(ip) = Ipv4Packet::new_checked(payload) else {
        return Class::Drop(DropReason::Truncated);
    };
    if ip.version() != 4 || usize::from(ip.header_len()) < IP_LEN {
        return Class::Drop(DropReason::BadIpHeader);
    }
    if !ip.verify_checksum() {
        return Class::Drop(DropReason::Checksum);
    }
    if usize::from(ip.header_len()) != IP_LEN {
        return Class::Drop(DropReason::IpOptions);
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Class::Drop(DropReason::Fragment);
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    // DHCP comes from 0.0.0.0 to the broadcast address; checked with the UDP ports below.
    let maybe_dhcp = ip.next_header() == IpProtocol::Udp
        && (src.is_unspecified() || unicast(src))
        && (dst.is_broadcast() || dst == link.gateway);
    if !maybe_dhcp && (!unicast(src) || !unicast(dst) || src.is_loopback() || dst.is_loopback()) {
        return Class::Drop(DropReason::Address);
    }
    let (src_ip, dst_ip) = (IpAddress::Ipv4(src), IpAddress::Ipv4(dst));
    let body = ip.payload();
    match ip.next_header() {
        IpProtocol::Tcp => classify_tcp(body, src.into(), dst.into(), partial),
        IpProtocol::Udp => {
            let Ok(udp) = UdpPacket::new_checked(body) else {
                return Class::Drop(DropReason::Truncated);
            };
            if maybe_dhcp && udp.src_port() == 68 && udp.dst_port() == 67 {
                if !partial && udp.checksum() != 0 && !udp.verify_checksum(&src_ip, &dst_ip) {
                    return Class::Drop(DropReason::Checksum);
                }
                return Class::Dhcp(body.get(8..usize::from(udp.len())).unwrap_or(&[]));
            }
            if !unicast(src) || !unicast(dst) {
                return Class::Drop(DropReason::Address);
            }
            classify_udp(body, src.into(), dst.into(), partial)
        }
        IpProtocol::Icmp => {
            if body.len() < 8 {
                return Class::Drop(DropReason::Truncated);
            }
            if checksum(body, 0) != 0 {
                return Class::Drop(DropReason::Checksum);
            }
            // Echo request (type 8, code 0); anything else is not proxied.
            if body[0] != 8 || body[1] != 0 {
                return Class::Drop(DropReason::Icmp);
            }
            if dst == link.gateway || dst == link.dns {
                return Class::Stack;
            }
            Class::Echo(EchoInfo {
                src,
                dst,
                ident: u16::from_be_bytes([body[4], body[5]]),
                seq: u16::from_be_bytes([body[6], body[7]]),
                message: body,
            })
        }
        _ => Class::Drop(DropReason::Protocol),
    }
}

/// A TCP segment (`body`, bounded by the IP length) between two addresses of one family.
fn classify_tcp(body: &[u8], src: IpAddr, dst: IpAddr, partial: bool) -> Class<'_> {
    let Ok(tcp) = TcpPacket::new_checked(body) else {
        return Class::Drop(DropReason::Truncated);
    };
    if !partial && !tcp.verify_checksum(&src.into(), &dst.into()) {
        return Class::Drop(DropReason::Checksum);
    }
    let info = TcpInfo {
        src: SocketAddr::new(src, tcp.src_port()),
        dst: SocketAddr::new(dst, tcp.dst_port()),
        syn: tcp.syn(),
        ack: tcp.ack(),
        rst: tcp.rst(),
        fin: tcp.fin(),
        seq: tcp.seq_number().0 as u32,
        seq_len: u32::try_from(tcp.segment_len()).unwrap_or(u32::MAX),
    };
    let nonsense = info.src.port() == 0
        || info.dst.port() == 0
        || (info.syn && (info.fin || info.rst))
        || (info.rst && info.fin)
        || (!info.syn && !info.rst && !info.ack);
    if nonsense {
        Class::Drop(DropReason::TcpFlags)
    } else {
        Class::Tcp(info)
    }
}

/// A UDP datagram between two unicast addresses. IPv6 requires a checksum.
fn classify_udp(body: &[u8], src: IpAddr, dst: IpAddr, partial: bool) -> Class<'_> {
    let Ok(udp) = UdpPacket::new_checked(body) else {
        return Class::Drop(DropReason::Truncated);
    };
    let ok = match (src, udp.checksum()) {
        _ if partial => true,
        (IpAddr::V4(_), 0) => true,
        (IpAddr::V6(_), 0) => false,
        _ => udp.verify_checksum(&src.into(), &dst.into()),
    };
    if !ok {
        return Class::Drop(DropReason::Checksum);
    }
    if udp.src_port() == 0 || udp.dst_port() == 0 {
        return Class::Drop(DropReason::Address);
    }
    Class::Udp(UdpInfo {
        src: SocketAddr::new(src, udp.src_port()),
        dst: SocketAddr::new(dst, udp.dst_port()),
        payload: body.get(8..usize::from(udp.len())).unwrap_or(&[]),
    })
}

fn unicast6(a: Ipv6Addr) -> bool {
    !(a.is_unspecified() || a.is_multicast() || a.is_loopback())
}

fn classify_ipv6<'a>(payload: &'a [u8], link: &Link6, partial: bool) -> Class<'a> {
    let Ok(ip) = Ipv6Packet::new_checked(payload) else {
        return Class::Drop(DropReason::Truncated);
    };
    if ip.version() != 6 {
        return Class::Drop(DropReason::BadIpHeader);
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if src.is_multicast() || src.is_loopback() {
        return Class::Drop(DropReason::Address);
    }
    let body = ip.payload();
    match ip.next_header() {
        IpProtocol::Tcp | IpProtocol::Udp if !unicast6(src) || !unicast6(dst) => {
            Class::Drop(DropReason::Address)
        }
        IpProtocol::Tcp => classify_tcp(body, src.into(), dst.into(), partial),
        IpProtocol::Udp => classify_udp(body, src.into(), dst.into(), partial),
        IpProtocol::Icmpv6 => {
            let Ok(icmp) = Icmpv6Packet::new_checked(body) else {
                return Class::Drop(DropReason::Truncated);
            };
            if !icmp.verify_checksum(&src, &dst) {
                return Class::Drop(DropReason::Checksum);
            }
            let ndp_ok = ip.hop_limit() == 255 && body[1] == 0;
            match body[0] {
                // Echo request to one of our addresses: smoltcp answers.
                128 if link.is_ours(dst) => Class::Stack,
                133 if ndp_ok && body.len() >= 8 => Class::RouterSolicit(src),
                // Neighbor solicitation for one of our addresses (not the guest's DAD probes).
                135 if ndp_ok && body.len() >= 24 => {
                    let mut t = [0u8; 16];
                    t.copy_from_slice(&body[8..24]);
                    if link.is_ours(Ipv6Addr::from(t)) {
                        Class::Stack
                    } else {
                        Class::Drop(DropReason::Ndp)
                    }
                }
                136 if ndp_ok && body.len() >= 24 => Class::Stack,
                133 | 135 | 136 => Class::Drop(DropReason::Ndp),
                _ => Class::Drop(DropReason::Icmp),
            }
        }
        IpProtocol::HopByHop => Class::Drop(DropReason::IpOptions),
        IpProtocol::Ipv6Frag => Class::Drop(DropReason::Fragment),
        _ => Class::Drop(DropReason::Protocol),
    }
}

/// Internet checksum (RFC 1071) of `data`, starting from a partial sum `initial`.
/// Returns the folded, complemented value: 0 for a buffer whose checksum field is right.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    use smoltcp::wire::checksum as ck;
    let initial = (initial & 0xffff) + (initial >> 16);
    let initial = ((initial & 0xffff) + (initial >> 16)) as u16;
    !ck::combine(&[ck::data(data), initial])
}

fn pseudo_header_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let words = |a: IpAddr| -> u32 {
        match a {
            IpAddr::V4(a) => a
                .octets()
                .chunks(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
                .sum(),
            IpAddr::V6(a) => a
                .octets()
                .chunks(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
                .sum(),
        }
    };
    words(src) + words(dst) + u32::from(proto) + (len as u32 & 0xffff) + (len as u32 >> 16)
}

/// Ethernet addressing of frames sent to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2 {
    /// Our MAC.
    pub src: [u8; 6],
    /// The guest's MAC (learned from its frames).
    pub dst: [u8; 6],
}

/// Write Ethernet + IPv4 headers for an IP payload of `payload_len` bytes already at
/// `frame[ICMP_OFFSET..]`. Returns the frame length, or `None` if the frame buffer is too small
/// or the packet would exceed 65535 bytes.
fn finish_ipv4(
    frame: &mut [u8],
    l2: &L2,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    payload_len: usize,
    ident: u16,
) -> Option<usize> {
    let total = IP_LEN + payload_len;
    let frame_len = ETH_LEN + total;
    if total > usize::from(u16::MAX) || frame.len() < frame_len {
        return None;
    }
    frame[0..6].copy_from_slice(&l2.dst);
    frame[6..12].copy_from_slice(&l2.src);
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut frame[IP_OFFSET..IP_OFFSET + IP_LEN];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&ident.to_be_bytes());
    ip[6..8].copy_from_slice(&[0, 0]);
    ip[8] = 64;
    ip[9] = proto;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    Some(frame_len)
}

/// Write Ethernet + IPv6 headers for a payload of `payload_len` bytes already at
/// `frame[l4_offset(true)..]`.
fn finish_ipv6(
    frame: &mut [u8],
    l2: &L2,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    proto: u8,
    payload_len: usize,
) -> Option<usize> {
    let frame_len = ETH_LEN + IP6_LEN + payload_len;
    if payload_len > usize::from(u16::MAX) || frame.len() < frame_len {
        return None;
    }
    frame[0..6].copy_from_slice(&l2.dst);
    frame[6..12].copy_from_slice(&l2.src);
    frame[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    let ip = &mut frame[ETH_LEN..ETH_LEN + IP6_LEN];
    ip[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    ip[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
    ip[6] = proto;
    ip[7] = if proto == 58 { 255 } else { 64 };
    ip[8..24].copy_from_slice(&src.octets());
    ip[24..40].copy_from_slice(&dst.octets());
    Some(frame_len)
}

/// Ethernet + IP headers for either family (`None` if the families differ).
fn finish_ip(
    frame: &mut [u8],
    l2: &L2,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    payload_len: usize,
    ident: u16,
) -> Option<usize> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => finish_ipv4(frame, l2, s, d, proto, payload_len, ident),
        (IpAddr::V6(s), IpAddr::V6(d)) => finish_ipv6(frame, l2, s, d, proto, payload_len),
        _ => None,
    }
}

/// Complete a UDP frame whose payload (`len` bytes) is already at
/// `frame[udp_payload_offset(v6)..]`. Returns the frame length (`None` if it cannot fit in an
/// IP packet or the buffer, or the families differ).
pub fn finish_udp(
    frame: &mut [u8],
    l2: &L2,
    src: SocketAddr,
    dst: SocketAddr,
    len: usize,
    ident: u16,
) -> Option<usize> {
    let v6 = src.is_ipv6();
    let (l4, payload) = (l4_offset(v6), udp_payload_offset(v6));
    let udp_len = 8 + len;
    if udp_len > usize::from(u16::MAX) - IP_LEN || frame.len() < payload + len {
        return None;
    }
    let udp = &mut frame[l4..payload + len];
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    let pseudo = pseudo_header_sum(src.ip(), dst.ip(), 17, udp_len);
    let mut c = checksum(udp, pseudo);
    if c == 0 {
        c = 0xffff;
    }
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    finish_ip(frame, l2, src.ip(), dst.ip(), 17, udp_len, ident)
}

/// Complete a DHCP reply (payload of `len` bytes at `frame[UDP_PAYLOAD..]`) broadcast from
/// `server`:67 to 255.255.255.255:68, Ethernet broadcast.
pub fn finish_dhcp(
    frame: &mut [u8],
    our_mac: [u8; 6],
    server: Ipv4Addr,
    len: usize,
) -> Option<usize> {
    let l2 = L2 {
        src: our_mac,
        dst: [0xff; 6],
    };
    finish_udp(
        frame,
        &l2,
        SocketAddrV4::new(server, 67).into(),
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 68).into(),
        len,
        0,
    )
}

/// Complete an ICMP echo reply whose message (`len` bytes, header included, as a host ICMP
/// datagram socket returns it) is at `frame[ICMP_OFFSET..]`: restore the guest's identifier,
/// fix the checksum, add IPv4 + Ethernet. `None` if the message is not an echo reply.
pub fn finish_echo_reply(
    frame: &mut [u8],
    l2: &L2,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ident: u16,
    len: usize,
) -> Option<usize> {
    let msg = frame.get_mut(ICMP_OFFSET..ICMP_OFFSET + len)?;
    if len < 8 || msg[0] != 0 {
        return None;
    }
    msg[4..6].copy_from_slice(&ident.to_be_bytes());
    msg[2..4].copy_from_slice(&[0, 0]);
    let c = checksum(msg, 0);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    finish_ipv4(frame, l2, src, dst, 1, len, 0)
}

/// ICMP destination-unreachable codes we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Unreachable {
    Net = 0,
    Host = 1,
    Port = 3,
}

/// Build an ICMP destination-unreachable frame from `router` to the sender of `offending`
/// (an IPv4 packet from the guest; its header and first 8 payload bytes are quoted).
pub fn icmp_error(
    out: &mut [u8],
    l2: &L2,
    router: Ipv4Addr,
    code: Unreachable,
    offending: &[u8],
) -> Option<usize> {
    let quote_len = offending.len().min(IP_LEN + 8);
    if quote_len < IP_LEN {
        return None;
    }
    let guest = Ipv4Addr::new(offending[12], offending[13], offending[14], offending[15]);
    let len = 8 + quote_len;
    let msg = out.get_mut(ICMP_OFFSET..ICMP_OFFSET + len)?;
    msg[0] = 3;
    msg[1] = code as u8;
    msg[2..8].copy_from_slice(&[0; 6]);
    msg[8..].copy_from_slice(&offending[..quote_len]);
    let c = checksum(msg, 0);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    finish_ipv4(out, l2, router, guest, 1, len, 0)
}

/// Build a RST|ACK answering a guest SYN (`syn` from [`classify`]): the guest sees
/// "connection refused".
pub fn tcp_rst(out: &mut [u8], l2: &L2, syn: &TcpInfo) -> Option<usize> {
    let l4 = l4_offset(syn.src.is_ipv6());
    let seg = out.get_mut(l4..l4 + 20)?;
    seg[0..2].copy_from_slice(&syn.dst.port().to_be_bytes());
    seg[2..4].copy_from_slice(&syn.src.port().to_be_bytes());
    seg[4..8].copy_from_slice(&0u32.to_be_bytes());
    seg[8..12].copy_from_slice(&syn.seq.wrapping_add(syn.seq_len).to_be_bytes());
    seg[12] = 5 << 4;
    seg[13] = 0x14; // RST | ACK
    seg[14..20].copy_from_slice(&[0; 6]);
    let pseudo = pseudo_header_sum(syn.dst.ip(), syn.src.ip(), 6, 20);
    let c = checksum(seg, pseudo);
    seg[16..18].copy_from_slice(&c.to_be_bytes());
    finish_ip(out, l2, syn.dst.ip(), syn.src.ip(), 6, 20, 0)
}

/// Build an ICMPv6 destination unreachable (type 1; `code` 0 no route, 3 address
/// unreachable, 4 port unreachable) from `router` to the sender of `offending` (an IPv6
/// packet from the guest; its start is quoted).
pub fn icmp6_error(
    out: &mut [u8],
    l2: &L2,
    router: Ipv6Addr,
    code: u8,
    offending: &[u8],
) -> Option<usize> {
    if offending.len() < IP6_LEN {
        return None;
    }
    let quote_len = offending.len().min(512);
    let mut g = [0u8; 16];
    g.copy_from_slice(&offending[8..24]);
    let guest = Ipv6Addr::from(g);
    let l4 = l4_offset(true);
    let len = 8 + quote_len;
    let msg = out.get_mut(l4..l4 + len)?;
    msg[0] = 1;
    msg[1] = code;
    msg[2..8].copy_from_slice(&[0; 6]);
    msg[8..].copy_from_slice(&offending[..quote_len]);
    let pseudo = pseudo_header_sum(router.into(), guest.into(), 58, len);
    let c = checksum(msg, pseudo);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    finish_ipv6(out, l2, router, guest, 58, len)
}

/// What a router advertisement announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterAdvert {
    /// Our link-local address (the router).
    pub router: Ipv6Addr,
    /// The /64 prefix for SLAAC.
    pub prefix: Ipv6Addr,
    pub mtu: u32,
    /// RDNSS option (RFC 8106), if DNS is enabled.
    pub dns: Option<Ipv6Addr>,
}

/// Build a router advertisement to `dst` (ff02::1 for unsolicited ones) with the prefix
/// (on-link, autonomous), MTU, source link-layer address and RDNSS options.
pub fn router_advert(out: &mut [u8], l2: &L2, ra: &RouterAdvert, dst: Ipv6Addr) -> Option<usize> {
    let l4 = l4_offset(true);
    let mut len = 16; // type, code, checksum, hop limit, flags, lifetime, reachable, retrans
    let opts_len = 8 + 8 + 32 + if ra.dns.is_some() { 24 } else { 0 };
    let msg = out.get_mut(l4..l4 + len + opts_len)?;
    msg.fill(0);
    msg[0] = 134;
    msg[4] = 64; // cur hop limit
    msg[6..8].copy_from_slice(&1800u16.to_be_bytes()); // router lifetime
                                                       // Source link-layer address.
    msg[len] = 1;
    msg[len + 1] = 1;
    msg[len + 2..len + 8].copy_from_slice(&l2.src);
    len += 8;
    // MTU.
    msg[len] = 5;
    msg[len + 1] = 1;
    msg[len + 4..len + 8].copy_from_slice(&ra.mtu.to_be_bytes());
    len += 8;
    // Prefix information: /64, on-link + autonomous.
    msg[len] = 3;
    msg[len + 1] = 4;
    msg[len + 2] = 64;
    msg[len + 3] = 0xc0;
    msg[len + 4..len + 8].copy_from_slice(&86_400u32.to_be_bytes());
    msg[len + 8..len + 12].copy_from_slice(&14_400u32.to_be_bytes());
    msg[len + 16..len + 32].copy_from_slice(&ra.prefix.octets());
    len += 32;
    if let Some(dns) = ra.dns {
        msg[len] = 25;
        msg[len + 1] = 3;
        msg[len + 4..len + 8].copy_from_slice(&1800u32.to_be_bytes());
        msg[len + 8..len + 24].copy_from_slice(&dns.octets());
        len += 24;
    }
    let pseudo = pseudo_header_sum(ra.router.into(), dst.into(), 58, len);
    let c = checksum(&msg[..len], pseudo);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    finish_ipv6(out, l2, ra.router, dst, 58, len)
}

/// The Ethernet address of an IPv6 multicast group (33:33 + low 32 bits).
pub fn multicast_mac(group: Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// Split the IPv4 packet in `frame` (Ethernet + IPv4 without options) into fragments whose IP
/// packets fit `mtu`, calling `emit` with each fragment frame (built in `scratch`). Packets that
/// already fit are emitted as they are.
pub fn fragment(frame: &[u8], mtu: usize, scratch: &mut [u8], mut emit: impl FnMut(&[u8])) {
    if frame.len() < ICMP_OFFSET {
        return;
    }
    if frame.len() - ETH_LEN <= mtu {
        emit(frame);
        return;
    }
    if frame[12..14] != [0x08, 0x00] {
        // IPv6: see `fragment6`.
        return;
    }
    let payload = &frame[ICMP_OFFSET..];
    // Fragment payload sizes are multiples of 8 bytes.
    let chunk = (mtu.saturating_sub(IP_LEN)) & !7;
    if chunk == 0 || scratch.len() < ICMP_OFFSET + chunk {
        return;
    }
    let mut offset = 0;
    while offset < payload.len() {
        let n = chunk.min(payload.len() - offset);
        let more = offset + n < payload.len();
        scratch[..ICMP_OFFSET].copy_from_slice(&frame[..ICMP_OFFSET]);
        scratch[ICMP_OFFSET..ICMP_OFFSET + n].copy_from_slice(&payload[offset..offset + n]);
        let ip = &mut scratch[IP_OFFSET..IP_OFFSET + IP_LEN];
        ip[2..4].copy_from_slice(&((IP_LEN + n) as u16).to_be_bytes());
        let flags_off = ((offset / 8) as u16) | if more { 0x2000 } else { 0 };
        ip[6..8].copy_from_slice(&flags_off.to_be_bytes());
        ip[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(ip, 0);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        emit(&scratch[..ICMP_OFFSET + n]);
        offset += n;
    }
}

/// Split an IPv6 packet in an Ethernet `frame` (a 40-byte header without extension headers,
/// as every IPv6 frame we build) into fragments that fit `mtu`, each with a Fragment header
/// carrying `ident`, calling `emit` with each fragment frame (built in `scratch`, at least
/// MTU + 14 bytes). A packet that fits is emitted unchanged; anything else is not sent.
pub fn fragment6(
    frame: &[u8],
    mtu: usize,
    ident: u32,
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) {
    const FRAG_LEN: usize = 8;
    let hdr = ETH_LEN + IP6_LEN;
    if frame.len() < hdr || frame[12..14] != [0x86, 0xdd] {
        return;
    }
    if frame.len() - ETH_LEN <= mtu {
        emit(frame);
        return;
    }
    let next_header = frame[ETH_LEN + 6];
    let payload = &frame[hdr..];
    let chunk = mtu.saturating_sub(IP6_LEN + FRAG_LEN) & !7;
    if chunk == 0 || scratch.len() < hdr + FRAG_LEN + chunk {
        return;
    }
    let mut offset = 0;
    while offset < payload.len() {
        let n = chunk.min(payload.len() - offset);
        let more = offset + n < payload.len();
        scratch[..hdr].copy_from_slice(&frame[..hdr]);
        scratch[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&((FRAG_LEN + n) as u16).to_be_bytes());
        scratch[ETH_LEN + 6] = 44; // Fragment header
        let frag = &mut scratch[hdr..hdr + FRAG_LEN];
        frag[0] = next_header;
        frag[1] = 0;
        let off_flags = (offset as u16) | u16::from(more);
        frag[2..4].copy_from_slice(&off_flags.to_be_bytes());
        frag[4..8].copy_from_slice(&ident.to_be_bytes());
        scratch[hdr + FRAG_LEN..hdr + FRAG_LEN + n].copy_from_slice(&payload[offset..offset + n]);
        emit(&scratch[..hdr + FRAG_LEN + n]);
        offset += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_fragments_carry_the_whole_payload() {
        // A 4000-byte UDP datagram in IPv6 at MTU 1500.
        let mut f = vec![0u8; ETH_LEN + IP6_LEN + 8 + 4000];
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f[ETH_LEN] = 0x60;
        f[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&4008u16.to_be_bytes());
        f[ETH_LEN + 6] = 17;
        for (i, b) in f[ETH_LEN + IP6_LEN..].iter_mut().enumerate() {
            *b = (i * 13) as u8;
        }
        let mut scratch = vec![0u8; 1514];
        let mut pieces = Vec::new();
        fragment6(&f, 1500, 0xabcd_0123, &mut scratch, |p| {
            pieces.push(p.to_vec())
        });
        assert_eq!(pieces.len(), 3);
        let mut whole = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            assert!(p.len() - ETH_LEN <= 1500, "fragment {i} fits the MTU");
            assert_eq!(p[ETH_LEN + 6], 44, "next header: Fragment");
            let plen = u16::from_be_bytes([p[ETH_LEN + 4], p[ETH_LEN + 5]]) as usize;
            assert_eq!(plen, p.len() - ETH_LEN - IP6_LEN);
            let frag = &p[ETH_LEN + IP6_LEN..ETH_LEN + IP6_LEN + 8];
            assert_eq!(frag[0], 17);
            assert_eq!(&frag[4..8], &0xabcd_0123u32.to_be_bytes());
            let off_flags = u16::from_be_bytes([frag[2], frag[3]]);
            assert_eq!(
                (off_flags & !7) as usize,
                whole.len(),
                "offset of fragment {i}"
            );
            assert_eq!(
                off_flags & 1 == 1,
                i + 1 < pieces.len(),
                "M flag of fragment {i}"
            );
            whole.extend_from_slice(&p[ETH_LEN + IP6_LEN + 8..]);
        }
        assert_eq!(&whole[..], &f[ETH_LEN + IP6_LEN..]);
        // Small packets pass unchanged; IPv4 or garbage is not sent.
        let mut small = f.clone();
        small.truncate(ETH_LEN + IP6_LEN + 100);
        let mut n = 0;
        fragment6(&small, 1500, 1, &mut scratch, |p| {
            assert_eq!(p, &small[..]);
            n += 1;
        });
        assert_eq!(n, 1);
        let mut v4 = f.clone();
        v4[12..14].copy_from_slice(&[0x08, 0x00]);
        fragment6(&v4, 1500, 1, &mut scratch, |_| {
            panic!("IPv4 is not fragment6's")
        });
        fragment6(&f[..20], 1500, 1, &mut scratch, |_| panic!("truncated"));
    }

    const LINK6: Link6 = Link6 {
        gateway: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
        dns: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3),
        link_local: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2),
    };
    const LINK: LinkInfo = LinkInfo {
        mac: [0x52, 0x55, 10, 0, 2, 2],
        gateway: Ipv4Addr::new(10, 0, 2, 2),
        dns: Ipv4Addr::new(10, 0, 2, 3),
        ipv6: Some(LINK6),
    };
    const GUEST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);
    const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];
    const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
    // From the guest's point of view: frames go from GUEST_MAC to our MAC.
    const TO_US: L2 = L2 {
        src: GUEST_MAC,
        dst: LINK.mac,
    };

    fn udp_frame(dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; UDP_PAYLOAD + payload.len()];
        f[UDP_PAYLOAD..].copy_from_slice(payload);
        let n = finish_udp(
            &mut f,
            &TO_US,
            SocketAddrV4::new(GUEST, 40000).into(),
            dst.into(),
            payload.len(),
            7,
        )
        .unwrap();
        f.truncate(n);
        f
    }

    fn syn_frame(dst: SocketAddrV4, flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; ICMP_OFFSET + 20];
        let seg = &mut f[ICMP_OFFSET..];
        seg[0..2].copy_from_slice(&40001u16.to_be_bytes());
        seg[2..4].copy_from_slice(&dst.port().to_be_bytes());
        seg[4..8].copy_from_slice(&1000u32.to_be_bytes());
        seg[12] = 5 << 4;
        seg[13] = flags;
        seg[14..16].copy_from_slice(&64000u16.to_be_bytes());
        let pseudo = pseudo_header_sum(GUEST.into(), (*dst.ip()).into(), 6, 20);
        let c = checksum(seg, pseudo);
        seg[16..18].copy_from_slice(&c.to_be_bytes());
        finish_ipv4(&mut f, &TO_US, GUEST, *dst.ip(), 6, 20, 1).unwrap();
        f
    }

    #[test]
    fn udp_roundtrip() {
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53);
        let f = udp_frame(dst, b"hello");
        match classify(&f, &LINK) {
            Class::Udp(u) => {
                assert_eq!(u.dst, dst.into());
                assert_eq!(u.src, SocketAddrV4::new(GUEST, 40000).into());
                assert_eq!(u.payload, b"hello");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn syn_is_tcp_and_rst_answers_it() {
        let dst = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 1), 80);
        let f = syn_frame(dst, 0x02);
        let Class::Tcp(info) = classify(&f, &LINK) else {
            panic!("not tcp")
        };
        assert!(info.syn && !info.ack);
        assert_eq!(info.seq, 1000);
        assert_eq!(info.seq_len, 1);
        let mut out = [0u8; 128];
        let l2 = L2 {
            src: LINK.mac,
            dst: GUEST_MAC,
        };
        let n = tcp_rst(&mut out, &l2, &info).unwrap();
        let rst = &out[..n];
        // Valid checksums when parsed from the guest's side.
        let ip = Ipv4Packet::new_checked(&rst[ETH_LEN..]).unwrap();
        assert!(ip.verify_checksum());
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(&IpAddress::Ipv4(*dst.ip()), &IpAddress::Ipv4(GUEST)));
        assert!(tcp.rst() && tcp.ack());
        assert_eq!(tcp.ack_number().0, 1001);
        assert_eq!(tcp.dst_port(), 40001);
    }

    #[test]
    fn nonsense_flags_dropped() {
        let dst = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 1), 80);
        for flags in [
            0x03, /* SYN|FIN */
            0x06, /* SYN|RST */
            0x00, 0x05, /* RST|FIN */
        ] {
            assert_eq!(
                classify(&syn_frame(dst, flags), &LINK),
                Class::Drop(DropReason::TcpFlags),
                "flags {flags:#x}"
            );
        }
        // SYN|ACK is legitimate (the guest answering a forwarded connection).
        assert!(matches!(
            classify(&syn_frame(dst, 0x12), &LINK),
            Class::Tcp(_)
        ));
        let zero_port = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 1), 0);
        assert_eq!(
            classify(&syn_frame(zero_port, 0x02), &LINK),
            Class::Drop(DropReason::TcpFlags)
        );
    }

    #[test]
    fn bad_checksums_dropped() {
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 7);
        let mut f = udp_frame(dst, b"data");
        f[UDP_PAYLOAD] ^= 0xff;
        assert_eq!(classify(&f, &LINK), Class::Drop(DropReason::Checksum));
        let mut f = udp_frame(dst, b"data");
        f[IP_OFFSET + 8] = 1; // TTL change breaks the header checksum
        assert_eq!(classify(&f, &LINK), Class::Drop(DropReason::Checksum));
        let mut f = syn_frame(dst, 0x02);
        f[ICMP_OFFSET + 4] ^= 1;
        assert_eq!(classify(&f, &LINK), Class::Drop(DropReason::Checksum));
    }

    #[test]
    fn dhcp_from_unconfigured_guest() {
        let mut f = vec![0u8; UDP_PAYLOAD + 300];
        let n = finish_udp(
            &mut f,
            &L2 {
                src: GUEST_MAC,
                dst: [0xff; 6],
            },
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into(),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 67).into(),
            300,
            1,
        )
        .unwrap();
        assert!(matches!(classify(&f[..n], &LINK), Class::Dhcp(p) if p.len() == 300));
        // Other broadcast UDP is still dropped.
        let n = finish_udp(
            &mut f,
            &L2 {
                src: GUEST_MAC,
                dst: [0xff; 6],
            },
            SocketAddrV4::new(GUEST, 5000).into(),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 5000).into(),
            300,
            1,
        )
        .unwrap();
        assert_eq!(classify(&f[..n], &LINK), Class::Drop(DropReason::Address));
    }

    #[test]
    fn udp_without_checksum_accepted() {
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 7);
        let mut f = udp_frame(dst, b"data");
        f[ICMP_OFFSET + 6..ICMP_OFFSET + 8].copy_from_slice(&[0, 0]);
        assert!(matches!(classify(&f, &LINK), Class::Udp(_)));
    }

    #[test]
    fn truncations_never_panic() {
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 7);
        let frames = [
            udp_frame(dst, b"0123456789"),
            syn_frame(dst, 0x02),
            arp_request(LINK.gateway),
        ];
        for f in &frames {
            for cut in 0..f.len() {
                let c = classify(&f[..cut], &LINK);
                assert!(matches!(c, Class::Drop(_)), "cut {cut}: {c:?}");
            }
        }
    }

    #[test]
    fn fragments_options_and_ethertypes_dropped() {
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 7);
        let mut f = udp_frame(dst, b"data");
        f[IP_OFFSET + 6] = 0x20; // MF
        refresh_ip_checksum(&mut f);
        assert_eq!(classify(&f, &LINK), Class::Drop(DropReason::Fragment));

        let mut f = udp_frame(dst, b"data");
        f[IP_OFFSET] = 0x46; // IHL 6: one option word (taken from the payload)
        refresh_ip_checksum_len(&mut f, 24);
        assert_eq!(classify(&f, &LINK), Class::Drop(DropReason::IpOptions));

        let mut f = udp_frame(dst, b"data");
        f[12..14].copy_from_slice(&0x88ccu16.to_be_bytes()); // LLDP
        assert_eq!(classify(&f, &LINK), Class::Drop(DropReason::Ethertype));

        let mut f = udp_frame(dst, b"data");
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        let v4only = LinkInfo { ipv6: None, ..LINK };
        assert_eq!(classify(&f, &v4only), Class::Drop(DropReason::Ipv6));

        let mut f = udp_frame(dst, b"data");
        f[0] = 0x02; // another unicast MAC
        assert_eq!(classify(&f, &LINK), Class::Drop(DropReason::NotOurMac));

        let mut f = udp_frame(dst, b"data");
        f[IP_OFFSET + 9] = 47; // GRE
        refresh_ip_checksum(&mut f);
        assert_eq!(classify(&f, &LINK), Class::Drop(DropReason::Protocol));
    }

    fn refresh_ip_checksum(f: &mut [u8]) {
        refresh_ip_checksum_len(f, IP_LEN);
    }

    fn refresh_ip_checksum_len(f: &mut [u8], len: usize) {
        f[IP_OFFSET + 10..IP_OFFSET + 12].copy_from_slice(&[0, 0]);
        let c = checksum(&f[IP_OFFSET..IP_OFFSET + len], 0);
        f[IP_OFFSET + 10..IP_OFFSET + 12].copy_from_slice(&c.to_be_bytes());
    }

    fn arp_request(target: Ipv4Addr) -> Vec<u8> {
        let mut f = vec![0u8; 42];
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&GUEST_MAC);
        f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let a = &mut f[14..];
        a[0..2].copy_from_slice(&1u16.to_be_bytes());
        a[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
        a[4] = 6;
        a[5] = 4;
        a[6..8].copy_from_slice(&1u16.to_be_bytes());
        a[8..14].copy_from_slice(&GUEST_MAC);
        a[14..18].copy_from_slice(&GUEST.octets());
        a[24..28].copy_from_slice(&target.octets());
        f
    }

    #[test]
    fn arp_only_for_our_addresses() {
        assert_eq!(classify(&arp_request(LINK.gateway), &LINK), Class::Stack);
        assert_eq!(classify(&arp_request(LINK.dns), &LINK), Class::Stack);
        assert_eq!(
            classify(&arp_request(Ipv4Addr::new(10, 0, 2, 50)), &LINK),
            Class::Drop(DropReason::Arp)
        );
    }

    fn echo_frame(dst: Ipv4Addr) -> Vec<u8> {
        let mut f = vec![0u8; ICMP_OFFSET + 16];
        let m = &mut f[ICMP_OFFSET..];
        m[0] = 8;
        m[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        m[6..8].copy_from_slice(&1u16.to_be_bytes());
        m[8..].copy_from_slice(b"pingdata");
        let c = checksum(m, 0);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        finish_ipv4(&mut f, &TO_US, GUEST, dst, 1, 16, 3).unwrap();
        f
    }

    #[test]
    fn echo_local_vs_proxied() {
        assert_eq!(classify(&echo_frame(LINK.gateway), &LINK), Class::Stack);
        let far = Ipv4Addr::new(192, 168, 77, 2);
        match classify(&echo_frame(far), &LINK) {
            Class::Echo(e) => {
                assert_eq!((e.src, e.dst, e.ident, e.seq), (GUEST, far, 0x1234, 1));
                assert_eq!(e.message.len(), 16);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn echo_reply_restores_ident() {
        let mut f = vec![0u8; 128];
        let msg = [0u8, 0, 0, 0, 0xab, 0xcd, 0, 9, b'x', b'y'];
        f[ICMP_OFFSET..ICMP_OFFSET + msg.len()].copy_from_slice(&msg);
        let l2 = L2 {
            src: LINK.mac,
            dst: GUEST_MAC,
        };
        let far = Ipv4Addr::new(192, 168, 77, 2);
        let n = finish_echo_reply(&mut f, &l2, far, GUEST, 0x1234, msg.len()).unwrap();
        let m = &f[ICMP_OFFSET..n];
        assert_eq!(&m[4..6], &[0x12, 0x34]);
        assert_eq!(checksum(m, 0), 0);
        // A request is not a reply.
        f[ICMP_OFFSET] = 8;
        assert!(finish_echo_reply(&mut f, &l2, far, GUEST, 1, msg.len()).is_none());
    }

    #[test]
    fn icmp_error_quotes_offender() {
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 80);
        let syn = syn_frame(dst, 0x02);
        let mut out = [0u8; 128];
        let l2 = L2 {
            src: LINK.mac,
            dst: GUEST_MAC,
        };
        let n = icmp_error(
            &mut out,
            &l2,
            LINK.gateway,
            Unreachable::Net,
            &syn[ETH_LEN..],
        )
        .unwrap();
        let ip = Ipv4Packet::new_checked(&out[ETH_LEN..n]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.dst_addr(), GUEST);
        let m = ip.payload();
        assert_eq!((m[0], m[1]), (3, 0));
        assert_eq!(checksum(m, 0), 0);
        assert_eq!(&m[8..36], &syn[ETH_LEN..ETH_LEN + 28]);
    }

    #[test]
    fn fragments_reassemble_to_original() {
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 7);
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let f = udp_frame(dst, &payload);
        let mut scratch = vec![0u8; 2000];
        let mut pieces = Vec::new();
        fragment(&f, 1500, &mut scratch, |p| pieces.push(p.to_vec()));
        assert_eq!(pieces.len(), 3);
        let mut joined = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            let ip = Ipv4Packet::new_checked(&p[ETH_LEN..]).unwrap();
            assert!(ip.verify_checksum());
            assert!(p.len() - ETH_LEN <= 1500);
            assert_eq!(ip.more_frags(), i < 2);
            assert_eq!(usize::from(ip.frag_offset()), joined.len());
            joined.extend_from_slice(ip.payload());
        }
        assert_eq!(&joined[..], &f[ICMP_OFFSET..]);
        // Small packets pass unchanged.
        let small = udp_frame(dst, b"x");
        let mut n = 0;
        fragment(&small, 1500, &mut scratch, |p| {
            assert_eq!(p, &small[..]);
            n += 1
        });
        assert_eq!(n, 1);
    }

    fn icmp6_frame(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8], hop_limit: u8) -> Vec<u8> {
        let l4 = l4_offset(true);
        let mut f = vec![0u8; l4 + msg.len()];
        f[l4..].copy_from_slice(msg);
        let pseudo = pseudo_header_sum(src.into(), dst.into(), 58, msg.len());
        let c = checksum(&f[l4..], pseudo);
        f[l4 + 2..l4 + 4].copy_from_slice(&c.to_be_bytes());
        finish_ipv6(&mut f, &TO_US, src, dst, 58, msg.len()).unwrap();
        f[ETH_LEN + 7] = hop_limit;
        f
    }

    fn ns(target: Ipv6Addr) -> Vec<u8> {
        let mut m = vec![135u8, 0, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&target.octets());
        m
    }

    #[test]
    fn ndp_only_for_our_addresses() {
        let solicited = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 2);
        assert_eq!(
            classify(
                &icmp6_frame(GUEST6, solicited, &ns(LINK6.gateway), 255),
                &LINK
            ),
            Class::Stack
        );
        assert_eq!(
            classify(
                &icmp6_frame(GUEST6, solicited, &ns(LINK6.link_local), 255),
                &LINK
            ),
            Class::Stack
        );
        // The guest's duplicate address detection must go unanswered.
        assert_eq!(
            classify(
                &icmp6_frame(Ipv6Addr::UNSPECIFIED, solicited, &ns(GUEST6), 255),
                &LINK
            ),
            Class::Drop(DropReason::Ndp)
        );
        // NDP with a hop limit other than 255 is forged.
        assert_eq!(
            classify(
                &icmp6_frame(GUEST6, solicited, &ns(LINK6.gateway), 64),
                &LINK
            ),
            Class::Drop(DropReason::Ndp)
        );
        let rs = [133u8, 0, 0, 0, 0, 0, 0, 0];
        let all_routers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
        assert_eq!(
            classify(&icmp6_frame(GUEST6, all_routers, &rs, 255), &LINK),
            Class::RouterSolicit(GUEST6)
        );
        // IPv6 disabled: everything is dropped.
        let v4only = LinkInfo { ipv6: None, ..LINK };
        assert_eq!(
            classify(&icmp6_frame(GUEST6, all_routers, &rs, 255), &v4only),
            Class::Drop(DropReason::Ipv6)
        );
    }

    #[test]
    fn tcp6_syn_and_rst() {
        let dst: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let l4 = l4_offset(true);
        let mut f = vec![0u8; l4 + 20];
        let seg = &mut f[l4..];
        seg[0..2].copy_from_slice(&40001u16.to_be_bytes());
        seg[2..4].copy_from_slice(&443u16.to_be_bytes());
        seg[4..8].copy_from_slice(&77u32.to_be_bytes());
        seg[12] = 5 << 4;
        seg[13] = 0x02;
        let pseudo = pseudo_header_sum(GUEST6.into(), dst.ip(), 6, 20);
        let c = checksum(seg, pseudo);
        seg[16..18].copy_from_slice(&c.to_be_bytes());
        finish_ip(&mut f, &TO_US, GUEST6.into(), dst.ip(), 6, 20, 0).unwrap();
        let Class::Tcp(info) = classify(&f, &LINK) else {
            panic!("not tcp: {:?}", classify(&f, &LINK))
        };
        assert_eq!(info.dst, dst);
        let mut out = [0u8; 128];
        let l2 = L2 {
            src: LINK.mac,
            dst: GUEST_MAC,
        };
        let n = tcp_rst(&mut out, &l2, &info).unwrap();
        let ip = Ipv6Packet::new_checked(&out[ETH_LEN..n]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(&dst.ip().into(), &IpAddress::Ipv6(GUEST6)));
        assert!(tcp.rst());
        assert_eq!(tcp.ack_number().0, 78);
        // ICMPv6 error quoting the SYN.
        let n = icmp6_error(&mut out, &l2, LINK6.link_local, 4, &f[ETH_LEN..]).unwrap();
        let ip = Ipv6Packet::new_checked(&out[ETH_LEN..n]).unwrap();
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum(&LINK6.link_local, &GUEST6));
        assert_eq!(ip.dst_addr(), GUEST6);
    }

    #[test]
    fn udp6_requires_checksum() {
        let mut f = vec![0u8; UDP6_PAYLOAD + 4];
        let src: SocketAddr = SocketAddr::new(GUEST6.into(), 5000);
        let dst: SocketAddr = SocketAddr::new(LINK6.dns.into(), 53);
        let n = finish_udp(&mut f, &TO_US, src, dst, 4, 0).unwrap();
        assert!(
            matches!(classify(&f[..n], &LINK), Class::Udp(u) if u.dst == dst && u.payload.len() == 4)
        );
        f[l4_offset(true) + 6..l4_offset(true) + 8].copy_from_slice(&[0, 0]);
        assert_eq!(classify(&f[..n], &LINK), Class::Drop(DropReason::Checksum));
    }

    #[test]
    fn router_advert_parses() {
        use smoltcp::wire::{Icmpv6Repr, NdiscPrefixInfoFlags, NdiscRepr};
        let mut out = [0u8; 256];
        let l2 = L2 {
            src: LINK.mac,
            dst: multicast_mac(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1)),
        };
        let ra = RouterAdvert {
            router: LINK6.link_local,
            prefix: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0),
            mtu: 1500,
            dns: Some(LINK6.dns),
        };
        let all = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        let n = router_advert(&mut out, &l2, &ra, all).unwrap();
        assert_eq!(&out[..6], &[0x33, 0x33, 0, 0, 0, 1]);
        let ip = Ipv6Packet::new_checked(&out[ETH_LEN..n]).unwrap();
        assert_eq!(ip.hop_limit(), 255);
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum(&LINK6.link_local, &all));
        let repr = Icmpv6Repr::parse(&LINK6.link_local, &all, &icmp, &Default::default()).unwrap();
        let Icmpv6Repr::Ndisc(NdiscRepr::RouterAdvert {
            prefix_info, mtu, ..
        }) = repr
        else {
            panic!("not an RA: {repr:?}")
        };
        assert_eq!(mtu, Some(1500));
        let p = prefix_info.unwrap();
        assert_eq!((p.prefix_len, p.prefix), (64, ra.prefix));
        assert!(p
            .flags
            .contains(NdiscPrefixInfoFlags::ADDRCONF | NdiscPrefixInfoFlags::ON_LINK));
    }
}
