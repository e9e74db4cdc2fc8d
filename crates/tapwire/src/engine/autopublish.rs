//! Automatic publishing (`-p auto`) in the event loop: dump the guest's listeners, let
//! `tapwire_proto::autopublish` decide, open and close the forwards it asks for.
//!
//! # Theory of operation
//! The kernel tells nobody that a socket *started* listening (sock_diag has multicast groups
//! for socket destruction only), so a new listener can only be found by asking: the loop dumps
//! the guest's listening TCP and bound UDP sockets every [`INTERVAL_MS`] over the sock_diag
//! socket the namespace helper made inside the guest (`link::sock_diag`). A dump of a few
//! sockets is four small netlink round trips in the kernel, microseconds; the loop already
//! wakes once a second for its housekeeping, so `-p auto` adds one wake-up a second (the dump
//! deadline caps the loop's sleep) and no measurable CPU at idle (`tests/auto_publish.rs`
//! measures the daemon's CPU time over seconds of idleness; the README has a 60 s figure).
//! A port is published at most [`INTERVAL_MS`] after the guest's `listen()`. Polling is only
//! on while `-p auto` is: without it there is no socket and no deadline.
//!
//! Removal is prompt where the kernel can say so: the socket is subscribed to the destroy
//! groups, so a closed listener (or any closed socket of the guest) makes it readable; the
//! events are drained and the next dump is brought forward to [`MIN_GAP_MS`] after the last
//! one (a guest that closes thousands of connections a second costs at most ten dumps a
//! second). Without the groups (refused by the kernel), closing is noticed by the next dump.
//!
//! Each dump's listener list goes to `AutoPublish::plan` with the explicit forwards; its
//! actions become `Engine::add_forward`-like opens (host socket, registry, `Forwards` entry
//! marked automatic), closes (`remove_forward`: open connections finish) and retries of a
//! forward whose host port was taken (its error is logged once, at the first failure, and
//! shown in `list_hostfwd`; a retry that succeeds is logged). An incomplete dump changes
//! nothing. `remove_hostfwd` on an automatic forward pins it off (see `control`).
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::Interest;
use tapwire_proto::autopublish::{Action, AutoPublish, AutoRule};
use tapwire_proto::config::Proto;
use tapwire_proto::sock_diag::Listener;

use super::forward::open_forward;
use super::host::TOKEN_AUTO;
use super::Engine;
use crate::link::sock_diag;

/// Dump period while `-p auto` is on.
pub const INTERVAL_MS: u64 = 500;
/// Shortest time between two dumps (destroy events bring the next dump forward to this).
pub const MIN_GAP_MS: u64 = 100;
/// Receive buffer: the kernel sends dump parts of up to 32 KiB (a page at least).
const BUF: usize = 32 * 1024;

/// `-p auto`'s state in the engine.
pub(super) struct AutoPublisher {
    sock: OwnedFd,
    state: AutoPublish,
    seq: u32,
    /// When the next dump is due (engine ms).
    pub next_ms: u64,
    last_ms: u64,
    buf: Vec<u8>,
    listeners: Vec<Listener>,
    /// Some rule covers TCP / UDP (the others are not dumped).
    tcp: bool,
    udp: bool,
    /// A refused dump was logged.
    warned: bool,
    /// The cap was logged (again once it is reached anew).
    warned_cap: bool,
}

impl Engine {
    /// Turn on `-p auto` with these rules over `sock`, the guest's sock_diag socket.
    pub fn enable_auto_publish(&mut self, rules: Vec<AutoRule>, sock: OwnedFd) -> io::Result<()> {
        self.host.registry().register(
            &mut SourceFd(&sock.as_raw_fd()),
            TOKEN_AUTO,
            Interest::READABLE,
        )?;
        tracing::info!(rules = rules.len(), "automatic publishing on");
        let covers = |p: Proto| rules.iter().any(|r| r.proto.is_none_or(|q| q == p));
        let (tcp, udp) = (covers(Proto::Tcp), covers(Proto::Udp));
        self.auto = Some(Box::new(AutoPublisher {
            sock,
            state: AutoPublish::new(rules),
            seq: 0,
            next_ms: 0,
            last_ms: 0,
            buf: vec![0; BUF],
            listeners: Vec::new(),
            tcp,
            udp,
            warned: false,
            warned_cap: false,
        }));
        Ok(())
    }

    /// Destroy events: dump again soon.
    pub(super) fn auto_readable(&mut self) {
        let Some(a) = &mut self.auto else {
            return;
        };
        if sock_diag::drain_events(&a.sock, &mut a.buf) > 0 {
            a.next_ms = a.next_ms.min(a.last_ms + MIN_GAP_MS);
        }
    }

    /// Dump and apply when due.
    pub(super) fn auto_tick(&mut self, now_ms: u64) {
        let Some(a) = &mut self.auto else {
            return;
        };
        if now_ms < a.next_ms {
            return;
        }
        a.last_ms = now_ms;
        a.next_ms = now_ms + INTERVAL_MS;
        let (tcp, udp) = (a.tcp, a.udp);
        let protos = |p: Proto| if p == Proto::Tcp { tcp } else { udp };
        let d = sock_diag::dump(&a.sock, protos, &mut a.seq, &mut a.buf, &mut a.listeners);
        if let (Some(errno), false) = (d.refused, a.warned) {
            a.warned = true;
            tracing::warn!(
                "automatic publishing: the guest's kernel refused a socket dump ({}); some listeners are not seen",
                io::Error::from_raw_os_error(errno)
            );
        }
        if !d.complete {
            tracing::debug!(
                malformed = d.malformed,
                "automatic publishing: incomplete dump"
            );
            return;
        }
        let explicit = self.fwd.list.explicit();
        let actions = a.state.plan(&a.listeners, &self.net, &explicit);
        if a.state.capped() && !a.warned_cap {
            tracing::warn!(
                "automatic publishing: the guest listens on more ports than the {} automatic forwards allowed; the rest wait",
                tapwire_proto::autopublish::MAX_AUTO
            );
        }
        a.warned_cap = a.state.capped();
        for action in actions {
            self.auto_apply(action);
        }
    }

    fn auto_apply(&mut self, action: Action) {
        match action {
            Action::Close(id) => {
                if let Some(f) = self.fwd.list.get(id).copied() {
                    tracing::info!(id, proto = f.proto.as_str(), host = %f.host, "automatic forward removed (the guest stopped listening)");
                }
                self.remove_forward(id);
            }
            Action::Open(key, fwd) => {
                let (id, open) = match open_forward(&fwd) {
                    Ok(sock) => {
                        let id = self.fwd.list.add_auto(fwd, None);
                        match self.install_forward(id, fwd.guest, sock) {
                            Ok(()) => {
                                tracing::info!(id, proto = fwd.proto.as_str(), host = %fwd.host, guest = %fwd.guest, "automatic forward added");
                                (id, true)
                            }
                            Err(e) => {
                                tracing::warn!(id, "automatic forward: registering: {e}");
                                self.fwd.list.set_error(id, Some(e.to_string()));
                                (id, false)
                            }
                        }
                    }
                    Err(e) => {
                        let id = self.fwd.list.add_auto(fwd, Some(e.to_string()));
                        tracing::warn!(id, proto = fwd.proto.as_str(), host = %fwd.host, "automatic forward: the guest listens on port {} but the host port cannot be opened: {e} (retried while the guest listens)", fwd.guest.port());
                        (id, false)
                    }
                };
                if let Some(a) = &mut self.auto {
                    a.state.record(key, fwd, id, open);
                }
            }
            Action::Retry(id, fwd) => {
                let Ok(sock) = open_forward(&fwd) else {
                    return;
                };
                if self.install_forward(id, fwd.guest, sock).is_err() {
                    return;
                }
                self.fwd.list.set_error(id, None);
                tracing::info!(id, proto = fwd.proto.as_str(), host = %fwd.host, "automatic forward: host port open now");
                if let Some(a) = &mut self.auto {
                    a.state.retried(id, true);
                }
            }
        }
    }

    /// `remove_hostfwd` on `id`: true if it was automatic (now pinned off).
    pub(super) fn auto_pin(&mut self, id: u64) -> bool {
        self.auto.as_mut().is_some_and(|a| a.state.pin(id))
    }

    /// An explicit forward took the host endpoint of automatic forward `id` over.
    pub(super) fn auto_forget(&mut self, id: u64) {
        if let Some(a) = &mut self.auto {
            a.state.forget(id);
        }
    }
}
