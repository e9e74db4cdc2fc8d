//! The virtio-net header on the TAP and the TCP offloads it carries (sans-IO).
//!
//! # Theory of operation
//! The TAP is opened with `IFF_VNET_HDR`: every frame read or written is preceded by a
//! `struct virtio_net_hdr` (10 bytes, little-endian on the hosts we run on), and the daemon
//! enables `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6` with `TUNSETOFFLOAD`. The guest's kernel then
//! treats the TAP like a NIC with checksum and segmentation offload, which changes what crosses
//! the link in both directions while the guest's MTU stays what the user set:
//!
//! - **Guest to us.** TCP comes as super-segments of up to 64 KiB (`gso_type` TCPV4/TCPV6, the
//!   real MSS in `gso_size`), and TCP/UDP with `NEEDS_CSUM`: the checksum field holds only the
//!   pseudo-header sum, the guest never summed the payload. We take such a segment whole (it is
//!   one valid TCP segment as far as the receiver is concerned) and skip the transport checksum
//!   check that would otherwise fail; the data came from the local kernel, not a wire.
//! - **Us to the guest.** smoltcp is told the link MTU is 64 KiB, so it sends segments of up to
//!   64 KiB, but only once the guest's MSS allows it: [`raise_syn_mss`] rewrites the MSS option
//!   of the guest's SYN (and SYN-ACK) on its way into smoltcp, remembering the real value.
//!   [`offload_tcp`] then finishes each TCP frame smoltcp built without a checksum: it writes
//!   the pseudo-header sum, asks for `NEEDS_CSUM` (the guest accepts it as verified when it
//!   delivers locally, and completes it if it forwards the packet), and for frames beyond the
//!   MTU asks for segmentation at the guest's real MSS. The guest's kernel receives the whole
//!   super-segment like a GRO'd packet; nothing is segmented in userspace.
//!
//! The result: one system call and one trip through smoltcp per 64 KiB instead of per 1.5 KiB,
//! and no checksum over the payload anywhere on our side.
//!
//! **UDP segmentation offload (USO).** Where the kernel has it (Linux >= 6.2) the TAP is also
//! given `TUN_F_USO4 | TUN_F_USO6`, and UDP crosses in super-datagrams both ways:
//!
//! - **Guest to us.** A guest app that sends with `UDP_SEGMENT` (QUIC stacks, WireGuard-go)
//!   hands the TAP one frame of `gso_type` [`GSO_UDP_L4`]: one IP and UDP header (its length
//!   fields cover the whole train), then up to 64 KiB of payload that stands for datagrams of
//!   `gso_size` bytes each, the last possibly shorter, checksum partial (`NEEDS_CSUM`).
//!   [`udp_gso_from_guest`] checks the header against the payload (a hostile guest writes any
//!   header) and gives the segment size; the daemon sends the train with one `sendmsg` and a
//!   `UDP_SEGMENT` control message, and the host's kernel (or NIC) cuts it. When the host
//!   refuses that (a segment bigger than the path MTU), [`udp_segments`] cuts it here.
//! - **Us to the guest.** Host sockets set `UDP_GRO`, so the host kernel hands us trains of
//!   datagrams of one size from one peer with the size in a control message.
//!   [`offload_udp`] turns such a train, once finished as one UDP frame, into a
//!   [`GSO_UDP_L4`] frame (partial checksum, `gso_size` = the datagram size); the guest's
//!   kernel cuts it back into the peer's datagrams or hands it whole to a `UDP_GRO` socket.
//!   When that is not allowed (no USO on the TAP, a datagram plus headers over the guest's
//!   MTU, too many segments) the daemon writes the datagrams one by one.
//!
//! Limits: UFO (`GSO_UDP`, type 3) is never enabled; frames with a GSO type we did not enable
//! are dropped and counted. A guest on a big-endian host would need
//! `TUNSETVNETLE`; we only build for little-endian.
#![forbid(unsafe_code)]

use crate::wire::ETH_LEN;

/// Size of `struct virtio_net_hdr` (the TAP default; no `num_buffers`).
pub const HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: checksum from `csum_start`, store at `+csum_offset`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_*`.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4`: UDP segmentation (USO), `gso_size` bytes of payload a datagram.
pub const GSO_UDP_L4: u8 = 5;
/// Most datagrams in one USO frame we write to the guest (`UDP_MAX_SEGMENTS` of Linux 6.2 to
/// 6.12; later kernels take 128, older ones' GRO makes at most 64).
pub const UDP_MAX_SEGMENTS: usize = 64;
/// Most datagrams one guest USO frame may stand for (the largest `UDP_MAX_SEGMENTS` of any
/// kernel); a frame claiming more is dropped rather than cut into thousands of datagrams.
pub const UDP_MAX_SEGMENTS_IN: usize = 128;
/// Length of a UDP header.
const UDP_HDR: usize = 8;
/// The MSS we tell smoltcp the guest has, so that it fills 64 KiB frames.
pub const BIG_MSS: u16 = 65_495;
/// The largest frame either side may send with offloads on: a 64 KiB IP packet + Ethernet.
pub const MAX_FRAME: usize = ETH_LEN + 65_535;

const ETH_IPV4: [u8; 2] = [0x08, 0x00];
const ETH_IPV6: [u8; 2] = [0x86, 0xdd];
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// `struct virtio_net_hdr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Parse the first [`HDR_LEN`] bytes; `None` if shorter.
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; HDR_LEN] = b.get(..HDR_LEN)?.try_into().ok()?;
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// The transport checksum is partial (only the pseudo-header is summed).
    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }

    /// A GSO type we accept from the guest (none, or TCP segmentation; ECN bit ignored).
    pub fn gso_ok(&self) -> bool {
        matches!(self.gso_type & 0x7f, GSO_NONE | GSO_TCPV4 | GSO_TCPV6)
    }

    /// [`gso_ok`](Self::gso_ok), or UDP segmentation when `uso` (the TAP was given USO).
    pub fn gso_ok_with(&self, uso: bool) -> bool {
        self.gso_ok() || (uso && self.is_udp_gso())
    }

    /// The frame is a UDP super-datagram ([`GSO_UDP_L4`]).
    pub fn is_udp_gso(&self) -> bool {
        self.gso_type == GSO_UDP_L4
    }
}

/// Why a guest USO frame is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpGsoError {
    /// `gso_size` is zero.
    ZeroSize,
    /// The payload stands for more than [`UDP_MAX_SEGMENTS_IN`] datagrams.
    TooManySegments,
    /// No `NEEDS_CSUM`: the kernel never sends USO with a full checksum.
    NoPartialChecksum,
}

/// The datagram size of a guest frame with header `hdr` and a UDP payload of `len` bytes:
/// `Ok(None)` for one plain datagram (no USO, or a payload that fits one segment),
/// `Ok(Some(size))` for a train of `size`-byte datagrams (the last may be shorter).
pub fn udp_gso_from_guest(hdr: &VnetHdr, len: usize) -> Result<Option<u16>, UdpGsoError> {
    if !hdr.is_udp_gso() {
        return Ok(None);
    }
    if !hdr.needs_csum() {
        return Err(UdpGsoError::NoPartialChecksum);
    }
    let size = usize::from(hdr.gso_size);
    if size == 0 {
        return Err(UdpGsoError::ZeroSize);
    }
    if len <= size {
        return Ok(None);
    }
    if len.div_ceil(size) > UDP_MAX_SEGMENTS_IN {
        return Err(UdpGsoError::TooManySegments);
    }
    Ok(Some(hdr.gso_size))
}

/// The datagrams a train of `len` payload bytes cut at `size` stands for, as (offset, length)
/// in the payload: full ones, then the rest. Nothing for `size` 0; one empty datagram for an
/// empty payload.
pub fn udp_segments(len: usize, size: usize) -> impl Iterator<Item = (usize, usize)> {
    let count = match (len, size) {
        (_, 0) => 0,
        (0, _) => 1,
        _ => len.div_ceil(size),
    };
    (0..count).map(move |i| (i * size, size.min(len - i * size)))
}

/// Turn a finished UDP frame (`frame`, one IP packet whose UDP payload is a train of
/// `size`-byte datagrams from one peer) into a USO frame for a guest of MTU `mtu`: put the
/// pseudo-header sum in the checksum field and return the header asking the guest's kernel to
/// cut it. `None` (frame untouched) when the guest cannot take it so: not UDP over IPv4/IPv6
/// without extension headers, one datagram only, a datagram plus headers over `mtu`, or more
/// than [`UDP_MAX_SEGMENTS`] datagrams; the caller then sends the datagrams one by one.
pub fn offload_udp(frame: &mut [u8], mtu: usize, size: u16) -> Option<VnetHdr> {
    let l = l4_layout(frame, PROTO_UDP)?;
    let seg = usize::from(size);
    let payload = l.l4_len - UDP_HDR;
    if seg == 0
        || payload <= seg
        || l.ip_len + UDP_HDR + seg > mtu
        || payload.div_ceil(seg) > UDP_MAX_SEGMENTS
    {
        return None;
    }
    let udp_len = u16::from_be_bytes([frame[l.l4 + 4], frame[l.l4 + 5]]);
    if usize::from(udp_len) != l.l4_len {
        return None;
    }
    let sum = fold(l.pseudo + u32::from(udp_len));
    frame[l.l4 + 6..l.l4 + 8].copy_from_slice(&sum.to_be_bytes());
    Some(VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_UDP_L4,
        hdr_len: (l.l4 + UDP_HDR) as u16,
        gso_size: size,
        csum_start: l.l4 as u16,
        csum_offset: 6,
    })
}

/// Where a TCP segment or UDP datagram sits in an Ethernet frame.
struct Layout {
    /// Offset of the TCP/UDP header in the frame.
    l4: usize,
    /// IP header length.
    ip_len: usize,
    /// TCP/UDP header + data length, from the IP header.
    l4_len: usize,
    /// Pseudo-header sum without the length (unfolded).
    pseudo: u32,
    v6: bool,
}

/// The layout of a TCP segment in `frame`, or `None` if the frame is not TCP over IPv4/IPv6
/// without extension headers, or its lengths do not fit the frame.
fn tcp_layout(frame: &[u8]) -> Option<Layout> {
    l4_layout(frame, PROTO_TCP)
}

/// [`tcp_layout`] for transport `proto` (TCP or UDP).
fn l4_layout(frame: &[u8], proto: u8) -> Option<Layout> {
    let ip = frame.get(ETH_LEN..)?;
    let words = |b: &[u8]| -> u32 {
        b.chunks_exact(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum()
    };
    match frame.get(12..14)? {
        e if e == ETH_IPV4 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            if ip.len() < ihl || ihl < 20 || ip[9] != proto {
                return None;
            }
            let tot = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            Some(Layout {
                l4: ETH_LEN + ihl,
                ip_len: ihl,
                l4_len: tot.checked_sub(ihl)?,
                pseudo: words(&ip[12..20]) + u32::from(proto),
                v6: false,
            })
        }
        e if e == ETH_IPV6 => {
            if ip.len() < 40 || ip[6] != proto {
                return None;
            }
            Some(Layout {
                l4: ETH_LEN + 40,
                ip_len: 40,
                l4_len: usize::from(u16::from_be_bytes([ip[4], ip[5]])),
                pseudo: words(&ip[8..40]) + u32::from(proto),
                v6: true,
            })
        }
        _ => None,
    }
    .filter(|l| {
        let min = if proto == PROTO_TCP { 20 } else { UDP_HDR };
        l.l4_len >= min && l.l4 + l.l4_len <= frame.len()
    })
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Finish a TCP frame smoltcp built without a checksum, for an offloading TAP: put the
/// pseudo-header sum in the checksum field and return the header asking the guest's kernel to
/// treat the checksum as partial and, past `mtu`, the frame as a TSO super-segment of `mss`-byte
/// segments. Frames that are not TCP get a plain header (smoltcp summed them itself).
pub fn offload_tcp(frame: &mut [u8], mtu: usize, mss: u16) -> VnetHdr {
    let Some(Layout {
        l4,
        ip_len,
        l4_len: tcp_len,
        pseudo,
        v6,
    }) = tcp_layout(frame)
    else {
        return VnetHdr::default();
    };
    let tcp_hdr = usize::from(frame[l4 + 12] >> 4) * 4;
    let sum = fold(pseudo + (tcp_len as u32 >> 16) + (tcp_len as u32 & 0xffff));
    frame[l4 + 16..l4 + 18].copy_from_slice(&sum.to_be_bytes());
    let mut hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: l4 as u16,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    // Past the MTU, or past the guest's own MSS: a guest that routes the segment on (Docker's
    // bridge behind a 65520-byte tap0) cannot forward a 30 KB frame to a 1500-byte link, but the
    // kernel re-segments a super-segment at `mss` on the way out.
    let payload = tcp_len.saturating_sub(tcp_hdr);
    if ip_len + tcp_len > mtu || payload > usize::from(mss) {
        let seg = mtu.saturating_sub(ip_len + tcp_hdr).max(1);
        hdr.gso_type = if v6 { GSO_TCPV6 } else { GSO_TCPV4 };
        hdr.gso_size = u16::try_from(seg).unwrap_or(u16::MAX).min(mss.max(1));
        hdr.hdr_len = (l4 + tcp_hdr) as u16;
    }
    hdr
}

/// If `frame` is a TCP SYN (or SYN-ACK) whose MSS option is below [`BIG_MSS`], raise it to
/// `BIG_MSS` and return the guest's real MSS. The checksum is not updated: smoltcp does not
/// check it with offloads on (the frame was validated before).
pub fn raise_syn_mss(frame: &mut [u8]) -> Option<u16> {
    let l = tcp_layout(frame)?;
    let tcp = frame.get_mut(l.l4..l.l4 + l.l4_len)?;
    if tcp.len() < 20 || tcp[13] & 0x02 == 0 {
        return None;
    }
    let hdr = (usize::from(tcp[12] >> 4) * 4).min(tcp.len());
    let mut i = 20;
    while i < hdr {
        match tcp[i] {
            0 => return None,
            1 => i += 1,
            kind => {
                let len = usize::from(*tcp.get(i + 1)?);
                if len < 2 || i + len > hdr {
                    return None;
                }
                if kind == 2 && len == 4 {
                    let mss = u16::from_be_bytes([tcp[i + 2], tcp[i + 3]]);
                    if mss < BIG_MSS {
                        tcp[i + 2..i + 4].copy_from_slice(&BIG_MSS.to_be_bytes());
                    }
                    return Some(mss);
                }
                i += len;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum;

    /// An IPv4 TCP frame with `payload` bytes of data and the given TCP options.
    fn tcp4(payload: usize, syn: bool, options: &[u8]) -> Vec<u8> {
        let tcp_hdr = 20 + options.len();
        let mut f = vec![0u8; ETH_LEN + 20 + tcp_hdr + payload];
        f[12..14].copy_from_slice(&ETH_IPV4);
        let ip = &mut f[ETH_LEN..];
        ip[0] = 0x45;
        let tot = (20 + tcp_hdr + payload) as u16;
        ip[2..4].copy_from_slice(&tot.to_be_bytes());
        ip[8] = 64;
        ip[9] = PROTO_TCP;
        ip[12..16].copy_from_slice(&[10, 0, 2, 2]);
        ip[16..20].copy_from_slice(&[10, 0, 2, 100]);
        let tcp = &mut ip[20..];
        tcp[0..2].copy_from_slice(&80u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&40000u16.to_be_bytes());
        tcp[12] = ((tcp_hdr / 4) as u8) << 4;
        tcp[13] = if syn { 0x02 } else { 0x10 };
        tcp[20..tcp_hdr].copy_from_slice(options);
        for (i, b) in tcp[tcp_hdr..].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        f
    }

    /// Complete a partial checksum the way the guest's kernel (or a NIC) does.
    fn complete(frame: &mut [u8], h: &VnetHdr) {
        let start = usize::from(h.csum_start);
        let at = start + usize::from(h.csum_offset);
        let c = checksum(&frame[start..], 0);
        frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }

    #[test]
    fn header_roundtrip() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV6,
            hdr_len: 74,
            gso_size: 1440,
            csum_start: 54,
            csum_offset: 16,
        };
        let b = h.encode();
        assert_eq!(b, [1, 4, 74, 0, 0xa0, 5, 54, 0, 16, 0]);
        assert_eq!(VnetHdr::parse(&b), Some(h));
        assert_eq!(VnetHdr::parse(&b[..9]), None);
        assert!(h.needs_csum() && h.gso_ok());
        assert!(!VnetHdr { gso_type: 3, ..h }.gso_ok()); // UDP (UFO): not enabled
        assert!(VnetHdr {
            gso_type: 0x81,
            ..h
        }
        .gso_ok()); // TCPV4 | ECN
    }

    #[test]
    fn small_frame_gets_partial_checksum_that_completes_right() {
        let mut f = tcp4(100, false, &[]);
        let h = offload_tcp(&mut f, 1500, 1460);
        assert_eq!(h.flags, F_NEEDS_CSUM);
        assert_eq!(h.gso_type, GSO_NONE);
        assert_eq!((h.csum_start, h.csum_offset), (34, 16));
        complete(&mut f, &h);
        // A complete checksum verifies against the pseudo-header.
        let tcp = smoltcp::wire::TcpPacket::new_checked(&f[34..]).unwrap();
        assert!(tcp.verify_checksum(
            &smoltcp::wire::IpAddress::v4(10, 0, 2, 2),
            &smoltcp::wire::IpAddress::v4(10, 0, 2, 100)
        ));
    }

    #[test]
    fn big_frame_is_a_tso_super_segment_at_the_real_mss() {
        let mut f = tcp4(60_000, false, &[]);
        let h = offload_tcp(&mut f, 1500, 1460);
        assert_eq!(h.gso_type, GSO_TCPV4);
        assert_eq!(h.gso_size, 1460);
        assert_eq!(h.hdr_len, 54);
        // A clamped guest MSS wins over the MTU's.
        let h = offload_tcp(&mut f, 1500, 1200);
        assert_eq!(h.gso_size, 1200);
        // Exactly the MTU: no segmentation.
        let mut f = tcp4(1460, false, &[]);
        assert_eq!(offload_tcp(&mut f, 1500, 1460).gso_type, GSO_NONE);
    }

    #[test]
    fn frame_under_the_mtu_but_over_the_guest_mss_is_a_super_segment() {
        // tap0 at 65520, the guest announced 1460 (it routes on to a 1500-byte bridge).
        let mut f = tcp4(30_000, false, &[]);
        let h = offload_tcp(&mut f, 65_520, 1460);
        assert_eq!(h.gso_type, GSO_TCPV4);
        assert_eq!(h.gso_size, 1460);
        assert_eq!(h.hdr_len, 54);
        // At the guest's MSS, or with no MSS known: a plain frame.
        let mut f = tcp4(1460, false, &[]);
        assert_eq!(offload_tcp(&mut f, 65_520, 1460).gso_type, GSO_NONE);
        let mut f = tcp4(30_000, false, &[]);
        assert_eq!(offload_tcp(&mut f, 65_520, u16::MAX).gso_type, GSO_NONE);
    }

    #[test]
    fn ipv6_layout() {
        let mut f = vec![0u8; ETH_LEN + 40 + 20 + 3000];
        f[12..14].copy_from_slice(&ETH_IPV6);
        f[ETH_LEN] = 0x60;
        f[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&3020u16.to_be_bytes());
        f[ETH_LEN + 6] = PROTO_TCP;
        f[ETH_LEN + 8] = 0xfd;
        f[ETH_LEN + 24] = 0xfd;
        f[ETH_LEN + 40 + 12] = 5 << 4;
        let h = offload_tcp(&mut f, 1500, 1440);
        assert_eq!(
            (h.csum_start, h.gso_type, h.gso_size),
            (54, GSO_TCPV6, 1440)
        );
        complete(&mut f, &h);
        let tcp = smoltcp::wire::TcpPacket::new_checked(&f[54..]).unwrap();
        let a = |b: &[u8]| smoltcp::wire::IpAddress::Ipv6(<[u8; 16]>::try_from(b).unwrap().into());
        assert!(tcp.verify_checksum(&a(&f[22..38]), &a(&f[38..54])));
    }

    #[test]
    fn non_tcp_and_garbage_get_a_plain_header() {
        let mut f = tcp4(10, false, &[]);
        f[ETH_LEN + 9] = 17; // UDP
        let before = f.clone();
        assert_eq!(offload_tcp(&mut f, 1500, 1460), VnetHdr::default());
        assert_eq!(f, before);
        for len in 0..60 {
            let mut g = tcp4(0, false, &[]);
            g.truncate(len);
            let _ = offload_tcp(&mut g, 1500, 1460);
            let _ = raise_syn_mss(&mut g);
        }
    }

    #[test]
    fn syn_mss_is_raised_and_reported() {
        // NOP, NOP, MSS 1460, window scale 7 + NOP.
        let opts = [1, 1, 2, 4, 0x05, 0xb4, 3, 3, 7, 1, 0, 0];
        let mut f = tcp4(0, true, &opts);
        assert_eq!(raise_syn_mss(&mut f), Some(1460));
        assert_eq!(&f[34 + 24..34 + 26], &BIG_MSS.to_be_bytes());
        // Already big, or not a SYN: untouched.
        assert_eq!(raise_syn_mss(&mut f), Some(BIG_MSS));
        let mut g = tcp4(0, false, &opts);
        let before = g.clone();
        assert_eq!(raise_syn_mss(&mut g), None);
        assert_eq!(g, before);
        // Malformed option lengths stop the walk.
        let mut h = tcp4(0, true, &[2, 0, 0, 0]);
        assert_eq!(raise_syn_mss(&mut h), None);
        let mut h = tcp4(0, true, &[8, 40, 0, 0]);
        assert_eq!(raise_syn_mss(&mut h), None);
    }

    #[test]
    fn syn_without_mss_is_left_alone() {
        // Window scale and SACK-permitted, no MSS.
        let mut f = tcp4(0, true, &[3, 3, 7, 4, 2, 1, 1, 1]);
        let before = f.clone();
        assert_eq!(raise_syn_mss(&mut f), None);
        assert_eq!(f, before);
        // End of option list before the MSS.
        let mut f = tcp4(0, true, &[0, 1, 1, 1, 2, 4, 5, 0xb4]);
        let before = f.clone();
        assert_eq!(raise_syn_mss(&mut f), None);
        assert_eq!(f, before);
        // An MSS option of the wrong length is skipped, not read.
        let mut f = tcp4(0, true, &[2, 6, 5, 0xb4, 0, 0, 1, 1]);
        assert_eq!(raise_syn_mss(&mut f), None);
        // SYN-ACK (SYN with ACK) is raised too.
        let mut f = tcp4(0, true, &[2, 4, 0x05, 0x78]);
        f[ETH_LEN + 20 + 13] |= 0x10;
        assert_eq!(raise_syn_mss(&mut f), Some(1400));
        assert_eq!(
            &f[ETH_LEN + 20 + 22..ETH_LEN + 20 + 24],
            &BIG_MSS.to_be_bytes()
        );
    }

    #[test]
    fn lengths_that_do_not_fit_get_a_plain_header() {
        // IP total length shorter than IP + TCP headers.
        let mut f = tcp4(10, false, &[]);
        f[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&30u16.to_be_bytes());
        assert_eq!(offload_tcp(&mut f, 1500, 1460), VnetHdr::default());
        // IP total length past the end of the frame.
        let mut f = tcp4(10, false, &[]);
        f[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(offload_tcp(&mut f, 1500, 1460), VnetHdr::default());
        // IPv4 options move the TCP header: csum_start follows the IHL.
        let mut f = tcp4(100, false, &[]);
        f[ETH_LEN] = 0x46;
        f.splice(ETH_LEN + 20..ETH_LEN + 20, [1, 1, 1, 1]);
        let tot = u16::from_be_bytes([f[ETH_LEN + 2], f[ETH_LEN + 3]]) + 4;
        f[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&tot.to_be_bytes());
        let h = offload_tcp(&mut f, 1500, 1460);
        assert_eq!(
            (h.flags, h.csum_start, h.csum_offset),
            (F_NEEDS_CSUM, 38, 16)
        );
        // An unknown ethertype.
        let mut f = tcp4(10, false, &[]);
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(offload_tcp(&mut f, 1500, 1460), VnetHdr::default());
    }

    /// An IPv4 UDP frame with `payload` bytes after the UDP header, checksum complete.
    fn udp4(payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; ETH_LEN + 20 + 8 + payload];
        f[12..14].copy_from_slice(&ETH_IPV4);
        let ip = &mut f[ETH_LEN..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((28 + payload) as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = PROTO_UDP;
        ip[12..16].copy_from_slice(&[10, 0, 2, 2]);
        ip[16..20].copy_from_slice(&[10, 0, 2, 100]);
        let udp = &mut ip[20..];
        udp[0..2].copy_from_slice(&4433u16.to_be_bytes());
        udp[2..4].copy_from_slice(&50000u16.to_be_bytes());
        udp[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        for (i, b) in udp[8..].iter_mut().enumerate() {
            *b = (i * 13 + 5) as u8;
        }
        f
    }

    fn udp4_verifies(f: &[u8]) -> bool {
        smoltcp::wire::UdpPacket::new_checked(&f[34..])
            .unwrap()
            .verify_checksum(
                &smoltcp::wire::IpAddress::v4(10, 0, 2, 2),
                &smoltcp::wire::IpAddress::v4(10, 0, 2, 100),
            )
    }

    const USO: VnetHdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_UDP_L4,
        hdr_len: 42,
        gso_size: 1200,
        csum_start: 34,
        csum_offset: 6,
    };

    #[test]
    fn uso_header_is_accepted_only_when_enabled() {
        let b = USO.encode();
        assert_eq!(b, [1, 5, 42, 0, 0xb0, 4, 34, 0, 6, 0]);
        assert_eq!(VnetHdr::parse(&b), Some(USO));
        assert!(USO.is_udp_gso());
        assert!(!USO.gso_ok() && !USO.gso_ok_with(false) && USO.gso_ok_with(true));
        // UFO (type 3) never; TCP with or without USO.
        assert!(!VnetHdr { gso_type: 3, ..USO }.gso_ok_with(true));
        assert!(VnetHdr {
            gso_type: GSO_TCPV4,
            ..USO
        }
        .gso_ok_with(false));
        // The ECN bit makes no sense on UDP: refused.
        assert!(!VnetHdr {
            gso_type: 0x85,
            ..USO
        }
        .gso_ok_with(true));
    }

    #[test]
    fn guest_uso_frames_are_checked_against_their_payload() {
        assert_eq!(udp_gso_from_guest(&USO, 12_000), Ok(Some(1200)));
        assert_eq!(udp_gso_from_guest(&USO, 12_001), Ok(Some(1200)));
        // One segment or less: a plain datagram.
        assert_eq!(udp_gso_from_guest(&USO, 1200), Ok(None));
        assert_eq!(udp_gso_from_guest(&USO, 0), Ok(None));
        assert_eq!(udp_gso_from_guest(&VnetHdr::default(), 60_000), Ok(None));
        let h = VnetHdr { gso_size: 0, ..USO };
        assert_eq!(udp_gso_from_guest(&h, 10), Err(UdpGsoError::ZeroSize));
        let h = VnetHdr { flags: 0, ..USO };
        assert_eq!(
            udp_gso_from_guest(&h, 12_000),
            Err(UdpGsoError::NoPartialChecksum)
        );
        // 128 datagrams at most; 1-byte datagrams of a 60 KB payload are refused.
        let h = VnetHdr {
            gso_size: 100,
            ..USO
        };
        assert_eq!(udp_gso_from_guest(&h, 12_800), Ok(Some(100)));
        assert_eq!(
            udp_gso_from_guest(&h, 12_801),
            Err(UdpGsoError::TooManySegments)
        );
        let h = VnetHdr { gso_size: 1, ..USO };
        assert_eq!(
            udp_gso_from_guest(&h, 60_000),
            Err(UdpGsoError::TooManySegments)
        );
    }

    #[test]
    fn segments_cover_the_payload_in_order() {
        let v: Vec<_> = udp_segments(3000, 1000).collect();
        assert_eq!(v, [(0, 1000), (1000, 1000), (2000, 1000)]);
        let v: Vec<_> = udp_segments(2501, 1000).collect();
        assert_eq!(v, [(0, 1000), (1000, 1000), (2000, 501)]);
        assert_eq!(udp_segments(999, 1000).collect::<Vec<_>>(), [(0, 999)]);
        assert_eq!(udp_segments(0, 1000).collect::<Vec<_>>(), [(0, 0)]);
        assert_eq!(udp_segments(10, 0).count(), 0);
        for (len, size) in [(65_507, 1472), (64_000, 1000), (7, 1), (1473, 1472)] {
            let mut at = 0;
            for (off, l) in udp_segments(len, size) {
                assert_eq!(off, at);
                assert!(l > 0 && l <= size);
                at += l;
            }
            assert_eq!(at, len, "{len}/{size}");
        }
    }

    #[test]
    fn train_becomes_a_uso_frame_whose_partial_checksum_completes() {
        let mut f = udp4(10 * 1200 + 17);
        let h = offload_udp(&mut f, 1500, 1200).unwrap();
        assert_eq!(
            h,
            VnetHdr {
                gso_size: 1200,
                ..USO
            }
        );
        assert!(
            !udp4_verifies(&f),
            "the field holds only the pseudo-header sum"
        );
        complete(&mut f, &h);
        assert!(udp4_verifies(&f));
    }

    /// What the guest's kernel does with each segment (`__udp_gso_segment`): swap the train's
    /// UDP length for the segment's in the partial sum, then complete over the segment.
    #[test]
    fn each_segment_the_kernel_cuts_checksums_right() {
        let mut f = udp4(3 * 1000 + 10);
        let h = offload_udp(&mut f, 1500, 1000).unwrap();
        let partial = u16::from_be_bytes([f[40], f[41]]);
        for (off, len) in udp_segments(3010, 1000) {
            let mut seg = udp4(len);
            seg[42..].copy_from_slice(&f[42 + off..42 + off + len]);
            let new_len = (8 + len) as u16;
            // csum16_add(csum16_sub(check, old_len), new_len)
            let sub = u32::from(partial) + u32::from(!3018u16);
            let adjusted = fold(fold(sub) as u32 + u32::from(new_len));
            seg[40..42].copy_from_slice(&adjusted.to_be_bytes());
            complete(&mut seg, &h);
            assert!(udp4_verifies(&seg), "segment at {off}");
        }
    }

    #[test]
    fn uso_frames_respect_the_mtu_and_segment_limits() {
        // 1472 + 8 + 20 == 1500: the largest datagram of an MTU-1500 guest.
        let mut f = udp4(4 * 1472);
        assert_eq!(
            offload_udp(&mut f, 1500, 1472).map(|h| h.gso_size),
            Some(1472)
        );
        // One byte more would make 1501-byte packets: refused, the frame left alone.
        let mut f = udp4(4 * 1473);
        let before = f.clone();
        assert_eq!(offload_udp(&mut f, 1500, 1473), None);
        assert_eq!(f, before);
        // 64 datagrams at most.
        assert!(offload_udp(&mut udp4(64 * 1000), 1500, 1000).is_some());
        assert_eq!(offload_udp(&mut udp4(64 * 1000 + 1), 1500, 1000), None);
        // One datagram, size 0, a UDP length that disagrees with IP, TCP: no USO.
        assert_eq!(offload_udp(&mut udp4(1000), 1500, 1000), None);
        assert_eq!(offload_udp(&mut udp4(3000), 1500, 0), None);
        let mut f = udp4(3000);
        f[38..40].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(offload_udp(&mut f, 1500, 1000), None);
        assert_eq!(offload_udp(&mut tcp4(3000, false, &[]), 1500, 1000), None);
        for len in 0..50 {
            let mut g = udp4(3000);
            g.truncate(len);
            assert_eq!(offload_udp(&mut g, 1500, 1000), None);
        }
    }

    #[test]
    fn ipv6_uso_frame() {
        let payload = 5 * 1000;
        let mut f = vec![0u8; ETH_LEN + 40 + 8 + payload];
        f[12..14].copy_from_slice(&ETH_IPV6);
        f[ETH_LEN] = 0x60;
        f[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        f[ETH_LEN + 6] = PROTO_UDP;
        f[ETH_LEN + 8] = 0xfd;
        f[ETH_LEN + 24] = 0xfd;
        f[ETH_LEN + 40 + 4..ETH_LEN + 40 + 6]
            .copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        f[ETH_LEN + 48] = 0x77;
        let h = offload_udp(&mut f, 1500, 1000).unwrap();
        assert_eq!((h.csum_start, h.hdr_len, h.csum_offset), (54, 62, 6));
        // 40 + 8 + 1452 == 1500 is the IPv6 boundary.
        assert!(offload_udp(&mut f.clone(), 1500, 1453).is_none());
        complete(&mut f, &h);
        let udp = smoltcp::wire::UdpPacket::new_checked(&f[54..]).unwrap();
        let a = |b: &[u8]| smoltcp::wire::IpAddress::Ipv6(<[u8; 16]>::try_from(b).unwrap().into());
        assert!(udp.verify_checksum(&a(&f[22..38]), &a(&f[38..54])));
    }
}
