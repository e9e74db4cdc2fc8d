//! `--forward-to-host [GUEST_PORT:]HOST_PORT|auto`: the guest's own 127.0.0.1 and [::1] reach
//! the host's 127.0.0.1 through listeners inside the guest's namespace, spliced in the kernel.
//!
//! Each test runs in its own private host namespace (see tests/common). The host peer is a
//! real TCP server on the host namespace's 127.0.0.1 (std sockets in this process, in that
//! namespace); the guest side is a Python client under `tapwire run` (run mode) or in the
//! guest namespace of a daemon (daemon mode). 20 MiB go each way per connection, sha256-checked
//! at both ends, with the client's half-close in between (it shuts down its write side after
//! the upload and still receives the download). tapwire only: slirp4netns has no such option.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use common::bypass::python3;
use common::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const MIB20: usize = 20 << 20;

fn preflight_fwd() -> bool {
    preflight(&["python3"]) && tapwire_only("--forward-to-host")
}

/// The host peer: for each of `n` connections, read to EOF (the client's half-close), then
/// send `down` and close. Returns the sha256 of what each connection uploaded.
fn host_server(l: TcpListener, n: usize, down: Vec<u8>) -> Task<Vec<String>> {
    task("host server", move || {
        let mut got = Vec::new();
        for _ in 0..n {
            let (mut c, _) = accept_timeout(&l, RUN_TIMEOUT).expect("host accept");
            c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let (_, sha) = read_hash(&mut c).expect("host read");
            got.push(sha);
            c.write_all(&down).expect("host write");
        }
        got
    })
}

/// Python client: for each address argument, connect, upload 20 MiB of random bytes, shut
/// down the write side, read to EOF; prints one JSON line per connection.
const CLIENT: &str = r#"
import hashlib, json, os, socket, sys
for spec in sys.argv[1:]:
    host, port = spec.rsplit(":", 1)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect((host.strip("[]"), int(port)))
    up = os.urandom(20 << 20)
    s.sendall(up)
    s.shutdown(socket.SHUT_WR)
    h = hashlib.sha256()
    n = 0
    while True:
        b = s.recv(1 << 16)
        if not b:
            break
        h.update(b)
        n += len(b)
    s.close()
    print(json.dumps({"addr": spec, "up": hashlib.sha256(up).hexdigest(), "down": h.hexdigest(), "down_len": n}), flush=True)
"#;

fn check_transfers(out: &Out, server: Vec<String>, down: &[u8], addrs: &[&str]) {
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(lines.len(), addrs.len(), "one line per connection: {out}");
    let want_down = sha256_hex(down);
    for (i, (v, addr)) in lines.iter().zip(addrs).enumerate() {
        assert_eq!(v["addr"], *addr, "{out}");
        assert_eq!(
            v["down_len"],
            down.len(),
            "download length via {addr}: {out}"
        );
        assert_eq!(v["down"], want_down.as_str(), "download sha256 via {addr}");
        assert_eq!(v["up"], server[i].as_str(), "upload sha256 via {addr}");
    }
}

#[test]
fn run_mode_ipv4_and_ipv6_loopback_20mib_each_way_with_half_close() {
    if !preflight_fwd() {
        return;
    }
    let host = HostNs::new();
    let l = host.listen(8080);
    let down = random_bytes(MIB20, 7);
    let server = host_server(l, 2, down.clone());
    let addrs = ["127.0.0.1:9000", "[::1]:9000"];
    let mut cmd = host.cmd(bin());
    cmd.args(["run", "--forward-to-host", "9000:8080/tcp", "--"]);
    cmd.args([python3(), "-c", CLIENT]).args(addrs);
    let out = run(&mut cmd, RUN_TIMEOUT);
    assert!(out.success(), "{out}");
    check_transfers(&out, server.join(RUN_TIMEOUT), &down, &addrs);
}

/// A refused host port resets (or at once ends) the guest's connection, the daemon carries
/// on, and a second forward (repeatable flag, guest port = host port) works.
#[test]
fn run_mode_refused_host_port_resets_the_guest_and_others_still_work() {
    if !preflight_fwd() {
        return;
    }
    let host = HostNs::new();
    let l = host.listen(7000);
    let server = task("echo", move || {
        let (mut c, _) = accept_timeout(&l, RUN_TIMEOUT).expect("accept");
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        c.write_all(&buf).unwrap();
    });
    let script = r#"
import errno, json, socket
def refused():
    # The reset may come while create_connection still runs (the guest-side accept is done
    # by then): either way the connection must end at once.
    try:
        s = socket.create_connection(("127.0.0.1", 9001), timeout=20)
        s.sendall(b"x")
        b = s.recv(10)
        return "eof" if b == b"" else "data"
    except ConnectionResetError:
        return "reset"
    except BrokenPipeError:
        return "reset"
    except socket.timeout:
        return "timeout"
r = []
for _ in range(3):
    try:
        r.append(refused())
    except ConnectionRefusedError:
        r.append("refused")
s = socket.create_connection(("127.0.0.1", 7000), timeout=20)
s.sendall(b"hello")
print(json.dumps({"refused": r, "echo": s.recv(5).decode()}), flush=True)
"#;
    let mut cmd = host.cmd(bin());
    cmd.args([
        "run",
        "--forward-to-host",
        "9001:6999",
        "--forward-to-host",
        "7000",
        "--",
        python3(),
        "-c",
        script,
    ]);
    let out = run(&mut cmd, RUN_TIMEOUT);
    assert!(out.success(), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("json");
    for r in v["refused"].as_array().unwrap() {
        assert!(
            r == "reset" || r == "eof",
            "a refused host port must reset or end the guest connection: {out}"
        );
    }
    assert_eq!(v["echo"], "hello", "{out}");
    server.join(RUN_TIMEOUT);
}

/// `auto`: a port the host listens on at start-up is forwarded under its own number.
#[test]
fn run_mode_auto_forwards_the_hosts_loopback_listeners() {
    if !preflight_fwd() {
        return;
    }
    let host = HostNs::new();
    let l = host.listen(8181);
    let down = random_bytes(MIB20, 9);
    let server = host_server(l, 1, down.clone());
    let addrs = ["127.0.0.1:8181"];
    let mut cmd = host.cmd(bin());
    cmd.args(["run", "--forward-to-host", "auto", "--"]);
    cmd.args([python3(), "-c", CLIENT]).args(addrs);
    let out = run(&mut cmd, RUN_TIMEOUT);
    assert!(out.success(), "{out}");
    check_transfers(&out, server.join(RUN_TIMEOUT), &down, &addrs);
}

/// Daemon mode: the namespace helper opens the listeners in the joined namespace.
#[test]
fn daemon_mode_splices_the_guests_loopback_to_the_host() {
    if !preflight_fwd() {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let l = host.listen(8282);
    let down = random_bytes(MIB20, 11);
    let server = host_server(l, 2, down.clone());
    let _d = Daemon::with_args(&host, &guest, &["--forward-to-host", "9100:8282"]);
    let addrs = ["127.0.0.1:9100", "[::1]:9100"];
    let out = guest.python(CLIENT, &addrs, RUN_TIMEOUT);
    assert!(out.success(), "{out}");
    check_transfers(&out, server.join(RUN_TIMEOUT), &down, &addrs);
}

/// Bad values and `--disable-host-loopback` exit non-zero naming the flag, before anything
/// runs.
#[test]
fn bad_values_and_disable_host_loopback_are_refused() {
    if !preflight_fwd() {
        return;
    }
    let host = HostNs::new();
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "--forward-to-host", "0", "--", "true"],
            "invalid port '0'",
        ),
        (
            &["run", "--forward-to-host", "1:2:3", "--", "true"],
            "invalid port",
        ),
        (
            &["run", "--forward-to-host", "53/udp", "--", "true"],
            "/udp is not supported",
        ),
        (
            &["run", "--forward-to-host", "80/sctp", "--", "true"],
            "invalid protocol",
        ),
        (
            &[
                "run",
                "--disable-host-loopback",
                "--forward-to-host",
                "80",
                "--",
                "true",
            ],
            "--disable-host-loopback",
        ),
        (
            &[
                "run",
                "--forward-to-host",
                "5:6",
                "--forward-to-host",
                "5:7",
                "--",
                "true",
            ],
            "guest port 5 is given twice",
        ),
        (&["--forward-to-host", "x", "1"], "invalid port 'x'"),
        (
            &["--forward-to-host", "80", "--disable-host-loopback", "1"],
            "--disable-host-loopback",
        ),
    ];
    for (args, want) in cases {
        let out = run(host.cmd(bin()).args(*args), RUN_TIMEOUT);
        assert!(!out.success(), "{args:?} must fail: {out}");
        assert!(
            out.stderr.contains("--forward-to-host") && out.stderr.contains(want),
            "{args:?}: the error names the flag and says {want:?}: {out}"
        );
    }
}

/// A guest port already taken in the namespace (daemon mode: the guest's own listener) stops
/// start-up with an error naming the flag and the address.
#[test]
fn daemon_mode_guest_port_in_use_is_a_clear_error() {
    if !preflight_fwd() {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    // The guest's lo is brought up by -c; bring it up now so the guest can hold the port.
    guest.sh("ip link set lo up", Duration::from_secs(10)).ok();
    let _taken = guest
        .in_ns(|| TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 9200))))
        .expect("guest listener");
    let mut d = Daemon::spawn(
        &host,
        &guest,
        DaemonCfg::default().args(&["--forward-to-host", "9200:80"]),
    );
    let status = d.wait_timeout(RUN_TIMEOUT).expect("daemon exits");
    assert!(!status.success(), "{}", d.describe());
    let log = d.output();
    assert!(
        log.contains("--forward-to-host") && log.contains("127.0.0.1:9200"),
        "the error names the flag and the address: {log}"
    );
}

/// A hostile guest opening far more connections than the cap: the connections past it are
/// reset at once, the daemon's fds stay bounded, and once the guest lets go a new connection
/// is spliced again.
#[test]
fn daemon_mode_connection_flood_is_capped_and_recovers() {
    if !preflight_fwd() {
        return;
    }
    const CAP: usize = 128; // engine::splice::MAX_SPLICED
    const FLOOD: usize = 200;
    let host = HostNs::new();
    let guest = host.guest();
    let l = host.listen(8383);
    // The host peer echoes every connection until it ends.
    let _server = task("echo server", move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = c.read(&mut buf) {
                    if c.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let d = Daemon::with_args(&host, &guest, &["--forward-to-host", "9300:8383"]);
    let base_fds = d.fd_count();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 9300));
    let mut conns = Vec::new();
    for _ in 0..FLOOD {
        // The guest-side listener completes the handshake; the reset (if any) follows.
        if let Ok(c) = guest.connect(addr, SETUP_TIMEOUT) {
            conns.push(c);
        }
    }
    // Every live connection echoes; the ones past the cap were reset or ended.
    let mut alive = 0;
    for c in &mut conns {
        let ok = c.write_all(b"ping").is_ok() && {
            let mut got = [0u8; 4];
            c.read_exact(&mut got).is_ok() && &got == b"ping"
        };
        alive += usize::from(ok);
    }
    assert_eq!(
        alive,
        CAP,
        "exactly the cap is spliced ({} connected)",
        conns.len()
    );
    let fds = d.fd_count();
    assert!(
        fds <= base_fds + CAP * 6 + 16,
        "daemon fds bounded: {base_fds} at start, {fds} with the flood"
    );
    drop(conns);
    wait_until(SETUP_TIMEOUT, "the daemon to close the flood", || {
        d.fd_count() <= base_fds + 4
    });
    let mut c = guest
        .connect(addr, SETUP_TIMEOUT)
        .expect("connect after the flood");
    c.write_all(b"again").unwrap();
    let mut got = [0u8; 5];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"again");
}

/// With `--bypass` the guest's loopback stays its own (not bypassed), so the spliced
/// listeners still answer it.
#[test]
fn run_mode_with_bypass_still_splices_the_guests_loopback() {
    if !(preflight_fwd() && common::bypass::preflight_bypass(&[])) {
        return;
    }
    let host = HostNs::new();
    let l = host.listen(8484);
    let down = random_bytes(MIB20, 13);
    let server = host_server(l, 1, down.clone());
    let addrs = ["127.0.0.1:9400"];
    let mut cmd = host.cmd(bin());
    cmd.args(["run", "--bypass", "--forward-to-host", "9400:8484", "--"]);
    cmd.args([python3(), "-c", CLIENT]).args(addrs);
    let out = run(&mut cmd, RUN_TIMEOUT);
    assert!(out.success(), "{out}");
    check_transfers(&out, server.join(RUN_TIMEOUT), &down, &addrs);
}
