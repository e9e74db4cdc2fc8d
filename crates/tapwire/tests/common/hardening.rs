//! Helpers shared by the hardening suites (hardening, hardening_confinement, hardening_faults):
//! /proc readers (status fields, capability masks, RSS, mount points, CPU ticks), a one-shot API
//! call, and the raw frame builders used for floods (`FrameKit`, an AF_PACKET injector on the
//! guest's tap0, `flood`).

use super::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub const MB: usize = 1 << 20;

pub fn gw(port: u16) -> SocketAddr {
    SocketAddrV4::new(GATEWAY, port).into()
}

/// `Key:\tvalue` fields of /proc/PID/status.
pub fn status_field(pid: u32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

pub fn cap_mask(pid: u32, key: &str) -> u64 {
    u64::from_str_radix(&status_field(pid, key), 16).expect("capability mask")
}

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("VmRSS")
}

/// Mount points of `pid` (second-to-last path field of mountinfo is the mount point).
pub fn mount_points(pid: u32) -> Vec<(String, String)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    s.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[4].to_string(), f[5].to_string())
        })
        .collect()
}

/// One API request over the control socket; the reply.
pub fn api(sock: &Path, req: &str) -> String {
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
pub const HOST_MAC: [u8; 6] = [0x52, 0x55, 10, 0, 2, 2];

pub fn csum(data: &[u8], init: u32) -> u16 {
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
pub struct FrameKit {
    src_mac: [u8; 6],
    src: Ipv4Addr,
    ident: u16,
}

impl FrameKit {
    pub fn new(guest: &Guest) -> FrameKit {
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

    pub fn ip(&mut self, proto: u8, dst: Ipv4Addr, l4: &[u8]) -> Vec<u8> {
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

    pub fn l4(&mut self, proto: u8, dst: Ipv4Addr, mut seg: Vec<u8>, at: usize) -> Vec<u8> {
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

    pub fn syn(&mut self, dst: Ipv4Addr, sport: u16, dport: u16, seq: u32) -> Vec<u8> {
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

    pub fn udp(&mut self, dst: Ipv4Addr, sport: u16, dport: u16, payload: usize) -> Vec<u8> {
        let mut u = vec![0x5a; 8 + payload];
        u[0..2].copy_from_slice(&sport.to_be_bytes());
        u[2..4].copy_from_slice(&dport.to_be_bytes());
        u[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        u[6..8].copy_from_slice(&[0, 0]);
        self.l4(17, dst, u, 6)
    }

    /// ICMP destination unreachable / time exceeded quoting a made-up UDP packet.
    pub fn icmp_error(&mut self, dst: Ipv4Addr, kind: usize) -> Vec<u8> {
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
pub fn tap_injector(guest: &Guest) -> std::os::fd::OwnedFd {
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
pub fn flood(
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

pub fn sandboxed() -> DaemonCfg {
    DaemonCfg::default().args(&["--enable-sandbox", "--enable-seccomp"])
}

/// utime + stime of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}
