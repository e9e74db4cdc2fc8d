//! Guest frames (sans-IO): validation and classification of what the guest sends, the frames
//! sent back to it, and the types and offsets both sides share.
//!
//! # Theory of operation
//! Every frame the guest writes to the TAP passes through [`classify()`] exactly once, before
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
//!
//! # Files
//! This file holds the shared vocabulary: frame offsets, [`DropReason`] and its counters, the
//! link description ([`LinkInfo`], [`Link6`]), the classifier's verdicts ([`Class`] and the
//! `*Info` it carries) and the inputs of the builders ([`L2`], [`Unreachable`],
//! [`RouterAdvert`]). The code is in private submodules, all re-exported here, so that every
//! item is `tapwire_proto::wire::X`:
//! - `classify`: [`classify()`], [`classify_offloaded`] (guest to us);
//! - `reply`: the frame builders (us to guest): [`finish_udp`], [`finish_dhcp`],
//!   [`finish_echo_reply`], [`icmp_error`], [`icmp6_error`], [`tcp_rst`], [`router_advert`],
//!   [`multicast_mac`];
//! - `frag`: [`fragment`], [`fragment6`] for outgoing packets larger than the MTU;
//! - `checksum`: the Internet checksum ([`checksum()`]) and the pseudo-header sum.
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

mod checksum;
mod classify;
#[cfg(test)]
mod fixtures;
mod frag;
mod reply;

pub use checksum::checksum;
pub use classify::{classify, classify_offloaded};
pub use frag::{fragment, fragment6};
pub use reply::{
    finish_dhcp, finish_echo_reply, finish_udp, finish_udp_unsummed, icmp6_error, icmp_error,
    multicast_mac, router_advert, tcp_rst,
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
    /// Count `n` drops for `reason`.
    pub fn bump_n(&mut self, reason: DropReason, n: u64) {
        self.0[reason as usize] += n;
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

/// Ethernet addressing of frames sent to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2 {
    /// Our MAC.
    pub src: [u8; 6],
    /// The guest's MAC (learned from its frames).
    pub dst: [u8; 6],
}

/// ICMP destination-unreachable codes we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Unreachable {
    Net = 0,
    Host = 1,
    Port = 3,
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
