//! TCP through the engine: handshake, bulk data both ways, FIN and RST both ways.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use crate::frames::{pattern, ACK, RST, SYN};
use crate::guest_tcp::Conn;
use crate::harness::{deadline, test_net, wait_until, Harness, DEADLINE};

/// A host listener on 127.0.0.1 and its port.
pub fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// The connection the engine made to `l` (waits up to the deadline).
pub fn accept(l: &TcpListener) -> TcpStream {
    l.set_nonblocking(true).unwrap();
    let until = deadline();
    loop {
        match l.accept() {
            Ok((s, peer)) => {
                assert!(peer.ip().is_loopback(), "host connection from {peer}");
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(DEADLINE)).unwrap();
                s.set_write_timeout(Some(DEADLINE)).unwrap();
                return s;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(std::time::Instant::now() < until, "no host connection");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Number of TCP flows the engine holds (control socket `get_stats`).
pub fn tcp_flows(h: &Harness) -> u64 {
    h.api(r#"{"execute":"get_stats"}"#)["flows"]["tcp"]
        .as_u64()
        .expect("flows.tcp")
}

#[test]
fn tcp_handshake_reaches_host_listener() {
    let h = Harness::start();
    h.arp_gateway();
    let (l, port) = listener();
    l.set_nonblocking(true).unwrap();
    let mut c = Conn::syn(&h, 40001, h.gateway_at(port), 65_535);
    let s = c.wait_segment(deadline());
    assert!(s.has(SYN) && s.has(ACK), "SYN-ACK expected: {s:?}");
    assert_eq!(s.ack, c.base, "acknowledges the SYN");
    assert_eq!(s.src, h.gateway_at(port), "from the gateway's port");
    assert!(
        s.mss.is_some_and(|m| (536..=1460).contains(&m)),
        "MSS {:?}",
        s.mss
    );
    // The SYN-ACK is held until the host connect succeeded: the host connection is
    // already in the listener's queue when the guest sees it.
    let (host, peer) = l
        .accept()
        .expect("host connection established before the SYN-ACK");
    assert!(peer.ip().is_loopback());
    c.peer_ws = s.ws.expect("window scale answered");
    c.rcv_nxt = s.seq.wrapping_add(1);
    c.snd_una = c.base;
    c.peer_wnd = u32::from(s.wnd);
    c.ack_now();
    // A byte each way proves the connection is the one just accepted.
    host.set_nonblocking(false).unwrap();
    host.set_read_timeout(Some(DEADLINE)).unwrap();
    c.send_all(b"?", deadline());
    let mut b = [0u8; 1];
    (&host).read_exact(&mut b).unwrap();
    assert_eq!(&b, b"?");
    (&host).write_all(b"!").unwrap();
    c.recv_exact(1, deadline());
    assert_eq!(c.received, b"!");
    h.stop();
}

#[test]
fn tcp_bulk_guest_to_host_1mb() {
    let h = Harness::start();
    h.arp_gateway();
    let (l, port) = listener();
    let mut c = Conn::connect(&h, 40002, h.gateway_at(port));
    let mut host = accept(&l);
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        host.read_to_end(&mut got).expect("host read");
        got
    });
    let data = pattern(1 << 20, 2);
    c.send_all(&data, deadline());
    c.send_fin();
    assert!(
        c.pump_until(deadline(), |c| c.snd_una == c.snd_nxt),
        "FIN not acknowledged"
    );
    let got = reader.join().unwrap();
    assert_eq!(got.len(), data.len(), "bytes at the host");
    assert!(got == data, "guest->host bytes differ");
    h.stop();
}

#[test]
fn tcp_bulk_host_to_guest_1mb() {
    let h = Harness::start();
    h.arp_gateway();
    let (l, port) = listener();
    let mut c = Conn::connect(&h, 40003, h.gateway_at(port));
    let mut host = accept(&l);
    let data = pattern(1 << 20, 3);
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        host.write_all(&sent).expect("host write");
        // Dropping the stream closes it: the guest must get a FIN after the data.
    });
    let ok = c.pump_until(deadline(), |c| c.fin_received);
    assert!(ok, "no FIN after {} bytes", c.received.len());
    writer.join().unwrap();
    assert_eq!(c.received.len(), data.len(), "bytes at the guest");
    assert!(c.received == data, "host->guest bytes differ");
    h.stop();
}

#[test]
fn tcp_guest_fin_is_host_eof() {
    let h = Harness::with(test_net(), true);
    h.arp_gateway();
    let (l, port) = listener();
    let mut c = Conn::connect(&h, 40004, h.gateway_at(port));
    let mut host = accept(&l);
    let msg = pattern(5000, 4);
    c.send_all(&msg, deadline());
    c.send_fin();
    // The host reads the data, then EOF.
    let mut got = Vec::new();
    host.read_to_end(&mut got).expect("host read to EOF");
    assert!(got == msg, "data before the FIN");
    assert!(
        c.pump_until(deadline(), |c| c.snd_una == c.snd_nxt),
        "FIN not ACKed"
    );
    // Half-close: the host can still answer, then close; the guest gets both.
    host.write_all(b"late reply").unwrap();
    host.shutdown(Shutdown::Write).unwrap();
    assert!(
        c.pump_until(deadline(), |c| c.fin_received),
        "no FIN from the host side"
    );
    assert_eq!(c.received, b"late reply");
    assert!(c.rst_received.is_none());
    // Both FINs done: the engine forgets the flow.
    wait_until("the flow to be removed", || tcp_flows(&h) == 0);
    drop(host);
    h.stop();
}

#[test]
fn tcp_host_close_is_guest_fin() {
    let h = Harness::with(test_net(), true);
    h.arp_gateway();
    let (l, port) = listener();
    let mut c = Conn::connect(&h, 40005, h.gateway_at(port));
    let mut host = accept(&l);
    host.write_all(b"goodbye").unwrap();
    drop(host);
    assert!(c.pump_until(deadline(), |c| c.fin_received), "no FIN");
    assert_eq!(c.received, b"goodbye", "data before the FIN");
    assert_eq!(tcp_flows(&h), 1, "half-closed flow still there");
    c.send_fin();
    // The ACK of our FIN is checked by `tcp_last_fin_is_acked`.
    wait_until("the flow to be removed", || tcp_flows(&h) == 0);
    h.stop();
}

/// The ACK of the guest's FIN, when the host closed first, must go out. The engine removes
/// the flow in the same pump that sees the FIN (smoltcp in TIME-WAIT, ring empty, `guest_fin`
/// set: `Outcome::Remove`); `service_flow` lets smoltcp transmit the ACK it queued first (it
/// did not, once: no ACK ever reached the guest).
#[test]
fn tcp_last_fin_is_acked() {
    let h = Harness::start();
    h.arp_gateway();
    let (l, port) = listener();
    let mut c = Conn::connect(&h, 40010, h.gateway_at(port));
    drop(accept(&l));
    assert!(c.pump_until(deadline(), |c| c.fin_received), "no FIN");
    c.send_fin();
    assert!(c.pump_until(deadline(), |c| c.snd_una == c.snd_nxt
        || c.rst_received.is_some()));
    assert!(
        c.rst_received.is_none(),
        "RST instead of the ACK of our FIN"
    );
    h.stop();
}

#[test]
fn tcp_guest_rst_resets_host() {
    let h = Harness::start();
    h.arp_gateway();
    let (l, port) = listener();
    let mut c = Conn::connect(&h, 40006, h.gateway_at(port));
    let mut host = accept(&l);
    c.send_all(b"x", deadline());
    let mut b = [0u8; 1];
    host.read_exact(&mut b).unwrap();
    c.send_rst();
    let mut rest = Vec::new();
    let err = host
        .read_to_end(&mut rest)
        .expect_err("host must see a reset, not EOF");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert!(rest.is_empty());
    h.stop();
}

#[test]
fn tcp_refused_port_gets_rst() {
    let h = Harness::start();
    h.arp_gateway();
    // A port nobody listens on: bound, then released.
    let port = listener().1;
    let c = Conn::syn(&h, 40007, h.gateway_at(port), 65_535);
    let s = c.wait_segment(deadline());
    assert!(
        s.has(RST) && s.has(ACK) && !s.has(SYN),
        "expected RST|ACK, got {s:?}"
    );
    assert_eq!(s.ack, c.base, "RST acknowledges the SYN");
    assert_eq!(s.seq, 0);
    assert!(s.data.is_empty());
    // Nothing left behind: a fresh listener on another port works at once.
    let (l, port2) = listener();
    let mut c2 = Conn::connect(&h, 40008, h.gateway_at(port2));
    let _host = accept(&l);
    c2.send_all(b"ok", deadline());
    h.stop();
}

#[test]
fn tcp_host_reset_is_guest_rst() {
    let h = Harness::start();
    h.arp_gateway();
    let (l, port) = listener();
    let mut c = Conn::connect(&h, 40009, h.gateway_at(port));
    let host = accept(&l);
    c.send_all(b"ping", deadline());
    let mut b = [0u8; 4];
    (&host).read_exact(&mut b).unwrap();
    socket2::SockRef::from(&host)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(host); // SO_LINGER 0: a RST to the engine
    assert!(
        c.pump_until(deadline(), |c| c.rst_received.is_some()),
        "no RST"
    );
    let rst = c.rst_received.clone().unwrap();
    assert_eq!(rst.seq, c.rcv_nxt, "RST at the next sequence number");
    assert!(!c.fin_received, "reset, not closed");
    h.stop();
}
