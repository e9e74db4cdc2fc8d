//! The control socket (`--api-socket`, slirp4netns's JSON protocol plus `list_connections` and
//! `get_stats`), port forwarding through it and through `-p`, and `tapwire ctl`, end to end.
//!
//! Each test builds a private host namespace and a guest namespace (see tests/common), starts
//! the binary under test with `--api-socket` and talks the raw protocol over a real UNIX socket:
//! connect, write the request, shut down the write side, read the reply to EOF. Forwarded
//! traffic comes from host-side clients (host loopback, or the peer namespace behind a veth)
//! and is served by sockets created inside the guest namespace.
//!
//! Most tests also run against the original (`TAPWIRE_TEST_BIN=slirp4netns cargo test --release
//! --test api`) to validate them; the ones that check tapwire's additions (IPv6 host_addr,
//! the documented list form, mode 0600, `list_connections`, `get_stats`, the non-blocking
//! server, `-p`, `tapwire run`) are tapwire-only.
//! Needs root; see tests/common for the skip policy (TAPWIRE_ALLOW_SKIP=1).

mod common;

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{
    Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket,
};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

const MB: usize = 1 << 20;
/// Deadline for one API round trip (the daemon answers in microseconds).
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// What a forwarded transfer test moves in each direction (the issue asks for >= 20 MB).
const FWD_BULK: usize = 20 * MB;

// ---------------------------------------------------------------------------------------------
// The raw protocol.
// ---------------------------------------------------------------------------------------------

/// One request over a fresh connection: write `req`, shut down the write side, read to EOF.
/// A reset after the reply (the server closed with our bytes unread) still returns the reply.
fn call_raw(path: &Path, req: &[u8]) -> String {
    let mut s = UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("connect to the API socket {}: {e}", path.display()));
    s.set_read_timeout(Some(API_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(API_TIMEOUT)).unwrap();
    match s.write_all(req) {
        Ok(()) => s.shutdown(Shutdown::Write).expect("shutdown(SHUT_WR)"),
        // The server may answer an oversized request and close before reading all of it.
        Err(e)
            if req.len() > 4095
                && matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {}
        Err(e) => panic!("write API request ({} B): {e}", req.len()),
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset && !out.is_empty() => break,
            Err(e) => panic!(
                "reading the API reply to {:?}: {e} (got {:?} so far)",
                String::from_utf8_lossy(&req[..req.len().min(200)]),
                String::from_utf8_lossy(&out)
            ),
        }
    }
    String::from_utf8(out).expect("API reply is UTF-8")
}

/// Whitespace outside JSON string literals (slirp4netns's replies have none).
fn whitespace_outside_strings(s: &str) -> bool {
    let (mut in_str, mut esc) = (false, false);
    for c in s.chars() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
        } else if c == '"' {
            in_str = true;
        } else if c.is_whitespace() {
            return true;
        }
    }
    false
}

/// A request and its parsed reply; the reply must be one compact JSON object.
fn call(path: &Path, req: &str) -> Value {
    let raw = call_raw(path, req.as_bytes());
    assert!(
        !whitespace_outside_strings(&raw),
        "reply to {req} contains spaces: {raw:?}"
    );
    let v: Value = serde_json::from_str(&raw)
        .unwrap_or_else(|e| panic!("reply to {req} is not JSON ({e}): {raw:?}"));
    assert!(v.is_object(), "reply to {req} is not an object: {raw}");
    v
}

/// The `return` value of a successful request.
#[track_caller]
fn ok(path: &Path, req: &str) -> Value {
    let v = call(path, req);
    match v.get("return") {
        Some(r) if v.as_object().unwrap().len() == 1 => r.clone(),
        _ => panic!("{req} failed: {v}"),
    }
}

/// The error desc of a failing request (the reply must be exactly `{"error":{"desc":...}}`).
#[track_caller]
fn err(path: &Path, req: &[u8]) -> String {
    let raw = call_raw(path, req);
    let shown = String::from_utf8_lossy(&req[..req.len().min(120)]).into_owned();
    assert!(
        !whitespace_outside_strings(&raw),
        "reply to {shown} contains spaces: {raw:?}"
    );
    let v: Value = serde_json::from_str(&raw)
        .unwrap_or_else(|e| panic!("reply to {shown} is not JSON ({e}): {raw:?}"));
    let desc = v
        .pointer("/error/desc")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("expected an error reply to {shown}, got {raw}"));
    assert_eq!(
        v.as_object().unwrap().len(),
        1,
        "error reply has extra members: {raw}"
    );
    assert_eq!(
        v["error"].as_object().unwrap().len(),
        1,
        "error object has extra members: {raw}"
    );
    desc.to_string()
}

fn add_req(proto: &str, host_addr: Option<&str>, host_port: u16, guest_port: u16) -> String {
    let ha = host_addr.map_or(String::new(), |a| format!(r#","host_addr":"{a}""#));
    format!(
        r#"{{"execute":"add_hostfwd","arguments":{{"proto":"{proto}"{ha},"host_port":{host_port},"guest_port":{guest_port}}}}}"#
    )
}

/// add_hostfwd; returns the id.
#[track_caller]
fn add(path: &Path, proto: &str, host_addr: Option<&str>, host_port: u16, guest_port: u16) -> u64 {
    let r = ok(path, &add_req(proto, host_addr, host_port, guest_port));
    assert_eq!(
        r.as_object().map(|o| o.len()),
        Some(1),
        "add_hostfwd return: {r}"
    );
    r["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("add_hostfwd returned no integer id: {r}"))
}

#[track_caller]
fn remove(path: &Path, id: u64) {
    let r = ok(
        path,
        &format!(r#"{{"execute":"remove_hostfwd","arguments":{{"id":{id}}}}}"#),
    );
    assert_eq!(r, serde_json::json!({}), "remove_hostfwd {id}");
}

/// list_hostfwd's entries. tapwire must use the documented `{"return":{"entries":[...]}}`;
/// slirp4netns omits the wrapper (accepted only when testing it).
#[track_caller]
fn list(path: &Path) -> Vec<Value> {
    let v = call(path, r#"{"execute":"list_hostfwd"}"#);
    let entries = if testing_tapwire() {
        assert_eq!(
            v.as_object().unwrap().len(),
            1,
            "list_hostfwd reply must be {{\"return\":{{\"entries\":[...]}}}}: {v}"
        );
        v.pointer("/return/entries")
    } else {
        v.pointer("/return/entries").or_else(|| v.get("entries"))
    };
    entries
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("list_hostfwd: no entries array: {v}"))
        .clone()
}

/// An entry as list_hostfwd shows it.
fn entry(id: u64, proto: &str, ha: &str, hp: u16, ga: &str, gp: u16) -> Value {
    serde_json::json!({"id": id, "proto": proto, "host_addr": ha, "host_port": hp,
                       "guest_addr": ga, "guest_port": gp})
}

// ---------------------------------------------------------------------------------------------
// The world of one test.
// ---------------------------------------------------------------------------------------------

/// Daemon (dropped first), guest, host namespace.
struct World {
    d: Daemon,
    guest: Guest,
    host: HostNs,
    sock: PathBuf,
}

impl World {
    /// The daemon under test with `-c -r 3 --api-socket <tmp>/api.sock [extra] PID tap0`.
    fn new(extra: &[&str]) -> World {
        let host = HostNs::new();
        let guest = host.guest();
        let sock = host.dir.join("api.sock");
        let mut args = vec!["--api-socket", sock.to_str().unwrap()];
        args.extend_from_slice(extra);
        let d = Daemon::with_args(&host, &guest, &args);
        World {
            d,
            guest,
            host,
            sock,
        }
    }

    /// A TCP client on host loopback, connected to 127.0.0.1:port (IO timeouts set).
    fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let s = self
            .host
            .in_ns(|| TcpStream::connect_timeout(&addr, SETUP_TIMEOUT))?;
        set_timeouts(&s);
        Ok(s)
    }

    /// A listener inside the guest.
    fn guest_listen(&self, addr: SocketAddrV4) -> TcpListener {
        self.guest
            .in_ns(|| TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("guest listen {addr}: {e}"))
    }

    fn guest_udp(&self, addr: SocketAddrV4) -> UdpSocket {
        self.guest
            .in_ns(|| UdpSocket::bind(addr))
            .unwrap_or_else(|e| panic!("guest udp bind {addr}: {e}"))
    }

    /// A UDP socket in the host namespace, connect()ed to `to`.
    fn host_udp_to(&self, to: SocketAddr) -> UdpSocket {
        let s = self
            .host
            .in_ns(|| {
                let bind: SocketAddr = if to.is_ipv6() {
                    (Ipv6Addr::UNSPECIFIED, 0).into()
                } else {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                };
                let s = UdpSocket::bind(bind)?;
                s.connect(to)?;
                Ok::<_, std::io::Error>(s)
            })
            .expect("host udp socket");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    }

    fn alive(&mut self) {
        assert!(
            self.d.wait_timeout(Duration::ZERO).is_none(),
            "the daemon exited; {}",
            self.d.describe()
        );
    }
}

fn lo(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

fn any_guest(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)
}

// ---------------------------------------------------------------------------------------------
// Transfers through forwards.
// ---------------------------------------------------------------------------------------------

/// Guest server: accept one connection, read to EOF (hashing), answer with `down`, wait for
/// the client to close. Returns (bytes read, their sha256, the client address seen).
fn guest_exchange_server(l: TcpListener, down: Arc<Vec<u8>>) -> Task<(u64, String, SocketAddr)> {
    task("guest-exchange", move || {
        let (mut s, peer) = accept_timeout(&l, TRANSFER_TIMEOUT).expect("guest accept");
        let (n, h) = read_hash(&mut s).expect("guest read upload");
        s.write_all(&down).expect("guest write download");
        s.shutdown(Shutdown::Write).expect("guest shutdown");
        let mut rest = [0u8; 16];
        let _ = s.read(&mut rest);
        (n, h, peer)
    })
}

/// Client side of the exchange on an open stream: upload, half-close, read the answer to EOF.
fn exchange(mut c: TcpStream, up: &[u8]) -> (u64, String) {
    c.write_all(up).expect("client upload");
    c.shutdown(Shutdown::Write).expect("client shutdown");
    read_hash(&mut c).expect("client read download")
}

/// Upload `up` and download `down` through a forward at `target`, both sha256-checked;
/// returns the client address the guest saw.
#[track_caller]
fn check_exchange(
    w: &World,
    l: TcpListener,
    target: SocketAddr,
    up: &[u8],
    down: Arc<Vec<u8>>,
) -> SocketAddr {
    let want_down = (down.len() as u64, sha256_hex(&down));
    let server = guest_exchange_server(l, down);
    let start = Instant::now();
    let c = w
        .connect(target)
        .unwrap_or_else(|e| panic!("connect to forwarded {target}: {e}"));
    let got_down = exchange(c, up);
    let (n, h, peer) = server.join(TRANSFER_TIMEOUT);
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        (n, h),
        (up.len() as u64, sha256_hex(up)),
        "upload through {target} as seen by the guest"
    );
    assert_eq!(
        got_down, want_down,
        "download through {target} as seen by the host client"
    );
    eprintln!(
        "exchange via {target}: {} MB up + {} MB down in {secs:.2} s",
        up.len() >> 20,
        want_down.0 >> 20
    );
    peer
}

/// Guest echo server: accept connections until `stop`, echo each (full duplex) until EOF.
fn guest_echo_server(l: TcpListener, stop: Arc<AtomicBool>) -> Task<usize> {
    task("guest-echo", move || {
        l.set_nonblocking(true).unwrap();
        let mut workers = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    set_timeouts(&s);
                    workers.push(std::thread::spawn(move || {
                        let mut buf = vec![0u8; 256 * 1024];
                        loop {
                            match s.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if s.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                        let _ = s.shutdown(Shutdown::Write);
                    }));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) => panic!("guest echo accept: {e}"),
            }
        }
        let n = workers.len();
        for t in workers {
            let _ = t.join();
        }
        n
    })
}

/// Full duplex through an echo: a writer thread sends `data` while this thread reads the echo.
fn echo_duplex(c: TcpStream, data: Arc<Vec<u8>>) -> (u64, String) {
    let mut wr = c.try_clone().unwrap();
    let writer = task("duplex-writer", move || {
        for chunk in data.chunks(64 * 1024) {
            wr.write_all(chunk).expect("duplex write");
        }
        wr.shutdown(Shutdown::Write).expect("duplex shutdown");
    });
    let mut c = c;
    let got = read_hash(&mut c).expect("duplex read");
    writer.join(TRANSFER_TIMEOUT);
    got
}

// ---- UDP: numbered datagrams ----------------------------------------------------------------

/// Payload of datagram `seq`: 4-byte sequence number then reproducible random bytes; sizes
/// vary between 1200 and 1472 bytes (the largest unfragmented payload at MTU 1500).
fn udp_payload(seq: u32) -> Vec<u8> {
    let size = 1200 + (seq as usize * 7919) % 273;
    let mut v = seq.to_le_bytes().to_vec();
    v.extend_from_slice(&random_bytes(size - 4, 0x5eed_0000 + seq as u64));
    v
}

/// What the guest received: payloads by sequence number, duplicates, senders.
type UdpReceived = (Vec<Option<Vec<u8>>>, usize, BTreeSet<SocketAddr>);

/// Guest side: store each numbered datagram (first copy) and echo every one back to its
/// sender, until "END" or 5 s of silence. Returns (payloads by seq, duplicates, senders).
fn guest_udp_store_echo(sock: UdpSocket, n: usize) -> Task<UdpReceived> {
    task("guest-udp-store-echo", move || {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got: Vec<Option<Vec<u8>>> = vec![None; n];
        let mut dups = 0;
        let mut from_set = BTreeSet::new();
        let mut buf = vec![0u8; 65536];
        while let Ok((k, from)) = sock.recv_from(&mut buf) {
            if &buf[..k] == b"END" {
                break;
            }
            from_set.insert(from);
            if k >= 4 {
                let seq = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
                if seq < n {
                    if got[seq].is_some() {
                        dups += 1;
                    } else {
                        got[seq] = Some(buf[..k].to_vec());
                    }
                }
            }
            sock.send_to(&buf[..k], from).expect("guest udp echo");
        }
        (got, dups, from_set)
    })
}

/// Host side: send datagrams 0..n through `c` (connected) with up to `window` in flight, check
/// each echo against what was sent, resend what is missing after 1 s of silence (shorter, a
/// loaded machine's scheduling pauses would count as loss).
/// Returns (retransmissions, payload bytes sent once, echo bytes received).
fn udp_windowed(c: &UdpSocket, n: u32, window: usize) -> (usize, u64, u64) {
    c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut acked = vec![false; n as usize];
    let mut inflight: BTreeSet<u32> = BTreeSet::new();
    let (mut next, mut done, mut resent) = (0u32, 0u32, 0usize);
    let (mut sent_bytes, mut echo_bytes) = (0u64, 0u64);
    let mut buf = vec![0u8; 65536];
    let start = Instant::now();
    while done < n {
        assert!(
            start.elapsed() < TRANSFER_TIMEOUT,
            "UDP transfer stuck: {done}/{n} echoed, {resent} resent"
        );
        while next < n && inflight.len() < window {
            let p = udp_payload(next);
            c.send(&p).expect("udp send");
            sent_bytes += p.len() as u64;
            inflight.insert(next);
            next += 1;
        }
        match c.recv(&mut buf) {
            Ok(k) => {
                assert!(k >= 4, "short echo ({k} B)");
                let seq = u32::from_le_bytes(buf[..4].try_into().unwrap());
                assert!(seq < n, "echo with a bad sequence number {seq}");
                assert!(
                    buf[..k] == udp_payload(seq)[..],
                    "echo of datagram {seq} differs from what was sent ({k} B)"
                );
                if !acked[seq as usize] {
                    acked[seq as usize] = true;
                    done += 1;
                    echo_bytes += k as u64;
                    inflight.remove(&seq);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                for &seq in &inflight {
                    c.send(&udp_payload(seq)).expect("udp resend");
                    resent += 1;
                }
            }
            Err(e) => panic!("udp recv: {e}"),
        }
    }
    for _ in 0..3 {
        let _ = c.send(b"END");
    }
    (resent, sent_bytes, echo_bytes)
}

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

// =============================================================================================
// 2. list_connections and get_stats.
// =============================================================================================

/// Send frames the daemon must drop, from the guest's tap0 (AF_PACKET): argv = number of
/// IPv4 frames with a bad header checksum, of frames with an unknown ethertype, of frames to
/// a foreign unicast MAC.
const PY_BAD_FRAMES: &str = include_str!("py/api_bad_frames.py");

fn stats(s: &Path) -> Value {
    ok(s, r#"{"execute":"get_stats"}"#)
}

fn u(v: &Value, ptr: &str) -> u64 {
    v.pointer(ptr)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{ptr} missing or not a counter in {v}"))
}

fn connections(s: &Path) -> Vec<Value> {
    let r = ok(s, r#"{"execute":"list_connections"}"#);
    r["connections"]
        .as_array()
        .unwrap_or_else(|| panic!("list_connections: no connections array: {r}"))
        .clone()
}

fn find_conn<'a>(conns: &'a [Value], proto: &str, guest: &str) -> Option<&'a Value> {
    conns
        .iter()
        .find(|c| c["proto"] == proto && c["guest"] == guest)
}

#[test]
fn list_connections_shows_flows_with_byte_counts() {
    if !preflight(&[]) || !tapwire_only("list_connections") {
        return;
    }
    let w = World::new(&[]);
    let s = &w.sock;
    assert_eq!(connections(s), Vec::<Value>::new(), "no flows at start");
    add(s, "tcp", None, 21200, 9000);
    add(s, "udp", None, 21201, 9001);

    // An inbound TCP flow through the forward: 100000 B host -> guest, 250000 B back, kept open.
    let l = w.guest_listen(any_guest(9000));
    let mut c = w.connect(lo(21200)).unwrap();
    let (mut g, _) = accept_timeout(&l, SETUP_TIMEOUT).expect("guest accept");
    c.write_all(&random_bytes(100_000, 5)).unwrap();
    let mut buf = vec![0u8; 100_000];
    g.read_exact(&mut buf).unwrap();
    g.write_all(&random_bytes(250_000, 6)).unwrap();
    let mut buf = vec![0u8; 250_000];
    c.read_exact(&mut buf).unwrap();
    let client = c.local_addr().unwrap();

    // An outbound TCP flow: guest -> 10.0.2.2 (host loopback), 12345 B, kept open.
    let hl = w.host.listen(21202);
    let mut og = w
        .guest
        .connect((GATEWAY, 21202), SETUP_TIMEOUT)
        .expect("guest connect to the gateway");
    let (mut oh, _) = accept_timeout(&hl, SETUP_TIMEOUT).unwrap();
    og.write_all(&random_bytes(12345, 7)).unwrap();
    let mut buf = vec![0u8; 12345];
    oh.read_exact(&mut buf).unwrap();
    let og_local = og.local_addr().unwrap();

    // A UDP flow through the UDP forward: 3 datagrams in, 2 answers.
    let gu = w.guest_udp(any_guest(9001));
    let cu = w.host_udp_to(lo(21201));
    let mut from = None;
    for i in 0..3u8 {
        cu.send(&[i; 100]).unwrap();
        let mut b = [0u8; 200];
        gu.set_read_timeout(Some(SETUP_TIMEOUT)).unwrap();
        let (k, f) = gu
            .recv_from(&mut b)
            .expect("guest receives forwarded datagram");
        assert_eq!(k, 100);
        from = Some(f);
    }
    for _ in 0..2 {
        gu.send_to(b"answer", from.unwrap()).unwrap();
        let mut b = [0u8; 64];
        assert_eq!(cu.recv(&mut b).expect("answer reaches the client"), 6);
    }

    let inbound_guest = format!("{GUEST_ADDR}:9000");
    let outbound_guest = og_local.to_string();
    let udp_guest = format!("{GUEST_ADDR}:9001");
    // Counters are updated as data moves; allow a moment for the last ACKs.
    let mut conns = Vec::new();
    let settled = |conns: &[Value]| {
        let i = find_conn(conns, "tcp", &inbound_guest);
        let o = find_conn(conns, "tcp", &outbound_guest);
        let d = find_conn(conns, "udp", &udp_guest);
        i.is_some_and(|i| i["bytes_to_guest"] == 100_000 && i["bytes_from_guest"] == 250_000)
            && o.is_some_and(|o| o["bytes_from_guest"] == 12345 && o["bytes_to_guest"] == 0)
            && d.is_some_and(|d| d["packets_to_guest"] == 3 && d["packets_from_guest"] == 2)
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        conns = connections(s);
        if settled(&conns) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let pretty = serde_json::to_string_pretty(&conns).unwrap();
    assert!(settled(&conns), "list_connections counts: {pretty}");
    let i = find_conn(&conns, "tcp", &inbound_guest).unwrap();
    assert_eq!(
        i["remote"],
        format!("{GATEWAY}:{}", client.port()),
        "{pretty}"
    );
    assert_eq!(i["host"], client.to_string(), "{pretty}");
    let o = find_conn(&conns, "tcp", &outbound_guest).unwrap();
    assert_eq!(o["remote"], format!("{GATEWAY}:21202"), "{pretty}");
    assert_eq!(o["host"], "127.0.0.1:21202", "{pretty}");
    for c in [i, o] {
        assert!(
            c["age_s"]
                .as_f64()
                .is_some_and(|a| (0.0..60.0).contains(&a)),
            "{c}"
        );
        assert_eq!(c["state"], "open", "{c}");
    }
    let d = find_conn(&conns, "udp", &udp_guest).unwrap();
    assert_eq!(d["host"], cu.local_addr().unwrap().to_string(), "{pretty}");
    eprintln!("list_connections: {pretty}");

    // Closed flows leave the list.
    drop((c, g, og, oh));
    let start = Instant::now();
    loop {
        let conns = connections(s);
        if find_conn(&conns, "tcp", &inbound_guest).is_none()
            && find_conn(&conns, "tcp", &outbound_guest).is_none()
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "closed TCP flows still listed after 10 s: {}",
            serde_json::to_string_pretty(&conns).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn get_stats_counts_frames_drops_flows_and_forwards() {
    if !preflight(&["python3"]) || !tapwire_only("get_stats") {
        return;
    }
    let w = World::new(&[]);
    let s = &w.sock;
    let s0 = stats(s);
    for key in [
        "/frames_in",
        "/frames_out",
        "/bytes_in",
        "/bytes_out",
        "/drops_total",
        "/drops/checksum",
        "/drops/ethertype",
        "/drops/not_our_mac",
        "/flows/tcp",
        "/flows/udp",
        "/flows/icmp",
        "/flows_total/tcp",
        "/forwards",
    ] {
        u(&s0, key);
    }
    assert_eq!(u(&s0, "/forwards"), 0);
    add(s, "tcp", None, 21210, 9000);
    add(s, "udp", None, 21211, 9000);

    // Traffic: 1 MB through the forward, one outbound connection.
    let l = w.guest_listen(any_guest(9000));
    check_exchange(
        &w,
        l,
        lo(21210),
        &random_bytes(MB, 8),
        Arc::new(random_bytes(MB, 9)),
    );
    check_upload(
        &w.guest,
        w.host.listen(21212),
        (GATEWAY, 21212).into(),
        &random_bytes(MB, 10),
    );
    let s1 = stats(s);
    assert_eq!(u(&s1, "/forwards"), 2, "{s1}");
    // 3 MB moved: at least 16 frames each way even in 64 KiB TSO segments (src/vnet.rs).
    assert!(
        u(&s1, "/frames_in") >= u(&s0, "/frames_in") + 16,
        "frames in: {s0} -> {s1}"
    );
    assert!(
        u(&s1, "/frames_out") >= u(&s0, "/frames_out") + 16,
        "frames out: {s0} -> {s1}"
    );
    assert!(
        u(&s1, "/bytes_in") >= u(&s0, "/bytes_in") + 2 * MB as u64,
        "bytes in: {s1}"
    );
    assert!(
        u(&s1, "/bytes_out") >= u(&s0, "/bytes_out") + MB as u64,
        "bytes out: {s1}"
    );
    assert!(
        u(&s1, "/flows_total/tcp") >= u(&s0, "/flows_total/tcp") + 2,
        "{s1}"
    );

    // Drops by reason: exactly what we send.
    let out = run(
        w.guest
            .cmd("python3")
            .args(["-c", PY_BAD_FRAMES, "7", "5", "3"]),
        Duration::from_secs(20),
    )
    .ok();
    assert!(out.stdout.contains("sent 15"), "{out}");
    let mut s2 = stats(s);
    let start = Instant::now();
    while u(&s2, "/drops/not_our_mac") < u(&s1, "/drops/not_our_mac") + 3
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
        s2 = stats(s);
    }
    for (reason, n) in [("checksum", 7), ("ethertype", 5), ("not_our_mac", 3)] {
        let p = format!("/drops/{reason}");
        assert_eq!(
            u(&s2, &p) - u(&s1, &p),
            n,
            "drops.{reason} after sending {n} such frames: {s1} -> {s2}"
        );
    }
    assert!(
        u(&s2, "/drops_total") >= u(&s1, "/drops_total") + 15,
        "drops_total: {s1} -> {s2}"
    );
    let sum: u64 = s2["drops"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        sum,
        u(&s2, "/drops_total"),
        "drops_total is the sum of drops: {s2}"
    );
    assert!(
        u(&s2, "/frames_in") >= u(&s1, "/frames_in") + 15,
        "{s1} -> {s2}"
    );
    eprintln!("get_stats: {s2}");
}

// =============================================================================================
// 3. Forwarded bulk transfers.
// =============================================================================================

#[test]
fn tcp_forward_20mb_both_directions() {
    if !preflight(&[]) {
        return;
    }
    let w = World::new(&[]);
    add(&w.sock, "tcp", None, 21300, 5000);
    let up = random_bytes(FWD_BULK, 11);
    let down = Arc::new(random_bytes(FWD_BULK, 12));
    // Sequential: upload, half-close, download.
    let l = w.guest_listen(any_guest(5000));
    let peer = check_exchange(&w, l, lo(21300), &up, down);
    assert_eq!(peer.ip(), GATEWAY);
    // Full duplex: an echo, both directions at once.
    let stop = Arc::new(AtomicBool::new(false));
    let echo = guest_echo_server(w.guest_listen(any_guest(5001)), stop.clone());
    add(&w.sock, "tcp", Some("127.0.0.1"), 21301, 5001);
    let data = Arc::new(random_bytes(FWD_BULK, 13));
    let want = (data.len() as u64, sha256_hex(&data));
    let start = Instant::now();
    let got = echo_duplex(w.connect(lo(21301)).unwrap(), data);
    stop.store(true, Ordering::Relaxed);
    echo.join(TRANSFER_TIMEOUT);
    assert_eq!(got, want, "20 MB echoed through the forward (full duplex)");
    eprintln!(
        "duplex echo 20 MB each way: {:.2} s",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn udp_forward_20mb_numbered_datagrams() {
    if !preflight(&[]) {
        return;
    }
    let w = World::new(&[]);
    add(&w.sock, "udp", None, 21310, 5300);
    // Enough datagrams for >= 20 MB of payload into the guest (and as much echoed back).
    let n: u32 = (0..)
        .scan(0usize, |acc, s| {
            *acc += udp_payload(s).len();
            Some(*acc)
        })
        .position(|acc| acc >= FWD_BULK)
        .unwrap() as u32
        + 1;
    let server = guest_udp_store_echo(w.guest_udp(any_guest(5300)), n as usize);
    let c = w.host_udp_to(lo(21310));
    let start = Instant::now();
    let (resent, sent, echoed) = udp_windowed(&c, n, 64);
    let secs = start.elapsed().as_secs_f64();
    let (got, dups, senders) = server.join(TRANSFER_TIMEOUT);
    // The payload sequence the guest received, in order, against what was sent.
    let mut want = Sha256::new();
    let mut have = Sha256::new();
    let mut missing = 0;
    for seq in 0..n {
        want.update(&udp_payload(seq));
        match &got[seq as usize] {
            Some(p) => have.update(p),
            None => missing += 1,
        }
    }
    assert_eq!(missing, 0, "datagrams never received by the guest");
    assert_eq!(
        have.hex(),
        want.hex(),
        "sha256 of the guest's payload sequence"
    );
    assert!(sent >= FWD_BULK as u64 && echoed >= FWD_BULK as u64);
    assert_eq!(
        senders.iter().map(|a| a.ip()).collect::<Vec<_>>(),
        vec![std::net::IpAddr::from(GATEWAY)],
        "one client, seen as the gateway: {senders:?}"
    );
    eprintln!(
        "UDP forward: {n} datagrams, {} MB in + {} MB echoed in {secs:.2} s; \
         {resent} resent (loss), {dups} duplicates at the guest",
        sent >> 20,
        echoed >> 20
    );
    // Loss on this local path is not expected; tolerate a little but never much.
    assert!(
        resent <= n as usize / 100,
        "more than 1% of the datagrams had to be resent: {resent} of {n}"
    );
}

// =============================================================================================
// 4. Source address visibility.
// =============================================================================================

#[test]
fn client_source_address_visible_in_guest() {
    if !preflight(&[]) {
        return;
    }
    let w = World::new(&[]);
    let peer = w.host.peer();
    add(&w.sock, "tcp", None, 21400, 6000);
    add(&w.sock, "udp", None, 21401, 6001);
    add(&w.sock, "udp", None, 21402, 6002);

    // TCP from the peer namespace, to the host's veth address.
    let l = w.guest_listen(any_guest(6000));
    let server = guest_exchange_server(l.try_clone().unwrap(), Arc::new(b"seen".to_vec()));
    let c = peer
        .in_ns(|| TcpStream::connect_timeout(&(PEER_HOST_ADDR, 21400).into(), SETUP_TIMEOUT))
        .expect("peer connects to the forwarded port");
    set_timeouts(&c);
    let local = c.local_addr().unwrap();
    assert_eq!(exchange(c, b"who").0, 4);
    let (_, _, seen) = server.join(SETUP_TIMEOUT);
    assert_eq!(
        seen.ip(),
        PEER_ADDR,
        "a remote client's address is visible in the guest"
    );
    if testing_tapwire() {
        assert_eq!(seen.port(), local.port(), "and its port (when free)");
    }
    // TCP from host loopback: the gateway.
    let seen = check_exchange(&w, l, lo(21400), b"who", Arc::new(b"seen".to_vec()));
    assert_eq!(
        seen.ip(),
        GATEWAY,
        "a host-loopback client appears as the gateway"
    );

    // UDP: the guest answers each datagram with "<datagram> <source it saw>".
    let whoami = |port: u16| {
        let g = w.guest_udp(any_guest(port));
        task("guest-udp-whoami", move || {
            g.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 128];
            while let Ok((k, from)) = g.recv_from(&mut buf) {
                let reply = format!("{} {from}", String::from_utf8_lossy(&buf[..k]));
                g.send_to(reply.as_bytes(), from).unwrap();
                seen.push(from);
            }
            seen
        })
    };
    let (responder, responder2) = (whoami(6001), whoami(6002));
    let peer_udp = |port: u16| {
        let s = peer
            .in_ns(|| {
                let s = UdpSocket::bind((PEER_ADDR, 0))?;
                s.connect((PEER_HOST_ADDR, port))?;
                Ok::<_, std::io::Error>(s)
            })
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    };
    let ask = |c: &UdpSocket, msg: &str| -> String {
        let mut buf = [0u8; 128];
        c.send(msg.as_bytes()).unwrap();
        let k = c
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no UDP answer to {msg:?}: {e}"));
        String::from_utf8_lossy(&buf[..k]).into_owned()
    };
    // One client per forward (what libslirp supports: it answers a UDP forward's last sender).
    let pc = peer_udp(21401);
    let hc = w.host_udp_to(lo(21402));
    for round in 0..3 {
        let r = ask(&pc, &format!("peer{round}"));
        assert!(
            r.starts_with(&format!("peer{round} {PEER_ADDR}:")),
            "peer got {r:?}"
        );
        if testing_tapwire() {
            assert_eq!(
                r,
                format!("peer{round} {}", pc.local_addr().unwrap()),
                "UDP source port kept"
            );
        }
        let r = ask(&hc, &format!("host{round}"));
        assert!(
            r.starts_with(&format!("host{round} {GATEWAY}:")),
            "host client got {r:?}"
        );
    }
    let mut expect = 3;
    if testing_tapwire() {
        // Both clients on one forward with datagrams in flight at once: each answer goes
        // back to the client it is meant for.
        let pc = peer_udp(21401);
        let hc = w.host_udp_to(lo(21401));
        let mut buf = [0u8; 128];
        for round in 0..3 {
            pc.send(format!("P{round}").as_bytes()).unwrap();
            hc.send(format!("H{round}").as_bytes()).unwrap();
            let k = pc
                .recv(&mut buf)
                .expect("peer answer on the shared forward");
            assert_eq!(
                String::from_utf8_lossy(&buf[..k]),
                format!("P{round} {}", pc.local_addr().unwrap())
            );
            let k = hc
                .recv(&mut buf)
                .expect("host answer on the shared forward");
            let r = String::from_utf8_lossy(&buf[..k]).into_owned();
            assert!(r.starts_with(&format!("H{round} {GATEWAY}:")), "{r:?}");
        }
        expect += 6;
    }
    let seen = responder.join(SETUP_TIMEOUT);
    assert_eq!(seen.len(), expect, "{seen:?}");
    let seen = responder2.join(SETUP_TIMEOUT);
    assert_eq!(seen.len(), 3, "{seen:?}");
}

// =============================================================================================
// 5. Forward removal.
// =============================================================================================

#[test]
fn removal_refuses_new_connections_but_established_ones_finish() {
    if !preflight(&[]) {
        return;
    }
    let w = World::new(&[]);
    let id = add(&w.sock, "tcp", None, 21500, 6500);
    let stop = Arc::new(AtomicBool::new(false));
    let echo = guest_echo_server(w.guest_listen(any_guest(6500)), stop.clone());
    // An established connection, 1 MB echoed.
    let data = random_bytes(6 * MB, 14);
    let mut c = w.connect(lo(21500)).unwrap();
    c.write_all(&data[..MB]).unwrap();
    let mut first = vec![0u8; MB];
    c.read_exact(&mut first).unwrap();
    assert!(first == data[..MB], "echo before removal");

    remove(&w.sock, id);
    assert_eq!(list(&w.sock), Vec::<Value>::new());
    // New connections: refused at once.
    let t = Instant::now();
    match w.connect(lo(21500)) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        Err(e) => panic!("connect after remove_hostfwd: expected ECONNREFUSED, got {e}"),
        Ok(s) => {
            // Accepted by a listener that should be gone: is anything served?
            let mut s = s;
            let _ = s.write_all(b"x");
            let mut b = [0u8; 1];
            panic!(
                "connect after remove_hostfwd succeeded (read: {:?})",
                s.read(&mut b)
            );
        }
    }
    assert!(t.elapsed() < Duration::from_secs(1));
    // The established one keeps working to the end.
    let mut wr = c.try_clone().unwrap();
    let rest = data[MB..].to_vec();
    let writer = task("writer", move || {
        wr.write_all(&rest).unwrap();
        wr.shutdown(Shutdown::Write).unwrap();
    });
    let (n, h) = read_hash(&mut c).expect("read the rest of the echo");
    writer.join(TRANSFER_TIMEOUT);
    assert_eq!(
        (n, h),
        ((5 * MB) as u64, sha256_hex(&data[MB..])),
        "the established connection finished after removal"
    );
    stop.store(true, Ordering::Relaxed);
    assert_eq!(
        echo.join(TRANSFER_TIMEOUT),
        1,
        "the guest saw only the first connection"
    );

    // UDP: after removal the port is closed (a new client gets nothing; the port is free).
    let uid = add(&w.sock, "udp", Some("127.0.0.1"), 21501, 6501);
    let g = w.guest_udp(any_guest(6501));
    let gecho = serve_udp_echo(g, Duration::from_secs(3));
    let c1 = w.host_udp_to(lo(21501));
    c1.send(b"before").unwrap();
    let mut b = [0u8; 16];
    assert_eq!(c1.recv(&mut b).expect("UDP echo before removal"), 6);
    remove(&w.sock, uid);
    let c2 = w.host_udp_to(lo(21501));
    c2.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    c2.send(b"after").unwrap();
    assert!(
        c2.recv(&mut b).is_err(),
        "UDP answered after remove_hostfwd"
    );
    w.host
        .in_ns(|| UdpSocket::bind((Ipv4Addr::LOCALHOST, 21501)))
        .expect("removed UDP forward's port is free");
    w.host
        .in_ns(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 21500)))
        .expect("removed TCP forward's port is free");
    gecho.join(SETUP_TIMEOUT);
}

// =============================================================================================
// 6. Concurrent API clients during a transfer.
// =============================================================================================

#[test]
fn concurrent_api_clients_during_50mb_transfer() {
    if !preflight(&[]) {
        return;
    }
    let w = Arc::new(World::new(&[]));
    let fwd = add(&w.sock, "tcp", None, 21600, 7600);
    let l = w.guest_listen(any_guest(7600));
    let up = Arc::new(random_bytes(50 * MB, 15));
    let down = Arc::new(random_bytes(50 * MB, 16));
    let want_up = sha256_hex(&up);
    let want_down = (down.len() as u64, sha256_hex(&down));
    let server = guest_exchange_server(l, down);
    let done = Arc::new(AtomicBool::new(false));
    let during = Arc::new(AtomicUsize::new(0));
    let sock = w.sock.clone();
    let mut clients = Vec::new();
    for t in 0..20u16 {
        let (sock, done, during) = (sock.clone(), done.clone(), during.clone());
        clients.push(task(&format!("api-client-{t}"), move || {
            let mut ids = Vec::new();
            let mut i = 0u16;
            while i < 5 || (!done.load(Ordering::Relaxed) && i < 200) {
                // Below the ephemeral range (32768..), where client sockets could hold a port.
                let port = 24000 + t * 200 + i % 200;
                let proto = if i % 2 == 0 { "tcp" } else { "udp" };
                let id = add(&sock, proto, Some("127.0.0.1"), port, 80);
                let entries = list(&sock);
                assert!(
                    entries.contains(&entry(id, proto, "127.0.0.1", port, "10.0.2.100", 80)),
                    "thread {t}: forward {id} ({port}) not listed: {entries:?}"
                );
                let mut prev = 0;
                for e in &entries {
                    let eid = e["id"].as_u64().unwrap();
                    assert!(eid > prev, "list not in increasing id order: {entries:?}");
                    prev = eid;
                }
                remove(&sock, id);
                ids.push(id);
                if !done.load(Ordering::Relaxed) {
                    during.fetch_add(3, Ordering::Relaxed);
                }
                i += 1;
            }
            ids
        }));
    }
    let start = Instant::now();
    let c = w.connect(lo(21600)).unwrap();
    let got_down = exchange(c, &up);
    done.store(true, Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    let (n, h, _) = server.join(TRANSFER_TIMEOUT);
    let mut all = Vec::new();
    for c in clients {
        let ids = c.join(TRANSFER_TIMEOUT);
        assert!(
            ids.windows(2).all(|p| p[0] < p[1]),
            "ids per client increase: {ids:?}"
        );
        all.extend(ids);
    }
    assert_eq!(
        (n, h),
        (up.len() as u64, want_up),
        "50 MB upload during API load"
    );
    assert_eq!(got_down, want_down, "50 MB download during API load");
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "an id was handed out twice");
    assert!(!unique.contains(&fwd));
    assert_eq!(
        list(&w.sock),
        vec![entry(fwd, "tcp", "0.0.0.0", 21600, "10.0.2.100", 7600)],
        "only the transfer's forward is left"
    );
    eprintln!(
        "{} API requests during the 50+50 MB exchange ({secs:.2} s); {} requests in all",
        during.load(Ordering::Relaxed),
        all.len() * 3
    );
    assert!(
        during.load(Ordering::Relaxed) >= 20,
        "the API load did not overlap the transfer"
    );
}

// =============================================================================================
// 7. A stalled API client.
// =============================================================================================

#[test]
fn stalled_api_client_blocks_nothing() {
    if !preflight(&[]) || !tapwire_only("the non-blocking API server") {
        return;
    }
    let mut w = World::new(&[]);
    let fwd = add(&w.sock, "tcp", None, 21700, 7700);
    // The transfer's data and checksums first: the stalled clients below must be dealt with
    // within the daemon's 10 s client timeout, and a slow machine takes a while over these.
    let l = w.guest_listen(any_guest(7700));
    let up = Arc::new(random_bytes(30 * MB, 17));
    let down = Arc::new(random_bytes(30 * MB, 18));
    let want = (
        (up.len() as u64, sha256_hex(&up)),
        (down.len() as u64, sha256_hex(&down)),
    );
    // One client sends half a request and waits; another connects and sends nothing.
    let opened = Instant::now();
    let mut half = UnixStream::connect(&w.sock).unwrap();
    half.write_all(br#"{"execute":"list_hostfwd""#).unwrap();
    let mut silent = UnixStream::connect(&w.sock).unwrap();
    // The half request is kept, not dropped: finishing it gets the answer. It is finished 4 s
    // after it was opened (or when the API rounds end, if sooner), whether or not the
    // transfer is over, well before the daemon's 10 s client timeout.
    let finish_half = |half: &mut UnixStream| -> String {
        assert!(
            opened.elapsed() < Duration::from_secs(8),
            "too late to check the half request before the daemon's 10 s client timeout: {:?}",
            opened.elapsed()
        );
        half.write_all(b"}").unwrap();
        half.shutdown(Shutdown::Write).unwrap();
        half.set_read_timeout(Some(API_TIMEOUT)).unwrap();
        let mut reply = String::new();
        half.read_to_string(&mut reply)
            .expect("reply to the completed half request");
        reply
    };
    let mut half_reply = None;
    // Packets flow: a 30 MB exchange each way through the forward while they hang around.
    let server = guest_exchange_server(l, down);
    let c = w.connect(lo(21700)).unwrap();
    let up2 = up.clone();
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    let transfer = task("transfer", move || {
        let r = exchange(c, &up2);
        done2.store(true, Ordering::Relaxed);
        r
    });
    // Other clients are answered promptly, all the while.
    let mut worst = Duration::ZERO;
    let (mut i, mut during) = (0u16, 0);
    while i < 20 || (!done.load(Ordering::Relaxed) && i < 5000) {
        let t = Instant::now();
        let id = add(&w.sock, "udp", None, 27000 + i % 500, 80);
        remove(&w.sock, id);
        let _ = stats(&w.sock);
        worst = worst.max(t.elapsed());
        if !done.load(Ordering::Relaxed) {
            during += 1;
        }
        if half_reply.is_none() && opened.elapsed() >= Duration::from_secs(4) {
            half_reply = Some(finish_half(&mut half));
        }
        i += 1;
    }
    let reply = half_reply.unwrap_or_else(|| finish_half(&mut half));
    let got_down = transfer.join(TRANSFER_TIMEOUT);
    assert!(
        during >= 5,
        "only {during} API rounds overlapped the transfer"
    );
    let (n, h, _) = server.join(TRANSFER_TIMEOUT);
    assert_eq!(((n, h), got_down), want, "transfer while API clients stall");
    // A round trip blocked by the stalled clients would last until the daemon's 10 s client
    // timeout (or fail after API_TIMEOUT); 3 s leaves room for a loaded machine.
    assert!(
        worst < Duration::from_secs(3),
        "an API round trip took {worst:?} with a stalled client connected"
    );
    w.alive();
    let v: Value = serde_json::from_str(&reply).expect("JSON reply");
    assert_eq!(
        v.pointer("/return/entries/0/id").and_then(Value::as_u64),
        Some(fwd),
        "{reply}"
    );
    // The silent one is dropped eventually (10 s), freeing its slot.
    silent
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut b = [0u8; 16];
    let r = silent.read(&mut b);
    assert!(
        matches!(r, Ok(0)) || matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "silent client: {r:?}"
    );
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_secs(5),
        "a silent client was dropped after only {waited:?}"
    );
    eprintln!(
        "{during} API rounds during the transfer, worst round trip {worst:?}; silent client \
         dropped after {waited:?}"
    );
}

// =============================================================================================
// 8. -p on the daemon and on `tapwire run`.
// =============================================================================================

#[test]
fn publish_flag_on_daemon() {
    if !preflight(&[]) || !tapwire_only("-p/--publish") {
        return;
    }
    let w = World::new(&[
        "-p",
        "127.0.0.1:21800:8000",
        "--publish=21801:8001/udp",
        "-p",
        "[::1]:21802:8002/tcp",
    ]);
    assert_eq!(
        list(&w.sock),
        vec![
            entry(1, "tcp", "127.0.0.1", 21800, "10.0.2.100", 8000),
            entry(2, "udp", "0.0.0.0", 21801, "10.0.2.100", 8001),
            entry(3, "tcp", "::1", 21802, "10.0.2.100", 8002),
        ],
        "-p forwards are listed, ids 1.. in order"
    );
    assert_eq!(
        add(&w.sock, "tcp", None, 21803, 8003),
        4,
        "API ids continue after -p"
    );
    let l = w.guest_listen(any_guest(8000));
    check_exchange(
        &w,
        l,
        lo(21800),
        &random_bytes(5 * MB, 19),
        Arc::new(random_bytes(5 * MB, 20)),
    );
    let l = w.guest_listen(any_guest(8002));
    check_exchange(
        &w,
        l,
        (Ipv6Addr::LOCALHOST, 21802).into(),
        b"six",
        Arc::new(b"ok".to_vec()),
    );
    let echo = serve_udp_echo(w.guest_udp(any_guest(8001)), Duration::from_secs(2));
    let c = w.host_udp_to(lo(21801));
    c.send(b"published").unwrap();
    let mut b = [0u8; 32];
    let k = c.recv(&mut b).expect("UDP -p echo");
    assert_eq!(&b[..k], b"published");
    echo.join(SETUP_TIMEOUT);
    // A forward removed through the API, even one from -p.
    remove(&w.sock, 1);
    assert!(
        w.connect(lo(21800)).is_err(),
        "removed -p forward still accepts"
    );

    // Without --api-socket, -p alone; and a -p whose port is taken stops start-up.
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &["-p", "21810:8010"]);
    let l = guest.in_ns(|| TcpListener::bind(any_guest(8010))).unwrap();
    let server = guest_exchange_server(l, Arc::new(b"plain -p".to_vec()));
    let c = host.in_ns(|| TcpStream::connect(lo(21810))).unwrap();
    set_timeouts(&c);
    assert_eq!(exchange(c, b"q"), (8, sha256_hex(b"plain -p")));
    server.join(SETUP_TIMEOUT);
    let guest2 = host.guest();
    let mut d = Daemon::spawn(
        &host,
        &guest2,
        DaemonCfg::default().args(&["-p", "21810:8010"]),
    );
    let st = d
        .wait_timeout(SETUP_TIMEOUT)
        .expect("a -p on a taken port must stop start-up");
    assert!(!st.success(), "{}", d.describe());
    let log = d.output();
    assert!(log.contains("21810"), "the error names the port: {log}");
}

/// The system python (pyenv shims under /root are not usable in every namespace setup).
fn python3() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

#[test]
fn publish_flag_on_run_mode() {
    if !preflight(&["python3"]) || !tapwire_only("tapwire run -p") {
        return;
    }
    let host = HostNs::new();
    let www = host.dir.join("www");
    std::fs::create_dir(&www).unwrap();
    let page = random_bytes(3 * MB, 21);
    std::fs::write(www.join("blob.bin"), &page).unwrap();
    let udp_echo = "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('10.0.2.100', 9000))\n\
         while True:\n    d, a = s.recvfrom(65536)\n    s.sendto(b'echo:' + d, a)\n";
    let script = format!(
        "{py} -c \"$UDP\" & exec {py} -m http.server 8000 --bind 10.0.2.100 --directory {dir}",
        py = python3(),
        dir = www.display()
    );
    let mut cmd = host.cmd(bin());
    cmd.args([
        "run",
        "-p",
        "127.0.0.1:21820:8000",
        "-p",
        "127.0.0.1:21821:9000/udp",
        "--",
        "sh",
        "-c",
        &script,
    ])
    .env("UDP", udp_echo)
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(host.dir.join("run.log")).unwrap());
    let mut p = Proc::spawn(&mut cmd);
    // GET /blob.bin over plain HTTP/1.0 from the host namespace, until the server is up.
    let get = || -> Option<Vec<u8>> {
        let mut s = host
            .in_ns(|| TcpStream::connect_timeout(&lo(21820), Duration::from_secs(1)))
            .ok()?;
        set_timeouts(&s);
        s.write_all(b"GET /blob.bin HTTP/1.0\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).ok()?;
        let at = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
        resp.starts_with(b"HTTP/1.0 200")
            .then(|| resp[at + 4..].to_vec())
    };
    let start = Instant::now();
    let body = loop {
        if let Ok(Some(st)) = p.child.try_wait() {
            panic!(
                "tapwire run exited early ({st}): {}",
                std::fs::read_to_string(host.dir.join("run.log")).unwrap_or_default()
            );
        }
        if let Some(b) = get() {
            break b;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no HTTP answer through -p 127.0.0.1:21820:8000 within 30 s: {}",
            std::fs::read_to_string(host.dir.join("run.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        (body.len(), sha256_hex(&body)),
        (page.len(), sha256_hex(&page)),
        "file fetched through tapwire run -p"
    );
    let c = host
        .in_ns(|| {
            let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            s.connect(lo(21821))?;
            Ok::<_, std::io::Error>(s)
        })
        .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut b = [0u8; 64];
    let mut got = None;
    for _ in 0..10 {
        c.send(b"udp-p").unwrap();
        if let Ok(k) = c.recv(&mut b) {
            got = Some(b[..k].to_vec());
            break;
        }
    }
    assert_eq!(
        got.as_deref(),
        Some(&b"echo:udp-p"[..]),
        "UDP through tapwire run -p"
    );
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(p.pid() as i32), Signal::SIGTERM);
    let _ = p.child.wait();
}

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
