//! UDP segmentation offload (USO) both ways through the real TAP (src/vnet.rs,
//! engine/udp_batch.rs): a guest app sending with `UDP_SEGMENT` hands the TAP super-datagrams
//! that leave as `UDP_SEGMENT` sends, and a host peer's trains of datagrams (coalesced by
//! `UDP_GRO` on the daemon's socket) enter the guest as one USO frame each. Every stream is
//! sequence-numbered and sha256-checked per flow, datagram by datagram, with order and loss
//! checked; the `uso` counters of `get_stats` prove the offload path ran. Sizes sit at the
//! MTU boundary (a datagram + headers == 1500, and one byte more); the fallbacks deliver the
//! same bytes: a host path that refuses the train's size (cut in the daemon), a guest TAP
//! without USO (`--disable-udp-offload`), and `--disable-offload`; IPv6 trains both ways.
//! Plain datagrams (a guest or host app without `UDP_SEGMENT`) are coalesced into trains by
//! the daemon (`tapwire_proto::train`): the `udp_trains` counters prove it, and a host path
//! too small for a train makes the daemon cut it and stop coalescing on that binding.
//!
//! Needs root; see tests/common for the skip policy.

mod common;

use std::net::{Ipv6Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use common::api::{stats, u, World};
use common::ipv6::{guest_udp6_to, sa, World6, GW6};
use common::tap_mode::*;
use common::*;

/// `UDP_SEGMENT` (linux/udp.h).
const UDP_SEGMENT: libc::c_int = 103;
/// The largest IPv4 UDP payload within an MTU of 1500.
const MTU_PAYLOAD: usize = 1472;

/// Datagram `seq` of `flow`, `size` bytes: flow, sequence number, then bytes from both.
fn datagram(flow: u32, seq: u32, size: usize) -> Vec<u8> {
    let mut d = Vec::with_capacity(size);
    d.extend_from_slice(&flow.to_be_bytes());
    d.extend_from_slice(&seq.to_be_bytes());
    let mut x = flow.wrapping_mul(0x9e37_79b9) ^ seq.wrapping_mul(0x85eb_ca6b) | 1;
    while d.len() < size {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        d.push(x as u8);
    }
    d.truncate(size);
    d
}

/// A stream of trains: train `t` holds `per_train` datagrams of `seg` bytes, every third
/// train one more datagram of `seg / 3` bytes (the short last segment the kernel allows).
struct Stream {
    flow: u32,
    seg: usize,
    /// Each train's datagrams, in order.
    trains: Vec<Vec<Vec<u8>>>,
}

impl Stream {
    fn new(flow: u32, seg: usize, per_train: usize, trains: usize) -> Stream {
        let mut seq = 0;
        let mut out = Vec::new();
        for t in 0..trains {
            let mut train = Vec::new();
            for _ in 0..per_train {
                train.push(datagram(flow, seq, seg));
                seq += 1;
            }
            if t % 3 == 2 {
                train.push(datagram(flow, seq, seg / 3));
                seq += 1;
            }
            out.push(train);
        }
        Stream {
            flow,
            seg,
            trains: out,
        }
    }

    fn datagrams(&self) -> usize {
        self.trains.iter().map(Vec::len).sum()
    }

    fn hash(&self) -> String {
        let mut h = Sha256::new();
        for d in self.trains.iter().flatten() {
            h.update(d);
        }
        h.hex()
    }
}

/// Set `UDP_SEGMENT` (the segment size of every later send) on `s`.
fn set_segment(s: &UdpSocket, seg: usize) {
    let v = seg as libc::c_int;
    // SAFETY: a valid socket fd and a pointer to a c_int of the stated length.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
}

/// Receive side of one flow: every datagram must be the next one, intact.
struct FlowRx<'a> {
    want: Vec<&'a [u8]>,
    next: usize,
    hash: Sha256,
}

impl<'a> FlowRx<'a> {
    fn new(s: &'a Stream) -> FlowRx<'a> {
        FlowRx {
            want: s.trains.iter().flatten().map(Vec::as_slice).collect(),
            next: 0,
            hash: Sha256::new(),
        }
    }

    fn done(&self) -> bool {
        self.next == self.want.len()
    }

    #[track_caller]
    fn take(&mut self, flow: u32, d: &[u8]) {
        assert!(d.len() >= 8, "flow {flow}: runt datagram of {} B", d.len());
        let seq = u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize;
        assert_eq!(
            seq, self.next,
            "flow {flow}: datagram {seq} arrived when {} was next (lost or reordered)",
            self.next
        );
        assert!(
            seq < self.want.len(),
            "flow {flow}: datagram {seq} past the end"
        );
        assert_eq!(d, self.want[seq], "flow {flow}: datagram {seq} corrupted");
        self.hash.update(d);
        self.next += 1;
    }
}

/// The `uso` counters: (enabled, frames_in, frames_out, cut).
fn uso(sock: &Path) -> (bool, u64, u64, u64) {
    let s = stats(sock);
    let on = s.pointer("/uso/enabled").and_then(|v| v.as_bool());
    (
        on.unwrap_or_else(|| panic!("uso/enabled missing in {s}")),
        u(&s, "/uso/frames_in"),
        u(&s, "/uso/frames_out"),
        u(&s, "/uso/cut"),
    )
}

/// The `udp_trains` counters: coalescing of plain datagrams (see `tapwire_proto::train`).
#[derive(Debug, Clone, Copy)]
struct Trains {
    enabled: bool,
    sent: u64,
    datagrams: u64,
    cut: u64,
    to_guest: u64,
}

fn trains(sock: &Path) -> Trains {
    let s = stats(sock);
    Trains {
        enabled: s
            .pointer("/udp_trains/enabled")
            .and_then(|v| v.as_bool())
            .unwrap_or_else(|| panic!("udp_trains/enabled missing in {s}")),
        sent: u(&s, "/udp_trains/sent"),
        datagrams: u(&s, "/udp_trains/datagrams"),
        cut: u(&s, "/udp_trains/cut"),
        to_guest: u(&s, "/udp_trains/to_guest"),
    }
}

/// Have the guest resolve the gateway `gw` before a burst. Until it knows the gateway's MAC
/// its kernel holds the first packets in the neighbour entry's small queue
/// (`unres_qlen_bytes`) and drops the oldest when a burst overflows it, as on any NIC: on
/// a loaded machine, where the daemon answers the ARP late, a flow's first trains were lost
/// before they reached the TAP.
fn resolve_gateway(guest: &Guest, gw: &str) {
    let out = guest.sh(
        &format!("ping -c 1 -W 5 {gw} >/dev/null 2>&1; ip neigh show {gw}"),
        SETUP_TIMEOUT,
    );
    assert!(
        out.stdout.contains("lladdr"),
        "guest did not resolve {gw}: {out:?}"
    );
}

/// Two guest flows send `streams` with `UDP_SEGMENT` (one `send` per train) to a host sink
/// on loopback; the sink checks every datagram of each flow in order and the sha256.
fn guest_to_host(w: &World, port: u16, streams: &[Stream; 2]) {
    resolve_gateway(&w.guest, "10.0.2.2");
    let socks = [w.guest.udp_to(gw(port)), w.guest.udp_to(gw(port))];
    guest_to_host_on(
        w.host.udp(port),
        socks,
        streams,
        Duration::from_millis(1),
        Mode::Segment,
    );
}

/// How a sender puts a stream's trains on the wire.
#[derive(Clone, Copy)]
enum Mode {
    /// One `UDP_SEGMENT` send per train.
    Segment,
    /// Datagram by datagram, with the daemon (this pid) stopped meanwhile: a train's
    /// datagrams wait together in the TAP queue (or the daemon's socket) and are read in one
    /// loop turn, which is when the daemon coalesces them.
    Plain(u32),
}

impl Mode {
    /// Send `train` on `s` as this mode says.
    fn send(self, s: &UdpSocket, train: &[Vec<u8>], to: Option<std::net::SocketAddr>) {
        let send = |d: &[u8]| match to {
            Some(to) => s.send_to(d, to),
            None => s.send(d),
        };
        match self {
            Mode::Segment => send(&train.concat()).map(drop),
            Mode::Plain(_) => train.iter().try_for_each(|d| send(d).map(drop)),
        }
        .unwrap_or_else(|e| panic!("send: {e}"));
    }

    /// Stop (`true`) or continue the daemon around a plain send.
    fn pause(self, stop: bool) {
        if let Mode::Plain(pid) = self {
            let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: kill(2) with the pid of the daemon this test started.
            let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
            assert_eq!(rc, 0, "kill {pid}: {}", std::io::Error::last_os_error());
        }
    }
}

/// [`guest_to_host`] between given sockets, `pause` after each pair of trains.
fn guest_to_host_on(
    sink: UdpSocket,
    socks: [UdpSocket; 2],
    streams: &[Stream; 2],
    pause: Duration,
    mode: Mode,
) {
    big_rcvbuf(&sink, 16 << 20);
    if let Mode::Segment = mode {
        for (s, st) in socks.iter().zip(streams) {
            set_segment(s, st.seg);
        }
    }
    let hashes = std::thread::scope(|scope| {
        let rx = scope.spawn(|| {
            sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut flows = [FlowRx::new(&streams[0]), FlowRx::new(&streams[1])];
            let mut buf = vec![0u8; 65_536];
            while !flows.iter().all(FlowRx::done) {
                let (k, _) = sink.recv_from(&mut buf).unwrap_or_else(|e| {
                    panic!(
                        "sink: {e} after {} + {} datagrams",
                        flows[0].next, flows[1].next
                    )
                });
                assert!(k >= 4, "runt datagram");
                let flow = u32::from_be_bytes(buf[..4].try_into().unwrap());
                assert!(flow < 2, "unknown flow {flow}");
                flows[flow as usize].take(flow, &buf[..k]);
            }
            flows.map(|f| f.hash.hex())
        });
        let trains = streams[0].trains.len().max(streams[1].trains.len());
        for t in 0..trains {
            mode.pause(true);
            for (s, st) in socks.iter().zip(streams) {
                if let Some(train) = st.trains.get(t) {
                    mode.send(s, train, None);
                }
            }
            mode.pause(false);
            // The TAP queue must not overflow (a full one drops silently, as a NIC would).
            std::thread::sleep(pause);
        }
        rx.join().expect("sink thread")
    });
    for (h, st) in hashes.iter().zip(streams) {
        assert_eq!(*h, st.hash(), "flow {} stream sha256", st.flow);
    }
}

/// A host peer sends `stream` to a guest socket in trains with `UDP_SEGMENT` (the daemon's
/// socket receives them coalesced); the guest checks every datagram in order and the sha256.
fn host_to_guest(w: &World, port: u16, stream: &Stream) {
    let (server, guest) = (w.host.udp(port), w.guest.udp_to(gw(port)));
    host_to_guest_on(server, guest, stream, Mode::Segment);
}

/// [`host_to_guest`] between given sockets.
fn host_to_guest_on(server: UdpSocket, guest: UdpSocket, stream: &Stream, mode: Mode) {
    big_rcvbuf(&guest, 16 << 20);
    guest
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The guest says hello until the server hears it (that opens the binding).
    let mut buf = vec![0u8; 65_536];
    let client = loop {
        guest.send(b"h").unwrap();
        if let Ok((1, from)) = server.recv_from(&mut buf) {
            break from;
        }
    };
    if let Mode::Segment = mode {
        set_segment(&server, stream.seg);
    }
    let t0 = Instant::now();
    let hash = std::thread::scope(|scope| {
        let rx = scope.spawn(|| {
            let mut f = FlowRx::new(stream);
            while !f.done() {
                match guest.recv(&mut buf) {
                    Ok(k) => f.take(stream.flow, &buf[..k]),
                    Err(e) => panic!("guest: {e} after {} datagrams", f.next),
                }
            }
            f.hash.hex()
        });
        for train in &stream.trains {
            mode.pause(true);
            mode.send(&server, train, Some(client));
            mode.pause(false);
            // The daemon's socket buffer must not overflow.
            std::thread::sleep(Duration::from_millis(3));
        }
        rx.join().expect("guest reader")
    });
    eprintln!(
        "host->guest: {} datagrams of {} B in {:?}",
        stream.datagrams(),
        stream.seg,
        t0.elapsed()
    );
    assert_eq!(hash, stream.hash(), "host->guest stream sha256");
}

/// A daemon at MTU 1500 whose TAP took USO, for the test `what`; `None` (after saying why)
/// when the machine cannot run it.
fn uso_world(what: &str) -> Option<World> {
    if !preflight(&[]) || !tapwire_only(what) {
        return None;
    }
    let w = World::new(&["--mtu", "1500"]);
    if !uso(&w.sock).0 {
        skip("the kernel refused TUN_F_USO4/6 (Linux < 6.2): no USO to test");
        return None;
    }
    Some(w)
}

#[test]
fn guest_uso_trains_leave_whole_and_arrive_in_order() {
    let Some(w) = uso_world("UDP segmentation offload") else {
        return;
    };
    check_configured(&w.guest, "10.0.2.100/24", "10.0.2.2", 1500);
    let (_, in0, _, _) = uso(&w.sock);
    // 1472 B: a datagram + headers == the MTU; 1000 B with a short last datagram.
    let streams = [
        Stream::new(0, MTU_PAYLOAD, 40, 60),
        Stream::new(1, 1000, 64, 40),
    ];
    guest_to_host(&w, 20510, &streams);
    let (_, in1, _, cut) = uso(&w.sock);
    eprintln!("guest->host: {} USO frames in, {cut} cut", in1 - in0);
    assert!(
        in1 - in0 >= 50,
        "only {} USO frames from the guest for 100 trains",
        in1 - in0
    );
    assert_eq!(cut, 0, "loopback takes every train whole");
    // One byte more than the MTU allows: the guest's kernel refuses the train itself
    // (EMSGSIZE; EINVAL before Linux 6.x), nothing half-sent crosses.
    let s = w.guest.udp_to(gw(20511));
    set_segment(&s, MTU_PAYLOAD + 1);
    let err = s.send(&vec![7u8; 4 * (MTU_PAYLOAD + 1)]).unwrap_err();
    assert!(
        matches!(err.raw_os_error(), Some(libc::EMSGSIZE | libc::EINVAL)),
        "{err}"
    );
}

#[test]
fn host_trains_enter_the_guest_as_uso_frames() {
    let Some(w) = uso_world("UDP segmentation offload") else {
        return;
    };
    let (_, _, out0, _) = uso(&w.sock);
    // At the MTU boundary: every train crosses as USO frames.
    host_to_guest(&w, 20520, &Stream::new(0, MTU_PAYLOAD, 40, 60));
    let (_, _, out1, _) = uso(&w.sock);
    eprintln!("host->guest 1472 B: {} USO frames out", out1 - out0);
    assert!(
        out1 - out0 >= 50,
        "only {} USO frames to the guest for 60 trains",
        out1 - out0
    );
    // One byte more: the guest could not take such datagrams unfragmented, so they go one by
    // one (fragmented), not as USO frames, and still arrive intact.
    host_to_guest(&w, 20521, &Stream::new(1, MTU_PAYLOAD + 1, 20, 15));
    let (_, _, out2, _) = uso(&w.sock);
    assert_eq!(
        out2, out1,
        "datagrams over the guest's MTU went out as USO frames"
    );
    // Small datagrams, many to a train (64 at most in a frame).
    host_to_guest(&w, 20522, &Stream::new(2, 64, 64, 30));
    let (_, _, out3, _) = uso(&w.sock);
    assert!(out3 - out2 >= 20, "64 B trains: {} USO frames", out3 - out2);
}

/// A host path whose MTU is below the guest's train size: the host kernel refuses the
/// `UDP_SEGMENT` send and the daemon cuts the train itself, in place.
#[test]
fn trains_the_host_refuses_are_cut_in_order() {
    let Some(w) = uso_world("UDP segmentation offload") else {
        return;
    };
    w.host.sh("ip link set lo mtu 1400").ok();
    let streams = [
        Stream::new(0, MTU_PAYLOAD, 30, 30),
        Stream::new(1, 1300, 30, 30),
    ];
    guest_to_host(&w, 20530, &streams);
    let (_, frames_in, _, cut) = uso(&w.sock);
    eprintln!("lo mtu 1400: {frames_in} USO frames in, {cut} cut");
    assert!(
        cut >= 20,
        "only {cut} trains cut (1472 B datagrams over lo at 1400)"
    );
}

/// IPv6 (`-6`): trains at the IPv6 MTU boundary (40 + 8 + 1452 == 1500) both ways, from
/// the guest to host [::1] and back.
#[test]
fn ipv6_trains_both_ways() {
    if !preflight(&[]) || !tapwire_only("UDP segmentation offload") {
        return;
    }
    let sock = std::env::temp_dir().join(format!("tapwire-uso6-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let w = World6::new(&["--mtu", "1500", "--api-socket", sock.to_str().unwrap()]);
    if !uso(&sock).0 {
        skip("the kernel refused TUN_F_USO4/6 (Linux < 6.2): no USO to test");
        return;
    }
    let host6 = |port| {
        w.host
            .in_ns(|| UdpSocket::bind((Ipv6Addr::LOCALHOST, port)))
            .unwrap_or_else(|e| panic!("host udp [::1]:{port}: {e}"))
    };
    let streams = [Stream::new(0, 1452, 40, 30), Stream::new(1, 1000, 50, 30)];
    let to = sa(GW6, 20560);
    let socks = [guest_udp6_to(&w.guest, to), guest_udp6_to(&w.guest, to)];
    let pause = Duration::from_millis(1);
    resolve_gateway(&w.guest, &GW6.to_string());
    guest_to_host_on(host6(20560), socks, &streams, pause, Mode::Segment);
    let guest = guest_udp6_to(&w.guest, sa(GW6, 20561));
    host_to_guest_on(
        host6(20561),
        guest,
        &Stream::new(2, 1452, 40, 30),
        Mode::Segment,
    );
    // Plain datagrams, coalesced by the daemon, both ways.
    let plain = Mode::Plain(w._d.pid());
    let to = sa(GW6, 20562);
    let socks = [guest_udp6_to(&w.guest, to), guest_udp6_to(&w.guest, to)];
    let streams = [Stream::new(0, 1452, 30, 10), Stream::new(1, 64, 60, 10)];
    guest_to_host_on(host6(20562), socks, &streams, pause, plain);
    let guest = guest_udp6_to(&w.guest, sa(GW6, 20563));
    host_to_guest_on(host6(20563), guest, &Stream::new(2, 1452, 30, 10), plain);
    let t = trains(&sock);
    eprintln!("IPv6 plain: {t:?}");
    assert!(
        t.sent >= 20 && t.to_guest >= 5,
        "IPv6 plain datagrams: {t:?}"
    );
    let (_, frames_in, frames_out, cut) = uso(&sock);
    eprintln!("IPv6: {frames_in} USO frames in, {frames_out} out, {cut} cut");
    assert!(
        frames_in >= 40,
        "only {frames_in} USO frames from the guest"
    );
    assert!(
        frames_out >= 20,
        "only {frames_out} USO frames to the guest"
    );
    assert_eq!(cut, 0, "loopback takes every train whole");
    drop(w);
    let _ = std::fs::remove_file(&sock);
}

/// A guest that sends without `UDP_SEGMENT`: its plain datagrams of one size, read in one
/// loop turn, leave as `UDP_SEGMENT` trains and reach the host one by one, intact and in
/// order (a shorter datagram ends a train); a host peer's plain datagrams of one size enter
/// the guest as USO frames. Every datagram is checked in order, and each stream's sha256.
#[test]
fn plain_datagrams_cross_as_trains_both_ways() {
    let Some(w) = uso_world("UDP trains") else {
        return;
    };
    let mode = Mode::Plain(w.d.pid());
    let t0 = trains(&w.sock);
    assert!(t0.enabled, "udp_trains off by default: {t0:?}");
    let streams = [
        Stream::new(0, MTU_PAYLOAD, 30, 20),
        Stream::new(1, 64, 60, 20),
    ];
    let total = (streams[0].datagrams() + streams[1].datagrams()) as u64;
    let socks = [w.guest.udp_to(gw(20570)), w.guest.udp_to(gw(20570))];
    let pause = Duration::from_millis(2);
    resolve_gateway(&w.guest, "10.0.2.2");
    guest_to_host_on(w.host.udp(20570), socks, &streams, pause, mode);
    let t1 = trains(&w.sock);
    eprintln!("guest->host: {t1:?} for {total} datagrams");
    assert!(
        t1.sent >= 40 && t1.datagrams >= total / 2,
        "{} of {total} datagrams in {} trains",
        t1.datagrams,
        t1.sent
    );
    assert_eq!(t1.cut, 0, "loopback takes every train whole");
    // Host to guest: at the MTU boundary and small.
    let (server, guest) = (w.host.udp(20571), w.guest.udp_to(gw(20571)));
    host_to_guest_on(server, guest, &Stream::new(2, MTU_PAYLOAD, 30, 20), mode);
    let (server, guest) = (w.host.udp(20572), w.guest.udp_to(gw(20572)));
    host_to_guest_on(server, guest, &Stream::new(3, 64, 60, 20), mode);
    let t2 = trains(&w.sock);
    eprintln!("host->guest: {} USO frames of plain datagrams", t2.to_guest);
    assert!(
        t2.to_guest >= 20,
        "only {} trains to the guest",
        t2.to_guest
    );
}

/// A host path whose MTU is below the guest's datagrams (which the host kernel fragments
/// when they go one by one): the host refuses the first train of each binding, the daemon
/// cuts it in place and stops coalescing there; every datagram still arrives, in order.
#[test]
fn coalescing_stops_where_the_host_refuses_trains() {
    if !preflight(&[]) || !tapwire_only("UDP trains") {
        return;
    }
    let w = World::new(&["--mtu", "1500"]);
    w.host.sh("ip link set lo mtu 1400").ok();
    let streams = [
        Stream::new(0, MTU_PAYLOAD, 30, 10),
        Stream::new(1, MTU_PAYLOAD, 30, 10),
    ];
    let socks = [w.guest.udp_to(gw(20580)), w.guest.udp_to(gw(20580))];
    let pause = Duration::from_millis(2);
    resolve_gateway(&w.guest, "10.0.2.2");
    guest_to_host_on(
        w.host.udp(20580),
        socks,
        &streams,
        pause,
        Mode::Plain(w.d.pid()),
    );
    let t = trains(&w.sock);
    eprintln!("lo mtu 1400: {t:?}");
    assert!(
        (1..=2).contains(&t.cut) && t.sent == 0,
        "two bindings: one refused train each, then none: {t:?}"
    );
}

/// The same streams both ways with a guest TAP that has no USO, and with no offload at all.
#[test]
fn without_uso_everything_still_arrives() {
    if !preflight(&[]) || !tapwire_only("--disable-udp-offload") {
        return;
    }
    for (flags, port) in [
        (&["--disable-udp-offload"][..], 20540),
        (&["--disable-offload"][..], 20550),
    ] {
        let mut args = vec!["--mtu", "1500"];
        args.extend_from_slice(flags);
        let w = World::new(&args);
        assert!(!uso(&w.sock).0, "{flags:?}: USO still enabled");
        // The guest's kernel cuts its UDP_SEGMENT sends itself; the daemon's socket gets no
        // UDP_GRO, so the host's trains arrive as plain datagrams.
        let streams = [
            Stream::new(0, MTU_PAYLOAD, 30, 30),
            Stream::new(1, 1000, 40, 20),
        ];
        guest_to_host(&w, port, &streams);
        host_to_guest(&w, port + 1, &Stream::new(2, MTU_PAYLOAD, 30, 30));
        let (_, frames_in, frames_out, cut) = uso(&w.sock);
        assert_eq!(
            (frames_in, frames_out, cut),
            (0, 0, 0),
            "{flags:?}: USO frames crossed a TAP without USO"
        );
        // The guest's kernel cut its trains into plain datagrams of one size; they still
        // leave one by one (no UDP offload on the host side either).
        let t = trains(&w.sock);
        assert!(
            !t.enabled && t.sent == 0 && t.to_guest == 0,
            "{flags:?}: UDP trains without UDP offload: {t:?}"
        );
    }
}
