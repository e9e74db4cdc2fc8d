//! The control socket's protocol (`--api-socket`, slirp4netns's JSON protocol), end to end:
//! add/list/remove with ids and defaults, the default guest address, an IPv6 `host_addr`, the
//! exact error descs for every malformed request, odd clients that leave the daemon serving, and
//! the socket's mode 0600 and its removal on exit.
//!
//! Each test builds a private host namespace and a guest namespace (see tests/common), starts
//! the binary under test with `--api-socket` and talks the raw protocol over a real UNIX socket
//! (tests/common/api.rs): connect, write the request, shut down the write side, read the reply
//! to EOF. Port forwarding through the API is tests/forwarding.rs, `list_connections` and
//! `get_stats` tests/api_stats.rs, `tapwire ctl` tests/ctl.rs.
//!
//! Most tests also run against the original (`TAPWIRE_TEST_BIN=slirp4netns cargo test --release
//! --test api`) to validate them; the ones that check tapwire's additions (IPv6 host_addr,
//! the documented list form, mode 0600) are tapwire-only.
//! Needs root; see tests/common for the skip policy (TAPWIRE_ALLOW_SKIP=1).

mod common;

use std::io::Write;
use std::net::{
    Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket,
};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use common::api::*;
use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

// =============================================================================================
// 1. The protocol: commands, ids, reply forms, errors.
// =============================================================================================

#[test]
fn add_list_remove_ids_and_defaults() {
    if !preflight(&[]) {
        return;
    }
    let w = World::new(&[]);
    let s = &w.sock;
    // Ready means listening: no retry needed.
    assert_eq!(list(s), Vec::<Value>::new(), "no forwards at start");

    // Defaults: host_addr 0.0.0.0, guest_addr network+100.
    assert_eq!(add(s, "tcp", None, 21100, 80), 1, "first id");
    // Everything explicit, UDP.
    let r = ok(
        s,
        r#"{"execute":"add_hostfwd","arguments":{"proto":"udp","host_addr":"127.0.0.1","host_port":21101,"guest_addr":"10.0.2.100","guest_port":53}}"#,
    );
    assert_eq!(r, serde_json::json!({"id": 2}), "second id");
    let mut want = vec![
        entry(1, "tcp", "0.0.0.0", 21100, "10.0.2.100", 80),
        entry(2, "udp", "127.0.0.1", 21101, "10.0.2.100", 53),
    ];
    assert_eq!(list(s), want, "list_hostfwd after two adds");

    remove(s, 1);
    want.remove(0);
    assert_eq!(list(s), want, "list_hostfwd after remove_hostfwd 1");
    // Removed ids are gone, and are never handed out again.
    assert_eq!(
        err(s, br#"{"execute":"remove_hostfwd","arguments":{"id":1}}"#),
        "bad request: remove_hostfwd: bad arguments.id"
    );
    assert_eq!(
        add(s, "tcp", None, 21100, 80),
        3,
        "ids increase, never reused"
    );
    // While forwarded, the ports are taken...
    assert!(w
        .host
        .in_ns(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 21100)))
        .is_err());
    assert!(w
        .host
        .in_ns(|| UdpSocket::bind((Ipv4Addr::LOCALHOST, 21101)))
        .is_err());
    remove(s, 3);
    remove(s, 2);
    assert_eq!(list(s), Vec::<Value>::new());
    // ... and once removed, their sockets are closed: anyone can bind the ports again.
    w.host
        .in_ns(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 21100)))
        .expect("the removed forward's TCP port is free again");
    w.host
        .in_ns(|| UdpSocket::bind((Ipv4Addr::LOCALHOST, 21101)))
        .expect("the removed forward's UDP port is free again");
    assert_eq!(
        add(s, "udp", None, 21101, 53),
        4,
        "ids increase even when the list emptied"
    );
    // A JSON request without the shutdown but complete is not required; with shutdown and a
    // trailing newline (Go's json.Encoder, used by RootlessKit) it must work.
    let v = call(s, "{\"execute\":\"list_hostfwd\"}\n");
    assert!(
        v.get("return").is_some() || v.get("entries").is_some(),
        "{v}"
    );
}

#[test]
fn default_guest_addr_is_network_plus_100_and_forward_works() {
    if !preflight(&[]) {
        return;
    }
    let w = World::new(&[]);
    // Bound to the guest's address itself: the default guest_addr must be exactly it.
    let l = w.guest_listen(SocketAddrV4::new(GUEST_ADDR, 8080));
    add(&w.sock, "tcp", None, 21110, 8080);
    let up = random_bytes(MB, 1);
    check_exchange(&w, l, lo(21110), &up, Arc::new(random_bytes(MB, 2)));
    // And with a custom --cidr the default follows the network.
    let host = HostNs::new();
    let guest = host.guest();
    let sock = host.dir.join("api.sock");
    let _d = Daemon::with_args(
        &host,
        &guest,
        &[
            "--cidr",
            "10.7.0.0/24",
            "--api-socket",
            sock.to_str().unwrap(),
        ],
    );
    add(&sock, "tcp", None, 21111, 8080);
    let e = &list(&sock)[0];
    assert_eq!(
        e["guest_addr"], "10.7.0.100",
        "default guest_addr with --cidr: {e}"
    );
    let l = guest
        .in_ns(|| TcpListener::bind((Ipv4Addr::new(10, 7, 0, 100), 8080)))
        .unwrap();
    let server = guest_exchange_server(l, Arc::new(b"pong".to_vec()));
    let c = host
        .in_ns(|| TcpStream::connect(lo(21111)))
        .expect("connect");
    set_timeouts(&c);
    let got = exchange(c, b"ping");
    let (_, _, peer) = server.join(SETUP_TIMEOUT);
    assert_eq!(got, (4, sha256_hex(b"pong")));
    assert_eq!(
        peer.ip(),
        Ipv4Addr::new(10, 7, 0, 2),
        "a loopback client appears as the gateway of the custom network"
    );
}

#[test]
fn ipv6_host_addr() {
    if !preflight(&[]) || !tapwire_only("IPv6 host_addr (slirp4netns refuses it)") {
        return;
    }
    let w = World::new(&[]);
    let _peer = w.host.peer();
    let s = &w.sock;
    let any6 = add(s, "tcp", Some("::"), 21120, 7000);
    let lo6 = add(s, "tcp", Some("::1"), 21121, 7001);
    let udp6 = add(s, "udp", Some("::"), 21122, 7002);
    assert_eq!((any6, lo6, udp6), (1, 2, 3));
    assert_eq!(
        list(s),
        vec![
            entry(1, "tcp", "::", 21120, "10.0.2.100", 7000),
            entry(2, "tcp", "::1", 21121, "10.0.2.100", 7001),
            entry(3, "udp", "::", 21122, "10.0.2.100", 7002),
        ]
    );
    let six = |p: u16| SocketAddr::from((Ipv6Addr::LOCALHOST, p));
    // [::] takes IPv6 and IPv4 clients (as Podman's publish on [::] expects); [::1] only IPv6.
    for (target, gport) in [(six(21120), 7000), (lo(21120), 7000), (six(21121), 7001)] {
        let l = w.guest_listen(any_guest(gport));
        let peer = check_exchange(
            &w,
            l,
            target,
            &random_bytes(256 * 1024, 3),
            Arc::new(random_bytes(256 * 1024, 4)),
        );
        assert_eq!(
            peer.ip(),
            GATEWAY,
            "a host-loopback client ({target}) appears as the gateway"
        );
    }
    // An IPv4 client from outside through [::]: its own address is visible in the guest.
    let l = w.guest_listen(any_guest(7000));
    let server = guest_exchange_server(l, Arc::new(b"hi".to_vec()));
    let c = _peer
        .in_ns(|| TcpStream::connect_timeout(&(PEER_HOST_ADDR, 21120).into(), SETUP_TIMEOUT))
        .expect("peer connect through [::]");
    set_timeouts(&c);
    assert_eq!(exchange(c, b"x").0, 2);
    assert_eq!(server.join(SETUP_TIMEOUT).2.ip(), PEER_ADDR);
    // UDP on [::] from ::1.
    let g = w.guest_udp(any_guest(7002));
    let echo = serve_udp_echo(g, Duration::from_secs(2));
    let c = w.host_udp_to(six(21122));
    c.send(b"over v6").unwrap();
    let mut buf = [0u8; 64];
    let k = c
        .recv(&mut buf)
        .expect("UDP echo through an IPv6 host_addr");
    assert_eq!(&buf[..k], b"over v6");
    echo.join(SETUP_TIMEOUT);
}

#[test]
fn error_descs() {
    if !preflight(&[]) {
        return;
    }
    let mut w = World::new(&[]);
    let s = w.sock.clone();
    let a = |args: &str| format!(r#"{{"execute":"add_hostfwd","arguments":{args}}}"#);
    let bad = |field: &str| format!("bad request: add_hostfwd: bad arguments.{field}");
    let mut cases: Vec<(Vec<u8>, String)> = vec![
        (b"{".to_vec(), "bad request: cannot parse JSON".into()),
        (
            b"not json".to_vec(),
            "bad request: cannot parse JSON".into(),
        ),
        (b"".to_vec(), "bad request: cannot parse JSON".into()),
        (
            b"[1,2]".to_vec(),
            "bad request: json_object() failed".into(),
        ),
        (b"42".to_vec(), "bad request: json_object() failed".into()),
        (b"{}".to_vec(), "bad request: no execute found".into()),
        (
            br#"{"arguments":{}}"#.to_vec(),
            "bad request: no execute found".into(),
        ),
        (
            br#"{"execute":7}"#.to_vec(),
            "bad request: no execute found".into(),
        ),
        (
            br#"{"execute":"nope"}"#.to_vec(),
            "bad request: unknown execute".into(),
        ),
        (
            br#"{"execute":"ADD_HOSTFWD"}"#.to_vec(),
            "bad request: unknown execute".into(),
        ),
    ];
    // (arguments, the bad field, whether slirp4netns gives the same desc: it accepts
    // out-of-range and fractional host ports, and calls a too-big guest port a failure).
    let add_cases: &[(&str, &str, bool)] = &[
        (
            r#"{"proto":"sctp","host_port":21130,"guest_port":80}"#,
            "proto",
            true,
        ),
        (
            r#"{"proto":"tcp","host_addr":"localhost","host_port":21130,"guest_port":80}"#,
            "host_addr",
            true,
        ),
        (
            r#"{"proto":"tcp","host_addr":"1.2.3","host_port":21130,"guest_port":80}"#,
            "host_addr",
            true,
        ),
        (r#"{"proto":"tcp","guest_port":80}"#, "host_port", true),
        (
            r#"{"proto":"tcp","host_port":0,"guest_port":80}"#,
            "host_port",
            true,
        ),
        (
            r#"{"proto":"tcp","host_port":"21130","guest_port":80}"#,
            "host_port",
            true,
        ),
        (
            r#"{"proto":"tcp","host_port":65536,"guest_port":80}"#,
            "host_port",
            false,
        ),
        (
            r#"{"proto":"tcp","host_port":-1,"guest_port":80}"#,
            "host_port",
            false,
        ),
        (
            r#"{"proto":"tcp","host_port":21130.5,"guest_port":80}"#,
            "host_port",
            false,
        ),
        (
            r#"{"proto":"tcp","host_port":21130,"guest_addr":"10.0.2","guest_port":80}"#,
            "guest_addr",
            true,
        ),
        (
            r#"{"proto":"tcp","host_port":21130,"guest_addr":"guest","guest_port":80}"#,
            "guest_addr",
            true,
        ),
        (r#"{"proto":"tcp","host_port":21130}"#, "guest_port", true),
        (
            r#"{"proto":"tcp","host_port":21130,"guest_port":0}"#,
            "guest_port",
            true,
        ),
        (
            r#"{"proto":"tcp","host_port":21130,"guest_port":99999}"#,
            "guest_port",
            false,
        ),
    ];
    for (args, field, slirp_agrees) in add_cases {
        if *slirp_agrees || testing_tapwire() {
            cases.push((a(args).into_bytes(), bad(field)));
        }
    }
    let rm = "bad request: remove_hostfwd: bad arguments.id".to_string();
    for args in [r#"{}"#, r#"{"id":"1"}"#, r#"{"id":-1}"#, r#"{"id":999}"#] {
        cases.push((
            format!(r#"{{"execute":"remove_hostfwd","arguments":{args}}}"#).into_bytes(),
            rm.clone(),
        ));
    }
    if testing_tapwire() {
        // slirp4netns crashes (NULL dereference) on a missing "arguments" object.
        // Nor does it survive a missing or non-string proto.
        cases.push((br#"{"execute":"add_hostfwd"}"#.to_vec(), bad("proto")));
        cases.push((
            a(r#"{"host_port":21130,"guest_port":80}"#).into_bytes(),
            bad("proto"),
        ));
        cases.push((
            a(r#"{"proto":6,"host_port":21130,"guest_port":80}"#).into_bytes(),
            bad("proto"),
        ));
        cases.push((br#"{"execute":"remove_hostfwd"}"#.to_vec(), rm.clone()));
    }
    for (req, want) in &cases {
        assert_eq!(
            &err(&s, req),
            want,
            "desc for {}",
            String::from_utf8_lossy(req)
        );
        // A bad request leaves the daemon serving.
        w.alive();
    }
    assert_eq!(
        list(&s),
        Vec::<Value>::new(),
        "no failed request added anything"
    );

    // Size limit: 4095 bytes is a request, 4096 and more are "too large" (slirp4netns reads
    // one 4096-byte buffer; it never answers bigger requests).
    if testing_tapwire() {
        let pad = |total: usize| {
            let base = br#"{"execute":"list_hostfwd"}"#;
            let mut v = base[..base.len() - 1].to_vec();
            v.extend_from_slice(br#","pad":""#);
            let need = total - v.len() - 2;
            v.extend(std::iter::repeat_n(b'a', need));
            v.extend_from_slice(br#""}"#);
            assert_eq!(v.len(), total);
            v
        };
        let v4095: Value =
            serde_json::from_str(&call_raw(&s, &pad(4095))).expect("4095-byte request answered");
        assert!(v4095.pointer("/return/entries").is_some(), "{v4095}");
        for n in [4096, 5000, 64 * 1024, 1024 * 1024] {
            assert_eq!(
                err(&s, &pad(n)),
                "bad request: too large message",
                "{n}-byte request"
            );
            w.alive();
        }
    }

    // "slirp_add_hostfwd failed": the port is taken by another process's socket...
    let taken_tcp = w
        .host
        .in_ns(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 21131)))
        .unwrap();
    let taken_udp = w
        .host
        .in_ns(|| UdpSocket::bind((Ipv4Addr::LOCALHOST, 21132)))
        .unwrap();
    let failed = "bad request: add_hostfwd: slirp_add_hostfwd failed";
    assert_eq!(
        err(&s, add_req("tcp", None, 21131, 80).as_bytes()),
        failed,
        "TCP port in use by another process"
    );
    assert_eq!(
        err(&s, add_req("udp", Some("127.0.0.1"), 21132, 80).as_bytes()),
        failed,
        "UDP port in use by another process"
    );
    // ... or by another forward (same proto, same address and port).
    let id = add(&s, "tcp", Some("127.0.0.1"), 21133, 80);
    assert_eq!(
        err(&s, add_req("tcp", Some("127.0.0.1"), 21133, 81).as_bytes()),
        failed,
        "TCP port already forwarded"
    );
    let uid = add(&s, "udp", None, 21134, 80);
    assert_eq!(
        err(&s, add_req("udp", None, 21134, 81).as_bytes()),
        failed,
        "UDP port already forwarded"
    );
    // The same port number with the other protocol is another forward.
    let other = add(&s, "udp", Some("127.0.0.1"), 21133, 80);
    assert!(id < uid && uid < other, "ids increase: {id} {uid} {other}");
    // Nothing else changed: exactly the three successful forwards, and they still work.
    let entries = list(&s);
    assert_eq!(
        entries
            .iter()
            .map(|e| e["id"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![id, uid, other],
        "{entries:?}"
    );
    let l = w.guest_listen(any_guest(80));
    check_exchange(&w, l, lo(21133), b"still", Arc::new(b"works".to_vec()));
    drop((taken_tcp, taken_udp));
    w.alive();
}

#[test]
fn odd_clients_leave_the_daemon_serving() {
    if !preflight(&[]) {
        return;
    }
    let mut w = World::new(&[]);
    let s = &w.sock.clone();
    add(s, "tcp", None, 21140, 80);
    // Connect and close at once; close after writing without reading; reset mid-request;
    // write garbage without shutting down and drop.
    for _ in 0..5 {
        drop(UnixStream::connect(s).unwrap());
        let mut c = UnixStream::connect(s).unwrap();
        c.write_all(br#"{"execute":"list_hostfwd"}"#).unwrap();
        drop(c);
        let mut c = UnixStream::connect(s).unwrap();
        c.write_all(b"{\"execute\":\"add_hos").unwrap();
        drop(c);
        let mut c = UnixStream::connect(s).unwrap();
        c.write_all(&[0xff, 0xfe, 0, 1, 2]).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        drop(c);
    }
    std::thread::sleep(Duration::from_millis(200));
    w.alive();
    assert_eq!(
        list(s),
        vec![entry(1, "tcp", "0.0.0.0", 21140, "10.0.2.100", 80)]
    );
    let l = w.guest_listen(any_guest(80));
    check_exchange(&w, l, lo(21140), b"a", Arc::new(b"b".to_vec()));
    w.alive();
}

#[test]
fn socket_mode_0600_and_removed_on_exit() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let sock = host.dir.join("api.sock");
    // A stale file at the path is replaced (as slirp4netns does).
    std::fs::write(&sock, "stale").unwrap();
    let mut d = Daemon::with_args(&host, &guest, &["--api-socket", sock.to_str().unwrap()]);
    let md = std::fs::symlink_metadata(&sock).expect("API socket exists once ready");
    assert!(
        md.file_type().is_socket(),
        "{} is not a socket",
        sock.display()
    );
    let mode = md.permissions().mode() & 0o777;
    if testing_tapwire() {
        assert_eq!(mode, 0o600, "API socket mode {mode:o}");
    } else {
        eprintln!("slirp4netns API socket mode: {mode:o}");
    }
    assert_eq!(list(&sock), Vec::<Value>::new());
    d.signal(Signal::SIGTERM);
    let st = d.wait_timeout(SETUP_TIMEOUT);
    assert!(st.is_some(), "daemon did not exit on SIGTERM");
    if testing_tapwire() {
        assert!(
            !sock.exists(),
            "API socket {} left behind after SIGTERM",
            sock.display()
        );
    }
    // Exit through the exit fd removes it too.
    if testing_tapwire() {
        let guest = host.guest();
        let sock2 = host.dir.join("api2.sock");
        let mut d = Daemon::start(
            &host,
            &guest,
            DaemonCfg {
                exit_fd: true,
                ..DaemonCfg::default()
            }
            .args(&["--api-socket", sock2.to_str().unwrap()]),
        );
        add(&sock2, "tcp", None, 21150, 80);
        d.close_exit_fd();
        assert!(d.wait_timeout(SETUP_TIMEOUT).is_some(), "exit fd: no exit");
        assert!(
            !sock2.exists(),
            "API socket left behind after the exit fd closed"
        );
        // And the forward's port is released with it.
        host.in_ns(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 21150)))
            .expect("forwarded port released on exit");
    }
}
