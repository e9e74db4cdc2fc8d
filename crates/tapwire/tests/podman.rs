//! Podman 4 (rootful and rootless) with the binary under test as its slirp4netns: Podman's
//! real command line (`--api-socket`, `-e 3 -r 4`, `--netns-type=path`, sandbox and seccomp
//! flags picked from `--help`), its API calls for `port_handler=slirp4netns` and its teardown.
//!
//! Each test builds a [`PodWorld`] (tests/common/podman.rs): a private host namespace with its
//! own `/run`, storage and containers.conf (the README's `contrib/podman/containers.conf`),
//! optionally a rootless test user, and a busybox root filesystem for `podman run --rootfs`.
//! Inside: dnsmasq on the host namespace's 127.0.0.1 (the container's DNS, through 10.0.2.3),
//! a test host behind a veth (192.168.77.2), and TCP servers on host loopback. Checked, for
//! rootful and rootless alike:
//!
//! - the container's network: 10.0.2.100/24, default route via 10.0.2.2, MTU 65520, an fd00::/64
//!   address and an IPv6 default route with `enable_ipv6=true`; DNS; outbound TCP to the test
//!   host (seen from the host namespace's veth address);
//! - 20 MiB each way to host loopback through 10.0.2.2 with `allow_host_loopback=true`
//!   (sha256 on both ends), refused without it;
//! - published ports with both port handlers, 20 MiB each way, and the client address the
//!   container sees, as Podman documents it: `slirp4netns` keeps a remote client's address
//!   (a loopback client shows as 10.0.2.2), `rootlesskit` shows every client as the
//!   container's own 10.0.2.100;
//! - `podman stop` and `podman rm -f` leave no forwarder running and no API socket within 1 s.
//!
//! `TAPWIRE_TEST_BIN=slirp4netns` runs the same suite against slirp4netns (it leaves its API
//! socket behind; that one check is tapwire-only). Needs root, podman, runc, conmon,
//! busybox-static, dnsmasq, and uidmap for rootless.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::podman::*;
use common::*;

const MIB: usize = 1 << 20;
/// Bulk transfers: >= 20 MB each way.
const BULK: usize = 20 * MIB;
/// The limit for the forwarder to exit after `podman stop` / `podman rm -f`.
const EXIT_LIMIT: Duration = Duration::from_secs(1);

/// The container-side server of published-port tests, run by `nc -ll -p 8000 -e`: reads
/// exactly BULK bytes, answers "<sha256> <client address>\n", then sends /tmp/down.bin.
const PORT_SERVER: &str = r#"#!/bin/sh
peer=$(netstat -tn | awk '$4 ~ /:8000$/ && $6 == "ESTABLISHED" {print $5}' | head -n 1)
sha=$(head -c "$1" | sha256sum | cut -d' ' -f1)
echo "$sha $peer"
cat /tmp/down.bin
"#;

fn world(rootless: bool) -> Option<PodWorld> {
    if !preflight(&["dnsmasq"]) {
        return None;
    }
    PodWorld::new(rootless)
}

/// Accept one connection on `l` within the deadline.
fn accept(l: &std::net::TcpListener) -> (TcpStream, SocketAddr) {
    accept_timeout(l, TRANSFER_TIMEOUT).expect("accept")
}

fn check_network_dns_outbound(rootless: bool) {
    let Some(w) = world(rootless) else { return };
    let _dns = w.host.dnsmasq();
    let peer = w.host.peer();
    let port = 7100;
    let l = peer.listen(port);
    let peer_task = task("peer", move || {
        let (s, from) = accept(&l);
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("peer read");
        (line, from)
    });
    let script = format!(
        "for i in $(seq 100); do ip -6 route | grep -q '^default' && \
         ip -6 addr show dev tap0 scope global | grep -q inet6 && break; usleep 50000; done; \
         ip -o -4 addr show dev tap0; ip -o -6 addr show dev tap0 scope global; \
         ip route; ip -6 route; echo mtu=$(cat /sys/class/net/tap0/mtu); \
         nslookup tapwire.test 10.0.2.3; \
         echo hello-peer | nc -w 10 {PEER_ADDR} {port}; echo outbound-rc=$?"
    );
    let out = w.run_sh("slirp4netns:enable_ipv6=true", &[], &script).ok();
    let o = &out.stdout;
    assert!(o.contains("inet 10.0.2.100/24"), "address: {out}");
    assert!(o.contains("default via 10.0.2.2 dev tap0"), "route: {out}");
    assert!(o.contains("mtu=65520"), "MTU: {out}");
    assert!(
        o.lines()
            .any(|l| l.contains("inet6 fd00::") && l.contains("/64")),
        "IPv6 address: {out}"
    );
    assert!(
        o.lines()
            .any(|l| l.starts_with("default via fe80::") && l.contains("tap0")),
        "IPv6 default route: {out}"
    );
    assert!(o.contains("10.9.8.7"), "DNS answer for tapwire.test: {out}");
    assert!(o.contains("outbound-rc=0"), "outbound nc: {out}");
    let (line, from) = peer_task.join(TRANSFER_TIMEOUT);
    assert_eq!(line.trim(), "hello-peer");
    assert_eq!(
        from.ip(),
        std::net::IpAddr::V4(PEER_HOST_ADDR),
        "the test host sees the host namespace's address"
    );
}

fn check_host_loopback(rootless: bool) {
    let Some(w) = world(rootless) else { return };
    let (p_up, p_down, p_refused) = (7201, 7202, 7203);
    let l_up = w.host.listen(p_up);
    let l_down = w.host.listen(p_down);
    // Upload: the server reads exactly BULK bytes, hashes them, closes.
    let up = task("sink", move || {
        let (mut s, from) = accept(&l_up);
        let mut buf = vec![0u8; BULK];
        s.read_exact(&mut buf).expect("read the upload");
        (sha256_hex(&buf), from)
    });
    let down_data = std::sync::Arc::new(random_bytes(BULK, 7));
    let want_down = sha256_hex(&down_data);
    let down = serve_source(l_down, down_data);
    let script = format!(
        "head -c {BULK} /dev/urandom >/tmp/up.$$ && sha256sum /tmp/up.$$ | sed 's/^/up=/' && \
         nc 10.0.2.2 {p_up} </tmp/up.$$ >/dev/null; rm -f /tmp/up.$$; \
         nc 10.0.2.2 {p_down} </dev/null | sha256sum | sed 's/^/down=/'"
    );
    let start = Instant::now();
    let out = w
        .run_sh("slirp4netns:allow_host_loopback=true", &[], &script)
        .ok();
    let took = start.elapsed();
    let sent = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("up="))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no upload hash: {out}"))
        .to_owned();
    let (got_up, from) = up.join(TRANSFER_TIMEOUT);
    assert_eq!(got_up, sent, "upload sha256: {out}");
    assert_eq!(from.ip(), std::net::IpAddr::V4(Ipv4Addr::LOCALHOST));
    down.join(TRANSFER_TIMEOUT);
    let got_down = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("down="))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no download hash: {out}"));
    assert_eq!(got_down, want_down, "download sha256: {out}");
    eprintln!(
        "podman host loopback ({}): 2 x {} MiB in {took:?} (container start included)",
        if rootless { "rootless" } else { "rootful" },
        BULK / MIB
    );

    // Without allow_host_loopback (Podman passes --disable-host-loopback): refused.
    let l_refused = w.host.listen(p_refused);
    l_refused.set_nonblocking(true).unwrap();
    let out = w.run_sh(
        "slirp4netns",
        &[],
        &format!("echo x | nc -w 5 10.0.2.2 {p_refused}; echo rc=$?"),
    );
    assert!(
        out.success() && !out.stdout.contains("rc=0"),
        "10.0.2.2 reachable without allow_host_loopback: {out}"
    );
    assert!(
        l_refused.accept().is_err(),
        "host loopback accepted a connection without allow_host_loopback"
    );
}

/// What a published-port client saw.
struct PortResult {
    /// The client address the container reported.
    seen: String,
}

/// One client through a published port: BULK bytes up, BULK down (sha256-checked).
fn port_client(connect: impl FnOnce() -> std::io::Result<TcpStream>, down_sha: &str) -> PortResult {
    let s = connect().expect("connect to the published port");
    set_timeouts(&s);
    let up = random_bytes(BULK, 11);
    let want_up = sha256_hex(&up);
    let writer = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || s.write_all(&up))
    };
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).expect("server's answer");
    writer.join().unwrap().expect("upload");
    let mut parts = line.split_whitespace();
    assert_eq!(
        parts.next(),
        Some(want_up.as_str()),
        "upload sha256 (answer {line:?})"
    );
    let seen = parts.next().unwrap_or("").to_owned();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).expect("download");
    assert_eq!(rest.len(), BULK, "download size");
    assert_eq!(sha256_hex(&rest), down_sha, "download sha256");
    let _ = s.shutdown(Shutdown::Both);
    PortResult { seen }
}

/// The address part of netstat's "::ffff:10.0.2.2:40848" / "10.0.2.2:40848".
fn ip_of(seen: &str) -> String {
    let a = seen.rsplit_once(':').map_or(seen, |(a, _)| a);
    a.strip_prefix("::ffff:").unwrap_or(a).to_owned()
}

fn check_published_ports(rootless: bool, handler: &str) {
    let Some(w) = world(rootless) else { return };
    let peer = w.host.peer();
    let down = random_bytes(BULK, 12);
    let down_sha = sha256_hex(&down);
    w.put("tmp/down.bin", &down, 0o644);
    w.put("srv.sh", PORT_SERVER.as_bytes(), 0o755);
    let hp = 7300;
    let id = w.run_detached(
        &format!("slirp4netns:port_handler={handler}"),
        &["-p", &format!("{hp}:8000")],
        &format!(
            "nc -ll -p 8000 -e /srv.sh {BULK} & \
             while ! netstat -tln | grep -q ':8000 '; do usleep 20000; done; \
             touch /tmp/ready.{handler}; wait"
        ),
    );
    w.wait_file(&format!("tmp/ready.{handler}"), "the container's server");
    // A client on host loopback, then a remote client (the test host, through the veth).
    let start = Instant::now();
    let local = port_client(
        || {
            w.host
                .in_ns(|| TcpStream::connect((Ipv4Addr::LOCALHOST, hp)))
        },
        &down_sha,
    );
    let took = start.elapsed();
    let remote = port_client(
        || peer.in_ns(|| TcpStream::connect((PEER_HOST_ADDR, hp))),
        &down_sha,
    );
    let (want_local, want_remote) = match handler {
        "slirp4netns" => ("10.0.2.2", PEER_ADDR.to_string()),
        _ => ("10.0.2.100", "10.0.2.100".to_string()),
    };
    assert_eq!(
        ip_of(&local.seen),
        want_local,
        "loopback client as seen inside"
    );
    assert_eq!(
        ip_of(&remote.seen),
        want_remote,
        "remote client as seen inside"
    );
    eprintln!(
        "podman published port ({}, port_handler={handler}): 2 x {} MiB in {took:?}; \
         clients seen as {} (loopback) and {} (remote)",
        if rootless { "rootless" } else { "rootful" },
        BULK / MIB,
        local.seen,
        remote.seen
    );
    w.podman_ok(&["rm", "-f", "-t", "0", &id]);
}

/// The forwarder of the one running container: (pid, API socket if any).
fn forwarder(w: &PodWorld) -> (u32, Option<String>) {
    let mut found = Vec::new();
    wait_until(SETUP_TIMEOUT, "the forwarder process", || {
        found = w.forwarders();
        found.len() == 1
    });
    let (pid, argv) = found.remove(0);
    let api = argv
        .iter()
        .position(|a| a == "--api-socket")
        .and_then(|i| argv.get(i + 1).cloned());
    (pid, api)
}

fn check_stop_rm(rootless: bool) {
    let Some(w) = world(rootless) else { return };
    let id = w.run_detached(
        "slirp4netns:port_handler=slirp4netns",
        &["-p", "127.0.0.1:7400:8000"],
        "sleep 600",
    );
    for (what, args) in [
        ("podman stop", vec!["stop", "-t", "0", id.as_str()]),
        ("podman rm -f", vec!["rm", "-f", "-t", "0", id.as_str()]),
    ] {
        if what == "podman rm -f" {
            w.podman_ok(&["start", &id]);
        }
        let (pid, api) = forwarder(&w);
        let api = api.unwrap_or_else(|| panic!("no --api-socket in the forwarder's argv"));
        // The socket is on the host namespace's private /run: look through its root.
        let api_seen = PathBuf::from(format!("/proc/{}/root{api}", w.host.pid()));
        assert!(api_seen.exists(), "API socket {api} missing while running");
        let start = Instant::now();
        w.podman_ok(&args);
        let cmd_took = start.elapsed();
        let (exited, reaped) = wait_exit(pid, EXIT_LIMIT, Duration::from_secs(5));
        let api_left = api_seen.exists();
        eprintln!(
            "{what} ({}): command {cmd_took:?}; forwarder exited {:?} and was reaped {:?} \
             after it returned; API socket left: {api_left}",
            if rootless { "rootless" } else { "rootful" },
            exited,
            reaped
        );
        let exited = exited.unwrap_or_else(|| {
            panic!("{what}: the forwarder ({pid}) still runs {EXIT_LIMIT:?} later")
        });
        assert!(
            exited <= EXIT_LIMIT,
            "{what}: the forwarder exited after {exited:?}"
        );
        if testing_tapwire() {
            assert!(!api_left, "{what}: the API socket {api} was left behind");
        } else if api_left {
            eprintln!(
                "note: {} leaves its API socket {api} behind",
                bin().display()
            );
        }
    }
}

macro_rules! both_modes {
    ($($name:ident => $body:expr;)*) => {
        mod rootful {
            use super::*;
            $(#[test] fn $name() { let f: fn(bool) = $body; f(false) })*
        }
        mod rootless {
            use super::*;
            $(#[test] fn $name() { let f: fn(bool) = $body; f(true) })*
        }
    };
}

both_modes! {
    network_dns_outbound => check_network_dns_outbound;
    host_loopback_20mb_and_refused_without => check_host_loopback;
    published_port_slirp4netns_handler => |r| check_published_ports(r, "slirp4netns");
    published_port_rootlesskit_handler => |r| check_published_ports(r, "rootlesskit");
    stop_and_rm_leave_no_forwarder_or_socket => check_stop_rm;
}
