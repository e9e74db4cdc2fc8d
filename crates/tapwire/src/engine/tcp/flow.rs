//! One TCP flow: a guest connection (a smoltcp socket) spliced to one host socket.
//!
//! # Theory of operation
//! A flow is born when the guest sends a SYN to an (address, port) nobody handles yet. The
//! engine starts a non-blocking host `connect()` to the translated address and creates a
//! smoltcp socket listening on exactly that destination with its SYN-ACK paused, then lets
//! smoltcp take the SYN. States:
//!
//! ```text
//! Connecting --host connect ok--> Open --both FINs--> Closed (removed)
//!     |                            |
//!     +--refused/unreachable--> Failed: RST or ICMP to the guest, removed
//!                                  +--RST either side--> Aborted (removed)
//! ```
//!
//! - **Connecting**: the guest sees nothing until the host answers. Success unpauses the
//!   SYN-ACK; ECONNREFUSED becomes a RST and ENETUNREACH/EHOSTUNREACH an ICMP unreachable,
//!   so the guest's connect fails the way it would on a real network.
//! - **Open**: [`TcpFlow::pump`] moves bytes both ways without an intermediate buffer:
//!   guest->host writes straight out of smoltcp's receive ring into the host socket,
//!   host->guest reads straight into smoltcp's transmit ring. When a ring is full (guest slow)
//!   we stop reading the host socket, so the host's own TCP window applies back-pressure;
//!   when the host socket is full we stop draining the ring, so smoltcp's advertised window
//!   closes. Nothing is ever buffered beyond the two rings.
//! - **Half-close**: the guest's FIN (after its data is written) becomes `shutdown(SHUT_WR)`;
//!   the host's EOF becomes smoltcp `close()` (a FIN after queued data).
//! - **Reset**: a guest RST closes the host socket with SO_LINGER 0 (a RST to the host peer);
//!   a host reset or error aborts the smoltcp socket (a RST to the guest).
//! - **Timeout**: a guest that stays silent for [`GUEST_ACK_TIMEOUT`] while our data or FIN
//!   waits for its acknowledgement, or for [`HANDSHAKE_TIMEOUT`] during a handshake, is given
//!   up on ([`TcpFlow::guest_timeout`], enforced by the engine's clock: smoltcp's own timeout
//!   counts from the peer's last segment even across idle periods, so it would reset the first
//!   FIN after a long silence). An idle connection lives as long as both ends keep it.
//!
//! Host readiness is edge-triggered: `host_readable`/`host_writable` remember readiness until
//! a call returns `WouldBlock` (or a read comes back shorter than the space offered, which
//! means the socket's queue was emptied: new data raises a new edge), so back-pressure never
//! loses an edge.
//!
//! A flow opened by the guest keeps the start of its SYN ([`GuestSyn`]) so that a failed host
//! connect can be answered with a RST or an ICMP error quoting it; one opened by the host (a
//! port forward) starts `Open`. Both are built by [`TcpFlow::new`].
//!
//! Generic over [`HostStream`] so the splice logic can be driven by an in-memory host in tests.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};

use smoltcp::socket::tcp::{self, RecvError, State};
use smoltcp::time::Duration;
use tapwire_proto::wire::{TcpInfo, ETH_LEN};

/// How long the guest may stay silent while our data or FIN waits for its acknowledgement
/// before the flow is reset (about what Linux's `tcp_retries2` gives). Idle connections have
/// no limit: a paused container keeps them, as with slirp4netns.
pub const GUEST_ACK_TIMEOUT: Duration = Duration::from_secs(900);
/// How long a handshake with the guest may take (our SYN to a guest that drops it, our
/// SYN-ACK that it never acknowledges).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(120);

/// What the proxy needs from a host connection.
pub trait HostStream: Read + Write {
    fn shutdown_write(&mut self) -> io::Result<()>;
    /// Make the next close send a RST (SO_LINGER 0).
    fn set_abortive(&mut self);
}

impl HostStream for mio::net::TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn set_abortive(&mut self) {
        let _ = socket2::SockRef::from(&*self).set_linger(Some(std::time::Duration::ZERO));
    }
}

/// Lifecycle of a flow; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    Open,
    /// We aborted the guest side; remove after the RST went out.
    Aborted,
}

/// One proxied TCP connection.
pub struct TcpFlow<H> {
    pub host: H,
    pub handle: smoltcp::iface::SocketHandle,
    pub phase: Phase,
    /// The guest's endpoint and the destination it connected to.
    pub guest: SocketAddr,
    pub dst: SocketAddr,
    /// Where the host socket connects.
    pub target: SocketAddr,
    pub host_readable: bool,
    pub host_writable: bool,
    /// Host sent EOF; smoltcp `close()` was called.
    pub host_eof: bool,
    /// The host's EOF has been signalled (EPOLLRDHUP) but maybe not read yet: no more edges
    /// will come, so read until EOF even after a short read.
    pub host_read_closed: bool,
    /// The guest's FIN was passed on as `shutdown(SHUT_WR)`.
    pub guest_fin: bool,
    /// The socket was seen in a state that implies the guest's FIN arrived.
    pub guest_fin_seen: bool,
    pub bytes_to_host: u64,
    pub bytes_to_guest: u64,
    /// Segments the guest sent on this flow.
    pub segments_from_guest: u64,
    /// The guest's SYN (zero for a flow the host opened).
    pub syn: GuestSyn,
}

/// What a flow keeps of the guest's SYN while its host connect is pending, to fail the
/// guest's connect the way the host's failed.
#[derive(Debug, Clone, Copy)]
pub struct GuestSyn {
    /// The start of the SYN (IP header + TCP header start), to quote in an ICMP error.
    pub quote: [u8; 48],
    pub quote_len: usize,
    /// The SYN's sequence number (for a RST built without smoltcp).
    pub seq: u32,
}

impl Default for GuestSyn {
    /// No SYN (a flow the host opened).
    fn default() -> GuestSyn {
        GuestSyn {
            quote: [0; 48],
            quote_len: 0,
            seq: 0,
        }
    }
}

impl GuestSyn {
    /// Keep the SYN `syn` that arrived in `frame`.
    pub fn new(syn: &TcpInfo, frame: &[u8]) -> GuestSyn {
        let mut quote = [0u8; 48];
        let ip = frame.get(ETH_LEN..).unwrap_or(&[]);
        let quote_len = ip.len().min(quote.len());
        quote[..quote_len].copy_from_slice(&ip[..quote_len]);
        GuestSyn {
            quote,
            quote_len,
            seq: syn.seq,
        }
    }

    /// The SYN from `guest` to `dst`, as `wire::classify` described it (to answer with a RST).
    pub fn info(&self, guest: SocketAddr, dst: SocketAddr) -> TcpInfo {
        TcpInfo {
            src: guest,
            dst,
            syn: true,
            ack: false,
            rst: false,
            fin: false,
            seq: self.seq,
            seq_len: 1,
        }
    }

    /// The SYN as a frame (a zero Ethernet header, IPv6's EtherType if `v6`, then the quote),
    /// for an ICMP error to quote; its length.
    pub fn frame(&self, v6: bool) -> ([u8; ETH_LEN + 48], usize) {
        let mut frame = [0u8; ETH_LEN + 48];
        let qlen = self.quote_len;
        if v6 {
            frame[12..14].copy_from_slice(&[0x86, 0xdd]);
        }
        frame[ETH_LEN..ETH_LEN + qlen].copy_from_slice(&self.quote[..qlen]);
        (frame, ETH_LEN + qlen)
    }
}

/// What the engine must do after a pump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Keep the flow.
    Keep,
    /// Remove the flow now (both sides done, or the guest reset it).
    Remove,
}

impl<H> TcpFlow<H> {
    /// A flow between the guest's `guest` and `dst` (the address it sees at the other end),
    /// its smoltcp socket `handle`, spliced to `host`, which goes to `target`. `syn`: the
    /// guest opened the flow with this SYN, and `host` is still connecting; `None`: the host
    /// opened it (a port forward), `host` is connected.
    pub fn new(
        host: H,
        handle: smoltcp::iface::SocketHandle,
        guest: SocketAddr,
        dst: SocketAddr,
        target: SocketAddr,
        syn: Option<GuestSyn>,
    ) -> TcpFlow<H> {
        let connected = syn.is_none();
        TcpFlow {
            host,
            handle,
            phase: if connected {
                Phase::Open
            } else {
                Phase::Connecting
            },
            guest,
            dst,
            target,
            host_readable: connected,
            host_writable: connected,
            host_eof: false,
            host_read_closed: false,
            guest_fin: false,
            guest_fin_seen: false,
            bytes_to_host: 0,
            bytes_to_guest: 0,
            segments_from_guest: 0,
            syn: syn.unwrap_or_default(),
        }
    }
}

impl<H: HostStream> TcpFlow<H> {
    /// Host connect finished successfully: let smoltcp send the SYN-ACK.
    pub fn connected(&mut self, sock: &mut tcp::Socket<'_>) {
        self.phase = Phase::Open;
        self.host_writable = true;
        self.host_readable = true;
        sock.pause_synack(false);
    }

    /// Move data both ways until blocked; decide whether the flow is finished.
    pub fn pump(&mut self, sock: &mut tcp::Socket<'_>) -> Outcome {
        match self.phase {
            Phase::Aborted => return Outcome::Remove,
            Phase::Connecting => {
                // The guest gave up (RST sends a SYN-RECEIVED socket back to LISTEN) or timed out.
                return match sock.state() {
                    State::Listen | State::Closed => Outcome::Remove,
                    _ => Outcome::Keep,
                };
            }
            Phase::Open => {}
        }
        if let Err(e) = self.guest_to_host(sock) {
            tracing::debug!(guest = %self.guest, dst = %self.dst, "host write: {e}");
            return self.abort(sock);
        }
        if let Err(e) = self.host_to_guest(sock) {
            tracing::debug!(guest = %self.guest, dst = %self.dst, "host read: {e}");
            return self.abort(sock);
        }
        let state = sock.state();
        if matches!(
            state,
            State::CloseWait | State::LastAck | State::Closing | State::TimeWait
        ) {
            self.guest_fin_seen = true;
        }
        match state {
            State::Closed | State::TimeWait if self.guest_fin_seen => {
                // Graceful: both FINs. Keep the flow until everything the guest sent has been
                // written to the host (the host socket may be full right now). A TIME-WAIT
                // that ran out (Closed) has discarded the ring: nothing is left to write.
                if sock.recv_queue() == 0 && (self.guest_fin || state == State::Closed) {
                    Outcome::Remove
                } else {
                    Outcome::Keep
                }
            }
            State::Closed => {
                // Closed without the guest's FIN: it reset the connection or stopped answering.
                self.host.set_abortive();
                Outcome::Remove
            }
            _ => Outcome::Keep,
        }
    }

    /// How long the guest may stay silent now: `None` when we wait for nothing from it (an
    /// idle connection, or a flow whose host connect is still pending).
    pub fn guest_timeout(&self, sock: &tcp::Socket<'_>) -> Option<Duration> {
        if self.phase != Phase::Open {
            return None;
        }
        match sock.state() {
            State::SynSent | State::SynReceived => Some(HANDSHAKE_TIMEOUT),
            State::FinWait1 | State::Closing | State::LastAck => Some(GUEST_ACK_TIMEOUT),
            _ if sock.send_queue() > 0 => Some(GUEST_ACK_TIMEOUT),
            _ => None,
        }
    }

    /// The guest stayed silent past [`guest_timeout`](Self::guest_timeout): reset both sides.
    pub fn give_up(&mut self, sock: &mut tcp::Socket<'_>) {
        tracing::debug!(guest = %self.guest, dst = %self.dst, state = %sock.state(), "guest silent; resetting");
        self.abort(sock);
    }

    fn abort(&mut self, sock: &mut tcp::Socket<'_>) -> Outcome {
        sock.abort();
        self.host.set_abortive();
        self.phase = Phase::Aborted;
        Outcome::Keep
    }

    fn guest_to_host(&mut self, sock: &mut tcp::Socket<'_>) -> io::Result<()> {
        while self.host_writable && !self.guest_fin {
            let host = &mut self.host;
            let r = sock.recv(|buf| {
                if buf.is_empty() {
                    return (0, Ok(0));
                }
                match host.write(buf) {
                    Ok(n) => (n, Ok(n)),
                    Err(e) => (0, Err(e)),
                }
            });
            match r {
                Ok(Ok(0)) => break, // ring empty
                Ok(Ok(n)) => self.bytes_to_host += n as u64,
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => self.host_writable = false,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(RecvError::Finished) => {
                    self.guest_fin = true;
                    // The host may already be gone; its EOF/RST shows up on the read side.
                    let _ = self.host.shutdown_write();
                }
                Err(RecvError::InvalidState) => break,
            }
        }
        Ok(())
    }

    fn host_to_guest(&mut self, sock: &mut tcp::Socket<'_>) -> io::Result<()> {
        while self.host_readable && !self.host_eof && sock.can_send() {
            let host = &mut self.host;
            let r = sock.send(|buf| match host.read(buf) {
                Ok(n) => (n, Ok((n, n < buf.len()))),
                Err(e) => (0, Err(e)),
            });
            match r {
                Ok(Ok((0, _))) => {
                    self.host_eof = true;
                    sock.close();
                }
                Ok(Ok((n, short))) => {
                    self.bytes_to_guest += n as u64;
                    // A read that did not fill the space drained the socket: the next data
                    // (or EOF) brings a new readiness edge, so skip the read that would only
                    // say EAGAIN (one system call less per reply on request/response traffic).
                    if short && !self.host_read_closed {
                        self.host_readable = false;
                    }
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => self.host_readable = false,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => break,
            }
        }
        Ok(())
    }
}
