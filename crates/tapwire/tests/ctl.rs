//! The `tapwire ctl` client, end to end: its human and `--json` output against a live tapwire
//! daemon, and the same commands against slirp4netns's control socket.
//!
//! Needs root; see tests/common for the skip policy (TAPWIRE_ALLOW_SKIP=1).

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::*;
use common::*;
use serde_json::Value;

// =============================================================================================
// 9. tapwire ctl.
// =============================================================================================

fn ctl(host: &HostNs, sock: &Path, args: &[&str]) -> Out {
    let tapwire = PathBuf::from(env!("CARGO_BIN_EXE_tapwire"));
    run(
        host.cmd(tapwire)
            .arg("ctl")
            .arg("--api-socket")
            .arg(sock)
            .args(args),
        SETUP_TIMEOUT,
    )
}

#[test]
fn ctl_human_and_json() {
    if !preflight(&[]) || !tapwire_only("tapwire ctl against tapwire") {
        return;
    }
    let w = World::new(&[]);
    let (h, s) = (&w.host, w.sock.as_path());
    let o = ctl(h, s, &["add-hostfwd", "127.0.0.1:21900:9900"]).ok();
    assert_eq!(o.stdout, "id 1\n", "{o}");
    let o = ctl(
        h,
        s,
        &[
            "add-hostfwd",
            "21901:9901/udp",
            "--guest-addr",
            "10.0.2.100",
        ],
    )
    .ok();
    assert_eq!(o.stdout, "id 2\n", "{o}");
    let o = ctl(h, s, &["--json", "add-hostfwd", "[::1]:21902:9902"]).ok();
    assert_eq!(o.stdout.trim(), r#"{"return":{"id":3}}"#, "{o}");
    // The forward added by ctl is real.
    let l = w.guest_listen(any_guest(9900));
    check_exchange(&w, l, lo(21900), b"ctl", Arc::new(b"made".to_vec()));

    let o = ctl(h, s, &["list-hostfwd"]).ok();
    assert_eq!(
        o.stdout,
        "ID\tPROTO\tHOST\tGUEST\n\
         1\ttcp\t127.0.0.1:21900\t10.0.2.100:9900\n\
         2\tudp\t0.0.0.0:21901\t10.0.2.100:9901\n\
         3\ttcp\t::1:21902\t10.0.2.100:9902\n",
        "{o}"
    );
    let o = ctl(h, s, &["--json", "list-hostfwd"]).ok();
    assert_eq!(
        o.stdout.trim(),
        call_raw(s, br#"{"execute":"list_hostfwd"}"#),
        "--json prints the raw reply"
    );
    let o = ctl(h, s, &["remove-hostfwd", "2"]).ok();
    assert_eq!(o.stdout, "removed 2\n", "{o}");
    let o = ctl(h, s, &["--json", "remove-hostfwd", "3"]).ok();
    assert_eq!(o.stdout.trim(), r#"{"return":{}}"#, "{o}");

    // Errors: exit 1, the desc on stderr (and the raw reply on stdout with --json).
    let o = ctl(h, s, &["remove-hostfwd", "2"]);
    assert_eq!(o.code(), Some(1), "{o}");
    assert!(o.stdout.is_empty(), "{o}");
    assert!(
        o.stderr
            .contains("bad request: remove_hostfwd: bad arguments.id"),
        "{o}"
    );
    let o = ctl(h, s, &["--json", "add-hostfwd", "127.0.0.1:21900:1"]);
    assert_eq!(o.code(), Some(1), "{o}");
    assert_eq!(
        o.stdout.trim(),
        r#"{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}"#,
        "{o}"
    );
    assert!(o.stderr.contains("slirp_add_hostfwd failed"), "{o}");
    let o = ctl(h, &w.host.dir.join("nonexistent.sock"), &["list-hostfwd"]);
    assert_eq!(o.code(), Some(1), "{o}");
    assert!(
        o.stderr.contains("nonexistent.sock"),
        "names the socket: {o}"
    );
    let o = ctl(h, s, &["add-hostfwd", "not-a-spec"]);
    assert!(!o.success() && o.stderr.contains("HOST_PORT"), "{o}");

    // connections and stats, with a flow open.
    let l = w.guest_listen(any_guest(9900));
    let mut c = w.connect(lo(21900)).unwrap();
    let (mut g, _) = accept_timeout(&l, SETUP_TIMEOUT).unwrap();
    c.write_all(&[7u8; 5000]).unwrap();
    let mut b = vec![0u8; 5000];
    g.read_exact(&mut b).unwrap();
    g.write_all(&[8u8; 3000]).unwrap();
    let mut b = vec![0u8; 3000];
    c.read_exact(&mut b).unwrap();
    let row_prefix = format!(
        "tcp\t10.0.2.100:9900\t10.0.2.2:{}\t{}\t3000\t5000\t",
        c.local_addr().unwrap().port(),
        c.local_addr().unwrap()
    );
    let mut o = ctl(h, s, &["connections"]).ok();
    let start = Instant::now();
    while !o.stdout.lines().any(|l| l.starts_with(&row_prefix))
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
        o = ctl(h, s, &["connections"]).ok();
    }
    assert!(
        o.stdout
            .starts_with("PROTO\tGUEST\tREMOTE\tHOST\tFROM_GUEST\tTO_GUEST\tAGE_S\n"),
        "{o}"
    );
    assert!(
        o.stdout.lines().any(|l| l.starts_with(&row_prefix)),
        "expected a row starting {row_prefix:?}: {o}"
    );
    let o = ctl(h, s, &["--json", "connections"]).ok();
    let v: Value = serde_json::from_str(o.stdout.trim()).expect("--json connections");
    assert!(v.pointer("/return/connections/0/proto").is_some(), "{o}");
    let o = ctl(h, s, &["stats"]).ok();
    for key in [
        "frames_in: ",
        "frames_out: ",
        "drops.checksum: ",
        "drops_total: ",
        "forwards: 1",
    ] {
        assert!(
            o.stdout.lines().any(|l| l.starts_with(key)),
            "stats lacks {key:?}: {o}"
        );
    }
    let o = ctl(h, s, &["--json", "stats"]).ok();
    let v: Value = serde_json::from_str(o.stdout.trim()).expect("--json stats");
    assert_eq!(v.pointer("/return/forwards"), Some(&Value::from(1)), "{o}");
}

#[test]
fn ctl_against_slirp4netns() {
    if !preflight(&["slirp4netns"]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let sock = host.dir.join("slirp.sock");
    let log = std::fs::File::create(host.dir.join("slirp.log")).unwrap();
    let _slirp = Proc::spawn(
        host.cmd("slirp4netns")
            .args(["-c", "--api-socket"])
            .arg(&sock)
            .arg(guest.pid().to_string())
            .arg("tap0")
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    );
    wait_until(SETUP_TIMEOUT, "slirp4netns's API socket", || {
        UnixStream::connect(&sock).is_ok()
    });
    let o = ctl(&host, &sock, &["add-hostfwd", "127.0.0.1:21950:9950"]).ok();
    assert_eq!(o.stdout, "id 1\n", "{o}");
    let o = ctl(&host, &sock, &["add-hostfwd", "21951:9951/udp"]).ok();
    assert_eq!(o.stdout, "id 2\n", "{o}");
    let o = ctl(&host, &sock, &["list-hostfwd"]).ok();
    assert_eq!(
        o.stdout,
        "ID\tPROTO\tHOST\tGUEST\n\
         1\ttcp\t127.0.0.1:21950\t10.0.2.100:9950\n\
         2\tudp\t0.0.0.0:21951\t10.0.2.100:9951\n",
        "ctl list-hostfwd renders slirp4netns's unwrapped reply: {o}"
    );
    let o = ctl(&host, &sock, &["--json", "list-hostfwd"]).ok();
    assert!(o.stdout.starts_with(r#"{"entries":[{"id":1,"#), "{o}");
    // The forward made through ctl carries data through slirp4netns.
    let l = guest.in_ns(|| TcpListener::bind(any_guest(9950))).unwrap();
    let server = guest_exchange_server(l, Arc::new(b"from slirp guest".to_vec()));
    let c = host.in_ns(|| TcpStream::connect(lo(21950))).unwrap();
    set_timeouts(&c);
    assert_eq!(exchange(c, b"hi").0, 16);
    server.join(SETUP_TIMEOUT);
    let o = ctl(&host, &sock, &["remove-hostfwd", "1"]).ok();
    assert_eq!(o.stdout, "removed 1\n", "{o}");
    let o = ctl(&host, &sock, &["remove-hostfwd", "1"]);
    assert_eq!(o.code(), Some(1), "{o}");
    assert!(
        o.stderr
            .contains("bad request: remove_hostfwd: bad arguments.id"),
        "{o}"
    );
    let o = ctl(&host, &sock, &["list-hostfwd"]).ok();
    assert_eq!(
        o.stdout, "ID\tPROTO\tHOST\tGUEST\n2\tudp\t0.0.0.0:21951\t10.0.2.100:9951\n",
        "{o}"
    );
    // tapwire-only requests get slirp4netns's own error.
    let o = ctl(&host, &sock, &["stats"]);
    assert_eq!(o.code(), Some(1), "{o}");
    assert!(o.stderr.contains("unknown execute"), "{o}");
}
