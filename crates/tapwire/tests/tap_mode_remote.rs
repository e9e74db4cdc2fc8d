//! Tap mode towards remote hosts, end to end: `--outbound-addr` (address and interface) sets the
//! source the host side sees, ICMP echo is proxied to a peer namespace, UDP datagrams bigger than
//! the MTU cross both ways (fragmented), and addresses nobody answers for fail as they should.
//!
//! Needs root; see tests/common for the skip policy (TAPWIRE_ALLOW_SKIP=1).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use common::tap_mode::*;
use common::*;

// ---- 15. --outbound-addr ---------------------------------------------------------------------

/// A second address on the host side of the peer veth, for `--outbound-addr`.
const OUTBOUND_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 168, 77, 11);

/// Peer-side TCP server: accept one connection and send back the peer address it saw.
fn serve_tcp_whoami(l: std::net::TcpListener) -> Task<SocketAddr> {
    task("tcp-whoami", move || {
        let (mut s, from) = accept_timeout(&l, SETUP_TIMEOUT).expect("whoami accept");
        s.write_all(from.to_string().as_bytes()).unwrap();
        from
    })
}

/// Peer-side UDP server: answer every datagram with the source address it came from, until
/// 3 s pass without one.
fn serve_udp_whoami(sock: std::net::UdpSocket) -> Task<Vec<SocketAddr>> {
    task("udp-whoami", move || {
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = sock.recv_from(&mut buf) {
            sock.send_to(from.to_string().as_bytes(), from).unwrap();
            seen.push(from);
        }
        seen
    })
}

/// Guest: connect to `target`, read what the whoami server says (the source it saw).
fn tcp_whoami(guest: &Guest, target: SocketAddr) -> SocketAddr {
    let mut c = guest
        .connect(target, SETUP_TIMEOUT)
        .unwrap_or_else(|e| panic!("guest connect {target}: {e}"));
    let mut got = String::new();
    c.read_to_string(&mut got).expect("read whoami answer");
    got.parse()
        .unwrap_or_else(|e| panic!("whoami answer {got:?}: {e}"))
}

/// Guest: send a datagram to `target` (3 tries), return the source the server saw.
fn udp_whoami(guest: &Guest, target: SocketAddr) -> Option<SocketAddr> {
    let s = guest.udp_to(target);
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 128];
    for _ in 0..3 {
        s.send(b"who am i").expect("guest udp send");
        if let Ok(n) = s.recv(&mut buf) {
            let txt = String::from_utf8_lossy(&buf[..n]).into_owned();
            return Some(
                txt.parse()
                    .unwrap_or_else(|e| panic!("answer {txt:?}: {e}")),
            );
        }
    }
    None
}

#[test]
fn outbound_addr_sets_source() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let peer = host.peer();
    // A secondary address: without --outbound-addr the kernel would pick 192.168.77.1.
    host.sh(&format!("ip addr add {OUTBOUND_ADDR}/24 dev twhost0"))
        .ok();
    let guest = host.guest();
    let arg = format!("--outbound-addr={OUTBOUND_ADDR}");
    let _d = Daemon::with_args(&host, &guest, &[&arg]);
    let peer_at = |p| SocketAddr::from(SocketAddrV4::new(PEER_ADDR, p));

    let server = serve_tcp_whoami(peer.listen(20140));
    let said = tcp_whoami(&guest, peer_at(20140));
    let from = server.join(SETUP_TIMEOUT);
    assert_eq!(said, from);
    assert_eq!(
        from.ip(),
        std::net::IpAddr::V4(OUTBOUND_ADDR),
        "TCP source seen by the peer with {arg}"
    );

    let server = serve_udp_whoami(peer.udp(20141));
    let said = udp_whoami(&guest, peer_at(20141)).expect("no UDP answer from the peer");
    assert_eq!(
        said.ip(),
        std::net::IpAddr::V4(OUTBOUND_ADDR),
        "UDP source seen by the peer with {arg}"
    );
    assert!(server
        .join(SETUP_TIMEOUT)
        .iter()
        .all(|a| a.ip() == said.ip()));

    // The gateway (host loopback) still works. tapwire does not bind loopback targets to the
    // outbound address, so the host's listener sees a loopback source (slirp4netns binds them
    // too: its listener sees 192.168.77.11).
    let server = serve_tcp_whoami(host.listen(20142));
    let said = tcp_whoami(&guest, gw(20142));
    server.join(SETUP_TIMEOUT);
    if testing_tapwire() {
        assert!(
            said.ip().is_loopback(),
            "host loopback listener saw {said} with {arg} (loopback targets must not be bound)"
        );
    }
}

#[test]
fn outbound_addr_interface() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let peer = host.peer();
    // A second test host only reachable through another interface (twhost1).
    let far = std::net::Ipv4Addr::new(192, 168, 78, 2);
    let peer2 = host.peer_link("twhost1", "twpeer1", [192, 168, 78, 1].into(), far);
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &["--outbound-addr=twhost0"]);

    // Through twhost0: works, TCP and UDP.
    let server = serve_tcp_whoami(peer.listen(20150));
    let said = tcp_whoami(&guest, SocketAddrV4::new(PEER_ADDR, 20150).into());
    server.join(SETUP_TIMEOUT);
    assert_eq!(said.ip(), std::net::IpAddr::V4(PEER_HOST_ADDR));
    let server = serve_udp_whoami(peer.udp(20151));
    let said = udp_whoami(&guest, SocketAddrV4::new(PEER_ADDR, 20151).into());
    server.join(SETUP_TIMEOUT);
    assert_eq!(
        said.map(|a| a.ip()),
        Some(std::net::IpAddr::V4(PEER_HOST_ADDR)),
        "UDP to the peer with --outbound-addr=twhost0"
    );

    // The gateway (host loopback) still works; tapwire does not bind loopback targets to
    // twhost0 (slirp4netns binds them to its address: the listener sees 192.168.77.1).
    let server = serve_tcp_whoami(host.listen(20154));
    let said = tcp_whoami(&guest, gw(20154));
    server.join(SETUP_TIMEOUT);
    if testing_tapwire() {
        assert!(said.ip().is_loopback(), "host loopback saw {said}");
    }

    // tapwire binds host sockets to the interface (SO_BINDTODEVICE). slirp4netns instead binds
    // them to the interface's address, so its traffic may still leave through another interface.
    if !testing_tapwire() {
        return;
    }
    // The host itself reaches the second peer (through twhost1)...
    let l2 = peer2.listen(20152);
    let direct = host.in_ns(|| {
        std::net::TcpStream::connect_timeout(&SocketAddrV4::new(far, 20152).into(), SETUP_TIMEOUT)
    });
    assert!(direct.is_ok(), "host ns cannot reach {far}: {direct:?}");
    drop(direct);
    accept_timeout(&l2, SETUP_TIMEOUT).expect("accept the host's own connection");
    // ...but sockets bound to twhost0 cannot.
    let start = Instant::now();
    let r = guest.connect(SocketAddrV4::new(far, 20152), Duration::from_secs(10));
    let took = start.elapsed();
    assert!(
        r.is_err(),
        "guest reached {far} (only routed via twhost1) with --outbound-addr=twhost0"
    );
    eprintln!(
        "connect to {far} bound to twhost0: {:?} after {took:?}",
        r.err()
    );
    l2.set_nonblocking(true).unwrap();
    assert!(
        l2.accept().is_err(),
        "{far} accepted a connection from the guest with --outbound-addr=twhost0"
    );
    let u2 = peer2.udp(20153);
    let g = guest.udp_to(SocketAddrV4::new(far, 20153));
    g.send(b"must not arrive").unwrap();
    u2.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        u2.recv_from(&mut buf).is_err(),
        "UDP reached {far} with --outbound-addr=twhost0"
    );
}

// ---- 16. ICMP echo proxied to a remote host ------------------------------------------------

fn ping_cmd() -> Option<&'static str> {
    if which("ping").is_some() {
        Some("ping")
    } else if which("busybox").is_some() {
        Some("busybox ping")
    } else {
        None
    }
}

fn received(out: &Out, n: u32) -> bool {
    out.stdout.contains(&format!(" {n} packets received"))
        || out.stdout.contains(&format!(" {n} received"))
}

const PING_RANGE: &str = "/proc/sys/net/ipv4/ping_group_range";

#[test]
fn ping_proxied_to_peer() {
    if !preflight(&["sysctl"]) {
        return;
    }
    let Some(ping) = ping_cmd() else {
        skip("neither ping (iputils-ping) nor busybox is installed");
        return;
    };
    // The setting is per network namespace: the machine's value must not change.
    let machine_before = std::fs::read_to_string(PING_RANGE).unwrap();
    let world = |range: &str| {
        let host = HostNs::new();
        let peer = host.peer();
        host.sh(&format!("sysctl -w net.ipv4.ping_group_range='{range}'"))
            .ok();
        let now = host.sh(&format!("cat {PING_RANGE}")).ok().stdout;
        assert_eq!(
            now.split_whitespace().collect::<Vec<_>>(),
            range.split_whitespace().collect::<Vec<_>>()
        );
        let guest = host.guest();
        (host, peer, guest)
    };

    // ICMP sockets allowed: echo requests to the peer are proxied and answered.
    let (host, _peer, guest) = world("0 2147483647");
    let _d = Daemon::with_args(&host, &guest, &[]);
    let out = guest.sh(
        &format!("{ping} -c 3 -i 0.2 -W 2 {PEER_ADDR}"),
        Duration::from_secs(15),
    );
    assert!(
        out.success() && received(&out, 3),
        "ping the peer with ping_group_range 0..2^31-1: {out}"
    );
    drop(_d);
    drop((guest, _peer, host));

    // ICMP sockets refused: no replies from the peer, but the gateway still answers (locally).
    // (slirp4netns falls back to a raw ICMP socket when it has CAP_NET_RAW, as it does here;
    // tapwire never uses raw sockets.)
    let (host, _peer, guest) = world("1 0");
    let _d = Daemon::with_args(&host, &guest, &[]);
    if testing_tapwire() {
        let out = guest.sh(
            &format!("{ping} -c 3 -i 0.2 -W 1 {PEER_ADDR}"),
            Duration::from_secs(15),
        );
        assert!(
            !out.success() && received(&out, 0),
            "ping the peer with ping_group_range '1 0' must get no reply: {out}"
        );
    }
    let out = guest.sh(
        &format!("{ping} -c 3 -i 0.2 -W 2 10.0.2.2"),
        Duration::from_secs(15),
    );
    assert!(
        out.success() && received(&out, 3),
        "ping 10.0.2.2 with ping_group_range '1 0': {out}"
    );
    assert_eq!(
        std::fs::read_to_string(PING_RANGE).unwrap(),
        machine_before,
        "the machine's ping_group_range changed"
    );
}

// ---- 17. UDP datagrams bigger than the MTU ---------------------------------------------------

/// Host-side server: a datagram "N" is answered with N pseudo-random bytes (seed N).
#[test]
fn udp_large_datagram_fragmented() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    check_configured(&guest, "10.0.2.100/24", "10.0.2.2", 1500);
    // Host -> guest: replies above the MTU are fragmented by the daemon and reassembled by the
    // guest's kernel (DNS with large EDNS answers, QUIC, game servers).
    let server = serve_udp_big_replies(host.udp(20160));
    let mut buf = vec![0u8; 70_000];
    for size in [1473usize, 4000, 8000, 65_507] {
        // One socket per size, so a late reply to an earlier try cannot be mistaken.
        check_big_udp_reply(&guest.udp_to(gw(20160)), size, &mut buf);
    }
    assert!(server.join(SETUP_TIMEOUT) >= 4);
    // Guest -> host above the MTU is udp_large_datagram_from_guest's job. Only report it here.
    let echo = serve_udp_echo(host.udp(20161), Duration::from_secs(2));
    let s = guest.udp_to(gw(20161));
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    s.send(&random_bytes(4000, 4)).unwrap();
    let r = s.recv(&mut buf);
    eprintln!(
        "guest->host 4000 B datagram at MTU 1500: {}",
        match r {
            Ok(k) => format!("echoed ({k} B)"),
            Err(e) => format!("not echoed ({e})"),
        }
    );
    echo.join(SETUP_TIMEOUT);
}

/// Guest -> host datagrams above the MTU. The guest's kernel sends them as IPv4 fragments,
/// which the daemon reassembles (as slirp4netns does) before proxying the datagram.
#[test]
fn udp_large_datagram_from_guest() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    let server = serve_udp_echo(host.udp(20165), Duration::from_secs(3));
    check_udp_echo(&guest, gw(20165), &[1472, 1473, 4000, 8000, 65_507]);
    server.join(SETUP_TIMEOUT);
}

// ---- 18. addresses nobody answers for ------------------------------------------------------

#[test]
fn unreachable_in_virtual_network() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);

    // Another address in the virtual network: nobody answers ARP for it, so the guest's kernel
    // gives up (EHOSTUNREACH after ~3 s of ARP) or the connect times out.
    let target = SocketAddr::from(([10, 0, 2, 50], 80));
    let start = Instant::now();
    let r = guest.connect(target, Duration::from_secs(10));
    let took = start.elapsed();
    let err = r.expect_err("connect to 10.0.2.50:80 must fail");
    assert!(
        err.raw_os_error() == Some(libc::EHOSTUNREACH) || err.kind() == ErrorKind::TimedOut,
        "connect {target}: want EHOSTUNREACH or a timeout, got {err}"
    );
    assert!(took < Duration::from_secs(11), "failure took {took:?}");
    eprintln!("connect {target}: {err} after {took:?}");

    // No route on the host: the host's ENETUNREACH becomes ICMP net unreachable, at once.
    let target = SocketAddr::from(([192, 168, 99, 1], 80));
    let start = Instant::now();
    let err = guest
        .connect(target, Duration::from_secs(5))
        .expect_err("connect to 192.168.99.1:80 must fail (no route in the host ns)");
    let took = start.elapsed();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENETUNREACH),
        "connect {target}: want ENETUNREACH, got {err}"
    );
    assert!(took < Duration::from_secs(2), "ENETUNREACH took {took:?}");

    // UDP to the unroutable address is dropped quietly; the daemon keeps serving.
    let u = guest.udp_to(target);
    let _ = u.send(b"nowhere");
    check_upload(&guest, host.listen(20170), gw(20170), &random_bytes(MB, 17));
}
