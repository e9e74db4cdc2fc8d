//! Passing file descriptors over UNIX sockets (`SCM_RIGHTS`).
//!
//! # Theory of operation
//! A descriptor travels as ancillary data of one `sendmsg`/`recvmsg`; it must ride with at
//! least one byte of data. [`send_with_fds`] sends bytes plus descriptors (with
//! `MSG_NOSIGNAL`, retrying `EINTR`: a peer that went away is an `EPIPE` error, not a
//! signal). [`recv_with_fds`] receives one message and its descriptors, which the kernel
//! installs close-on-exec (`MSG_CMSG_CLOEXEC`) and which become [`OwnedFd`]s at once, so none
//! can leak. It reports truncation ([`Received::truncated`]: the data did not fit, for a
//! datagram or seqpacket socket; [`Received::fds_truncated`]: more descriptors came than
//! [`MAX_FDS`], the kernel closed the rest) and leaves `EINTR` and `EAGAIN` to the caller, who
//! knows whether to wait. Used by the OCI runtimes' socket (the bypass supervisor receives the
//! container's seccomp listener) and fits the namespace helper's one-fd replies.
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// Most descriptors one [`recv_with_fds`] takes.
pub const MAX_FDS: usize = 8;

/// What one [`recv_with_fds`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes of data (0 on a stream: end of file).
    pub bytes: usize,
    /// `MSG_TRUNC`: the message was longer than the buffer (datagram/seqpacket sockets).
    pub truncated: bool,
    /// `MSG_CTRUNC`: the control data did not fit; no descriptor was taken.
    pub fds_truncated: bool,
}

/// One `recvmsg`: data into `buf`, up to [`MAX_FDS`] SCM_RIGHTS descriptors appended to `fds`
/// (close-on-exec). `nonblocking`: `MSG_DONTWAIT`.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    nonblocking: bool,
) -> io::Result<Received> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
    if nonblocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), flags)
        .map_err(io::Error::from)?;
    let cmsgs = msg.cmsgs();
    let fds_truncated = cmsgs.is_err();
    if let Ok(cmsgs) = cmsgs {
        for cm in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = cm {
                for fd in raw {
                    // SAFETY: the kernel just installed this fd in our table for this message
                    // (SCM_RIGHTS); nothing else refers to it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
    }
    Ok(Received {
        bytes: msg.bytes,
        truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
        fds_truncated,
    })
}

/// One `sendmsg` of `data` (at least one byte, for the descriptors to ride on) with `fds` as
/// SCM_RIGHTS (none: a plain send; at most [`MAX_FDS`]). `MSG_NOSIGNAL`; `EINTR` is retried.
/// Allocates nothing, so a forked child may call it.
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    // No allocation: the namespace helper calls this in a forked child.
    let mut raw = [0 as RawFd; MAX_FDS];
    let raw = raw
        .get_mut(..fds.len())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    for (slot, fd) in raw.iter_mut().zip(fds) {
        *slot = fd.as_raw_fd();
    }
    let cmsg = [ControlMessage::ScmRights(raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    let iov = [IoSlice::new(data)];
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(n) => return Ok(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn fds_round_trip() {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (r, _w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        assert_eq!(send_with_fds(a.as_fd(), b"x", &[r.as_fd()]).unwrap(), 1);
        let mut buf = [0u8; 4];
        let mut fds = Vec::new();
        let got = recv_with_fds(b.as_fd(), &mut buf, &mut fds, true).unwrap();
        assert_eq!(
            got,
            Received {
                bytes: 1,
                truncated: false,
                fds_truncated: false
            }
        );
        assert_eq!((buf[0], fds.len()), (b'x', 1));
        let e = recv_with_fds(b.as_fd(), &mut buf, &mut fds, true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }
}
