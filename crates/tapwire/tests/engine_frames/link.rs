//! The link layer and configuration: ARP, DHCP, IPv6 router and neighbour discovery.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

use crate::frames::{self, parse_icmp6, parse_udp, BROADCAST, ETH_IPV4, GUEST_MAC, UDP};
use crate::harness::{deadline, test_net, Harness};

#[test]
fn arp_for_gateway_and_dns_answered_only() {
    let h = Harness::start();
    h.arp_gateway(); // checks every field of the reply
                     // The DNS address is the engine's too; another address in the network is not.
    h.send(&frames::arp(
        1,
        h.guest_ip,
        [0; 6],
        Ipv4Addr::new(10, 0, 2, 77),
    ));
    h.send(&frames::arp(1, h.guest_ip, [0; 6], h.net.dns()));
    let f = h.recv_match(deadline(), |f| {
        matches!(frames::parse_eth(f), Some((_, _, frames::ETH_ARP, _)))
    });
    let p = &f[14..];
    assert_eq!(p[6..8], [0, 2], "reply");
    assert_eq!(p[8..14], h.host_mac);
    assert_eq!(
        p[14..18],
        h.net.dns().octets(),
        "answer for the DNS address, not .77"
    );
    assert!(h.fence(1).is_empty(), "nothing else answered");
    let stats = h.stop();
    assert_eq!(stats.drops.get(tapwire_proto::wire::DropReason::Arp), 1);
}

fn dhcp(msg_type: u8, xid: u32, opts: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 240];
    b[..3].copy_from_slice(&[1, 1, 6]);
    b[4..8].copy_from_slice(&xid.to_be_bytes());
    b[10] = 0x80; // broadcast
    b[28..34].copy_from_slice(&GUEST_MAC);
    b[236..240].copy_from_slice(&[99, 130, 83, 99]);
    b.extend_from_slice(&[53, 1, msg_type]);
    b.extend_from_slice(opts);
    b.extend_from_slice(&[55, 4, 1, 3, 6, 26, 255]);
    let src = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
    let dst = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let d = frames::udp4(src, dst, &b);
    frames::eth(
        BROADCAST,
        ETH_IPV4,
        &frames::ipv4_packet(*src.ip(), *dst.ip(), UDP, &d),
    )
}

/// The reply to `xid`: (yiaddr, siaddr, options).
fn dhcp_reply(h: &Harness, xid: u32) -> (Ipv4Addr, Ipv4Addr, HashMap<u8, Vec<u8>>) {
    let f = h.recv_match(deadline(), |f| {
        parse_udp(f).is_some_and(|(s, _, _)| s.port() == 67)
    });
    assert_eq!(f[..6], BROADCAST, "DHCP replies are broadcast");
    assert_eq!(f[6..12], h.host_mac);
    let (src, dst, b) = parse_udp(&f).unwrap();
    assert_eq!(src, SocketAddrV4::new(h.gateway(), 67));
    assert_eq!(dst, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    assert!(b.len() >= 241, "BOOTP reply length");
    assert_eq!(b[..3], [2, 1, 6], "BOOTREPLY, Ethernet");
    assert_eq!(b[4..8], xid.to_be_bytes(), "xid");
    assert_eq!(b[28..34], GUEST_MAC, "chaddr");
    assert_eq!(b[236..240], [99, 130, 83, 99], "magic cookie");
    let ip = |o: usize| Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]);
    let mut opts = HashMap::new();
    let mut i = 240;
    while b[i] != 255 {
        if b[i] == 0 {
            i += 1;
            continue;
        }
        let len = usize::from(b[i + 1]);
        opts.insert(b[i], b[i + 2..i + 2 + len].to_vec());
        i += 2 + len;
    }
    (ip(16), ip(20), opts)
}

#[test]
fn dhcp_discover_offer_request_ack() {
    let h = Harness::start();
    let gw = h.gateway().octets().to_vec();
    let expected = Ipv4Addr::new(10, 0, 2, 15); // network+15, the pool's first address
    h.send(&dhcp(1, 0x1234_5678, &[]));
    let (yiaddr, siaddr, o) = dhcp_reply(&h, 0x1234_5678);
    assert_eq!(o[&53], [2], "OFFER");
    assert_eq!(yiaddr, expected);
    assert_eq!(siaddr, h.gateway());
    assert_eq!(o[&54], gw, "server id");
    assert_eq!(o[&1], [255, 255, 255, 0], "netmask");
    assert_eq!(o[&3], gw, "router");
    assert_eq!(o[&26], 1500u16.to_be_bytes(), "MTU");
    assert!(!o.contains_key(&6), "no DNS server with the forwarder off");
    let mut req = vec![50, 4];
    req.extend_from_slice(&expected.octets());
    req.extend_from_slice(&[54, 4]);
    req.extend_from_slice(&gw);
    h.send(&dhcp(3, 0x1234_5679, &req));
    let (yiaddr, _, o) = dhcp_reply(&h, 0x1234_5679);
    assert_eq!(o[&53], [5], "ACK");
    assert_eq!(yiaddr, expected);
    assert_eq!(o[&51], 86_400u32.to_be_bytes(), "lease time");
    assert_eq!(o[&3], gw, "router");
    // A REQUEST for an address outside the pool is refused.
    let mut bad = vec![50, 4, 10, 0, 2, 200, 54, 4];
    bad.extend_from_slice(&gw);
    h.send(&dhcp(3, 0x1234_567a, &bad));
    let (_, _, o) = dhcp_reply(&h, 0x1234_567a);
    assert_eq!(o[&53], [6], "NAK");
    h.stop();
}

const GUEST_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x0000, 0x5eff, 0xfe10, 0x64);

fn v6_harness() -> Harness {
    let mut net = test_net();
    net.enable_ipv6 = true;
    Harness::with(net, false)
}

/// The next router advertisement, checked field by field.
fn expect_ra(h: &Harness) {
    let f = h.recv_match(deadline(), |f| {
        parse_icmp6(f).is_some_and(|m| m.5[0] == 134)
    });
    let (dst_mac, src_mac, src, dst, hop, m) = parse_icmp6(&f).unwrap();
    assert_eq!(dst_mac, [0x33, 0x33, 0, 0, 0, 1], "to all nodes");
    assert_eq!(src_mac, h.host_mac);
    assert_eq!(
        src,
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2),
        "from fe80::2"
    );
    assert_eq!(dst, Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1));
    assert_eq!(hop, 255, "NDP hop limit");
    assert_eq!(m[1], 0, "code");
    assert!(
        u16::from_be_bytes([m[6], m[7]]) > 0,
        "router lifetime: a default router"
    );
    let mut opts = HashMap::new();
    let mut o = &m[16..];
    while o.len() >= 8 {
        let len = usize::from(o[1]) * 8;
        assert!(len >= 8 && len <= o.len(), "option length");
        opts.insert(o[0], o[..len].to_vec());
        o = &o[len..];
    }
    assert_eq!(opts[&1][2..8], h.host_mac, "source link-layer address");
    assert_eq!(opts[&5][4..8], 1500u32.to_be_bytes(), "MTU");
    let p = &opts[&3];
    assert_eq!((p[2], p[3] & 0xc0), (64, 0xc0), "/64, on-link, autonomous");
    assert_eq!(
        p[16..32],
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0).octets(),
        "prefix"
    );
    assert!(!opts.contains_key(&25), "no RDNSS with the forwarder off");
}

#[test]
fn ndp_router_solicitation_answered() {
    let h = v6_harness();
    // The unsolicited RA of the first second; the next one is a minute away, so the RA
    // after our solicitation is its answer.
    expect_ra(&h);
    let mut rs = vec![133, 0, 0, 0, 0, 0, 0, 0, 1, 1];
    rs.extend_from_slice(&GUEST_MAC);
    let all_routers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
    h.send(&frames::icmp6(
        [0x33, 0x33, 0, 0, 0, 2],
        GUEST_LL,
        all_routers,
        255,
        &rs,
    ));
    expect_ra(&h);
    h.stop();
}

#[test]
fn ndp_neighbor_solicitation_for_gateway_answered() {
    let h = v6_harness();
    let guest = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0x5eff, 0xfe10, 0x64);
    let gw6 = h.net.gateway6();
    for (src, target) in [(guest, gw6), (GUEST_LL, h.net.link_local6())] {
        let t = target.octets();
        let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
        ns.extend_from_slice(&t);
        ns.extend_from_slice(&[1, 1]);
        ns.extend_from_slice(&GUEST_MAC);
        let solicited = Ipv6Addr::new(
            0xff02,
            0,
            0,
            0,
            0,
            1,
            0xff00 | u16::from(t[13]),
            u16::from_be_bytes([t[14], t[15]]),
        );
        let mac = [0x33, 0x33, 0xff, t[13], t[14], t[15]];
        h.send(&frames::icmp6(mac, src, solicited, 255, &ns));
        let f = h.recv_match(deadline(), |f| {
            parse_icmp6(f).is_some_and(|m| m.5[0] == 136)
        });
        let (dst_mac, src_mac, from, to, hop, m) = parse_icmp6(&f).unwrap();
        assert_eq!((dst_mac, src_mac), (GUEST_MAC, h.host_mac));
        assert_eq!((from, to, hop), (target, src, 255));
        assert_ne!(m[4] & 0x40, 0, "solicited flag");
        assert_eq!(m[8..24], t, "target");
        assert!(
            m.len() >= 32 && m[24..26] == [2, 1],
            "target link-layer option"
        );
        assert_eq!(m[26..32], h.host_mac);
    }
    // Neighbours known: a ping of the IPv6 gateway is answered.
    let mut echo = vec![128, 0, 0, 0, 0x12, 0x34, 0, 9];
    echo.extend_from_slice(b"ipv6 ping payload");
    h.send(&frames::icmp6(h.host_mac, guest, gw6, 64, &echo));
    let f = h.recv_match(deadline(), |f| {
        parse_icmp6(f).is_some_and(|m| m.5[0] == 129)
    });
    let (_, _, from, to, _, m) = parse_icmp6(&f).unwrap();
    assert_eq!((from, to), (gw6, guest));
    assert_eq!(m[4..], echo[4..], "identifier, sequence and payload echoed");
    h.stop();
}
