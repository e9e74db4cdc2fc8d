//! The event loop: one thread, one epoll set, the TAP, the smoltcp interface and every host
//! socket.
//!
//! # Theory of operation
//! Each turn of [`Engine::run`]:
//!
//! 1. wait for readiness (`mio`, edge-triggered) with a timeout from smoltcp's timers, capped
//!    at one second for housekeeping (and by the next `-p auto` dump), or zero while the TAP
//!    still has frames or a TCP flow is dirty, and for up to `--busy-poll` microseconds after
//!    a quick exchange (`tapwire_proto::spin`: a ping-pong's next packet is often closer than
//!    a sleep and a wakeup);
//! 2. dispatch host-socket events by their token (see `host`): TCP readiness and connect
//!    completion (`tcp`), UDP and ICMP replies drained into frames for the guest (`udp`,
//!    `icmp`), port forward listeners (`forward`), API clients (`control`), spliced
//!    `--forward-to-host` connections (`splice`, no frames involved), signals and the exit fd
//!    (`lifecycle`);
//! 3. read up to [`RX_BUDGET`] frames from the TAP into one buffer and dispatch each as
//!    `wire::classify` says: TCP (creating a flow on a fresh SYN) and ARP/ping go to smoltcp,
//!    UDP and echo requests to their proxies, DHCP and router solicitations to `ndp_dhcp`,
//!    IPv4 fragments to reassembly, the rest is dropped and counted; UDP datagrams queued on
//!    the way are sent at the end, one `sendmmsg` per binding (`udp_batch`);
//! 4. service the TCP flows that are dirty (a segment arrived, the host socket became ready)
//!    or due (a smoltcp timer): no step scans every flow, so the cost per packet does not grow
//!    with the number of open connections (see `tcp`);
//! 5. let the interface do its own housekeeping;
//! 6. with `-p auto`, when due, dump the guest's listeners and update the automatic forwards
//!    (`autopublish`);
//! 7. once a second, expire idle UDP and ICMP bindings, send the periodic router
//!    advertisement, time out idle API clients.
//!
//! The state is grouped by who uses it, so each step borrows only its part: the guest's link
//! (`guest`: TAP, smoltcp interface, frame buffers), the host side (`host`: registry, NAT,
//! DNS upstream), one table per protocol, the forwards, the control socket, the link
//! configuration services, the exit conditions, the counters and the clock. Buffers are
//! allocated once; nothing is allocated per packet.
//!
//! Exit: SIGTERM/SIGINT (daemon mode), the exit fd becoming readable or hung up, the TAP going
//! away (the guest's namespace died), or, in run mode, the command exiting (its status is ours).
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration as StdDuration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};
use smoltcp::time::Instant;
use tapwire_proto::config::NetConfig;
use tapwire_proto::flow::FlowTable;
use tapwire_proto::reassembly::Reassembled;
use tapwire_proto::spin::Spin;
use tapwire_proto::vnet::VnetHdr;
use tapwire_proto::wire::{self, Class, DropCounters, DropReason};

use crate::control::server::Control;
use crate::link::device::{self, DeviceStats};
use crate::link::tap::Tap;
use forward::Forwarding;
use guest::GuestLink;
use host::{
    Host, KIND_API, KIND_BITS, KIND_FWD, KIND_ICMP, KIND_MASK, KIND_SPECIAL, KIND_SPLICE,
    KIND_SPLICE_LISTEN, KIND_TCP, KIND_UDP, TOKEN_API, TOKEN_AUTO, TOKEN_EXIT_FD, TOKEN_SIGNAL,
    TOKEN_TAP, TOKEN_WAKE,
};
use icmp::IcmpTable;
use lifecycle::Exit;
use ndp_dhcp::LinkConfig;
use tcp::TcpTable;
use udp::UdpTable;

pub mod autopublish;
mod control;
pub mod dns;
mod forward;
mod guest;
mod host;
pub mod icmp;
mod lifecycle;
mod ndp_dhcp;
pub mod queues;
pub mod splice;
pub mod tcp;
pub mod udp;
mod udp_batch;

pub use lifecycle::{proc_pid, Lifecycle};
pub use tcp::{MAX_CONNECTING, MAX_TCP_FLOWS};

/// Frames read from the TAP per loop turn before host sockets get a turn.
pub const RX_BUDGET: usize = 128;

/// Counters for the whole daemon (and the packet capture, in `device`, which a clone leaves
/// out).
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub frames_in: u64,
    pub bytes_in: u64,
    pub drops: DropCounters,
    pub tcp_flows: u64,
    pub udp_flows: u64,
    /// UDP bindings removed to make room in a full table.
    pub udp_evicted: u64,
    /// Guest UDP super-datagrams (USO frames) received.
    pub uso_in: u64,
    /// Guest super-datagrams the host refused to take whole (`UDP_SEGMENT`), cut here.
    pub uso_cut: u64,
    /// Plain guest datagrams coalesced into `UDP_SEGMENT` trains: trains sent, the datagrams
    /// in them, trains the host refused (cut and sent one by one; see `udp_batch`).
    pub trains_out: u64,
    pub train_datagrams: u64,
    pub trains_cut: u64,
    /// Plain host datagrams of one size in a row written to the guest as one USO frame.
    pub trains_in: u64,
    pub icmp_flows: u64,
    pub device: DeviceStats,
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

/// The engine's clock: time since the engine started.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start: std::time::Instant,
}

impl Clock {
    #[inline]
    fn now(self) -> Instant {
        Instant::from_micros(self.start.elapsed().as_micros() as i64)
    }

    #[inline]
    fn now_ms(self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// The forwarder; see the module documentation.
pub struct Engine {
    net: NetConfig,
    clock: Clock,
    /// When the once-a-second housekeeping last ran.
    last_sweep_ms: u64,
    /// The TAP, the smoltcp interface, the frame buffers.
    link: GuestLink,
    /// The registry of host sockets, the NAT, the DNS upstream.
    host: Host,
    tcp: TcpTable,
    udp: UdpTable,
    /// Batch buffers of the UDP bindings (see `udp_batch`).
    udp_batch: udp_batch::UdpBatch,
    icmp: IcmpTable,
    fwd: Forwarding,
    /// `--forward-to-host`: spliced guest loopback connections (see `splice`).
    splice: splice::Spliced,
    /// DHCP and router advertisements.
    link_config: LinkConfig,
    control: Option<Control>,
    /// `-p auto` (see `autopublish`).
    auto: Option<Box<autopublish::AutoPublisher>>,
    /// The sandbox is applied: no path outside it can be opened (`start_capture` is refused).
    confined: bool,
    exit: Exit,
    stats: Stats,
    /// `--threads`: this worker's place among the others (see `queues`).
    shard: Option<Box<queues::Shard>>,
    /// `--busy-poll` (see `tapwire_proto::spin`).
    spin: Spin,
}

impl Engine {
    /// Set up the loop around a TAP fd. Blocks SIGTERM, SIGINT, SIGHUP and SIGCHLD (they are
    /// read from a signalfd), so call it after any child that must not inherit that mask.
    pub fn new(net: NetConfig, tap: Tap, life: Lifecycle) -> Result<Engine, EngineError> {
        let exit = Exit::new(life).map_err(EngineError::Setup)?;
        Self::build(net, tap, exit)
    }

    /// `--threads`: another worker on another queue of the TAP (no signals, no exit fd; see
    /// `queues`). Call [`Engine::attach_shard`] on every worker before they run.
    pub fn worker(net: NetConfig, tap: Tap) -> Result<Engine, EngineError> {
        Self::build(net, tap, Exit::worker())
    }

    fn build(net: NetConfig, tap: Tap, exit: Exit) -> Result<Engine, EngineError> {
        tap.set_nonblocking(true).map_err(EngineError::Setup)?;
        let poll = Poll::new().map_err(EngineError::Setup)?;
        let reg = poll.registry();
        reg.register(
            &mut SourceFd(&tap.as_raw_fd()),
            TOKEN_TAP,
            Interest::READABLE,
        )
        .map_err(EngineError::Setup)?;
        if let Some(signals) = &exit.signals {
            reg.register(
                &mut SourceFd(&signals.as_raw_fd()),
                TOKEN_SIGNAL,
                Interest::READABLE,
            )
            .map_err(EngineError::Setup)?;
        }
        if let Some(fd) = &exit.life.exit_fd {
            reg.register(
                &mut SourceFd(&fd.as_raw_fd()),
                TOKEN_EXIT_FD,
                Interest::READABLE,
            )
            .map_err(EngineError::Setup)?;
        }

        let mut stats = Stats::default();
        let link = GuestLink::new(&net, tap, &mut stats.device);
        let clock = Clock {
            start: std::time::Instant::now(),
        };
        Ok(Engine {
            clock,
            last_sweep_ms: 0,
            tcp: TcpTable::new(link.tcp_buffer(), tcp::budget_share(&net)),
            udp_batch: udp_batch::UdpBatch::new(link.out.len()),
            link,
            host: Host::new(&net, poll),
            udp: FlowTable::new(udp::MAX_FLOWS),
            icmp: FlowTable::new(icmp::MAX_FLOWS),
            fwd: Forwarding::default(),
            splice: splice::Spliced::default(),
            link_config: LinkConfig::new(&net),
            control: None,
            auto: None,
            confined: false,
            exit,
            stats,
            spin: Spin::new(net.busy_poll_us),
            net,
            shard: None,
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Run until an exit condition; returns the process exit status.
    pub fn run(&mut self) -> Result<i32, EngineError> {
        let mut events = Events::with_capacity(1024);
        // A run-mode command may have exited before SIGCHLD was blocked.
        self.exit.reap_child();
        loop {
            if let Some(code) = self.exit.code {
                return Ok(code);
            }
            let timeout = if self.link.readable || self.tcp.sched.has_dirty() {
                StdDuration::ZERO
            } else if self.spin.enabled() && self.spin.quiet(self.clock.now().total_micros() as u64)
            {
                // `--busy-poll`: the last exchange was quick; poll without sleeping.
                StdDuration::ZERO
            } else {
                self.timeout()
            };
            match self.host.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(EngineError::Poll(e)),
            }
            if self.spin.enabled() && !events.is_empty() {
                self.spin.woke(self.clock.now().total_micros() as u64);
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
                    KIND_SPLICE_LISTEN => self.splice_accept(idx),
                    KIND_SPLICE => self.splice_event(idx),
                    KIND_SPECIAL if t == TOKEN_API => self.api_accept(),
                    KIND_SPECIAL if t == TOKEN_TAP => self.link.readable = true,
                    KIND_SPECIAL if t == TOKEN_SIGNAL => self.exit.read_signals(),
                    KIND_SPECIAL if t == TOKEN_AUTO => self.auto_readable(),
                    KIND_SPECIAL if t == TOKEN_WAKE => self.inbox_ready(),
                    KIND_SPECIAL if t == TOKEN_EXIT_FD => {
                        tracing::info!("exit fd closed; exiting");
                        self.exit.code = Some(0);
                    }
                    _ => {}
                }
            }
            if self.link.readable {
                self.read_tap();
            }
            self.service_tcp();
            let now = self.clock.now();
            self.link.maintenance(now, &mut self.stats.device);
            let now_ms = self.clock.now_ms();
            self.auto_tick(now_ms);
            if now_ms.saturating_sub(self.last_sweep_ms) >= 1000 {
                self.last_sweep_ms = now_ms;
                self.sweep(now_ms);
                if self.link_config.advert_due(now_ms) && self.is_first() {
                    self.send_router_advert();
                }
                self.api_sweep(now_ms);
                if let Some(c) = &mut self.stats.device.capture {
                    c.flush();
                }
            }
        }
    }

    fn read_tap(&mut self) {
        // Lend the receive buffer out of `self` so the frame can be borrowed while handling it.
        let mut rx = std::mem::take(&mut self.link.rx);
        for _ in 0..RX_BUDGET {
            match self.link.tap.read(&mut rx) {
                Ok((hdr, n)) => {
                    device::capture(&mut self.stats.device, &rx[..n]);
                    if hdr.gso_ok_with(self.link.uso) {
                        self.handle_frame(&rx[..n], &hdr)
                    } else {
                        self.stats.drops.bump(DropReason::Gso)
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    self.stats.drops.bump(DropReason::Gso)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.link.readable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::info!("TAP read: {e}; the guest namespace is gone, exiting");
                    self.exit.code = Some(0);
                    self.link.readable = false;
                    break;
                }
            }
        }
        self.link.rx = rx;
        // The guest's UDP datagrams of this turn, a sendmmsg per binding (see `udp_batch`).
        if !self.udp_batch.is_empty() {
            self.flush_udp();
        }
    }

    /// One frame from the guest with its virtio-net header (`NEEDS_CSUM`: its TCP/UDP
    /// checksum was left to offload; `GSO_UDP_L4`: a UDP super-datagram).
    fn handle_frame(&mut self, frame: &[u8], hdr: &VnetHdr) {
        let partial = hdr.needs_csum();
        self.stats.frames_in += 1;
        self.stats.bytes_in += frame.len() as u64;
        if !self.guard_neighbours(frame) {
            return;
        }
        let class = wire::classify_offloaded(frame, &self.link.info, partial);
        if !matches!(class, Class::Drop(_)) {
            if let Ok(mac) = <[u8; 6]>::try_from(&frame[6..12]) {
                self.link.l2.dst = mac;
            }
        }
        match class {
            Class::Drop(DropReason::Fragment) => self.fragment_from_guest(frame),
            Class::Drop(reason) => self.stats.drops.bump(reason),
            Class::Udp(u) if self.hand_udp(&u, frame, hdr) => {}
            Class::Udp(u) => self.udp_from_guest(&u, frame, hdr),
            // USO claimed for something that is not UDP.
            _ if hdr.is_udp_gso() => self.stats.drops.bump(DropReason::Gso),
            Class::Stack => {
                self.ingress(frame, None);
                self.share_neighbours(frame, hdr);
                if frame.get(12..14) != Some(&[0x08, 0x00]) {
                    // ARP or neighbor discovery: flows that waited for the guest's MAC (smoltcp
                    // retries a second later) can transmit now.
                    let soon = self.clock.now().total_micros() + 1_000_000;
                    self.tcp.sched.expire(soon);
                }
            }
            Class::Tcp(info) if self.hand_tcp(&info, frame, hdr) => {}
            Class::Tcp(info) => self.tcp_from_guest(&info, frame),
            Class::Echo(e) => self.echo_from_guest(&e),
            Class::Dhcp(msg) => self.dhcp_from_guest(msg),
            Class::RouterSolicit(_) => self.send_router_advert(),
        }
    }

    /// Collect an IPv4 fragment; a completed packet is handled like any other frame.
    fn fragment_from_guest(&mut self, frame: &[u8]) {
        let now_ms = self.clock.now_ms();
        let Some(mut reasm) = self.link.reasm.take() else {
            return;
        };
        match reasm.feed(frame, now_ms) {
            Reassembled::Complete(whole) => {
                // Counted once more as a frame; that is the packet the guest meant to send.
                self.handle_frame(whole, &VnetHdr::default());
            }
            Reassembled::Pending => {}
            Reassembled::Invalid => self.stats.drops.bump(DropReason::Fragment),
        }
        self.link.reasm = Some(reasm);
    }

    /// How long the loop may sleep: until the next flow deadline, at most a second.
    fn timeout(&mut self) -> StdDuration {
        let now = self.clock.now();
        let mut micros = 1_000_000;
        if let Some(at) = self.tcp.sched.next_deadline() {
            micros = micros.min(at - now.total_micros());
        }
        if let Some(d) = self.link.iface.poll_delay(now, &self.link.no_sockets) {
            micros = micros.min(d.total_micros() as i64);
        }
        if let Some(a) = &self.auto {
            let due = a.next_ms.saturating_sub(self.clock.now_ms());
            micros = micros.min(due.saturating_mul(1000).min(1_000_000) as i64);
        }
        StdDuration::from_micros(micros.max(0) as u64)
    }

    /// The once-a-second housekeeping of the flow tables.
    fn sweep(&mut self, now_ms: u64) {
        self.tcp.prune_connecting_order();
        self.expire_udp(now_ms);
        self.expire_icmp(now_ms);
        self.dns_timeouts(now_ms);
        self.exit.check_netns();
    }
}
