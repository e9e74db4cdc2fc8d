//! tapwire's control-socket additions `list_connections` and `get_stats`, end to end: flows are
//! listed with their byte counts, and the counters count frames, drops (malformed frames sent
//! from the guest's tap0 by tests/py/api_bad_frames.py), flows and forwards; short connections
//! in a row reuse finished flows' sockets (`tcp_connects/sockets_reused`) and each sees only
//! its own bytes.
//!
//! tapwire-only. Needs root; see tests/common for the skip policy (TAPWIRE_ALLOW_SKIP=1).

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::*;
use common::*;
use serde_json::Value;

// =============================================================================================
// 2. list_connections and get_stats.
// =============================================================================================

/// Send frames the daemon must drop, from the guest's tap0 (AF_PACKET): argv = number of
/// IPv4 frames with a bad header checksum, of frames with an unknown ethertype, of frames to
/// a foreign unicast MAC.
const PY_BAD_FRAMES: &str = include_str!("py/api_bad_frames.py");

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
// 3. Spare sockets: short connections in a row reuse finished flows' sockets and rings, and
//    each sees exactly its own bytes.
// =============================================================================================

#[test]
fn sequential_short_connections_reuse_sockets_without_stale_bytes() {
    if !preflight(&[]) || !tapwire_only("get_stats tcp_connects") {
        return;
    }
    let w = World::new(&[]);
    const N: usize = 24;
    // Long and short exchanges alternate: a reused ring that still showed the previous flow's
    // bytes would make a short exchange come out long or wrong.
    let len = |i: usize, dir: usize| {
        if i % 2 == 0 {
            2000 + 100 * dir
        } else {
            7 + dir
        }
    };
    let l = w.host.listen(21220);
    // Host: read each request to EOF, answer, close.
    let server = task("reuse-server", move || {
        let mut got = Vec::new();
        for i in 0..N {
            let (mut s, _) = accept_timeout(&l, SETUP_TIMEOUT).expect("accept");
            let mut req = Vec::new();
            s.read_to_end(&mut req).expect("read the request");
            s.write_all(&random_bytes(len(i, 1), 1000 + i as u64))
                .unwrap();
            got.push(req);
        }
        got
    });
    let before = u(&stats(&w.sock), "/tcp_connects/sockets_reused");
    for i in 0..N {
        let mut c = w
            .guest
            .connect((GATEWAY, 21220), SETUP_TIMEOUT)
            .expect("guest connect");
        c.write_all(&random_bytes(len(i, 0), i as u64)).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        c.read_to_end(&mut reply).expect("read the reply");
        assert!(
            reply == random_bytes(len(i, 1), 1000 + i as u64),
            "connection {i}: reply of {} bytes, expected {}",
            reply.len(),
            len(i, 1)
        );
    }
    let got = server.join(TRANSFER_TIMEOUT);
    for (i, req) in got.iter().enumerate() {
        assert!(
            *req == random_bytes(len(i, 0), i as u64),
            "connection {i}: host got {} bytes, expected {}",
            req.len(),
            len(i, 0)
        );
    }
    // The flows' removal races the next SYN only at the end of the exchange: most are reused.
    let t0 = Instant::now();
    let reused = loop {
        let r = u(&stats(&w.sock), "/tcp_connects/sockets_reused") - before;
        if r >= N as u64 / 2 || t0.elapsed() > Duration::from_secs(2) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("{reused} of {N} sequential connections reused a spare socket");
    assert!(
        reused >= N as u64 / 2,
        "{reused} of {N} sequential short connections reused a finished flow's socket"
    );
    assert!(u(&stats(&w.sock), "/tcp_connects/sockets_spare") <= 16);
}
