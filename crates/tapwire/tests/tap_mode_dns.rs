//! Tap mode's DNS forwarder at 10.0.2.3, end to end: UDP and TCP queries answered from the
//! host's resolv.conf (a dnsmasq in the private host namespace), failover to the next nameserver,
//! and `--disable-dns`.
//!
//! Needs root; see tests/common for the skip policy (TAPWIRE_ALLOW_SKIP=1).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use common::*;

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
