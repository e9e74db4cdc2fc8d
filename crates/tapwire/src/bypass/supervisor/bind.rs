//! bind, listen and getpeername.
//!
//! # Theory of operation
//! - bind ([`Supervisor::on_bind`]): a TCP bind to a published guest port gets a host socket
//!   bound to the host address instead ([`Supervisor::publish_bind`]), installed like a
//!   bypassed connect's; any other bind on an IP container socket is performed here with the
//!   bytes read once. Host sockets are bound by us only (`EINVAL`).
//! - listen ([`Supervisor::on_listen`]): a host socket may only listen on a published address.
//! - getpeername ([`Supervisor::on_getpeername`]): a socket bypassed to a host address other
//!   than the one the program asked for (the gateway for host loopback) reports the address it
//!   asked for, from the table keyed by socket inode; anything else is the kernel's answer.
//!
//! Bind/listen on a container socket are performed by the supervisor, whose credentials count
//! for the privileged-port check (it owns the container's namespaces).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd, RawFd};

use super::connect::Install;
use super::sockopt::{bound, connected, inode, SockInfo};
use super::{Answer, Fail, Supervisor};
use crate::bypass::notify::{Notif, Reply};
use crate::sys::socket;
use tapwire_proto::bypass::{self, decode_inet, encode, normalize, SOCKADDR_MAX};

impl Supervisor {
    pub(super) fn on_bind(&mut self, li: usize, n: &Notif) -> Answer {
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
            // Host sockets are bound by us (connect, publish); nothing else may bind them.
            return Ok(Some(Reply::Error(libc::EINVAL)));
        }
        let family_ok = bypass::family(raw)
            == Some(if info.v6() {
                libc::AF_INET6
            } else {
                libc::AF_INET
            } as u16);
        if info.tcp() && family_ok && !bound(&sock) {
            if let Some(local) = decode_inet(raw) {
                if let Some(host_addr) = self.policy.bind(normalize(local), info.v6()) {
                    return self.publish_bind(li, n, fd, &sock, info, host_addr);
                }
            }
        }
        Ok(Some(match socket::bind_raw(sock.as_fd(), raw) {
            Ok(()) => Reply::Value(0),
            Err(e) => Reply::Error(e.raw_os_error().unwrap_or(libc::EIO)),
        }))
    }

    pub(super) fn publish_bind(
        &mut self,
        li: usize,
        n: &Notif,
        fd: RawFd,
        guest: &OwnedFd,
        info: SockInfo,
        host_addr: SocketAddr,
    ) -> Answer {
        let host = self.host_socket(guest, info, None)?;
        socket::bind_raw(host.as_fd(), encode(&host_addr).as_bytes())?;
        let cloexec = self.cloexec(li, n, fd)?;
        let inst = Install {
            newfd: fd,
            cloexec,
            nonblock: info.nonblock(),
            original: None,
        };
        self.install(li, n.id, host, &inst)?;
        self.stats.published += 1;
        tracing::debug!(
            "bypass: tid {} fd {fd}: bind served on host {host_addr}",
            n.tid
        );
        Ok(Some(Reply::Value(0)))
    }

    pub(super) fn on_listen(&mut self, li: usize, n: &Notif) -> Answer {
        let backlog = n.args[1] as i32;
        let Some((_, sock, info)) = self.target_socket(li, n, None)? else {
            return Ok(Some(Reply::Continue));
        };
        if info.host {
            let mut name = [0u8; 128];
            let len = socket::getsockname_raw(sock.as_fd(), &mut name)?;
            let ok = decode_inet(name.get(..len).unwrap_or(&[]))
                .is_some_and(|a| self.policy.listen_ok(normalize(a)));
            if !ok {
                self.stats.refused += 1;
                return Ok(Some(Reply::Error(libc::EINVAL)));
            }
        }
        Ok(Some(match socket::listen(sock.as_fd(), backlog) {
            Ok(()) => Reply::Value(0),
            Err(e) => Reply::Error(e.raw_os_error().unwrap_or(libc::EIO)),
        }))
    }

    pub(super) fn on_getpeername(&mut self, li: usize, n: &Notif) -> Answer {
        if self.peers.is_empty() {
            return Ok(Some(Reply::Continue));
        }
        let fd = n.args[0] as i32;
        let sock = match self.getfd(li, n, fd, None) {
            Ok(s) => s,
            Err(Fail::Gone) => return Err(Fail::Gone),
            Err(_) => return Ok(Some(Reply::Continue)),
        };
        let Some(orig) = inode(&sock).and_then(|i| self.peers.get(i)) else {
            return Ok(Some(Reply::Continue));
        };
        // Still connected? Otherwise the kernel's answer (ENOTCONN) is the right one.
        if !connected(&sock) {
            return Ok(Some(Reply::Continue));
        }
        let mut lenb = [0u8; 4];
        self.read(li, n, n.args[2], &mut lenb)?;
        let len = i32::from_ne_bytes(lenb);
        if len < 0 {
            return Ok(Some(Reply::Error(libc::EINVAL)));
        }
        let raw = encode(&orig);
        let bytes = raw.as_bytes();
        let k = bytes.len().min(len as usize);
        self.write(li, n.tid, n.id, n.args[1], bytes.get(..k).unwrap_or(&[]))?;
        self.write(
            li,
            n.tid,
            n.id,
            n.args[2],
            &(bytes.len() as u32).to_ne_bytes(),
        )?;
        Ok(Some(Reply::Value(0)))
    }
}
