//! TCP back-pressure through the engine, both ways: a guest that stops ACKing (then closes
//! its window) stops the engine sending and, through the rings, the host writer; a host
//! that stops reading closes the engine's window to the guest. Data stays intact.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::frames::pattern;
use crate::guest_tcp::Conn;
use crate::harness::{deadline, Harness};
use crate::tcp::{accept, listener};

const TOTAL: usize = 4 << 20;

#[test]
fn tcp_backpressure_slow_guest() {
    let h = Harness::start();
    h.arp_gateway();
    let (l, port) = listener();
    const W: u32 = 8192;
    let mut c = Conn::connect_wnd(&h, 40101, h.gateway_at(port), W as u16);
    let mut host = accept(&l);
    socket2::SockRef::from(&host)
        .set_send_buffer_size(64 << 10)
        .unwrap();
    host.set_write_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let data = pattern(TOTAL, 11);
    let progress = Arc::new(AtomicUsize::new(0));
    let (sent, prog) = (data.clone(), progress.clone());
    let writer = std::thread::spawn(move || {
        for chunk in sent.chunks(16 << 10) {
            host.write_all(chunk).expect("host write");
            prog.fetch_add(chunk.len(), Ordering::SeqCst);
        }
    });
    // Phase 1: the guest ACKs but its application does not read: the window it advertises
    // shrinks to 0 at 8 KiB past the start. The engine fills it, and sends no more.
    let start = c.rcv_nxt;
    c.app_stalled = true;
    let ok = c.pump_until(deadline(), |c| c.rcv_nxt.wrapping_sub(start) >= W);
    assert!(
        ok,
        "engine did not fill the window ({} bytes)",
        c.received.len()
    );
    // ... and stops reading the host: the host writer blocks.
    let until = deadline();
    let (mut last, mut since) = (progress.load(Ordering::SeqCst), Instant::now());
    loop {
        c.pump_until(Instant::now() + Duration::from_millis(50), |_| false);
        let sent = c.highest_end.wrapping_sub(start);
        assert!(
            sent <= W + 1,
            "engine sent {sent} bytes into a {W}-byte window (probe: 1)"
        );
        let p = progress.load(Ordering::SeqCst);
        if p != last {
            (last, since) = (p, Instant::now());
        } else if since.elapsed() > Duration::from_millis(500) {
            break;
        }
        assert!(Instant::now() < until, "host writes never blocked");
    }
    assert!(last < TOTAL, "host wrote everything into a stalled guest");
    // Phase 2: the guest stops ACKing altogether: still nothing new, the host still blocked.
    c.acking = false;
    c.pump_until(Instant::now() + Duration::from_millis(500), |_| false);
    let sent = c.highest_end.wrapping_sub(start);
    assert!(sent <= W + 1, "engine sent {sent} bytes to a silent guest");
    assert_eq!(
        progress.load(Ordering::SeqCst),
        last,
        "host unblocked by a silent guest"
    );
    assert_eq!(c.received.len(), W as usize);
    c.acking = true;
    // Phase 3: the application reads: a window update, then everything flows, intact.
    c.app_stalled = false;
    c.wnd = 65_535;
    c.ack_now();
    c.recv_exact(TOTAL, Instant::now() + Duration::from_secs(120));
    writer.join().unwrap();
    assert!(
        c.received == data,
        "host->guest bytes differ after back-pressure"
    );
    assert!(c.rst_received.is_none());
    h.stop();
}

#[test]
fn tcp_backpressure_slow_host() {
    let h = Harness::start();
    h.arp_gateway();
    let (l, port) = listener();
    socket2::SockRef::from(&l)
        .set_recv_buffer_size(16 << 10)
        .unwrap();
    let mut c = Conn::connect(&h, 40102, h.gateway_at(port));
    let mut host = accept(&l);
    let data = pattern(TOTAL, 12);
    // The host does not read: the engine's window to the guest closes.
    let until = deadline();
    while c.min_peer_wnd != 0 {
        assert!(
            Instant::now() < until,
            "window never closed ({} acked)",
            c.acked()
        );
        assert!(c.rst_received.is_none(), "reset while the host is slow");
        c.send_step(&data);
    }
    let acked = c.acked();
    assert!(
        acked < TOTAL,
        "all {TOTAL} bytes accepted by a host that does not read"
    );
    // The host reads: the window reopens and everything arrives.
    host.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        host.read_to_end(&mut got).expect("host read");
        got
    });
    c.reset_min_wnd();
    c.send_all(&data, Instant::now() + Duration::from_secs(120));
    c.send_fin();
    let got = reader.join().unwrap();
    assert_eq!(got.len(), TOTAL);
    assert!(got == data, "guest->host bytes differ after back-pressure");
    h.stop();
}
