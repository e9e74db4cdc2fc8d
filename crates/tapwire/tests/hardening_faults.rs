//! Faults, end to end: the guest namespace vanishing ends the daemon cleanly, a host peer
//! resetting mid-transfer reaches the guest as RST, an unreachable host side fails fast with the
//! right errors, tap0 going down stalls nothing and the transfer resumes, and stalled control
//! clients (one, or a crowd) never block anyone.
//!
//! Everything runs in the private namespaces of tests/common (root needed).

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::hardening::*;
use common::*;
use nix::sys::signal::Signal;

// ---- faults -----------------------------------------------------------------------------------

#[test]
fn guest_namespace_disappearing_ends_the_daemon_cleanly() {
    if !preflight(&[]) || !tapwire_only("exit when the namespace goes away") {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let sock = host.dir.join("api.sock");
    let mut d = Daemon::start(
        &host,
        &guest,
        sandboxed().args(&["--api-socket", sock.to_str().unwrap()]),
    );
    // Some state to clean up: an open flow and a forward.
    let l = host.listen(23101);
    let c = guest.connect(gw(23101), SETUP_TIMEOUT).unwrap();
    let (_s, _) = accept_timeout(&l, SETUP_TIMEOUT).unwrap();
    assert!(api(
        &sock,
        r#"{"execute":"add_hostfwd","arguments":{"proto":"udp","host_port":23102,"guest_port":53}}"#
    )
    .contains("return"));
    let gpid = guest.pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(gpid as i32), Signal::SIGKILL).unwrap();
    drop(c);
    let st = d.wait_timeout(Duration::from_secs(10));
    let st = st.unwrap_or_else(|| {
        panic!(
            "daemon still running 10 s after the guest died; {}",
            d.describe()
        )
    });
    assert_eq!(st.code(), Some(0), "{}; {}", status_str(st), d.describe());
    assert!(!sock.exists(), "API socket left behind");
    // Nothing of the daemon's is left in the host namespace: no listener on the forward.
    let ss = host.sh("ss -Hanp 2>/dev/null | grep -c tapwire || true");
    assert_eq!(ss.stdout.trim(), "0", "sockets left: {ss}");
}

#[test]
fn host_peer_reset_mid_transfer_reaches_the_guest_as_rst() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::start(&host, &guest, sandboxed());
    // Download: the host sends 2 MB, then resets once the guest has received some of it (a
    // fixed pause is not enough on a loaded machine).
    let l = host.listen(23201);
    let (arrived_tx, arrived_rx) = std::sync::mpsc::channel::<()>();
    let server = task("reset-download", move || {
        let (mut s, _) = accept_timeout(&l, SETUP_TIMEOUT).unwrap();
        s.write_all(&random_bytes(2 * MB, 5)).unwrap();
        let _ = arrived_rx.recv_timeout(SETUP_TIMEOUT);
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s); // RST
    });
    let mut c = guest.connect(gw(23201), SETUP_TIMEOUT).unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 65536];
    let end = loop {
        match c.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                got += n;
                let _ = arrived_tx.send(());
            }
            Err(e) => break Err(e),
        }
    };
    server.join(SETUP_TIMEOUT);
    let err = end.expect_err("the guest must see the reset, not a clean end of stream");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert!(got > 0, "some data arrived before the reset");

    // Upload: the host reads a little, then resets; the guest's writes fail.
    let l = host.listen(23202);
    let server = task("reset-upload", move || {
        let (mut s, _) = accept_timeout(&l, SETUP_TIMEOUT).unwrap();
        let mut b = vec![0u8; 100_000];
        s.read_exact(&mut b).unwrap();
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    });
    let mut c = guest.connect(gw(23202), SETUP_TIMEOUT).unwrap();
    let chunk = random_bytes(MB, 6);
    let start = Instant::now();
    let err = loop {
        if let Err(e) = c.write_all(&chunk) {
            break e;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "writes still succeed 20 s after the host reset"
        );
    };
    server.join(SETUP_TIMEOUT);
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{err}"
    );
}

#[test]
fn unreachable_host_side_fails_fast_with_the_right_errors() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _peer = host.peer(); // 192.168.77.0/24 exists; .99 does not answer ARP
    let d = Daemon::start(&host, &guest, sandboxed());
    // No route at all: at once.
    let start = Instant::now();
    let e = guest
        .connect(
            SocketAddrV4::new(Ipv4Addr::new(192, 168, 99, 1), 80),
            SETUP_TIMEOUT,
        )
        .expect_err("no route");
    assert_eq!(e.raw_os_error(), Some(libc::ENETUNREACH), "{e}");
    assert!(start.elapsed() < Duration::from_secs(2));
    // A neighbour that never answers: EHOSTUNREACH once ARP gives up (a few seconds).
    let start = Instant::now();
    let e = guest
        .connect(
            SocketAddrV4::new(Ipv4Addr::new(192, 168, 77, 99), 80),
            Duration::from_secs(20),
        )
        .expect_err("no neighbour");
    assert_eq!(e.raw_os_error(), Some(libc::EHOSTUNREACH), "{e}");
    eprintln!("EHOSTUNREACH after {:?}", start.elapsed());
    // And the daemon serves on.
    check_upload(&guest, host.listen(23301), gw(23301), &random_bytes(MB, 7));
    drop(d);
}

#[test]
fn tap_link_down_stalls_nothing_and_the_transfer_resumes() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let d = Daemon::start(&host, &guest, sandboxed());
    // A slow download (the server paces itself) during which tap0 goes down for 2 s: the
    // daemon's writes to the TAP fail meanwhile. It must neither spin nor give up the flow.
    let data = random_bytes(8 * MB, 8);
    let want = sha256_hex(&data);
    let l = host.listen(23401);
    let server = task("paced-source", move || {
        let (mut s, _) = accept_timeout(&l, SETUP_TIMEOUT).unwrap();
        for chunk in data.chunks(256 << 10) {
            s.write_all(chunk).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        s.shutdown(Shutdown::Write).unwrap();
        let _ = s.read(&mut [0u8; 16]);
    });
    let mut c = guest.connect(gw(23401), SETUP_TIMEOUT).unwrap();
    let reader = task("guest-reader", move || read_hash(&mut c).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let cpu0 = cpu_ticks(d.pid());
    guest.sh("ip link set tap0 down", SETUP_TIMEOUT).ok();
    std::thread::sleep(Duration::from_secs(2));
    let cpu = cpu_ticks(d.pid()) - cpu0;
    guest
        .sh(
            "ip link set tap0 up && ip route replace default via 10.0.2.2 dev tap0",
            SETUP_TIMEOUT,
        )
        .ok();
    let (n, got) = reader.join(TRANSFER_TIMEOUT);
    server.join(SETUP_TIMEOUT);
    assert_eq!((n, got), (8 * MB as u64, want));
    // 2 s of wall time at 100 ticks/s: a spinning daemon would use ~200.
    assert!(
        cpu < 60,
        "daemon used {cpu} CPU ticks in 2 s with the link down"
    );
}

#[test]
fn stalled_control_clients_never_block_anyone() {
    if !preflight(&[]) || !tapwire_only("control socket client handling") {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let sock = host.dir.join("api.sock");
    let d = Daemon::start(
        &host,
        &guest,
        sandboxed().args(&["--api-socket", sock.to_str().unwrap()]),
    );
    let fds0 = d.fd_count();
    // One client sends half a request and waits; another sends nothing; a third never reads
    // its reply.
    let mut half = UnixStream::connect(&sock).unwrap();
    half.write_all(br#"{"execute":"list_hos"#).unwrap();
    let silent = UnixStream::connect(&sock).unwrap();
    let mut deaf = UnixStream::connect(&sock).unwrap();
    deaf.write_all(br#"{"execute":"get_stats"}"#).unwrap();
    // Everyone else is served at once, and traffic flows. (A daemon blocked by the stalled
    // clients would hold these until its 10 s client timeout; 5 s leaves room for a loaded
    // machine.)
    let start = Instant::now();
    for _ in 0..20 {
        assert_eq!(
            api(&sock, r#"{"execute":"list_hostfwd"}"#),
            r#"{"return":{"entries":[]}}"#
        );
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "20 requests took {:?} beside stalled clients",
        start.elapsed()
    );
    check_upload(
        &guest,
        host.listen(23501),
        gw(23501),
        &random_bytes(2 * MB, 9),
    );
    // The stalled ones are dropped after the client timeout (10 s).
    half.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut rest = Vec::new();
    let n = half.read_to_end(&mut rest).expect("dropped, not hung");
    assert_eq!(
        n,
        0,
        "a half request gets no reply: {:?}",
        String::from_utf8_lossy(&rest)
    );
    drop((half, silent, deaf));
    wait_until(
        Duration::from_secs(15),
        "stalled clients' fds to be released",
        || d.fd_count() <= fds0,
    );
}

/// More stalled clients than the daemon serves at once (64): new requests are still answered
/// at once (the oldest stalled client makes room), not after the 10 s client timeout.
#[test]
fn a_crowd_of_stalled_control_clients_cannot_lock_the_api() {
    if !preflight(&[]) || !tapwire_only("control socket client limit") {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let sock = host.dir.join("api.sock");
    let _d = Daemon::start(
        &host,
        &guest,
        sandboxed().args(&["--api-socket", sock.to_str().unwrap()]),
    );
    let crowd: Vec<UnixStream> = (0..100)
        .map(|_| {
            let mut c = UnixStream::connect(&sock).unwrap();
            c.write_all(br#"{"execute":"#).unwrap();
            c
        })
        .collect();
    let start = Instant::now();
    for _ in 0..5 {
        assert_eq!(
            api(&sock, r#"{"execute":"list_hostfwd"}"#),
            r#"{"return":{"entries":[]}}"#
        );
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "5 requests took {:?} beside {} stalled clients",
        start.elapsed(),
        crowd.len()
    );
}
