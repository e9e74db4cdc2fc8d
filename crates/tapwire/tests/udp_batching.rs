//! UDP NAT bindings under load and over time, through the real TAP: sequence-numbered streams
//! of datagrams of every size up to the MTU boundary both ways (batched `sendmmsg`/`recvmmsg`
//! in the daemon), sha256-checked per flow with order and loss checked datagram by datagram;
//! a binding idle past the old 60 s timeout still delivers the peer's next datagram (issue
//! 14: WireGuard without keepalive); a full binding table evicts instead of refusing new
//! destinations (issue 12).
//!
//! Needs root; see tests/common for the skip policy (TAPWIRE_ALLOW_SKIP=1).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::tap_mode::*;
use common::*;

/// Datagrams per flow; two flows each way.
const PER_FLOW: u32 = 10_000;
/// Largest payload that fits a 1500-byte IPv4 packet unfragmented.
const MAX_PAYLOAD: usize = 1472;
/// Pacing: a short pause after every this many datagrams (all flows together).
const BURST: u32 = 8;

/// Datagram `seq` of `flow`: flow and sequence number, then bytes derived from both; sizes
/// cycle through 8..=1472 (both ends of the range included).
fn datagram(flow: u32, seq: u32) -> Vec<u8> {
    let size = 8 + (seq as usize * 997) % (MAX_PAYLOAD - 7);
    let mut d = Vec::with_capacity(size);
    d.extend_from_slice(&flow.to_be_bytes());
    d.extend_from_slice(&seq.to_be_bytes());
    let mut x = flow.wrapping_mul(0x9e37_79b9) ^ seq.wrapping_mul(0x85eb_ca6b);
    while d.len() < size {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        d.push(x as u8);
    }
    d
}

/// The sha256 of flow `flow`'s whole stream.
fn stream_hash(flow: u32) -> String {
    let mut h = Sha256::new();
    for seq in 0..PER_FLOW {
        h.update(&datagram(flow, seq));
    }
    h.hex()
}

/// Per-flow receive state: the next sequence number expected, and the hash so far.
struct FlowRx {
    next: u32,
    hash: Sha256,
}

impl FlowRx {
    fn new() -> FlowRx {
        FlowRx {
            next: 0,
            hash: Sha256::new(),
        }
    }

    /// Check one datagram of this flow: it must be the next in order, intact.
    #[track_caller]
    fn take(&mut self, flow: u32, d: &[u8]) {
        assert!(d.len() >= 8, "flow {flow}: runt datagram of {} B", d.len());
        let seq = u32::from_be_bytes(d[4..8].try_into().unwrap());
        assert_eq!(
            seq,
            self.next,
            "flow {flow}: datagram {seq} arrived when {} was next ({} lost or reordered)",
            self.next,
            seq.wrapping_sub(self.next)
        );
        assert_eq!(
            d,
            &datagram(flow, seq)[..],
            "flow {flow}: datagram {seq} corrupted"
        );
        self.hash.update(d);
        self.next += 1;
    }
}

/// Send both flows' streams interleaved on `socks` (flow i on socks[i]), paced.
fn send_streams(mut send: impl FnMut(usize, &[u8])) {
    let mut n = 0;
    for seq in 0..PER_FLOW {
        for flow in 0..2u32 {
            send(flow as usize, &datagram(flow, seq));
            n += 1;
            if n % BURST == 0 {
                std::thread::sleep(Duration::from_micros(800));
            }
        }
    }
}

#[test]
fn udp_stream_guest_to_host_in_order_no_loss() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    check_configured(&guest, "10.0.2.100/24", "10.0.2.2", 1500);
    let sink = host.udp(20180);
    big_rcvbuf(&sink, 8 << 20);
    let rx = task("udp-sink", move || {
        sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut flows = [FlowRx::new(), FlowRx::new()];
        let mut buf = vec![0u8; 65_536];
        let mut total = 0;
        while total < 2 * PER_FLOW {
            let (k, _) = sink
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("sink: {e} after {total} datagrams"));
            let flow = u32::from_be_bytes(buf[..4].try_into().unwrap());
            assert!(flow < 2, "unknown flow {flow}");
            flows[flow as usize].take(flow, &buf[..k]);
            total += 1;
        }
        flows.map(|f| f.hash.hex())
    });
    let socks = [guest.udp_to(gw(20180)), guest.udp_to(gw(20180))];
    let t0 = Instant::now();
    send_streams(|i, d| {
        socks[i]
            .send(d)
            .unwrap_or_else(|e| panic!("guest send: {e}"));
    });
    let hashes = rx.join(Duration::from_secs(120));
    eprintln!(
        "guest->host: {} datagrams of 8..={MAX_PAYLOAD} B in {:?}",
        2 * PER_FLOW,
        t0.elapsed()
    );
    assert_eq!(hashes[0], stream_hash(0), "flow 0 stream sha256");
    assert_eq!(hashes[1], stream_hash(1), "flow 1 stream sha256");
}

#[test]
fn udp_stream_host_to_guest_in_order_no_loss() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    check_configured(&guest, "10.0.2.100/24", "10.0.2.2", 1500);
    let server = host.udp(20181);
    let socks = [guest.udp_to(gw(20181)), guest.udp_to(gw(20181))];
    // Each guest flow says hello until the server has seen both (that opens the bindings).
    let hello = task("udp-source", move || {
        server
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut clients: [Option<SocketAddr>; 2] = [None, None];
        let mut buf = [0u8; 16];
        while clients.iter().any(Option::is_none) {
            let (k, from) = server.recv_from(&mut buf).expect("hello from the guest");
            assert_eq!(k, 1, "hello datagram");
            clients[usize::from(buf[0] & 1)] = Some(from);
        }
        let clients = clients.map(Option::unwrap);
        send_streams(|i, d| {
            server
                .send_to(d, clients[i])
                .unwrap_or_else(|e| panic!("host send: {e}"));
        });
    });
    let readers: Vec<Task<String>> = socks
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            task("guest-reader", move || {
                big_rcvbuf(&s, 8 << 20);
                s.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                let flow = i as u32;
                let mut f = FlowRx::new();
                let mut buf = vec![0u8; 65_536];
                let deadline = Instant::now() + Duration::from_secs(120);
                while f.next < PER_FLOW {
                    assert!(
                        Instant::now() < deadline,
                        "flow {flow}: only {} arrived",
                        f.next
                    );
                    if f.next == 0 {
                        s.send(&[i as u8]).unwrap();
                    }
                    match s.recv(&mut buf) {
                        Ok(k) => f.take(flow, &buf[..k]),
                        Err(_) if f.next == 0 => {} // say hello again
                        Err(e) => panic!("flow {flow}: {e} after {} datagrams", f.next),
                    }
                }
                f.hash.hex()
            })
        })
        .collect();
    let t0 = Instant::now();
    let hashes: Vec<String> = readers
        .into_iter()
        .map(|r| r.join(Duration::from_secs(150)))
        .collect();
    hello.join(SETUP_TIMEOUT);
    eprintln!(
        "host->guest: {} datagrams of 8..={MAX_PAYLOAD} B in {:?}",
        2 * PER_FLOW,
        t0.elapsed()
    );
    assert_eq!(hashes[0], stream_hash(0), "flow 0 stream sha256");
    assert_eq!(hashes[1], stream_hash(1), "flow 1 stream sha256");
}

/// Issue 14: a WireGuard-like session (one exchange, then silence without keepalives) must
/// still get the peer's next datagram after 65 s idle (the old binding timeout was 60 s;
/// slirp4netns keeps its bindings 240 s).
#[test]
fn udp_binding_outlives_65_s_idle() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    let server = host.udp(20182);
    let peer = task("udp-late-peer", move || {
        server
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 64];
        let (k, from) = server
            .recv_from(&mut buf)
            .expect("handshake from the guest");
        assert_eq!(&buf[..k], b"handshake");
        server.send_to(b"handshake reply", from).unwrap();
        std::thread::sleep(Duration::from_secs(65));
        server.send_to(b"late datagram", from).unwrap();
    });
    let s = guest.udp_to(gw(20182));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send(b"handshake").unwrap();
    let mut buf = [0u8; 64];
    let k = s.recv(&mut buf).expect("handshake reply");
    assert_eq!(&buf[..k], b"handshake reply");
    s.set_read_timeout(Some(Duration::from_secs(75))).unwrap();
    let k = s
        .recv(&mut buf)
        .expect("the peer's datagram after 65 s idle did not reach the guest");
    assert_eq!(&buf[..k], b"late datagram");
    peer.join(SETUP_TIMEOUT);
}

/// Issue 12: a flood of new destinations (more than the 4096-binding table) must not lock
/// out a new destination, nor the session that was established before it.
#[test]
fn udp_full_table_evicts_instead_of_refusing() {
    if !preflight(&[]) || !tapwire_only("get_stats") {
        return;
    }
    let w = common::api::World::new(&[]);
    let udp_flows = || {
        let s = common::api::ok(&w.sock, r#"{"execute":"get_stats"}"#);
        let open = s.pointer("/flows/udp").and_then(|v| v.as_u64());
        let total = s.pointer("/flows_total/udp").and_then(|v| v.as_u64());
        (open.expect("flows/udp"), total.expect("flows_total/udp"))
    };
    let echo = serve_udp_echo(w.host.udp(20183), Duration::from_secs(5));
    let established = w.guest.udp_to(gw(20183));
    established
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = [0u8; 64];
    let ping = |s: &UdpSocket, what: &str, buf: &mut [u8]| {
        for _ in 0..3 {
            s.send(what.as_bytes()).unwrap();
            if let Ok(k) = s.recv(buf) {
                assert_eq!(&buf[..k], what.as_bytes());
                return true;
            }
        }
        false
    };
    assert!(
        ping(&established, "before", &mut buf),
        "echo before the flood"
    );
    // One-shot datagrams to ports nobody answers on until the table has been full a while
    // (paced: a datagram the TAP queue drops would not make a binding).
    let flood = w
        .guest
        .in_ns(|| UdpSocket::bind("0.0.0.0:0"))
        .expect("flood socket");
    let mut port = 30_000u16;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for _ in 0..32 {
            flood.send_to(b"x", gw(port)).expect("flood send");
            port += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
        if port >= 34_200 {
            let (open, total) = udp_flows();
            if open >= 4096 && total >= 4300 {
                eprintln!(
                    "flood: {} datagrams, {open} bindings open, {total} made",
                    port - 30_000
                );
                break;
            }
            assert!(
                Instant::now() < deadline && port < 60_000,
                "the flood did not fill the table: {open} open, {total} made"
            );
        }
    }
    // A destination the full table has never seen: gets through.
    let fresh = w.guest.udp_to(gw(20183));
    fresh
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    assert!(
        ping(&fresh, "new destination", &mut buf),
        "a new binding was refused: the table is full of the flood's bindings"
    );
    assert!(
        ping(&established, "after", &mut buf),
        "the established binding was evicted by the flood"
    );
    drop(echo);
}
