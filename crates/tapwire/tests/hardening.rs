//! Hardening, end to end: the sandbox and the seccomp filter in effect on a live daemon, faults
//! (a host peer resetting mid-transfer, an unreachable host, the guest namespace vanishing, a
//! control client that stalls), and short soak and flood runs (the long ones are
//! `scripts/soak.sh`).
//!
//! Everything runs in the private namespaces of tests/common (root needed). Floods are raw
//! frames (built here, see [`FrameKit`]) written on the guest's tap0 through an AF_PACKET
//! socket inside the guest namespace. Sizes and rates come from `TAPWIRE_SOAK_*` and
//! `TAPWIRE_FLOOD_*` variables with small defaults for CI; `scripts/soak.sh` raises them.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const MB: usize = 1 << 20;

fn gw(port: u16) -> SocketAddr {
    SocketAddrV4::new(GATEWAY, port).into()
}

/// `Key:\tvalue` fields of /proc/PID/status.
fn status_field(pid: u32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

fn cap_mask(pid: u32, key: &str) -> u64 {
    u64::from_str_radix(&status_field(pid, key), 16).expect("capability mask")
}

/// Resident set size of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("VmRSS")
}

/// Mount points of `pid` (second-to-last path field of mountinfo is the mount point).
fn mount_points(pid: u32) -> Vec<(String, String)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    s.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[4].to_string(), f[5].to_string())
        })
        .collect()
}

/// One API request over the control socket; the reply.
fn api(sock: &Path, req: &str) -> String {
    let mut s = UnixStream::connect(sock).unwrap_or_else(|e| panic!("{}: {e}", sock.display()));
    s.set_read_timeout(Some(SETUP_TIMEOUT)).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

// ---- raw frames from the guest (floods) ----------------------------------------------------------

/// Our MAC as the guest sees it (52:55 + the gateway address).
const HOST_MAC: [u8; 6] = [0x52, 0x55, 10, 0, 2, 2];

fn csum(data: &[u8], init: u32) -> u16 {
    let mut sum = init;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Builds valid frames from the guest (10.0.2.100, its tap0 MAC) to the daemon.
struct FrameKit {
    src_mac: [u8; 6],
    src: Ipv4Addr,
    ident: u16,
}

impl FrameKit {
    fn new(guest: &Guest) -> FrameKit {
        let link = guest.sh("ip -o link show tap0", SETUP_TIMEOUT).ok().stdout;
        let mac = link
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .expect("tap0 MAC");
        let mut src_mac = [0u8; 6];
        for (d, h) in src_mac.iter_mut().zip(mac.split(':')) {
            *d = u8::from_str_radix(h, 16).unwrap();
        }
        FrameKit {
            src_mac,
            src: GUEST_ADDR,
            ident: 0,
        }
    }

    fn ip(&mut self, proto: u8, dst: Ipv4Addr, l4: &[u8]) -> Vec<u8> {
        self.ident = self.ident.wrapping_add(1);
        let mut f = Vec::with_capacity(34 + l4.len());
        f.extend_from_slice(&HOST_MAC);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&[0x08, 0x00]);
        let len = (20 + l4.len()) as u16;
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&len.to_be_bytes());
        ip[4..6].copy_from_slice(&self.ident.to_be_bytes());
        ip[6] = 0x40;
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&self.src.octets());
        ip[16..20].copy_from_slice(&dst.octets());
        let c = csum(&ip, 0);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(l4);
        f
    }

    fn l4(&mut self, proto: u8, dst: Ipv4Addr, mut seg: Vec<u8>, at: usize) -> Vec<u8> {
        let mut pseudo = Vec::with_capacity(12);
        pseudo.extend_from_slice(&self.src.octets());
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        let init: u32 = pseudo
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        let mut c = csum(&seg, init);
        if proto == 17 && c == 0 {
            c = 0xffff;
        }
        seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
        self.ip(proto, dst, &seg)
    }

    fn syn(&mut self, dst: Ipv4Addr, sport: u16, dport: u16, seq: u32) -> Vec<u8> {
        let mut t = vec![0u8; 24];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[12] = 6 << 4;
        t[13] = 0x02;
        t[14..16].copy_from_slice(&65535u16.to_be_bytes());
        t[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
        self.l4(6, dst, t, 16)
    }

    fn udp(&mut self, dst: Ipv4Addr, sport: u16, dport: u16, payload: usize) -> Vec<u8> {
        let mut u = vec![0x5a; 8 + payload];
        u[0..2].copy_from_slice(&sport.to_be_bytes());
        u[2..4].copy_from_slice(&dport.to_be_bytes());
        u[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        u[6..8].copy_from_slice(&[0, 0]);
        self.l4(17, dst, u, 6)
    }

    /// ICMP destination unreachable / time exceeded quoting a made-up UDP packet.
    fn icmp_error(&mut self, dst: Ipv4Addr, kind: usize) -> Vec<u8> {
        let (typ, code) = [(3u8, 3u8), (3, 1), (11, 0), (3, 4)][kind % 4];
        let quoted = self.udp(dst, 7, 1000 + kind as u16, 0)[14..42].to_vec();
        let mut m = vec![typ, code, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&quoted);
        let c = csum(&m, 0);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        self.ip(1, dst, &m)
    }
}

/// An AF_PACKET socket on the guest's tap0: what it sends goes to the daemon.
fn tap_injector(guest: &Guest) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    guest.in_ns(|| {
        // SAFETY: plain socket(2); the fd is owned right below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: socket(2) just returned this fd.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let ifindex = nix::net::if_::if_nametoindex("tap0").expect("tap0 index");
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: binding a live sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind tap0: {}", std::io::Error::last_os_error());
        fd
    })
}

/// Send `frames` round-robin at `pps` on a thread until `stop` (or `max`); the task returns
/// the count sent.
fn flood(
    fd: std::os::fd::OwnedFd,
    frames: Vec<Vec<u8>>,
    pps: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    max: Duration,
) -> Task<u64> {
    task("flood", move || {
        use std::os::fd::AsRawFd;
        let start = Instant::now();
        let mut sent = 0u64;
        let mut i = 0usize;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && start.elapsed() < max {
            // Pace in 10 ms slices.
            let due = (start.elapsed().as_secs_f64() * pps as f64) as u64 + pps as u64 / 100;
            while sent < due {
                let f = &frames[i % frames.len()];
                i += 1;
                // SAFETY: sending a live buffer on an open socket.
                let n = unsafe { libc::send(fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
                if n < 0 {
                    std::thread::sleep(Duration::from_micros(200));
                    break;
                }
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        sent
    })
}

fn sandboxed() -> DaemonCfg {
    DaemonCfg::default().args(&["--enable-sandbox", "--enable-seccomp"])
}

// ---- the sandbox and the filter on a live daemon ----------------------------------------------

#[test]
fn sandbox_and_seccomp_confine_the_daemon() {
    if !preflight(&["dnsmasq"]) || !tapwire_only("--enable-sandbox/--enable-seccomp details") {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let _dns = host.dnsmasq();
    let sock = host.dir.join("api.sock");
    let mut d = Daemon::start(
        &host,
        &guest,
        sandboxed().args(&["--api-socket", sock.to_str().unwrap()]),
    );
    let pid = d.pid(); // nsenter execs the daemon: same pid
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Seccomp"), "2", "filter mode");
    for key in ["CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"] {
        assert_eq!(cap_mask(pid, key), 0, "{key}");
    }
    // Root: an empty read-only tmpfs; only resolv.conf and the API socket's directory inside.
    let mounts = mount_points(pid);
    let api_dir = std::fs::canonicalize(host.dir.path()).unwrap();
    let api_dir = api_dir.to_str().unwrap();
    let mut points: Vec<&str> = mounts.iter().map(|(p, _)| p.as_str()).collect();
    points.sort_unstable();
    let mut want = vec!["/", "/etc/resolv.conf", api_dir];
    want.sort_unstable();
    assert_eq!(
        points, want,
        "mount points of the sandboxed daemon: {mounts:?}"
    );
    // Read-only everywhere but the API socket's directory (the socket is removed at exit).
    for (point, opts) in &mounts {
        let rw = opts.split(',').next() == Some("rw");
        assert_eq!(rw, point == api_dir, "{point} mounted {opts}");
    }
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = info
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap();
    assert!(root.contains(" - tmpfs "), "root is a tmpfs: {root}");

    // Everything still works: TCP both ways, UDP, DNS through the forwarder, the API.
    let data = random_bytes(4 * MB, 61);
    check_upload(&guest, host.listen(23001), gw(23001), &data);
    check_download(&guest, host.listen(23002), gw(23002), data);
    let udp = serve_udp_echo(host.udp(23003), Duration::from_secs(2));
    check_udp_echo(&guest, gw(23003), &[1, 1472, 4000]);
    udp.join(SETUP_TIMEOUT);
    let answers = guest.in_ns(|| {
        let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        s.set_read_timeout(Some(SETUP_TIMEOUT)).unwrap();
        s.send_to(&dns_query("tapwire.test", 7), (DNS, 53)).unwrap();
        let mut buf = [0u8; 512];
        let n = s
            .recv(&mut buf)
            .expect("DNS answer through the sandboxed forwarder");
        dns_answers(&buf[..n], 7)
    });
    assert_eq!(answers, Ok(vec![Ipv4Addr::new(10, 9, 8, 7)]));
    let reply = api(
        &sock,
        r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":23004,"guest_port":23004}}"#,
    );
    assert_eq!(reply, r#"{"return":{"id":1}}"#);
    let gl = guest.in_ns(|| std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 23004)).unwrap());
    let server = task("fwd-server", move || {
        let (mut s, _) = accept_timeout(&gl, SETUP_TIMEOUT).expect("forwarded connection");
        s.write_all(b"through the sandbox").unwrap();
    });
    let mut c = host
        .in_ns(|| std::net::TcpStream::connect(("127.0.0.1", 23004)))
        .unwrap();
    set_timeouts(&c);
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    server.join(SETUP_TIMEOUT);
    assert_eq!(got, "through the sandbox");

    // A clean exit removes the socket, through the sandbox's view of its directory.
    d.signal(Signal::SIGTERM);
    let st = d.wait_timeout(SETUP_TIMEOUT).expect("exit after SIGTERM");
    assert_eq!(st.code(), Some(0), "{}", status_str(st));
    assert!(!sock.exists(), "API socket left behind");
}

#[test]
fn net_bind_service_is_kept_only_for_low_forwarded_ports() {
    if !preflight(&[]) || !tapwire_only("-p and capabilities") {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let add = |sock: &Path, port: u16| {
        api(
            sock,
            &format!(
                r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp","host_addr":"127.0.0.1","host_port":{port},"guest_port":80}}}}"#
            ),
        )
    };
    // -p with a privileged port: CAP_NET_BIND_SERVICE stays, and the API can add port 81.
    let sock = host.dir.join("low.sock");
    let d = Daemon::start(
        &host,
        &guest,
        sandboxed().args(&[
            "-p",
            "127.0.0.1:80:80",
            "--api-socket",
            sock.to_str().unwrap(),
        ]),
    );
    assert_eq!(
        cap_mask(d.pid(), "CapEff"),
        1 << 10,
        "only CAP_NET_BIND_SERVICE"
    );
    assert_eq!(cap_mask(d.pid(), "CapBnd"), 0);
    assert!(
        add(&sock, 81).contains("\"return\""),
        "add port 81 with the capability"
    );
    drop(d);
    // Without one: no capability at all, and a privileged port over the API is refused.
    let guest = host.guest();
    let sock = host.dir.join("high.sock");
    let d = Daemon::start(
        &host,
        &guest,
        sandboxed().args(&[
            "-p",
            "127.0.0.1:8080:80",
            "--api-socket",
            sock.to_str().unwrap(),
        ]),
    );
    assert_eq!(cap_mask(d.pid(), "CapEff"), 0);
    let reply = add(&sock, 82);
    assert!(reply.contains("slirp_add_hostfwd failed"), "{reply}");
    assert!(add(&sock, 8082).contains("\"return\""));
}

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

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
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
    let rate = env_count("TAPWIRE_FLOOD_RATE", 2500);
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

/// `tapwire run` as an unprivileged user is sandboxed by default (inside the command's user
/// namespace), and with `--bypass` keeps exactly CAP_SYS_PTRACE there, so bypass still works.
#[test]
fn rootless_run_mode_is_sandboxed_and_bypass_still_works() {
    if !preflight(&["python3", "setpriv", "mknod"]) || !tapwire_only("run mode") {
        return;
    }
    let host = HostNs::new();
    let Some(exe) = host.unprivileged_binary() else {
        return;
    };
    let l = host.listen(24400);
    let server = task("rootless-server", move || {
        for _ in 0..2 {
            let (mut s, _) = accept_timeout(&l, SETUP_TIMEOUT).expect("accept");
            s.write_all(b"hello").unwrap();
        }
    });
    let script = "grep -E '^(NoNewPrivs|CapEff|CapBnd)' /proc/$PPID/status; \
                  awk '{print \"mount\", $5}' /proc/$PPID/mountinfo; \
                  python3 -c \"import socket; s = socket.create_connection(('10.0.2.2', 24400), \
                  timeout=10); print('local', s.getsockname()[0], s.recv(10).decode())\"";
    let mut outs = Vec::new();
    for bypass in [false, true] {
        let mut cmd = host.cmd("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&exe)
            .arg("run");
        if bypass {
            cmd.arg("--bypass");
        }
        cmd.args(["--", "sh", "-c", script]);
        let out = run(&mut cmd, Duration::from_secs(30));
        assert!(out.success(), "rootless run (bypass: {bypass}): {out}");
        assert!(
            !out.stderr.contains("without the sandbox"),
            "sandbox skipped: {out}"
        );
        outs.push(out);
    }
    server.join(SETUP_TIMEOUT);
    for (out, caps, local) in [
        (&outs[0], "0000000000000000", "10.0.2.100"),
        (&outs[1], "0000000000080000", "127.0.0.1"),
    ] {
        let o = &out.stdout;
        assert!(o.contains("NoNewPrivs:\t1"), "{out}");
        assert!(o.contains(&format!("CapEff:\t{caps}")), "{out}");
        assert!(o.contains("CapBnd:\t0000000000000000"), "{out}");
        let mounts: Vec<&str> = o.lines().filter_map(|l| l.strip_prefix("mount ")).collect();
        let mut mounts = mounts.clone();
        mounts.sort_unstable();
        assert_eq!(mounts, ["/", "/etc/resolv.conf"], "{out}");
        // Through the tap the host sees the guest's address; bypassed, a host socket.
        assert!(o.contains(&format!("local {local} hello")), "{out}");
    }
}

/// An API socket named through a symlinked directory (as `$XDG_RUNTIME_DIR` often is) is
/// still served and removed at exit from inside the sandbox.
#[test]
fn sandboxed_api_socket_behind_a_symlink_is_removed_at_exit() {
    if !preflight(&[]) || !tapwire_only("API socket") {
        return;
    }
    let host = HostNs::new();
    let guest = host.guest();
    let real = host.dir.join("real");
    std::fs::create_dir(&real).unwrap();
    let link = host.dir.join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let sock = link.join("api.sock");
    let mut d = Daemon::start(
        &host,
        &guest,
        sandboxed().args(&["--api-socket", sock.to_str().unwrap()]),
    );
    assert_eq!(
        api(&sock, r#"{"execute":"list_hostfwd"}"#),
        r#"{"return":{"entries":[]}}"#
    );
    d.signal(Signal::SIGTERM);
    let st = d.wait_timeout(SETUP_TIMEOUT).expect("exit");
    assert_eq!(st.code(), Some(0), "{}", status_str(st));
    assert!(!real.join("api.sock").exists(), "API socket left behind");
}
