//! Bypass mode (`tapwire run --bypass`, `--seccomp-listener`) for whole containers, tapwire only:
//! a runc container from an OCI bundle whose seccomp listener tapwire serves (with and without
//! `--enable-seccomp`; client tests/c/bypass_runc_client.c), IPv6 gateway and IPv4-mapped
//! destinations, bypass as an unprivileged user, and iperf3 to host loopback via the gateway.
//! The socket-level checks are tests/bypass_sockets.rs.
//!
//! Every test starts tapwire inside its own private host namespace (see tests/common): the
//! "host" is that namespace (lo, and with `HostNs::peer` a veth to a peer namespace at
//! 192.168.77.2), so a bypassed socket can only ever reach those. How bypass is proven: a bypassed
//! socket lives in the host namespace, so the program's own `getsockname()` shows the host-side
//! address instead of its tap address 10.0.2.100, and the server sees exactly that address.

mod common;

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::bypass::*;
use common::*;

/// The container's client: connect, print our address, wait for "go", upload NBYTES of a
/// fixed pattern, half-close, copy the download to stdout. Static, so the rootfs needs nothing
/// but busybox.
const RUNC_CLIENT_C: &str = include_str!("c/bypass_runc_client.c");

/// The pattern RUNC_CLIENT_C uploads.
fn runc_pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i % 65536) * 7 + 3) as u8).collect()
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

/// runc runs a container from a bundle built here (busybox + a static client) whose network
/// namespace tapwire serves in tap mode and whose seccomp listener (listenerPath) is tapwire's
/// `--seccomp-listener`: the container's transfer to the host is bypassed (owned by the
/// container's process in the host namespace) and checksummed both ways; when the container
/// exits, tapwire drops the listener and stays idle.
#[test]
fn bypass_runc_container_through_seccomp_listener() {
    runc_scenario(&[]);
}

/// The same with the daemon's own seccomp filter, which must allow what the supervisor does.
#[test]
fn bypass_runc_container_with_enable_seccomp() {
    runc_scenario(&["--enable-seccomp"]);
}

fn runc_scenario(daemon_flags: &[&str]) {
    if !preflight_bypass(&["runc", "gcc", "busybox", "ss"]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let dir = &host.dir;
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    let busybox = which("busybox").unwrap();
    std::fs::copy(&busybox, rootfs.join("bin/busybox")).unwrap();
    for tool in ["sh", "sha256sum", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool)).unwrap();
    }
    std::fs::write(dir.join("client.c"), RUNC_CLIENT_C).unwrap();
    let cc = run(
        std::process::Command::new("gcc")
            .args(["-O2", "-static", "-o"])
            .arg(rootfs.join("client"))
            .arg(dir.join("client.c")),
        RUN_TIMEOUT,
    );
    if !cc.success() {
        skip(&format!("cannot build a static client (libc6-dev?): {cc}"));
        return;
    }
    run(
        std::process::Command::new("runc")
            .args(["spec", "--bundle"])
            .arg(&bundle),
        RUN_TIMEOUT,
    )
    .ok();

    // tapwire: tap mode for the guest namespace, plus the runtimes' seccomp listener socket.
    let sock = dir.join("seccomp.sock");
    let log = dir.join("daemon.log");
    let logf = std::fs::File::create(&log).unwrap();
    let mut daemon_cmd = host.cmd(bin());
    daemon_cmd
        .args(["-c", "--seccomp-listener"])
        .arg(&sock)
        .args(daemon_flags)
        // --enable-sandbox drops the ptrace rights a container's listener needs (refused).
        .args(
            extra_flags()
                .into_iter()
                .filter(|f| f != "--enable-sandbox"),
        )
        .arg(guest.pid().to_string())
        .arg("tap0")
        .env("TAPWIRE_LOG", "info")
        .stderr(logf);
    let mut daemon = Proc::spawn(&mut daemon_cmd);
    wait_until(SETUP_TIMEOUT, "the seccomp listener socket", || {
        if let Ok(Some(st)) = daemon.child.try_wait() {
            panic!(
                "tapwire exited: {st}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        sock.exists()
    });
    let profile = run(
        std::process::Command::new(bin())
            .args(["seccomp-profile", "--listener-path"])
            .arg(&sock),
        RUN_TIMEOUT,
    )
    .ok();

    let port = 22080;
    let up_len = 3 << 20;
    let cfg_path = bundle.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = serde_json::json!([
        "/bin/sh",
        "-c",
        format!("/client 10.0.2.2 {port} {up_len} | sha256sum")
    ]);
    let netns = format!("/proc/{}/ns/net", guest.pid());
    for ns in cfg["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == "network" {
            ns["path"] = netns.clone().into();
        }
    }
    cfg["linux"]["seccomp"] = serde_json::from_str(&profile.stdout).unwrap();
    // No /sys: not needed, and the network namespace belongs to another user namespace.
    cfg["mounts"]
        .as_array_mut()
        .unwrap()
        .retain(|m| !m["destination"].as_str().unwrap_or("").starts_with("/sys"));
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();

    let down = Arc::new(random_bytes(4 << 20, 80));
    let id = format!(
        "tapwire-bypass-{}-{}",
        std::process::id(),
        daemon_flags.len()
    );
    let runc_root = dir.join("runc-root");
    let l = host.listen(port);
    let runc_done = AtomicBool::new(false);
    let (out, served) = thread::scope(|sc| {
        let host = &host;
        let down = down.clone();
        let runc_done = &runc_done;
        let srv = sc.spawn(move || {
            // Accept until runc has given up (then there is nobody to wait for).
            l.set_nonblocking(true).unwrap();
            let deadline = Instant::now() + RUN_TIMEOUT;
            let (mut s, peer) = loop {
                match l.accept() {
                    Ok(c) => break c,
                    Err(_) if runc_done.load(Ordering::Relaxed) || Instant::now() > deadline => {
                        return None
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            };
            s.set_nonblocking(false).unwrap();
            set_timeouts(&s);
            let ss = ss_owners(
                host,
                &format!("-tnpH state established '( dport = :{port} )'"),
            );
            s.write_all(b"go").unwrap();
            let up = read_hash(&mut s).expect("upload");
            s.write_all(&down).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            Some((peer, ss, up))
        });
        let out = run(
            host.cmd("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["run", "--bundle"])
                .arg(&bundle)
                .arg(&id),
            Duration::from_secs(120),
        );
        runc_done.store(true, Ordering::Relaxed);
        let r = srv.join();
        let _ = run(
            host.cmd("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["delete", "-f", &id]),
            RUN_TIMEOUT,
        );
        (out, r.unwrap())
    });
    let dlog = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(out.success(), "runc run: {out}\ntapwire log:\n{}", dlog());
    let (peer, ss, up) = served.expect("the container connected");
    assert!(peer.ip().is_loopback(), "{peer}");
    assert!(
        out.stderr.contains(&format!("client local {peer}")),
        "the container's socket is the host socket the server saw ({peer}): {out}"
    );
    assert!(
        ss.contains("\"client\",pid=") && !ss.contains("tapwire"),
        "ss -tnp: the container's process owns the socket in the host namespace:\n{ss}"
    );
    let pattern = runc_pattern(up_len);
    assert_eq!(up, (up_len as u64, sha256_hex(&pattern)), "upload checksum");
    assert_eq!(
        out.stdout.split_whitespace().next(),
        Some(sha256_hex(&down).as_str()),
        "download checksum inside the container: {out}"
    );
    // The container is gone: its listener is dropped and tapwire does not spin.
    wait_until(
        SETUP_TIMEOUT,
        "tapwire to drop the container's listener",
        || dlog().contains("closed (its processes are gone)"),
    );
    let c0 = cpu_ticks(daemon.pid());
    thread::sleep(Duration::from_millis(1500));
    let idle = cpu_ticks(daemon.pid()) - c0;
    assert!(
        idle <= 20,
        "tapwire idle after the container exited: {idle} ticks"
    );
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "tapwire still serves the tap"
    );
    assert!(
        dlog().contains("serving seccomp listener of container"),
        "{}",
        dlog()
    );
    // SIGTERM: exit 0 and nothing left behind.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let status = loop {
        if let Some(st) = daemon.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "tapwire ignored SIGTERM");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "tapwire after SIGTERM: {status}\n{}",
        dlog()
    );
    assert!(
        !sock.exists(),
        "the seccomp listener socket {sock:?} is left behind"
    );
}

const IPV6_CLIENT: &str = include_str!("py/bypass_ipv6_client.py");

#[test]
fn bypass_ipv6_gateway_and_ipv4_mapped_destinations() {
    if !preflight_bypass(&["python3"]) {
        return;
    }
    let host = HostNs::new();
    let port = 22090;
    let l = host
        .in_ns(|| TcpListener::bind(("::", port)))
        .expect("listen on [::]");
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let acc = acceptor(l, b"hi", stop.clone(), count.clone());
    let out = run_py(&host, &["-6", "--bypass"], IPV6_CLIENT, &[port.to_string()]);
    stop.store(true, Ordering::Relaxed);
    acc.join().unwrap();
    let v = one_json(&out);
    let sock = |k: &str| v[k]["sock"][0].as_str().unwrap_or("?").to_owned();
    let peer = |k: &str| v[k]["peer"][0].as_str().unwrap_or("?").to_owned();
    // The IPv6 gateway is the host's ::1; an IPv4-mapped gateway the host's 127.0.0.1, and
    // getpeername keeps the program's spelling.
    assert_eq!(
        (sock("v6"), peer("v6")),
        ("::1".into(), "fd00::2".into()),
        "{out}"
    );
    assert_eq!(
        (sock("mapped"), peer("mapped")),
        ("::ffff:127.0.0.1".into(), "::ffff:10.0.2.2".into()),
        "{out}"
    );
    assert_eq!(
        (sock("v4"), peer("v4")),
        ("127.0.0.1".into(), "10.0.2.2".into()),
        "{out}"
    );
    for k in ["v6", "mapped", "v4"] {
        assert_eq!(v[k]["got"], "hi", "{k}: {out}");
    }
    assert_eq!(
        v["lo6"],
        libc::ECONNREFUSED,
        "::1 is the container's: {out}"
    );
    assert_eq!(count.load(Ordering::Relaxed), 3, "{out}");
}

#[test]
fn bypass_as_unprivileged_user() {
    if !preflight_bypass(&["python3", "setpriv", "mknod"]) {
        return;
    }
    let host = HostNs::new();
    let Some(exe) = host.unprivileged_binary() else {
        return;
    };
    let port = 22095;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let acc = acceptor(
        host.listen(port),
        b"hello nobody",
        stop.clone(),
        count.clone(),
    );
    let body = "s = socket.create_connection(('10.0.2.2', int(sys.argv[1])), timeout=10)\n\
                emit(uid=os.getuid(), sock=s.getsockname(), peer=s.getpeername(), got=s.recv(20).decode())";
    let out = run(
        host.cmd("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&exe)
            .args(["run", "--bypass", "--", python3(), "-c"])
            .arg(script(body))
            .arg(port.to_string()),
        RUN_TIMEOUT,
    );
    stop.store(true, Ordering::Relaxed);
    acc.join().unwrap();
    let v = one_json(&out);
    assert_eq!(v["uid"], 0, "root inside: {out}");
    assert_eq!(v["got"], "hello nobody", "{out}");
    assert!(
        addr_of(&v["sock"]).ip().is_loopback(),
        "bypassed as nobody: {out}"
    );
    assert_eq!(
        addr_of(&v["peer"]),
        SocketAddr::from(([10, 0, 2, 2], port)),
        "{out}"
    );
}

/// iperf3 (a real client) through bypass to a server on the host's loopback via the gateway.
#[test]
fn bypass_iperf3_to_host_loopback_via_gateway() {
    if !preflight_bypass(&["iperf3", "ss"]) {
        return;
    }
    let host = HostNs::new();
    let port = 22100;
    let server = Proc::spawn(
        host.cmd("iperf3")
            .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_until(SETUP_TIMEOUT, "iperf3 server", || {
        host.sh(&format!("ss -Hltn 'sport = :{port}'"))
            .stdout
            .contains("LISTEN")
    });
    let out = run(
        host.cmd(bin()).args([
            "run",
            "--bypass",
            "--",
            "iperf3",
            "-c",
            "10.0.2.2",
            "-p",
            &port.to_string(),
            "-t",
            "2",
            "-J",
        ]),
        RUN_TIMEOUT,
    );
    drop(server);
    assert!(out.success(), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("iperf3 JSON");
    let c = &v["start"]["connected"][0];
    assert_eq!(c["local_host"], "127.0.0.1", "bypassed: {}", v["start"]);
    assert_eq!(c["remote_host"], "10.0.2.2", "getpeername: {}", v["start"]);
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    eprintln!("iperf3 through bypass: {:.2} Gbit/s", bps / 1e9);
    assert!(bps > 1e8, "{out}");
}
