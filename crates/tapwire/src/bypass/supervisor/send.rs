//! Sends with a destination (UDP bypass): sendto, sendmsg, sendmmsg.
//!
//! # Theory of operation
//! A bypassed UDP socket lives in the host's namespace, so every send that carries an address
//! is trapped (the filter lets `send`/`write` without one pass): on an IP socket the supervisor
//! reads the message once (name, iovecs up to 64 KiB per datagram or 1 MiB per stream call,
//! control data), checks the destination against the policy if the socket is a host socket
//! (re-encoding it; an AF_UNSPEC address on an AF_INET socket is an address too), and sends it
//! itself (non-blocking; a blocking socket without room waits in `Pending`, `SO_SNDTIMEO`
//! gives `EAGAIN`). sendmmsg reads up to [`MMSG_BATCH`] messages (at most [`MAX_SEND_BATCH`]
//! bytes in all) in one notification: the first is sent as a sendmsg is (it may wait), the
//! others after it without waiting, each destination checked on its own, until one would
//! block or is refused; every sent message's `msg_len` is written back and the count returned
//! (the kernel's sendmmsg also returns the count of a partial batch, and reports the error on
//! the next call). So a program that batches its datagrams (wireguard-go, QUIC stacks) pays
//! one round trip per batch instead of one per datagram. A stream socket may see a short
//! write, which programs handle.
//!
#![forbid(unsafe_code)]

use std::io::IoSlice;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use super::sockopt::{send_timeout, SockInfo};
use super::{Answer, Fail, Supervisor, Then};
use crate::bypass::notify::{Notif, Reply};
use crate::sys::socket;
use tapwire_proto::bypass::{self, encode, normalize, to_family, Route, SOCKADDR_MAX};

/// Most bytes the supervisor sends in one call for the program (UDP bypass traps every
/// sendmsg): a whole datagram, or a chunk of a stream (a short write, which the program
/// continues).
pub(super) const MAX_SEND_DGRAM: usize = 65_536;
pub(super) const MAX_SEND_STREAM: usize = 1 << 20;
/// Most messages of one sendmmsg sent per notification, and their bytes in all.
pub(super) const MMSG_BATCH: usize = 64;
pub(super) const MAX_SEND_BATCH: usize = 1 << 20;
/// `sizeof(struct mmsghdr)` (LP64): the msghdr, `msg_len`, padding.
const MMSGHDR_SIZE: u64 = 64;
/// Largest iovec array / control buffer read from the program.
pub(super) const MAX_IOV: usize = 1024;
pub(super) const MAX_CONTROL: usize = 64 * 1024;

/// A send performed for the program.
pub(super) struct SendJob {
    /// The destination as the kernel gets it (already checked for a host socket).
    pub(super) name: Option<Vec<u8>>,
    pub(super) data: Vec<Vec<u8>>,
    pub(super) control: Vec<u8>,
    pub(super) flags: i32,
    /// sendmmsg: where the first message's `msg_len` goes.
    pub(super) mmsg_len_at: Option<u64>,
    /// sendmmsg: the messages after the first, with their destinations as the program wrote
    /// them (checked one by one when they are sent).
    pub(super) rest: Vec<MsgCopy>,
    /// The socket's kind (for the checks of `rest`).
    pub(super) info: SockInfo,
    pub(super) tid: i32,
}

/// What `read_msghdr` copied.
pub(super) struct MsgCopy {
    pub(super) name: Option<Vec<u8>>,
    pub(super) data: Vec<Vec<u8>>,
    pub(super) control: Vec<u8>,
}

pub(super) fn max_send(info: SockInfo) -> usize {
    if info.ty == libc::SOCK_STREAM {
        MAX_SEND_STREAM
    } else {
        MAX_SEND_DGRAM
    }
}

pub(super) fn size_of_msghdr() -> usize {
    std::mem::size_of::<libc::msghdr>()
}

impl Supervisor {
    /// sendto with a destination. On an IP socket it is performed here with the address read
    /// once; on other sockets continued.
    pub(super) fn on_sendto(&mut self, li: usize, n: &Notif) -> Answer {
        let flags = n.args[3] as i32;
        let len = n.args[5] as u32 as i32;
        let Some((_, sock, info)) = self.target_socket(li, n, None)? else {
            return Ok(Some(Reply::Continue));
        };
        if len < 0 || len as usize > SOCKADDR_MAX {
            return Ok(Some(Reply::Error(libc::EINVAL)));
        }
        let mut name = vec![0u8; len as usize];
        self.read(li, n, n.args[4], &mut name)?;
        let size = (n.args[2] as usize).min(max_send(info));
        let mut data = vec![0u8; size];
        self.read(li, n, n.args[1], &mut data)?;
        let job = SendJob {
            name: Some(name),
            data: vec![data],
            control: Vec::new(),
            flags,
            mmsg_len_at: None,
            rest: Vec::new(),
            info,
            tid: n.tid,
        };
        self.send_as(li, n.id, sock, info, job)
    }

    pub(super) fn on_sendmsg(&mut self, li: usize, n: &Notif) -> Answer {
        let flags = n.args[2] as i32;
        let Some((_, sock, info)) = self.target_socket(li, n, None)? else {
            return Ok(Some(Reply::Continue));
        };
        let msg = self.read_msghdr(li, n, n.args[1], max_send(info))?;
        let job = SendJob {
            name: msg.name,
            data: msg.data,
            control: msg.control,
            flags,
            mmsg_len_at: None,
            rest: Vec::new(),
            info,
            tid: n.tid,
        };
        self.send_as(li, n.id, sock, info, job)
    }

    /// sendmmsg on an IP socket: up to [`MMSG_BATCH`] messages (see the module documentation),
    /// each sent one's `msg_len` written back.
    pub(super) fn on_sendmmsg(&mut self, li: usize, n: &Notif) -> Answer {
        let flags = n.args[3] as i32;
        let vlen = n.args[2] as u32;
        let Some((_, sock, info)) = self.target_socket(li, n, None)? else {
            return Ok(Some(Reply::Continue));
        };
        if vlen == 0 {
            return Ok(Some(Reply::Value(0)));
        }
        let msg = self.read_msghdr(li, n, n.args[1], max_send(info))?;
        // The following messages, read now (once), as long as the batch has room for them.
        let mut rest = Vec::new();
        let mut total: usize = msg.data.iter().map(Vec::len).sum();
        let more = (vlen as usize).min(MMSG_BATCH);
        for i in 1..more {
            if info.tcp() || total >= MAX_SEND_BATCH {
                break;
            }
            let at = n.args[1] + i as u64 * MMSGHDR_SIZE;
            let Ok(m) = self.read_msghdr(li, n, at, max_send(info)) else {
                // A bad message later in the vector is the next call's error.
                break;
            };
            total += m.data.iter().map(Vec::len).sum::<usize>();
            rest.push(m);
        }
        let job = SendJob {
            name: msg.name,
            data: msg.data,
            control: msg.control,
            flags,
            // struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; }
            mmsg_len_at: Some(n.args[1] + size_of_msghdr() as u64),
            rest,
            info,
            tid: n.tid,
        };
        self.send_as(li, n.id, sock, info, job)
    }

    /// Read a `struct msghdr` and everything it points to (name, up to `max` bytes of data,
    /// control), once.
    pub(super) fn read_msghdr(
        &self,
        li: usize,
        n: &Notif,
        addr: u64,
        max: usize,
    ) -> Result<MsgCopy, Fail> {
        let mut hdr = [0u8; 56];
        self.read(li, n, addr, &mut hdr)?;
        let u64_at = |o: usize| {
            hdr.get(o..o + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_ne_bytes)
                .unwrap_or(0)
        };
        let u32_at = |o: usize| {
            hdr.get(o..o + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_ne_bytes)
                .unwrap_or(0)
        };
        // struct msghdr (LP64): name@0, namelen@8, iov@16, iovlen@24, control@32,
        // controllen@40, flags@48.
        let (name_p, name_len) = (u64_at(0), u32_at(8) as usize);
        let (iov_p, iov_len) = (u64_at(16), u64_at(24) as usize);
        let (ctl_p, ctl_len) = (u64_at(32), u64_at(40) as usize);
        let name = if name_p != 0 && name_len != 0 {
            if name_len > SOCKADDR_MAX {
                return Err(Fail::Errno(libc::EINVAL));
            }
            let mut b = vec![0u8; name_len];
            self.read(li, n, name_p, &mut b)?;
            Some(b)
        } else {
            None
        };
        if iov_len > MAX_IOV {
            return Err(Fail::Errno(libc::EMSGSIZE));
        }
        let mut iovs = vec![0u8; iov_len * 16];
        self.read(li, n, iov_p, &mut iovs)?;
        let mut data = Vec::new();
        let mut total = 0usize;
        for c in iovs.chunks_exact(16) {
            let base = u64::from_ne_bytes(c[..8].try_into().unwrap_or([0; 8]));
            let len = u64::from_ne_bytes(c[8..].try_into().unwrap_or([0; 8])) as usize;
            let take = len.min(max - total);
            if take == 0 {
                continue;
            }
            let mut b = vec![0u8; take];
            self.read(li, n, base, &mut b)?;
            total += take;
            data.push(b);
            if total >= max {
                break;
            }
        }
        let control = if ctl_p != 0 && ctl_len != 0 {
            if ctl_len > MAX_CONTROL {
                return Err(Fail::Errno(libc::ENOBUFS));
            }
            let mut b = vec![0u8; ctl_len];
            self.read(li, n, ctl_p, &mut b)?;
            b
        } else {
            Vec::new()
        };
        Ok(MsgCopy {
            name,
            data,
            control,
        })
    }

    /// Perform a send for the program on `sock` (its own socket or a host socket). On a host
    /// socket the destination is checked (only destinations the policy sends to the host) and
    /// re-encoded, never passed as the program wrote it; on a container socket it is passed as
    /// given (the kernel checks it there, in the container's namespace).
    pub(super) fn send_as(
        &mut self,
        li: usize,
        id: u64,
        sock: OwnedFd,
        info: SockInfo,
        mut job: SendJob,
    ) -> Answer {
        if job.flags & libc::MSG_FASTOPEN != 0 && info.tcp() {
            return Ok(Some(Reply::Error(libc::EOPNOTSUPP)));
        }
        match self.checked_name(info, job.name.take()) {
            Ok(name) => job.name = name,
            Err(e) => return Ok(Some(Reply::Error(e))),
        }
        self.stats.sends += 1;
        let deadline = if info.nonblock() || job.flags & libc::MSG_DONTWAIT != 0 {
            None
        } else {
            Some(send_timeout(&sock).map(|t| Instant::now() + t))
        };
        self.try_send(li, id, sock, job, deadline)
    }

    /// The destination to pass to the kernel for a send on `sock`: on a host socket checked
    /// (only destinations the policy sends to the host) and re-encoded, never passed as the
    /// program wrote it; on a container socket as given. `Err` is the errno for the program.
    fn checked_name(
        &mut self,
        info: SockInfo,
        name: Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, i32> {
        if !info.host {
            return Ok(name);
        }
        match name {
            // TCP ignores the address of a send (without MSG_FASTOPEN): pass none.
            _ if !info.udp() => Ok(None),
            None => Ok(None),
            Some(raw) => match bypass::decode_send(&raw, info.v6())? {
                None => Ok(None),
                Some(dst) => match self.policy.connect(normalize(dst)) {
                    Route::Host(t) => {
                        Ok(Some(encode(&to_family(t, info.v6())).as_bytes().to_vec()))
                    }
                    Route::Tap => {
                        self.stats.refused += 1;
                        Err(libc::ENETUNREACH)
                    }
                    Route::Refuse(e) => {
                        self.stats.refused += 1;
                        Err(e)
                    }
                },
            },
        }
    }

    /// After the first message of a sendmmsg went: send the others without waiting, each
    /// destination checked, until one fails; write each `msg_len`. Returns how many in all.
    fn send_rest(
        &mut self,
        li: usize,
        id: u64,
        sock: &OwnedFd,
        info: SockInfo,
        job: SendJob,
        first_len_at: u64,
    ) -> Result<i64, Fail> {
        let mut sent = 1;
        for (i, m) in job.rest.into_iter().enumerate() {
            let Ok(name) = self.checked_name(info, m.name) else {
                break;
            };
            let iov: Vec<IoSlice<'_>> = m.data.iter().map(|d| IoSlice::new(d)).collect();
            let r = socket::sendmsg_raw(
                sock.as_fd(),
                name.as_deref(),
                &iov,
                &m.control,
                job.flags | libc::MSG_DONTWAIT,
            );
            let Ok(k) = r else {
                break;
            };
            let at = first_len_at + (i as u64 + 1) * MMSGHDR_SIZE;
            self.write(li, job.tid, id, at, &(k as u32).to_ne_bytes())?;
            self.stats.sends += 1;
            sent += 1;
        }
        Ok(sent)
    }

    /// One non-blocking attempt; a blocking socket without room waits in [`Pending`]
    /// (`deadline`: `None` = the program's socket is non-blocking; `Some(None)` = no timeout).
    pub(super) fn try_send(
        &mut self,
        li: usize,
        id: u64,
        sock: OwnedFd,
        job: SendJob,
        deadline: Option<Option<Instant>>,
    ) -> Answer {
        let iov: Vec<IoSlice<'_>> = job.data.iter().map(|d| IoSlice::new(d)).collect();
        let r = socket::sendmsg_raw(
            sock.as_fd(),
            job.name.as_deref(),
            &iov,
            &job.control,
            job.flags | libc::MSG_DONTWAIT,
        );
        drop(iov);
        match r {
            Ok(k) => match job.mmsg_len_at {
                Some(at) => {
                    self.write(li, job.tid, id, at, &(k as u32).to_ne_bytes())?;
                    if job.rest.is_empty() {
                        return Ok(Some(Reply::Value(1)));
                    }
                    let info = job.info;
                    let n = self.send_rest(li, id, &sock, info, job, at)?;
                    Ok(Some(Reply::Value(n)))
                }
                None => Ok(Some(Reply::Value(k as i64))),
            },
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => match deadline {
                Some(d) => self.park(li, id, sock, d, Then::Send(job)),
                None => Ok(Some(Reply::Error(libc::EAGAIN))),
            },
            Err(e) => Ok(Some(Reply::Error(e.raw_os_error().unwrap_or(libc::EIO)))),
        }
    }
}
