//! Hardening under load, end to end: short soak runs (many short connections, many concurrent
//! ones; the daemon's fds and memory settle back) and floods of raw frames from the guest that
//! leave a bulk transfer and the daemon's memory alone, and a guest that stops reading costs
//! bounded memory. The long versions are `scripts/soak.sh`, which runs this test binary.
//! Confinement is tests/hardening_confinement.rs, faults tests/hardening_faults.rs.
//!
//! Everything runs in the private namespaces of tests/common (root needed). Floods are raw
//! frames (built in tests/common/hardening.rs, see `FrameKit`) written on the guest's tap0 through
//! an AF_PACKET socket inside the guest namespace. Sizes and rates come from `TAPWIRE_SOAK_*` and
//! `TAPWIRE_FLOOD_*` variables with small defaults for CI; `scripts/soak.sh` raises them.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use common::hardening::*;
use common::*;

// ---- soak (short here; scripts/soak.sh runs the long ones) ------------------------------------

fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn raise_nofile() {
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Host side of the soak: `ports` listeners, each connection's data is read to EOF and answered
/// with its sha256. Runs until `stop`.
fn hash_servers(
    host: &HostNs,
    port0: u16,
    ports: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<Task<u64>> {
    (0..ports)
        .map(|i| {
            let l = host.listen(port0 + i);
            l.set_nonblocking(true).unwrap();
            let stop = stop.clone();
            task("hash-server", move || {
                let mut served = 0;
                let mut workers = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            s.set_nonblocking(false).unwrap();
                            set_timeouts(&s);
                            served += 1;
                            workers.push(std::thread::spawn(move || {
                                if let Ok((_, h)) = read_hash(&mut s) {
                                    let _ = s.write_all(h.as_bytes());
                                }
                            }));
                            if workers.len() > 256 {
                                for w in workers.drain(..128) {
                                    let _ = w.join();
                                }
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
                for w in workers {
                    let _ = w.join();
                }
                served
            })
        })
        .collect()
}

/// One checked exchange: send `data`, half-close, expect its sha256 back.
fn exchange(target: SocketAddr, data: &[u8]) -> Result<(), String> {
    let mut c = std::net::TcpStream::connect_timeout(&target, SETUP_TIMEOUT)
        .map_err(|e| format!("connect: {e}"))?;
    set_timeouts(&c);
    c.write_all(data).map_err(|e| format!("write: {e}"))?;
    c.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut got = String::new();
    c.read_to_string(&mut got)
        .map_err(|e| format!("read: {e}"))?;
    if got != sha256_hex(data) {
        return Err(format!("sha256 mismatch: {got:?}"));
    }
    Ok(())
}

/// Wait up to `within` for the daemon's fd count to return to `fds0`; (fds, rss KiB) after.
fn settle(d: &Daemon, fds0: usize, within: Duration) -> (usize, u64) {
    let start = Instant::now();
    while d.fd_count() > fds0 && start.elapsed() < within {
        std::thread::sleep(Duration::from_millis(100));
    }
    (d.fd_count(), rss_kib(d.pid()))
}

/// Short connections, sha256-checked; `TAPWIRE_SOAK_CONNS` (default 3000) of them over
/// `TAPWIRE_SOAK_WORKERS` (default 8) guest threads. The daemon's fds and RSS come back.
#[test]
fn soak_short_connections() {
    if !preflight(&[]) {
        return;
    }
    let total = env_count("TAPWIRE_SOAK_CONNS", 3000);
    let workers = env_count("TAPWIRE_SOAK_WORKERS", 8);
    raise_nofile();
    let host = HostNs::new();
    let guest = host.guest();
    // Many 4-tuples and quick TIME_WAIT reuse on both sides, so a million connections fit.
    host.sh("sysctl -qw net.ipv4.ip_local_port_range='1024 65535' net.ipv4.tcp_tw_reuse=1")
        .ok();
    guest
        .sh(
            "sysctl -qw net.ipv4.ip_local_port_range='1024 65535' net.ipv4.tcp_tw_reuse=1",
            SETUP_TIMEOUT,
        )
        .ok();
    let d = Daemon::start(&host, &guest, sandboxed());
    const PORTS: u16 = 16;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let servers = hash_servers(&host, 24000, PORTS, stop.clone());
    // Warm up (allocator, tables), then take the baseline.
    guest.in_ns(|| exchange(gw(24000), b"warm-up")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (fds0, rss0) = (d.fd_count(), rss_kib(d.pid()));
    let start = Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let done = done.clone();
                let guest = &guest;
                s.spawn(move || {
                    guest.in_ns(|| {
                        let mut fails = Vec::new();
                        let mut i = w;
                        while i < total {
                            let len = 1 + (i * 7919) % 8192;
                            let data = random_bytes(len, i as u64);
                            let port = 24000 + (i % PORTS as usize) as u16;
                            if let Err(e) = exchange(gw(port), &data) {
                                fails.push(format!("#{i}: {e}"));
                                if fails.len() > 20 {
                                    break;
                                }
                            }
                            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            i += workers;
                        }
                        fails
                    })
                })
            })
            .collect();
        let mut last = 0;
        while handles.iter().any(|h| !h.is_finished()) {
            std::thread::sleep(Duration::from_millis(200));
            let n = done.load(std::sync::atomic::Ordering::Relaxed);
            if n / 100_000 != last / 100_000 {
                eprintln!(
                    "{n} connections, {:?}, daemon fds {} rss {} KiB",
                    start.elapsed(),
                    d.fd_count(),
                    rss_kib(d.pid())
                );
            }
            last = n;
        }
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let peak = rss_kib(d.pid());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served: u64 = servers.into_iter().map(|t| t.join(SETUP_TIMEOUT)).sum();
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let (fds, rss) = settle(&d, fds0, Duration::from_secs(30));
    eprintln!(
        "soak: {total} short connections in {secs:.1} s ({:.0}/s), {served} served; \
         daemon fds {fds0} -> {fds}, RSS {rss0} -> peak {peak} -> {rss} KiB",
        total as f64 / secs
    );
    assert!(fds <= fds0, "fds not back to baseline: {fds0} -> {fds}");
    assert!(
        rss <= rss0 + 16 * 1024,
        "RSS not back near baseline: {rss0} -> {rss} KiB"
    );
}

/// argv: port, n. Accepts n connections on 127.0.0.1:port, then answers each (a u32 length
/// and that many bytes) with the sha256 hex of the bytes, then waits for every client to close.
const PY_HASH_SERVER: &str = include_str!("py/hardening_hash_server.py");

/// `TAPWIRE_SOAK_CONCURRENT` (default 1000) connections open at once, each with a
/// sha256-checked exchange; fds and RSS back to baseline once they close.
#[test]
fn soak_concurrent_connections() {
    if !preflight(&["python3"]) {
        return;
    }
    let n = env_count("TAPWIRE_SOAK_CONCURRENT", 1000);
    raise_nofile();
    let host = HostNs::new();
    let guest = host.guest();
    let d = Daemon::start(&host, &guest, sandboxed());
    // Warm up the daemon, then take the baseline.
    check_upload(&guest, host.listen(24101), gw(24101), b"warm-up");
    std::thread::sleep(Duration::from_millis(500));
    let (fds0, rss0) = (d.fd_count(), rss_kib(d.pid()));
    // Two rounds: the first may grow the daemon's tables to their high-water mark (kept, like
    // any Vec's capacity); the second must not add anything.
    let mut after = Vec::new();
    for round in 0..2u16 {
        let port = 24110 + round;
        // The host side is a separate process: n connections are 2n fds otherwise.
        let mut cmd = host.cmd("python3");
        cmd.args(["-c", PY_HASH_SERVER, &port.to_string(), &n.to_string()])
            .stdout(std::process::Stdio::piped());
        let mut server = Proc::spawn(&mut cmd);
        let mut ready = [0u8; 6];
        let out = server.child.stdout.as_mut().unwrap();
        out.read_exact(&mut ready).expect("hash server ready");
        let start = Instant::now();
        let mut clients = guest.in_ns(|| {
            (0..n)
                .map(|i| {
                    let c = std::net::TcpStream::connect_timeout(&gw(port), SETUP_TIMEOUT)
                        .unwrap_or_else(|e| panic!("connect #{i}: {e}"));
                    set_timeouts(&c);
                    c
                })
                .collect::<Vec<_>>()
        });
        let open_fds = d.fd_count();
        let rss_open = rss_kib(d.pid());
        let payload = |i: usize| random_bytes(1 + i % 3000, (i as u64) << 8 | u64::from(round));
        for (i, c) in clients.iter_mut().enumerate() {
            let data = payload(i);
            c.write_all(&(data.len() as u32).to_be_bytes()).unwrap();
            c.write_all(&data).unwrap();
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let mut h = [0u8; 64];
            c.read_exact(&mut h).unwrap();
            let want = sha256_hex(&payload(i));
            assert_eq!(std::str::from_utf8(&h).unwrap(), want, "connection #{i}");
        }
        let secs = start.elapsed().as_secs_f64();
        drop(clients);
        let st = server.child.wait().unwrap();
        assert!(st.success(), "hash server: {st}");
        let (fds, rss) = settle(&d, fds0, Duration::from_secs(30));
        eprintln!(
            "soak: {n} concurrent connections (round {round}) in {secs:.1} s; daemon fds \
             {fds0} -> {open_fds} -> {fds}, RSS {rss0} -> {rss_open} (all open) -> {rss} KiB"
        );
        assert!(
            open_fds >= fds0 + n * 9 / 10,
            "connections were not concurrent"
        );
        assert!(fds <= fds0, "fds not back to baseline: {fds0} -> {fds}");
        after.push(rss);
    }
    // High-water capacity of the flow tables and smoltcp's socket set: ~1.5 KiB per flow.
    let capacity = 16 * 1024 + 2 * n as u64;
    assert!(
        after[0] <= rss0 + capacity,
        "RSS after {n} flows closed: {rss0} -> {} KiB",
        after[0]
    );
    assert!(
        after[1] <= after[0] + 2 * 1024,
        "RSS grew across rounds (a leak): {} -> {} KiB",
        after[0],
        after[1]
    );
}

// ---- floods ---------------------------------------------------------------------------------

/// Upload `mb` MB from the guest; MB/s.
fn upload_rate(guest: &Guest, host: &HostNs, port: u16, mb: usize) -> f64 {
    let data = random_bytes(mb * MB, port as u64);
    let start = Instant::now();
    check_upload(guest, host.listen(port), gw(port), &data);
    (mb as f64) / start.elapsed().as_secs_f64()
}

/// A SYN flood (to closed ports and to a neighbour that never answers), a UDP flood to many
/// ports and an ICMP error storm, all from the guest, while a bulk transfer runs: the transfer
/// keeps at least half its throughput, the daemon's memory stays bounded, the caps count.
#[test]
fn floods_from_the_guest_leave_bulk_transfer_and_memory_alone() {
    if !preflight(&[]) {
        return;
    }
    // Frames per second of each of the four flooders (the long run in scripts/soak.sh uses more).
    // 1200 each: at 2500 each the four injectors, the uploader and the daemon saturate this
    // 2-core machine kind (kernel 6.18), and the transfer fell to 15-38% with main's binary
    // too; with 1200 each the comparison is about the daemon again (63-74%).
    let rate = env_count("TAPWIRE_FLOOD_RATE", 1200);
    let mb = env_count("TAPWIRE_FLOOD_MB", 100);
    let host = HostNs::new();
    let guest = host.guest();
    let _peer = host.peer();
    let sock = host.dir.join("api.sock");
    let mut d = Daemon::start(
        &host,
        &guest,
        sandboxed().args(&["--api-socket", sock.to_str().unwrap()]),
    );
    let rss0 = rss_kib(d.pid());
    let max = Duration::from_secs(120);
    let mut kit = FrameKit::new(&guest);
    let gw_ip = GATEWAY;
    let silent = Ipv4Addr::new(192, 168, 77, 99); // on the peer's link; never answers ARP
    let n = 16_384usize;
    let mut seq = 1u32;
    let kinds: Vec<(&str, Vec<Vec<u8>>)> = vec![
        // SYNs to closed host ports: each a host connect refused, a RST back.
        (
            "syn to closed ports",
            (0..n)
                .map(|i| {
                    seq = seq.wrapping_mul(2_654_435_761).wrapping_add(1);
                    kit.syn(
                        gw_ip,
                        1024 + (i % 60_000) as u16,
                        30_000 + (i % 20_000) as u16,
                        seq,
                    )
                })
                .collect(),
        ),
        // SYNs to a host that never answers: pending handshakes (capped).
        (
            "syn to a silent host",
            (0..n)
                .map(|i| {
                    kit.syn(
                        silent,
                        1024 + (i % 60_000) as u16,
                        1 + (i % 5000) as u16,
                        i as u32,
                    )
                })
                .collect(),
        ),
        // UDP to many ports: one binding each (capped).
        (
            "udp to many ports",
            (0..n)
                .map(|i| {
                    kit.udp(
                        gw_ip,
                        1024 + (i % 60_000) as u16,
                        40_000 + (i % 10_000) as u16,
                        200,
                    )
                })
                .collect(),
        ),
        // ICMP errors from the guest.
        (
            "icmp error storm",
            (0..1024).map(|i| kit.icmp_error(gw_ip, i)).collect(),
        ),
    ];
    // TAPWIRE_FLOOD_KINDS: which of them (comma-separated indices), default all.
    let pick = std::env::var("TAPWIRE_FLOOD_KINDS").unwrap_or_default();
    let kinds: Vec<(&str, Vec<Vec<u8>>)> = kinds
        .into_iter()
        .enumerate()
        .filter(|(i, _)| pick.is_empty() || pick.split(',').any(|p| p == i.to_string()))
        .map(|(_, k)| k)
        .collect();
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let pid = d.pid();
        let sampling = sampling.clone();
        task("rss-sampler", move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if let Some(v) = s.lines().find_map(|l| l.strip_prefix("VmRSS:")) {
                        peak =
                            peak.max(v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0));
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    // This machine is shared and noisy (other tests run beside this one), so throughput alone
    // and under the floods is measured back to back, best of two each way, and a comparison
    // that fails is made again, up to 3 times, before it counts: floods that really starve the
    // transfer fail every attempt.
    let mut peak = 0;
    let mut attempts: Vec<(f64, f64)> = Vec::new();
    for attempt in 0..3u16 {
        if attempt > 0 {
            // Let the last floods' leftovers (pending connects, UDP bindings) settle first.
            std::thread::sleep(Duration::from_secs(5));
        }
        let port = 24200 + 4 * attempt;
        let base =
            upload_rate(&guest, &host, port, mb).max(upload_rate(&guest, &host, port + 1, mb));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let floods: Vec<(&str, Task<u64>)> = kinds
            .iter()
            .map(|(what, frames)| {
                let t = flood(
                    tap_injector(&guest),
                    frames.clone(),
                    rate,
                    stop.clone(),
                    max,
                );
                (*what, t)
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        peak = peak.max(rss_kib(d.pid()));
        let cpu0 = (cpu_ticks(d.pid()), Instant::now());
        let flooded =
            upload_rate(&guest, &host, port + 2, mb).max(upload_rate(&guest, &host, port + 3, mb));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let cpu = (cpu_ticks(d.pid()) - cpu0.0) as f64 / cpu0.1.elapsed().as_secs_f64();
        let outs: Vec<String> = floods
            .into_iter()
            .map(|(what, t)| format!("{what}: {} frames", t.join(SETUP_TIMEOUT)))
            .collect();
        eprintln!("floods (attempt {attempt}): {outs:#?}");
        eprintln!(
            "bulk upload: {base:.0} MB/s alone, {flooded:.0} MB/s under floods ({:.0}%, daemon CPU {cpu:.0}%)",
            100.0 * flooded / base
        );
        attempts.push((base, flooded));
        if flooded >= base * 0.5 {
            break;
        }
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    peak = peak.max(sampler.join(SETUP_TIMEOUT));
    let stats = api(&sock, r#"{"execute":"get_stats"}"#);
    eprintln!("RSS {rss0} -> peak {peak} KiB");
    eprintln!("stats: {stats}");
    assert!(
        d.wait_timeout(Duration::ZERO).is_none(),
        "daemon died under the floods"
    );
    assert!(
        attempts
            .iter()
            .any(|(base, flooded)| *flooded >= base * 0.5),
        "bulk throughput fell below half under the floods in every attempt (MB/s alone, under \
         floods): {attempts:.0?}"
    );
    assert!(
        peak < rss0 + 256 * 1024,
        "RSS grew by more than 256 MiB under the floods: {rss0} -> {peak} KiB"
    );
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let r = &v["return"];
    assert!(
        r["flows"]["udp"].as_u64().unwrap() <= 4096,
        "UDP flow cap: {stats}"
    );
    assert!(
        r["flows"]["tcp_connecting"].as_u64().unwrap() <= 1024,
        "pending handshake cap: {stats}"
    );
    // And it all works afterwards.
    check_download(
        &guest,
        host.listen(24202),
        gw(24202),
        random_bytes(8 * MB, 3),
    );
}

/// Guests that stop reading: the host keeps sending into 20 connections whose guest side reads
/// nothing. TCP flow control must hold the data on the host (its socket buffers), not in the
/// daemon: RSS stays within the flows' fixed rings. Then the guest reads everything, intact.
#[test]
fn a_guest_that_stops_reading_costs_bounded_memory() {
    if !preflight(&[]) {
        return;
    }
    const FLOWS: usize = 20;
    let size = env_count("TAPWIRE_STALL_MB", 8) * MB;
    let host = HostNs::new();
    let guest = host.guest();
    let d = Daemon::start(&host, &guest, sandboxed());
    check_upload(&guest, host.listen(24300), gw(24300), b"warm-up");
    let rss0 = rss_kib(d.pid());
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for i in 0..FLOWS {
        let port = 24301 + i as u16;
        let data = std::sync::Arc::new(random_bytes(size, port.into()));
        servers.push((sha256_hex(&data), serve_source(host.listen(port), data)));
        clients.push(guest.connect(gw(port), SETUP_TIMEOUT).unwrap());
    }
    // Nobody reads for 3 s while the servers push.
    std::thread::sleep(Duration::from_secs(3));
    let stalled = rss_kib(d.pid());
    let stats = d.rchar();
    std::thread::sleep(Duration::from_secs(1));
    let moved = d.rchar() - stats;
    eprintln!(
        "stalled guest: daemon RSS {rss0} -> {stalled} KiB with {FLOWS} blocked flows; \
         {moved} bytes read by the daemon in the last second"
    );
    // Each flow's rings are 2 x 256 KiB; allow them fully used plus slack.
    assert!(
        stalled <= rss0 + (FLOWS as u64) * 512 + 16 * 1024,
        "RSS grew beyond the flows' rings: {rss0} -> {stalled} KiB"
    );
    assert!(
        moved < 4 * MB as u64,
        "the daemon kept reading {moved} B/s from hosts while the guest read nothing"
    );
    // Now read it all.
    let readers: Vec<Task<(u64, String)>> = clients
        .into_iter()
        .map(|mut c| task("reader", move || read_hash(&mut c).unwrap()))
        .collect();
    for ((want, server), reader) in servers.into_iter().zip(readers) {
        let (n, got) = reader.join(TRANSFER_TIMEOUT);
        server.join(TRANSFER_TIMEOUT);
        assert_eq!((n, got), (size as u64, want));
    }
}
