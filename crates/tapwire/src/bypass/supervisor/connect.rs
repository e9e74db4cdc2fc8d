//! connect: the bypass decision, host sockets, installing them in the program.
//!
//! # Theory of operation
//! For an IP socket every connect is performed here, on the socket that was inspected and with
//! the address read once ([`Supervisor::on_connect`]):
//! - bypass ([`Supervisor::bypass_connect`]): a host socket of the same domain, type and
//!   protocol ([`Supervisor::host_socket`]: the container socket's options that differ from a
//!   fresh socket's copied over, `--outbound-addr` applied by [`crate::sys::socket`]'s
//!   `bind_outbound_as`, the same rule as the engine's), connected by us and installed over
//!   the program's fd number with `ADDFD`+`SETFD` ([`Supervisor::install`], keeping its
//!   close-on-exec flag) once the connect succeeded (blocking socket) or started
//!   (`O_NONBLOCK`: the program gets `EINPROGRESS`). Only a container socket that is not
//!   bound, not IPv6-only asked for IPv4, and for TCP not connected is replaced
//!   ([`Supervisor::bypassable`]).
//! - tap: the connect runs on the container's own socket (the copy), in its namespace.
//! - refuse: the policy's errno.
//! - a socket that already is a host socket ([`Supervisor::reconnect_host`]): only to
//!   destinations the policy sends to the host; the getpeername table follows.
//!
//! A blocking connect never blocks the thread ([`Supervisor::connect_on`]): the socket is
//! made non-blocking for the call only and parked until `POLLOUT` or its `SO_SNDTIMEO`.
#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::time::Instant;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use super::sockopt::{
    bound, copy_options, inode, read_options, ready_now, send_timeout, take_error, SockInfo,
};
use super::{answer_of, Answer, Fail, Supervisor, Then};
use crate::bypass::notify::{Notif, Reply};
use crate::sys::socket;
use tapwire_proto::bypass::{
    decode_connect, encode, normalize, to_family, Dest, Route, SOCKADDR_MAX,
};

/// A host socket to install in the program.
pub(super) struct Install {
    pub(super) newfd: RawFd,
    pub(super) cloexec: bool,
    pub(super) nonblock: bool,
    /// The address the program asked for, when it differs from the host target.
    pub(super) original: Option<SocketAddr>,
}

impl Supervisor {
    pub(super) fn on_connect(&mut self, li: usize, n: &Notif) -> Answer {
        let len = n.args[2] as u32 as i32;
        if len < 0 || len as usize > SOCKADDR_MAX {
            return Ok(Some(Reply::Error(libc::EINVAL)));
        }
        let pidfd = self.pidfd(n)?;
        let mut buf = [0u8; SOCKADDR_MAX];
        let raw = buf.get_mut(..len as usize).unwrap_or(&mut []);
        self.read(li, n, n.args[1], raw)?;
        let raw: &[u8] = raw;
        let Some((fd, sock, info)) = self.target_socket(li, n, Some(pidfd))? else {
            return Ok(Some(Reply::Continue));
        };
        if info.host {
            return self.reconnect_host(li, n, sock, info, raw);
        }
        let eligible = info.tcp() || (info.udp() && self.listeners.get(li).is_some_and(|l| l.udp));
        if eligible {
            if let Ok(Dest::Inet(dst)) = decode_connect(raw, info.v6(), info.udp()) {
                let ndst = normalize(dst);
                match self.policy.connect(ndst) {
                    Route::Host(target) => {
                        if self.routed_via_tap(li, ndst.ip())
                            && self.bypassable(&sock, info, ndst)?
                        {
                            return self.bypass_connect(li, n, fd, &sock, info, dst, target);
                        }
                    }
                    Route::Refuse(e) => {
                        self.stats.refused += 1;
                        return Ok(Some(Reply::Error(e)));
                    }
                    Route::Tap => {}
                }
            }
        }
        self.stats.tap += 1;
        self.connect_on(li, n, sock, info, raw, Then::Answer)
    }

    /// Whether the program's namespace itself sends `dst` out of the tap ([`super::route`]);
    /// true when there is no probe (OCI containers: the policy alone decides).
    fn routed_via_tap(&mut self, li: usize, dst: std::net::IpAddr) -> bool {
        match self.listeners.get_mut(li).and_then(|l| l.route.as_mut()) {
            None => true,
            Some(probe) => {
                let via_tap = probe.egress(dst) == super::route::Egress::Tap;
                if !via_tap {
                    self.stats.own_route += 1;
                }
                via_tap
            }
        }
    }

    /// Whether a container socket may be replaced: not bound to a local port yet (the program
    /// would expect to keep it), not a dual-stack-disabled socket asked for an IPv4 address,
    /// and for TCP not connected or connecting.
    pub(super) fn bypassable(
        &self,
        sock: &OwnedFd,
        info: SockInfo,
        ndst: SocketAddr,
    ) -> Result<bool, Fail> {
        if bound(sock) {
            return Ok(false);
        }
        if info.v6() && ndst.is_ipv4() {
            let v6only =
                socket::getsockopt_int(sock.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)?;
            if v6only != 0 {
                return Ok(false);
            }
        }
        if info.tcp() {
            let mut ti = [0u8; 8];
            socket::getsockopt_raw(sock.as_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, &mut ti)?;
            const TCP_CLOSE: u8 = 7;
            if ti[0] != TCP_CLOSE {
                return Ok(false);
            }
        }
        Ok(true)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn bypass_connect(
        &mut self,
        li: usize,
        n: &Notif,
        fd: RawFd,
        guest: &OwnedFd,
        info: SockInfo,
        dst: SocketAddr,
        target: SocketAddr,
    ) -> Answer {
        let host = self.host_socket(guest, info, Some(target))?;
        let cloexec = self.cloexec(li, n, fd)?;
        let original = (normalize(dst) != normalize(target)).then_some(dst);
        let inst = Install {
            newfd: fd,
            cloexec,
            nonblock: info.nonblock(),
            original,
        };
        let raw = encode(&to_family(target, info.v6()));
        self.stats.bypassed += 1;
        tracing::debug!("bypass: tid {} fd {fd}: {dst} -> host {target}", n.tid);
        match socket::connect_raw(host.as_fd(), raw.as_bytes()) {
            Ok(()) => self
                .install(li, n.id, host, &inst)
                .map(|()| Some(Reply::Value(0))),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                if info.nonblock() {
                    self.install(li, n.id, host, &inst)?;
                    return Ok(Some(Reply::Error(libc::EINPROGRESS)));
                }
                if ready_now(&host) {
                    return self.finish_install(li, n.id, host, inst);
                }
                let deadline = send_timeout(guest).map(|t| Instant::now() + t);
                self.park(li, n.id, host, deadline, Then::Install(inst))
            }
            // Refused, unreachable...: the program's socket stays as it was.
            Err(e) => Ok(Some(Reply::Error(e.raw_os_error().unwrap_or(libc::EIO)))),
        }
    }

    /// A blocking bypassed connect finished: install on success, else report the error.
    pub(super) fn finish_install(
        &mut self,
        li: usize,
        id: u64,
        host: OwnedFd,
        inst: Install,
    ) -> Answer {
        match take_error(&host) {
            0 => self
                .install(li, id, host, &inst)
                .map(|()| Some(Reply::Value(0))),
            e => Ok(Some(Reply::Error(e))),
        }
    }

    /// Put the host socket in the program's fd table at `inst.newfd`.
    pub(super) fn install(
        &mut self,
        li: usize,
        id: u64,
        host: OwnedFd,
        inst: &Install,
    ) -> Result<(), Fail> {
        // Host sockets are made non-blocking (socket() with SOCK_NONBLOCK), nothing else.
        if !inst.nonblock {
            fcntl(host.as_fd(), FcntlArg::F_SETFL(OFlag::empty())).map_err(io::Error::from)?;
        }
        let ino = inst.original.and_then(|_| inode(&host));
        if let (Some(orig), Some(ino)) = (inst.original, ino) {
            self.peers.insert(ino, orig);
        }
        let Some(l) = self.listeners.get_mut(li) else {
            return Err(Fail::Gone);
        };
        l.installed = true;
        match l.fd.addfd_at(id, host.as_fd(), inst.newfd, inst.cloexec) {
            Ok(_) => Ok(()),
            Err(e) => {
                if let Some(ino) = ino {
                    self.peers.remove(ino);
                }
                match e.raw_os_error() {
                    Some(libc::ENOENT) => Err(Fail::Gone),
                    Some(n) => Err(Fail::Errno(n)),
                    None => Err(Fail::Errno(libc::EIO)),
                }
            }
        }
    }

    /// connect on an existing socket (the container's own, or a host socket), without ever
    /// blocking: a blocking socket is switched to non-blocking for the call only.
    pub(super) fn connect_on(
        &mut self,
        li: usize,
        n: &Notif,
        sock: OwnedFd,
        info: SockInfo,
        raw: &[u8],
        then: Then,
    ) -> Answer {
        let r = if info.nonblock() {
            socket::connect_raw(sock.as_fd(), raw)
        } else {
            fcntl(
                sock.as_fd(),
                FcntlArg::F_SETFL(info.flags | OFlag::O_NONBLOCK),
            )
            .map_err(io::Error::from)?;
            let r = socket::connect_raw(sock.as_fd(), raw);
            let _ = fcntl(sock.as_fd(), FcntlArg::F_SETFL(info.flags));
            r
        };
        match r {
            Ok(()) => Ok(Some(Reply::Value(0))),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) && !info.nonblock() => {
                if ready_now(&sock) {
                    return Ok(Some(answer_of(take_error(&sock))));
                }
                let deadline = send_timeout(&sock).map(|t| Instant::now() + t);
                self.park(li, n.id, sock, deadline, then)
            }
            Err(e) => Ok(Some(Reply::Error(e.raw_os_error().unwrap_or(libc::EIO)))),
        }
    }

    /// connect on a socket that already lives in the host's namespace: only to destinations
    /// the policy sends to the host.
    pub(super) fn reconnect_host(
        &mut self,
        li: usize,
        n: &Notif,
        sock: OwnedFd,
        info: SockInfo,
        raw: &[u8],
    ) -> Answer {
        let dest = match decode_connect(raw, info.v6(), info.udp()) {
            Ok(d) => d,
            Err(e) => return Ok(Some(Reply::Error(e))),
        };
        let ino = inode(&sock);
        match dest {
            Dest::Unspec => {
                if let Some(ino) = ino {
                    self.peers.remove(ino);
                }
                self.connect_on(li, n, sock, info, raw, Then::Answer)
            }
            Dest::Inet(dst) => match self.policy.connect(normalize(dst)) {
                Route::Host(target) => {
                    if let Some(ino) = ino {
                        if normalize(dst) != normalize(target) {
                            self.peers.insert(ino, dst);
                        } else {
                            self.peers.remove(ino);
                        }
                    }
                    let raw = encode(&to_family(target, info.v6()));
                    self.connect_on(li, n, sock, info, raw.as_bytes(), Then::Answer)
                }
                Route::Tap => {
                    self.stats.refused += 1;
                    Ok(Some(Reply::Error(libc::ENETUNREACH)))
                }
                Route::Refuse(e) => {
                    self.stats.refused += 1;
                    Ok(Some(Reply::Error(e)))
                }
            },
        }
    }

    /// A fresh host socket like `guest` (domain, type, protocol), with the options that differ
    /// from a fresh socket's copied over and, for a non-loopback `target`, `--outbound-addr`.
    pub(super) fn host_socket(
        &mut self,
        guest: &OwnedFd,
        info: SockInfo,
        target: Option<SocketAddr>,
    ) -> Result<OwnedFd, Fail> {
        let host = socket::socket(info.domain, info.ty, info.proto)?;
        let key = (info.domain, info.ty, info.proto);
        let defaults = self
            .defaults
            .entry(key)
            .or_insert_with(|| read_options(&host, info));
        copy_options(guest, &host, info, defaults);
        if let Some(t) = target {
            if !t.ip().is_loopback() {
                let sock = socket2::SockRef::from(&host);
                socket::bind_outbound_as(&sock, self.policy.net(), t, info.v6())?;
            }
        }
        Ok(host)
    }
}
