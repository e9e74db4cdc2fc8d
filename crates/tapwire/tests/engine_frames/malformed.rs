//! Malformed frames are dropped without a reply, counted by reason (control socket and the
//! engine's final counters agree), reach no host socket, and the engine keeps serving.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, UdpSocket};

use tapwire_proto::wire::DropReason;

use crate::frames::{self, Seg, FIN, ICMP, OTHER_MAC, SYN, TCP, UDP};
use crate::guest_tcp::Conn;
use crate::harness::{deadline, test_net, Harness};
use crate::tcp::{accept, listener};

#[test]
fn malformed_frames_dropped_counted_and_engine_keeps_serving() {
    let h = Harness::with(test_net(), true);
    h.arp_gateway();
    let (l, port) = listener();
    l.set_nonblocking(true).unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let uport = udp.local_addr().unwrap().port();
    let (g, gw) = (h.guest_ip, h.gateway());
    let mac = h.host_mac;
    let echo = frames::icmp4(8, 7, 1, &frames::pattern(32, 1));
    let good = frames::ipv4(mac, g, gw, ICMP, &echo);
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = good.clone();
        f(&mut v);
        v
    };
    let syn = |flags: u8| {
        let s = Seg {
            flags,
            seq: 1,
            wnd: 1000,
            ..Seg::default()
        };
        frames::tcp4(h.guest_at(41000), h.gateway_at(port), &s)
    };
    let udp_dgram = frames::udp4(h.guest_at(41001), h.gateway_at(uport), b"must not arrive");

    use DropReason::*;
    let cases: Vec<(&str, DropReason, Vec<u8>)> = vec![
        ("runt frame", Truncated, good[..10].to_vec()),
        ("empty frame", Truncated, Vec::new()),
        ("IPv4 header cut", Truncated, good[..26].to_vec()),
        (
            "total length past the frame",
            Truncated,
            edit(&|v| {
                v[16..18].copy_from_slice(&200u16.to_be_bytes());
                frames::fix_ip_checksum(v);
            }),
        ),
        (
            "total length under the header",
            Truncated,
            edit(&|v| {
                v[16..18].copy_from_slice(&10u16.to_be_bytes());
                frames::fix_ip_checksum(v);
            }),
        ),
        (
            "IHL 4",
            Truncated,
            edit(&|v| {
                v[14] = 0x44;
                frames::fix_ip_checksum(v);
            }),
        ),
        ("IP header checksum", Checksum, edit(&|v| v[24] ^= 0x5a)),
        (
            "IP version 6 in IPv4",
            BadIpHeader,
            edit(&|v| {
                v[14] = 0x65;
                frames::fix_ip_checksum(v);
            }),
        ),
        ("IP options", IpOptions, {
            let mut p = frames::ipv4_packet(g, gw, ICMP, &echo);
            p.splice(20..20, [1, 1, 1, 0]);
            p[0] = 0x46;
            let len = p.len() as u16;
            p[2..4].copy_from_slice(&len.to_be_bytes());
            let mut f = frames::eth(mac, frames::ETH_IPV4, &p);
            frames::fix_ip_checksum(&mut f);
            f
        }),
        ("ICMP checksum", Checksum, edit(&|v| v[36] ^= 0x01)),
        (
            "ICMP timestamp request",
            Icmp,
            frames::ipv4(mac, g, gw, ICMP, &frames::icmp4(13, 1, 1, &[0; 12])),
        ),
        (
            "unknown IP protocol",
            Protocol,
            frames::ipv4(mac, g, gw, 47, &[0; 8]),
        ),
        (
            "loopback source",
            Address,
            frames::ipv4(mac, Ipv4Addr::LOCALHOST, gw, ICMP, &echo),
        ),
        ("another MAC", NotOurMac, {
            let mut v = good.clone();
            v[..6].copy_from_slice(&OTHER_MAC);
            v
        }),
        (
            "unknown ethertype",
            Ethertype,
            frames::eth(mac, 0x88b5, &[0; 46]),
        ),
        (
            "IPv6 while disabled",
            Ipv6,
            frames::icmp6(
                mac,
                Ipv6Addr::LOCALHOST,
                Ipv6Addr::LOCALHOST,
                64,
                &[128, 0, 0, 0, 0, 0, 0, 0],
            ),
        ),
        (
            "ARP for another address",
            Arp,
            frames::arp(1, g, [0; 6], Ipv4Addr::new(10, 0, 2, 77)),
        ),
        ("TCP checksum (SYN to a live listener)", Checksum, {
            let mut t = syn(SYN);
            t[16] ^= 0xff;
            frames::ipv4(mac, g, gw, TCP, &t)
        }),
        (
            "SYN+FIN",
            TcpFlags,
            frames::ipv4(mac, g, gw, TCP, &syn(SYN | FIN)),
        ),
        (
            "TCP without flags",
            TcpFlags,
            frames::ipv4(mac, g, gw, TCP, &syn(0)),
        ),
        ("UDP checksum (to a live socket)", Checksum, {
            let mut d = udp_dgram.clone();
            d[6] ^= 0xff;
            frames::ipv4(mac, g, gw, UDP, &d)
        }),
        ("UDP length past the packet", Truncated, {
            let mut d = udp_dgram.clone();
            d[4..6].copy_from_slice(&500u16.to_be_bytes());
            frames::ipv4(mac, g, gw, UDP, &d)
        }),
    ];
    for (_, _, f) in &cases {
        h.send(f);
    }
    // A message shorter than its virtio-net header.
    h.send_raw(&[0; 4]);
    // Every frame before the fence has been handled: none of them got an answer.
    let before = h.fence(100);
    assert!(
        before.is_empty(),
        "replies to malformed frames: {before:02x?}"
    );
    assert_eq!(
        l.accept().map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "no host connect"
    );
    let mut buf = [0u8; 64];
    assert_eq!(
        udp.recv_from(&mut buf).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "no datagram"
    );

    let mut want = std::collections::BTreeMap::new();
    for (_, r, _) in &cases {
        *want.entry(r.name()).or_insert(0u64) += 1;
    }
    *want.entry(Gso.name()).or_insert(0) += 1;
    let total: u64 = want.values().sum();
    let s = h.api(r#"{"execute":"get_stats"}"#);
    for (name, n) in &want {
        assert_eq!(
            s["drops"][name].as_u64(),
            Some(*n),
            "drops.{name} in get_stats: {s}"
        );
    }
    assert_eq!(s["drops_total"].as_u64(), Some(total), "drops_total: {s}");

    // Still serving: the same flows work when well-formed.
    let mut c = Conn::connect(&h, 41002, h.gateway_at(port));
    let _host = accept(&l);
    c.send_all(b"fine", deadline());
    let ok = frames::udp4(h.guest_at(41001), h.gateway_at(uport), b"arrives");
    h.send(&frames::ipv4(mac, g, gw, UDP, &ok));
    udp.set_nonblocking(false).unwrap();
    udp.set_read_timeout(Some(crate::harness::DEADLINE))
        .unwrap();
    let (n, _) = udp.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"arrives");

    let stats = h.stop();
    for r in DropReason::ALL {
        assert_eq!(
            stats.drops.get(r),
            want.get(r.name()).copied().unwrap_or(0),
            "final drops.{}",
            r.name()
        );
    }
    assert_eq!(stats.drops.total(), total);
}
