//! Spare guest-facing sockets: a few finished flows' smoltcp sockets (with their rings), kept to
//! serve the next flows.
//!
//! # Theory of operation
//! A new flow's two rings are fresh `mmap`s (see `startup::bound_heap`: ring memory goes back
//! to the kernel when a flow ends), each page faulted in on first touch and the whole mapping
//! unmapped at the end: on short connections (connect, request, reply, close) that is four
//! system calls and a few page faults per connection. smoltcp gives no way to take a socket's
//! rings back, so what is kept is the whole one-socket set of a removed flow ([`Spare`]), and a
//! new flow whose budgeted rings have the same sizes takes it instead of allocating.
//!
//! - **Which**: only a flow that ended in CLOSED or TIME-WAIT (so `listen` can reset it), whose
//!   rings the budget granted (not a port forward's), and that touched little of its rings: at
//!   most [`MAX_BYTES`] each way and [`MAX_GUEST_SEGMENTS`] guest segments (a segment written out
//!   of order may land anywhere in the receive window). The rings' untouched pages stay
//!   unbacked, so the spares hold at most [`MAX_SPARES`] x (`MAX_GUEST_SEGMENTS` x 64 KiB +
//!   `MAX_BYTES`) of real memory beyond what live flows use (about 8 MiB in the worst case,
//!   a few pages each in practice), and none once the spares are taken or dropped.
//! - **Reuse**: `listen` resets the socket (state, sequence numbers, timers, both rings
//!   emptied: nothing of the old flow's bytes can be read or sent again), then the settings of
//!   `device::new_tcp_socket` are applied again (SYN-ACK paused, a fresh congestion
//!   controller). A spare that cannot listen is dropped.
//! - **Budget**: a spare's rings are not budgeted (the flow released them); the next flow's
//!   grant decides the sizes it may take.
#![forbid(unsafe_code)]

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp as smol_tcp;
use smoltcp::wire::IpListenEndpoint;
use tapwire_proto::budget::Rings;

use crate::link::device;

/// Sockets kept at most.
pub(super) const MAX_SPARES: usize = 16;
/// Most bytes a flow may have moved each way for its socket to be kept.
pub(super) const MAX_BYTES: u64 = 16 << 10;
/// Most segments the guest may have sent on a flow for its socket to be kept.
pub(super) const MAX_GUEST_SEGMENTS: u64 = 8;

/// A finished flow's socket set (one socket, `handle`) and its ring sizes.
pub(super) struct Spare {
    sockets: SocketSet<'static>,
    handle: SocketHandle,
    rx: usize,
    tx: usize,
}

/// The spare sockets (allocated once, at most [`MAX_SPARES`]).
pub(super) struct Spares {
    spares: Vec<Spare>,
    /// Flows served by a spare socket, for `get_stats`.
    pub reused: u64,
}

impl Default for Spares {
    fn default() -> Spares {
        Spares {
            spares: Vec::with_capacity(MAX_SPARES),
            reused: 0,
        }
    }
}

impl Spares {
    /// Sockets kept now.
    pub fn len(&self) -> usize {
        self.spares.len()
    }

    /// Keep the socket of a removed flow if it qualifies (see the module documentation).
    pub fn keep(
        &mut self,
        sockets: SocketSet<'static>,
        handle: SocketHandle,
        rings: Rings,
        moved: (u64, u64),
        guest_segments: u64,
    ) {
        if self.spares.len() >= MAX_SPARES
            || moved.0 > MAX_BYTES
            || moved.1 > MAX_BYTES
            || guest_segments > MAX_GUEST_SEGMENTS
        {
            return;
        }
        let state = sockets.get::<smol_tcp::Socket>(handle).state();
        if !matches!(state, smol_tcp::State::Closed | smol_tcp::State::TimeWait) {
            return;
        }
        self.spares.push(Spare {
            sockets,
            handle,
            rx: rings.rx,
            tx: rings.tx,
        });
    }

    /// A socket set holding one socket listening on `endpoint` with rings of `rings`' sizes: a
    /// spare if one fits, else a new one; `None` if the socket cannot listen there.
    pub fn take(
        &mut self,
        endpoint: IpListenEndpoint,
        rings: Rings,
    ) -> Option<(SocketSet<'static>, SocketHandle)> {
        if let Some(i) = self
            .spares
            .iter()
            .rposition(|s| s.rx == rings.rx && s.tx == rings.tx)
        {
            let Spare {
                mut sockets,
                handle,
                ..
            } = self.spares.swap_remove(i);
            let sock = sockets.get_mut::<smol_tcp::Socket>(handle);
            if device::reuse_tcp_socket(sock, endpoint) {
                self.reused += 1;
                return Some((sockets, handle));
            }
        }
        let sock = device::new_tcp_socket(endpoint, rings.rx, rings.tx)?;
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(sock);
        Some((sockets, handle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::Ipv4Address;

    fn endpoint(port: u16) -> IpListenEndpoint {
        IpListenEndpoint {
            addr: Some(Ipv4Address::new(10, 0, 2, 2).into()),
            port,
        }
    }

    fn rings(n: usize) -> Rings {
        Rings {
            rx: n,
            tx: n,
            full: false,
        }
    }

    #[test]
    fn a_kept_socket_comes_back_listening_and_empty() {
        let mut spares = Spares::default();
        let (mut set, h) = spares.take(endpoint(80), rings(4096)).unwrap();
        assert_eq!(spares.reused, 0);
        let s = set.get_mut::<smol_tcp::Socket>(h);
        assert_eq!(s.state(), smol_tcp::State::Listen);
        s.abort();
        spares.keep(set, h, rings(4096), (100, 100), 4);
        assert_eq!(spares.len(), 1);
        // Other sizes do not take it.
        let (set2, h2) = spares.take(endpoint(81), rings(8192)).unwrap();
        assert_eq!(spares.reused, 0);
        assert_eq!(set2.get::<smol_tcp::Socket>(h2).recv_capacity(), 8192);
        let (set, h) = spares.take(endpoint(82), rings(4096)).unwrap();
        assert_eq!(spares.reused, 1);
        assert_eq!(spares.len(), 0);
        let s = set.get::<smol_tcp::Socket>(h);
        assert_eq!(s.state(), smol_tcp::State::Listen);
        assert_eq!(s.listen_endpoint(), endpoint(82));
        assert_eq!((s.recv_queue(), s.send_queue()), (0, 0));
        assert_eq!((s.recv_capacity(), s.send_capacity()), (4096, 4096));
    }

    #[test]
    fn busy_or_open_or_surplus_sockets_are_not_kept() {
        let mut spares = Spares::default();
        // Still listening (open): not kept.
        let (set, h) = spares.take(endpoint(80), rings(4096)).unwrap();
        spares.keep(set, h, rings(4096), (0, 0), 0);
        assert_eq!(spares.len(), 0);
        let closed = |spares: &mut Spares| {
            let (mut set, h) = spares.take(endpoint(80), rings(4096)).unwrap();
            set.get_mut::<smol_tcp::Socket>(h).abort();
            (set, h)
        };
        let (set, h) = closed(&mut spares);
        spares.keep(set, h, rings(4096), (MAX_BYTES + 1, 0), 1);
        let (set, h) = closed(&mut spares);
        spares.keep(set, h, rings(4096), (0, MAX_BYTES + 1), 1);
        let (set, h) = closed(&mut spares);
        spares.keep(set, h, rings(4096), (0, 0), MAX_GUEST_SEGMENTS + 1);
        assert_eq!(spares.len(), 0);
        let mut sets: Vec<_> = (0..MAX_SPARES + 1).map(|_| closed(&mut spares)).collect();
        for (set, h) in sets.drain(..) {
            spares.keep(set, h, rings(4096), (0, 0), 1);
        }
        assert_eq!(spares.len(), MAX_SPARES);
    }
}
