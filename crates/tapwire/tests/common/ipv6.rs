//! Helpers shared by the IPv6 suites (ipv6, ipv6_config): the fd00::/64 conventions, the guest's
//! SLAAC and link-local addresses, the world of one `-c -6` test (`World6`), IPv6 sockets, the
//! router advertisement as the guest sees it (tests/py/ipv6_ra.py), and `get_stats` drops.

use super::*;
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const MB: usize = 1 << 20;
/// Bulk transfers to host loopback (the issue asks for >= 20 MB each way).
pub const BULK: usize = 20 * MB;
/// SLAAC takes the guest kernel 3-5 s (link-local DAD, RS delay, DAD of the new address).
pub const SLAAC_TIMEOUT: Duration = Duration::from_secs(30);
pub const API_TIMEOUT: Duration = Duration::from_secs(5);

pub const PREFIX: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0);
pub const GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
pub const DNS6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3);
/// The IPv6 test host in the peer namespace, and the host namespace's end of that veth.
pub const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
pub const PEER_HOST6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);

pub fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

pub fn same_64(a: Ipv6Addr, b: Ipv6Addr) -> bool {
    u128::from(a) >> 64 == u128::from(b) >> 64
}

// ---------------------------------------------------------------------------------------------
// Guest addresses.
// ---------------------------------------------------------------------------------------------

/// `ip -6 -o addr show dev tap0 scope SCOPE` in the guest: (address, the rest of the line).
pub fn guest_addrs6(guest: &Guest, scope: &str) -> (Vec<(Ipv6Addr, String)>, String) {
    let out = guest
        .sh(
            &format!("ip -6 -o addr show dev tap0 scope {scope}"),
            SETUP_TIMEOUT,
        )
        .ok();
    let addrs = out
        .stdout
        .lines()
        .filter_map(|l| {
            let rest = l.split_once(" inet6 ")?.1;
            let (cidr, flags) = rest.split_once(' ').unwrap_or((rest, ""));
            let ip = cidr.split('/').next()?.parse().ok()?;
            Some((ip, flags.to_string()))
        })
        .collect();
    (addrs, out.stdout)
}

/// Wait until tap0 has a global address in `prefix`'s /64 that is no longer tentative (DAD
/// done) and return it. Fails on "dadfailed" (someone answered the guest's DAD probe).
#[track_caller]
pub fn wait_slaac(guest: &Guest, prefix: Ipv6Addr) -> Ipv6Addr {
    let start = Instant::now();
    loop {
        let (addrs, raw) = guest_addrs6(guest, "global");
        for (ip, flags) in &addrs {
            assert!(
                !flags.contains("dadfailed"),
                "DAD failed for the guest's {ip}: the daemon answered a DAD probe?\n{raw}"
            );
            if same_64(*ip, prefix) && !flags.contains("tentative") {
                eprintln!("SLAAC address {ip} after {:?}", start.elapsed());
                return *ip;
            }
        }
        assert!(
            start.elapsed() < SLAAC_TIMEOUT,
            "no non-tentative SLAAC address in {prefix}/64 on the guest's tap0 after \
             {SLAAC_TIMEOUT:?}:\n{raw}\n{}",
            guest
                .sh("ip -6 addr show; ip -6 route show", SETUP_TIMEOUT)
                .stdout
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait until tap0's link-local address is usable (IPv6 is up on the link).
pub fn wait_link_local(guest: &Guest) {
    let start = Instant::now();
    loop {
        let (addrs, raw) = guest_addrs6(guest, "link");
        if addrs.iter().any(|(_, f)| !f.contains("tentative")) {
            return;
        }
        assert!(
            start.elapsed() < SLAAC_TIMEOUT,
            "no usable link-local address on the guest's tap0:\n{raw}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Host ns, guest, and the daemon started with `-c -6 [extra]`, the guest's SLAAC address
/// ready. Field order = drop order: the daemon goes first.
pub struct World6 {
    pub _d: Daemon,
    pub guest: Guest,
    pub host: HostNs,
    pub addr: Ipv6Addr,
}

impl World6 {
    pub fn new(extra: &[&str]) -> World6 {
        Self::with_prefix(extra, PREFIX)
    }

    pub fn with_prefix(extra: &[&str], prefix: Ipv6Addr) -> World6 {
        let host = HostNs::new();
        let guest = host.guest();
        let mut args = vec!["-6"];
        args.extend_from_slice(extra);
        let d = Daemon::with_args(&host, &guest, &args);
        let addr = wait_slaac(&guest, prefix);
        World6 {
            _d: d,
            guest,
            host,
            addr,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sockets.
// ---------------------------------------------------------------------------------------------

/// A TCP listener on the host namespace's [::1]:port (IPv6 only: 127.0.0.1 is not served).
pub fn host_listen6(host: &HostNs, port: u16) -> TcpListener {
    host.in_ns(|| TcpListener::bind((Ipv6Addr::LOCALHOST, port)))
        .unwrap_or_else(|e| panic!("host listen [::1]:{port}: {e}"))
}

/// A UDP socket in the guest (bound to [::]:0), connect()ed to `to`.
pub fn guest_udp6_to(guest: &Guest, to: SocketAddr) -> UdpSocket {
    guest
        .in_ns(|| {
            let s = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))?;
            s.connect(to)?;
            Ok::<_, std::io::Error>(s)
        })
        .unwrap_or_else(|e| panic!("guest udp socket to {to}: {e}"))
}

/// Send datagrams of `sizes` on `s` and expect each echoed back intact (3 tries, 2 s apart).
#[track_caller]
pub fn check_udp_echo_on(s: &UdpSocket, what: &str, sizes: &[usize]) {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = vec![0u8; 65536];
    for (i, &size) in sizes.iter().enumerate() {
        let msg = random_bytes(size, 600 + i as u64);
        let mut ok = false;
        for _ in 0..3 {
            s.send(&msg)
                .unwrap_or_else(|e| panic!("udp send {size} B to {what}: {e}"));
            match s.recv(&mut buf) {
                Ok(k) if buf[..k] == msg[..] => {
                    ok = true;
                    break;
                }
                Ok(k) => panic!("udp echo of {size} B via {what}: got {k} B, different"),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("udp recv via {what}: {e}"),
            }
        }
        assert!(
            ok,
            "no udp echo of a {size} B datagram via {what} after 3 tries"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The router advertisement, seen from the guest.
// ---------------------------------------------------------------------------------------------

/// Send a router solicitation on tap0 from a raw ICMPv6 socket and print the first router
/// advertisement that arrives within argv[1] seconds, one `key value` per line; "no-ra" if none.
/// The kernel fills in the ICMPv6 checksum of raw ICMPv6 sockets.
pub const PY_RA: &str = include_str!("../py/ipv6_ra.py");

/// Solicit a router advertisement from the guest; its fields (empty map: none arrived).
pub fn solicit_ra(guest: &Guest, wait_s: u32) -> (HashMap<String, String>, Out) {
    let out = guest.python(
        PY_RA,
        &[&wait_s.to_string()],
        Duration::from_secs(u64::from(wait_s) + 10),
    );
    assert!(
        out.success() && out.stdout.contains("sent-rs"),
        "RA probe failed: {out}"
    );
    let mut m = HashMap::new();
    if !out.stdout.contains("no-ra") {
        for l in out.stdout.lines() {
            if let Some((k, v)) = l.split_once(' ') {
                m.insert(k.to_string(), v.to_string());
            }
        }
    }
    (m, out)
}

/// The router advertisement must announce `prefix`/64 (on-link, autonomous), the MTU, our
/// MAC, and (unless None) the DNS server, from fe80::2 with hop limit 255.
#[track_caller]
pub fn check_ra(
    ra: &HashMap<String, String>,
    out: &Out,
    prefix: Ipv6Addr,
    mtu: u32,
    dns: Option<Ipv6Addr>,
) {
    let get = |k: &str| {
        ra.get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("router advertisement without `{k}`: {out}"))
    };
    assert!(
        !ra.is_empty(),
        "no router advertisement after a solicitation: {out}"
    );
    assert_eq!(get("src"), "fe80::2", "RA source: {out}");
    assert_eq!(get("hoplimit"), "255", "RA IPv6 hop limit: {out}");
    assert_eq!(get("code"), "0", "{out}");
    assert_ne!(get("router_lifetime"), "0", "a default router: {out}");
    assert_eq!(
        get("prefix"),
        format!("{prefix}/64"),
        "prefix option: {out}"
    );
    assert_eq!(
        get("prefix_flags"),
        "0xc0",
        "prefix on-link + autonomous: {out}"
    );
    assert_ne!(get("prefix_valid"), "0", "{out}");
    assert_ne!(get("prefix_preferred"), "0", "{out}");
    assert_eq!(get("mtu"), mtu.to_string(), "MTU option: {out}");
    assert_eq!(
        get("slla"),
        "52550a000202",
        "source link-layer address: {out}"
    );
    assert!(!ra.contains_key("bad-option"), "{out}");
    match dns {
        Some(d) => {
            assert_eq!(get("rdnss"), d.to_string(), "RDNSS option: {out}");
            assert_ne!(get("rdnss_lifetime"), "0", "{out}");
        }
        None => assert!(!ra.contains_key("rdnss"), "RDNSS with --disable-dns: {out}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The control socket (just enough for add_hostfwd and get_stats).
// ---------------------------------------------------------------------------------------------

/// One request: write, shut down the write side, read the JSON reply to EOF; its `return`.
#[track_caller]
pub fn api_ok(sock: &Path, req: &str) -> Value {
    let mut s = UnixStream::connect(sock)
        .unwrap_or_else(|e| panic!("connect to the API socket {}: {e}", sock.display()));
    s.set_read_timeout(Some(API_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(API_TIMEOUT)).unwrap();
    s.write_all(req.as_bytes()).expect("write API request");
    s.shutdown(Shutdown::Write).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read API reply");
    let v: Value =
        serde_json::from_str(&raw).unwrap_or_else(|e| panic!("reply to {req}: {e}: {raw:?}"));
    v.get("return")
        .cloned()
        .unwrap_or_else(|| panic!("{req} failed: {raw}"))
}

pub fn drops(stats: &Value, reason: &str) -> u64 {
    stats["drops"][reason]
        .as_u64()
        .unwrap_or_else(|| panic!("no drops.{reason} in {stats}"))
}

pub fn ping6_received(guest: &Guest, dst: &str) -> (u32, Out) {
    let out = guest.sh(
        &format!("ping -6 -c 4 -i 0.3 -W 2 {dst}"),
        Duration::from_secs(20),
    );
    let n = out
        .stdout
        .lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(" transmitted, ")?;
            rest.split(' ').next()?.parse().ok()
        })
        .unwrap_or(0);
    (n, out)
}
