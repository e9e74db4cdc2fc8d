//! Tap mode (`tapwire [OPTIONS] PID|PATH [TAPNAME]`, the slirp4netns drop-in), end to end: `-c`
//! configuration, bulk TCP both ways (sha256-checked), a peer namespace, host loopback on/off, UDP
//! echo, ping to the gateway, 500 concurrent connections and the fd baseline, connection refused,
//! half-close both ways, the ready/exit fds and SIGTERM, `--netns-type=path` + `--userns-path`,
//! `--cidr`, and bad flags / `--help`. DNS is tests/tap_mode_dns.rs, outbound address, ICMP proxying,
//! big UDP and unreachable addresses tests/tap_mode_remote.rs, hostile frames and SYN floods
//! tests/tap_mode_hostile.rs.
//!
//! Each test builds a private host namespace and a guest namespace (see tests/common), starts
//! the binary under test against the guest and checks real traffic from inside the guest.
//! The binary is `$TAPWIRE_TEST_BIN` if set (e.g. `TAPWIRE_TEST_BIN=slirp4netns` to validate the
//! tests against the original), else the tapwire binary built by Cargo.
//! Needs root; see tests/common for the skip policy (TAPWIRE_ALLOW_SKIP=1).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tap_mode::*;
use common::*;
use nix::sys::signal::Signal;

// ---- 1. -c configuration -----------------------------------------------------------------

#[test]
fn configure_defaults() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    check_configured(&guest, "10.0.2.100/24", "10.0.2.2", 1500);
}

#[test]
fn configure_mtu_and_mac() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(
        &host,
        &guest,
        &["--mtu", "65520", "--macaddress", "02:42:ac:11:00:99"],
    );
    check_configured(&guest, "10.0.2.100/24", "10.0.2.2", 65520);
    let link = guest_ip(&guest, "-o link show tap0");
    assert!(
        link.contains("link/ether 02:42:ac:11:00:99 "),
        "tap0 MAC from --macaddress: {link}"
    );
}

// ---- 2. bulk TCP both directions, sha256 --------------------------------------------------

fn bulk_both_directions(mtu: &str, port: u16) {
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &["--mtu", mtu]);
    let data = random_bytes(BULK, 1);
    check_upload(&guest, host.listen(port), gw(port), &data);
    check_download(&guest, host.listen(port + 1), gw(port + 1), data);
}

#[test]
fn tcp_bulk_mtu1500() {
    if !preflight(&[]) {
        return;
    }
    bulk_both_directions("1500", 20010);
}

#[test]
fn tcp_bulk_mtu65520() {
    if !preflight(&[]) {
        return;
    }
    bulk_both_directions("65520", 20020);
}

// ---- 3. a test host in a third namespace ----------------------------------------------------

#[test]
fn tcp_to_peer_namespace() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let peer = host.peer();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    let data = random_bytes(BULK, 3);
    let target = |p| SocketAddr::from(SocketAddrV4::new(PEER_ADDR, p));
    // The peer sees the host namespace's veth address as the source (NAT by the daemon).
    let l = peer.listen(20030);
    let server = serve_sink(l);
    let mut c = guest
        .connect(target(20030), SETUP_TIMEOUT)
        .expect("connect peer");
    c.write_all(&data).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let (n, h, from) = server.join(TRANSFER_TIMEOUT);
    assert_eq!(
        (n, h),
        (data.len() as u64, sha256_hex(&data)),
        "upload to peer"
    );
    assert_eq!(
        from.ip(),
        std::net::IpAddr::V4(PEER_HOST_ADDR),
        "peer sees the host ns address"
    );
    check_download(&guest, peer.listen(20031), target(20031), data);
}

// ---- 4. host loopback on/off --------------------------------------------------------------

#[test]
fn host_loopback_reachable() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    let l = host.listen(20040);
    let server = task("accept", move || {
        let (mut s, from) = accept_timeout(&l, SETUP_TIMEOUT).expect("accept");
        s.write_all(b"hello from host loopback").unwrap();
        from
    });
    let mut c = guest
        .connect(gw(20040), SETUP_TIMEOUT)
        .expect("connect 10.0.2.2");
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hello from host loopback");
    let from = server.join(SETUP_TIMEOUT);
    assert!(
        from.ip().is_loopback(),
        "host side sees a loopback peer: {from}"
    );
}

#[test]
fn host_loopback_disabled() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &["--disable-host-loopback"]);
    let l = host.listen(20050);
    let start = Instant::now();
    let r = guest.connect(gw(20050), Duration::from_secs(5));
    let took = start.elapsed();
    let err = r.expect_err("connect to 10.0.2.2 must fail with --disable-host-loopback");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENETUNREACH),
        "expected 'Network is unreachable', got {err}"
    );
    assert!(took < Duration::from_secs(2), "failure took {took:?}");
    l.set_nonblocking(true).unwrap();
    assert_eq!(
        l.accept().map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "nothing may reach the host's 127.0.0.1 listener"
    );
    // UDP to the gateway must not reach host loopback either.
    let u = host.udp(20051);
    u.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let g = guest.udp_to(gw(20051));
    let _ = g.send(b"should not arrive");
    let mut buf = [0u8; 64];
    assert!(u.recv_from(&mut buf).is_err(), "UDP reached host loopback");
}

// ---- 5. UDP ---------------------------------------------------------------------------------

const UDP_SIZES: &[usize] = &[1, 64, 512, 1000, 1400, 1472];

#[test]
fn udp_echo_host_loopback() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    let server = serve_udp_echo(host.udp(20060), Duration::from_secs(3));
    check_udp_echo(&guest, gw(20060), UDP_SIZES);
    assert!(server.join(SETUP_TIMEOUT) >= UDP_SIZES.len());
}

#[test]
fn udp_echo_peer_namespace() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let peer = host.peer();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    let server = serve_udp_echo(peer.udp(20070), Duration::from_secs(3));
    check_udp_echo(
        &guest,
        SocketAddrV4::new(PEER_ADDR, 20070).into(),
        UDP_SIZES,
    );
    assert!(server.join(SETUP_TIMEOUT) >= UDP_SIZES.len());
}

// ---- 6. ICMP --------------------------------------------------------------------------------

#[test]
fn ping_gateway() {
    if !preflight(&[]) {
        return;
    }
    let ping = if which("ping").is_some() {
        "ping"
    } else if which("busybox").is_some() {
        "busybox ping"
    } else {
        skip("neither ping (iputils-ping) nor busybox is installed");
        return;
    };
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    let out = guest.sh(
        &format!("{ping} -c 3 -i 0.2 -W 2 10.0.2.2"),
        Duration::from_secs(15),
    );
    assert!(out.success(), "ping 10.0.2.2: {out}");
    assert!(out.stdout.contains("3 packets received") || out.stdout.contains("3 received"));
}

// ---- 8. 500 concurrent connections, fd count ------------------------------------------------

#[test]
fn concurrent_connections_fd_baseline() {
    if !preflight(&[]) {
        return;
    }
    const N: usize = 500;
    let host = HostNs::new();
    let guest = host.guest();
    let d = Daemon::with_args(&host, &guest, &[]);
    let l = host.listen(20080);
    // Server: accept N connections, echo 8 bytes on each, keep them until told to close.
    let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
    let server = task("echo-500", move || {
        let mut conns = Vec::with_capacity(N);
        for i in 0..N {
            let (mut s, _) =
                accept_timeout(&l, SETUP_TIMEOUT).unwrap_or_else(|e| panic!("accept #{i}: {e}"));
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            s.write_all(&b).unwrap();
            conns.push(s);
        }
        let _ = close_rx.recv_timeout(TRANSFER_TIMEOUT);
        conns.len()
    });
    let baseline = d.fd_count();
    let start = Instant::now();
    let conns = guest.in_ns(|| {
        let mut v = Vec::with_capacity(N);
        for i in 0..N {
            let mut s = std::net::TcpStream::connect_timeout(&gw(20080), SETUP_TIMEOUT)
                .unwrap_or_else(|e| panic!("connect #{i}: {e}"));
            set_timeouts(&s);
            let msg = (i as u64).to_be_bytes();
            s.write_all(&msg).unwrap();
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            assert_eq!(b, msg, "echo on connection #{i}");
            v.push(s);
        }
        v
    });
    eprintln!("{N} connections in {:?}", start.elapsed());
    let open = d.fd_count();
    assert!(
        open >= baseline + N * 4 / 5,
        "daemon fd count should rise with {N} open connections: baseline {baseline}, open {open}"
    );
    drop(conns);
    close_tx.send(()).unwrap();
    assert_eq!(server.join(SETUP_TIMEOUT), N);
    // 500 closes on a loaded machine can take a while; a leak never comes back at all.
    let closed = Instant::now();
    let mut now = open;
    while now > baseline && closed.elapsed() < FD_SETTLE {
        std::thread::sleep(Duration::from_millis(50));
        now = d.fd_count();
    }
    assert!(
        now <= baseline,
        "daemon fds not back to baseline {FD_SETTLE:?} after closing: baseline {baseline}, \
         open {open}, now {now}"
    );
    eprintln!(
        "fds: baseline {baseline}, open {open}, back after {:?}",
        closed.elapsed()
    );
}

// ---- 9. connection refused ------------------------------------------------------------------

#[test]
fn connection_refused() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    for _ in 0..2 {
        let start = Instant::now();
        let err = guest
            .connect(gw(20090), Duration::from_secs(5))
            .expect_err("nothing listens on host 127.0.0.1:20090");
        let took = start.elapsed();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ECONNREFUSED),
            "expected ECONNREFUSED, got {err}"
        );
        assert!(took < Duration::from_secs(1), "refusal took {took:?}");
    }
}

// ---- 10. half-close -------------------------------------------------------------------------

#[test]
fn half_close_guest_first() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    let l = host.listen(20100);
    // Host: read to EOF (the guest's FIN), then answer with the sha256 and close.
    let server = task("half-close-server", move || {
        let (mut s, _) = accept_timeout(&l, SETUP_TIMEOUT).expect("accept");
        let (_, h) = read_hash(&mut s).expect("read to EOF");
        s.write_all(h.as_bytes()).unwrap();
        s.write_all(&random_bytes(MB, 11)).unwrap();
    });
    let data = random_bytes(4 * MB, 10);
    let mut c = guest.connect(gw(20100), SETUP_TIMEOUT).expect("connect");
    c.write_all(&data).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    c.read_to_end(&mut reply)
        .expect("guest reads the reply after its own FIN");
    server.join(TRANSFER_TIMEOUT);
    assert_eq!(reply.len(), 64 + MB, "reply length after half-close");
    assert_eq!(String::from_utf8_lossy(&reply[..64]), sha256_hex(&data));
    assert_eq!(reply[64..], random_bytes(MB, 11)[..]);
}

#[test]
fn half_close_host_first() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &[]);
    let l = host.listen(20110);
    let data = Arc::new(random_bytes(4 * MB, 12));
    let sent = data.clone();
    // Host: send, half-close, then read the guest's answer to EOF.
    let server = task("half-close-host", move || {
        let (mut s, _) = accept_timeout(&l, SETUP_TIMEOUT).expect("accept");
        s.write_all(&sent).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        s.read_to_end(&mut reply)
            .expect("host reads the guest's reply");
        reply
    });
    let mut c = guest.connect(gw(20110), SETUP_TIMEOUT).expect("connect");
    let (n, h) = read_hash(&mut c).expect("guest reads to the host's FIN");
    assert_eq!(n, data.len() as u64);
    c.write_all(h.as_bytes()).unwrap();
    c.write_all(&random_bytes(MB, 13)).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let reply = server.join(TRANSFER_TIMEOUT);
    assert_eq!(
        reply.len(),
        64 + MB,
        "guest's reply length after the host's FIN"
    );
    assert_eq!(String::from_utf8_lossy(&reply[..64]), sha256_hex(&data));
    assert_eq!(reply[64..], random_bytes(MB, 13)[..]);
}

// ---- 11. lifecycle: ready fd, exit fd, SIGTERM ----------------------------------------------

#[test]
fn ready_fd_says_1_then_closes() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let mut d = Daemon::spawn(&host, &guest, DaemonCfg::default());
    let (got, eof) = d.read_ready_to_eof(SETUP_TIMEOUT);
    assert_eq!(got, b"1", "ready fd content");
    assert!(eof, "ready fd closed after writing 1");
    assert!(
        d.wait_timeout(Duration::ZERO).is_none(),
        "daemon still running"
    );
    // Ready means configured: the guest can use the network right away.
    check_configured(&guest, "10.0.2.100/24", "10.0.2.2", 1500);
}

#[test]
fn exit_fd_hangup_exits_zero() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let cfg = DaemonCfg {
        exit_fd: true,
        ..DaemonCfg::default()
    };
    let mut d = Daemon::start(&host, &guest, cfg);
    std::thread::sleep(Duration::from_millis(200));
    assert!(d.wait_timeout(Duration::ZERO).is_none(), "exited too early");
    d.close_exit_fd();
    // A generous deadline: a child forked meanwhile by a parallel test holds a copy of the
    // write end until it execs, and a loaded machine may be slow to schedule the daemon.
    let st = d.wait_timeout(SETUP_TIMEOUT);
    let st =
        st.unwrap_or_else(|| panic!("still running {SETUP_TIMEOUT:?} after the exit fd closed"));
    assert_eq!(
        st.code(),
        Some(0),
        "exit status after exit-fd: {}",
        status_str(st)
    );
}

#[test]
fn sigterm_exits_zero() {
    if !preflight(&[]) || !tapwire_only("exit status 0 on SIGTERM (slirp4netns dies of the signal)")
    {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let mut d = Daemon::with_args(&host, &guest, &[]);
    d.signal(Signal::SIGTERM);
    let st = d.wait_timeout(SETUP_TIMEOUT);
    let st = st.unwrap_or_else(|| panic!("still running {SETUP_TIMEOUT:?} after SIGTERM"));
    assert_eq!(
        st.code(),
        Some(0),
        "exit status after SIGTERM: {}",
        status_str(st)
    );
}

// ---- 12. --netns-type=path + --userns-path --------------------------------------------------

#[test]
fn netns_type_path_with_userns_path() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let pid = guest.pid();
    let cfg = DaemonCfg {
        positional: Some(vec![format!("/proc/{pid}/ns/net"), "tap0".into()]),
        ..DaemonCfg::default()
    }
    .args(&[
        "--netns-type=path",
        &format!("--userns-path=/proc/{pid}/ns/user"),
    ]);
    let _d = Daemon::start(&host, &guest, cfg);
    check_configured(&guest, "10.0.2.100/24", "10.0.2.2", 1500);
    check_upload(
        &guest,
        host.listen(20120),
        gw(20120),
        &random_bytes(4 * MB, 14),
    );
}

// ---- 13. --cidr -----------------------------------------------------------------------------

#[test]
fn custom_cidr() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _d = Daemon::with_args(&host, &guest, &["--cidr", "10.11.12.0/24"]);
    check_configured(&guest, "10.11.12.100/24", "10.11.12.2", 1500);
    let target = SocketAddr::from(([10, 11, 12, 2], 20130));
    check_upload(
        &guest,
        host.listen(20130),
        target,
        &random_bytes(4 * MB, 15),
    );
    let l = host.listen(20131);
    let err = guest.connect(gw(20131), Duration::from_secs(3));
    assert!(
        err.is_err(),
        "10.0.2.2 must not be the gateway with --cidr 10.11.12.0/24"
    );
    drop(l);
}

// ---- 14. bad flags, --help ------------------------------------------------------------------

/// The part of stderr that is the error itself (before any usage/help text).
fn error_part(stderr: &str) -> String {
    stderr
        .split("\nUsage:")
        .next()
        .unwrap_or("")
        .trim_start_matches("Usage:")
        .split("\nFor more information")
        .next()
        .unwrap_or("")
        .to_lowercase()
}

/// Bad command lines: (args, word the error message must contain). `PID` is replaced by the
/// guest's pid so that the only thing wrong is the flag under test.
const BAD_FLAGS: &[(&[&str], &str)] = &[
    (&["--mtu", "0", "PID"], "mtu"),
    (&["--mtu", "65522", "PID"], "mtu"),
    (&["--mtu", "abc", "PID"], "mtu"),
    (&["--cidr", "10.0.2.1/24", "PID"], "cidr"),
    (&["--cidr", "10.0.0.0/26", "PID"], "cidr"),
    (&["--cidr", "nonsense", "PID"], "cidr"),
    (&["--macaddress", "02:00:00:00:00:01", "PID"], "macaddr"),
    (&["-c", "--macaddress", "zz:00", "PID"], "macaddr"),
    (&["--netns-type=bogus", "PID"], "netns-type"),
    (&["--no-such-flag", "PID"], "no-such-flag"),
    (&["-c", "abc"], "pid"),
    (&["-c", "0"], "pid"),
];

/// Run every BAD_FLAGS case; `check(out, needle)` returns a complaint or None.
fn bad_flag_cases(check: impl Fn(&Out, &str) -> Option<String>) {
    // Inside a private host ns with a real guest: if a bad flag were accepted the daemon
    // would start, and it must not touch the machine's network even then.
    let host = HostNs::new();
    let guest = host.guest();
    let pid = guest.pid().to_string();
    let mut failures = Vec::new();
    for (args, needle) in BAD_FLAGS {
        let args: Vec<&str> = args
            .iter()
            .map(|a| if *a == "PID" { pid.as_str() } else { a })
            .collect();
        // A bad flag must make the binary exit; one that is accepted starts the daemon, which
        // runs until this deadline and fails the case as timed out.
        let out = run(host.cmd(bin()).args(&args), SETUP_TIMEOUT);
        if let Some(why) = check(&out, needle) {
            failures.push(format!("{args:?}: {why}"));
        }
    }
    assert!(failures.is_empty(), "bad flags:\n{}", failures.join("\n"));
}

#[test]
fn bad_flags_exit_nonzero() {
    if !preflight(&[]) {
        return;
    }
    bad_flag_cases(|out, _| {
        (out.success() || out.timed_out || out.code().is_none()).then(|| {
            format!(
                "want a non-zero exit code, got {:?}: {}",
                out.status, out.stderr
            )
        })
    });
}

#[test]
fn bad_flags_error_names_the_flag() {
    // slirp4netns prints only its usage text for most of these; tapwire names the culprit.
    if !preflight(&[]) || !tapwire_only("an error naming the bad flag before the usage text") {
        return;
    }
    bad_flag_cases(|out, needle| {
        let msg = error_part(&out.stderr);
        (!msg.contains(needle))
            .then(|| format!("want an error naming `{needle}` before any usage text, got {msg:?}"))
    });
}

#[test]
fn help_lists_every_flag() {
    if !preflight(&[]) {
        return;
    }
    let out = run(Command::new(bin()).arg("--help"), SETUP_TIMEOUT);
    assert!(out.success(), "--help exits 0: {out}");
    let text = out.stdout + &out.stderr;
    let flags = [
        "--configure",
        "--exit-fd",
        "--ready-fd",
        "--mtu",
        "--enable-ipv6",
        "--api-socket",
        "--cidr",
        "--disable-host-loopback",
        "--netns-type",
        "--userns-path",
        "--enable-sandbox",
        "--enable-seccomp",
        "--outbound-addr",
        "--outbound-addr6",
        "--disable-dns",
        "--macaddress",
        "--help",
        "--version",
    ];
    let missing: Vec<_> = flags.iter().filter(|f| !text.contains(*f)).collect();
    assert!(missing.is_empty(), "--help lacks {missing:?}:\n{text}");
    let v = run(Command::new(bin()).arg("--version"), SETUP_TIMEOUT);
    assert!(
        v.success() && v.stdout.contains("version"),
        "--version: {v}"
    );
}
