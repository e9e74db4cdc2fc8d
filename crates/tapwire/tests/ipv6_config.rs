//! IPv6 options, end to end: `--cidr6`, `--disable-host-loopback` with `-6`, IPv6 port forwards
//! through `--api-socket` (host_addr ::1 and 127.0.0.1), and that without `-6` the guest gets no
//! router advertisement and IPv6 traffic is dropped.
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

use std::io::{ErrorKind, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ipv6::*;
use common::*;

// =============================================================================================
// 7. --cidr6.
// =============================================================================================

#[test]
fn cidr6_prefix() {
    if !preflight(&["python3"]) || !tapwire_only("--cidr6") {
        return;
    }
    let prefix: Ipv6Addr = "fd42:1:2:3::".parse().unwrap();
    let gw: Ipv6Addr = "fd42:1:2:3::2".parse().unwrap();
    let w = World6::with_prefix(&["--cidr6", "fd42:1:2:3::/64"], prefix);
    let (all, raw) = guest_addrs6(&w.guest, "global");
    assert!(
        all.iter().all(|(a, _)| same_64(*a, prefix)),
        "only fd42:1:2:3::/64 addresses: {raw}"
    );
    let routes = w.guest.sh("ip -6 route show", SETUP_TIMEOUT).ok().stdout;
    assert!(
        routes.contains("fd42:1:2:3::/64 dev tap0") && routes.contains("default via fe80::2"),
        "{routes}"
    );
    let (ra, out) = solicit_ra(&w.guest, 5);
    check_ra(
        &ra,
        &out,
        prefix,
        1500,
        Some("fd42:1:2:3::3".parse().unwrap()),
    );
    check_upload(
        &w.guest,
        host_listen6(&w.host, 20640),
        sa(gw, 20640),
        &random_bytes(2 * MB, 65),
    );
    check_download(
        &w.guest,
        host_listen6(&w.host, 20641),
        sa(gw, 20641),
        random_bytes(2 * MB, 66),
    );
    let (n, out) = ping6_received(&w.guest, "fd42:1:2:3::2");
    assert!(n >= 3, "ping -6 fd42:1:2:3::2: {out}");
}

// =============================================================================================
// 8. --disable-host-loopback with -6.
// =============================================================================================

#[test]
fn disable_host_loopback_ipv6() {
    if !preflight(&[]) || !tapwire_only("IPv6") {
        return;
    }
    let w = World6::new(&["--disable-host-loopback"]);
    let l = host_listen6(&w.host, 20650);
    let start = Instant::now();
    let r = w.guest.connect(sa(GW6, 20650), Duration::from_secs(10));
    let took = start.elapsed();
    match r {
        Ok(_) => panic!("connect to [fd00::2]:20650 succeeded with --disable-host-loopback"),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::ENETUNREACH),
            "connect to [fd00::2] with --disable-host-loopback: {e} (after {took:?})"
        ),
    }
    assert!(took < Duration::from_secs(2), "the refusal took {took:?}");
    assert_eq!(
        accept_timeout(&l, Duration::from_millis(300))
            .map(|_| ())
            .map_err(|e| e.kind()),
        Err(ErrorKind::TimedOut),
        "the [::1] listener must see nothing"
    );
    // The rest of IPv6 still works: ping of the gateway address answers locally.
    let (n, out) = ping6_received(&w.guest, "fd00::2");
    assert!(n >= 3, "{out}");
}

// =============================================================================================
// 9. IPv6 port forwarding through the API, host_addr ::1 and 127.0.0.1.
// =============================================================================================

/// Guest server: accept one connection, read to EOF (hashing), answer with `down`, close.
/// Returns (bytes, sha256, client address as the guest sees it).
fn guest_exchange_server(l: TcpListener, down: Arc<Vec<u8>>) -> Task<(u64, String, SocketAddr)> {
    task("guest-exchange", move || {
        let (mut s, peer) = accept_timeout(&l, SETUP_TIMEOUT).expect("guest accept");
        let (n, h) = read_hash(&mut s).expect("guest read");
        s.write_all(&down).expect("guest write");
        s.shutdown(Shutdown::Write).unwrap();
        (n, h, peer)
    })
}

#[test]
fn port_forward_to_ipv6_guest() {
    if !preflight(&[]) || !tapwire_only("IPv6 port forwarding") {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let sock = host.dir.join("api.sock");
    let _d = Daemon::with_args(
        &host,
        &guest,
        &["-6", "--api-socket", sock.to_str().unwrap()],
    );
    let addr = wait_slaac(&guest, PREFIX);
    let add = |proto: &str, host_addr: &str, host_port: u16, guest_port: u16| {
        let r = api_ok(
            &sock,
            &format!(
                r#"{{"execute":"add_hostfwd","arguments":{{"proto":"{proto}","host_addr":"{host_addr}","host_port":{host_port},"guest_addr":"{addr}","guest_port":{guest_port}}}}}"#
            ),
        );
        assert!(r["id"].as_u64().is_some(), "add_hostfwd: {r}");
    };
    add("tcp", "::1", 21600, 9060);
    add("tcp", "127.0.0.1", 21601, 9060);
    add("udp", "::1", 21602, 9062);
    let list = api_ok(&sock, r#"{"execute":"list_hostfwd"}"#);
    let entries = list["entries"].as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 3, "{list}");
    assert!(
        entries.iter().all(|e| e["guest_addr"] == addr.to_string()),
        "guest_addr listed as given: {list}"
    );

    for (i, target) in [
        sa(Ipv6Addr::LOCALHOST, 21600),
        sa(Ipv4Addr::LOCALHOST, 21601),
    ]
    .into_iter()
    .enumerate()
    {
        let l = guest
            .in_ns(|| TcpListener::bind((Ipv6Addr::UNSPECIFIED, 9060)))
            .expect("guest listen [::]:9060");
        let up = random_bytes(8 * MB, 70 + i as u64);
        let down = Arc::new(random_bytes(8 * MB, 80 + i as u64));
        let want_down = sha256_hex(&down);
        let server = guest_exchange_server(l, down);
        let mut c = host
            .in_ns(|| TcpStream::connect_timeout(&target, SETUP_TIMEOUT))
            .unwrap_or_else(|e| panic!("host connect to forwarded {target}: {e}"));
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(&up).expect("host client write");
        c.shutdown(Shutdown::Write).unwrap();
        let (n_down, h_down) = read_hash(&mut c).expect("host client read");
        let (n, h, peer) = server.join(TRANSFER_TIMEOUT);
        assert_eq!(
            (n, h),
            (up.len() as u64, sha256_hex(&up)),
            "upload via {target}"
        );
        assert_eq!(
            (n_down, h_down),
            (8 * MB as u64, want_down),
            "download via {target}"
        );
        assert_eq!(
            peer.ip(),
            IpAddr::V6(GW6),
            "a host-loopback client ({target}) appears as fd00::2 in the IPv6 guest"
        );
    }

    // UDP: [::1]:21602 -> [guest]:9062.
    let g = guest
        .in_ns(|| UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 9062)))
        .expect("guest udp [::]:9062");
    let echo = serve_udp_echo(g, Duration::from_secs(3));
    let c = host
        .in_ns(|| {
            let s = UdpSocket::bind((Ipv6Addr::LOCALHOST, 0))?;
            s.connect(sa(Ipv6Addr::LOCALHOST, 21602))?;
            Ok::<_, std::io::Error>(s)
        })
        .expect("host udp client");
    check_udp_echo_on(&c, "forwarded [::1]:21602", &[1, 700, 1400]);
    assert!(echo.join(SETUP_TIMEOUT) >= 3);
}

// =============================================================================================
// 10. Without -6: no router advertisement, IPv6 dropped.
// =============================================================================================

#[test]
fn without_ipv6_flag_no_ra_and_ipv6_dropped() {
    if !preflight(&["python3"]) || !tapwire_only("IPv6 drop counters") {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let sock = host.dir.join("api.sock");
    let _d = Daemon::with_args(&host, &guest, &["--api-socket", sock.to_str().unwrap()]);
    // IPv6 runs on the guest's link (it sends RS, DAD, MLD), but nobody answers.
    wait_link_local(&guest);
    let (ra, out) = solicit_ra(&guest, 4);
    assert!(ra.is_empty(), "router advertisement without -6: {out}");
    let (addrs, raw) = guest_addrs6(&guest, "global");
    assert!(addrs.is_empty(), "SLAAC address without -6:\n{raw}");
    let routes = guest
        .sh("ip -6 route show default", SETUP_TIMEOUT)
        .ok()
        .stdout;
    assert!(
        routes.trim().is_empty(),
        "IPv6 default route without -6: {routes}"
    );
    let s0 = api_ok(&sock, r#"{"execute":"get_stats"}"#);
    assert!(
        drops(&s0, "ipv6") > 0,
        "the guest's RS/DAD/MLD were counted: {s0}"
    );

    // Even configured by hand, the guest reaches nothing over IPv6.
    guest
        .sh(
            "ip -6 addr add fd00::100/64 dev tap0 nodad && \
             ip -6 route add default via fd00::2 dev tap0",
            SETUP_TIMEOUT,
        )
        .ok();
    let l = host_listen6(&host, 20660);
    let r = guest.connect(sa(GW6, 20660), Duration::from_secs(5));
    assert!(r.is_err(), "TCP over IPv6 without -6 connected");
    assert!(
        accept_timeout(&l, Duration::from_millis(300)).is_err(),
        "the [::1] listener must see nothing"
    );
    let (n, out) = ping6_received(&guest, "fd00::2");
    assert_eq!(n, 0, "ping6 answered without -6: {out}");
    let s1 = api_ok(&sock, r#"{"execute":"get_stats"}"#);
    assert!(
        drops(&s1, "ipv6") > drops(&s0, "ipv6"),
        "IPv6 frames counted as drops.ipv6: {s0} -> {s1}"
    );
    assert_eq!(s1["flows_total"]["tcp"], 0, "no TCP flow was created: {s1}");
}
