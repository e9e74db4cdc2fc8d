//! Issue 12 item 7 (part), end to end: a silent nameserver is failed over, the end of a
//! `--netns-type=path` namespace is noticed, and a resolv.conf replaced by rename is followed
//! inside the sandbox. Each test fails on the branch base (checked with TAPWIRE_TEST_BIN at
//! its build): the query times out, the daemon runs on after the unmount, the old nameserver
//! stays in use.
//!
//! Needs root; see tests/common for the skip policy (TAPWIRE_ALLOW_SKIP=1).

mod common;

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use common::*;

/// One UDP query from the guest to the forwarder, one try, waiting up to `wait`: the answers
/// and how long they took.
fn query_once(
    guest: &Guest,
    id: u16,
    wait: Duration,
) -> Result<(Vec<std::net::Ipv4Addr>, Duration), String> {
    let dns: SocketAddr = SocketAddrV4::new(DNS, 53).into();
    let s = guest.udp_to(dns);
    s.set_read_timeout(Some(wait)).unwrap();
    let start = Instant::now();
    s.send(&dns_query("tapwire.test", id))
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 1500];
    let n = s
        .recv(&mut buf)
        .map_err(|e| format!("no answer after {:?}: {e}", start.elapsed()))?;
    Ok((dns_answers(&buf[..n], id)?, start.elapsed()))
}

/// The first nameserver takes the query and never answers (a socket nobody reads, on
/// 127.0.0.2:53); the forwarder must give up on it and ask the next one (dnsmasq on 127.0.0.1),
/// within the guest's first try. Before: every try went to the silent one.
#[test]
fn dns_fails_over_from_a_silent_nameserver() {
    if !preflight(&["dnsmasq"]) || !tapwire_only("DNS failover") {
        return;
    }
    let host = HostNs::new();
    std::fs::write(
        host.dir.join("resolv.conf"),
        "nameserver 127.0.0.2\nnameserver 127.0.0.1\n",
    )
    .unwrap();
    let silent: UdpSocket = host
        .in_ns(|| UdpSocket::bind("127.0.0.2:53"))
        .expect("bind the silent nameserver");
    let _dns = host.dnsmasq();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    let want = vec![std::net::Ipv4Addr::new(10, 9, 8, 7)];
    let (got, took) = query_once(&guest, 0x3131, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("first query, silent first nameserver: {e}"));
    assert_eq!(got, want);
    eprintln!("answered through the second nameserver after {took:?}");
    // The silent one got the query (so this is the case under test) ...
    let mut buf = [0u8; 512];
    silent.set_nonblocking(true).unwrap();
    assert!(
        silent.recv(&mut buf).is_ok(),
        "the silent nameserver never saw the query"
    );
    // ... and later queries go straight to the one that answers.
    let (got, took2) = query_once(&guest, 0x3232, Duration::from_secs(10)).expect("second query");
    assert_eq!(got, want);
    assert!(
        took2 < Duration::from_secs(1),
        "second query took {took2:?}"
    );
}

/// The guest namespace given by path (a bind mount, as `ip netns add` and podman make): the
/// daemon keeps running while the mount exists (even with no process inside), and exits with
/// status 0 once it is unmounted. Before: it ran on forever (the TAP keeps the namespace
/// alive and reports nothing).
fn path_netns_end(extra: &[&str]) {
    if !preflight(&["ip", "mount", "umount"]) || !tapwire_only("netns watching") {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let nspath = host.dir.join("netns");
    std::fs::write(&nspath, "").unwrap();
    host.sh(&format!(
        "mount --bind /proc/{}/ns/net {}",
        guest.pid(),
        nspath.display()
    ))
    .ok();
    let mut args = vec!["--netns-type=path"];
    args.extend_from_slice(extra);
    let cfg = DaemonCfg {
        positional: Some(vec![nspath.display().to_string(), "tap0".into()]),
        ..DaemonCfg::default().args(&args)
    };
    let mut d = Daemon::start(&host, &guest, cfg);
    // No process left inside, the mount remains: the namespace is still usable.
    drop(guest);
    assert!(
        d.wait_timeout(Duration::from_secs(3)).is_none(),
        "the daemon exited while the namespace was still mounted: {}",
        d.describe()
    );
    host.sh(&format!("umount {}", nspath.display())).ok();
    let start = Instant::now();
    let status = d.wait_timeout(Duration::from_secs(10));
    match status {
        Some(st) => {
            assert!(st.success(), "exit status {st}: {}", d.describe());
            eprintln!("exited {:?} after the unmount", start.elapsed());
        }
        None => panic!(
            "the daemon did not notice the end of its --netns-type=path namespace: {}",
            d.describe()
        ),
    }
}

#[test]
fn path_netns_unmounted_ends_the_daemon() {
    path_netns_end(&[]);
}

#[test]
fn path_netns_unmounted_ends_the_sandboxed_daemon() {
    path_netns_end(&["--enable-sandbox", "--enable-seccomp"]);
}

/// NetworkManager's way of updating resolv.conf: write a new file, rename it over the old.
/// Inside the sandbox the daemon sees /etc/resolv.conf as a bind mount of the old file; it
/// must still follow the new one. The host namespace gets its own /etc (a tmpfs with copies
/// of the few files the test's tools need) so that resolv.conf there is a plain file in a
/// directory we may rename in, as on a real host.
#[test]
fn sandboxed_resolver_follows_a_renamed_resolv_conf() {
    if !preflight(&["dnsmasq", "mount", "cp"]) || !tapwire_only("resolv.conf following") {
        return;
    }
    let host = HostNs::new();
    let save = host.dir.join("etc-copy");
    host.sh(&format!(
        "set -e; mkdir -p {s}; for f in passwd group nsswitch.conf ld.so.cache hosts; do \
         [ -e /etc/$f ] && cp -a /etc/$f {s}/; done; mount -t tmpfs -o mode=755 tapwire-etc /etc; \
         cp -a {s}/. /etc/; printf 'nameserver 127.0.0.2\\n' > /etc/resolv.conf",
        s = save.display()
    ))
    .ok();
    let _dns = host.dnsmasq();
    let guest = host.guest();
    let _d = Daemon::start(
        &host,
        &guest,
        DaemonCfg::default().args(&["--enable-sandbox", "--enable-seccomp"]),
    );
    // Nothing on 127.0.0.2:53: refused (the one nameserver, no failover).
    let before = query_once(&guest, 0x4141, Duration::from_secs(2));
    assert!(before.is_err(), "answered before the change: {before:?}");
    host.sh("printf 'nameserver 127.0.0.1\\n' > /etc/resolv.conf.new && mv /etc/resolv.conf.new /etc/resolv.conf")
        .ok();
    // The file is checked once a second; the guest retries like a resolver would.
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(10) {
        match query_once(&guest, 0x4242, Duration::from_secs(1)) {
            Ok((got, _)) => {
                assert_eq!(got, vec![std::net::Ipv4Addr::new(10, 9, 8, 7)]);
                eprintln!(
                    "new nameserver in use {:?} after the rename",
                    start.elapsed()
                );
                return;
            }
            Err(e) => last = e,
        }
    }
    panic!("the sandboxed daemon kept the replaced resolv.conf: {last}");
}
