//! The socketpair between a namespace child and the parent, and the child's life-and-death
//! plumbing.
//!
//! Theory of operation: one datagram from child to parent on an `AF_UNIX`/`SOCK_SEQPACKET`
//! socketpair: `b'K'` with the TAP's fd in `SCM_RIGHTS` and, for `-p auto`, the guest's
//! sock_diag socket after it (success, [`send_fd`]), or `b'E'`
//! followed by the UTF-8 error text (failure, [`send_error`]; the parent returns it as
//! [`NetnsError::Child`]). End of file without a datagram means the child died; the parent
//! reaps it ([`wait_child`]) and reports how it ended ([`describe`]). [`recv_reply`] is the
//! parent's side and rejects anything else (no fd, three fds, unknown tag, truncation). Run mode
//! adds `b'L'` + a listener's fd number for bypass mode ([`TAG_LISTENER`]). With `--threads N`
//! the TAP's other N-1 queues follow the TAP ([`recv_queues`]).
//!
//! Children call [`die_with_parent`] first (`PR_SET_PDEATHSIG(SIGKILL)`, then a `getppid`
//! check for a parent that died before it took effect) and end with [`exit_now`] (`_exit`).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::socket::{send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{getppid, Pid};

use super::{errno, setup_err, NetnsError};
use crate::sys::scm;

/// Largest error text a child sends back (bigger texts are cut).
pub(super) const MAX_REPLY: usize = 4096;
pub(super) const TAG_OK: u8 = b'K';
pub(super) const TAG_ERR: u8 = b'E';
/// Run child, bypass mode: "the listener is fd N" (4 bytes, native endian) follows.
pub(super) const TAG_LISTENER: u8 = b'L';

/// `_exit(2)`: no destructors, no atexit handlers, no stdio flushing of the parent's buffers.
pub(super) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and takes no pointers; it never returns.
    unsafe { libc::_exit(code) }
}

/// `PR_SET_PDEATHSIG(SIGKILL)`, then make sure the parent did not already die before it took
/// effect (we would have been reparented).
pub(super) fn die_with_parent(parent: Pid) -> Result<(), NetnsError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| setup_err("prctl(PR_SET_PDEATHSIG, SIGKILL)", errno(e)))?;
    if getppid() != parent {
        exit_now(1);
    }
    Ok(())
}

pub(super) fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), NetnsError> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| NetnsError::SocketPair(errno(e)))
}

/// Child side: send `TAG_OK` with `fd` (and `diag`, the sock_diag socket) attached.
pub(super) fn send_fd(
    sock: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    diag: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    match diag {
        Some(d) => scm::send_with_fds(sock, &[TAG_OK], &[fd, d]).map(drop),
        None => scm::send_with_fds(sock, &[TAG_OK], &[fd]).map(drop),
    }
}

/// Child side: send `TAG_ERR` and the error text (best effort: if the parent is gone there is
/// nobody to tell).
pub(super) fn send_error(sock: BorrowedFd<'_>, err: &NetnsError) {
    let text = err.to_string();
    let mut msg = Vec::with_capacity(text.len().min(MAX_REPLY) + 1);
    msg.push(TAG_ERR);
    // Cut at a char boundary so the parent always gets valid UTF-8.
    let mut cut = text.len().min(MAX_REPLY - 1);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    msg.extend_from_slice(text.get(..cut).unwrap_or("").as_bytes());
    loop {
        match send(sock.as_raw_fd(), &msg, MsgFlags::MSG_NOSIGNAL) {
            Err(Errno::EINTR) => continue,
            _ => return,
        }
    }
}

/// What the child sent.
pub(super) enum Reply {
    /// The TAP, and the sock_diag socket when one was asked for.
    Fd(OwnedFd, Option<OwnedFd>),
    Error(String),
    Eof,
}

/// Parent side: receive the child's one datagram.
pub(super) fn recv_reply(sock: &OwnedFd, pid: Pid) -> Result<Reply, NetnsError> {
    let mut buf = [0u8; MAX_REPLY];
    let mut fds = Vec::new();
    let got = loop {
        match scm::recv_with_fds(sock.as_fd(), &mut buf, &mut fds, false) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(NetnsError::Recv { pid, source }),
            Ok(got) => break got,
        }
    };
    if got.fds_truncated {
        return Err(NetnsError::BadReply {
            pid,
            reason: "control data truncated",
        });
    }
    let (len, truncated) = (got.bytes, got.truncated);
    let data = buf.get(..len).unwrap_or(&[]);
    match data.split_first() {
        None => Ok(Reply::Eof),
        Some((&TAG_OK, [])) if !truncated => {
            let mut fds = fds.into_iter();
            match (fds.next(), fds.next(), fds.next()) {
                (Some(fd), diag, None) => Ok(Reply::Fd(fd, diag)),
                (None, _, _) => Err(NetnsError::BadReply {
                    pid,
                    reason: "success without a file descriptor",
                }),
                (Some(_), _, Some(_)) => Err(NetnsError::BadReply {
                    pid,
                    reason: "more than two file descriptors",
                }),
            }
        }
        Some((&TAG_ERR, text)) => Ok(Reply::Error(String::from_utf8_lossy(text).into_owned())),
        Some(_) => Err(NetnsError::BadReply {
            pid,
            reason: "unknown message",
        }),
    }
}

/// Parent side, `--threads N`: the TAP's other `queues - 1` queue fds, which the child sends
/// right after the TAP the way it sends listeners (`L` batches, then `D`).
pub(super) fn recv_queues(
    sock: BorrowedFd<'_>,
    pid: Pid,
    queues: usize,
) -> Result<Vec<OwnedFd>, NetnsError> {
    if queues <= 1 {
        return Ok(Vec::new());
    }
    let fds = super::loopback::recv_listeners(sock, pid, queues - 1)?;
    if fds.len() != queues - 1 {
        return Err(NetnsError::BadReply {
            pid,
            reason: "wrong number of TAP queues",
        });
    }
    Ok(fds)
}

/// Reap `pid`, retrying on EINTR. `ECHILD` (someone else reaped it, or SIGCHLD is ignored)
/// is reported as `StillAlive`, meaning "unknown".
pub(super) fn wait_child(pid: Pid) -> Result<WaitStatus, NetnsError> {
    loop {
        match waitpid(pid, None) {
            Ok(status) => return Ok(status),
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => return Ok(WaitStatus::StillAlive),
            Err(e) => {
                return Err(NetnsError::Wait {
                    pid,
                    source: errno(e),
                })
            }
        }
    }
}

pub(super) fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("was killed by {sig}"),
        _ => "ended".to_owned(),
    }
}
