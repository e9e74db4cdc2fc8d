//! Confinement, end to end: the sandbox and the seccomp filter in effect on a live daemon
//! (capabilities, mounts, no new privileges), CAP_NET_BIND_SERVICE kept only for low forwarded
//! ports, `tapwire run` as an unprivileged user sandboxed with bypass still working, and a
//! sandboxed daemon's API socket behind a symlink removed at exit.
//!
//! Everything runs in the private namespaces of tests/common (root needed).

mod common;

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use common::hardening::*;
use common::*;
use nix::sys::signal::Signal;

// ---- the sandbox and the filter on a live daemon ----------------------------------------------

#[test]
fn sandbox_and_seccomp_confine_the_daemon() {
    if !preflight(&["dnsmasq"]) || !tapwire_only("--enable-sandbox/--enable-seccomp details") {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _dns = host.dnsmasq();
    let sock = host.dir.join("api.sock");
    let mut d = Daemon::start(
        &host,
        &guest,
        sandboxed().args(&["--api-socket", sock.to_str().unwrap()]),
    );
    let pid = d.pid(); // nsenter execs the daemon: same pid
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Seccomp"), "2", "filter mode");
    for key in ["CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"] {
        assert_eq!(cap_mask(pid, key), 0, "{key}");
    }
    // Root: an empty read-only tmpfs; only resolv.conf and the API socket's directory inside.
    let mounts = mount_points(pid);
    let api_dir = std::fs::canonicalize(host.dir.path()).unwrap();
    let api_dir = api_dir.to_str().unwrap();
    let mut points: Vec<&str> = mounts.iter().map(|(p, _)| p.as_str()).collect();
    points.sort_unstable();
    let mut want = vec!["/", "/etc/resolv.conf", api_dir];
    want.sort_unstable();
    assert_eq!(
        points, want,
        "mount points of the sandboxed daemon: {mounts:?}"
    );
    // Read-only everywhere but the API socket's directory (the socket is removed at exit).
    for (point, opts) in &mounts {
        let rw = opts.split(',').next() == Some("rw");
        assert_eq!(rw, point == api_dir, "{point} mounted {opts}");
    }
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = info
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap();
    assert!(root.contains(" - tmpfs "), "root is a tmpfs: {root}");

    // Everything still works: TCP both ways, UDP, DNS through the forwarder, the API.
    let data = random_bytes(4 * MB, 61);
    check_upload(&guest, host.listen(23001), gw(23001), &data);
    check_download(&guest, host.listen(23002), gw(23002), data);
    let udp = serve_udp_echo(host.udp(23003), Duration::from_secs(2));
    check_udp_echo(&guest, gw(23003), &[1, 1472, 4000]);
    udp.join(SETUP_TIMEOUT);
    let answers = guest.in_ns(|| {
        let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        s.set_read_timeout(Some(SETUP_TIMEOUT)).unwrap();
        s.send_to(&dns_query("tapwire.test", 7), (DNS, 53)).unwrap();
        let mut buf = [0u8; 512];
        let n = s
            .recv(&mut buf)
            .expect("DNS answer through the sandboxed forwarder");
        dns_answers(&buf[..n], 7)
    });
    assert_eq!(answers, Ok(vec![Ipv4Addr::new(10, 9, 8, 7)]));
    let reply = api(
        &sock,
        r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":23004,"guest_port":23004}}"#,
    );
    assert_eq!(reply, r#"{"return":{"id":1}}"#);
    let gl = guest.in_ns(|| std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 23004)).unwrap());
    let server = task("fwd-server", move || {
        let (mut s, _) = accept_timeout(&gl, SETUP_TIMEOUT).expect("forwarded connection");
        s.write_all(b"through the sandbox").unwrap();
    });
    let mut c = host
        .in_ns(|| std::net::TcpStream::connect(("127.0.0.1", 23004)))
        .unwrap();
    set_timeouts(&c);
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    server.join(SETUP_TIMEOUT);
    assert_eq!(got, "through the sandbox");

    // A clean exit removes the socket, through the sandbox's view of its directory.
    d.signal(Signal::SIGTERM);
    let st = d.wait_timeout(SETUP_TIMEOUT).expect("exit after SIGTERM");
    assert_eq!(st.code(), Some(0), "{}", status_str(st));
    assert!(!sock.exists(), "API socket left behind");
}

#[test]
fn net_bind_service_is_kept_only_for_low_forwarded_ports() {
    if !preflight(&[]) || !tapwire_only("-p and capabilities") {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let add = |sock: &Path, port: u16| {
        api(
            sock,
            &format!(
                r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp","host_addr":"127.0.0.1","host_port":{port},"guest_port":80}}}}"#
            ),
        )
    };
    // -p with a privileged port: CAP_NET_BIND_SERVICE stays, and the API can add port 81.
    let sock = host.dir.join("low.sock");
    let d = Daemon::start(
        &host,
        &guest,
        sandboxed().args(&[
            "-p",
            "127.0.0.1:80:80",
            "--api-socket",
            sock.to_str().unwrap(),
        ]),
    );
    assert_eq!(
        cap_mask(d.pid(), "CapEff"),
        1 << 10,
        "only CAP_NET_BIND_SERVICE"
    );
    assert_eq!(cap_mask(d.pid(), "CapBnd"), 0);
    assert!(
        add(&sock, 81).contains("\"return\""),
        "add port 81 with the capability"
    );
    drop(d);
    // Without one: no capability at all, and a privileged port over the API is refused.
    let guest = host.guest();
    let sock = host.dir.join("high.sock");
    let d = Daemon::start(
        &host,
        &guest,
        sandboxed().args(&[
            "-p",
            "127.0.0.1:8080:80",
            "--api-socket",
            sock.to_str().unwrap(),
        ]),
    );
    assert_eq!(cap_mask(d.pid(), "CapEff"), 0);
    let reply = add(&sock, 82);
    assert!(reply.contains("slirp_add_hostfwd failed"), "{reply}");
    assert!(add(&sock, 8082).contains("\"return\""));
}

/// `tapwire run` as an unprivileged user is sandboxed by default (inside the command's user
/// namespace), and with `--bypass` keeps exactly CAP_SYS_PTRACE there, so bypass still works.
#[test]
fn rootless_run_mode_is_sandboxed_and_bypass_still_works() {
    if !preflight(&["python3", "setpriv", "mknod"]) || !tapwire_only("run mode") {
        return;
    }
    let host = HostNs::new();
    let Some(exe) = host.unprivileged_binary() else {
        return;
    };
    let l = host.listen(24400);
    let server = task("rootless-server", move || {
        for _ in 0..2 {
            let (mut s, _) = accept_timeout(&l, SETUP_TIMEOUT).expect("accept");
            s.write_all(b"hello").unwrap();
        }
    });
    let script = "grep -E '^(NoNewPrivs|CapEff|CapBnd)' /proc/$PPID/status; \
                  awk '{print \"mount\", $5}' /proc/$PPID/mountinfo; \
                  python3 -c \"import socket; s = socket.create_connection(('10.0.2.2', 24400), \
                  timeout=10); print('local', s.getsockname()[0], s.recv(10).decode())\"";
    let mut outs = Vec::new();
    for bypass in [false, true] {
        let mut cmd = host.cmd("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&exe)
            .arg("run");
        if bypass {
            cmd.arg("--bypass");
        }
        cmd.args(["--", "sh", "-c", script]);
        let out = run(&mut cmd, Duration::from_secs(30));
        assert!(out.success(), "rootless run (bypass: {bypass}): {out}");
        assert!(
            !out.stderr.contains("without the sandbox"),
            "sandbox skipped: {out}"
        );
        outs.push(out);
    }
    server.join(SETUP_TIMEOUT);
    for (out, caps, local) in [
        (&outs[0], "0000000000000000", "10.0.2.100"),
        (&outs[1], "0000000000080000", "127.0.0.1"),
    ] {
        let o = &out.stdout;
        assert!(o.contains("NoNewPrivs:\t1"), "{out}");
        assert!(o.contains(&format!("CapEff:\t{caps}")), "{out}");
        assert!(o.contains("CapBnd:\t0000000000000000"), "{out}");
        let mounts: Vec<&str> = o.lines().filter_map(|l| l.strip_prefix("mount ")).collect();
        let mut mounts = mounts.clone();
        mounts.sort_unstable();
        assert_eq!(mounts, ["/", "/etc/resolv.conf"], "{out}");
        // Through the tap the host sees the guest's address; bypassed, a host socket.
        assert!(o.contains(&format!("local {local} hello")), "{out}");
    }
}

/// An API socket named through a symlinked directory (as `$XDG_RUNTIME_DIR` often is) is
/// still served and removed at exit from inside the sandbox.
#[test]
fn sandboxed_api_socket_behind_a_symlink_is_removed_at_exit() {
    if !preflight(&[]) || !tapwire_only("API socket") {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let real = host.dir.join("real");
    std::fs::create_dir(&real).unwrap();
    let link = host.dir.join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let sock = link.join("api.sock");
    let mut d = Daemon::start(
        &host,
        &guest,
        sandboxed().args(&["--api-socket", sock.to_str().unwrap()]),
    );
    assert_eq!(
        api(&sock, r#"{"execute":"list_hostfwd"}"#),
        r#"{"return":{"entries":[]}}"#
    );
    d.signal(Signal::SIGTERM);
    let st = d.wait_timeout(SETUP_TIMEOUT).expect("exit");
    assert_eq!(st.code(), Some(0), "{}", status_str(st));
    assert!(!real.join("api.sock").exists(), "API socket left behind");
}
