//! One full frame through the stack, the way the engine handles it: `wire::classify`, then
//! smoltcp ingress into an established socket, the socket drained (guest->host) or filled
//! (host->guest), then smoltcp egress writing the ACK or segment to the "TAP" (here /dev/null,
//! so the write syscall is counted but nothing queues). Measured with 0 and 10,000 other
//! established sockets in the same `SocketSet`: smoltcp visits every socket on ingress and
//! egress, so this shows the per-packet cost of open flows.
//!
//! Before the benchmarks, a counting `#[global_allocator]` checks that the per-packet path
//! allocates nothing: classify + finish_udp + FlowTable::find, and the two full-frame paths.
//! It prints the counts and panics if any is not zero.
use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::OpenOptions;
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use smoltcp::iface::{Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpAddress, IpListenEndpoint, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl,
    TcpPacket, TcpRepr, TcpSeqNumber,
};
use tapwire::link::device::{self, DeviceStats, TapDevice};
use tapwire::link::tap::Tap;
use tapwire_proto::config::NetConfig;
use tapwire_proto::flow::FlowTable;
use tapwire_proto::wire::{self, Class, LinkInfo, L2, UDP_PAYLOAD};

// ---- allocation counter ----

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; it only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds GlobalAlloc::alloc's contract, which we pass on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above; `ptr` was allocated by System through this allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCS.load(Ordering::Relaxed);
    f();
    ALLOCS.load(Ordering::Relaxed) - before
}

// ---- a stack with established sockets ----

const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
const GUEST_PORT: u16 = 40_000;
const DST_PORT: u16 = 5201;
const MSS: usize = 1448;
const ETH: usize = 14;
const IP: usize = 20;
const TCP_SEQ: usize = ETH + IP + 4;
const TCP_ACK: usize = ETH + IP + 8;
const TCP_CSUM: usize = ETH + IP + 16;

fn link(net: &NetConfig) -> LinkInfo {
    LinkInfo {
        mac: net.host_mac(),
        gateway: net.gateway(),
        dns: net.dns(),
        ipv6: None,
    }
}

struct Rig {
    net: NetConfig,
    link: LinkInfo,
    tap: Tap,
    iface: Interface,
    sockets: SocketSet<'static>,
    tx: Vec<u8>,
    stats: DeviceStats,
    start: std::time::Instant,
}

impl Rig {
    fn new() -> Rig {
        let net = NetConfig::default();
        // Frames go to /dev/null: the write syscall happens, nothing queues.
        let null: OwnedFd = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .expect("open /dev/null")
            .into();
        let tap = Tap::from_fd(null);
        let mut tx = vec![0u8; net.mtu as usize + ETH];
        let mut stats = DeviceStats::default();
        let iface = {
            let mut dev = TapDevice::new(&tap, &mut tx, &mut stats, net.mtu as usize, false);
            device::new_interface(&net, &mut dev, Instant::from_micros(0))
        };
        let mut rig = Rig {
            link: link(&net),
            net,
            tap,
            iface,
            sockets: device::new_socket_set(),
            tx,
            stats,
            start: std::time::Instant::now(),
        };
        // The guest announces itself (smoltcp learns neighbours from ARP only).
        let arp = arp_request(&rig.net);
        rig.ingress(&arp);
        rig
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.start.elapsed().as_micros() as i64)
    }

    /// classify + smoltcp ingress, as `Engine::handle_frame` does for TCP and ARP.
    fn ingress(&mut self, frame: &[u8]) {
        match wire::classify(frame, &self.link) {
            Class::Tcp(_) | Class::Stack => {}
            other => panic!("frame classified as {other:?}"),
        }
        let now = self.now();
        let mut dev = TapDevice {
            rx: Some(frame),
            ..TapDevice::new(
                &self.tap,
                &mut self.tx,
                &mut self.stats,
                self.net.mtu as usize,
                false,
            )
        };
        self.iface
            .poll_ingress_single(now, &mut dev, &mut self.sockets);
    }

    /// smoltcp egress until quiet, as `Engine::egress` does.
    fn egress(&mut self) {
        let now = self.now();
        let mut dev = TapDevice::new(
            &self.tap,
            &mut self.tx,
            &mut self.stats,
            self.net.mtu as usize,
            false,
        );
        for _ in 0..4096 {
            if self.iface.poll_egress(now, &mut dev, &mut self.sockets) == PollResult::None {
                break;
            }
        }
    }

    /// A guest connection from `gport` to gateway:`dport`, established. Returns the socket,
    /// the guest's next sequence number and ours.
    fn connect(&mut self, gport: u16, dport: u16, buffer: usize) -> (SocketHandle, u32, u32) {
        let gw = self.net.gateway();
        let endpoint = IpListenEndpoint {
            addr: Some(gw.into()),
            port: dport,
        };
        let mut sock = device::new_tcp_socket(endpoint, buffer, buffer).expect("listen");
        sock.pause_synack(false); // the host connect "succeeded"
        let h = self.sockets.add(sock);
        let isn = 1_000_000u32;
        let syn = tcp_frame(&self.net, gport, dport, isn, None, TcpControl::Syn, &[]);
        self.ingress(&syn);
        self.egress();
        let synack = &self.tx[..];
        let ours = u32::from_be_bytes(synack[TCP_SEQ..TCP_SEQ + 4].try_into().unwrap());
        let acked = u32::from_be_bytes(synack[TCP_ACK..TCP_ACK + 4].try_into().unwrap());
        assert_eq!(acked, isn + 1, "expected our SYN-ACK in the tx buffer");
        let ack = tcp_frame(
            &self.net,
            gport,
            dport,
            isn + 1,
            Some(ours + 1),
            TcpControl::None,
            &[],
        );
        self.ingress(&ack);
        self.egress();
        let s = self.sockets.get::<tcp::Socket>(h);
        assert_eq!(s.state(), tcp::State::Established);
        (h, isn + 1, ours + 1)
    }
}

fn arp_request(net: &NetConfig) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(GUEST_MAC),
        source_protocol_addr: GUEST,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: net.gateway(),
    };
    let mut f = vec![0u8; ETH + repr.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut f);
    EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut eth);
    repr.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
    f
}

/// A guest TCP segment to the gateway, checksums filled.
fn tcp_frame(
    net: &NetConfig,
    gport: u16,
    dport: u16,
    seq: u32,
    ack: Option<u32>,
    control: TcpControl,
    payload: &[u8],
) -> Vec<u8> {
    let syn = control == TcpControl::Syn;
    let tcp = TcpRepr {
        src_port: gport,
        dst_port: dport,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 65_535,
        window_scale: syn.then_some(7),
        max_seg_size: syn.then_some(MSS as u16),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let ip = Ipv4Repr {
        src_addr: GUEST,
        dst_addr: net.gateway(),
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut f = vec![0u8; ETH + ip.buffer_len() + tcp.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut f);
    EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress(net.host_mac()),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let caps = ChecksumCapabilities::default();
    let mut ipp = Ipv4Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut ipp, &caps);
    ipp.set_dont_frag(true);
    ipp.fill_checksum();
    tcp.emit(
        &mut TcpPacket::new_unchecked(ipp.payload_mut()),
        &IpAddress::Ipv4(GUEST),
        &IpAddress::Ipv4(net.gateway()),
        &caps,
    );
    f
}

/// Overwrite the 32-bit field at `at` and fix the TCP checksum incrementally (RFC 1624).
fn patch_u32(frame: &mut [u8], at: usize, new: u32) {
    let old = u32::from_be_bytes(frame[at..at + 4].try_into().unwrap());
    let hc = u16::from_be_bytes([frame[TCP_CSUM], frame[TCP_CSUM + 1]]);
    let mut sum = (!hc) as u32;
    for (o, n) in [(old >> 16, new >> 16), (old & 0xffff, new & 0xffff)] {
        sum += (!(o as u16)) as u32 + n;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[TCP_CSUM..TCP_CSUM + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    frame[at..at + 4].copy_from_slice(&new.to_be_bytes());
}

/// A rig with `idle` other established connections and one measured connection.
struct Flow {
    rig: Rig,
    h: SocketHandle,
    guest_seq: u32,
    our_seq: u32,
    data: Vec<u8>,
    ack: Vec<u8>,
    payload: Vec<u8>,
}

impl Flow {
    fn new(idle: usize) -> Flow {
        let mut rig = Rig::new();
        for i in 0..idle {
            // Small buffers: the scan cost does not depend on them.
            rig.connect(
                20_000 + (i % 40_000) as u16,
                1000 + (i / 40_000) as u16,
                4096,
            );
        }
        let buffer = device::tcp_buffer_size(rig.net.mtu as usize);
        let (h, guest_seq, our_seq) = rig.connect(GUEST_PORT, DST_PORT, buffer);
        let payload = vec![0x5au8; MSS];
        let data = tcp_frame(
            &rig.net,
            GUEST_PORT,
            DST_PORT,
            guest_seq,
            Some(our_seq),
            TcpControl::Psh,
            &payload,
        );
        let ack = tcp_frame(
            &rig.net,
            GUEST_PORT,
            DST_PORT,
            guest_seq,
            Some(our_seq),
            TcpControl::None,
            &[],
        );
        Flow {
            rig,
            h,
            guest_seq,
            our_seq,
            data,
            ack,
            payload,
        }
    }

    /// One 1448-byte segment from the guest, drained to the "host", ACK written.
    fn guest_to_host(&mut self) {
        patch_u32(&mut self.data, TCP_SEQ, self.guest_seq);
        patch_u32(&mut self.data, TCP_ACK, self.our_seq);
        let frame = std::mem::take(&mut self.data);
        self.rig.ingress(&frame);
        self.data = frame;
        let sock = self.rig.sockets.get_mut::<tcp::Socket>(self.h);
        // The ring hands out contiguous pieces: two when the segment wraps around its end.
        let mut n = 0;
        while let Ok(k @ 1..) = sock.recv(|b| (b.len(), b.len())) {
            n += k;
        }
        assert_eq!(n, MSS, "segment not accepted");
        black_box(n);
        self.rig.egress();
        self.guest_seq = self.guest_seq.wrapping_add(MSS as u32);
    }

    /// 1448 bytes from the "host" sent as one segment, then the guest's ACK for it.
    fn host_to_guest(&mut self) {
        let sock = self.rig.sockets.get_mut::<tcp::Socket>(self.h);
        let n = sock.send_slice(&self.payload).expect("socket writable");
        assert_eq!(n, MSS);
        self.rig.egress();
        self.our_seq = self.our_seq.wrapping_add(MSS as u32);
        patch_u32(&mut self.ack, TCP_SEQ, self.guest_seq);
        patch_u32(&mut self.ack, TCP_ACK, self.our_seq);
        let frame = std::mem::take(&mut self.ack);
        self.rig.ingress(&frame);
        self.ack = frame;
        let sock = self.rig.sockets.get::<tcp::Socket>(self.h);
        assert_eq!(sock.send_queue(), 0, "guest ACK not accepted");
    }
}

// ---- the allocation check ----

fn alloc_check() {
    let net = NetConfig::default();
    let link = link(&net);
    let to_us = L2 {
        src: GUEST_MAC,
        dst: net.host_mac(),
    };
    let mut udp = vec![0u8; UDP_PAYLOAD + 1472];
    let guest = SocketAddr::V4(SocketAddrV4::new(GUEST, 40_000));
    let gw = SocketAddr::V4(SocketAddrV4::new(net.gateway(), 53));
    let n = wire::finish_udp(&mut udp, &to_us, guest, gw, 1472, 1).expect("fits");
    udp.truncate(n);
    let mut out = vec![0u8; UDP_PAYLOAD + 1472];
    let back = L2 {
        src: net.host_mac(),
        dst: GUEST_MAC,
    };
    let mut table: FlowTable<(SocketAddr, SocketAddr), u32> = FlowTable::new(20_000);
    for i in 0..10_000u16 {
        let k = SocketAddr::V4(SocketAddrV4::new(GUEST, 10_000 + i));
        table.insert((k, gw), i as u32, 0).expect("capacity");
    }
    let wire_allocs = allocations(|| {
        for i in 0..10_000u32 {
            black_box(wire::classify(black_box(&udp), &link));
            black_box(wire::finish_udp(&mut out, &back, gw, guest, 1472, i as u16));
            let k = SocketAddr::V4(SocketAddrV4::new(GUEST, 10_000 + (i % 10_000) as u16));
            if let Some(idx) = table.find(&(k, gw)) {
                table.touch(idx, i as u64);
            }
        }
    });

    let mut flow = Flow::new(100);
    for _ in 0..1000 {
        flow.guest_to_host();
        flow.host_to_guest();
    }
    let up = allocations(|| {
        for _ in 0..10_000 {
            flow.guest_to_host();
        }
    });
    let down = allocations(|| {
        for _ in 0..10_000 {
            flow.host_to_guest();
        }
    });
    println!(
        "allocations per 10,000 packets: classify+finish_udp+FlowTable::find {wire_allocs}, \
         full frame guest->host {up}, full frame host->guest {down}"
    );
    assert_eq!(
        (wire_allocs, up, down),
        (0, 0, 0),
        "the per-packet path allocates"
    );
}

// ---- benchmarks ----

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_through_stack");
    g.throughput(Throughput::Bytes(MSS as u64));
    for idle in [0usize, 10_000] {
        let mut flow = Flow::new(idle);
        g.bench_function(BenchmarkId::new("guest_to_host_1448", idle), |b| {
            b.iter(|| flow.guest_to_host())
        });
        g.bench_function(BenchmarkId::new("host_to_guest_1448", idle), |b| {
            b.iter(|| flow.host_to_guest())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    alloc_check();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
