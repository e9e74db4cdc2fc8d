//! UDP NAT to host sockets (round trip, one binding per guest endpoint, fragmented replies,
//! idle expiry) and ping of the engine's own addresses.

use std::net::{SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use crate::frames::{self, fold, parse_ipv4, parse_udp, pattern, pseudo4, sum, GUEST_MAC, UDP};
use crate::harness::{deadline, test_net, wait_until, Harness, DEADLINE};

fn host_udp() -> (UdpSocket, u16) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind udp 127.0.0.1:0");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let port = s.local_addr().unwrap().port();
    (s, port)
}

fn send_udp(h: &Harness, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) {
    let d = frames::udp4(from, to, payload);
    h.send(&frames::ipv4(h.host_mac, *from.ip(), *to.ip(), UDP, &d));
}

/// The next datagram for `to` from `from` (frames for others are discarded).
fn recv_udp(h: &Harness, from: SocketAddrV4, to: SocketAddrV4) -> Vec<u8> {
    let f = h.recv_match(deadline(), |f| {
        parse_udp(f).is_some_and(|(s, d, _)| s == from && d == to)
    });
    assert_eq!(parse_ipv4(&f).unwrap().dst_mac, GUEST_MAC);
    parse_udp(&f).unwrap().2
}

#[test]
fn udp_nat_roundtrip() {
    let h = Harness::start();
    h.arp_gateway();
    let (host, port) = host_udp();
    let (g1, g2, gw) = (h.guest_at(5555), h.guest_at(5556), h.gateway_at(port));
    send_udp(&h, g1, gw, b"hello from the guest");
    let mut buf = [0u8; 65_536];
    let (n, peer) = host.recv_from(&mut buf).expect("datagram at the host");
    assert_eq!(&buf[..n], b"hello from the guest");
    assert!(peer.ip().is_loopback(), "from {peer}");
    host.send_to(b"reply from the host", peer).unwrap();
    assert_eq!(recv_udp(&h, gw, g1), b"reply from the host");
    // Same guest endpoint, same binding; another endpoint, another one.
    send_udp(&h, g1, gw, b"second");
    let (n, peer_again) = host.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], peer_again), (&b"second"[..], peer));
    send_udp(&h, g2, gw, b"other port");
    let (n, peer2) = host.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"other port");
    assert_ne!(peer2, peer, "one binding per guest endpoint");
    host.send_to(b"to the second", peer2).unwrap();
    assert_eq!(recv_udp(&h, gw, g2), b"to the second");
    // A reply bigger than the MTU arrives as IPv4 fragments that reassemble exactly.
    let big = pattern(4000, 21);
    host.send_to(&big, peer).unwrap();
    let mut parts: Vec<(usize, Vec<u8>, bool)> = Vec::new();
    let mut ident = None;
    let until = deadline();
    while !parts.iter().any(|p| !p.2) {
        let f = h.recv(until).expect("fragments of the big reply");
        let Some(ip) = parse_ipv4(&f) else { continue };
        if ip.proto != UDP || ip.frag & 0x3fff == 0 {
            continue;
        }
        assert_eq!(
            *ident.get_or_insert(ip.ident),
            ip.ident,
            "one datagram's fragments"
        );
        assert!(f.len() <= 1514);
        let off = usize::from(ip.frag & 0x1fff) * 8;
        parts.push((off, ip.payload.to_vec(), ip.frag & 0x2000 != 0));
    }
    parts.sort_by_key(|p| p.0);
    let mut whole = Vec::new();
    for (off, p, _) in &parts {
        assert_eq!(*off, whole.len(), "fragments contiguous");
        whole.extend_from_slice(p);
    }
    assert!(parts.len() >= 3, "{} fragments for 4000 bytes", parts.len());
    assert_eq!(whole.len(), 8 + big.len());
    assert_eq!(
        fold(sum(
            &whole,
            pseudo4(h.gateway(), h.guest_ip, UDP, whole.len())
        )),
        0
    );
    assert_eq!(whole[0..4], [(port >> 8) as u8, port as u8, 0x15, 0xb3]); // port -> 5555
    assert!(whole[8..] == big[..], "reassembled payload");
    h.stop();
}

fn udp_bindings(h: &Harness) -> Vec<String> {
    let v = h.api(r#"{"execute":"list_connections"}"#);
    v["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["proto"] == "udp")
        .map(|c| {
            format!(
                "{} {}",
                c["guest"].as_str().unwrap(),
                c["remote"].as_str().unwrap()
            )
        })
        .collect()
}

/// The regular idle timeout (60 s) is too long for a test; port 53 bindings have a 10 s one
/// (`DNS_IDLE_MS`), so one of those expires here while a regular binding born with it lives
/// on and still carries replies.
#[test]
fn udp_binding_expires_when_idle() {
    let h = Harness::with(test_net(), true);
    h.arp_gateway();
    let (host, port) = host_udp();
    let (g1, g2) = (h.guest_at(5601), h.guest_at(5602));
    let (gw, gw53) = (h.gateway_at(port), h.gateway_at(53));
    send_udp(&h, g1, gw, b"keep");
    let mut buf = [0u8; 100];
    let (_, peer) = host.recv_from(&mut buf).unwrap();
    // Port 53 of host loopback: not a DNS query (the forwarder is off), whoever listens.
    send_udp(&h, g2, gw53, b"tick");
    let (regular, short) = (format!("{g1} {gw}"), format!("{g2} {gw53}"));
    wait_until("both bindings", || {
        let b = udp_bindings(&h);
        b.contains(&regular) && b.contains(&short)
    });
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(15);
    while udp_bindings(&h).contains(&short) {
        assert!(
            Instant::now() < until,
            "port 53 binding did not expire in 15 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let lived = t0.elapsed();
    assert!(
        lived >= Duration::from_secs(8),
        "expired after {lived:?}, idle timeout is 10 s"
    );
    assert!(
        udp_bindings(&h).contains(&regular),
        "60 s binding expired early"
    );
    host.send_to(b"still bound", peer).unwrap();
    assert_eq!(recv_udp(&h, gw, g1), b"still bound");
    let total = |h: &Harness| h.api(r#"{"execute":"get_stats"}"#)["flows_total"]["udp"].clone();
    assert_eq!(total(&h), 2);
    send_udp(&h, g2, gw53, b"tick");
    wait_until("a fresh binding", || udp_bindings(&h).contains(&short));
    assert_eq!(total(&h), 3, "a new binding after expiry");
    h.stop();
}

#[test]
fn icmp_echo_to_gateway_and_dns_answered() {
    let h = Harness::start();
    h.arp_gateway();
    for (i, dst) in [h.gateway(), h.net.dns()].into_iter().enumerate() {
        for (seq, len) in [(1u16, 56usize), (2, 1400)] {
            let data = pattern(len, u64::from(seq) + i as u64 * 10);
            let ident = 0x4d2 + i as u16;
            let echo = frames::icmp4(8, ident, seq, &data);
            h.send(&frames::ipv4(
                h.host_mac,
                h.guest_ip,
                dst,
                frames::ICMP,
                &echo,
            ));
            let f = h.recv_match(deadline(), |f| {
                frames::parse_icmp4(f).is_some_and(|(_, m)| m[0] == 0)
            });
            let (ip, m) = frames::parse_icmp4(&f).unwrap();
            assert_eq!((ip.src, ip.dst, ip.dst_mac), (dst, h.guest_ip, GUEST_MAC));
            assert_eq!(m[1], 0, "echo reply code");
            assert_eq!(u16::from_be_bytes([m[4], m[5]]), ident, "identifier");
            assert_eq!(u16::from_be_bytes([m[6], m[7]]), seq, "sequence");
            assert!(m[8..] == data[..], "payload echoed");
        }
    }
    h.stop();
}
