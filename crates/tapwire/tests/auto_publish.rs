//! Automatic publishing (`-p auto`, `--publish auto:[HOST_ADDR:]RANGE[/PROTO]`), end to end
//! through the real TAP: the guest starts listening (TCP on `0.0.0.0` and on a dual-stack
//! `[::]`, bound UDP), a host client in the test's private host namespace reaches the same port
//! on host loopback within a deadline and moves sha256-checked bytes; the guest closes the
//! socket and the host port stops accepting; a host port already taken is reported in
//! `list_hostfwd` (and once in the log) and published as soon as it is free; `remove_hostfwd`
//! pins a port off while the guest listens; a loopback-only listener is not published (the
//! TAP cannot reach it); `tapwire run -p auto`; and the daemon stays idle (its CPU time over
//! seconds without traffic is a few clock ticks at most: a behaviour check, not a speed one).
//!
//! Deadlines, never fixed sleeps, decide: publishing takes one dump period (500 ms), so every
//! wait below allows [`PUBLISH_DEADLINE`]. Needs root; tapwire-only (slirp4netns has no
//! `auto`). See tests/common for the skip policy.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::*;
use common::hardening::cpu_ticks;
use common::*;
use serde_json::Value;

/// Generous bound for "within 1 s" on a loaded CI machine.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(5);

fn preflight_auto() -> bool {
    preflight(&[]) && tapwire_only("automatic publishing")
}

/// The automatic entry for (proto, port), if listed.
fn auto_entry(w: &World, proto: &str, port: u16) -> Option<Value> {
    list(&w.sock).into_iter().find(|e| {
        e["proto"] == proto && e["host_port"] == port && e.get("auto") == Some(&Value::Bool(true))
    })
}

/// Wait until (proto, port) is published (an automatic entry without an error).
#[track_caller]
fn wait_published(w: &World, proto: &str, port: u16) -> Value {
    let start = Instant::now();
    let mut found = None;
    wait_until(
        PUBLISH_DEADLINE,
        &format!("{proto} {port} published"),
        || {
            found = auto_entry(w, proto, port).filter(|e| e.get("error").is_none());
            found.is_some()
        },
    );
    eprintln!(
        "{proto} {port} published after {:.0} ms",
        start.elapsed().as_secs_f64() * 1000.0
    );
    found.unwrap()
}

#[track_caller]
fn wait_unpublished(w: &World, proto: &str, port: u16) {
    let start = Instant::now();
    wait_until(PUBLISH_DEADLINE, &format!("{proto} {port} removed"), || {
        auto_entry(w, proto, port).is_none()
    });
    eprintln!(
        "{proto} {port} removed after {:.0} ms",
        start.elapsed().as_secs_f64() * 1000.0
    );
}

/// A connect to host loopback `port` is refused (nothing listens on the host).
#[track_caller]
fn refused(w: &World, port: u16) {
    match w.connect(lo(port)) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => panic!("connect to 127.0.0.1:{port}: expected refused, got {other:?}"),
    }
}

#[test]
fn tcp_listeners_are_published_and_removed() {
    if !preflight_auto() {
        return;
    }
    let mut w = World::new(&["-p", "auto"]);
    // Loopback-only first: once a later listener is published, the same dump saw this one.
    let _loopback = w
        .guest
        .in_ns(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 7102)))
        .unwrap();
    let l4 = w.guest_listen(any_guest(7100));
    let e = wait_published(&w, "tcp", 7100);
    assert_eq!(e["host_addr"], "0.0.0.0", "{e}");
    assert_eq!(e["guest_addr"], "10.0.2.100", "{e}");
    assert_eq!(e["guest_port"], 7100, "{e}");
    assert!(
        auto_entry(&w, "tcp", 7102).is_none(),
        "a loopback-only listener cannot be reached through the TAP and is not published"
    );
    let up = random_bytes(4 * MB, 21);
    let down = Arc::new(random_bytes(4 * MB, 22));
    let peer = check_exchange(&w, l4.try_clone().unwrap(), lo(7100), &up, down.clone());
    assert_eq!(peer.ip(), GATEWAY);
    // A dual-stack IPv6 listener on [::] is reached at the guest's IPv4 address.
    let l6 = w
        .guest
        .in_ns(|| TcpListener::bind("[::]:7101"))
        .expect("guest listen [::]:7101");
    wait_published(&w, "tcp", 7101);
    check_exchange(&w, l6.try_clone().unwrap(), lo(7101), &up, down);
    // Closed in the guest: removed, and the host port refuses.
    drop(l4);
    wait_unpublished(&w, "tcp", 7100);
    refused(&w, 7100);
    drop(l6);
    wait_unpublished(&w, "tcp", 7101);
    refused(&w, 7101);
    w.alive();
}

/// Stop-and-wait echo of `n` numbered datagrams through `c`; the sha256 of what came back.
fn udp_echo_rounds(c: &UdpSocket, n: u32) -> (u64, String) {
    let mut back = Vec::new();
    let mut buf = [0u8; 2048];
    for seq in 0..n {
        let d = udp_payload(seq);
        let mut tries = 0;
        loop {
            c.send(&d).expect("host udp send");
            match c.recv(&mut buf) {
                Ok(k) if buf[..k] == d[..] => {
                    back.extend_from_slice(&buf[..k]);
                    break;
                }
                Ok(_) => {}
                Err(e) if tries < 5 => eprintln!("datagram {seq}: {e}; resending"),
                Err(e) => panic!("datagram {seq}: no echo: {e}"),
            }
            tries += 1;
        }
    }
    (back.len() as u64, sha256_hex(&back))
}

#[test]
fn udp_sockets_are_published_and_removed() {
    if !preflight_auto() {
        return;
    }
    let mut w = World::new(&["--publish", "auto:7200-7299/udp"]);
    let g = w.guest_udp(any_guest(7200));
    let server = {
        let g = g.try_clone().unwrap();
        task("guest-udp-echo", move || {
            g.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let mut buf = [0u8; 2048];
            while let Ok((k, from)) = g.recv_from(&mut buf) {
                if &buf[..k] == b"stop" {
                    break;
                }
                g.send_to(&buf[..k], from).unwrap();
            }
        })
    };
    // A TCP listener on a port of the range is not covered (the rule is UDP only).
    let _tcp = w.guest_listen(any_guest(7201));
    let e = wait_published(&w, "udp", 7200);
    assert_eq!(e["guest_addr"], "10.0.2.100", "{e}");
    let c = w.host_udp_to(lo(7200));
    let n = 300;
    let want: Vec<u8> = (0..n).flat_map(udp_payload).collect();
    assert_eq!(
        udp_echo_rounds(&c, n),
        (want.len() as u64, sha256_hex(&want)),
        "datagrams echoed through the automatic UDP forward"
    );
    assert!(
        auto_entry(&w, "tcp", 7201).is_none(),
        "TCP is not in the rule"
    );
    c.send(b"stop").unwrap();
    server.join(TRANSFER_TIMEOUT);
    drop(g);
    wait_unpublished(&w, "udp", 7200);
    // Nothing is bound on the host port any more: a fresh bind there succeeds.
    w.host
        .in_ns(|| UdpSocket::bind((Ipv4Addr::LOCALHOST, 7200)))
        .expect("host port 7200/udp is free again");
    w.alive();
}

#[test]
fn a_taken_host_port_is_reported_and_published_once_free() {
    if !preflight_auto() {
        return;
    }
    let mut w = World::new(&["-p", "auto:7300-7399/tcp"]);
    let taken = w
        .host
        .in_ns(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 7300)))
        .unwrap();
    let l0 = w.guest_listen(any_guest(7300));
    let _l1 = w.guest_listen(any_guest(7301));
    wait_published(&w, "tcp", 7301);
    let e = auto_entry(&w, "tcp", 7300).expect("the conflicting port is listed");
    let err = e["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {e}"));
    assert!(err.contains("Address already in use"), "{e}");
    // Later dumps retry it without logging again, and the daemon keeps serving.
    let _l2 = w.guest_listen(any_guest(7302));
    wait_published(&w, "tcp", 7302);
    let l3 = w.guest_listen(any_guest(7303));
    wait_published(&w, "tcp", 7303);
    let up = random_bytes(MB, 31);
    check_exchange(&w, l3, lo(7303), &up, Arc::new(random_bytes(MB, 32)));
    let log = w.d.output();
    let warned = log
        .lines()
        .filter(|l| l.contains("host port cannot be opened") && l.contains("7300"))
        .count();
    assert_eq!(warned, 1, "the conflict is logged once: {log}");
    // Freed on the host: published on a later retry.
    drop(taken);
    wait_published(&w, "tcp", 7300);
    check_exchange(&w, l0, lo(7300), &up, Arc::new(random_bytes(MB, 33)));
    w.alive();
}

#[test]
fn remove_hostfwd_pins_an_automatic_forward_off() {
    if !preflight_auto() {
        return;
    }
    let mut w = World::new(&["-p", "auto"]);
    let l = w.guest_listen(any_guest(7400));
    let e = wait_published(&w, "tcp", 7400);
    let id = e["id"].as_u64().unwrap();
    remove(&w.sock, id);
    assert!(auto_entry(&w, "tcp", 7400).is_none());
    refused(&w, 7400);
    // Later dumps (one published 7401) leave it off while the guest listens.
    let _l1 = w.guest_listen(any_guest(7401));
    wait_published(&w, "tcp", 7401);
    assert!(auto_entry(&w, "tcp", 7400).is_none(), "pinned off");
    refused(&w, 7400);
    // A second remove of the same id is a bad request, the daemon unchanged.
    let r = call(
        &w.sock,
        &format!(r#"{{"execute":"remove_hostfwd","arguments":{{"id":{id}}}}}"#),
    );
    assert_eq!(
        r["error"]["desc"], "bad request: remove_hostfwd: bad arguments.id",
        "{r}"
    );
    // The guest closes it and listens again: published again, under a new id.
    drop(l);
    let _l2 = w.guest_listen(any_guest(7402));
    wait_published(&w, "tcp", 7402);
    let l = w.guest_listen(any_guest(7400));
    let again = wait_published(&w, "tcp", 7400);
    assert!(again["id"].as_u64().unwrap() > id, "{again}");
    let up = random_bytes(MB, 41);
    check_exchange(&w, l, lo(7400), &up, Arc::new(random_bytes(MB, 42)));
    w.alive();
}

#[test]
fn explicit_forwards_win_over_automatic_ones() {
    if !preflight_auto() {
        return;
    }
    let mut w = World::new(&["-p", "auto", "-p", "127.0.0.1:7500:7501"]);
    let _a = w.guest_listen(any_guest(7500));
    let b = w.guest_listen(any_guest(7501));
    let _c = w.guest_listen(any_guest(7502));
    wait_published(&w, "tcp", 7502);
    // 7500 is the explicit forward's host port and 7501 its guest port: neither is automatic.
    assert!(auto_entry(&w, "tcp", 7500).is_none() && auto_entry(&w, "tcp", 7501).is_none());
    let up = random_bytes(MB, 51);
    check_exchange(&w, b, lo(7500), &up, Arc::new(random_bytes(MB, 52)));
    // add_hostfwd on an automatic forward's host endpoint replaces it.
    let id = add(&w.sock, "tcp", Some("0.0.0.0"), 7502, 7501);
    let entries = list(&w.sock);
    let e: Vec<&Value> = entries.iter().filter(|e| e["host_port"] == 7502).collect();
    assert_eq!(e.len(), 1, "{entries:?}");
    assert_eq!((e[0]["id"].as_u64(), e[0].get("auto")), (Some(id), None));
    w.alive();
}

#[test]
fn idle_daemon_with_auto_uses_no_cpu() {
    if !preflight_auto() {
        return;
    }
    let mut w = World::new(&["-p", "auto"]);
    let _l = w.guest_listen(any_guest(7600));
    wait_published(&w, "tcp", 7600);
    let pid = w.d.pid();
    let window = Duration::from_secs(5);
    let before = cpu_ticks(pid);
    std::thread::sleep(window);
    let used = cpu_ticks(pid) - before;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    let ms = used * 1000 / hz;
    eprintln!("idle with -p auto: {used} ticks ({ms} ms CPU) over {window:?}");
    assert!(ms < 50, "idle CPU over {window:?}: {ms} ms");
    w.alive();
}

const RUN_SERVER: &str = r#"
import hashlib, socket, sys
s = socket.socket(socket.AF_INET6)
s.bind(("::", int(sys.argv[1])))
s.listen(1)
c, _ = s.accept()
h = hashlib.sha256()
while True:
    b = c.recv(65536)
    if not b:
        break
    h.update(b)
c.sendall(h.hexdigest().encode())
c.close()
"#;

#[test]
fn run_mode_publishes_automatically() {
    if !preflight_auto() {
        return;
    }
    let host = HostNs::new();
    let mut child = host
        .cmd(bin())
        .args([
            "run",
            "-p",
            "auto:7700/tcp",
            "--",
            "python3",
            "-c",
            RUN_SERVER,
            "7700",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn tapwire run");
    let mut conn = None;
    let start = Instant::now();
    wait_until(
        SETUP_TIMEOUT + PUBLISH_DEADLINE,
        "run mode publishes 7700",
        || {
            conn = host
                .in_ns(|| TcpStream::connect((Ipv4Addr::LOCALHOST, 7700)))
                .ok();
            conn.is_some()
        },
    );
    eprintln!("reachable after {:.2} s", start.elapsed().as_secs_f64());
    let mut c = conn.unwrap();
    set_timeouts(&c);
    let up = random_bytes(2 * MB, 71);
    c.write_all(&up).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    assert_eq!(got, sha256_hex(&up), "upload as the guest saw it");
    let status = child.wait().unwrap();
    assert!(status.success(), "tapwire run: {status}");
    let _: SocketAddr = lo(0);
}
