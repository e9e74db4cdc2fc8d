//! Port forwarding: host listeners and bound sockets whose connections and datagrams are
//! carried into the guest (`add_hostfwd`, `-p`).
//!
//! # Theory of operation
//! A forward owns one host socket: a listening TCP socket or a bound UDP socket, registered in
//! the event loop with the forward's slab index in its token. An accepted connection becomes an
//! ordinary TCP flow whose smoltcp socket *connects* to the guest from the client's address as
//! the guest can see it (its own address, or the gateway for host-loopback and other-family
//! clients), so the guest's server sees who is calling, as with slirp4netns. A datagram from a
//! new client creates an inbound UDP binding keyed like an outbound one; the guest's replies
//! leave through the forward's socket to that client. Removing a forward closes its socket:
//! new connections are refused at once, established flows finish on their own.
//!
//! State: [`Forwards`] (the configured list, as the API reports it), the open sockets in a
//! slab (an entry keeps its forward's id, so a binding that outlives its forward and a reused
//! slab index cannot be confused), and the inbound UDP bindings by (forward id, client).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};

use mio::Interest;
use slab::Slab;
use smoltcp::wire::IpEndpoint;
use tapwire_proto::config::{Forward, Proto};
use tapwire_proto::control::Forwards;
use tapwire_proto::destination::{self, Kind};
use tapwire_proto::wire::{self, DropReason};

use super::host::{token, KIND_FWD, KIND_TCP};
use super::tcp::{TcpFlow, TcpSlot, MAX_TCP_FLOWS};
use super::udp::{self, UdpFlow, UdpHost};
use super::Engine;
use crate::link::device;

/// The host socket of a port forward.
pub(super) enum FwdSocket {
    Tcp(mio::net::TcpListener),
    Udp(mio::net::UdpSocket),
}

pub(super) struct FwdEntry {
    pub id: u64,
    pub guest: SocketAddr,
    pub sock: FwdSocket,
}

/// The forwards and their host sockets.
#[derive(Default)]
pub(super) struct Forwarding {
    pub list: Forwards,
    pub socks: Slab<FwdEntry>,
    /// Inbound UDP bindings by (forward id, host client).
    pub clients: HashMap<(u64, SocketAddr), usize>,
}

impl Engine {
    /// The address a host client appears from inside the guest: its own address when the
    /// guest can route back to it (same family, not loopback, not inside the virtual network),
    /// else the gateway of the guest's family.
    fn guest_visible(&self, client: SocketAddr, v6: bool) -> IpAddr {
        let ip = match client.ip() {
            IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(a)),
            v4 => v4,
        };
        let routable = match ip {
            IpAddr::V4(a) => {
                !v6 && !a.is_loopback() && !a.is_unspecified() && !self.net.contains(a)
            }
            IpAddr::V6(a) => {
                v6 && !a.is_loopback()
                    && !a.is_unspecified()
                    && !self.net.contains6(a)
                    && a.segments()[0] & 0xffc0 != 0xfe80
            }
        };
        match (routable, v6) {
            (true, _) => ip,
            (false, false) => self.net.gateway().into(),
            (false, true) => self.net.gateway6().into(),
        }
    }

    /// Pick the guest-visible source endpoint for a new inbound flow to `guest`: the client's
    /// port when free, else another one (two loopback clients may share a port number).
    fn inbound_source(
        &self,
        guest: SocketAddr,
        client: SocketAddr,
        tcp: bool,
    ) -> Option<SocketAddr> {
        let ip = self.guest_visible(client, guest.is_ipv6());
        let taken = |p: u16| {
            let key = (guest, SocketAddr::new(ip, p));
            if tcp {
                self.tcp.flows.find(&key).is_some()
            } else {
                self.udp.find(&key).is_some()
            }
        };
        if client.port() != 0 && !taken(client.port()) {
            return Some(SocketAddr::new(ip, client.port()));
        }
        let start = (self.clock.now_ms() as u16) | 0x8000;
        (0..4096u16)
            .map(|i| 0x8000 | start.wrapping_add(i))
            .find(|p| !taken(*p))
            .map(|p| SocketAddr::new(ip, p))
    }

    /// Open the host side of a forward and start serving it; returns its id. The error is the
    /// API desc.
    pub fn add_forward(&mut self, mut fwd: Forward) -> Result<u64, String> {
        // The guest address in the form the policy uses (`::ffff:10.0.2.100` is the IPv4
        // guest); loopback, unspecified and multicast addresses are nobody in the guest.
        let d = destination::classify(&self.net, fwd.guest.ip());
        fwd.guest.set_ip(destination::host_form(fwd.guest.ip()));
        let guest = fwd.guest;
        if (guest.is_ipv6() && !self.net.enable_ipv6)
            || matches!(
                d.kind,
                Kind::HostLoopback | Kind::Unspecified | Kind::NotUnicast
            )
        {
            return Err("bad request: add_hostfwd: bad arguments.guest_addr".into());
        }
        const FAILED: &str = "bad request: add_hostfwd: slirp_add_hostfwd failed";
        // An explicit forward takes the host endpoint of an automatic one over.
        if let Some((old, true)) = self.fwd.list.holder(&fwd) {
            tracing::info!(id = old, "automatic forward replaced by an explicit one");
            self.remove_forward(old);
            self.auto_forget(old);
        }
        if self.fwd.list.conflicts(&fwd) {
            return Err(FAILED.into());
        }
        let sock = match open_forward(&fwd) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("forward {} {}: {e}", fwd.proto.as_str(), fwd.host);
                return Err(FAILED.into());
            }
        };
        let id = self.fwd.list.add(fwd);
        if let Err(e) = self.install_forward(id, guest, sock) {
            tracing::warn!("registering forward: {e}");
            self.fwd.list.remove(id);
            return Err(FAILED.into());
        }
        tracing::info!(id, proto = fwd.proto.as_str(), host = %fwd.host, guest = %fwd.guest, "forward added");
        Ok(id)
    }

    /// Serve an open forward socket as forward `id` (to `guest`).
    pub(super) fn install_forward(
        &mut self,
        id: u64,
        guest: SocketAddr,
        sock: FwdSocket,
    ) -> io::Result<()> {
        let idx = self.fwd.socks.insert(FwdEntry { id, guest, sock });
        let entry = &mut self.fwd.socks[idx];
        let registered = match &mut entry.sock {
            FwdSocket::Tcp(l) => {
                self.host
                    .registry()
                    .register(l, token(KIND_FWD, idx), Interest::READABLE)
            }
            FwdSocket::Udp(u) => {
                self.host
                    .registry()
                    .register(u, token(KIND_FWD, idx), Interest::READABLE)
            }
        };
        if registered.is_err() {
            self.fwd.socks.remove(idx);
        }
        registered
    }

    /// Stop a forward: no new connections; existing TCP flows finish on their own.
    pub fn remove_forward(&mut self, id: u64) -> bool {
        if self.fwd.list.remove(id).is_none() {
            return false;
        }
        if let Some(idx) = self
            .fwd
            .socks
            .iter()
            .find(|(_, e)| e.id == id)
            .map(|(i, _)| i)
        {
            let entry = self.fwd.socks.remove(idx);
            match entry.sock {
                FwdSocket::Tcp(mut l) => drop(self.host.registry().deregister(&mut l)),
                FwdSocket::Udp(mut u) => drop(self.host.registry().deregister(&mut u)),
            }
        }
        true
    }

    pub(super) fn fwd_readable(&mut self, idx: usize) {
        let Some(entry) = self.fwd.socks.get(idx) else {
            return;
        };
        let (id, guest) = (entry.id, entry.guest);
        match &entry.sock {
            FwdSocket::Tcp(_) => loop {
                let Some(FwdEntry {
                    sock: FwdSocket::Tcp(listener),
                    ..
                }) = self.fwd.socks.get(idx)
                else {
                    return;
                };
                match listener.accept() {
                    Ok((stream, client)) => self.inbound_tcp(stream, client, guest),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!("forward accept: {e}");
                        return;
                    }
                }
            },
            FwdSocket::Udp(_) => loop {
                let Some(FwdEntry {
                    sock: FwdSocket::Udp(sock),
                    ..
                }) = self.fwd.socks.get(idx)
                else {
                    return;
                };
                let at = wire::udp_payload_offset(guest.is_ipv6());
                match sock.recv_from(&mut self.link.out[at..]) {
                    Ok((n, client)) => self.inbound_udp(idx, id, guest, client, n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::debug!("forward recv: {e}");
                        return;
                    }
                }
            },
        }
    }

    /// A datagram of `len` bytes (at the UDP payload offset of the link's frame buffer) from `client` for
    /// `guest`.
    fn inbound_udp(
        &mut self,
        fwd: usize,
        id: u64,
        guest: SocketAddr,
        client: SocketAddr,
        len: usize,
    ) {
        let now_ms = self.clock.now_ms();
        // This client's binding (its guest-visible port may differ from its own).
        let idx = match self.fwd.clients.get(&(id, client)).copied() {
            Some(i) => i,
            None => {
                let Some(src) = self.inbound_source(guest, client, false) else {
                    self.stats.drops.bump(DropReason::Policy);
                    return;
                };
                let flow = UdpFlow {
                    host: UdpHost::Forwarded { fwd, id, client },
                    guest,
                    dst: src,
                    idle_ms: udp::IDLE_MS,
                    datagrams_out: 0,
                    datagrams_in: 0,
                    trains: false,
                    last_query: None,
                };
                match self.insert_udp((guest, src), flow, now_ms) {
                    Some(i) => {
                        self.fwd.clients.insert((id, client), i);
                        self.note_inbound_udp((guest, src), true);
                        i
                    }
                    None => return,
                }
            }
        };
        self.udp.touch(idx, now_ms);
        let Some(flow) = self.udp.get_mut(idx) else {
            return;
        };
        flow.datagrams_in += 1;
        let src = flow.dst;
        self.link.send_udp(src, guest, len, &mut self.stats.device);
    }

    /// An accepted host connection for `guest`: connect a smoltcp socket to the guest from the
    /// client's (guest-visible) address.
    fn inbound_tcp(&mut self, stream: mio::net::TcpStream, client: SocketAddr, guest: SocketAddr) {
        if self.tcp.flows.len() >= MAX_TCP_FLOWS {
            self.stats.drops.bump(DropReason::Policy);
            return;
        }
        let _ = stream.set_nodelay(true);
        let Some(src) = self.inbound_source(guest, client, true) else {
            self.stats.drops.bump(DropReason::Policy);
            return;
        };
        let mut sock = device::new_tcp_socket_unbound(self.tcp.buffer);
        let remote = IpEndpoint::new(guest.ip().into(), guest.port());
        let local = IpEndpoint::new(src.ip().into(), src.port());
        if let Err(e) = sock.connect(self.link.iface.context(), remote, local) {
            tracing::debug!("inbound connect to {guest}: {e}");
            self.stats.drops.bump(DropReason::Policy);
            return;
        }
        let slot = TcpSlot::new(sock, |handle| {
            TcpFlow::new(stream, handle, guest, src, client, None)
        });
        let now_ms = self.clock.now_ms();
        let Ok(idx) = self.tcp.flows.insert((guest, src), slot, now_ms) else {
            self.stats.drops.bump(DropReason::Policy);
            return;
        };
        let Some(slot) = self.tcp.flows.get_mut(idx) else {
            return;
        };
        if self
            .host
            .registry()
            .register(
                &mut slot.flow.host,
                token(KIND_TCP, idx),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            self.remove_tcp(idx);
            return;
        }
        // The SYN goes out this turn.
        self.tcp.sched.mark(idx);
        self.stats.tcp_flows += 1;
    }
}

/// Open the host socket of a forward: a listening TCP socket or a bound UDP socket.
pub(super) fn open_forward(fwd: &Forward) -> io::Result<FwdSocket> {
    let domain = socket2::Domain::for_address(fwd.host);
    match fwd.proto {
        Proto::Tcp => {
            let s =
                socket2::Socket::new(domain, socket2::Type::STREAM.nonblocking().cloexec(), None)?;
            s.set_reuse_address(true)?;
            s.bind(&fwd.host.into())?;
            s.listen(1024)?;
            Ok(FwdSocket::Tcp(mio::net::TcpListener::from_std(s.into())))
        }
        Proto::Udp => {
            let s =
                socket2::Socket::new(domain, socket2::Type::DGRAM.nonblocking().cloexec(), None)?;
            s.bind(&fwd.host.into())?;
            Ok(FwdSocket::Udp(mio::net::UdpSocket::from_std(s.into())))
        }
    }
}
