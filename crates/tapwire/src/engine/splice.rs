//! `--forward-to-host`: the guest's own 127.0.0.1:GUEST_PORT and \[::1\]:GUEST_PORT spliced to
//! the host's 127.0.0.1:HOST_PORT, kernel socket to kernel socket.
//!
//! # Theory of operation
//! No frame, no TAP, no smoltcp: the listeners live in the guest's network namespace (a
//! namespace child opened them, `netns::loopback`), the engine accepts on them from the host
//! namespace like on any socket, and each accepted guest connection gets a non-blocking host
//! connection to 127.0.0.1:HOST_PORT. Bytes move with `splice(2)` through one pipe per
//! direction (`sys::splice`), so they are never copied through userspace.
//!
//! Readiness: both sockets of a connection are registered once, edge-triggered, readable and
//! writable, under the same token ([`KIND_SPLICE`] + slot); a listener's token is
//! [`KIND_SPLICE_LISTEN`] + its index. Any event on a connection runs [`Engine::splice_event`],
//! which first checks the host connect and then pumps both directions until every step would
//! block: drain the pipe into the destination, refill it from the source, again while either
//! moved bytes. Because each pass ends only on `EAGAIN` (or a full or empty pipe whose other
//! end is blocked), the next edge always comes.
//!
//! States of a connection, per direction: open -> source at EOF (the pipe still drains) ->
//! `shutdown(SHUT_WR)` of the destination once the pipe is empty (half-close passes through).
//! Both directions shut: the connection is closed. Errors: a refused or failed host connect
//! resets the guest connection (`SO_LINGER` 0, so the guest sees a reset or an immediate EOF);
//! a reset or error on either side resets the other and closes both.
//!
//! Limits: at most [`MAX_SPLICED`] connections (six fds each: two sockets, two pipes); a
//! connection past that is accepted and reset at once, so a guest that floods the port cannot
//! exhaust fds or pipe memory. Nothing is logged per byte or per wakeup; a connection's end is
//! logged at debug.
#![forbid(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::os::fd::AsFd;

use mio::net::{TcpListener, TcpStream};
use mio::Interest;
use slab::Slab;

use super::host::{token, KIND_SPLICE, KIND_SPLICE_LISTEN};
use super::Engine;
use crate::sys::splice::Pipe;

/// Most spliced connections at once.
pub const MAX_SPLICED: usize = 128;

/// A guest-side listener and the host port its connections go to.
struct Listener {
    sock: TcpListener,
    host_port: u16,
}

/// One direction of a connection.
struct Half {
    pipe: Pipe,
    /// The source reached end of stream.
    eof: bool,
    /// The destination was shut down for writing.
    shut: bool,
}

impl Half {
    fn new() -> io::Result<Half> {
        Ok(Half {
            pipe: Pipe::new()?,
            eof: false,
            shut: false,
        })
    }

    /// Move what can be moved from `src` to `dst` without blocking.
    fn pump(&mut self, src: &TcpStream, dst: &TcpStream) -> io::Result<()> {
        loop {
            let mut progress = false;
            if self.pipe.len > 0 {
                match self.pipe.drain_to(dst.as_fd()) {
                    Ok(n) => progress |= n > 0,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(e) => return Err(e),
                }
            }
            if !self.eof && self.pipe.room() > 0 {
                match self.pipe.fill_from(src.as_fd()) {
                    Ok(0) => {
                        self.eof = true;
                        progress = true;
                    }
                    Ok(_) => progress = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(e) => return Err(e),
                }
            }
            if !progress {
                break;
            }
        }
        if self.eof && self.pipe.len == 0 && !self.shut {
            self.shut = true;
            match dst.shutdown(Shutdown::Write) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A guest connection spliced to a host connection.
struct Conn {
    guest: TcpStream,
    host: TcpStream,
    /// The host connect completed.
    connected: bool,
    /// Guest to host.
    up: Half,
    /// Host to guest.
    down: Half,
}

/// The listeners and the connections.
#[derive(Default)]
pub(super) struct Spliced {
    listeners: Vec<Listener>,
    conns: Slab<Conn>,
    /// Connections accepted so far (and reset for want of room).
    pub accepted: u64,
    pub refused_full: u64,
}

/// Close `s` with a reset instead of a FIN (`SO_LINGER` 0).
fn reset(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(std::time::Duration::ZERO));
}

impl Engine {
    /// Accept on `listener` (a listening socket in the guest's namespace, from
    /// `netns::loopback`) and splice its connections to the host's 127.0.0.1:`host_port`.
    pub fn add_to_host(
        &mut self,
        listener: std::net::TcpListener,
        host_port: u16,
    ) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        let mut sock = TcpListener::from_std(listener);
        let idx = self.splice.listeners.len();
        self.host.registry().register(
            &mut sock,
            token(KIND_SPLICE_LISTEN, idx),
            Interest::READABLE,
        )?;
        self.splice.listeners.push(Listener { sock, host_port });
        Ok(())
    }

    /// A guest connection (or several) on listener `idx`.
    pub(super) fn splice_accept(&mut self, idx: usize) {
        loop {
            let Some(l) = self.splice.listeners.get(idx) else {
                return;
            };
            let host_port = l.host_port;
            let guest = match l.sock.accept() {
                Ok((guest, _)) => guest,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: the next connection brings a new edge.
                    tracing::warn!(
                        "--forward-to-host: accept on {:?}: {e}",
                        l.sock.local_addr()
                    );
                    return;
                }
            };
            self.splice.accepted += 1;
            if self.splice.conns.len() >= MAX_SPLICED {
                self.splice.refused_full += 1;
                reset(&guest);
                continue;
            }
            if let Err(e) = self.splice_open(guest, host_port) {
                tracing::debug!("--forward-to-host: to 127.0.0.1:{host_port}: {e}");
            }
        }
    }

    /// Connect to the host port, make the pipes, register both sockets.
    fn splice_open(&mut self, guest: TcpStream, host_port: u16) -> io::Result<()> {
        let fail = |guest: &TcpStream, e: io::Error| {
            reset(guest);
            e
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, host_port));
        let host = TcpStream::connect(addr).map_err(|e| fail(&guest, e))?;
        let (up, down) = match (Half::new(), Half::new()) {
            (Ok(up), Ok(down)) => (up, down),
            (Err(e), _) | (_, Err(e)) => return Err(fail(&guest, e)),
        };
        let _ = guest.set_nodelay(true);
        let _ = host.set_nodelay(true);
        let entry = self.splice.conns.vacant_entry();
        let tok = token(KIND_SPLICE, entry.key());
        let mut conn = Conn {
            guest,
            host,
            connected: false,
            up,
            down,
        };
        let both = Interest::READABLE | Interest::WRITABLE;
        let reg = self.host.registry();
        reg.register(&mut conn.guest, tok, both)
            .and_then(|()| reg.register(&mut conn.host, tok, both))
            .map_err(|e| fail(&conn.guest, e))?;
        entry.insert(conn);
        Ok(())
    }

    /// Readiness on either socket of connection `slot`: see the module documentation.
    pub(super) fn splice_event(&mut self, slot: usize) {
        let Some(c) = self.splice.conns.get_mut(slot) else {
            return;
        };
        if !c.connected {
            match c.host.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.splice_close(slot, Some(e)),
            }
            match c.host.peer_addr() {
                Ok(_) => c.connected = true,
                // Still connecting; the writable edge comes when it is done.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.splice_close(slot, Some(e)),
            }
        }
        let result =
            c.up.pump(&c.guest, &c.host)
                .and_then(|()| c.down.pump(&c.host, &c.guest));
        match result {
            Err(e) => self.splice_close(slot, Some(e)),
            Ok(()) if c.up.shut && c.down.shut => self.splice_close(slot, None),
            Ok(()) => {}
        }
    }

    /// Close connection `slot`; with an error, both sides are reset.
    fn splice_close(&mut self, slot: usize, err: Option<io::Error>) {
        let Some(mut c) = self.splice.conns.try_remove(slot) else {
            return;
        };
        if let Some(e) = &err {
            reset(&c.guest);
            reset(&c.host);
            tracing::debug!(
                "--forward-to-host: connection to {:?} reset: {e}",
                c.host.peer_addr()
            );
        }
        let reg = self.host.registry();
        let _ = reg.deregister(&mut c.guest);
        let _ = reg.deregister(&mut c.host);
    }
}
