//! Tap mode (`tapwire [OPTIONS] PID|PATH [TAPNAME]`, the slirp4netns drop-in), end to end.
//!
//! Each test builds a private host namespace and a guest namespace (see tests/common), starts
//! the binary under test against the guest and checks real traffic from inside the guest.
//! The binary is `$TAPWIRE_TEST_BIN` if set (e.g. `TAPWIRE_TEST_BIN=slirp4netns` to validate the
//! tests against the original), else the tapwire binary built by Cargo.
//! Needs root; see tests/common for the skip policy (TAPWIRE_ALLOW_SKIP=1).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const MB: usize = 1 << 20;
/// Size of each bulk transfer (the issue asks for >= 50 MB).
const BULK: usize = 50 * MB;

fn gw(port: u16) -> SocketAddr {
    SocketAddrV4::new(GATEWAY, port).into()
}

/// Parse `ip -o link show DEV` / `ip -o -4 addr show DEV` output of the guest.
fn guest_ip(guest: &Guest, args: &str) -> String {
    guest.sh(&format!("ip {args}"), SETUP_TIMEOUT).ok().stdout
}

fn check_configured(guest: &Guest, addr: &str, gateway: &str, mtu: u32) {
    let link = guest_ip(guest, "-o link show tap0");
    assert!(
        link.contains(&format!("mtu {mtu} ")),
        "tap0 MTU {mtu}: {link}"
    );
    assert!(
        link.contains(",UP") || link.contains("<UP"),
        "tap0 up: {link}"
    );
    let a = guest_ip(guest, "-o -4 addr show dev tap0");
    assert!(
        a.contains(&format!("inet {addr} ")),
        "tap0 address {addr}: {a}"
    );
    let r = guest_ip(guest, "-4 route show default");
    assert!(
        r.contains(&format!("default via {gateway} dev tap0")),
        "default route via {gateway}: {r}"
    );
    let lo = guest_ip(guest, "-o link show lo");
    assert!(lo.contains(",UP") || lo.contains("<UP"), "lo up: {lo}");
}

// ---- 1. -c configuration -----------------------------------------------------------------

#[test]
fn configure_defaults() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    check_configured(&guest, "10.0.2.100/24", "10.0.2.2", 1500);
}

#[test]
fn configure_mtu_and_mac() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(
        &host,
        &guest,
        &["--mtu", "65520", "--macaddress", "02:42:ac:11:00:99"],
    );
    check_configured(&guest, "10.0.2.100/24", "10.0.2.2", 65520);
    let link = guest_ip(&guest, "-o link show tap0");
    assert!(
        link.contains("link/ether 02:42:ac:11:00:99 "),
        "tap0 MAC from --macaddress: {link}"
    );
}

// ---- 2. bulk TCP both directions, sha256 --------------------------------------------------

fn bulk_both_directions(mtu: &str, port: u16) {
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &["--mtu", mtu]);
    let data = random_bytes(BULK, 1);
    check_upload(&guest, host.listen(port), gw(port), &data);
    check_download(&guest, host.listen(port + 1), gw(port + 1), data);
}

#[test]
fn tcp_bulk_mtu1500() {
    if !preflight(&[]) {
        return;
    }
    bulk_both_directions("1500", 20010);
}

#[test]
fn tcp_bulk_mtu65520() {
    if !preflight(&[]) {
        return;
    }
    bulk_both_directions("65520", 20020);
}

// ---- 3. a test host in a third namespace ----------------------------------------------------

#[test]
fn tcp_to_peer_namespace() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let peer = host.peer();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    let data = random_bytes(BULK, 3);
    let target = |p| SocketAddr::from(SocketAddrV4::new(PEER_ADDR, p));
    // The peer sees the host namespace's veth address as the source (NAT by the daemon).
    let l = peer.listen(20030);
    let server = serve_sink(l);
    let mut c = guest
        .connect(target(20030), SETUP_TIMEOUT)
        .expect("connect peer");
    c.write_all(&data).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let (n, h, from) = server.join(TRANSFER_TIMEOUT);
    assert_eq!(
        (n, h),
        (data.len() as u64, sha256_hex(&data)),
        "upload to peer"
    );
    assert_eq!(
        from.ip(),
        std::net::IpAddr::V4(PEER_HOST_ADDR),
        "peer sees the host ns address"
    );
    check_download(&guest, peer.listen(20031), target(20031), data);
}

// ---- 4. host loopback on/off --------------------------------------------------------------

#[test]
fn host_loopback_reachable() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    let l = host.listen(20040);
    let server = task("accept", move || {
        let (mut s, from) = accept_timeout(&l, SETUP_TIMEOUT).expect("accept");
        s.write_all(b"hello from host loopback").unwrap();
        from
    });
    let mut c = guest
        .connect(gw(20040), SETUP_TIMEOUT)
        .expect("connect 10.0.2.2");
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hello from host loopback");
    let from = server.join(SETUP_TIMEOUT);
    assert!(
        from.ip().is_loopback(),
        "host side sees a loopback peer: {from}"
    );
}

#[test]
fn host_loopback_disabled() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &["--disable-host-loopback"]);
    let l = host.listen(20050);
    let start = Instant::now();
    let r = guest.connect(gw(20050), Duration::from_secs(5));
    let took = start.elapsed();
    let err = r.expect_err("connect to 10.0.2.2 must fail with --disable-host-loopback");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENETUNREACH),
        "expected 'Network is unreachable', got {err}"
    );
    assert!(took < Duration::from_secs(2), "failure took {took:?}");
    l.set_nonblocking(true).unwrap();
    assert_eq!(
        l.accept().map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "nothing may reach the host's 127.0.0.1 listener"
    );
    // UDP to the gateway must not reach host loopback either.
    let u = host.udp(20051);
    u.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let g = guest.udp_to(gw(20051));
    let _ = g.send(b"should not arrive");
    let mut buf = [0u8; 64];
    assert!(u.recv_from(&mut buf).is_err(), "UDP reached host loopback");
}

// ---- 5. UDP ---------------------------------------------------------------------------------

const UDP_SIZES: &[usize] = &[1, 64, 512, 1000, 1400, 1472];

#[test]
fn udp_echo_host_loopback() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    let server = serve_udp_echo(host.udp(20060), Duration::from_secs(3));
    check_udp_echo(&guest, gw(20060), UDP_SIZES);
    assert!(server.join(SETUP_TIMEOUT) >= UDP_SIZES.len());
}

#[test]
fn udp_echo_peer_namespace() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let peer = host.peer();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    let server = serve_udp_echo(peer.udp(20070), Duration::from_secs(3));
    check_udp_echo(
        &guest,
        SocketAddrV4::new(PEER_ADDR, 20070).into(),
        UDP_SIZES,
    );
    assert!(server.join(SETUP_TIMEOUT) >= UDP_SIZES.len());
}

// ---- 6. ICMP --------------------------------------------------------------------------------

#[test]
fn ping_gateway() {
    if !preflight(&[]) {
        return;
    }
    let ping = if which("ping").is_some() {
        "ping"
    } else if which("busybox").is_some() {
        "busybox ping"
    } else {
        skip("neither ping (iputils-ping) nor busybox is installed");
        return;
    };
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    let out = guest.sh(
        &format!("{ping} -c 3 -i 0.2 -W 2 10.0.2.2"),
        Duration::from_secs(15),
    );
    assert!(out.success(), "ping 10.0.2.2: {out}");
    assert!(out.stdout.contains("3 packets received") || out.stdout.contains("3 received"));
}

// ---- 7. DNS ---------------------------------------------------------------------------------

/// One DNS query over TCP from the guest to `server`: the answers.
fn dns_tcp(
    guest: &Guest,
    server: SocketAddr,
    name: &str,
) -> Result<Vec<std::net::Ipv4Addr>, String> {
    let mut s = guest
        .connect(server, Duration::from_secs(5))
        .map_err(|e| format!("connect {server}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let q = dns_query(name, 0x7a7a);
    let mut msg = (q.len() as u16).to_be_bytes().to_vec();
    msg.extend_from_slice(&q);
    s.write_all(&msg).map_err(|e| format!("write: {e}"))?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)
        .map_err(|e| format!("read length: {e}"))?;
    let mut resp = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut resp)
        .map_err(|e| format!("read response: {e}"))?;
    dns_answers(&resp, 0x7a7a)
}

/// One DNS query over UDP from the guest (3 tries).
fn dns_udp(
    guest: &Guest,
    server: SocketAddr,
    name: &str,
) -> Result<Vec<std::net::Ipv4Addr>, String> {
    let s = guest.udp_to(server);
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let q = dns_query(name, 0x5151);
    let mut buf = [0u8; 1500];
    let mut last = String::new();
    for _ in 0..3 {
        s.send(&q).map_err(|e| format!("send: {e}"))?;
        match s.recv(&mut buf) {
            Ok(n) => return dns_answers(&buf[..n], 0x5151),
            Err(e) => last = format!("recv: {e}"),
        }
    }
    Err(last)
}

#[test]
fn dns_forwarder_udp_and_tcp() {
    if !preflight(&["dnsmasq", "busybox"]) {
        return;
    }
    let host = HostNs::new();
    let _dns = host.dnsmasq();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    let want = vec![std::net::Ipv4Addr::new(10, 9, 8, 7)];
    let dns: SocketAddr = SocketAddrV4::new(DNS, 53).into();
    // A real client: busybox nslookup (UDP).
    let out = guest.sh(
        "busybox nslookup -type=a tapwire.test 10.0.2.3",
        Duration::from_secs(20),
    );
    assert!(
        out.success() && out.stdout.contains("10.9.8.7"),
        "nslookup via 10.0.2.3: {out}"
    );
    assert_eq!(
        dns_udp(&guest, dns, "tapwire.test"),
        Ok(want.clone()),
        "UDP query"
    );
    assert_eq!(dns_tcp(&guest, dns, "tapwire.test"), Ok(want), "TCP query");
}

/// The first nameserver refuses (nothing listens on 127.0.0.2:53): the forwarder moves to the
/// next one and re-sends the pending query, so the guest's first try is answered.
#[test]
fn dns_fails_over_to_the_next_nameserver() {
    if !preflight(&["dnsmasq"]) || !tapwire_only("DNS failover") {
        return;
    }
    let host = HostNs::new();
    // Rewritten in place: /etc/resolv.conf of the host namespace is a bind mount of this file.
    std::fs::write(
        host.dir.join("resolv.conf"),
        "nameserver 127.0.0.2\nnameserver 127.0.0.1\n",
    )
    .unwrap();
    let _dns = host.dnsmasq();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    let want = vec![std::net::Ipv4Addr::new(10, 9, 8, 7)];
    let dns: SocketAddr = SocketAddrV4::new(DNS, 53).into();
    // One try with a generous timeout: without failover the refusal comes back as ICMP port
    // unreachable and the query fails.
    let s = guest.udp_to(dns);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.send(&dns_query("tapwire.test", 0x4242)).unwrap();
    let mut buf = [0u8; 1500];
    let n = s.recv(&mut buf).expect("an answer to the first query");
    assert_eq!(dns_answers(&buf[..n], 0x4242), Ok(want.clone()), "UDP");
    // Later queries, UDP and TCP, go straight to the working nameserver.
    assert_eq!(
        dns_tcp(&guest, dns, "tapwire.test"),
        Ok(want.clone()),
        "TCP"
    );
    assert_eq!(dns_udp(&guest, dns, "tapwire.test"), Ok(want), "UDP again");
}

#[test]
fn dns_disabled() {
    if !preflight(&["dnsmasq"]) {
        return;
    }
    let host = HostNs::new();
    let _dns = host.dnsmasq();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &["--disable-dns"]);
    let dns: SocketAddr = SocketAddrV4::new(DNS, 53).into();
    let r = dns_udp(&guest, dns, "tapwire.test");
    assert!(r.is_err(), "UDP DNS answered with --disable-dns: {r:?}");
    let r = dns_tcp(&guest, dns, "tapwire.test");
    assert!(r.is_err(), "TCP DNS answered with --disable-dns: {r:?}");
}

// ---- 8. 500 concurrent connections, fd count ------------------------------------------------

/// How long the daemon's fd count may take to come back to its baseline once flows closed.
const FD_SETTLE: Duration = Duration::from_secs(30);

#[test]
fn concurrent_connections_fd_baseline() {
    if !preflight(&[]) {
        return;
    }
    const N: usize = 500;
    let host = HostNs::new();
    let guest = host.guest();
    let d = Daemon::with_args(&host, &guest, &[]);
    let l = host.listen(20080);
    // Server: accept N connections, echo 8 bytes on each, keep them until told to close.
    let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
    let server = task("echo-500", move || {
        let mut conns = Vec::with_capacity(N);
        for i in 0..N {
            let (mut s, _) =
                accept_timeout(&l, SETUP_TIMEOUT).unwrap_or_else(|e| panic!("accept #{i}: {e}"));
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            s.write_all(&b).unwrap();
            conns.push(s);
        }
        let _ = close_rx.recv_timeout(TRANSFER_TIMEOUT);
        conns.len()
    });
    let baseline = d.fd_count();
    let start = Instant::now();
    let conns = guest.in_ns(|| {
        let mut v = Vec::with_capacity(N);
        for i in 0..N {
            let mut s = std::net::TcpStream::connect_timeout(&gw(20080), SETUP_TIMEOUT)
                .unwrap_or_else(|e| panic!("connect #{i}: {e}"));
            set_timeouts(&s);
            let msg = (i as u64).to_be_bytes();
            s.write_all(&msg).unwrap();
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            assert_eq!(b, msg, "echo on connection #{i}");
            v.push(s);
        }
        v
    });
    eprintln!("{N} connections in {:?}", start.elapsed());
    let open = d.fd_count();
    assert!(
        open >= baseline + N * 4 / 5,
        "daemon fd count should rise with {N} open connections: baseline {baseline}, open {open}"
    );
    drop(conns);
    close_tx.send(()).unwrap();
    assert_eq!(server.join(SETUP_TIMEOUT), N);
    // 500 closes on a loaded machine can take a while; a leak never comes back at all.
    let closed = Instant::now();
    let mut now = open;
    while now > baseline && closed.elapsed() < FD_SETTLE {
        std::thread::sleep(Duration::from_millis(50));
        now = d.fd_count();
    }
    assert!(
        now <= baseline,
        "daemon fds not back to baseline {FD_SETTLE:?} after closing: baseline {baseline}, \
         open {open}, now {now}"
    );
    eprintln!(
        "fds: baseline {baseline}, open {open}, back after {:?}",
        closed.elapsed()
    );
}

// ---- 9. connection refused ------------------------------------------------------------------

#[test]
fn connection_refused() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    for _ in 0..2 {
        let start = Instant::now();
        let err = guest
            .connect(gw(20090), Duration::from_secs(5))
            .expect_err("nothing listens on host 127.0.0.1:20090");
        let took = start.elapsed();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ECONNREFUSED),
            "expected ECONNREFUSED, got {err}"
        );
        assert!(took < Duration::from_secs(1), "refusal took {took:?}");
    }
}

// ---- 10. half-close -------------------------------------------------------------------------

#[test]
fn half_close_guest_first() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    let l = host.listen(20100);
    // Host: read to EOF (the guest's FIN), then answer with the sha256 and close.
    let server = task("half-close-server", move || {
        let (mut s, _) = accept_timeout(&l, SETUP_TIMEOUT).expect("accept");
        let (_, h) = read_hash(&mut s).expect("read to EOF");
        s.write_all(h.as_bytes()).unwrap();
        s.write_all(&random_bytes(MB, 11)).unwrap();
    });
    let data = random_bytes(4 * MB, 10);
    let mut c = guest.connect(gw(20100), SETUP_TIMEOUT).expect("connect");
    c.write_all(&data).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    c.read_to_end(&mut reply)
        .expect("guest reads the reply after its own FIN");
    server.join(TRANSFER_TIMEOUT);
    assert_eq!(reply.len(), 64 + MB, "reply length after half-close");
    assert_eq!(String::from_utf8_lossy(&reply[..64]), sha256_hex(&data));
    assert_eq!(reply[64..], random_bytes(MB, 11)[..]);
}

#[test]
fn half_close_host_first() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    let l = host.listen(20110);
    let data = Arc::new(random_bytes(4 * MB, 12));
    let sent = data.clone();
    // Host: send, half-close, then read the guest's answer to EOF.
    let server = task("half-close-host", move || {
        let (mut s, _) = accept_timeout(&l, SETUP_TIMEOUT).expect("accept");
        s.write_all(&sent).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        s.read_to_end(&mut reply)
            .expect("host reads the guest's reply");
        reply
    });
    let mut c = guest.connect(gw(20110), SETUP_TIMEOUT).expect("connect");
    let (n, h) = read_hash(&mut c).expect("guest reads to the host's FIN");
    assert_eq!(n, data.len() as u64);
    c.write_all(h.as_bytes()).unwrap();
    c.write_all(&random_bytes(MB, 13)).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let reply = server.join(TRANSFER_TIMEOUT);
    assert_eq!(
        reply.len(),
        64 + MB,
        "guest's reply length after the host's FIN"
    );
    assert_eq!(String::from_utf8_lossy(&reply[..64]), sha256_hex(&data));
    assert_eq!(reply[64..], random_bytes(MB, 13)[..]);
}

// ---- 11. lifecycle: ready fd, exit fd, SIGTERM ----------------------------------------------

#[test]
fn ready_fd_says_1_then_closes() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let mut d = Daemon::spawn(&host, &guest, DaemonCfg::default());
    let (got, eof) = d.read_ready_to_eof(SETUP_TIMEOUT);
    assert_eq!(got, b"1", "ready fd content");
    assert!(eof, "ready fd closed after writing 1");
    assert!(
        d.wait_timeout(Duration::ZERO).is_none(),
        "daemon still running"
    );
    // Ready means configured: the guest can use the network right away.
    check_configured(&guest, "10.0.2.100/24", "10.0.2.2", 1500);
}

#[test]
fn exit_fd_hangup_exits_zero() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let cfg = DaemonCfg {
        exit_fd: true,
        ..DaemonCfg::default()
    };
    let mut d = Daemon::start(&host, &guest, cfg);
    std::thread::sleep(Duration::from_millis(200));
    assert!(d.wait_timeout(Duration::ZERO).is_none(), "exited too early");
    d.close_exit_fd();
    // A generous deadline: a child forked meanwhile by a parallel test holds a copy of the
    // write end until it execs, and a loaded machine may be slow to schedule the daemon.
    let st = d.wait_timeout(SETUP_TIMEOUT);
    let st =
        st.unwrap_or_else(|| panic!("still running {SETUP_TIMEOUT:?} after the exit fd closed"));
    assert_eq!(
        st.code(),
        Some(0),
        "exit status after exit-fd: {}",
        status_str(st)
    );
}

#[test]
fn sigterm_exits_zero() {
    if !preflight(&[]) || !tapwire_only("exit status 0 on SIGTERM (slirp4netns dies of the signal)")
    {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let mut d = Daemon::with_args(&host, &guest, &[]);
    d.signal(Signal::SIGTERM);
    let st = d.wait_timeout(SETUP_TIMEOUT);
    let st = st.unwrap_or_else(|| panic!("still running {SETUP_TIMEOUT:?} after SIGTERM"));
    assert_eq!(
        st.code(),
        Some(0),
        "exit status after SIGTERM: {}",
        status_str(st)
    );
}

// ---- 12. --netns-type=path + --userns-path --------------------------------------------------

#[test]
fn netns_type_path_with_userns_path() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let pid = guest.pid();
    let cfg = DaemonCfg {
        positional: Some(vec![format!("/proc/{pid}/ns/net"), "tap0".into()]),
        ..DaemonCfg::default()
    }
    .args(&[
        "--netns-type=path",
        &format!("--userns-path=/proc/{pid}/ns/user"),
    ]);
    let _d = Daemon::start(&host, &guest, cfg);
    check_configured(&guest, "10.0.2.100/24", "10.0.2.2", 1500);
    check_upload(
        &guest,
        host.listen(20120),
        gw(20120),
        &random_bytes(4 * MB, 14),
    );
}

// ---- 13. --cidr -----------------------------------------------------------------------------

#[test]
fn custom_cidr() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &["--cidr", "10.11.12.0/24"]);
    check_configured(&guest, "10.11.12.100/24", "10.11.12.2", 1500);
    let target = SocketAddr::from(([10, 11, 12, 2], 20130));
    check_upload(
        &guest,
        host.listen(20130),
        target,
        &random_bytes(4 * MB, 15),
    );
    let l = host.listen(20131);
    let err = guest.connect(gw(20131), Duration::from_secs(3));
    assert!(
        err.is_err(),
        "10.0.2.2 must not be the gateway with --cidr 10.11.12.0/24"
    );
    drop(l);
}

// ---- 14. bad flags, --help ------------------------------------------------------------------

/// The part of stderr that is the error itself (before any usage/help text).
fn error_part(stderr: &str) -> String {
    stderr
        .split("\nUsage:")
        .next()
        .unwrap_or("")
        .trim_start_matches("Usage:")
        .split("\nFor more information")
        .next()
        .unwrap_or("")
        .to_lowercase()
}

/// Bad command lines: (args, word the error message must contain). `PID` is replaced by the
/// guest's pid so that the only thing wrong is the flag under test.
const BAD_FLAGS: &[(&[&str], &str)] = &[
    (&["--mtu", "0", "PID"], "mtu"),
    (&["--mtu", "65522", "PID"], "mtu"),
    (&["--mtu", "abc", "PID"], "mtu"),
    (&["--cidr", "10.0.2.1/24", "PID"], "cidr"),
    (&["--cidr", "10.0.0.0/26", "PID"], "cidr"),
    (&["--cidr", "nonsense", "PID"], "cidr"),
    (&["--macaddress", "02:00:00:00:00:01", "PID"], "macaddr"),
    (&["-c", "--macaddress", "zz:00", "PID"], "macaddr"),
    (&["--netns-type=bogus", "PID"], "netns-type"),
    (&["--no-such-flag", "PID"], "no-such-flag"),
    (&["-c", "abc"], "pid"),
    (&["-c", "0"], "pid"),
];

/// Run every BAD_FLAGS case; `check(out, needle)` returns a complaint or None.
fn bad_flag_cases(check: impl Fn(&Out, &str) -> Option<String>) {
    // Inside a private host ns with a real guest: if a bad flag were accepted the daemon
    // would start, and it must not touch the machine's network even then.
    let host = HostNs::new();
    let guest = host.guest();
    let pid = guest.pid().to_string();
    let mut failures = Vec::new();
    for (args, needle) in BAD_FLAGS {
        let args: Vec<&str> = args
            .iter()
            .map(|a| if *a == "PID" { pid.as_str() } else { a })
            .collect();
        // A bad flag must make the binary exit; one that is accepted starts the daemon, which
        // runs until this deadline and fails the case as timed out.
        let out = run(host.cmd(bin()).args(&args), SETUP_TIMEOUT);
        if let Some(why) = check(&out, needle) {
            failures.push(format!("{args:?}: {why}"));
        }
    }
    assert!(failures.is_empty(), "bad flags:\n{}", failures.join("\n"));
}

#[test]
fn bad_flags_exit_nonzero() {
    if !preflight(&[]) {
        return;
    }
    bad_flag_cases(|out, _| {
        (out.success() || out.timed_out || out.code().is_none()).then(|| {
            format!(
                "want a non-zero exit code, got {:?}: {}",
                out.status, out.stderr
            )
        })
    });
}

#[test]
fn bad_flags_error_names_the_flag() {
    // slirp4netns prints only its usage text for most of these; tapwire names the culprit.
    if !preflight(&[]) || !tapwire_only("an error naming the bad flag before the usage text") {
        return;
    }
    bad_flag_cases(|out, needle| {
        let msg = error_part(&out.stderr);
        (!msg.contains(needle))
            .then(|| format!("want an error naming `{needle}` before any usage text, got {msg:?}"))
    });
}

#[test]
fn help_lists_every_flag() {
    if !preflight(&[]) {
        return;
    }
    let out = run(Command::new(bin()).arg("--help"), SETUP_TIMEOUT);
    assert!(out.success(), "--help exits 0: {out}");
    let text = out.stdout + &out.stderr;
    let flags = [
        "--configure",
        "--exit-fd",
        "--ready-fd",
        "--mtu",
        "--enable-ipv6",
        "--api-socket",
        "--cidr",
        "--disable-host-loopback",
        "--netns-type",
        "--userns-path",
        "--enable-sandbox",
        "--enable-seccomp",
        "--outbound-addr",
        "--outbound-addr6",
        "--disable-dns",
        "--macaddress",
        "--help",
        "--version",
    ];
    let missing: Vec<_> = flags.iter().filter(|f| !text.contains(*f)).collect();
    assert!(missing.is_empty(), "--help lacks {missing:?}:\n{text}");
    let v = run(Command::new(bin()).arg("--version"), SETUP_TIMEOUT);
    assert!(
        v.success() && v.stdout.contains("version"),
        "--version: {v}"
    );
}

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

// ---- 19. hostile frames from the guest ------------------------------------------------------

/// Python helpers for crafting frames on the guest's tap0 (AF_PACKET; the guest is root of its
/// own user namespace). `send()` paces itself so the TAP queue (500 frames or more) does not
/// overflow: it keeps at most 250 of its frames unread by the daemon (tap0's tx_packets count
/// the frames its reader took), however slowly the daemon is scheduled on a loaded machine. A
/// daemon that reads nothing for 5 s ends the pacing, so its frames get dropped and the test's
/// checks see that.
const PY_FRAMES: &str = include_str!("py/tap_mode_frames.py");

/// ~2000 malformed or hostile frames. argv: seed, a listening host port, a closed host port.
const PY_GARBAGE: &str = include_str!("py/tap_mode_garbage.py");

/// `key=value` fields of the scripts' last output line.
fn py_fields(out: &Out) -> std::collections::HashMap<String, u64> {
    out.stdout
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))
        .collect()
}

/// Host task: accept and drop connections on `l` until `stop` says so.
fn accept_and_drop(l: std::net::TcpListener, stop: std::sync::mpsc::Receiver<()>) -> Task<usize> {
    task("accept-and-drop", move || {
        l.set_nonblocking(true).unwrap();
        let mut n = 0;
        let start = Instant::now();
        while stop.try_recv().is_err() && start.elapsed() < TRANSFER_TIMEOUT {
            match l.accept() {
                Ok(_) => n += 1,
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        n
    })
}

#[test]
fn malformed_frames_do_not_hurt() {
    if !preflight(&["python3"]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let mut d = Daemon::with_args(&host, &guest, &[]);
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    let acceptor = accept_and_drop(host.listen(20180), stop_rx);
    let read_before = d.rchar();
    let out = guest
        .python(
            &format!("{PY_FRAMES}{PY_GARBAGE}"),
            &["20180", "20180", "20181"],
            Duration::from_secs(30),
        )
        .ok();
    let f = py_fields(&out);
    eprintln!("garbage: {} {}", out.stdout.trim(), out.stderr.trim());
    // Give the daemon time to read what is still queued (the check below is the real one).
    let mut consumed = d.rchar() - read_before;
    let waited = Instant::now();
    while consumed < f["bytes"] / 2 && waited.elapsed() < SETUP_TIMEOUT {
        std::thread::sleep(Duration::from_millis(50));
        consumed = d.rchar() - read_before;
    }
    assert!(
        d.wait_timeout(Duration::ZERO).is_none(),
        "daemon died from malformed frames ({}); {}",
        out.stderr.trim(),
        d.describe()
    );
    // Sending fails (ENXIO) once tap0 has no reader left, i.e. the daemon died.
    assert!(f["sent"] >= 1900, "frames actually sent: {out}");
    assert!(
        consumed >= f["bytes"] / 2,
        "the daemon read only {consumed} B of the {} B of frames sent",
        f["bytes"]
    );
    stop_tx.send(()).unwrap();
    eprintln!(
        "daemon read {consumed} B; accepted {} connections from odd SYNs",
        acceptor.join(SETUP_TIMEOUT)
    );
    // Everything still works.
    let udp = serve_udp_echo(host.udp(20182), Duration::from_secs(2));
    check_udp_echo(&guest, gw(20182), &[1, 1472]);
    udp.join(SETUP_TIMEOUT);
    let data = random_bytes(5 * MB, 19);
    check_upload(&guest, host.listen(20183), gw(20183), &data);
    check_download(&guest, host.listen(20184), gw(20184), data);
    assert!(d.wait_timeout(Duration::ZERO).is_none(), "daemon exited");
}

// ---- 20. SYN flood ----------------------------------------------------------------------------

/// argv: destination ip, port, count, first source port, seconds to wait for the RSTs after
/// the last SYN (they stop coming early once all arrived). Sends `count` valid SYNs (one per
/// source port, shuffled) and counts the RSTs that come back on tap0.
const PY_SYN_FLOOD: &str = include_str!("py/tap_mode_syn_flood.py");

#[test]
fn syn_flood_then_service() {
    if !preflight(&["python3"]) {
        return;
    }
    const N: u64 = 3000;
    let host = HostNs::new();
    let guest = host.guest();
    let mut d = Daemon::with_args(&host, &guest, &[]);
    let baseline = d.fd_count();
    let start = Instant::now();
    // 10.0.2.2:20190 is host 127.0.0.1:20190, where nothing listens: every SYN makes the daemon
    // open a host socket whose connect is refused, and must end in a RST to the guest.
    let out = guest
        .python(
            &format!("{PY_FRAMES}{PY_SYN_FLOOD}"),
            // Up to 20 s for the last RSTs: a loaded machine may schedule the daemon late.
            &["10.0.2.2", "20190", &N.to_string(), "30000", "20"],
            Duration::from_secs(60),
        )
        .ok();
    let f = py_fields(&out);
    eprintln!("syn flood: {} in {:?}", out.stdout.trim(), start.elapsed());
    assert_eq!(f["sent"], N, "SYNs sent: {out}");
    assert!(
        d.wait_timeout(Duration::ZERO).is_none(),
        "daemon died; {}",
        d.describe()
    );
    assert_eq!(
        f["other"], 0,
        "non-RST answers to SYNs to a closed port: {out}"
    );
    // SYNs the TAP queue dropped (the daemon not reading fast enough) never reached it; every
    // other one must be answered.
    let delivered = N - f["dropped"];
    assert!(delivered >= N / 2, "the TAP queue dropped most SYNs: {out}");
    assert!(
        f["rst"] >= delivered * 99 / 100,
        "only {} of the {delivered} SYNs the daemon received were answered with a RST: {out}",
        f["rst"]
    );
    let flooded = Instant::now();
    let mut now = d.fd_count();
    while now > baseline && flooded.elapsed() < FD_SETTLE {
        std::thread::sleep(Duration::from_millis(50));
        now = d.fd_count();
    }
    assert!(
        now <= baseline,
        "daemon fds not back to baseline {FD_SETTLE:?} after the flood: baseline {baseline}, \
         now {now}"
    );
    check_upload(
        &guest,
        host.listen(20191),
        gw(20191),
        &random_bytes(5 * MB, 20),
    );
}

/// Route 192.168.66.0/24 to the peer, which does not forward: connects there hang until the
/// kernel gives up (1-2 minutes). Keep the returned peer alive.
fn route_to_blackhole(host: &HostNs) -> Peer {
    let peer = host.peer();
    host.sh("ip route add 192.168.66.0/24 via 192.168.77.2")
        .ok();
    peer
}

/// A guest connection whose host connect hangs (a destination that never answers) costs no
/// CPU while it waits: smoltcp asks for an immediate poll of a socket whose SYN-ACK is held
/// back, which once made the daemon spin at 100% until the host connect gave up.
#[test]
fn pending_host_connect_does_not_spin() {
    if !preflight(&[]) || !tapwire_only("CPU while a host connect is pending") {
        return;
    }
    let host = HostNs::new();
    let _peer = route_to_blackhole(&host);
    let guest = host.guest();
    let d = Daemon::with_args(&host, &guest, &[]);
    let ticks = |pid: u32| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = s[s.rfind(')').unwrap() + 2..].split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    std::thread::scope(|sc| {
        let guest = &guest;
        let pending = sc.spawn(move || {
            guest.connect(
                SocketAddr::from(([192, 168, 66, 1], 80)),
                Duration::from_secs(6),
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        let t0 = ticks(d.pid());
        std::thread::sleep(Duration::from_secs(3));
        let used = ticks(d.pid()) - t0;
        // 3 s at 100 Hz: a spinning daemon shows ~300 ticks, an idle one ~0.
        assert!(
            used <= 30,
            "daemon used {used} CPU ticks in 3 s with one pending connect"
        );
        assert!(
            pending.join().unwrap().is_err(),
            "the blackholed connect cannot succeed"
        );
    });
}

/// SYNs to a destination that never answers (routed to the peer, which does not forward: the
/// host's connects hang until the kernel gives up, 1-2 minutes) must not starve other
/// connections: past `MAX_CONNECTING` (1024) pending host connects, the oldest is abandoned
/// (its guest gets a RST) so a new connection, here to host loopback, still goes through.
/// A port scan of a firewalled (DROP) host looks the same.
#[test]
fn syn_flood_to_blackhole_keeps_service() {
    if !preflight(&["python3"]) {
        return;
    }
    let host = HostNs::new();
    let _peer = route_to_blackhole(&host);
    let guest = host.guest();
    let d = Daemon::with_args(&host, &guest, &[]);
    let out = guest
        .python(
            &format!("{PY_FRAMES}{PY_SYN_FLOOD}"),
            // Nothing answers: the script waits the whole 5 s after its last SYN.
            &["192.168.66.1", "80", "1100", "30000", "5"],
            Duration::from_secs(60),
        )
        .ok();
    eprintln!(
        "blackhole flood: {}; daemon fds {}",
        out.stdout.trim(),
        d.fd_count()
    );
    let l = host.listen(20199);
    let start = Instant::now();
    // A starved connection would never go through; a loaded machine may just be slow.
    let r = guest.connect(gw(20199), SETUP_TIMEOUT);
    assert!(
        r.is_ok(),
        "new connection to host loopback after 1100 SYNs to an unresponsive host: {:?} after \
         {:?} (daemon fds {})",
        r.err(),
        start.elapsed(),
        d.fd_count()
    );
    drop(l);
}
