//! IPv6 (`-6/--enable-ipv6`), end to end: the SLAAC address and default route, the router
//! advertisement's content (read with a raw ICMPv6 socket in the guest after a router
//! solicitation: prefix, MTU, RDNSS, router address, hop limit 255), TCP and UDP to the gateway
//! fd00::2 = host ::1 (sha256-checked bulk transfers both ways, replies bigger than the MTU),
//! ping6, DNS over IPv6 to fd00::3, and TCP to an IPv6 host in a third namespace (fd77::2 behind
//! a veth, ULA only). Options (`--cidr6`, `--disable-host-loopback`, port forwards, no `-6`) are
//! tests/ipv6_config.rs.
//!
//! Each test builds a private host namespace (loopback only: 127.0.0.1 and ::1, no routes
//! out) and a guest namespace (see tests/common), starts the daemon with `-c -6` and lets the
//! guest's own kernel do the IPv6 work: the daemon only brings tap0 up, the kernel sends a
//! router solicitation, takes the prefix from the daemon's router advertisement (SLAAC) and
//! runs duplicate address detection on it. So every test first waits until the guest's SLAAC
//! address exists and is no longer tentative ([`wait_slaac`]); that also proves the daemon
//! does not answer the guest's DAD probes for its own address (the address would be
//! "dadfailed").
//!
//! All of this is tapwire-only (slirp4netns's IPv6 uses other conventions); needs root, see
//! tests/common for the skip policy (TAPWIRE_ALLOW_SKIP=1).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use common::ipv6::*;
use common::*;

// =============================================================================================
// 1. SLAAC, default route, router advertisement.
// =============================================================================================

#[test]
fn slaac_address_default_route_and_router_advert() {
    if !preflight(&["python3"]) || !tapwire_only("IPv6 with fd00::/64") {
        return;
    }
    let w = World6::new(&[]);
    assert!(
        same_64(w.addr, PREFIX),
        "SLAAC address {} in fd00::/64",
        w.addr
    );
    assert!(
        u128::from(w.addr) as u64 != 0,
        "SLAAC address has an interface identifier: {}",
        w.addr
    );
    let routes = w.guest.sh("ip -6 route show", SETUP_TIMEOUT).ok().stdout;
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with("default via fe80::2 dev tap0") && l.contains("proto ra")),
        "default route via fe80::2 learned from the RA:\n{routes}"
    );
    assert!(
        routes.lines().any(|l| l.starts_with("fd00::/64 dev tap0")),
        "on-link route for the prefix:\n{routes}"
    );
    // The periodic RA went out ~1 s after start; the next is a minute away: an RA within 5 s
    // of this solicitation answers it.
    let (ra, out) = solicit_ra(&w.guest, 5);
    check_ra(&ra, &out, PREFIX, 1500, Some(DNS6));
    eprintln!("RA: {ra:?}");
}

// =============================================================================================
// 2. TCP to [fd00::2] = host [::1], both ways.
// =============================================================================================

#[test]
fn tcp_to_gateway_reaches_host_ipv6_loopback() {
    if !preflight(&[]) || !tapwire_only("IPv6") {
        return;
    }
    let w = World6::new(&[]);
    // Only [::1] listens: the daemon must connect to ::1, not 127.0.0.1.
    check_upload(
        &w.guest,
        host_listen6(&w.host, 20610),
        sa(GW6, 20610),
        &random_bytes(BULK, 61),
    );
    check_download(
        &w.guest,
        host_listen6(&w.host, 20611),
        sa(GW6, 20611),
        random_bytes(BULK, 62),
    );
    // The host server sees the daemon's ::1 connection, the guest a refused one without it.
    let l = host_listen6(&w.host, 20612);
    let c = w.guest.connect(sa(GW6, 20612), SETUP_TIMEOUT).unwrap();
    let (_, peer) = accept_timeout(&l, SETUP_TIMEOUT).expect("accept");
    assert_eq!(
        peer.ip(),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        "host side source"
    );
    drop(c);
    let e = w
        .guest
        .connect(sa(GW6, 20613), SETUP_TIMEOUT)
        .expect_err("connect to a closed host port");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "closed port: {e}");
}

// =============================================================================================
// 3. UDP echo over IPv6.
// =============================================================================================

#[test]
fn udp_echo_over_ipv6() {
    if !preflight(&[]) || !tapwire_only("IPv6") {
        return;
    }
    let w = World6::new(&[]);
    let sock = w
        .host
        .in_ns(|| UdpSocket::bind((Ipv6Addr::LOCALHOST, 20620)))
        .expect("host udp [::1]:20620");
    let echo = serve_udp_echo(sock, Duration::from_secs(3));
    let s = guest_udp6_to(&w.guest, sa(GW6, 20620));
    check_udp_echo_on(
        &s,
        "[fd00::2]:20620",
        &[1, 100, 512, 1000, 1232, 1400, 1452],
    );
    assert!(
        echo.join(SETUP_TIMEOUT) >= 7,
        "echo server saw every datagram"
    );
}

/// Host replies larger than the guest's MTU arrive as IPv6 fragments that the guest
/// reassembles (tapwire adds the Fragment headers).
#[test]
fn udp6_replies_larger_than_the_mtu_are_fragmented() {
    if !preflight(&[]) || !tapwire_only("IPv6") {
        return;
    }
    let w = World6::new(&[]);
    let sock = w
        .host
        .in_ns(|| UdpSocket::bind((Ipv6Addr::LOCALHOST, 20625)))
        .expect("host udp [::1]:20625");
    let server = serve_udp_big_replies(sock);
    let s = guest_udp6_to(&w.guest, sa(GW6, 20625));
    let mut buf = vec![0u8; 65536];
    for size in [1452, 1500, 4000, 9000, 30000] {
        check_big_udp_reply(&s, size, &mut buf);
    }
    assert!(server.join(SETUP_TIMEOUT) >= 5);
}

// =============================================================================================
// 4. ping6 of the gateway (and of the DNS address).
// =============================================================================================

#[test]
fn ping6_gateway_and_dns() {
    if !preflight(&["ping"]) || !tapwire_only("IPv6") {
        return;
    }
    let w = World6::new(&[]);
    for dst in ["fd00::2", "fd00::3"] {
        // The first echo may be lost while neighbor discovery completes.
        let (n, out) = ping6_received(&w.guest, dst);
        assert!(n >= 3, "ping -6 {dst}: {n} of 4 replies: {out}");
    }
}

// =============================================================================================
// 5. DNS over IPv6 to fd00::3 -> the host's resolver (dnsmasq on 127.0.0.1).
// =============================================================================================

fn dns6_udp(guest: &Guest, name: &str) -> Result<Vec<Ipv4Addr>, String> {
    let s = guest_udp6_to(guest, sa(DNS6, 53));
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let q = dns_query(name, 0x6161);
    let mut buf = [0u8; 1500];
    let mut last = String::new();
    for _ in 0..3 {
        s.send(&q).map_err(|e| format!("send: {e}"))?;
        match s.recv(&mut buf) {
            Ok(n) => return dns_answers(&buf[..n], 0x6161),
            Err(e) => last = format!("recv: {e}"),
        }
    }
    Err(last)
}

fn dns6_tcp(guest: &Guest, name: &str) -> Result<Vec<Ipv4Addr>, String> {
    let mut s = guest
        .connect(sa(DNS6, 53), Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let q = dns_query(name, 0x6262);
    let mut msg = (q.len() as u16).to_be_bytes().to_vec();
    msg.extend_from_slice(&q);
    s.write_all(&msg).map_err(|e| format!("write: {e}"))?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).map_err(|e| format!("read: {e}"))?;
    let mut resp = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut resp).map_err(|e| format!("read: {e}"))?;
    dns_answers(&resp, 0x6262)
}

#[test]
fn dns_over_ipv6() {
    if !preflight(&["dnsmasq", "busybox"]) || !tapwire_only("IPv6") {
        return;
    }
    let w = World6::new(&[]);
    let _dns = w.host.dnsmasq();
    let out = w.guest.sh(
        "busybox nslookup -type=a tapwire.test fd00::3",
        Duration::from_secs(20),
    );
    assert!(
        out.success() && out.stdout.contains("10.9.8.7"),
        "busybox nslookup via fd00::3: {out}"
    );
    let want = vec![Ipv4Addr::new(10, 9, 8, 7)];
    assert_eq!(
        dns6_udp(&w.guest, "tapwire.test"),
        Ok(want.clone()),
        "UDP query to [fd00::3]:53"
    );
    assert_eq!(
        dns6_tcp(&w.guest, "tapwire.test"),
        Ok(want),
        "TCP query to [fd00::3]:53"
    );
}

// =============================================================================================
// 6. TCP to an IPv6 host in a third namespace.
// =============================================================================================

#[test]
fn tcp_to_ipv6_peer_namespace() {
    if !preflight(&[]) || !tapwire_only("IPv6") {
        return;
    }
    let w = World6::new(&[]);
    let peer = w.host.peer();
    w.host
        .sh(&format!("ip -6 addr add {PEER_HOST6}/64 dev twhost0 nodad"))
        .ok();
    peer.sh(&format!("ip -6 addr add {PEER6}/64 dev twpeer0 nodad"))
        .ok();
    let listen = |port: u16| {
        peer.in_ns(|| TcpListener::bind((PEER6, port)))
            .unwrap_or_else(|e| panic!("peer listen [{PEER6}]:{port}: {e}"))
    };
    // The veth may need a moment before the route is usable.
    let l = listen(20630);
    wait_until(SETUP_TIMEOUT, "the host ns to reach [fd77::2]", || {
        w.host
            .in_ns(|| TcpStream::connect_timeout(&sa(PEER6, 20630), Duration::from_millis(500)))
            .is_ok()
    });
    drop(accept_timeout(&l, SETUP_TIMEOUT).expect("accept the probe"));
    // The peer sees the host namespace's own address: a real outbound IPv6 connection.
    let data = random_bytes(8 * MB, 63);
    let want = sha256_hex(&data);
    let server = serve_sink(l);
    let mut c = w
        .guest
        .connect(sa(PEER6, 20630), SETUP_TIMEOUT)
        .expect("guest connect [fd77::2]:20630");
    c.write_all(&data).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let (n, got, from) = server.join(TRANSFER_TIMEOUT);
    assert_eq!((n, got), (data.len() as u64, want), "upload to the peer");
    assert_eq!(from.ip(), IpAddr::V6(PEER_HOST6), "source seen by the peer");
    check_download(
        &w.guest,
        listen(20631),
        sa(PEER6, 20631),
        random_bytes(8 * MB, 64),
    );
    // A closed port there is refused end to end.
    let e = w
        .guest
        .connect(sa(PEER6, 20632), SETUP_TIMEOUT)
        .expect_err("connect to a closed peer port");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
}
