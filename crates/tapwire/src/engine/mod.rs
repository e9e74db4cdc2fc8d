//! The event loop: one thread, one epoll set, the TAP, the smoltcp interface and every host
//! socket.
//!
//! # Theory of operation
//! Each turn of [`Engine::run`]:
//!
//! 1. wait for readiness (`mio`, edge-triggered) with a timeout from smoltcp's timers, capped
//!    at one second for housekeeping, or zero while the TAP still has frames;
//! 2. handle host-socket events: mark TCP readiness, finish host connects, drain UDP and ICMP
//!    sockets into frames for the guest, read signals and the exit fd;
//! 3. read up to [`RX_BUDGET`] frames from the TAP into one buffer and dispatch each as
//!    `wire::classify` says: TCP (creating a flow on a fresh SYN) and ARP/ping go to smoltcp,
//!    UDP and echo requests to their proxies, the rest is dropped and counted;
//! 4. service the TCP flows that are dirty (a segment arrived, the host socket became ready)
//!    or due (a smoltcp timer): pump host <-> smoltcp rings (see `tcp`) and let smoltcp emit
//!    that flow's segments, ACKs, window updates and RSTs. Each flow owns a one-socket smoltcp
//!    set, so no step scans every flow: the cost per packet does not grow with the number of
//!    open connections (see `schedule`);
//! 5. let the interface do its own housekeeping;
//! 6. once a second, expire idle UDP and ICMP bindings.
//!
//! Buffers are allocated once: the receive frame, smoltcp's transmit frame, one frame for
//! UDP/ICMP replies and a fragmentation scratch. Tokens carry the flow kind in their low two
//! bits and the flow's slab index above, so an event reaches its flow without a lookup.
//!
//! Exit: SIGTERM/SIGINT (daemon mode), the exit fd becoming readable or hung up, the TAP going
//! away (the guest's namespace died), or, in run mode, the command exiting (its status is ours).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration as StdDuration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use slab::Slab;
use smoltcp::iface::{Interface, PollResult, SocketSet};
use smoltcp::socket::tcp as smol_tcp;
use smoltcp::time::Instant;
use smoltcp::wire::IpListenEndpoint;

use crate::control::server::{Control, Readiness};
use crate::engine::dns::Resolver;
use crate::link::device::{self, DeviceStats, TapDevice};
use crate::link::tap::Tap;
use icmp::IcmpFlow;
use tapwire_proto::config::{Forward, NetConfig, Proto};
use tapwire_proto::control::{Forwards, Request};
use tapwire_proto::dhcp::{DhcpError, DhcpServer};
use tapwire_proto::flow::FlowTable;
use tapwire_proto::nat::{Nat, Verdict};
use tapwire_proto::reassembly::{Fed, Reassembler};
use tapwire_proto::vnet;
use tapwire_proto::wire::{
    self, Class, DropCounters, DropReason, EchoInfo, Link6, LinkInfo, RouterAdvert, TcpInfo,
    UdpInfo, Unreachable, ETH_LEN, ICMP_OFFSET, L2, UDP_PAYLOAD,
};
use tcp::{Outcome, Phase, TcpFlow};
use udp::{UdpFlow, UdpHost};

/// The smoltcp device over the engine's TAP fields. A macro, not a method: the borrows must
/// stay disjoint from `self.iface` and the flow table used alongside it.
macro_rules! tap_device {
    ($e:expr) => {
        TapDevice::new(
            &$e.tap,
            &mut $e.tx,
            &mut $e.stats.device,
            $e.mtu,
            $e.offload,
        )
    };
}

mod control;
pub mod dns;
mod forward;
pub mod icmp;
pub mod tcp;
pub mod udp;

use tapwire_proto::schedule::Schedule;

/// Frames read from the TAP per loop turn before host sockets get a turn.
pub const RX_BUDGET: usize = 128;
/// Host connects in progress at once (SYN-flood cap).
pub const MAX_CONNECTING: usize = 1024;
/// TCP flows at once.
pub const MAX_TCP_FLOWS: usize = 32_768;

const KIND_BITS: usize = 3;
const KIND_MASK: usize = (1 << KIND_BITS) - 1;
const KIND_SPECIAL: usize = 0;
const KIND_TCP: usize = 1;
const KIND_UDP: usize = 2;
const KIND_ICMP: usize = 3;
const KIND_FWD: usize = 4;
const KIND_API: usize = 5;
const TOKEN_TAP: Token = Token(0);
const TOKEN_SIGNAL: Token = Token(1 << KIND_BITS);
const TOKEN_EXIT_FD: Token = Token(2 << KIND_BITS);
const TOKEN_API: Token = Token(3 << KIND_BITS);

fn token(kind: usize, idx: usize) -> Token {
    Token((idx << KIND_BITS) | kind)
}

/// The host socket of a port forward.
enum FwdSocket {
    Tcp(mio::net::TcpListener),
    Udp(mio::net::UdpSocket),
}

struct FwdEntry {
    id: u64,
    guest: SocketAddr,
    sock: FwdSocket,
}

/// Counters for the whole daemon.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub frames_in: u64,
    pub bytes_in: u64,
    pub drops: DropCounters,
    pub tcp_flows: u64,
    pub udp_flows: u64,
    pub icmp_flows: u64,
    pub device: DeviceStats,
}

/// What ends the daemon besides signals.
#[derive(Debug, Default)]
pub struct Lifecycle {
    /// `-e FD`: exit when it becomes readable or hangs up.
    pub exit_fd: Option<OwnedFd>,
    /// Run mode: the command; its exit status becomes ours.
    pub child: Option<Pid>,
}

/// Errors that stop the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Setting up the event loop: {0}
    #[error("event loop setup: {0}")]
    Setup(#[source] io::Error),
    /// Waiting for events: {0}
    #[error("waiting for events: {0}")]
    Poll(#[source] io::Error),
}

type TcpKey = (SocketAddr, SocketAddr);

/// A TCP flow and the one-socket smoltcp set it owns, so smoltcp never scans other flows'
/// sockets on its behalf (see `schedule`).
struct TcpSlot {
    flow: TcpFlow<mio::net::TcpStream>,
    sockets: SocketSet<'static>,
    /// The MSS the guest announced (with offloads, smoltcp is told a bigger one and this is
    /// the segment size of the TSO frames it sends; `u16::MAX`: the MTU decides).
    mss: u16,
    /// When the guest's last segment on this flow arrived (engine clock, microseconds).
    last_guest_us: i64,
    /// Since when we wait for the guest (see [`TcpSlot::guest_deadline`]).
    waiting_since_us: Option<i64>,
}

impl TcpSlot {
    /// A slot for `sock`; `flow` builds the flow around the socket's handle.
    fn new(
        sock: smol_tcp::Socket<'static>,
        flow: impl FnOnce(smoltcp::iface::SocketHandle) -> TcpFlow<mio::net::TcpStream>,
    ) -> TcpSlot {
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(sock);
        TcpSlot {
            flow: flow(handle),
            sockets,
            mss: u16::MAX,
            last_guest_us: 0,
            waiting_since_us: None,
        }
    }

    /// Pump the flow (see [`TcpFlow::pump`]).
    fn pump(&mut self) -> Outcome {
        let sock = self.sockets.get_mut::<smol_tcp::Socket>(self.flow.handle);
        self.flow.pump(sock)
    }

    fn state(&self) -> smol_tcp::State {
        self.sockets
            .get::<smol_tcp::Socket>(self.flow.handle)
            .state()
    }

    /// When the guest must have sent something by (see [`TcpFlow::guest_timeout`]), counted
    /// from its last segment or from when we started waiting, whichever is later. A deadline
    /// already past gives up on the flow (its RST goes out with the next transmit).
    fn guest_deadline(&mut self, now_us: i64) -> Option<i64> {
        let sock = self.sockets.get_mut::<smol_tcp::Socket>(self.flow.handle);
        let Some(limit) = self.flow.guest_timeout(sock) else {
            self.waiting_since_us = None;
            return None;
        };
        let since = *self.waiting_since_us.get_or_insert(now_us);
        let deadline = since.max(self.last_guest_us) + limit.total_micros() as i64;
        if now_us >= deadline {
            self.flow.give_up(sock);
            return None;
        }
        Some(deadline)
    }
}

/// The forwarder; see the module documentation.
pub struct Engine {
    net: NetConfig,
    poll: Poll,
    tap: Tap,
    iface: Interface,
    /// The set smoltcp sees for frames that belong to no flow (ARP, ping of our addresses,
    /// segments to answer with a RST): always empty.
    no_sockets: SocketSet<'static>,
    /// Frame read from the TAP.
    rx: Vec<u8>,
    /// Frame built by smoltcp.
    tx: Vec<u8>,
    /// Frame built for UDP/ICMP replies and errors.
    out: Vec<u8>,
    /// Fragmentation scratch.
    scratch: Vec<u8>,
    mtu: usize,
    /// The TAP does checksum and TCP segmentation offload (see `vnet`).
    offload: bool,
    tcp_buffer: usize,
    link: LinkInfo,
    l2: L2,
    nat: Nat,
    resolver: Resolver,
    dhcp: DhcpServer,
    /// IPv4 reassembly (taken out while a completed packet is handled).
    reasm: Option<Reassembler>,
    tcp: FlowTable<TcpKey, TcpSlot>,
    /// TCP flows to service this turn, and when the others next need smoltcp.
    sched: Schedule,
    udp: FlowTable<TcpKey, UdpFlow>,
    icmp: FlowTable<(Ipv4Addr, Ipv4Addr, u16), IcmpFlow>,
    forwards: Forwards,
    fwd_socks: Slab<FwdEntry>,
    /// Inbound UDP bindings by (forward id, host client).
    fwd_clients: HashMap<(u64, SocketAddr), usize>,
    control: Option<Control>,
    connecting: usize,
    /// Pending host connects in the order they started (with stale entries; see
    /// `prune_connecting_order`).
    connecting_order: VecDeque<(usize, TcpKey)>,
    stats: Stats,
    start: std::time::Instant,
    signals: SignalFd,
    life: Lifecycle,
    tap_readable: bool,
    indices: Vec<usize>,
    last_sweep_ms: u64,
    /// When the last router advertisement went out (unsolicited ones every minute).
    last_ra_ms: Option<u64>,
    ip_ident: u16,
    /// Identification of the IPv6 datagrams we fragment.
    frag_ident6: u32,
    exit: Option<i32>,
}

impl Engine {
    /// Set up the loop around a TAP fd. Blocks SIGTERM, SIGINT, SIGHUP and SIGCHLD (they are
    /// read from a signalfd), so call it after any child that must not inherit that mask.
    pub fn new(net: NetConfig, tap: Tap, life: Lifecycle) -> Result<Engine, EngineError> {
        tap.set_nonblocking(true).map_err(EngineError::Setup)?;
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGCHLD,
        ] {
            mask.add(s);
        }
        mask.thread_block()
            .map_err(|e| EngineError::Setup(io::Error::from(e)))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| EngineError::Setup(io::Error::from(e)))?;

        let poll = Poll::new().map_err(EngineError::Setup)?;
        let reg = poll.registry();
        reg.register(
            &mut SourceFd(&tap.as_raw_fd()),
            TOKEN_TAP,
            Interest::READABLE,
        )
        .map_err(EngineError::Setup)?;
        reg.register(
            &mut SourceFd(&signals.as_raw_fd()),
            TOKEN_SIGNAL,
            Interest::READABLE,
        )
        .map_err(EngineError::Setup)?;
        if let Some(fd) = &life.exit_fd {
            reg.register(
                &mut SourceFd(&fd.as_raw_fd()),
                TOKEN_EXIT_FD,
                Interest::READABLE,
            )
            .map_err(EngineError::Setup)?;
        }

        let offload = match tap.set_offload(net.offload) {
            Ok(()) => net.offload,
            Err(e) => {
                tracing::warn!("TUNSETOFFLOAD: {e}; running without TSO/checksum offload");
                false
            }
        };
        let mtu = net.mtu as usize;
        let frame_len = mtu + ETH_LEN;
        // With offloads, the guest sends and takes TCP frames of up to 64 KiB.
        let big_frame = if offload { vnet::MAX_FRAME } else { frame_len };
        let mut tx = vec![0u8; big_frame];
        let mut dev_stats = DeviceStats::default();
        let start = std::time::Instant::now();
        let iface = {
            let mut dev = TapDevice::new(&tap, &mut tx, &mut dev_stats, mtu, offload);
            device::new_interface(&net, &mut dev, Instant::from_micros(0))
        };
        let link = LinkInfo {
            mac: net.host_mac(),
            gateway: net.gateway(),
            dns: net.dns(),
            ipv6: net.enable_ipv6.then(|| Link6 {
                gateway: net.gateway6(),
                dns: net.dns6(),
                link_local: net.link_local6(),
            }),
        };
        Ok(Engine {
            poll,
            tap,
            iface,
            no_sockets: device::new_socket_set(),
            // Even without offloads: a device someone else left in TSO mode still sends them.
            rx: vec![0u8; vnet::MAX_FRAME],
            tx,
            out: vec![0u8; 65_536 + UDP_PAYLOAD],
            scratch: vec![0u8; frame_len],
            mtu,
            offload,
            tcp_buffer: device::tcp_buffer_size(if offload { vnet::MAX_FRAME } else { mtu }),
            link,
            l2: L2 {
                src: net.host_mac(),
                dst: [0xff; 6],
            },
            nat: Nat::new(&net),
            dhcp: DhcpServer::new(&net),
            reasm: Some(Reassembler::default()),
            resolver: Resolver::new("/etc/resolv.conf"),
            tcp: FlowTable::new(MAX_TCP_FLOWS),
            sched: Schedule::default(),
            udp: FlowTable::new(udp::MAX_FLOWS),
            icmp: FlowTable::new(icmp::MAX_FLOWS),
            forwards: Forwards::default(),
            fwd_socks: Slab::new(),
            fwd_clients: HashMap::new(),
            control: None,
            connecting: 0,
            connecting_order: VecDeque::new(),
            stats: Stats::default(),
            start,
            signals,
            life,
            tap_readable: true,
            indices: Vec::new(),
            last_sweep_ms: 0,
            last_ra_ms: None,
            ip_ident: 0,
            frag_ident6: 0,
            exit: None,
            net,
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.start.elapsed().as_micros() as i64)
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Run until an exit condition; returns the process exit status.
    pub fn run(&mut self) -> Result<i32, EngineError> {
        let mut events = Events::with_capacity(1024);
        // A run-mode command may have exited before SIGCHLD was blocked.
        self.reap_child();
        loop {
            if let Some(code) = self.exit {
                return Ok(code);
            }
            let timeout = if self.tap_readable || self.sched.has_dirty() {
                StdDuration::ZERO
            } else {
                self.timeout()
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(EngineError::Poll(e)),
            }
            for ev in events.iter() {
                let t = ev.token();
                let idx = t.0 >> KIND_BITS;
                match t.0 & KIND_MASK {
                    KIND_TCP => self.tcp_event(idx, ev),
                    KIND_UDP => self.udp_readable(idx),
                    KIND_ICMP => self.icmp_readable(idx),
                    KIND_FWD => self.fwd_readable(idx),
                    KIND_API => self.api_event(idx, ev),
                    KIND_SPECIAL if t == TOKEN_API => self.api_accept(),
                    KIND_SPECIAL if t == TOKEN_TAP => self.tap_readable = true,
                    KIND_SPECIAL if t == TOKEN_SIGNAL => self.read_signals(),
                    KIND_SPECIAL if t == TOKEN_EXIT_FD => {
                        tracing::info!("exit fd closed; exiting");
                        self.exit = Some(0);
                    }
                    _ => {}
                }
            }
            if self.tap_readable {
                self.read_tap();
            }
            self.service_tcp();
            self.egress();
            let now_ms = self.now_ms();
            if now_ms.saturating_sub(self.last_sweep_ms) >= 1000 {
                self.last_sweep_ms = now_ms;
                self.sweep(now_ms);
                if self
                    .last_ra_ms
                    .is_none_or(|t| now_ms.saturating_sub(t) >= 60_000)
                {
                    self.send_router_advert();
                }
                if let Some(c) = &mut self.control {
                    c.sweep(now_ms);
                }
            }
        }
    }

    fn read_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            match (sig, self.life.child) {
                (Signal::SIGCHLD, _) => self.reap_child(),
                // Run mode: the terminal's ^C reaches the command itself; forward the rest.
                (Signal::SIGINT, Some(_)) => {}
                (_, Some(child)) => {
                    let _ = nix::sys::signal::kill(child, sig);
                }
                (_, None) => {
                    tracing::info!("{sig}; exiting");
                    self.exit = Some(0);
                }
            }
        }
    }

    fn reap_child(&mut self) {
        let Some(child) = self.life.child else {
            return;
        };
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                    self.exit = Some(code);
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                    self.exit = Some(128 + sig as i32);
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    fn read_tap(&mut self) {
        // Lend the receive buffer out of `self` so the frame can be borrowed while handling it.
        let mut rx = std::mem::take(&mut self.rx);
        for _ in 0..RX_BUDGET {
            match self.tap.read(&mut rx) {
                Ok((hdr, n)) if hdr.gso_ok() => self.handle_frame(&rx[..n], hdr.needs_csum()),
                Ok(_) => self.stats.drops.bump(DropReason::Gso),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    self.stats.drops.bump(DropReason::Gso)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.tap_readable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::info!("TAP read: {e}; the guest namespace is gone, exiting");
                    self.exit = Some(0);
                    self.tap_readable = false;
                    break;
                }
            }
        }
        self.rx = rx;
    }

    /// One frame from the guest; `partial`: its TCP/UDP checksum was left to offload.
    fn handle_frame(&mut self, frame: &[u8], partial: bool) {
        self.stats.frames_in += 1;
        self.stats.bytes_in += frame.len() as u64;
        let class = wire::classify_offloaded(frame, &self.link, partial);
        if !matches!(class, Class::Drop(_)) {
            if let Ok(mac) = <[u8; 6]>::try_from(&frame[6..12]) {
                self.l2.dst = mac;
            }
        }
        match class {
            Class::Drop(DropReason::Fragment) => self.fragment_from_guest(frame),
            Class::Drop(reason) => self.stats.drops.bump(reason),
            Class::Stack => {
                self.ingress(frame, None);
                if frame.get(12..14) != Some(&[0x08, 0x00]) {
                    // ARP or neighbor discovery: flows that waited for the guest's MAC (smoltcp
                    // retries a second later) can transmit now.
                    let soon = self.now().total_micros() + 1_000_000;
                    self.sched.expire(soon);
                }
            }
            Class::Tcp(info) => self.tcp_from_guest(&info, frame),
            Class::Udp(u) => self.udp_from_guest(&u, frame),
            Class::Echo(e) => self.echo_from_guest(&e),
            Class::Dhcp(msg) => self.dhcp_from_guest(msg),
            Class::RouterSolicit(_) => self.send_router_advert(),
        }
    }

    /// Collect an IPv4 fragment; a completed packet is handled like any other frame.
    fn fragment_from_guest(&mut self, frame: &[u8]) {
        let now_ms = self.now_ms();
        let Some(mut reasm) = self.reasm.take() else {
            return;
        };
        match reasm.feed(frame, now_ms) {
            Fed::Complete(whole) => {
                // Counted once more as a frame; that is the packet the guest meant to send.
                self.handle_frame(whole, false);
            }
            Fed::Pending => {}
            Fed::Invalid => self.stats.drops.bump(DropReason::Fragment),
        }
        self.reasm = Some(reasm);
    }

    /// How long the loop may sleep: until the next flow deadline, at most a second.
    fn timeout(&mut self) -> StdDuration {
        let now = self.now();
        let mut micros = 1_000_000;
        if let Some(at) = self.sched.next_deadline() {
            micros = micros.min(at - now.total_micros());
        }
        if let Some(d) = self.iface.poll_delay(now, &self.no_sockets) {
            micros = micros.min(d.total_micros() as i64);
        }
        StdDuration::from_micros(micros.max(0) as u64)
    }

    /// Hand a frame to smoltcp: to flow `idx`'s socket, or to the interface alone (which
    /// answers ARP and pings of our addresses, and a segment for no flow with a RST).
    fn ingress(&mut self, frame: &[u8], idx: Option<usize>) {
        let now = self.now();
        let mut dev = TapDevice {
            rx: Some(frame),
            ..tap_device!(self)
        };
        match idx.and_then(|i| self.tcp.get_mut(i)) {
            Some(slot) => {
                slot.last_guest_us = now.total_micros();
                self.iface
                    .poll_ingress_single(now, &mut dev, &mut slot.sockets);
            }
            None => {
                self.iface
                    .poll_ingress_single(now, &mut dev, &mut self.no_sockets);
            }
        }
        if let Some(i) = idx {
            self.sched.mark(i);
        }
    }

    /// Interface housekeeping and anything it queued outside the flows' sockets.
    fn egress(&mut self) {
        let now = self.now();
        let mut dev = tap_device!(self);
        self.iface.poll_maintenance(now);
        self.iface.poll_egress(now, &mut dev, &mut self.no_sockets);
    }

    /// Write `self.out[..len]` to the guest, fragmenting if it exceeds the MTU.
    fn send_out(&mut self, len: usize) {
        let ident6 = if self.out.get(12..14) == Some(&[0x86, 0xdd]) && len > self.mtu + ETH_LEN {
            self.frag_ident6 = self.frag_ident6.wrapping_add(1);
            Some(self.frag_ident6)
        } else {
            None
        };
        let stats = &mut self.stats.device;
        let tap = &self.tap;
        let frame = &self.out[..len];
        let emit = |f: &[u8]| device::write_frame(tap, f, stats);
        match ident6 {
            Some(ident) => wire::fragment6(frame, self.mtu, ident, &mut self.scratch, emit),
            None => wire::fragment(frame, self.mtu, &mut self.scratch, emit),
        }
    }

    fn next_ident(&mut self) -> u16 {
        self.ip_ident = self.ip_ident.wrapping_add(1);
        self.ip_ident
    }

    /// Answer a guest packet (`frame`) with ICMP destination unreachable.
    fn send_unreachable(&mut self, code: Unreachable, frame: &[u8]) {
        let Some(ip) = frame.get(ETH_LEN..) else {
            return;
        };
        let n = if frame.get(12..14) == Some(&[0x86, 0xdd]) {
            let code6 = match code {
                Unreachable::Net => 0,
                Unreachable::Host => 3,
                Unreachable::Port => 4,
            };
            wire::icmp6_error(&mut self.out, &self.l2, self.net.link_local6(), code6, ip)
        } else {
            wire::icmp_error(&mut self.out, &self.l2, self.net.gateway(), code, ip)
        };
        if let Some(n) = n {
            self.send_out(n);
        }
    }

    fn send_rst(&mut self, syn: &TcpInfo) {
        if let Some(n) = wire::tcp_rst(&mut self.out, &self.l2, syn) {
            self.send_out(n);
        }
    }

    /// Whether the guest sent this to our DNS forwarder (network+3 or PREFIX::3, port 53).
    fn is_dns(&self, dst: SocketAddr) -> bool {
        let ours = match dst.ip() {
            std::net::IpAddr::V4(ip) => ip == self.net.dns(),
            std::net::IpAddr::V6(ip) => self.net.enable_ipv6 && ip == self.net.dns6(),
        };
        ours && dst.port() == 53 && !self.net.disable_dns
    }

    fn resolver_for(&mut self, dst: SocketAddr) -> Option<SocketAddr> {
        if self.is_dns(dst) {
            let now_ms = self.now_ms();
            self.resolver.upstream(now_ms)
        } else {
            None
        }
    }

    // ---- TCP ----

    fn tcp_from_guest(&mut self, info: &TcpInfo, frame: &[u8]) {
        // With offloads, smoltcp must believe the guest takes 64 KiB segments (see `vnet`).
        // A SYN is at most 14 + 60 + 60 bytes (Ethernet, IPv4 with options or IPv6, TCP).
        let mut syn = [0u8; 160];
        if self.offload && info.syn && frame.len() <= syn.len() {
            let copy = &mut syn[..frame.len()];
            copy.copy_from_slice(frame);
            let mss = vnet::raise_syn_mss(copy);
            self.tcp_segment(info, copy, mss);
        } else {
            self.tcp_segment(info, frame, None);
        }
    }

    /// A TCP segment from the guest; `mss`: the guest's MSS if this is its SYN or SYN-ACK.
    fn tcp_segment(&mut self, info: &TcpInfo, frame: &[u8], mss: Option<u16>) {
        let key = (info.src, info.dst);
        let idx = match self.tcp.find(&key) {
            Some(idx) => idx,
            None if !info.syn || info.ack => {
                // Not ours (e.g. after removal): smoltcp answers with a RST.
                self.ingress(frame, None);
                return;
            }
            None => match self.new_tcp_flow(info, frame) {
                Some(idx) => idx,
                None => return,
            },
        };
        if let Some(slot) = self.tcp.get_mut(idx) {
            slot.flow.segments_from_guest += 1;
            if let Some(mss) = mss {
                slot.mss = mss;
            }
        }
        self.ingress(frame, Some(idx));
        if info.rst {
            self.check_tcp(idx);
        }
    }

    /// Re-evaluate one flow right away (a RST may have sent a connecting socket back to
    /// LISTEN, where it must not catch another SYN).
    fn check_tcp(&mut self, idx: usize) {
        let Some(slot) = self.tcp.get_mut(idx) else {
            return;
        };
        if slot.pump() == Outcome::Remove {
            self.remove_tcp(idx);
        }
    }

    /// Start a flow for a SYN; its index, or `None` if the SYN was answered (RST/ICMP) or
    /// dropped.
    fn new_tcp_flow(&mut self, info: &TcpInfo, frame: &[u8]) -> Option<usize> {
        let resolver = self.resolver_for(info.dst);
        let target = match self.nat.translate(info.dst, resolver) {
            Verdict::Connect(t) => t,
            Verdict::Refused => {
                self.send_rst(info);
                return None;
            }
            Verdict::Unreachable(code) => {
                self.send_unreachable(code, frame);
                return None;
            }
        };
        if self.connecting >= MAX_CONNECTING {
            // A flood of SYNs to hosts that never answer must not lock everyone out until the
            // host's connect() times out: the oldest pending handshake makes room.
            self.evict_oldest_connecting();
        }
        if self.connecting >= MAX_CONNECTING || self.tcp.len() >= MAX_TCP_FLOWS {
            self.stats.drops.bump(DropReason::Policy);
            return None;
        }
        let host = match start_connect(&self.net, target) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%target, "connect: {e}");
                self.connect_failed(info, frame, target, &e);
                return None;
            }
        };
        let endpoint = IpListenEndpoint {
            addr: Some(info.dst.ip().into()),
            port: info.dst.port(),
        };
        let Some(sock) = device::new_tcp_socket(endpoint, self.tcp_buffer) else {
            self.stats.drops.bump(DropReason::Policy);
            return None;
        };
        // The SYN's IP header and TCP header start, to quote in an ICMP error later.
        let mut syn_quote = [0u8; 48];
        let quote = frame.get(ETH_LEN..).unwrap_or(&[]);
        let quote_len = quote.len().min(syn_quote.len());
        syn_quote[..quote_len].copy_from_slice(&quote[..quote_len]);
        let slot = TcpSlot::new(sock, |handle| TcpFlow {
            host,
            handle,
            phase: Phase::Connecting,
            guest: info.src,
            dst: info.dst,
            target,
            host_readable: false,
            host_writable: false,
            host_eof: false,
            host_read_closed: false,
            guest_fin: false,
            guest_fin_seen: false,
            bytes_to_host: 0,
            bytes_to_guest: 0,
            segments_from_guest: 0,
            syn_quote,
            syn_quote_len: quote_len,
            syn_seq: info.seq,
        });
        let now_ms = self.now_ms();
        let Ok(idx) = self.tcp.insert((info.src, info.dst), slot, now_ms) else {
            self.stats.drops.bump(DropReason::Policy);
            return None;
        };
        let slot = self.tcp.get_mut(idx)?;
        if let Err(e) = self.poll.registry().register(
            &mut slot.flow.host,
            token(KIND_TCP, idx),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!("registering a host socket: {e}");
            self.remove_tcp(idx);
            self.stats.drops.bump(DropReason::Policy);
            return None;
        }
        self.connecting += 1;
        self.connecting_order.push_back((idx, (info.src, info.dst)));
        self.stats.tcp_flows += 1;
        Some(idx)
    }

    /// Whether `entry` of `connecting_order` still names a flow that is connecting.
    fn is_connecting(&self, (idx, key): (usize, TcpKey)) -> bool {
        self.tcp.key(idx) == Some(&key)
            && self
                .tcp
                .get(idx)
                .is_some_and(|s| s.flow.phase == Phase::Connecting)
    }

    /// Drop `connecting_order` entries at the front that are no longer connecting (keeps the
    /// queue bounded by the handshakes started during the oldest pending one).
    fn prune_connecting_order(&mut self) {
        while let Some(&front) = self.connecting_order.front() {
            if self.is_connecting(front) {
                return;
            }
            self.connecting_order.pop_front();
        }
    }

    /// Abandon the oldest pending host connect; the guest gets a RST.
    fn evict_oldest_connecting(&mut self) {
        self.prune_connecting_order();
        let Some((idx, (guest, dst))) = self.connecting_order.pop_front() else {
            return;
        };
        let Some(seq) = self.tcp.get(idx).map(|s| s.flow.syn_seq) else {
            return;
        };
        self.remove_tcp(idx);
        self.stats.drops.bump(DropReason::Policy);
        let syn = TcpInfo {
            src: guest,
            dst,
            syn: true,
            ack: false,
            rst: false,
            fin: false,
            seq,
            seq_len: 1,
        };
        self.send_rst(&syn);
    }

    /// The guest's connect must fail the way the host's did. A refused DNS connection moves
    /// the forwarder to the next nameserver for the guest's retry.
    fn connect_failed(&mut self, syn: &TcpInfo, frame: &[u8], target: SocketAddr, e: &io::Error) {
        if e.kind() == io::ErrorKind::ConnectionRefused && self.is_dns(syn.dst) {
            self.resolver.failed(target.ip());
        }
        match e.raw_os_error() {
            Some(libc::ENETUNREACH) => self.send_unreachable(Unreachable::Net, frame),
            Some(libc::EHOSTUNREACH) => self.send_unreachable(Unreachable::Host, frame),
            _ => self.send_rst(syn),
        }
    }

    fn tcp_event(&mut self, idx: usize, ev: &mio::event::Event) {
        let Some(TcpSlot { flow, sockets, .. }) = self.tcp.get_mut(idx) else {
            return;
        };
        self.sched.mark(idx);
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            flow.host_readable = true;
        }
        if ev.is_read_closed() {
            flow.host_read_closed = true;
        }
        if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
            flow.host_writable = true;
        }
        if flow.phase != Phase::Connecting || !flow.host_writable {
            return;
        }
        let result = match flow.host.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => match flow.host.peer_addr() {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(true) => {
                let sock = sockets.get_mut::<smol_tcp::Socket>(flow.handle);
                flow.connected(sock);
                self.connecting -= 1;
            }
            Ok(false) => flow.host_writable = false,
            Err(e) => {
                tracing::debug!(target = %flow.target, "connect: {e}");
                let syn = TcpInfo {
                    src: flow.guest,
                    dst: flow.dst,
                    syn: true,
                    ack: false,
                    rst: false,
                    fin: false,
                    seq: flow.syn_seq,
                    seq_len: 1,
                };
                let mut quote = [0u8; ETH_LEN + 48];
                let qlen = flow.syn_quote_len;
                if flow.guest.is_ipv6() {
                    quote[12..14].copy_from_slice(&[0x86, 0xdd]);
                }
                quote[ETH_LEN..ETH_LEN + qlen].copy_from_slice(&flow.syn_quote[..qlen]);
                let quote = &quote[..ETH_LEN + qlen];
                let target = flow.target;
                self.remove_tcp(idx);
                self.connect_failed(&syn, quote, target, &e);
            }
        }
    }

    /// Service the flows that are dirty or due: pump, let smoltcp transmit, reschedule.
    fn service_tcp(&mut self) {
        let now = self.now();
        self.sched.expire(now.total_micros());
        let mut indices = std::mem::take(&mut self.indices);
        self.sched.take_dirty(&mut indices);
        for &idx in &indices {
            self.service_flow(idx, now);
        }
        self.indices = indices;
    }

    fn service_flow(&mut self, idx: usize, now: Instant) {
        let Some(slot) = self.tcp.get_mut(idx) else {
            return;
        };
        if slot.pump() == Outcome::Remove {
            self.remove_tcp(idx);
            return;
        }
        let deadline = slot.guest_deadline(now.total_micros());
        let mut dev = TapDevice {
            mss: slot.mss,
            ..tap_device!(self)
        };
        // Each pass emits at most one segment; stop when a pass emits nothing.
        for _ in 0..4096 {
            if self.iface.poll_egress(now, &mut dev, &mut slot.sockets) == PollResult::None {
                break;
            }
        }
        // The RST of an aborted flow is out. smoltcp may also have closed the socket while
        // transmitting (a TIME-WAIT that ran out): nothing else would wake the flow, so let it
        // see that now.
        if (slot.flow.phase == Phase::Aborted || slot.state() == smol_tcp::State::Closed)
            && slot.pump() == Outcome::Remove
        {
            self.remove_tcp(idx);
            return;
        }
        // A paused SYN-ACK (host connect pending) makes smoltcp ask for a poll at once,
        // forever: such a flow waits for its host socket or the guest instead.
        if slot.flow.phase != Phase::Connecting {
            if let Some(at) = self.iface.poll_at(now, &slot.sockets) {
                self.sched.schedule(idx, at.total_micros());
            }
        }
        if let Some(at) = deadline {
            self.sched.schedule(idx, at);
        }
    }

    fn remove_tcp(&mut self, idx: usize) {
        let Some((_, TcpSlot { mut flow, .. })) = self.tcp.remove(idx) else {
            return;
        };
        self.sched.forget(idx);
        if flow.phase == Phase::Connecting {
            self.connecting -= 1;
        }
        let _ = self.poll.registry().deregister(&mut flow.host);
        tracing::debug!(
            guest = %flow.guest, dst = %flow.dst,
            to_host = flow.bytes_to_host, to_guest = flow.bytes_to_guest,
            "tcp flow closed"
        );
    }

    // ---- IPv6 router advertisements ----

    /// Announce the prefix (SLAAC), MTU and DNS server to all nodes on the link.
    fn send_router_advert(&mut self) {
        if !self.net.enable_ipv6 {
            return;
        }
        self.last_ra_ms = Some(self.now_ms());
        let all_nodes = std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        let ra = RouterAdvert {
            router: self.net.link_local6(),
            prefix: self.net.prefix6,
            mtu: self.net.mtu,
            dns: (!self.net.disable_dns).then(|| self.net.dns6()),
        };
        let l2 = L2 {
            src: self.link.mac,
            dst: wire::multicast_mac(all_nodes),
        };
        if let Some(n) = wire::router_advert(&mut self.out, &l2, &ra, all_nodes) {
            self.send_out(n);
        }
    }

    // ---- DHCP ----

    fn dhcp_from_guest(&mut self, msg: &[u8]) {
        let now_s = self.now_ms() / 1000;
        match self.dhcp.handle(msg, now_s, &mut self.out[UDP_PAYLOAD..]) {
            Ok(len) => {
                let server = self.net.gateway();
                if let Some(n) = wire::finish_dhcp(&mut self.out, self.link.mac, server, len) {
                    self.send_out(n);
                }
            }
            Err(DhcpError::Malformed) => self.stats.drops.bump(DropReason::Dhcp),
            Err(DhcpError::Ignored) => {}
        }
    }

    // ---- UDP ----

    fn udp_from_guest(&mut self, u: &UdpInfo<'_>, frame: &[u8]) {
        let key = (u.src, u.dst);
        let now_ms = self.now_ms();
        let idx = match self.udp.find(&key) {
            Some(idx) => idx,
            None if self.udp.len() >= udp::MAX_FLOWS => {
                // Full (a flood of new destinations): refuse before paying for a host socket.
                self.stats.drops.bump(DropReason::Policy);
                return;
            }
            None => {
                let resolver = self.resolver_for(u.dst);
                let target = match self.nat.translate(u.dst, resolver) {
                    Verdict::Connect(t) => t,
                    Verdict::Refused => {
                        return self.send_unreachable(Unreachable::Port, frame);
                    }
                    Verdict::Unreachable(code) => return self.send_unreachable(code, frame),
                };
                let idle = if u.dst.port() == 53 {
                    udp::DNS_IDLE_MS
                } else {
                    udp::IDLE_MS
                };
                let dns = self.is_dns(u.dst);
                let flow = match UdpFlow::open(&self.net, u.src, u.dst, target, idle) {
                    Ok(f) => UdpFlow {
                        last_query: dns.then(Vec::new),
                        ..f
                    },
                    Err(e) => {
                        tracing::debug!(%target, "udp socket: {e}");
                        self.stats.drops.bump(DropReason::Policy);
                        return;
                    }
                };
                match self.insert_udp(key, flow, now_ms) {
                    Some(idx) => idx,
                    None => return,
                }
            }
        };
        self.udp.touch(idx, now_ms);
        let Some(flow) = self.udp.get_mut(idx) else {
            return;
        };
        let sent = match &flow.host {
            UdpHost::Connected(sock) => sock.send(u.payload),
            UdpHost::Forwarded { fwd, id, client } => match self.fwd_socks.get(*fwd) {
                Some(FwdEntry {
                    id: fid,
                    sock: FwdSocket::Udp(sock),
                    ..
                }) if fid == id => sock.send_to(u.payload, *client),
                _ => Err(io::Error::from(io::ErrorKind::NotConnected)),
            },
        };
        match sent {
            Ok(_) => flow.datagrams_out += 1,
            Err(e) => {
                tracing::debug!(dst = %flow.dst, "udp send: {e}");
                self.stats.drops.bump(DropReason::Policy);
            }
        }
        if let Some(q) = &mut flow.last_query {
            q.clear();
            q.extend_from_slice(u.payload);
        }
    }

    /// Add a binding and register its socket (if it has its own).
    fn insert_udp(&mut self, key: TcpKey, flow: UdpFlow, now_ms: u64) -> Option<usize> {
        let Ok(idx) = self.udp.insert(key, flow, now_ms) else {
            self.stats.drops.bump(DropReason::Policy);
            return None;
        };
        if let Some(UdpFlow {
            host: UdpHost::Connected(sock),
            ..
        }) = self.udp.get_mut(idx)
        {
            if self
                .poll
                .registry()
                .register(sock, token(KIND_UDP, idx), Interest::READABLE)
                .is_err()
            {
                self.remove_udp(idx);
                self.stats.drops.bump(DropReason::Policy);
                return None;
            }
        }
        self.stats.udp_flows += 1;
        Some(idx)
    }

    fn udp_readable(&mut self, idx: usize) {
        let now_ms = self.now_ms();
        loop {
            let Some(flow) = self.udp.get_mut(idx) else {
                return;
            };
            let UdpHost::Connected(sock) = &flow.host else {
                return;
            };
            let at = wire::udp_payload_offset(flow.guest.is_ipv6());
            match sock.recv(&mut self.out[at..]) {
                Ok(n) => {
                    flow.datagrams_in += 1;
                    let (src, dst) = (flow.dst, flow.guest);
                    self.udp.touch(idx, now_ms);
                    self.udp_to_guest(src, dst, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // E.g. ECONNREFUSED after an ICMP port unreachable: tell the guest.
                    tracing::debug!(dst = %flow.dst, "udp recv: {e}");
                    if e.kind() == io::ErrorKind::ConnectionRefused {
                        let (guest, dst) = (flow.guest, flow.dst);
                        if !self.dns_failover(idx) {
                            self.udp_port_unreachable(guest, dst);
                        }
                    } else {
                        return;
                    }
                }
            }
        }
    }

    /// The nameserver behind DNS binding `idx` refused: point the binding at the next one and
    /// send it the guest's pending query. False if there is no other nameserver to try.
    fn dns_failover(&mut self, idx: usize) -> bool {
        let Some(flow) = self.udp.get(idx) else {
            return false;
        };
        let UdpHost::Connected(sock) = &flow.host else {
            return false;
        };
        if flow.last_query.is_none() {
            return false;
        }
        let Ok(refused) = sock.peer_addr() else {
            return false;
        };
        let dst = flow.dst;
        let Some(next) = self.resolver.failed(refused.ip()) else {
            return false;
        };
        let Verdict::Connect(target) = self.nat.translate(dst, Some(next)) else {
            return false;
        };
        let Some(flow) = self.udp.get_mut(idx) else {
            return false;
        };
        let (UdpHost::Connected(sock), Some(query)) = (&flow.host, &flow.last_query) else {
            return false;
        };
        // A nameserver of the other family needs another socket: the guest's retry gets one.
        if sock.connect(target).is_err() || sock.send(query).is_err() {
            return false;
        }
        flow.datagrams_out += 1;
        true
    }

    /// Send the `len` bytes at `self.out[UDP_PAYLOAD..]` to the guest as a datagram.
    fn udp_to_guest(&mut self, src: SocketAddr, dst: SocketAddr, len: usize) {
        let ident = self.next_ident();
        if let Some(n) = wire::finish_udp(&mut self.out, &self.l2, src, dst, len, ident) {
            self.send_out(n);
        }
    }

    /// Tell the guest that `dst` refused its datagrams (quote a synthetic header).
    fn udp_port_unreachable(&mut self, guest: SocketAddr, dst: SocketAddr) {
        let mut pkt = [0u8; wire::UDP6_PAYLOAD];
        let to_us = L2 {
            src: self.l2.dst,
            dst: self.l2.src,
        };
        if let Some(n) = wire::finish_udp(&mut pkt, &to_us, guest, dst, 0, 0) {
            let copy = pkt;
            self.send_unreachable(Unreachable::Port, &copy[..n]);
        }
    }

    fn remove_udp(&mut self, idx: usize) {
        if let Some((_, flow)) = self.udp.remove(idx) {
            self.release_udp(flow);
        }
    }

    fn release_udp(&mut self, flow: UdpFlow) {
        match flow.host {
            UdpHost::Connected(mut sock) => {
                let _ = self.poll.registry().deregister(&mut sock);
            }
            UdpHost::Forwarded { id, client, .. } => {
                self.fwd_clients.remove(&(id, client));
            }
        }
    }

    // ---- ICMP ----

    fn echo_from_guest(&mut self, e: &EchoInfo<'_>) {
        let key = (e.src, e.dst, e.ident);
        let now_ms = self.now_ms();
        let idx = match self.icmp.find(&key) {
            Some(idx) => idx,
            None => {
                let dst = SocketAddr::new(e.dst.into(), 0);
                let target = match self.nat.translate(dst, None) {
                    Verdict::Connect(t) => t,
                    _ => {
                        self.stats.drops.bump(DropReason::Policy);
                        return;
                    }
                };
                let flow = match IcmpFlow::open(&self.net, e.src, e.dst, e.ident, target) {
                    Ok(f) => f,
                    Err(err) => {
                        tracing::debug!("ICMP socket (check net.ipv4.ping_group_range): {err}");
                        self.stats.drops.bump(DropReason::Policy);
                        return;
                    }
                };
                let Ok(idx) = self.icmp.insert(key, flow, now_ms) else {
                    self.stats.drops.bump(DropReason::Policy);
                    return;
                };
                let Some(flow) = self.icmp.get_mut(idx) else {
                    return;
                };
                if self
                    .poll
                    .registry()
                    .register(&mut flow.sock, token(KIND_ICMP, idx), Interest::READABLE)
                    .is_err()
                {
                    self.remove_icmp(idx);
                    return;
                }
                self.stats.icmp_flows += 1;
                idx
            }
        };
        self.icmp.touch(idx, now_ms);
        if let Some(flow) = self.icmp.get_mut(idx) {
            if flow.sock.send(e.message).is_err() {
                self.stats.drops.bump(DropReason::Policy);
            }
        }
    }

    fn icmp_readable(&mut self, idx: usize) {
        loop {
            let Some(flow) = self.icmp.get_mut(idx) else {
                return;
            };
            let max = self.out.len() - ICMP_OFFSET;
            match flow
                .sock
                .recv(&mut self.out[ICMP_OFFSET..ICMP_OFFSET + max])
            {
                Ok(n) => {
                    let (src, dst, ident) = (flow.dst, flow.guest, flow.ident);
                    if let Some(len) =
                        wire::finish_echo_reply(&mut self.out, &self.l2, src, dst, ident, n)
                    {
                        self.send_out(len);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn remove_icmp(&mut self, idx: usize) {
        if let Some((_, mut flow)) = self.icmp.remove(idx) {
            let _ = self.poll.registry().deregister(&mut flow.sock);
        }
    }

    fn sweep(&mut self, now_ms: u64) {
        self.prune_connecting_order();
        for (_, flow) in self.udp.expire(now_ms, |f| f.idle_ms) {
            self.release_udp(flow);
        }
        for (_, mut flow) in self.icmp.expire(now_ms, |_| icmp::IDLE_MS) {
            let _ = self.poll.registry().deregister(&mut flow.sock);
        }
    }
}

/// Start a non-blocking connect to `target` (bound per `--outbound-addr`).
fn start_connect(net: &NetConfig, target: SocketAddr) -> io::Result<mio::net::TcpStream> {
    let sock = udp::host_socket(net, target, socket2::Type::STREAM, None)?;
    sock.set_tcp_nodelay(true)?;
    match sock.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(std::net::TcpStream::from(
        sock,
    )))
}
