//! The control-socket client of the API suites (api, api_stats, forwarding, ctl): the raw
//! slirp4netns JSON protocol over a UNIX socket (`call_raw`, `call`, `ok`, `err`, `add`, `remove`,
//! `list`, `stats`, `connections`), the world of one test (`World`: host, guest, daemon with
//! `--api-socket`) and the transfer helpers used through forwards (TCP exchanges, echoes,
//! numbered UDP datagrams).

use super::*;
use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{
    Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket,
};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const MB: usize = 1 << 20;
/// Deadline for one API round trip (the daemon answers in microseconds).
pub const API_TIMEOUT: Duration = Duration::from_secs(5);
/// What a forwarded transfer test moves in each direction (the issue asks for >= 20 MB).
pub const FWD_BULK: usize = 20 * MB;

// ---------------------------------------------------------------------------------------------
// The raw protocol.
// ---------------------------------------------------------------------------------------------

/// One request over a fresh connection: write `req`, shut down the write side, read to EOF.
/// A reset after the reply (the server closed with our bytes unread) still returns the reply.
pub fn call_raw(path: &Path, req: &[u8]) -> String {
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
pub fn whitespace_outside_strings(s: &str) -> bool {
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
pub fn call(path: &Path, req: &str) -> Value {
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
pub fn ok(path: &Path, req: &str) -> Value {
    let v = call(path, req);
    match v.get("return") {
        Some(r) if v.as_object().unwrap().len() == 1 => r.clone(),
        _ => panic!("{req} failed: {v}"),
    }
}

/// The error desc of a failing request (the reply must be exactly `{"error":{"desc":...}}`).
#[track_caller]
pub fn err(path: &Path, req: &[u8]) -> String {
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

pub fn add_req(proto: &str, host_addr: Option<&str>, host_port: u16, guest_port: u16) -> String {
    let ha = host_addr.map_or(String::new(), |a| format!(r#","host_addr":"{a}""#));
    format!(
        r#"{{"execute":"add_hostfwd","arguments":{{"proto":"{proto}"{ha},"host_port":{host_port},"guest_port":{guest_port}}}}}"#
    )
}

/// add_hostfwd; returns the id.
#[track_caller]
pub fn add(
    path: &Path,
    proto: &str,
    host_addr: Option<&str>,
    host_port: u16,
    guest_port: u16,
) -> u64 {
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
pub fn remove(path: &Path, id: u64) {
    let r = ok(
        path,
        &format!(r#"{{"execute":"remove_hostfwd","arguments":{{"id":{id}}}}}"#),
    );
    assert_eq!(r, serde_json::json!({}), "remove_hostfwd {id}");
}

/// list_hostfwd's entries. tapwire must use the documented `{"return":{"entries":[...]}}`;
/// slirp4netns omits the wrapper (accepted only when testing it).
#[track_caller]
pub fn list(path: &Path) -> Vec<Value> {
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
pub fn entry(id: u64, proto: &str, ha: &str, hp: u16, ga: &str, gp: u16) -> Value {
    serde_json::json!({"id": id, "proto": proto, "host_addr": ha, "host_port": hp,
                       "guest_addr": ga, "guest_port": gp})
}

// ---------------------------------------------------------------------------------------------
// The world of one test.
// ---------------------------------------------------------------------------------------------

/// Daemon (dropped first), guest, host namespace.
pub struct World {
    pub d: Daemon,
    pub guest: Guest,
    pub host: HostNs,
    pub sock: PathBuf,
}

impl World {
    /// The daemon under test with `-c -r 3 --api-socket <tmp>/api.sock [extra] PID tap0`.
    pub fn new(extra: &[&str]) -> World {
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
    pub fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let s = self
            .host
            .in_ns(|| TcpStream::connect_timeout(&addr, SETUP_TIMEOUT))?;
        set_timeouts(&s);
        Ok(s)
    }

    /// A listener inside the guest.
    pub fn guest_listen(&self, addr: SocketAddrV4) -> TcpListener {
        self.guest
            .in_ns(|| TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("guest listen {addr}: {e}"))
    }

    pub fn guest_udp(&self, addr: SocketAddrV4) -> UdpSocket {
        self.guest
            .in_ns(|| UdpSocket::bind(addr))
            .unwrap_or_else(|e| panic!("guest udp bind {addr}: {e}"))
    }

    /// A UDP socket in the host namespace, connect()ed to `to`.
    pub fn host_udp_to(&self, to: SocketAddr) -> UdpSocket {
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

    pub fn alive(&mut self) {
        assert!(
            self.d.wait_timeout(Duration::ZERO).is_none(),
            "the daemon exited; {}",
            self.d.describe()
        );
    }
}

pub fn lo(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

pub fn any_guest(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)
}

// ---------------------------------------------------------------------------------------------
// Transfers through forwards.
// ---------------------------------------------------------------------------------------------

/// Guest server: accept one connection, read to EOF (hashing), answer with `down`, wait for
/// the client to close. Returns (bytes read, their sha256, the client address seen).
pub fn guest_exchange_server(
    l: TcpListener,
    down: Arc<Vec<u8>>,
) -> Task<(u64, String, SocketAddr)> {
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
pub fn exchange(mut c: TcpStream, up: &[u8]) -> (u64, String) {
    c.write_all(up).expect("client upload");
    c.shutdown(Shutdown::Write).expect("client shutdown");
    read_hash(&mut c).expect("client read download")
}

/// Upload `up` and download `down` through a forward at `target`, both sha256-checked;
/// returns the client address the guest saw.
#[track_caller]
pub fn check_exchange(
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
pub fn guest_echo_server(l: TcpListener, stop: Arc<AtomicBool>) -> Task<usize> {
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
pub fn echo_duplex(c: TcpStream, data: Arc<Vec<u8>>) -> (u64, String) {
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
pub fn udp_payload(seq: u32) -> Vec<u8> {
    let size = 1200 + (seq as usize * 7919) % 273;
    let mut v = seq.to_le_bytes().to_vec();
    v.extend_from_slice(&random_bytes(size - 4, 0x5eed_0000 + seq as u64));
    v
}

/// What the guest received: payloads by sequence number, duplicates, senders.
pub type UdpReceived = (Vec<Option<Vec<u8>>>, usize, BTreeSet<SocketAddr>);

/// Guest side: store each numbered datagram (first copy) and echo every one back to its
/// sender, until "END" or 5 s of silence. Returns (payloads by seq, duplicates, senders).
pub fn guest_udp_store_echo(sock: UdpSocket, n: usize) -> Task<UdpReceived> {
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
pub fn udp_windowed(c: &UdpSocket, n: u32, window: usize) -> (usize, u64, u64) {
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

pub fn stats(s: &Path) -> Value {
    ok(s, r#"{"execute":"get_stats"}"#)
}

pub fn u(v: &Value, ptr: &str) -> u64 {
    v.pointer(ptr)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{ptr} missing or not a counter in {v}"))
}

pub fn connections(s: &Path) -> Vec<Value> {
    let r = ok(s, r#"{"execute":"list_connections"}"#);
    r["connections"]
        .as_array()
        .unwrap_or_else(|| panic!("list_connections: no connections array: {r}"))
        .clone()
}

pub fn find_conn<'a>(conns: &'a [Value], proto: &str, guest: &str) -> Option<&'a Value> {
    conns
        .iter()
        .find(|c| c["proto"] == proto && c["guest"] == guest)
}
