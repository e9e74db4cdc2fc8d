//! Run mode (`tapwire run [OPTIONS] [-- CMD [ARGS...]]`), tapwire only.
//!
//! Each test starts `tapwire run` inside its own private host namespace (see tests/common):
//! tapwire makes the user+network namespace itself, so there is no guest holder here; the
//! command's output and exit status are the observations.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use common::*;

/// A deadline for one `tapwire run` invocation.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The system python (not a pyenv shim under /root, which another uid cannot read).
fn python3() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn preflight_run(tools: &[&str]) -> bool {
    preflight(tools) && tapwire_only("run mode")
}

#[test]
fn run_mode_configures_namespace_and_passes_exit_status() {
    if !preflight_run(&[]) {
        return;
    }
    let host = HostNs::new();
    let out = run(
        host.cmd(bin()).args([
            "run",
            "--",
            "sh",
            "-c",
            "ip -o -4 addr show tap0; ip -4 route show default; ip -o link show lo; \
             cat /etc/resolv.conf; exit 3",
        ]),
        RUN_TIMEOUT,
    );
    assert_eq!(
        out.code(),
        Some(3),
        "run mode passes the command's exit status: {out}"
    );
    assert!(
        out.stdout.contains("inet 10.0.2.100/24 "),
        "tap0 address: {out}"
    );
    assert!(
        out.stdout.contains("default via 10.0.2.2 dev tap0"),
        "route: {out}"
    );
    assert!(out.stdout.contains("<LOOPBACK,UP"), "lo up: {out}");
    let ns: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("nameserver"))
        .collect();
    assert_eq!(
        ns,
        ["nameserver 10.0.2.3"],
        "resolv.conf in run mode: {out}"
    );
    // The host's own resolv.conf is untouched (run mode uses a private mount namespace).
    let host_rc = host.sh("cat /etc/resolv.conf").ok();
    assert_eq!(host_rc.stdout.trim(), "nameserver 127.0.0.1");
}

#[test]
fn run_mode_exit_status_zero_and_signal() {
    if !preflight_run(&[]) {
        return;
    }
    let host = HostNs::new();
    let ok = run(host.cmd(bin()).args(["run", "--", "true"]), RUN_TIMEOUT);
    assert_eq!(ok.code(), Some(0), "{ok}");
    // A command killed by a signal: tapwire must not report success.
    let killed = run(
        host.cmd(bin())
            .args(["run", "--", "sh", "-c", "kill -9 $$"]),
        RUN_TIMEOUT,
    );
    assert!(
        !killed.success() && !killed.timed_out,
        "a command killed by SIGKILL must give a failing status: {killed}"
    );
}

/// Python client run inside run mode: send FILE, half-close, read the reply to EOF, print
/// "<sha256 of reply> <reply length>".
const CLIENT: &str = include_str!("py/run_mode_client.py");

#[test]
fn run_mode_tcp_both_directions_to_host_loopback() {
    if !preflight_run(&["python3"]) {
        return;
    }
    let host = HostNs::new();
    let up = random_bytes(20 << 20, 21);
    let down = std::sync::Arc::new(random_bytes(20 << 20, 22));
    let file = host.dir.join("upload.bin");
    std::fs::write(&file, &up).unwrap();
    let l = host.listen(21010);
    let reply = down.clone();
    let server = task("run-mode-server", move || {
        let (mut s, _) = accept_timeout(&l, RUN_TIMEOUT).expect("accept");
        let (n, h) = read_hash(&mut s).expect("read upload");
        s.write_all(&reply).expect("write reply");
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        (n, h)
    });
    let out = run(
        host.cmd(bin())
            .args(["run", "--", python3(), "-c", CLIENT, "10.0.2.2", "21010"])
            .arg(&file),
        RUN_TIMEOUT,
    );
    let (n, h) = server.join(RUN_TIMEOUT);
    assert!(out.success(), "run-mode client: {out}");
    assert_eq!(
        (n, h),
        (up.len() as u64, sha256_hex(&up)),
        "upload seen by the host"
    );
    assert_eq!(
        out.stdout.trim(),
        format!("{} {}", sha256_hex(&down), down.len()),
        "download seen in run mode"
    );
}

#[test]
fn run_mode_resolves_through_dns_forwarder() {
    if !preflight_run(&["python3", "dnsmasq"]) {
        return;
    }
    let host = HostNs::new();
    let _dns = host.dnsmasq();
    // getaddrinfo reads the run mode's /etc/resolv.conf (nameserver 10.0.2.3), tapwire relays
    // to the host's resolver (dnsmasq on the private host's 127.0.0.1).
    let out = run(
        host.cmd(bin()).args([
            "run",
            "--",
            python3(),
            "-c",
            "import socket; print(socket.gethostbyname('tapwire.test'))",
        ]),
        RUN_TIMEOUT,
    );
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout.trim(), "10.9.8.7", "{out}");
}

#[test]
fn run_mode_as_unprivileged_user() {
    if !preflight_run(&["python3", "setpriv", "mknod"]) {
        return;
    }
    let host = HostNs::new();
    let Some(exe) = host.unprivileged_binary() else {
        return;
    };
    let l = host.listen(21020);
    let server = task("unpriv-server", move || {
        let (mut s, _) = accept_timeout(&l, RUN_TIMEOUT).expect("accept");
        s.write_all(b"hello nobody").unwrap();
    });
    let fetch = "import socket; s = socket.create_connection(('10.0.2.2', 21020), timeout=10); \
                 print(s.recv(100).decode())";
    let out = run(
        host.cmd("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&exe)
            .args(["run", "--", "sh", "-c"])
            .arg(format!(
                "id -u; ip -o -4 addr show tap0; {py} -c \"{fetch}\"",
                py = python3()
            )),
        RUN_TIMEOUT,
    );
    server.join(RUN_TIMEOUT);
    assert!(out.success(), "unprivileged run mode: {out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"0"), "mapped to root inside: {out}");
    assert!(out.stdout.contains("inet 10.0.2.100/24 "), "{out}");
    assert!(out.stdout.contains("hello nobody"), "{out}");
}
