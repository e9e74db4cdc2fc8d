//! Helpers shared by the bypass suites (bypass, bypass_sockets): preflight for bypass, running a
//! Python client under `tapwire run --bypass` (with the shared prelude of tests/py/bypass_prelude.py)
//! and reading its JSON lines, acceptors, and `ss` socket owners in the host namespace.

use super::*;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// A deadline for one `tapwire run` invocation.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The system python (not a pyenv shim under /root).
pub fn python3() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Root, tools, the binary, and a kernel that can do bypass (probed once per test).
pub fn preflight_bypass(tools: &[&str]) -> bool {
    if !(preflight(tools) && tapwire_only("bypass mode")) {
        return false;
    }
    let host = HostNs::new();
    let probe = run(
        host.cmd(bin()).args(["run", "--bypass", "--", "true"]),
        RUN_TIMEOUT,
    );
    if !probe.success() {
        return skip(&format!(
            "`tapwire run --bypass -- true` fails here (kernel without seccomp user notification / pidfd_getfd / SO_NETNS_COOKIE?): {probe}"
        ));
    }
    true
}

/// Shared Python prelude: `emit(**kw)` prints one JSON line.
pub const PRELUDE: &str = include_str!("../py/bypass_prelude.py");

pub fn script(body: &str) -> String {
    format!("{PRELUDE}\n{body}")
}

/// `tapwire run [flags] -- python3 -c SCRIPT ARGS...` in `host`, to completion.
pub fn run_py(host: &HostNs, flags: &[&str], body: &str, args: &[String]) -> Out {
    let mut cmd = host.cmd(bin());
    cmd.arg("run").args(flags).args(["--", python3(), "-c"]);
    cmd.arg(script(body)).args(args);
    run(&mut cmd, RUN_TIMEOUT)
}

/// The JSON lines a program printed.
pub fn json_lines(out: &Out) -> Vec<serde_json::Value> {
    out.stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// The only JSON object printed, asserting the run succeeded.
#[track_caller]
pub fn one_json(out: &Out) -> serde_json::Value {
    assert!(out.success(), "{out}");
    let mut v = json_lines(out);
    assert_eq!(v.len(), 1, "expected one JSON line: {out}");
    v.remove(0)
}

pub fn addr_of(v: &serde_json::Value) -> SocketAddr {
    let ip = v[0].as_str().unwrap_or_else(|| panic!("address in {v}"));
    let port = v[1].as_u64().unwrap_or_else(|| panic!("port in {v}"));
    SocketAddr::new(ip.parse().unwrap(), port as u16)
}

/// Accept connections on `l` until `stop`, answering each with `reply` and closing; counts.
pub fn acceptor(
    l: TcpListener,
    reply: &'static [u8],
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
) -> thread::JoinHandle<()> {
    l.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    count.fetch_add(1, Ordering::Relaxed);
                    let _ = s.set_nonblocking(false);
                    let _ = s.write_all(reply);
                }
                Err(_) => thread::sleep(Duration::from_millis(1)),
            }
        }
    })
}

/// `ss ARGS` in the host namespace, retried until it lists a socket with its owner (`ss` may
/// race with the process table on a loaded machine).
pub fn ss_owners(host: &HostNs, args: &str) -> String {
    let mut last = String::new();
    for _ in 0..50 {
        let out = host.sh(&format!("ss {args}"));
        if out.stdout.contains("users:") {
            return out.stdout;
        }
        last = format!("{out}");
        thread::sleep(Duration::from_millis(100));
    }
    last
}
