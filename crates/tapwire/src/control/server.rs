//! The control socket's I/O: a non-blocking UNIX stream server inside the event loop.
//!
//! # Theory of operation
//! slirp4netns answers API requests synchronously and "stops the world" while a client dawdles.
//! Here every client is a small state machine driven by readiness, like any other socket of the
//! event loop, so a client that connects and sends nothing, or half a request, costs one slab
//! entry and nothing else. The decisions (when a request is complete, who may be accepted or
//! evicted, who expired) are made by the sans-IO table [`tapwire_proto::control::clients`];
//! this file only moves bytes:
//!
//! ```text
//! Reading --EOF, or a complete JSON value, or too large--> Replying --all written--> closed
//! ```
//!
//! Requests over [`MAX_REQUEST`](tapwire_proto::control::MAX_REQUEST) bytes get the "too
//! large message" error. At most [`MAX_CLIENTS`] are served at once; beyond that the server
//! stops accepting and the rest wait in the listen backlog ([`unix_listener::BACKLOG`]), to be
//! accepted as slots free ([`Control::accept`] is called again after every client that leaves,
//! and every sweep). A client whose request has arrived is never evicted; a *stalled* one (no
//! complete request within [`STALL_MS`]) is evicted only to admit a waiting connection, and
//! everyone is dropped after [`CLIENT_TIMEOUT_MS`]. So 200 clients connecting at once are all
//! answered (in accept order), and stalled connections can never lock the API for long.
//!
//! The socket file is created mode 0600, never through a symlink, and removed on drop if it is
//! still ours ([`unix_listener`]).
#![forbid(unsafe_code)]
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::path::Path;

use mio::net::{UnixListener, UnixStream};

use crate::sys::unix_listener::{self, BoundPath, Existing};
use tapwire_proto::control::clients::{Admit, Clients, Phase};
pub use tapwire_proto::control::clients::{CLIENT_TIMEOUT_MS, MAX_CLIENTS, STALL_MS};

struct ClientIo {
    stream: UnixStream,
    reply: Option<(Vec<u8>, usize)>,
}

/// What a readable client produced.
pub enum Readiness {
    /// Nothing to do yet.
    Pending,
    /// A complete request; answer with [`Control::respond`].
    Request(Vec<u8>),
    /// The client is gone or done; it was removed.
    Closed,
}

/// The listening socket and its clients.
pub struct Control {
    listener: UnixListener,
    path: BoundPath,
    clients: Clients<ClientIo>,
    /// Accepting stopped at the cap: connections may be waiting in the backlog.
    backlog: bool,
}

impl Control {
    /// Bind `path` with mode 0600 (an existing file other than a symlink or a directory is
    /// replaced, as slirp4netns does).
    pub fn bind(path: &Path) -> io::Result<Control> {
        let (listener, bound) = unix_listener::bind(path, Existing::Replace)
            .map_err(|e| io::Error::new(e.kind(), format!("API socket {}: {e}", path.display())))?;
        Ok(Control {
            listener: UnixListener::from_std(listener),
            path: bound,
            clients: Clients::new(),
            backlog: false,
        })
    }

    pub fn listener(&mut self) -> &mut UnixListener {
        &mut self.listener
    }

    /// Whether connections may be waiting to be accepted (the caller should call
    /// [`Control::accept`] after a client left).
    pub fn backlog(&self) -> bool {
        self.backlog
    }

    /// Accept pending connections while there is room; returns after registering each new
    /// client's stream (readable + writable) with `register`.
    pub fn accept(
        &mut self,
        now_ms: u64,
        mut register: impl FnMut(usize, &mut UnixStream) -> io::Result<()>,
    ) {
        self.backlog = false;
        loop {
            let admit = self.clients.admit(now_ms);
            if admit == Admit::Full {
                // Leave the rest in the kernel's backlog until a slot frees.
                self.backlog = true;
                return;
            }
            match self.listener.accept() {
                Ok((stream, _)) => {
                    // Evict only now that someone is really waiting.
                    if let Admit::Evict(idx) = admit {
                        tracing::debug!("API: {MAX_CLIENTS} clients; evicting one that stalled");
                        self.clients.remove(idx);
                    }
                    let idx = self.clients.insert(
                        ClientIo {
                            stream,
                            reply: None,
                        },
                        now_ms,
                    );
                    let ok = match self.clients.io_mut(idx) {
                        Some(c) => register(idx, &mut c.stream).is_ok(),
                        None => false,
                    };
                    if !ok {
                        self.clients.remove(idx);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("API accept: {e}");
                    return;
                }
            }
        }
    }

    /// Read what a client sent.
    pub fn readable(&mut self, idx: usize) -> Readiness {
        if self.clients.phase(idx) != Some(Phase::Reading) {
            return match self.clients.phase(idx) {
                None => Readiness::Closed,
                Some(_) => Readiness::Pending,
            };
        }
        let mut chunk = [0u8; 1024];
        loop {
            let want = self.clients.wants_bytes(idx);
            let Some(c) = self.clients.io_mut(idx) else {
                return Readiness::Closed;
            };
            if !want {
                break;
            }
            match c.stream.read(&mut chunk) {
                Ok(0) => {
                    return match self.clients.received(idx, &[], true) {
                        Some(req) => Readiness::Request(req),
                        None => Readiness::Pending,
                    }
                }
                Ok(n) => {
                    if let Some(req) = self.clients.received(idx, &chunk[..n], false) {
                        return Readiness::Request(req);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Readiness::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.clients.remove(idx);
                    return Readiness::Closed;
                }
            }
        }
        // Over MAX_REQUEST: complete ("too large").
        match self.clients.received(idx, &[], false) {
            Some(req) => Readiness::Request(req),
            None => Readiness::Pending,
        }
    }

    /// Queue the reply for a client and start writing it.
    pub fn respond(&mut self, idx: usize, reply: String) {
        if let Some(c) = self.clients.io_mut(idx) {
            c.reply = Some((reply.into_bytes(), 0));
        }
        self.writable(idx);
    }

    /// Continue writing a reply; closes the client when done.
    pub fn writable(&mut self, idx: usize) {
        let Some(c) = self.clients.io_mut(idx) else {
            return;
        };
        let Some((reply, off)) = &mut c.reply else {
            return;
        };
        while *off < reply.len() {
            match c.stream.write(&reply[*off..]) {
                Ok(n) => *off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = c.stream.shutdown(Shutdown::Both);
        self.clients.remove(idx);
    }

    /// Drop clients that have been connected too long.
    pub fn sweep(&mut self, now_ms: u64) {
        for idx in self.clients.expired(now_ms) {
            tracing::debug!("API: dropping a client that stalled");
            self.clients.remove(idx);
        }
    }

    /// Clients being served (for tests and stats).
    pub fn clients(&self) -> usize {
        self.clients.len()
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.path.remove_if_ours();
    }
}
