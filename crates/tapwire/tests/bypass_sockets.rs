//! Bypass mode (`tapwire run --bypass`) at the socket level, tapwire only: a bypassed connect to
//! the gateway is a kernel socket on host loopback, socket options and close-on-exec carry over,
//! non-blocking and refused connects, `--bypass` routes (default, ignore, `--disable-host-loopback`),
//! policed UDP connects and sends, many threads and processes at once, a slow connect that never
//! stalls others, the sockaddr-rewrite race (tests/c/bypass_race.c), published ports as host
//! sockets, the seccomp profile's JSON, and DNS, UNIX sockets and sendmsg still working.
//!
//! Every test starts tapwire inside its own private host namespace (see tests/common); the
//! programs under the seccomp filter are small Python clients (tests/py/bypass_*.py) that print
//! one JSON object per line. How bypass is proven: a bypassed socket lives in the host namespace,
//! so the program's own `getsockname()` shows the host-side address (127.0.0.1 for the gateway,
//! 192.168.77.1 towards the peer) instead of its tap address 10.0.2.100, the server sees exactly
//! that address and port as its peer, and `ss -tnp` in the host namespace shows the socket owned by
//! the program's process rather than by tapwire.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::bypass::*;
use common::*;

// ---------------------------------------------------------------------------------------------

const GATEWAY_CLIENT: &str = include_str!("py/bypass_gateway_client.py");

#[test]
fn bypass_gateway_is_host_loopback_at_kernel_level() {
    if !preflight_bypass(&["python3", "ss"]) {
        return;
    }
    let host = HostNs::new();
    let port = 22001;
    let n = 20 << 20;
    let down = Arc::new(random_bytes(8 << 20, 7));
    let l = host.listen(port);
    let (out, peer, ss, up) = thread::scope(|sc| {
        let down = down.clone();
        let host = &host;
        let srv = sc.spawn(move || {
            let (mut s, peer) = accept_timeout(&l, RUN_TIMEOUT).expect("accept");
            // The connection is up: who owns the client end in the host namespace?
            let ss = ss_owners(
                host,
                &format!("-tnpH state established '( dport = :{port} )'"),
            );
            s.write_all(b"go").unwrap();
            let up = read_hash(&mut s).expect("upload");
            s.write_all(&down).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            (peer, ss, up)
        });
        let out = run_py(
            host,
            &["--bypass"],
            GATEWAY_CLIENT,
            &[port.to_string(), n.to_string()],
        );
        let (peer, ss, up) = srv.join().unwrap();
        (out, peer, ss, up)
    });
    assert!(out.success(), "{out}");
    let v = json_lines(&out);
    assert_eq!(v.len(), 2, "{out}");
    let sock = addr_of(&v[0]["sock"]);
    // The program's socket is the host's: its local address is the server's peer.
    assert_eq!(sock, peer, "program's getsockname vs server's peer: {out}");
    assert!(sock.ip().is_loopback(), "bypassed to host loopback: {out}");
    // getpeername reports what the program asked for, not 127.0.0.1.
    assert_eq!(
        addr_of(&v[0]["peer"]),
        SocketAddr::from(([10, 0, 2, 2], port)),
        "{out}"
    );
    let pid = v[0]["pid"].as_u64().unwrap();
    assert!(
        ss.contains(&format!("pid={pid},")) && ss.contains("python3"),
        "ss -tnp in the host namespace shows the program ({pid}) owning the socket:\n{ss}"
    );
    assert!(!ss.contains("tapwire"), "not tapwire:\n{ss}");
    assert_eq!(up.0, n as u64, "{out}");
    assert_eq!(Some(up.1.as_str()), v[1]["up"].as_str(), "upload checksum");
    assert_eq!(v[1]["n"].as_u64(), Some(down.len() as u64));
    assert_eq!(v[1]["down"].as_str(), Some(sha256_hex(&down).as_str()));
}

const OPTIONS_CLIENT: &str = include_str!("py/bypass_options_client.py");

#[test]
fn bypass_carries_socket_options_and_close_on_exec() {
    if !preflight_bypass(&["python3"]) {
        return;
    }
    let host = HostNs::new();
    let port = 22002;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let acc = acceptor(host.listen(port), b"", stop.clone(), count.clone());
    let out = run_py(&host, &["--bypass"], OPTIONS_CLIENT, &[port.to_string()]);
    stop.store(true, Ordering::Relaxed);
    acc.join().unwrap();
    let v = one_json(&out);
    assert!(addr_of(&v["sock"]).ip().is_loopback(), "bypassed: {out}");
    assert!(
        addr_of(&v["inh_sock"]).ip().is_loopback(),
        "bypassed: {out}"
    );
    // Every option reads back on the host socket as the program set it on its own.
    assert_eq!(
        v["before"], v["after"],
        "options before/after connect: {out}"
    );
    assert_eq!(v["after"]["nodelay"], 1, "TCP_NODELAY read back: {out}");
    assert_eq!(v["after"]["keepidle"], 77, "{out}");
    assert_eq!(v["after"]["tos"], 0x10, "{out}");
    assert_eq!(
        v["after"]["inheritable"], false,
        "close-on-exec kept: {out}"
    );
    assert_eq!(
        v["inh"], true,
        "an inheritable socket stays inheritable: {out}"
    );
}

const NONBLOCKING_CLIENT: &str = include_str!("py/bypass_nonblocking_client.py");

#[test]
fn bypass_nonblocking_and_refused_connects() {
    if !preflight_bypass(&["python3"]) {
        return;
    }
    let host = HostNs::new();
    let (port, closed) = (22003, 22004);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let acc = acceptor(host.listen(port), b"hello", stop.clone(), count.clone());
    let out = run_py(
        &host,
        &["--bypass"],
        NONBLOCKING_CLIENT,
        &[port.to_string(), closed.to_string()],
    );
    stop.store(true, Ordering::Relaxed);
    acc.join().unwrap();
    let v = one_json(&out);
    assert_eq!(v["first"], libc::EINPROGRESS, "non-blocking connect: {out}");
    assert_eq!(v["writable"], true, "{out}");
    assert_eq!(v["so_error"], 0, "{out}");
    assert!(addr_of(&v["sock"]).ip().is_loopback(), "bypassed: {out}");
    assert_eq!(addr_of(&v["peer"]), SocketAddr::from(([10, 0, 2, 2], port)));
    assert_eq!(v["greeting"], "hello", "{out}");
    assert_eq!(v["refused_nb"], libc::ECONNREFUSED, "{out}");
    assert_eq!(v["refused_b"], libc::ECONNREFUSED, "{out}");
}

const ROUTES_CLIENT: &str = include_str!("py/bypass_routes_client.py");

fn routes(flags: &[&str]) -> (serde_json::Value, Out) {
    let host = HostNs::new();
    let peer = host.peer();
    let (peer_port, lo_port) = (22010, 22011);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let a1 = acceptor(peer.listen(peer_port), b"peer", stop.clone(), count.clone());
    let a2 = acceptor(host.listen(lo_port), b"host", stop.clone(), count.clone());
    let out = run_py(
        &host,
        flags,
        ROUTES_CLIENT,
        &[peer_port.to_string(), lo_port.to_string()],
    );
    stop.store(true, Ordering::Relaxed);
    a1.join().unwrap();
    a2.join().unwrap();
    (one_json(&out), out)
}

#[test]
fn bypass_routes_default_ignore_and_disable_host_loopback() {
    if !preflight_bypass(&["python3"]) {
        return;
    }
    let guest = "10.0.2.100".parse::<std::net::IpAddr>().unwrap();
    // Default: the peer and the gateway are bypassed; 127.0.0.1 stays the container's.
    let (v, out) = routes(&["--bypass"]);
    assert_eq!(v["loopback"], "container", "{out}");
    assert_eq!(v["peer_greeting"], "peer", "{out}");
    assert_eq!(
        addr_of(&v["peer_sock"]).ip(),
        PEER_HOST_ADDR,
        "bypassed: {out}"
    );
    assert_eq!(v["gw_greeting"], "host", "{out}");
    assert!(addr_of(&v["gw_sock"]).ip().is_loopback(), "bypassed: {out}");
    assert_eq!(
        addr_of(&v["udp_sock"]).ip(),
        guest,
        "UDP stays on the tap by default: {out}"
    );

    // --ignore: the peer's network stays on the tap (the tap still reaches it).
    let (v, out) = routes(&[
        "--bypass",
        "--ignore",
        "192.168.77.0/24",
        "--ignore",
        "fd99::/16",
    ]);
    assert_eq!(v["peer_greeting"], "peer", "{out}");
    assert_eq!(addr_of(&v["peer_sock"]).ip(), guest, "on the tap: {out}");
    assert!(addr_of(&v["gw_sock"]).ip().is_loopback(), "{out}");

    // --no-bypass-udp (the default, still accepted): UDP stays on the tap.
    let (v, out) = routes(&["--bypass", "--no-bypass-udp"]);
    assert_eq!(addr_of(&v["udp_sock"]).ip(), guest, "{out}");
    assert!(addr_of(&v["gw_sock"]).ip().is_loopback(), "{out}");

    // --bypass-udp: a connected UDP socket gets a host socket too.
    let (v, out) = routes(&["--bypass", "--bypass-udp"]);
    assert!(
        addr_of(&v["udp_sock"]).ip().is_loopback(),
        "UDP bypassed: {out}"
    );

    // --disable-host-loopback: the gateway is refused, as on the tap; the rest is unchanged.
    let (v, out) = routes(&["--bypass", "--bypass-udp", "--disable-host-loopback"]);
    assert_eq!(v["gw_errno"], libc::ENETUNREACH, "{out}");
    assert_eq!(v["udp_errno"], libc::ENETUNREACH, "{out}");
    assert_eq!(v["loopback"], "container", "{out}");
    assert_eq!(addr_of(&v["peer_sock"]).ip(), PEER_HOST_ADDR, "{out}");
}

const UDP_CLIENT: &str = include_str!("py/bypass_udp_client.py");

#[test]
fn bypass_udp_connect_and_sends_are_policed() {
    if !preflight_bypass(&["python3"]) {
        return;
    }
    let host = HostNs::new();
    let (port, other) = (22020, 22021);
    let echo = serve_udp_echo(host.udp(port), Duration::from_secs(5));
    // A host UDP socket on 127.0.0.1:other must never receive anything.
    let trap = host.udp(other);
    trap.set_nonblocking(true).unwrap();
    let out = run_py(
        &host,
        &["--bypass", "--bypass-udp"],
        UDP_CLIENT,
        &[port.to_string(), other.to_string()],
    );
    let v = one_json(&out);
    let _ = echo.join(RUN_TIMEOUT);
    assert!(addr_of(&v["sock"]).ip().is_loopback(), "bypassed: {out}");
    assert_eq!(
        addr_of(&v["peer"]),
        SocketAddr::from(([10, 0, 2, 2], port)),
        "{out}"
    );
    assert_eq!(
        (&v["one"], &v["two"], &v["three"]),
        (&"one".into(), &"two".into(), &"three".into()),
        "{out}"
    );
    for call in ["sendto", "sendmsg", "connect"] {
        assert_eq!(
            v[call],
            libc::ENETUNREACH,
            "{call} to 127.0.0.1 on a host socket: {out}"
        );
    }
    // sendmmsg: the two messages before the refused one go in one call, then the refusal.
    assert_eq!(v["mmsg_rc"], 2, "sendmmsg of 4 with the 3rd refused: {out}");
    assert_eq!(v["mmsg_lens"], serde_json::json!([3, 3]), "{out}");
    assert_eq!(v["mmsg_got"], serde_json::json!(["mm1", "mm2"]), "{out}");
    assert_eq!(v["mmsg_retry"], libc::ENETUNREACH, "{out}");
    let mut b = [0u8; 16];
    assert!(
        trap.recv_from(&mut b).is_err(),
        "host 127.0.0.1:{other} got a datagram"
    );
}

const THREADS_CLIENT: &str = include_str!("py/bypass_threads_client.py");

#[test]
fn bypass_many_threads_and_processes_connect_at_once() {
    if !preflight_bypass(&["python3"]) {
        return;
    }
    let host = HostNs::new();
    let port = 22030;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let l = host.listen(port);
    let acc = acceptor(l, b"x", stop.clone(), count.clone());
    let (procs, threads, per) = (6, 8, 10);
    let out = run_py(
        &host,
        &["--bypass"],
        THREADS_CLIENT,
        &[port, procs, threads, per].map(|x| x.to_string()),
    );
    stop.store(true, Ordering::Relaxed);
    acc.join().unwrap();
    let v = one_json(&out);
    let total = (procs * threads * per) as u64;
    assert_eq!(
        v["good"], total,
        "every connect bypassed and answered: {out}"
    );
    assert_eq!(count.load(Ordering::Relaxed) as u64, total);
}

const SLOW_CLIENT: &str = include_str!("py/bypass_slow_client.py");

#[test]
fn bypass_slow_connect_never_stalls_others_and_dead_processes_are_dropped() {
    if !preflight_bypass(&["python3"]) {
        return;
    }
    let host = HostNs::new();
    let _peer = host.peer();
    // Six ARP probes instead of three: the slow connect then takes ~6 s, so the 20 fast ones
    // finish first even on a loaded machine.
    host.sh("echo 6 > /proc/sys/net/ipv4/neigh/twhost0/mcast_solicit")
        .ok();
    let port = 22040;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let acc = acceptor(host.listen(port), b"", stop.clone(), count.clone());
    let out = run_py(&host, &["--bypass"], SLOW_CLIENT, &[port.to_string()]);
    stop.store(true, Ordering::Relaxed);
    acc.join().unwrap();
    let v = one_json(&out);
    let slow_t = v["slow_t"].as_f64().unwrap();
    let fast_t = v["fast_t"].as_f64().unwrap();
    assert_eq!(v["slow"], libc::EHOSTUNREACH, "{out}");
    assert!(slow_t > 1.0, "the slow connect really was slow: {out}");
    assert_eq!(v["fast"], 20, "{out}");
    assert!(
        fast_t < slow_t,
        "20 connects finished while the slow one was pending: {out}"
    );
    assert_eq!(v["sndtimeo"], libc::EINPROGRESS, "{out}");
    let st = v["sndtimeo_t"].as_f64().unwrap();
    assert!((0.3..2.0).contains(&st), "SO_SNDTIMEO honoured: {out}");
    assert!(
        v["idle_ticks"].as_u64().unwrap() <= 30,
        "tapwire idle after a process died mid-notification: {out}"
    );
    assert_eq!(v["after"], "127.0.0.1", "{out}");
}

/// Two threads: one connects again and again to a shared `struct sockaddr_in`, the other
/// rewrites that struct as fast as it can with one of three addresses: an allowed one (the
/// peer), the container's own 127.0.0.1 and the gateway, both of which must never reach the
/// host's loopback (`--disable-host-loopback`).
const RACE_C: &str = include_str!("c/bypass_race.c");

#[test]
fn bypass_sockaddr_rewrite_race_never_lands_where_policy_forbids() {
    if !preflight_bypass(&["gcc"]) {
        return;
    }
    let host = HostNs::new();
    let peer = host.peer();
    let (peer_port, lo_port) = (22050, 22051);
    let src = host.dir.join("race.c");
    let exe = host.dir.join("race");
    std::fs::write(&src, RACE_C).unwrap();
    let cc = run(
        std::process::Command::new("gcc")
            .args(["-O2", "-pthread", "-o"])
            .arg(&exe)
            .arg(&src),
        RUN_TIMEOUT,
    );
    if !cc.success() {
        skip(&format!("cannot compile the race client: {cc}"));
        return;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let allowed = Arc::new(AtomicUsize::new(0));
    let forbidden = Arc::new(AtomicUsize::new(0));
    let a1 = acceptor(peer.listen(peer_port), b"", stop.clone(), allowed.clone());
    let a2 = acceptor(host.listen(lo_port), b"", stop.clone(), forbidden.clone());
    let out = run(
        host.cmd(bin())
            .args(["run", "--bypass", "--disable-host-loopback", "--"])
            .arg(&exe)
            .args([peer_port.to_string(), lo_port.to_string(), "3000".into()]),
        Duration::from_secs(120),
    );
    // The program does not wait to be accepted: let the acceptor take every connection that
    // reached the peer before stopping it (a fixed pause is too short on a loaded machine).
    let want = json_lines(&out)
        .first()
        .and_then(|v| v["ok"].as_u64())
        .unwrap_or(0) as usize;
    let waited = Instant::now();
    while allowed.load(Ordering::Relaxed) < want && waited.elapsed() < SETUP_TIMEOUT {
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    a1.join().unwrap();
    a2.join().unwrap();
    let v = one_json(&out);
    eprintln!("race results: {v}");
    assert_eq!(
        forbidden.load(Ordering::Relaxed),
        0,
        "a connection reached the host's loopback: {out}"
    );
    let ok = v["ok"].as_u64().unwrap();
    assert!(ok > 0, "some connects went to the allowed peer: {out}");
    assert_eq!(ok as usize, allowed.load(Ordering::Relaxed), "{out}");
    assert!(
        v["refused"].as_u64().unwrap() + v["unreach"].as_u64().unwrap() > 0,
        "the race did flip the address: {out}"
    );
    assert_eq!(v["other"], 0, "{out}");
}

const PUBLISH_SERVER: &str = include_str!("py/bypass_publish_server.py");

#[test]
fn bypass_published_port_is_a_host_socket() {
    if !preflight_bypass(&["python3", "ss"]) {
        return;
    }
    let host = HostNs::new();
    let hp = 22060;
    let mut cmd = host.cmd(bin());
    cmd.args(["run", "--bypass", "-p", &format!("127.0.0.1:{hp}:80"), "--"])
        .args([python3(), "-c"])
        .arg(script(PUBLISH_SERVER))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut proc = Proc::spawn(&mut cmd);
    let mut lines = BufReader::new(proc.child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("server output").expect("read");
    let v: serde_json::Value = serde_json::from_str(&first).expect("json");
    let addr = SocketAddr::from(([127, 0, 0, 1], hp));
    // The program's listening socket is the host's 127.0.0.1:hp, owned by the program.
    let ss = ss_owners(&host, &format!("-tlnpH '( sport = :{hp} )'"));
    let pid = v["pid"].as_u64().unwrap();
    assert!(
        ss.contains(&format!("pid={pid},")),
        "listening socket owned by the program: {ss}"
    );
    let data = random_bytes(4 << 20, 9);
    let (mut s, local) = host
        .in_ns(|| {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
            let local = s.local_addr()?;
            Ok::<_, std::io::Error>((s, local))
        })
        .expect("connect to the published port");
    set_timeouts(&s);
    s.write_all(&data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, format!("{} {}", sha256_hex(&data), data.len()));
    let second = lines.next().expect("server output").expect("read");
    let v: serde_json::Value = serde_json::from_str(&second).expect("json");
    // accept() ran on the host: the program sees the host client's own address.
    assert_eq!(addr_of(&v["client"]), local, "{second}");
    let deadline = Instant::now() + RUN_TIMEOUT;
    while proc.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "tapwire run did not exit");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bypass_seccomp_profile_is_valid_json() {
    if !tapwire_only("tapwire seccomp-profile") {
        return;
    }
    let out = run(
        std::process::Command::new(bin()).args([
            "seccomp-profile",
            "--listener-path",
            "/run/x.sock",
        ]),
        RUN_TIMEOUT,
    );
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("profile JSON");
    assert_eq!(v["listenerPath"], "/run/x.sock");
    assert_eq!(v["defaultAction"], "SCMP_ACT_ALLOW");
    let names: Vec<&str> = v["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["names"].as_array().unwrap())
        .map(|n| n.as_str().unwrap())
        .collect();
    for n in [
        "connect",
        "bind",
        "getpeername",
        "sendmsg",
        "io_uring_setup",
    ] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
}

const SENDS_CLIENT: &str = include_str!("py/bypass_sends_client.py");

#[test]
fn bypass_dns_unix_sockets_and_sendmsg_still_work() {
    if !preflight_bypass(&["python3", "dnsmasq"]) {
        return;
    }
    let host = HostNs::new();
    let _dns = host.dnsmasq();
    let port = 22070;
    let sink = serve_sink(host.listen(port));
    let out = run_py(&host, &["--bypass"], SENDS_CLIENT, &[port.to_string()]);
    let (n, h, _) = sink.join(RUN_TIMEOUT);
    let v = one_json(&out);
    assert_eq!(v["dns"], "10.9.8.7", "{out}");
    assert_eq!(v["unix"], serde_json::json!(["fd", 1]), "{out}");
    assert!(addr_of(&v["sock"]).ip().is_loopback(), "bypassed: {out}");
    assert_eq!(n, 4 << 20, "{out}");
    assert_eq!(Some(h.as_str()), v["sha"].as_str(), "{out}");
}
