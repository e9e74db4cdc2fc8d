//! Validation and classification of guest frames: [`classify`] and [`classify_offloaded`].
//!
//! # Theory of operation
//! One pass from the outside in, returning at the first thing wrong: Ethernet (our MAC,
//! broadcast or multicast), then by ethertype ARP (only for the gateway/DNS addresses), IPv4
//! (version, header checksum, no options, no fragments, addresses that can be proxied; DHCP is
//! the one exception allowed from 0.0.0.0 to broadcast) or IPv6 (when enabled: TCP/UDP between
//! unicast addresses, ICMPv6 echo to us, NDP with hop limit 255 for our addresses), then the
//! transport (checksum unless left to offload, TCP flag sanity, non-zero ports). Every refusal
//! is a [`DropReason`]; nothing here panics or allocates, whatever the bytes.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use smoltcp::wire::{
    ArpOperation, ArpPacket, EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv6Packet,
    IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket,
};

use super::checksum::checksum;
use super::{Class, DropReason, EchoInfo, Link6, LinkInfo, TcpInfo, UdpInfo, ETH_LEN, IP_LEN};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::*;
    use crate::wire::*;
    use std::net::SocketAddrV4;

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

    #[test]
    fn arp_only_for_our_addresses() {
        assert_eq!(classify(&arp_request(LINK.gateway), &LINK), Class::Stack);
        assert_eq!(classify(&arp_request(LINK.dns), &LINK), Class::Stack);
        assert_eq!(
            classify(&arp_request(Ipv4Addr::new(10, 0, 2, 50)), &LINK),
            Class::Drop(DropReason::Arp)
        );
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
}
