//! Idle TCP connections live as long as their ends keep them, as with slirp4netns: a database
//! pool, an SSH session or a paused container must not lose its connections to a timer.
//! smoltcp aborts a connection whose peer was silent for the socket's timeout even when
//! nothing is outstanding; tapwire once had it at 120 s for every flow, and reset every
//! connection left idle that long. Here one outbound connection (guest -> host) and one
//! through a port forward (host -> guest, added over the control socket) stay idle for
//! [`IDLE`], then carry data both ways.
//!
//! Also: a handshake with a guest address that never answers is given up, not retried forever.
//!
//! The idle test runs for any binary under test (slirp4netns passes it too). Needs root; see
//! tests/common.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;

/// Longer than the 120 s that used to kill idle flows.
const IDLE: Duration = Duration::from_secs(130);

fn echo_once(mut s: TcpStream, rounds: usize) -> Vec<u8> {
    set_timeouts(&s);
    s.set_read_timeout(Some(IDLE + Duration::from_secs(60)))
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..rounds {
        let mut buf = [0u8; 6];
        if s.read_exact(&mut buf).is_err() {
            break;
        }
        seen.extend_from_slice(&buf);
        if s.write_all(&buf).is_err() {
            break;
        }
    }
    seen
}

/// Send `msg`, expect it echoed.
fn exchange(s: &mut TcpStream, msg: &[u8; 6], what: &str) {
    s.write_all(msg)
        .unwrap_or_else(|e| panic!("{what}: write: {e}"));
    let mut back = [0u8; 6];
    s.read_exact(&mut back)
        .unwrap_or_else(|e| panic!("{what}: read: {e}"));
    assert_eq!(&back, msg, "{what}");
}

/// A port forward to a guest address nobody answers for: the handshake is given up after
/// two minutes (the host client sees the connection end) instead of being retried forever,
/// which would leak a flow and a host socket per connection.
#[test]
fn handshake_to_a_silent_guest_address_is_given_up() {
    if !preflight(&[]) || !tapwire_only("handshake timeout") {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let sock = host.dir.join("api.sock");
    let _d = Daemon::with_args(&host, &guest, &["--api-socket", sock.to_str().unwrap()]);
    let api = |req: &[u8]| {
        let mut api = UnixStream::connect(&sock).expect("connect to the API socket");
        api.write_all(req).unwrap();
        api.shutdown(Shutdown::Write).unwrap();
        let mut reply = String::new();
        api.read_to_string(&mut reply).unwrap();
        reply
    };
    let reply = api(br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":20512,"guest_addr":"10.0.2.99","guest_port":9000}}"#);
    assert!(reply.contains(r#""return""#), "add_hostfwd: {reply}");
    let mut c: TcpStream = host
        .in_ns(|| TcpStream::connect(("127.0.0.1", 20512)))
        .expect("connect to the forward");
    c.set_read_timeout(Some(Duration::from_secs(180))).unwrap();
    let start = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let r = c.read(&mut buf);
    let waited = start.elapsed();
    assert!(
        matches!(r, Ok(0) | Err(_)) && waited < Duration::from_secs(170),
        "the forwarded connection should end after ~120 s: {r:?} after {waited:?}"
    );
    assert!(
        waited >= Duration::from_secs(100),
        "ended too early: {waited:?}"
    );
    let conns = api(br#"{"execute":"list_connections"}"#);
    assert!(!conns.contains("10.0.2.99"), "flow left behind: {conns}");
}

#[test]
fn idle_connections_survive() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let sock = host.dir.join("api.sock");
    let _d = Daemon::with_args(&host, &guest, &["--api-socket", sock.to_str().unwrap()]);
    let mut api = UnixStream::connect(&sock).expect("connect to the API socket");
    api.write_all(
        br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":20511,"guest_port":9000}}"#,
    )
    .unwrap();
    api.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    api.read_to_string(&mut reply).unwrap();
    assert!(reply.contains(r#""return""#), "add_hostfwd: {reply}");

    // Outbound: the guest connects to an echo server on the host's loopback.
    let l = host.listen(20510);
    let out_srv = task("host echo", move || {
        let (s, _) = accept_timeout(&l, SETUP_TIMEOUT).expect("host accept");
        echo_once(s, 2)
    });
    let mut out = guest
        .connect(SocketAddr::from(([10, 0, 2, 2], 20510)), SETUP_TIMEOUT)
        .expect("guest connect");
    set_timeouts(&out);

    // Inbound: a host client reaches an echo server in the guest through the forward.
    let gl: TcpListener = guest.in_ns(|| TcpListener::bind(("0.0.0.0", 9000)).unwrap());
    let in_srv = task("guest echo", move || {
        let (s, _) = accept_timeout(&gl, SETUP_TIMEOUT).expect("guest accept");
        echo_once(s, 2)
    });
    let mut inb: TcpStream = host
        .in_ns(|| TcpStream::connect(("127.0.0.1", 20511)))
        .expect("connect to the forward");
    set_timeouts(&inb);

    exchange(&mut out, b"before", "outbound, before idling");
    exchange(&mut inb, b"BEFORE", "inbound, before idling");
    std::thread::sleep(IDLE);
    exchange(&mut out, b"after!", "outbound, after idling");
    // The guest's neighbor entry has expired by now: the first segment to it waits for ARP.
    let t = std::time::Instant::now();
    exchange(&mut inb, b"AFTER!", "inbound, after idling");
    eprintln!("inbound round trip after idling: {:?}", t.elapsed());
    drop(out);
    drop(inb);
    assert_eq!(out_srv.join(SETUP_TIMEOUT), b"beforeafter!");
    assert_eq!(in_srv.join(SETUP_TIMEOUT), b"BEFOREAFTER!");
}
