//! ICMP echo proxy through unprivileged ICMP datagram sockets.
//!
//! # Theory of operation
//! Echo requests to the gateway and DNS addresses are answered by smoltcp. Echo requests to
//! any other address are proxied: a binding per (guest address, destination, identifier) owns
//! a host `socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)` connected to the destination. The kernel
//! rewrites the identifier to the socket's and computes checksums; replies come back as ICMP
//! messages whose identifier [`tapwire_proto::wire::finish_echo_reply`] restores to the guest's. Such
//! sockets need the daemon's group in `net.ipv4.ping_group_range`; when the host refuses them
//! the request is dropped and counted (there is no raw-socket fallback: we hold no privilege).
//! Bindings expire after [`IDLE_MS`].
//!
//! Data flow: the guest's request is `send()` on the binding's socket as is (no queue; a
//! refused send is counted as a drop); the socket's token (kind ICMP, the binding's index)
//! wakes [`Engine::icmp_readable`](super::Engine), which reads each reply straight into the
//! link's frame buffer at the ICMP offset and sends it to the guest from the destination.
#![forbid(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use mio::Interest;
use tapwire_proto::config::NetConfig;
use tapwire_proto::flow::FlowTable;
use tapwire_proto::wire::{self, DropReason, EchoInfo, ICMP_OFFSET};

use super::host::{token, KIND_ICMP};
use super::Engine;

/// Idle timeout of an echo binding.
pub const IDLE_MS: u64 = 10_000;
/// Most bindings at once.
pub const MAX_FLOWS: usize = 256;

/// (guest address, destination, identifier).
pub(super) type IcmpKey = (Ipv4Addr, Ipv4Addr, u16);

/// The echo bindings.
pub(super) type IcmpTable = FlowTable<IcmpKey, IcmpFlow>;

/// One echo binding.
pub struct IcmpFlow {
    pub sock: mio::net::UdpSocket,
    pub guest: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ident: u16,
}

impl IcmpFlow {
    pub fn open(
        net: &NetConfig,
        guest: Ipv4Addr,
        dst: Ipv4Addr,
        ident: u16,
        target: SocketAddr,
    ) -> io::Result<IcmpFlow> {
        let sock = crate::engine::udp::host_socket(
            net,
            target,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::ICMPV4),
        )?;
        sock.connect(&target.into())?;
        let sock = mio::net::UdpSocket::from_std(std::net::UdpSocket::from(sock));
        Ok(IcmpFlow {
            sock,
            guest,
            dst,
            ident,
        })
    }
}

impl Engine {
    pub(super) fn echo_from_guest(&mut self, e: &EchoInfo<'_>) {
        let key = (e.src, e.dst, e.ident);
        let now_ms = self.clock.now_ms();
        let idx = match self.icmp.find(&key) {
            Some(idx) => idx,
            None => {
                let dst = SocketAddr::new(e.dst.into(), 0);
                let target = match self.host.nat.translate(dst, None) {
                    tapwire_proto::nat::Verdict::Connect(t) => t,
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
                    .host
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

    pub(super) fn icmp_readable(&mut self, idx: usize) {
        loop {
            let Some(flow) = self.icmp.get_mut(idx) else {
                return;
            };
            let out = &mut self.link.out;
            let max = out.len() - ICMP_OFFSET;
            match flow.sock.recv(&mut out[ICMP_OFFSET..ICMP_OFFSET + max]) {
                Ok(n) => {
                    let (src, dst, ident) = (flow.dst, flow.guest, flow.ident);
                    if let Some(len) =
                        wire::finish_echo_reply(out, &self.link.l2, src, dst, ident, n)
                    {
                        self.link.send_out(len, &mut self.stats.device);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn remove_icmp(&mut self, idx: usize) {
        if let Some((_, mut flow)) = self.icmp.remove(idx) {
            let _ = self.host.registry().deregister(&mut flow.sock);
        }
    }

    /// Close the bindings idle for [`IDLE_MS`].
    pub(super) fn expire_icmp(&mut self, now_ms: u64) {
        for (_, mut flow) in self.icmp.expire(now_ms, |_| IDLE_MS) {
            let _ = self.host.registry().deregister(&mut flow.sock);
        }
    }
}
