//! Reply-frame building: the frames tapwire sends to the guest.
//!
//! # Theory of operation
//! Every builder writes into a caller's frame buffer and returns the frame length, or `None`
//! when the buffer is too small, the packet would exceed the IP length field, or the input is
//! not what the builder answers; it never panics. Payloads are placed by the caller first, at
//! their final offset (`UDP_PAYLOAD`/[`udp_payload_offset`](super::udp_payload_offset),
//! `ICMP_OFFSET`), and the builder writes the transport header (with its checksum), then the IP
//! header (`finish_ipv4`/`finish_ipv6`: TTL 64, hop limit 255 for ICMPv6 as NDP requires) and
//! the Ethernet header around it:
//! - [`finish_udp`] / [`finish_dhcp`]: a datagram from a host socket, or a DHCP reply broadcast;
//! - [`finish_echo_reply`]: an echo reply from a host ICMP socket, identifier restored;
//! - [`icmp_error`] / [`icmp6_error`]: destination unreachable, quoting the offending packet;
//! - [`tcp_rst`]: RST|ACK answering a SYN ("connection refused");
//! - [`router_advert`] (with [`multicast_mac`] for its destination): the IPv6 RA for SLAAC.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

use super::checksum::{checksum, pseudo_header_sum};
use super::{
    l4_offset, udp_payload_offset, RouterAdvert, TcpInfo, Unreachable, ETH_LEN, ICMP_OFFSET,
    IP6_LEN, IP_LEN, IP_OFFSET, L2,
};

/// Write Ethernet + IPv4 headers for an IP payload of `payload_len` bytes already at
/// `frame[ICMP_OFFSET..]`. Returns the frame length, or `None` if the frame buffer is too small
/// or the packet would exceed 65535 bytes.
pub(super) fn finish_ipv4(
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
pub(super) fn finish_ipv6(
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
pub(super) fn finish_ip(
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
    finish_udp_with(frame, l2, src, dst, len, ident, true)
}

/// [`finish_udp`] without summing the payload (the checksum field is left 0), for a frame
/// whose checksum an offload fills in (`vnet::offload_udp`).
pub fn finish_udp_unsummed(
    frame: &mut [u8],
    l2: &L2,
    src: SocketAddr,
    dst: SocketAddr,
    len: usize,
    ident: u16,
) -> Option<usize> {
    finish_udp_with(frame, l2, src, dst, len, ident, false)
}

fn finish_udp_with(
    frame: &mut [u8],
    l2: &L2,
    src: SocketAddr,
    dst: SocketAddr,
    len: usize,
    ident: u16,
    sum: bool,
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
    if sum {
        let pseudo = pseudo_header_sum(src.ip(), dst.ip(), 17, udp_len);
        let mut c = checksum(udp, pseudo);
        if c == 0 {
            c = 0xffff;
        }
        udp[6..8].copy_from_slice(&c.to_be_bytes());
    }
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

/// Build a RST|ACK answering a guest SYN (`syn` from [`classify`](super::classify())): the
/// guest sees "connection refused".
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::*;
    use crate::wire::*;
    use smoltcp::wire::{Icmpv6Packet, IpAddress, Ipv4Packet, Ipv6Packet, TcpPacket};

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
