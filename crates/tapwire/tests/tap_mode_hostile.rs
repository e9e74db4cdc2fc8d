//! Tap mode against a hostile guest, end to end: malformed and garbage frames written on tap0
//! (tests/py/tap_mode_frames.py + tap_mode_garbage.py) do not hurt the daemon, a SYN flood
//! (tap_mode_syn_flood.py) leaves service for others, and pending host connects (to a blackhole)
//! neither spin nor block service.
//!
//! Needs root; see tests/common for the skip policy (TAPWIRE_ALLOW_SKIP=1).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::tap_mode::*;
use common::*;

// ---- 19. hostile frames from the guest ------------------------------------------------------

/// Python helpers for crafting frames on the guest's tap0 (AF_PACKET; the guest is root of its
/// own user namespace). `send()` paces itself so the TAP queue (500 frames or more) does not
/// overflow: it keeps at most 250 of its frames unread by the daemon (tap0's tx_packets count
/// the frames its reader took), however slowly the daemon is scheduled on a loaded machine. A
/// daemon that reads nothing for 5 s ends the pacing, so its frames get dropped and the test's
/// checks see that.
const PY_FRAMES: &str = include_str!("py/tap_mode_frames.py");

/// ~2000 malformed or hostile frames. argv: seed, a listening host port, a closed host port.
const PY_GARBAGE: &str = include_str!("py/tap_mode_garbage.py");

/// `key=value` fields of the scripts' last output line.
fn py_fields(out: &Out) -> std::collections::HashMap<String, u64> {
    out.stdout
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))
        .collect()
}

/// Host task: accept and drop connections on `l` until `stop` says so.
fn accept_and_drop(l: std::net::TcpListener, stop: std::sync::mpsc::Receiver<()>) -> Task<usize> {
    task("accept-and-drop", move || {
        l.set_nonblocking(true).unwrap();
        let mut n = 0;
        let start = Instant::now();
        while stop.try_recv().is_err() && start.elapsed() < TRANSFER_TIMEOUT {
            match l.accept() {
                Ok(_) => n += 1,
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        n
    })
}

#[test]
fn malformed_frames_do_not_hurt() {
    if !preflight(&["python3"]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let mut d = Daemon::with_args(&host, &guest, &[]);
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    let acceptor = accept_and_drop(host.listen(20180), stop_rx);
    let read_before = d.rchar();
    let out = guest
        .python(
            &format!("{PY_FRAMES}{PY_GARBAGE}"),
            &["20180", "20180", "20181"],
            Duration::from_secs(30),
        )
        .ok();
    let f = py_fields(&out);
    eprintln!("garbage: {} {}", out.stdout.trim(), out.stderr.trim());
    // Give the daemon time to read what is still queued (the check below is the real one).
    let mut consumed = d.rchar() - read_before;
    let waited = Instant::now();
    while consumed < f["bytes"] / 2 && waited.elapsed() < SETUP_TIMEOUT {
        std::thread::sleep(Duration::from_millis(50));
        consumed = d.rchar() - read_before;
    }
    assert!(
        d.wait_timeout(Duration::ZERO).is_none(),
        "daemon died from malformed frames ({}); {}",
        out.stderr.trim(),
        d.describe()
    );
    // Sending fails (ENXIO) once tap0 has no reader left, i.e. the daemon died.
    assert!(f["sent"] >= 1900, "frames actually sent: {out}");
    assert!(
        consumed >= f["bytes"] / 2,
        "the daemon read only {consumed} B of the {} B of frames sent",
        f["bytes"]
    );
    stop_tx.send(()).unwrap();
    eprintln!(
        "daemon read {consumed} B; accepted {} connections from odd SYNs",
        acceptor.join(SETUP_TIMEOUT)
    );
    // Everything still works.
    let udp = serve_udp_echo(host.udp(20182), Duration::from_secs(2));
    check_udp_echo(&guest, gw(20182), &[1, 1472]);
    udp.join(SETUP_TIMEOUT);
    let data = random_bytes(5 * MB, 19);
    check_upload(&guest, host.listen(20183), gw(20183), &data);
    check_download(&guest, host.listen(20184), gw(20184), data);
    assert!(d.wait_timeout(Duration::ZERO).is_none(), "daemon exited");
}

// ---- 20. SYN flood ----------------------------------------------------------------------------

/// argv: destination ip, port, count, first source port, seconds to wait for the RSTs after
/// the last SYN (they stop coming early once all arrived). Sends `count` valid SYNs (one per
/// source port, shuffled) and counts the RSTs that come back on tap0.
const PY_SYN_FLOOD: &str = include_str!("py/tap_mode_syn_flood.py");

#[test]
fn syn_flood_then_service() {
    if !preflight(&["python3"]) {
        return;
    }
    const N: u64 = 3000;
    let host = HostNs::new();
    let guest = host.guest();
    let mut d = Daemon::with_args(&host, &guest, &[]);
    let baseline = d.fd_count();
    let start = Instant::now();
    // 10.0.2.2:20190 is host 127.0.0.1:20190, where nothing listens: every SYN makes the daemon
    // open a host socket whose connect is refused, and must end in a RST to the guest.
    let out = guest
        .python(
            &format!("{PY_FRAMES}{PY_SYN_FLOOD}"),
            // Up to 20 s for the last RSTs: a loaded machine may schedule the daemon late.
            &["10.0.2.2", "20190", &N.to_string(), "30000", "20"],
            Duration::from_secs(60),
        )
        .ok();
    let f = py_fields(&out);
    eprintln!("syn flood: {} in {:?}", out.stdout.trim(), start.elapsed());
    assert_eq!(f["sent"], N, "SYNs sent: {out}");
    assert!(
        d.wait_timeout(Duration::ZERO).is_none(),
        "daemon died; {}",
        d.describe()
    );
    assert_eq!(
        f["other"], 0,
        "non-RST answers to SYNs to a closed port: {out}"
    );
    // SYNs the TAP queue dropped (the daemon not reading fast enough) never reached it; every
    // other one must be answered.
    let delivered = N - f["dropped"];
    assert!(delivered >= N / 2, "the TAP queue dropped most SYNs: {out}");
    assert!(
        f["rst"] >= delivered * 99 / 100,
        "only {} of the {delivered} SYNs the daemon received were answered with a RST: {out}",
        f["rst"]
    );
    let flooded = Instant::now();
    let mut now = d.fd_count();
    while now > baseline && flooded.elapsed() < FD_SETTLE {
        std::thread::sleep(Duration::from_millis(50));
        now = d.fd_count();
    }
    assert!(
        now <= baseline,
        "daemon fds not back to baseline {FD_SETTLE:?} after the flood: baseline {baseline}, \
         now {now}"
    );
    check_upload(
        &guest,
        host.listen(20191),
        gw(20191),
        &random_bytes(5 * MB, 20),
    );
}

/// Route 192.168.66.0/24 to the peer, which does not forward: connects there hang until the
/// kernel gives up (1-2 minutes). Keep the returned peer alive.
fn route_to_blackhole(host: &HostNs) -> Peer {
    let peer = host.peer();
    host.sh("ip route add 192.168.66.0/24 via 192.168.77.2")
        .ok();
    peer
}

/// A guest connection whose host connect hangs (a destination that never answers) costs no
/// CPU while it waits: smoltcp asks for an immediate poll of a socket whose SYN-ACK is held
/// back, which once made the daemon spin at 100% until the host connect gave up.
#[test]
fn pending_host_connect_does_not_spin() {
    if !preflight(&[]) || !tapwire_only("CPU while a host connect is pending") {
        return;
    }
    let host = HostNs::new();
    let _peer = route_to_blackhole(&host);
    let guest = host.guest();
    let d = Daemon::with_args(&host, &guest, &[]);
    let ticks = |pid: u32| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = s[s.rfind(')').unwrap() + 2..].split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    std::thread::scope(|sc| {
        let guest = &guest;
        let pending = sc.spawn(move || {
            guest.connect(
                SocketAddr::from(([192, 168, 66, 1], 80)),
                Duration::from_secs(6),
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        let t0 = ticks(d.pid());
        std::thread::sleep(Duration::from_secs(3));
        let used = ticks(d.pid()) - t0;
        // 3 s at 100 Hz: a spinning daemon shows ~300 ticks, an idle one ~0.
        assert!(
            used <= 30,
            "daemon used {used} CPU ticks in 3 s with one pending connect"
        );
        assert!(
            pending.join().unwrap().is_err(),
            "the blackholed connect cannot succeed"
        );
    });
}

/// SYNs to a destination that never answers (routed to the peer, which does not forward: the
/// host's connects hang until the kernel gives up, 1-2 minutes) must not starve other
/// connections: past `MAX_CONNECTING` (1024) pending host connects, the oldest is abandoned
/// (its guest gets a RST) so a new connection, here to host loopback, still goes through.
/// A port scan of a firewalled (DROP) host looks the same.
#[test]
fn syn_flood_to_blackhole_keeps_service() {
    if !preflight(&["python3"]) {
        return;
    }
    let host = HostNs::new();
    let _peer = route_to_blackhole(&host);
    let guest = host.guest();
    let d = Daemon::with_args(&host, &guest, &[]);
    let out = guest
        .python(
            &format!("{PY_FRAMES}{PY_SYN_FLOOD}"),
            // Nothing answers: the script waits the whole 5 s after its last SYN.
            &["192.168.66.1", "80", "1100", "30000", "5"],
            Duration::from_secs(60),
        )
        .ok();
    eprintln!(
        "blackhole flood: {}; daemon fds {}",
        out.stdout.trim(),
        d.fd_count()
    );
    let l = host.listen(20199);
    let start = Instant::now();
    // A starved connection would never go through; a loaded machine may just be slow.
    let r = guest.connect(gw(20199), SETUP_TIMEOUT);
    assert!(
        r.is_ok(),
        "new connection to host loopback after 1100 SYNs to an unresponsive host: {:?} after \
         {:?} (daemon fds {})",
        r.err(),
        start.elapsed(),
        d.fd_count()
    );
    drop(l);
}
