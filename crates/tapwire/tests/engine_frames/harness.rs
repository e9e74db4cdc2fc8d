//! The whole engine behind a fake TAP, in a thread of the test process: a `SOCK_SEQPACKET`
//! socketpair stands in for the TAP (one message = a 10-byte virtio-net header + one frame),
//! the exit pipe stops it. No namespace, no `/dev/net/tun`, no privilege: host sockets are the
//! test's own, on 127.0.0.1, which the gateway address stands for.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recv, send, setsockopt, socketpair, sockopt, AddressFamily, MsgFlags};
use nix::sys::socket::{SockFlag, SockType};
use tapwire::engine::{Engine, Lifecycle, Stats};
use tapwire::link::tap::Tap;
use tapwire_proto::config::NetConfig;

use crate::frames::{self, GUEST_MAC};

/// How long any one expected event may take on a loaded machine before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// After this many seconds from now.
pub fn deadline() -> Instant {
    Instant::now() + DEADLINE
}

/// The engine under test and the guest's end of its TAP.
pub struct Harness {
    pub net: NetConfig,
    pub guest_ip: Ipv4Addr,
    pub host_mac: [u8; 6],
    guest: OwnedFd,
    exit_w: Option<OwnedFd>,
    done: mpsc::Receiver<(i32, Stats)>,
    thread: Option<JoinHandle<()>>,
    api_dir: Option<PathBuf>,
    /// ARP requests from the engine for the guest's address that we answered.
    pub arp_answered: std::cell::Cell<u32>,
}

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// The defaults, with no DNS forwarder (nothing may go to the machine's resolvers).
pub fn test_net() -> NetConfig {
    NetConfig {
        disable_dns: true,
        ..NetConfig::default()
    }
}

impl Harness {
    /// An engine on [`test_net`] without a control socket.
    pub fn start() -> Harness {
        Harness::with(test_net(), false)
    }

    /// An engine on `net`; `api`: also serve the control socket in a fresh temporary
    /// directory.
    pub fn with(net: NetConfig, api: bool) -> Harness {
        assert!(
            net.disable_dns,
            "tests must not relay DNS to the machine's resolvers"
        );
        let (tap_end, guest) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        // Room for a window's worth of frames both ways (capped by wmem_max; losses there are
        // harmless, TCP retransmits, but fewer of them keep the tests quick).
        for fd in [&tap_end, &guest] {
            let _ = setsockopt(fd, sockopt::SndBuf, &(4 << 20));
            let _ = setsockopt(fd, sockopt::RcvBuf, &(4 << 20));
        }
        let (exit_r, exit_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let api_dir = api.then(|| {
            let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("tapwire-engine-frames-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            dir
        });
        let api_path = api_dir.as_ref().map(|d| d.join("api.sock"));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (done_tx, done) = mpsc::channel();
        let engine_net = net.clone();
        let thread = std::thread::spawn(move || {
            let life = Lifecycle {
                exit_fd: Some(exit_r),
                child: None,
            };
            let mut engine = match Engine::new(engine_net, Tap::from_fd(tap_end), life) {
                Ok(e) => e,
                Err(e) => return drop(ready_tx.send(Err(format!("Engine::new: {e}")))),
            };
            if let Some(p) = &api_path {
                if let Err(e) = engine.listen_api(p) {
                    return drop(ready_tx.send(Err(format!("listen_api: {e}"))));
                }
            }
            let _ = ready_tx.send(Ok(()));
            let code = engine.run().expect("engine run");
            let _ = done_tx.send((code, engine.stats().clone()));
        });
        match ready_rx.recv_timeout(DEADLINE) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{e}"),
            Err(e) => panic!("engine did not start: {e}"),
        }
        Harness {
            guest_ip: net.guest(),
            host_mac: net.host_mac(),
            net,
            guest,
            exit_w: Some(exit_w),
            done,
            thread: Some(thread),
            api_dir,
            arp_answered: std::cell::Cell::new(0),
        }
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.net.gateway()
    }

    /// The guest's address and `port`.
    pub fn guest_at(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.guest_ip, port)
    }

    /// The gateway's `port` (host loopback's `port`).
    pub fn gateway_at(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.gateway(), port)
    }

    /// Send one frame with an all-zero virtio-net header (no offloads).
    pub fn send(&self, frame: &[u8]) {
        let mut msg = vec![0u8; 10];
        msg.extend_from_slice(frame);
        self.send_raw(&msg);
    }

    /// Send one message as it is (the caller supplies the virtio-net header, or not).
    pub fn send_raw(&self, msg: &[u8]) {
        let n = send(self.guest.as_raw_fd(), msg, MsgFlags::empty()).expect("send to engine");
        assert_eq!(n, msg.len());
    }

    /// The next frame from the engine before `until`, virtio-net header checked and stripped.
    /// ARP requests for the guest's address are answered here, as a guest kernel would.
    pub fn recv(&self, until: Instant) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70_000];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.guest.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) if Instant::now() >= until => return None,
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => panic!("poll: {e}"),
            }
            let n = match recv(self.guest.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(nix::errno::Errno::EAGAIN) => continue,
                Err(e) => panic!("recv from engine: {e}"),
            };
            assert!(
                n >= 10,
                "message of {n} bytes from the engine: no virtio-net header"
            );
            assert_eq!(buf[..10], [0u8; 10], "virtio-net header without offloads");
            let frame = buf[10..n].to_vec();
            assert!(
                frame.len() <= self.net.mtu as usize + 14,
                "frame of {} bytes over the MTU",
                frame.len()
            );
            if self.answer_arp(&frame) {
                continue;
            }
            return Some(frame);
        }
    }

    /// The first frame before `until` that `pred` accepts; others are discarded.
    pub fn recv_match(&self, until: Instant, mut pred: impl FnMut(&[u8]) -> bool) -> Vec<u8> {
        loop {
            match self.recv(until) {
                Some(f) if pred(&f) => return f,
                Some(_) => {}
                None => panic!("timed out waiting for a frame from the engine"),
            }
        }
    }

    fn answer_arp(&self, f: &[u8]) -> bool {
        let Some((_, _, frames::ETH_ARP, p)) = frames::parse_eth(f) else {
            return false;
        };
        if p.len() >= 28 && p[6..8] == [0, 1] && p[24..28] == self.guest_ip.octets() {
            let sender_mac: [u8; 6] = p[8..14].try_into().unwrap();
            let sender_ip = Ipv4Addr::new(p[14], p[15], p[16], p[17]);
            self.send(&frames::arp(2, self.guest_ip, sender_mac, sender_ip));
            self.arp_answered.set(self.arp_answered.get() + 1);
            return true;
        }
        false
    }

    /// ARP for the gateway and check the reply (as a guest's first frame would); this also
    /// gives the engine the guest's MAC.
    pub fn arp_gateway(&self) {
        let gw = self.gateway();
        self.send(&frames::arp(1, self.guest_ip, [0; 6], gw));
        let f = self.recv_match(deadline(), |f| {
            matches!(frames::parse_eth(f), Some((_, _, frames::ETH_ARP, _)))
        });
        let (dst, src, _, p) = frames::parse_eth(&f).unwrap();
        assert_eq!(dst, GUEST_MAC, "ARP reply to the guest's MAC");
        assert_eq!(src, self.host_mac, "ARP reply from the engine's MAC");
        assert_eq!(p.len(), 28, "ARP payload length");
        assert_eq!(p[..8], [0, 1, 8, 0, 6, 4, 0, 2], "Ethernet/IPv4 ARP reply");
        assert_eq!(p[8..14], self.host_mac, "sender MAC");
        assert_eq!(p[14..18], gw.octets(), "sender IP is the gateway");
        assert_eq!(p[18..24], GUEST_MAC, "target MAC");
        assert_eq!(p[24..28], self.guest_ip.octets(), "target IP");
    }

    /// Ping the gateway and wait for the reply: everything sent before has been handled
    /// (the engine handles frames in order). Returns the frames that arrived first.
    pub fn fence(&self, seq: u16) -> Vec<Vec<u8>> {
        let data = frames::pattern(48, u64::from(seq));
        let gw = self.gateway();
        let echo = frames::icmp4(8, 0xfe4c, seq, &data);
        self.send(&frames::ipv4(
            self.host_mac,
            self.guest_ip,
            gw,
            frames::ICMP,
            &echo,
        ));
        let until = deadline();
        let mut before = Vec::new();
        loop {
            let Some(f) = self.recv(until) else {
                panic!("no reply to the fence ping {seq}");
            };
            if let Some((ip, m)) = frames::parse_icmp4(&f) {
                if m[0] == 0 && m[4..8] == [0xfe, 0x4c, (seq >> 8) as u8, seq as u8] {
                    assert_eq!(ip.src, gw);
                    assert_eq!(&m[8..], &data[..], "fence payload");
                    return before;
                }
            }
            before.push(f);
        }
    }

    /// One control-socket request; the parsed `return` value.
    pub fn api(&self, request: &str) -> serde_json::Value {
        let dir = self.api_dir.as_ref().expect("harness started without api");
        let mut s = UnixStream::connect(dir.join("api.sock")).expect("connect api socket");
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).expect("api reply");
        let v: serde_json::Value = serde_json::from_str(&out).expect("api reply is JSON");
        v.get("return")
            .unwrap_or_else(|| panic!("api error: {out}"))
            .clone()
    }

    /// Close the exit pipe; the engine must return 0. Its counters.
    pub fn stop(mut self) -> Stats {
        drop(self.exit_w.take());
        let (code, stats) = self
            .done
            .recv_timeout(DEADLINE)
            .expect("engine did not exit after the exit pipe closed");
        assert_eq!(code, 0, "engine exit status");
        if let Some(t) = self.thread.take() {
            t.join().expect("engine thread");
        }
        stats
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        drop(self.exit_w.take());
        if let Some(t) = self.thread.take() {
            if !std::thread::panicking() {
                let _ = t.join();
            }
        }
        if let Some(d) = &self.api_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Poll `cond` until it holds or [`DEADLINE`] passes.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let until = deadline();
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
