//! `--busy-poll USEC` (tapwire_proto::spin, engine/mod.rs): the engine polls instead of
//! sleeping after a quick exchange. End to end through the real TAP: thousands of TCP and UDP
//! ping-pong round trips (each reply checked byte for byte, so an exchange the spinning loop
//! mishandles fails), bulk TCP both ways with it off and at its maximum (sha256-checked), the
//! daemon's CPU when idle right after a ping-pong (the spinner must go back to sleep), and bad
//! values refused naming the flag.
//!
//! Needs root; see tests/common for the skip policy (TAPWIRE_ALLOW_SKIP=1).

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::hardening::cpu_ticks;
use common::tap_mode::*;
use common::*;

/// `rounds` request/reply round trips of 64 B over one TCP connection and one UDP socket from
/// the guest to echo servers on host loopback; every reply must be the request.
fn ping_pong(host: &HostNs, guest: &Guest, port: u16, rounds: usize) {
    let l = host.listen(port);
    let server = std::thread::spawn(move || {
        let (mut s, _) = accept_timeout(&l, SETUP_TIMEOUT).expect("accept");
        set_timeouts(&s);
        let mut buf = [0u8; 64];
        let mut n = 0usize;
        while s.read_exact(&mut buf).is_ok() {
            s.write_all(&buf).expect("echo write");
            n += 1;
        }
        n
    });
    let mut c = guest
        .connect(gw(port), SETUP_TIMEOUT)
        .expect("guest connect");
    set_timeouts(&c);
    c.set_nodelay(true).unwrap();
    let mut back = [0u8; 64];
    for i in 0..rounds {
        let msg = random_bytes(64, i as u64 + 7);
        c.write_all(&msg[..64]).expect("ping write");
        c.read_exact(&mut back).expect("pong read");
        assert_eq!(back[..], msg[..64], "TCP reply {i} is the request");
    }
    drop(c);
    assert_eq!(server.join().unwrap(), rounds, "round trips the server saw");

    let usock = host.udp(port);
    let echo = serve_udp_echo(usock, Duration::from_secs(3));
    let s = guest.udp_to(gw(port));
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 128];
    for i in 0..rounds {
        let msg = random_bytes(64, i as u64 + 99);
        s.send(&msg[..64]).expect("udp ping");
        let k = s
            .recv(&mut buf)
            .expect("udp pong (none lost on loopback at one in flight)");
        assert_eq!(buf[..k], msg[..64], "UDP reply {i} is the request");
    }
    assert!(
        echo.join(SETUP_TIMEOUT) >= rounds,
        "datagrams the server echoed"
    );
}

/// CPU the daemon uses over `window` with no traffic, in milliseconds.
fn idle_cpu_ms(pid: u32, window: Duration) -> u64 {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    let before = cpu_ticks(pid);
    std::thread::sleep(window);
    (cpu_ticks(pid) - before) * 1000 / hz
}

#[test]
fn ping_pong_with_default_50_and_max() {
    if !(preflight(&[]) && tapwire_only("--busy-poll")) {
        return;
    }
    for (i, args) in [&[][..], &["--busy-poll", "50"], &["--busy-poll", "1000"]]
        .into_iter()
        .enumerate()
    {
        let host = HostNs::new();
        let guest = host.guest();
        let d = Daemon::with_args(&host, &guest, args);
        ping_pong(&host, &guest, 21000 + i as u16, 3000);
        // Right after the exchanges: a spinner that does not disarm would burn a core here.
        let ms = idle_cpu_ms(d.pid(), Duration::from_secs(3));
        eprintln!("{args:?}: idle after ping-pong: {ms} ms CPU over 3 s");
        assert!(
            ms < 60,
            "{args:?}: idle CPU after ping-pong: {ms} ms over 3 s"
        );
    }
}

#[test]
fn bulk_both_ways_off_and_max() {
    if !(preflight(&[]) && tapwire_only("--busy-poll")) {
        return;
    }
    for (i, value) in ["0", "1000"].into_iter().enumerate() {
        let host = HostNs::new();
        let guest = host.guest();
        let _d = Daemon::with_args(&host, &guest, &["--busy-poll", value]);
        let port = 21010 + 2 * i as u16;
        let data = random_bytes(BULK, 3);
        check_upload(&guest, host.listen(port), gw(port), &data);
        check_download(&guest, host.listen(port + 1), gw(port + 1), data);
    }
}

#[test]
fn bad_values_are_refused() {
    if !(preflight(&[]) && tapwire_only("--busy-poll")) {
        return;
    }
    let host = HostNs::new();
    for bad in ["1001", "-1", "x", ""] {
        let flag = format!("--busy-poll={bad}");
        let out = host
            .cmd(bin())
            .args([flag.as_str(), "1"])
            .output()
            .expect("run tapwire");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--busy-poll {bad:?} accepted");
        assert!(err.contains("--busy-poll"), "error names the flag: {err}");
        let out = host
            .cmd(bin())
            .args(["run", flag.as_str(), "--", "true"])
            .output()
            .expect("run tapwire run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "run --busy-poll {bad:?} accepted");
        assert!(err.contains("--busy-poll"), "error names the flag: {err}");
    }
}
