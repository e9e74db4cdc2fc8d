//! Port forwarding through the control socket (`add_hostfwd`) and through `-p` (on the daemon
//! and on `tapwire run`), end to end: 20 MB TCP both ways and 20 MB of numbered UDP datagrams
//! through forwards, the client's source address as the guest sees it, removal refusing new
//! connections while established ones finish, and API clients (concurrent or stalled) never
//! disturbing a transfer.
//!
//! Forwarded traffic comes from host-side clients (host loopback, or the peer namespace behind a
//! veth) and is served by sockets created inside the guest namespace. Most tests also run against
//! the original (`TAPWIRE_TEST_BIN=slirp4netns`); the non-blocking server, `-p` and `tapwire run`
//! are tapwire-only. Needs root; see tests/common for the skip policy (TAPWIRE_ALLOW_SKIP=1).

mod common;

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::*;
use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

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
