//! What a hostile guest's TCP flows cost the daemon, end to end.
//!
//! - Stalled flows: the guest opens many connections to a host peer that accepts but never
//!   reads, fills them, and never reads what the peer sends either. The daemon's RSS growth per
//!   flow (VmRSS, real pages, not capacity) must stay within 256 KiB, `get_stats` must count the
//!   buffers (`tcp_buffers`), and everything goes back to the budget when the flows close.
//!   Run with `TAPWIRE_TEST_BIN=slirp4netns` to get slirp4netns' figure for the same load
//!   (reported, not asserted). The daemon runs with its default budget; `TAPWIRE_MEMORY_FLAGS`
//!   adds flags (e.g. `--max-buffer-memory 64M`).
//! - SYN floods to a closed port: the per-destination negative cache answers most SYNs with a
//!   RST without a host connect (`tcp_connects` in `get_stats`), and the port works once it
//!   opens and the refusal has expired.
//!
//! Needs root; see tests/common for the skip policy (TAPWIRE_ALLOW_SKIP=1).

mod common;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::hardening::*;
use common::*;

/// Flows to stall (`TAPWIRE_STALL_FLOWS`).
fn stall_flows() -> usize {
    std::env::var("TAPWIRE_STALL_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// Extra daemon flags of the stalled-flows test (`TAPWIRE_MEMORY_FLAGS`).
fn memory_flags() -> Vec<String> {
    std::env::var("TAPWIRE_MEMORY_FLAGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The goal per stalled flow (slirp4netns pins about 250 KiB).
const MAX_KIB_PER_FLOW: u64 = 256;

fn vm_kib(pid: u32, key: &str) -> u64 {
    status_field(pid, key)
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} of {pid}"))
}

fn get_stats(sock: &Path) -> serde_json::Value {
    let reply = api(sock, r#"{"execute":"get_stats"}"#);
    let v: serde_json::Value =
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("get_stats: {e}: {reply}"));
    v["return"].clone()
}

/// Write until the socket blocks; bytes written.
fn fill(s: &mut TcpStream, chunk: &[u8]) -> usize {
    let mut n = 0;
    loop {
        match s.write(chunk) {
            Ok(0) => return n,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("writing a stalled flow: {e}"),
        }
    }
}

/// Keep filling `streams` until a whole pass writes nothing for `quiet` (or `limit` passes).
fn fill_all(streams: &mut [TcpStream], quiet: Duration, limit: Duration) -> u64 {
    let chunk = vec![0x5au8; 64 << 10];
    let start = Instant::now();
    let mut last_progress = Instant::now();
    let mut total = 0u64;
    while last_progress.elapsed() < quiet && start.elapsed() < limit {
        let n: usize = streams.iter_mut().map(|s| fill(s, &chunk)).sum();
        if n > 0 {
            total += n as u64;
            last_progress = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    total
}

/// The host peer: accepts `n` connections, never reads, fills each, holds them until `stop`.
fn stalling_peer(l: std::net::TcpListener, n: usize, stop: mpsc::Receiver<()>) -> Task<u64> {
    task("stalling peer", move || {
        let mut conns = Vec::new();
        for _ in 0..n {
            let (s, _) = accept_timeout(&l, TRANSFER_TIMEOUT).expect("accept a stalled flow");
            s.set_nonblocking(true).unwrap();
            conns.push(s);
        }
        let sent = fill_all(&mut conns, Duration::from_secs(2), Duration::from_secs(60));
        let _ = stop.recv_timeout(TRANSFER_TIMEOUT);
        sent
    })
}

/// Kernel memory (KiB) of the host-side sockets connected to `port` (the daemon's, since the
/// peer's own sockets have `port` as their local port): what they hold received and unread
/// (`skmem` r) plus written and not yet acknowledged (w), from `ss -tm` in the host namespace.
fn host_socket_kib(host: &HostNs, port: u16) -> (u64, usize) {
    let out = host.sh(&format!("ss -tmnH dst 127.0.0.1:{port}")).ok();
    let mut bytes = 0u64;
    let mut socks = 0;
    for line in out.stdout.lines() {
        let Some(skmem) = line.split("skmem:(").nth(1) else {
            continue;
        };
        socks += 1;
        for field in skmem.trim_end_matches(')').split(',') {
            let (key, value) =
                field.split_at(field.find(|c: char| c.is_ascii_digit()).unwrap_or(0));
            if key == "r" || key == "w" {
                bytes += value.parse::<u64>().unwrap_or(0);
            }
        }
    }
    (bytes >> 10, socks)
}

/// RSS (KiB) once it has not grown for 1 s (at most 20 s).
fn settled_rss(pid: u32) -> u64 {
    let start = Instant::now();
    let mut rss = vm_kib(pid, "VmRSS");
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_secs(1) && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        let now = vm_kib(pid, "VmRSS");
        if now > rss {
            rss = now;
            since = Instant::now();
        }
    }
    rss
}

#[test]
fn stalled_flows_cost_bounded_memory_each() {
    if !preflight(&[]) {
        return;
    }
    let n = stall_flows();
    let host = HostNs::new();
    let guest = host.guest();
    let sock = host.dir.join("api.sock");
    let mut args = vec!["--api-socket".to_owned(), sock.to_str().unwrap().to_owned()];
    args.extend(memory_flags());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = Daemon::start(&host, &guest, DaemonCfg::default().args(&args));
    // Warm up (first-use allocations: the interface, the frame buffers, one flow).
    check_upload(&guest, host.listen(24400), gw(24400), &random_bytes(MB, 1));
    check_download(&guest, host.listen(24401), gw(24401), random_bytes(MB, 2));
    std::thread::sleep(Duration::from_millis(300));
    let rss0 = vm_kib(d.pid(), "VmRSS");

    let (stop_tx, stop_rx) = mpsc::channel();
    let peer = stalling_peer(host.listen(24402), n, stop_rx);
    let mut flows: Vec<TcpStream> = (0..n)
        .map(|i| {
            let s = guest
                .connect(gw(24402), SETUP_TIMEOUT)
                .unwrap_or_else(|e| panic!("connect stalled flow {i}: {e}"));
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let from_guest = fill_all(&mut flows, Duration::from_secs(2), Duration::from_secs(60));
    let rss1 = settled_rss(d.pid());
    let hwm = vm_kib(d.pid(), "VmHWM");
    let per_flow = rss1.saturating_sub(rss0) / n as u64;
    let (kernel_kib, socks) = host_socket_kib(&host, 24402);
    eprintln!(
        "stalled flows ({}, {n} flows, flags {:?}): guest wrote {} KiB; daemon VmRSS {rss0} -> \
         {rss1} KiB (VmHWM {hwm} KiB): {per_flow} KiB per stalled flow",
        bin().display(),
        memory_flags(),
        from_guest >> 10,
    );
    eprintln!(
        "stalled flows: the daemon's {socks} host sockets hold {kernel_kib} KiB of kernel \
         memory: {} KiB per flow",
        kernel_kib / n as u64
    );
    let stats = testing_tapwire().then(|| get_stats(&sock));
    if let Some(s) = &stats {
        eprintln!("get_stats: tcp_buffers {}", s["tcp_buffers"]);
    }
    drop(stop_tx);
    let from_host = peer.join(TRANSFER_TIMEOUT);
    eprintln!("the peer wrote {} KiB", from_host >> 10);
    assert!(
        from_guest > (n as u64) * (64 << 10) && from_host > (n as u64) * (64 << 10),
        "the flows were not filled (guest wrote {from_guest} B, peer {from_host} B)"
    );
    if !testing_tapwire() {
        return; // slirp4netns: the figure is the result.
    }
    assert!(
        per_flow <= MAX_KIB_PER_FLOW,
        "a stalled flow costs {per_flow} KiB of daemon RSS (goal {MAX_KIB_PER_FLOW} KiB): \
         {rss0} -> {rss1} KiB with {n} flows"
    );
    // The kernel side: flows with small rings have small fixed socket buffers (the few with
    // full rings autotune, several MiB each).
    assert_eq!(socks, n, "host sockets to the peer");
    assert!(
        kernel_kib / (n as u64) <= 1024,
        "a stalled flow's host socket holds {} KiB of kernel memory",
        kernel_kib / n as u64
    );
    let s = stats.unwrap();
    let b = &s["tcp_buffers"];
    let num = |k: &str| {
        b[k].as_u64()
            .unwrap_or_else(|| panic!("tcp_buffers.{k} in {s}"))
    };
    assert_eq!(s["flows"]["tcp"].as_u64(), Some(n as u64), "{s}");
    assert!(
        num("budgeted") <= num("max") && num("peak") >= num("budgeted"),
        "{b}"
    );
    // Both directions are stuck in every flow: the rings are really in use, and at least the
    // data queued in them is budgeted.
    assert!(num("in_use") >= (n as u64) * (64 << 10), "{b}");
    assert!(num("in_use") <= num("budgeted"), "{b}");
    if memory_flags().is_empty() {
        // The default budget (at least 64 MiB): 16 MiB for full rings (8 flows of 2 x 1 MiB
        // with offloads, 32 of 2 x 256 KiB without), the others get 2 x 64 KiB.
        assert!(num("flows_shrunk") >= (n as u64).saturating_sub(32), "{b}");
        assert_eq!(num("flows_refused"), 0, "{b}");
    }
    // Closing the flows gives everything back to the budget.
    drop(flows);
    let start = Instant::now();
    let mut s = get_stats(&sock);
    while s["tcp_buffers"]["budgeted"].as_u64() != Some(0) && start.elapsed() < FD_SETTLE {
        std::thread::sleep(Duration::from_millis(100));
        s = get_stats(&sock);
    }
    assert_eq!(
        s["tcp_buffers"]["budgeted"].as_u64(),
        Some(0),
        "budget not given back after the flows closed: {s}"
    );
    // And new flows get full rings again: bulk both ways, intact.
    check_upload(
        &guest,
        host.listen(24403),
        gw(24403),
        &random_bytes(8 * MB, 3),
    );
    check_download(
        &guest,
        host.listen(24404),
        gw(24404),
        random_bytes(8 * MB, 4),
    );
}

/// A budget too small for all the flows refuses the surplus with a RST (counted) and keeps
/// serving once flows close.
#[test]
fn a_spent_budget_refuses_new_flows_with_a_rst() {
    if !preflight(&[]) || !tapwire_only("--max-buffer-memory") {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let sock = host.dir.join("api.sock");
    // 4 MiB: a quarter for full rings (none of 2 x 1 MiB fits with offloads), the rest for
    // 2 x 64 KiB each: 32 flows.
    let d = Daemon::with_args(
        &host,
        &guest,
        &[
            "--api-socket",
            sock.to_str().unwrap(),
            "--max-buffer-memory",
            "4M",
        ],
    );
    let l = host.listen(24410);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        match guest.connect(gw(24410), SETUP_TIMEOUT) {
            Ok(s) => held.push(s),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => refused += 1,
            Err(e) => panic!("connect: {e}"),
        }
    }
    let s = get_stats(&sock);
    eprintln!(
        "4M budget: {} flows, {refused} refused; {}",
        held.len(),
        s["tcp_buffers"]
    );
    let b = &s["tcp_buffers"];
    let budgeted = b["budgeted"].as_u64().unwrap();
    assert!(
        (24..=32).contains(&held.len()) && refused == 40 - held.len(),
        "{} flows, {refused} refused: {s}",
        held.len()
    );
    assert_eq!(b["flows_refused"].as_u64(), Some(refused as u64), "{s}");
    assert!(b["flows_shrunk"].as_u64().unwrap() >= 24, "{s}");
    assert!(
        budgeted <= 4 << 20 && budgeted + (128 << 10) > 4 << 20,
        "{s}"
    );
    // The accepted connections are still pending in the listener's backlog; close ours.
    drop(held);
    drop(l);
    let start = Instant::now();
    while get_stats(&sock)["tcp_buffers"]["budgeted"].as_u64() != Some(0)
        && start.elapsed() < FD_SETTLE
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        get_stats(&sock)["tcp_buffers"]["budgeted"].as_u64(),
        Some(0),
        "budget not given back"
    );
    check_upload(
        &guest,
        host.listen(24411),
        gw(24411),
        &random_bytes(4 * MB, 5),
    );
    drop(d);
}

/// Python helpers for raw frames on tap0 (see tests/tap_mode_hostile.rs).
const PY_FRAMES: &str = include_str!("py/tap_mode_frames.py");
/// argv: destination ip, port, count, first source port, seconds to wait for the RSTs.
const PY_SYN_FLOOD: &str = include_str!("py/tap_mode_syn_flood.py");

/// How long fds and flows may take to settle after a burst.
const FD_SETTLE: Duration = Duration::from_secs(10);

fn py_fields(out: &Out) -> std::collections::HashMap<String, u64> {
    out.stdout
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

#[test]
fn syn_flood_to_a_closed_port_costs_few_host_connects() {
    if !preflight(&["python3"]) || !tapwire_only("get_stats tcp_connects") {
        return;
    }
    const N: u64 = 2000;
    const PORT: u16 = 24420;
    let host = HostNs::new();
    let guest = host.guest();
    let sock = host.dir.join("api.sock");
    let mut d = Daemon::with_args(&host, &guest, &["--api-socket", sock.to_str().unwrap()]);
    let fds0 = d.fd_count();
    let before = get_stats(&sock)["tcp_connects"]["started"]
        .as_u64()
        .expect("tcp_connects.started");
    let start = Instant::now();
    let out = guest
        .python(
            &format!("{PY_FRAMES}{PY_SYN_FLOOD}"),
            &["10.0.2.2", &PORT.to_string(), &N.to_string(), "30000", "20"],
            Duration::from_secs(60),
        )
        .ok();
    let f = py_fields(&out);
    let s = get_stats(&sock);
    let started = s["tcp_connects"]["started"].as_u64().unwrap() - before;
    let cached = s["tcp_connects"]["refused_cached"].as_u64().unwrap();
    eprintln!(
        "syn flood to a closed port: {} in {:?}; host connects {started}, answered from the \
         refused cache {cached}",
        out.stdout.trim(),
        start.elapsed()
    );
    assert_eq!(f["sent"], N, "{out}");
    assert_eq!(f["other"], 0, "non-RST answers: {out}");
    let delivered = N - f["dropped"];
    assert!(delivered >= N / 2, "the TAP queue dropped most SYNs: {out}");
    assert!(
        f["rst"] >= delivered * 99 / 100,
        "only {} of {delivered} SYNs answered with a RST: {out}",
        f["rst"]
    );
    // Without the cache every delivered SYN costs a connect; with it, about one per TTL plus
    // the SYNs that arrive while the first refusals are in flight.
    assert!(
        started * 10 <= delivered,
        "{started} host connects for {delivered} SYNs to a closed port"
    );
    assert!(cached + started >= delivered * 99 / 100, "{s}");
    assert!(
        d.wait_timeout(Duration::ZERO).is_none(),
        "daemon died; {}",
        d.describe()
    );
    let settle = Instant::now();
    while d.fd_count() > fds0 && settle.elapsed() < FD_SETTLE {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        d.fd_count() <= fds0,
        "daemon fds {} > {fds0} after the flood",
        d.fd_count()
    );
    // The port opens: once the refusal has expired (1.5 s), connections work, intact.
    let listener = host.listen(PORT);
    std::thread::sleep(Duration::from_millis(1600));
    check_upload(&guest, listener, gw(PORT), &random_bytes(MB, 6));
    // Another closed port is refused normally, counted as a connect.
    match guest.connect(gw(PORT + 1), SETUP_TIMEOUT) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => panic!("connect to a closed port: {other:?}"),
    }
}
