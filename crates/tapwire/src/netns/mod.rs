//! Namespace helpers: open (and configure) the TAP inside another network namespace, and the
//! `tapwire run` child that creates its own namespaces.
//!
//! Theory of operation: a process can only create a TAP in its *own* network namespace, and
//! joining a user namespace with `setns(2)` requires a single-threaded process. So, like
//! slirp4netns, we fork a short-lived child, let it enter (or create) the namespaces, open
//! `/dev/net/tun`, optionally configure the link ([`crate::link::netlink::configure`]), and pass
//! the fd back over an `AF_UNIX`/`SOCK_SEQPACKET` socketpair with `SCM_RIGHTS`. The parent never
//! changes namespace; the fd it receives keeps working across namespaces. The files:
//!
//! - [`channel`]: the socketpair's one-datagram protocol (`K` + fd, `E` + error text, EOF),
//!   reaping the child, and the child's `_exit`/parent-death plumbing;
//! - [`helper`]: daemon mode, [`open_tap`]: join a PID's or a path's namespaces;
//! - [`run`]: run mode, [`spawn_run`]/[`spawn_run_filtered`]: the child that makes new
//!   user+net+mount namespaces, waits for [`RunChild::start`] and execs the command;
//! - [`resolv`]: the run child's `/etc/resolv.conf` naming the DNS forwarder;
//! - [`idmap`]: `--map-auto`, the wider id maps the parent writes for the run child;
//! - [`loopback`]: `--forward-to-host`'s listeners on the guest's 127.0.0.1 and ::1, opened by
//!   either child and sent after the TAP.
//!
//! This file holds what they share: the daemon's [`Target`] and [`NetnsError`].
//!
//! Fork discipline: callers must fork before they start threads (the daemon does). Tests fork
//! from the threaded test harness, which is acceptable because the children only make syscalls
//! and then `_exit` or `exec`: every path, CString and argv array is prepared before `fork`, the
//! children never log, never use `std`'s stdout/stderr locks (exec errors go out with a raw
//! `write(2)`), and run under `catch_unwind` so a panic can never unwind into the caller's code.
//! The remaining allocations in the children are on error paths and in `nix::sendmsg`; glibc's
//! `fork` leaves malloc usable in the child.
//!
//! Syscalls (children): `prctl(PR_SET_PDEATHSIG)`, `getppid`, `setns`, `unshare`, `open`/`write`
//! on `/proc/self/{setgroups,uid_map,gid_map}`, `setresgid`, `setresuid`, `mount`, `umount2`,
//! `open_tree`, `move_mount`, TAP and netlink syscalls, `sendmsg`, `read`, `rt_sigprocmask`,
//! `rt_sigaction`, `execve`, `_exit`. Parent: `socketpair`, `fork`, `recvmsg`, `send`, `wait4`.
//
// No `unsafe` here; not `forbid(unsafe_code)` either, because a forbid would bind the child
// modules, whose fork and fd calls need `allow(unsafe_code)`.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::link::netlink::NetlinkError;
use crate::link::tap::TapError;

pub mod channel;
pub mod helper;
pub mod idmap;
pub mod loopback;
pub mod resolv;
pub mod run;

pub use helper::{open_tap, open_tap_with, TapFds};
pub use run::{spawn_run, spawn_run_filtered, RunChild, RunOptions, Supervised};

/// Which network namespace the daemon attaches to (its positional argument).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `--netns-type=pid` (default): /proc/PID/ns/{user,net}.
    Pid(i32),
    /// `--netns-type=path`: a netns file (e.g. /run/netns/x or /proc/N/ns/net).
    Path(PathBuf),
}

/// Errors from entering namespaces, opening the TAP there and running the `tapwire run` child.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// `Target::Pid` with a PID <= 0.
    #[error("invalid target PID {0}: PID must be a positive integer")]
    InvalidPid(i32),
    /// A namespace file could not be opened (no such process, no permission, bad path).
    #[error("open {kind} {}: {source}", path.display())]
    OpenNs {
        kind: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// `stat`/`fstat` of a namespace file failed.
    #[error("stat {}: {source}", path.display())]
    Stat { path: PathBuf, source: io::Error },
    /// `setns(2)` was refused (in the child).
    #[error("setns into {kind} {}: {source}", path.display())]
    Setns {
        kind: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// Opening the TAP failed (in the child).
    #[error(transparent)]
    Tap(#[from] TapError),
    /// Configuring the TAP failed (in the child).
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// A setup step of the `tapwire run` child failed.
    #[error("{step}: {source}")]
    Setup { step: String, source: io::Error },
    /// `/etc/resolv.conf` cannot be replaced.
    #[error("cannot override /etc/resolv.conf: {0}")]
    ResolvConf(String),
    /// A command-line argument for `tapwire run` cannot be passed to `execvp`.
    #[error("invalid command argument {0:?}: contains a NUL byte")]
    InvalidArg(OsString),
    /// `socketpair(2)` failed.
    #[error("socketpair for the namespace helper: {0}")]
    SocketPair(#[source] io::Error),
    /// `fork(2)` failed.
    #[error("fork the namespace helper: {0}")]
    Fork(#[source] io::Error),
    /// The child reported an error; the text is the child's own error message.
    #[error("{message}")]
    Child { pid: Pid, message: String },
    /// The child ended without sending a reply.
    #[error("namespace helper (pid {pid}) {how} before replying")]
    ChildDied { pid: Pid, how: String },
    /// `recvmsg` on the socketpair failed.
    #[error("receive from the namespace helper (pid {pid}): {source}")]
    Recv { pid: Pid, source: io::Error },
    /// The child's reply did not follow the protocol.
    #[error("namespace helper (pid {pid}) sent a malformed reply: {reason}")]
    BadReply { pid: Pid, reason: &'static str },
    /// `waitpid` on the helper failed.
    #[error("wait for the namespace helper (pid {pid}): {source}")]
    Wait { pid: Pid, source: io::Error },
    /// [`RunChild::start`] could not signal the child.
    #[error("start the command (pid {pid}): {source}")]
    Start { pid: Pid, source: io::Error },
    /// [`RunChild::start`] was called twice.
    #[error("the command (pid {pid}) was already started")]
    AlreadyStarted { pid: Pid },
}

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn setup_err(step: impl Into<String>, e: impl Into<io::Error>) -> NetnsError {
    NetnsError::Setup {
        step: step.into(),
        source: e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::Ipv4Addr;

    use tapwire_proto::config::IfConfig;

    #[test]
    fn bad_tap_name_is_rejected_before_forking() {
        let err = open_tap(&Target::Pid(1), None, "much-too-long-name", None).unwrap_err();
        assert!(matches!(err, NetnsError::Tap(TapError::InvalidName { .. })));
        let cfg = IfConfig::from_net(&tapwire_proto::config::NetConfig::default());
        let err = spawn_run(&[], "", &cfg, Ipv4Addr::new(10, 0, 2, 3)).unwrap_err();
        assert!(matches!(err, NetnsError::Tap(TapError::InvalidName { .. })));
    }
}
