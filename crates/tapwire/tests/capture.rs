//! Packet capture (`--pcap FILE`, API `start_capture` / `stop_capture`), tapwire only.
//!
//! Each test moves sha256-checked TCP data between the guest and a peer namespace through the
//! real TAP, then reads the capture with `tcpdump -r`: the file must decode (no truncated or
//! malformed frames), show both directions, and account for at least every payload byte moved
//! (TSO super-segments counted with their real length: offloaded frames longer than the MTU
//! must appear whole). Needs root and tcpdump; see tests/common for the skip policy.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::api::*;
use common::*;
use nix::sys::signal::Signal;

const MOVED: usize = 4 * MB;

fn preflight_capture() -> bool {
    preflight(&["tcpdump"]) && tapwire_only("packet capture")
}

/// TCP payload bytes and the largest frame per direction, from `tcpdump -r` of `file`.
#[derive(Debug, Default)]
struct Decoded {
    /// (payload bytes, largest payload) of segments from the guest, then to the guest.
    from_guest: (u64, u64),
    to_guest: (u64, u64),
    lines: usize,
}

fn tcpdump(file: &Path) -> Decoded {
    let out = run(
        Command::new("tcpdump").args(["-nn", "-tt", "-r"]).arg(file),
        Duration::from_secs(60),
    );
    assert!(out.success(), "tcpdump -r {}: {out}", file.display());
    assert!(
        !out.stdout.contains("[|") && !out.stderr.contains("truncated"),
        "tcpdump decoded truncated frames: {}",
        &out.stdout[..out.stdout.len().min(4000)]
    );
    let guest = format!("IP {GUEST_ADDR}.");
    let to_guest = format!("> {GUEST_ADDR}.");
    let mut d = Decoded::default();
    for line in out.stdout.lines() {
        d.lines += 1;
        let Some(len) = line
            .rsplit_once("length ")
            .and_then(|(_, n)| n.trim().parse::<u64>().ok())
        else {
            continue;
        };
        if !line.contains("Flags [") {
            continue;
        }
        let dir = if line.contains(&guest) {
            &mut d.from_guest
        } else if line.contains(&to_guest) {
            &mut d.to_guest
        } else {
            continue;
        };
        dir.0 += len;
        dir.1 = dir.1.max(len);
    }
    d
}

/// Upload and download `MOVED` bytes between the guest and the peer (sha256-checked).
fn traffic(guest: &Guest, peer: &Peer, port: u16) {
    // A port each way: the upload's server may still hold its listener when the download's
    // starts (EADDRINUSE).
    let up = SocketAddr::from((PEER_ADDR, port));
    check_upload(guest, peer.listen(port), up, &random_bytes(MOVED, 1));
    let down = SocketAddr::from((PEER_ADDR, port + 100));
    check_download(guest, peer.listen(port + 100), down, random_bytes(MOVED, 2));
}

#[track_caller]
fn check_decoded(d: &Decoded, what: &str) {
    eprintln!("{what}: {d:?}");
    assert!(
        d.from_guest.0 >= MOVED as u64 && d.to_guest.0 >= MOVED as u64,
        "{what}: the capture holds every payload byte both ways: {d:?}"
    );
    // Offloads are on by default: both sides move TSO super-segments, written whole.
    assert!(
        d.from_guest.1 > 1500 && d.to_guest.1 > 1500,
        "{what}: super-segments longer than the MTU decode whole: {d:?}"
    );
}

#[test]
fn pcap_flag_captures_both_ways_under_the_sandbox() {
    if !preflight_capture() {
        return;
    }
    let host = HostNs::new();
    let peer = host.peer();
    let guest = host.guest();
    let file = host.dir.join("cap.pcap");
    let sock = host.dir.join("api.sock");
    let mut d = Daemon::with_args(
        &host,
        &guest,
        &[
            "--enable-sandbox",
            "--api-socket",
            sock.to_str().unwrap(),
            "--pcap",
            file.to_str().unwrap(),
        ],
    );
    traffic(&guest, &peer, 5001);
    // The sandboxed daemon cannot open files by path: a clear error, and the capture goes on.
    let req = format!(
        r#"{{"execute":"start_capture","arguments":{{"path":"{}"}}}}"#,
        host.dir.join("other.pcap").display()
    );
    let e = err(&sock, req.as_bytes());
    assert!(e.contains("sandboxed") && e.contains("--pcap"), "{e}");
    let s = stats(&sock);
    assert!(
        u(&s, "/capture/frames") > 100,
        "get_stats shows the capture: {s}"
    );
    d.signal(Signal::SIGTERM);
    assert!(
        d.wait_timeout(SETUP_TIMEOUT).is_some(),
        "daemon exits on SIGTERM"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the capture file is private");
    check_decoded(&tcpdump(&file), "--pcap");
}

#[test]
fn api_start_stop_capture_and_rotation() {
    if !preflight_capture() {
        return;
    }
    let w = World::new(&[]);
    let peer = w.host.peer();
    let sock = &w.sock;
    // Nothing captured before start_capture: the file does not exist.
    let file = w.host.dir.join("api.pcap");
    assert!(err(sock, br#"{"execute":"stop_capture"}"#).contains("no capture is running"));
    for (req, want) in [
        (
            r#"{"execute":"start_capture","arguments":{"path":"rel.pcap"}}"#.to_owned(),
            "arguments.path",
        ),
        (
            r#"{"execute":"start_capture","arguments":{"path":"/nonexistent-dir/x.pcap"}}"#
                .to_owned(),
            "cannot create",
        ),
        (
            format!(
                r#"{{"execute":"start_capture","arguments":{{"path":"{}","rotate":2}}}}"#,
                file.display()
            ),
            "arguments.rotate",
        ),
    ] {
        let e = err(sock, req.as_bytes());
        assert!(e.contains(want), "{req}: {e}");
    }
    assert!(!file.exists(), "a refused start_capture creates nothing");

    ok(
        sock,
        &format!(
            r#"{{"execute":"start_capture","arguments":{{"path":"{}"}}}}"#,
            file.display()
        ),
    );
    let again = format!(
        r#"{{"execute":"start_capture","arguments":{{"path":"{}"}}}}"#,
        file.display()
    );
    assert!(err(sock, again.as_bytes()).contains("already running"));
    traffic(&w.guest, &peer, 5002);
    let r = ok(sock, r#"{"execute":"stop_capture"}"#);
    assert_eq!(r["path"], file.display().to_string(), "{r}");
    let frames = r["frames"].as_u64().unwrap();
    let d = tcpdump(&file);
    check_decoded(&d, "start_capture");
    // Every frame is a tcpdump line (ARP, pings and all).
    assert_eq!(d.lines as u64, frames, "tcpdump lines vs frames captured");

    // Rotation: files of at most max_bytes, `rotate` older ones kept, each readable.
    let rot = w.host.dir.join("rot.pcap");
    let max = 1_000_000u64;
    ok(
        sock,
        &format!(
            r#"{{"execute":"start_capture","arguments":{{"path":"{}","max_bytes":{max},"rotate":2}}}}"#,
            rot.display()
        ),
    );
    traffic(&w.guest, &peer, 5003);
    ok(sock, r#"{"execute":"stop_capture"}"#);
    for suffix in ["", ".1", ".2"] {
        let p = w.host.dir.join(&format!("rot.pcap{suffix}"));
        let len = std::fs::metadata(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .len();
        assert!(len <= max && len > max / 2, "{}: {len} bytes", p.display());
        assert!(tcpdump(&p).lines > 10, "{} decodes", p.display());
    }
    assert!(
        !w.host.dir.join("rot.pcap.3").exists(),
        "only 2 older files kept"
    );
}

#[test]
fn run_mode_pcap() {
    if !preflight_capture() {
        return;
    }
    let host = HostNs::new();
    let peer = host.peer();
    let file = host.dir.join("run.pcap");
    let data = random_bytes(MOVED, 3);
    let want = sha256_hex(&data);
    let server = serve_source(peer.listen(5004), std::sync::Arc::new(data));
    let out = run(
        host.cmd(bin()).arg("run").arg("--pcap").arg(&file).args([
            "--",
            "/usr/bin/python3",
            "-c",
            &format!(
                "import socket, hashlib\n\
                 s = socket.create_connection(('{PEER_ADDR}', 5004))\n\
                 h = hashlib.sha256()\n\
                 while True:\n    b = s.recv(65536)\n    if not b: break\n    h.update(b)\n\
                 print(h.hexdigest())"
            ),
        ]),
        Duration::from_secs(60),
    );
    server.join(TRANSFER_TIMEOUT);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout.trim(), want, "sha256 of the download: {out}");
    let d = tcpdump(&file);
    eprintln!("run mode: {d:?}");
    assert!(d.to_guest.0 >= MOVED as u64, "run mode capture: {d:?}");
}
