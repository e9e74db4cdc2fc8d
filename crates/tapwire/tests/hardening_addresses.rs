//! Address policy, end to end (issue 12 item 1): no spelling of host loopback reaches it.
//!
//! Hand-made frames on tap0 (tests/py/hardening_addr_frames.py, AF_PACKET from inside the
//! namespace) send a TCP SYN and a UDP datagram to every spelling of "this host" -
//! `::ffff:127.0.0.1`, `::ffff:127.0.0.2`, `::ffff:0.0.0.0`, `::127.0.0.1` (IPv4-compatible),
//! `64:ff9b::127.0.0.1` (NAT64), `::1`, `::`, and as IPv4 frames 127.0.0.1, 127.0.0.2, 0.0.0.0 -
//! while a dual-stack TCP listener and UDP socket on `[::]:PORT` in the host namespace catch
//! anything that reaches any host-local address on that port (127.0.0.0/8, ::1, and the
//! kernel's "0.0.0.0 = loopback"). Nothing may arrive, with and without
//! `--disable-host-loopback` (host loopback is reachable only through the gateway address), in
//! tap mode (`-c -6`) and from the command of `tapwire run -6`, with and without `--bypass`
//! (there the program also `connect()`s and `sendto()`s the same addresses on ordinary
//! AF_INET6 sockets, which the seccomp supervisor decides in bypass mode).
//!
//! Every run sends the same pair of frames to two control destinations, `::ffff:192.0.2.1`
//! and `2001:db8::1` (addresses of the host namespace's lo, on another port): those must
//! arrive, so a test in which frames were simply lost cannot pass.
//!
//! Before the fix (the branch base f2bd9be, run with TAPWIRE_TEST_BIN pointing at its build)
//! all six tests failed: `::ffff:127.0.0.1`, `::ffff:127.0.0.2` and `::ffff:0.0.0.0` reached the
//! host's 127.0.0.1/127.0.0.2 over TCP and UDP in every mode, with and without
//! `--disable-host-loopback` (in bypass mode through the frames: the supervisor already mapped
//! IPv4-mapped connects to IPv4 and kept loopback in the namespace).
//! slirp4netns 1.2.0 has the same weakness and more (`TAPWIRE_TEST_BIN=slirp4netns`, the two
//! tap-mode tests): besides the mapped spellings, `::1` and `::` frames reach the host's `::1`,
//! with and without `--disable-host-loopback`.
//!
//! Needs root; see tests/common for the skip policy (TAPWIRE_ALLOW_SKIP=1).

mod common;

use std::net::{Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::bypass::{preflight_bypass, python3, RUN_TIMEOUT};
use common::ipv6::World6;
use common::*;

const PY: &str = include_str!("py/hardening_addr_frames.py");

/// The port every loopback spelling is aimed at (caught on [::]:PORT).
const PORT: u16 = 20301;
/// The control destinations' port.
const CTRL_PORT: u16 = 20302;

const SPELLINGS: [&str; 10] = [
    "::ffff:127.0.0.1",
    "::ffff:127.0.0.2",
    "::ffff:0.0.0.0",
    "::127.0.0.1",
    "64:ff9b::127.0.0.1",
    "::1",
    "::",
    "127.0.0.1",
    "127.0.0.2",
    "0.0.0.0",
];
const CTRLS: [&str; 2] = ["CTRL=::ffff:192.0.2.1", "CTRL=2001:db8::1"];

/// What reached a catcher: (TCP connections by the local address they reached, UDP datagrams).
#[derive(Debug, Default)]
struct Caught {
    tcp: Vec<SocketAddr>,
    udp: Vec<SocketAddr>,
}

/// A dual-stack TCP listener and UDP socket on `[::]:port` in `host`, polled on a thread until
/// the returned flag is set.
fn catcher(host: &HostNs, port: u16) -> (Arc<AtomicBool>, Task<Caught>) {
    let (l, u) = host.in_ns(|| {
        let l = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).expect("listen [::]");
        let u = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)).expect("udp [::]");
        (l, u)
    });
    l.set_nonblocking(true).unwrap();
    u.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let t = task("catcher", move || {
        let mut c = Caught::default();
        let mut buf = [0u8; 2048];
        loop {
            let done = flag.load(Ordering::Relaxed);
            while let Ok((s, _)) = l.accept() {
                c.tcp.push(s.local_addr().unwrap());
            }
            while let Ok((_, from)) = u.recv_from(&mut buf) {
                c.udp.push(from);
            }
            if done {
                return c;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    (stop, t)
}

/// Give the host namespace's lo the control addresses.
fn control_addresses(host: &HostNs) {
    host.sh("ip addr add 192.0.2.1/32 dev lo && ip addr add 2001:db8::1/128 dev lo")
        .ok();
}

fn script_args(src6: &str, mode: &str) -> Vec<String> {
    let mut a = vec![
        src6.to_string(),
        PORT.to_string(),
        CTRL_PORT.to_string(),
        mode.to_string(),
    ];
    a.extend(SPELLINGS.iter().map(|s| s.to_string()));
    a.extend(CTRLS.iter().map(|s| s.to_string()));
    a
}

/// The catchers' verdict: nothing on PORT, both controls (TCP and UDP) on CTRL_PORT.
#[track_caller]
fn check(what: &str, bad: Caught, good: Caught, out: &Out) {
    assert!(
        bad.tcp.is_empty() && bad.udp.is_empty(),
        "{what}: host loopback reached through a loopback spelling: TCP to {:?}, UDP from {:?}\n{out}",
        bad.tcp,
        bad.udp
    );
    let v4 = "192.0.2.1".parse::<std::net::IpAddr>().unwrap();
    let hit = |ip: &str| {
        good.tcp.iter().any(|a| {
            let l = a.ip();
            l.to_string() == ip || (ip == "192.0.2.1" && l.to_canonical() == v4)
        })
    };
    assert!(
        hit("192.0.2.1") && hit("2001:db8::1") && good.udp.len() >= 2,
        "{what}: the control frames did not arrive (frames lost, the test proves nothing): {good:?}\n{out}"
    );
}

fn tap_mode(extra: &[&str]) {
    if !preflight(&["python3", "ip"]) {
        return;
    }
    let w = World6::new(extra);
    control_addresses(&w.host);
    let (stop_bad, bad) = catcher(&w.host, PORT);
    let (stop_good, good) = catcher(&w.host, CTRL_PORT);
    let args = script_args(&w.addr.to_string(), "frames");
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let out = w.guest.python(PY, &args, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    stop_bad.store(true, Ordering::Relaxed);
    stop_good.store(true, Ordering::Relaxed);
    let (bad, good) = (bad.join(SETUP_TIMEOUT), good.join(SETUP_TIMEOUT));
    assert!(out.success(), "frame writer: {out}");
    check(&format!("tap mode -6 {extra:?}"), bad, good, &out);
}

#[test]
fn tap_mode_loopback_spellings_do_not_reach_host_loopback() {
    tap_mode(&[]);
}

#[test]
fn tap_mode_loopback_spellings_with_disable_host_loopback() {
    tap_mode(&["--disable-host-loopback"]);
}

fn run_mode(flags: &[&str]) {
    let bypass = flags.contains(&"--bypass");
    if bypass {
        if !preflight_bypass(&["python3", "ip"]) {
            return;
        }
    } else if !(preflight(&["python3", "ip"]) && tapwire_only("tapwire run")) {
        return;
    }
    let host = HostNs::new();
    control_addresses(&host);
    let (stop_bad, bad) = catcher(&host, PORT);
    let (stop_good, good) = catcher(&host, CTRL_PORT);
    let mut cmd = host.cmd(bin());
    cmd.arg("run")
        .arg("-6")
        .args(flags)
        .args(["--", python3(), "-c", PY]);
    cmd.args(script_args("fd00::100", "connect"));
    let out = run(&mut cmd, RUN_TIMEOUT);
    std::thread::sleep(Duration::from_secs(1));
    stop_bad.store(true, Ordering::Relaxed);
    stop_good.store(true, Ordering::Relaxed);
    let (bad, good) = (bad.join(SETUP_TIMEOUT), good.join(SETUP_TIMEOUT));
    assert!(out.success(), "tapwire run: {out}");
    // connect() to any spelling of loopback must not have connected anywhere but the
    // namespace's own loopback (nothing listens there): never "connected".
    assert!(
        !out.stdout.contains("/tcp=connected"),
        "a connect to a loopback spelling succeeded: {out}"
    );
    check(&format!("tapwire run -6 {flags:?}"), bad, good, &out);
}

#[test]
fn run_mode_loopback_spellings_do_not_reach_host_loopback() {
    run_mode(&[]);
}

#[test]
fn run_mode_loopback_spellings_with_disable_host_loopback() {
    run_mode(&["--disable-host-loopback"]);
}

#[test]
fn bypass_loopback_spellings_do_not_reach_host_loopback() {
    run_mode(&["--bypass"]);
}

#[test]
fn bypass_loopback_spellings_with_disable_host_loopback() {
    run_mode(&["--bypass", "--disable-host-loopback"]);
}

#[test]
fn bypass_udp_loopback_spellings_do_not_reach_host_loopback() {
    run_mode(&["--bypass", "--bypass-udp"]);
}

#[test]
fn bypass_udp_loopback_spellings_with_disable_host_loopback() {
    run_mode(&["--bypass", "--bypass-udp", "--disable-host-loopback"]);
}
