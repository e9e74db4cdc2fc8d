//! The control socket's I/O: a non-blocking UNIX stream server inside the event loop.
//!
//! # Theory of operation
//! slirp4netns answers API requests synchronously and "stops the world" while a client dawdles.
//! Here every client is a small state machine driven by readiness, like any other socket of the
//! event loop, so a client that connects and sends nothing, or half a request, costs one slab
//! entry and nothing else:
//!
//! ```text
//! Reading --EOF, or a complete JSON value, or too large--> Replying --all written--> closed
//! ```
//!
//! A request is complete when the client shuts down its write side (the protocol) or as soon as
//! the bytes received parse as one JSON value (clients that forget the shutdown, which
//! slirp4netns tolerates because it does a single read). Requests over [`MAX_REQUEST`]
//! bytes get the "too large message" error. Clients idle for [`CLIENT_TIMEOUT_MS`] are
//! dropped, and at most [`MAX_CLIENTS`] are served at once: a new connection beyond that
//! evicts the oldest client, which has stalled longest (a well-behaved request is done in
//! microseconds), so stalled connections can never lock the API, not even for the timeout.
//! The socket file is created mode 0600 (umask around `bind`) and removed on drop.
#![forbid(unsafe_code)]
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::path::{Path, PathBuf};

use mio::net::{UnixListener, UnixStream};
use slab::Slab;

use tapwire_proto::control::MAX_REQUEST;

/// Concurrent API clients.
pub const MAX_CLIENTS: usize = 64;
/// A client that has not finished its request and read its reply by then is dropped.
pub const CLIENT_TIMEOUT_MS: u64 = 10_000;

struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    reply: Option<(Vec<u8>, usize)>,
    since_ms: u64,
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
    path: PathBuf,
    clients: Slab<Client>,
}

impl Control {
    /// Bind `path` (an existing socket file is replaced, as slirp4netns does) with mode 0600.
    pub fn bind(path: &Path) -> io::Result<Control> {
        let ctx =
            |e: io::Error| io::Error::new(e.kind(), format!("API socket {}: {e}", path.display()));
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ctx(e)),
        }
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let listener = UnixListener::bind(path);
        nix::sys::stat::umask(old);
        Ok(Control {
            listener: listener.map_err(ctx)?,
            path: path.to_owned(),
            clients: Slab::new(),
        })
    }

    pub fn listener(&mut self) -> &mut UnixListener {
        &mut self.listener
    }

    /// Accept pending connections; returns the new clients' indices with their streams to
    /// register (readable + writable).
    pub fn accept(
        &mut self,
        now_ms: u64,
        mut register: impl FnMut(usize, &mut UnixStream) -> io::Result<()>,
    ) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.clients.len() >= MAX_CLIENTS {
                        let oldest = self
                            .clients
                            .iter()
                            .min_by_key(|(_, c)| c.since_ms)
                            .map(|(i, _)| i);
                        if let Some(oldest) = oldest {
                            tracing::warn!("API: {MAX_CLIENTS} clients; dropping the oldest");
                            self.clients.remove(oldest);
                        }
                    }
                    let entry = self.clients.vacant_entry();
                    let idx = entry.key();
                    let client = entry.insert(Client {
                        stream,
                        buf: Vec::new(),
                        reply: None,
                        since_ms: now_ms,
                    });
                    if register(idx, &mut client.stream).is_err() {
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
        let Some(client) = self.clients.get_mut(idx) else {
            return Readiness::Closed;
        };
        if client.reply.is_some() {
            return Readiness::Pending;
        }
        let mut chunk = [0u8; 1024];
        let mut eof = false;
        loop {
            match client.stream.read(&mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    client.buf.extend_from_slice(&chunk[..n]);
                    if client.buf.len() > MAX_REQUEST {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.clients.remove(idx);
                    return Readiness::Closed;
                }
            }
        }
        let complete = eof
            || client.buf.len() > MAX_REQUEST
            || serde_json::from_slice::<serde_json::Value>(&client.buf).is_ok();
        if complete {
            Readiness::Request(std::mem::take(&mut client.buf))
        } else {
            Readiness::Pending
        }
    }

    /// Queue the reply for a client and start writing it.
    pub fn respond(&mut self, idx: usize, reply: String) {
        if let Some(client) = self.clients.get_mut(idx) {
            client.reply = Some((reply.into_bytes(), 0));
        }
        self.writable(idx);
    }

    /// Continue writing a reply; closes the client when done.
    pub fn writable(&mut self, idx: usize) {
        let Some(client) = self.clients.get_mut(idx) else {
            return;
        };
        let Some((reply, off)) = &mut client.reply else {
            return;
        };
        while *off < reply.len() {
            match client.stream.write(&reply[*off..]) {
                Ok(n) => *off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = client.stream.shutdown(Shutdown::Both);
        self.clients.remove(idx);
    }

    /// Drop clients that have been connected too long.
    pub fn sweep(&mut self, now_ms: u64) {
        let stale: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| now_ms.saturating_sub(c.since_ms) > CLIENT_TIMEOUT_MS)
            .map(|(i, _)| i)
            .collect();
        for idx in stale {
            tracing::debug!("API: dropping a client that stalled");
            self.clients.remove(idx);
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
