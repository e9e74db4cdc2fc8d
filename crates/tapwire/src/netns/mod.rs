//! Namespace helpers: open (and configure) the TAP inside another network namespace, and the
//! `tapwire run` child that creates its own namespaces.
//!
//! Theory of operation:
//! - A process can only create a TAP in its *own* network namespace, and joining a user
//!   namespace with `setns(2)` requires a single-threaded process. So, like slirp4netns, we
//!   fork a short-lived child, let it enter the namespaces, open `/dev/net/tun`, optionally
//!   configure the link (`-c`, [`crate::link::netlink::configure`]), and pass the fd back over an
//!   `AF_UNIX`/`SOCK_SEQPACKET` socketpair with `SCM_RIGHTS`. The parent never changes
//!   namespace; the fd it receives keeps working across namespaces.
//! - Wire protocol on the socketpair, one datagram from child to parent:
//!   `b'K'` with exactly one fd in `SCM_RIGHTS` (success), or `b'E'` followed by the UTF-8
//!   error text (failure; the parent returns it as [`NetnsError::Child`]). End of file without
//!   a datagram means the child died; the parent reaps it and reports how it ended.
//! - [`open_tap`] (daemon mode): the namespace files are opened *in the parent*, before the
//!   fork, so a bad PID or path gives an error naming the file, and the child only has to
//!   `setns()` by fd. The user namespace is skipped when it is already ours (same st_dev and
//!   st_ino as `/proc/self/ns/user`), because `setns()` into one's own user namespace fails.
//!   The child exits right after sending; the parent waits for it.
//! - [`spawn_run`] (`tapwire run -- CMD`): the child unshares user+net+mount namespaces,
//!   maps root to the caller's euid/egid, makes `/` recursively private, opens and configures
//!   the TAP, mounts a resolv.conf naming the DNS forwarder over `/etc/resolv.conf`, and sends
//!   the TAP fd. It then blocks on the socketpair until [`RunChild::start`] writes one byte
//!   (EOF = the parent died or dropped the [`RunChild`] -> `_exit(1)`) and finally `execvp`s the
//!   command. The child has `PR_SET_PDEATHSIG(SIGKILL)`, which survives the exec, so the command
//!   dies with tapwire (note: "parent" is the forking *thread*).
//! - Bypass mode ([`spawn_run_filtered`]): after the go byte the child also sets
//!   no_new_privs and installs the seccomp filter (nothing trapped happens after that but the
//!   exec), answers `b'L'` + the listener's fd number (a plain `send`, which the filter lets
//!   through), waits for a one-byte ack while the parent takes the listener with
//!   `pidfd_getfd`, closes its copy and execs.
//! - resolv.conf: a bind mount needs a source inside our mount namespace (a memfd is not, and
//!   the kernel refuses it), so a small tmpfs is mounted on a staging directory (`/tmp`, else
//!   `/run`, `/mnt`, `/var/tmp`), the file is written there and bind-mounted over
//!   `/etc/resolv.conf` (following a symlink to its target), and the staging tmpfs is detached
//!   again; the bind mount keeps its file alive. If `/etc/resolv.conf` is a dangling symlink,
//!   the file is mounted over the symlink itself with `open_tree(2)` + `move_mount(2)`
//!   (Linux >= 5.2). If it does not exist at all, setup fails with a message saying so.
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
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, OsString};
use std::io::{self, IoSlice, IoSliceMut, Write as _};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::socket::{
    recvmsg, send, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned,
    MsgFlags, SockFlag, SockType,
};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, getpid, getppid, ForkResult, Gid, Pid, Uid};

use crate::link::netlink::{self, NetlinkError};
use crate::link::tap::{self, Tap, TapError};
use tapwire_proto::config::IfConfig;

/// Which network namespace the daemon attaches to (its positional argument).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `--netns-type=pid` (default): /proc/PID/ns/{user,net}.
    Pid(i32),
    /// `--netns-type=path`: a netns file (e.g. /run/netns/x or /proc/N/ns/net).
    Path(PathBuf),
}

/// Largest error text a child sends back (bigger texts are cut).
const MAX_REPLY: usize = 4096;
const TAG_OK: u8 = b'K';
const TAG_ERR: u8 = b'E';
/// Run child, bypass mode: "the listener is fd N" (4 bytes, native endian) follows.
const TAG_LISTENER: u8 = b'L';
const RESOLV_CONF: &str = "/etc/resolv.conf";

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

/// A namespace file opened by the parent, with its path for error messages.
struct NsFile {
    fd: OwnedFd,
    path: PathBuf,
}

fn open_ns(kind: &'static str, path: &Path) -> Result<NsFile, NetnsError> {
    let file = std::fs::File::open(path).map_err(|source| NetnsError::OpenNs {
        kind,
        path: path.to_owned(),
        source,
    })?;
    Ok(NsFile {
        fd: OwnedFd::from(file),
        path: path.to_owned(),
    })
}

/// Whether the namespace behind `ns` is the one `/proc/self/ns/<name>` refers to.
fn is_own_ns(ns: &NsFile, own: &str) -> Result<bool, NetnsError> {
    let theirs = nix::sys::stat::fstat(&ns.fd).map_err(|e| NetnsError::Stat {
        path: ns.path.clone(),
        source: errno(e),
    })?;
    let ours = nix::sys::stat::stat(own).map_err(|e| NetnsError::Stat {
        path: PathBuf::from(own),
        source: errno(e),
    })?;
    Ok(theirs.st_dev == ours.st_dev && theirs.st_ino == ours.st_ino)
}

/// Forks a helper (the caller must still be single-threaded) that joins the target's user
/// namespace, then its network namespace, opens TAP `tapname`, runs
/// [`netlink::configure`] when `cfg` is `Some`, and passes the fd back.
///
/// User namespace: `userns_path` if `Some`; otherwise, for [`Target::Pid`],
/// `/proc/PID/ns/user`; for [`Target::Path`], none. It is skipped when it is the caller's own.
/// Network namespace: `/proc/PID/ns/net` or the path.
///
/// Errors from the helper come back as [`NetnsError::Child`] with the helper's message, e.g.
/// `setns into user namespace /proc/42/ns/user: Operation not permitted`.
pub fn open_tap(
    target: &Target,
    userns_path: Option<&Path>,
    tapname: &str,
    cfg: Option<&IfConfig>,
) -> Result<OwnedFd, NetnsError> {
    tap::check_name(tapname)?;
    let (net_path, user_path) = match target {
        Target::Pid(pid) => {
            if *pid <= 0 {
                return Err(NetnsError::InvalidPid(*pid));
            }
            let user = userns_path
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(format!("/proc/{pid}/ns/user")));
            (PathBuf::from(format!("/proc/{pid}/ns/net")), Some(user))
        }
        Target::Path(path) => (path.clone(), userns_path.map(Path::to_path_buf)),
    };
    let user = match user_path {
        Some(path) => {
            let ns = open_ns("user namespace", &path)?;
            if is_own_ns(&ns, "/proc/self/ns/user")? {
                None
            } else {
                Some(ns)
            }
        }
        None => None,
    };
    let net = open_ns("network namespace", &net_path)?;

    let (parent_sock, child_sock) = seqpacket_pair()?;
    let parent_pid = getpid();
    // SAFETY: the child branch only makes syscalls on values prepared before the fork
    // (namespace fds, the socket, the name and config) and always ends in `_exit`
    // (helper_main returns `!`), never returning into the caller's code; it takes no locks
    // that another thread of the parent could hold (no logging, no std stdio).
    match unsafe { fork() } {
        Err(e) => Err(NetnsError::Fork(errno(e))),
        Ok(ForkResult::Child) => {
            drop(parent_sock);
            helper_main(&child_sock, parent_pid, user.as_ref(), &net, tapname, cfg)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(child_sock);
            let reply = recv_reply(&parent_sock, child);
            let status = wait_child(child);
            match reply? {
                Reply::Fd(fd) => Ok(fd),
                Reply::Error(message) => Err(NetnsError::Child {
                    pid: child,
                    message,
                }),
                Reply::Eof => Err(NetnsError::ChildDied {
                    pid: child,
                    how: describe(status?),
                }),
            }
        }
    }
}

/// Body of the [`open_tap`] helper child. Never returns.
fn helper_main(
    sock: &OwnedFd,
    parent: Pid,
    user: Option<&NsFile>,
    net: &NsFile,
    tapname: &str,
    cfg: Option<&IfConfig>,
) -> ! {
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<Tap, NetnsError> {
        die_with_parent(parent)?;
        if let Some(ns) = user {
            setns(&ns.fd, CloneFlags::CLONE_NEWUSER).map_err(|e| NetnsError::Setns {
                kind: "user namespace",
                path: ns.path.clone(),
                source: errno(e),
            })?;
        }
        setns(&net.fd, CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Setns {
            kind: "network namespace",
            path: net.path.clone(),
            source: errno(e),
        })?;
        let tap = Tap::open(tapname)?;
        if let Some(cfg) = cfg {
            netlink::configure(tapname, cfg)?;
        }
        Ok(tap)
    }));
    let code = match result {
        Ok(Ok(tap)) => match send_fd(sock.as_fd(), tap.as_fd()) {
            Ok(()) => 0,
            Err(_) => 1,
        },
        Ok(Err(e)) => {
            send_error(sock.as_fd(), &e);
            1
        }
        Err(_) => 1,
    };
    exit_now(code)
}

/// `_exit(2)`: no destructors, no atexit handlers, no stdio flushing of the parent's buffers.
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and takes no pointers; it never returns.
    unsafe { libc::_exit(code) }
}

/// `PR_SET_PDEATHSIG(SIGKILL)`, then make sure the parent did not already die before it took
/// effect (we would have been reparented).
fn die_with_parent(parent: Pid) -> Result<(), NetnsError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| setup_err("prctl(PR_SET_PDEATHSIG, SIGKILL)", errno(e)))?;
    if getppid() != parent {
        exit_now(1);
    }
    Ok(())
}

fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), NetnsError> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| NetnsError::SocketPair(errno(e)))
}

/// Child side: send `TAG_OK` with `fd` attached.
fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(&[TAG_OK])];
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
            Ok(_) => return Ok(()),
        }
    }
}

/// Child side: send `TAG_ERR` and the error text (best effort: if the parent is gone there is
/// nobody to tell).
fn send_error(sock: BorrowedFd<'_>, err: &NetnsError) {
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
enum Reply {
    Fd(OwnedFd),
    Error(String),
    Eof,
}

/// Parent side: receive the child's one datagram.
fn recv_reply(sock: &OwnedFd, pid: Pid) -> Result<Reply, NetnsError> {
    let mut buf = [0u8; MAX_REPLY];
    let mut cmsg_buf = nix::cmsg_space!([RawFd; 1]);
    let (len, fds, truncated) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_buf),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            Err(e) => {
                return Err(NetnsError::Recv {
                    pid,
                    source: errno(e),
                })
            }
            Ok(msg) => {
                let mut fds = Vec::new();
                let cmsgs = msg.cmsgs().map_err(|_| NetnsError::BadReply {
                    pid,
                    reason: "control data truncated",
                })?;
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        for r in raw {
                            // SAFETY: the kernel just installed this fd in our table for
                            // this message (SCM_RIGHTS); nothing else refers to it.
                            fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                        }
                    }
                }
                break (msg.bytes, fds, msg.flags.contains(MsgFlags::MSG_TRUNC));
            }
        }
    };
    let data = buf.get(..len).unwrap_or(&[]);
    match data.split_first() {
        None => Ok(Reply::Eof),
        Some((&TAG_OK, [])) if !truncated => {
            let mut fds = fds.into_iter();
            match (fds.next(), fds.next()) {
                (Some(fd), None) => Ok(Reply::Fd(fd)),
                (None, _) => Err(NetnsError::BadReply {
                    pid,
                    reason: "success without a file descriptor",
                }),
                (Some(_), Some(_)) => Err(NetnsError::BadReply {
                    pid,
                    reason: "more than one file descriptor",
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

/// Reap `pid`, retrying on EINTR. `ECHILD` (someone else reaped it, or SIGCHLD is ignored)
/// is reported as `StillAlive`, meaning "unknown".
fn wait_child(pid: Pid) -> Result<WaitStatus, NetnsError> {
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

fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("was killed by {sig}"),
        _ => "ended".to_owned(),
    }
}

/// The `tapwire run` child, set up and waiting for [`RunChild::start`].
///
/// Dropping it without calling `start` makes the child exit with status 1. The caller reaps
/// the child (`waitpid(pid)`).
#[derive(Debug)]
pub struct RunChild {
    /// The child; after `start` this is the command's PID.
    pub pid: Pid,
    /// The TAP fd inside the child's network namespace, configured with the `IfConfig`.
    pub tap: OwnedFd,
    /// Our end of the socketpair; writing one byte lets the child exec.
    go: Option<OwnedFd>,
}

impl RunChild {
    /// Let the child `execvp` the command. Fails if the child is gone.
    pub fn start(&mut self) -> Result<(), NetnsError> {
        let pid = self.pid;
        let go = self.go.take().ok_or(NetnsError::AlreadyStarted { pid })?;
        loop {
            match send(go.as_raw_fd(), &[1], MsgFlags::MSG_NOSIGNAL) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    return Err(NetnsError::Start {
                        pid,
                        source: errno(e),
                    })
                }
            }
        }
    }

    /// Bypass mode ([`spawn_run_filtered`] with a filter): let the child install its seccomp
    /// filter and take the listener from it (`pidfd_getfd`); the child then execs the command.
    pub fn start_with_listener(&mut self) -> Result<OwnedFd, NetnsError> {
        let pid = self.pid;
        let go = self.go.take().ok_or(NetnsError::AlreadyStarted { pid })?;
        let start_err = |e: io::Error| NetnsError::Start { pid, source: e };
        loop {
            match send(go.as_raw_fd(), &[1], MsgFlags::MSG_NOSIGNAL) {
                Ok(_) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(start_err(errno(e))),
            }
        }
        let mut buf = [0u8; MAX_REPLY];
        let n = loop {
            match nix::sys::socket::recv(go.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => break n,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    return Err(NetnsError::Recv {
                        pid,
                        source: errno(e),
                    })
                }
            }
        };
        let fd_num = match buf.get(..n).unwrap_or(&[]) {
            [TAG_LISTENER, a, b, c, d] => RawFd::from_ne_bytes([*a, *b, *c, *d]),
            [TAG_ERR, text @ ..] => {
                return Err(NetnsError::Child {
                    pid,
                    message: String::from_utf8_lossy(text).into_owned(),
                })
            }
            [] => {
                return Err(NetnsError::ChildDied {
                    pid,
                    how: describe(wait_child(pid)?),
                })
            }
            _ => {
                return Err(NetnsError::BadReply {
                    pid,
                    reason: "expected the seccomp listener",
                })
            }
        };
        let pidfd = crate::bypass::seccomp::pidfd_open_child(pid.as_raw()).map_err(start_err)?;
        let listener =
            crate::bypass::seccomp::pidfd_getfd(pidfd.as_fd(), fd_num).map_err(start_err)?;
        loop {
            match send(go.as_raw_fd(), &[1], MsgFlags::MSG_NOSIGNAL) {
                Ok(_) => return Ok(listener),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(start_err(errno(e))),
            }
        }
    }
}

/// Everything the run child needs, prepared before `fork`.
struct RunPrep<'a> {
    /// Owns the strings `argv_ptrs` points into.
    _argv: Vec<CString>,
    /// NULL-terminated, non-empty (the first entry is the program).
    argv_ptrs: Vec<*const libc::c_char>,
    /// "tapwire run: CMD: ".
    exec_err_prefix: Vec<u8>,
    uid_map: String,
    gid_map: String,
    resolv: String,
    tapname: &'a str,
    cfg: &'a IfConfig,
    /// Bypass mode: the seccomp filter to install right before exec.
    filter: Option<&'a crate::bypass::seccomp::Program>,
}

/// Run mode (`tapwire run -- CMD`): fork a child in new user, network and mount namespaces
/// with TAP `tapname` configured by `cfg` and `nameserver {dns}` in `/etc/resolv.conf`. The
/// child waits for [`RunChild::start`] and then execs `command` (empty: `$SHELL` or `/bin/sh`).
/// If the exec fails the child prints `tapwire run: CMD: error` and exits with 127.
pub fn spawn_run(
    command: &[OsString],
    tapname: &str,
    cfg: &IfConfig,
    dns: Ipv4Addr,
) -> Result<RunChild, NetnsError> {
    spawn_run_filtered(command, tapname, cfg, dns, None)
}

/// [`spawn_run`] for bypass mode: with `filter`, the child sets no_new_privs and installs the
/// seccomp filter after everything else and right before `execvp`, and hands the listener to
/// [`RunChild::start_with_listener`] before it makes any trapped call: it writes the
/// listener's fd number (a plain `send` without an address, which the filter lets through),
/// the parent takes the fd with `pidfd_getfd` and acknowledges with one byte, and the child
/// closes its copy and execs.
pub fn spawn_run_filtered(
    command: &[OsString],
    tapname: &str,
    cfg: &IfConfig,
    dns: Ipv4Addr,
    filter: Option<&crate::bypass::seccomp::Program>,
) -> Result<RunChild, NetnsError> {
    tap::check_name(tapname)?;
    let shell;
    let command: &[OsString] = if command.is_empty() {
        shell = [std::env::var_os("SHELL")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| OsString::from("/bin/sh"))];
        &shell
    } else {
        command
    };
    let argv = command
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| NetnsError::InvalidArg(a.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let program = argv
        .first()
        .map(|a| a.to_string_lossy())
        .unwrap_or_default();
    let prep = RunPrep {
        exec_err_prefix: format!("tapwire run: {program}: ").into_bytes(),
        _argv: argv,
        argv_ptrs,
        uid_map: format!("0 {} 1\n", Uid::effective()),
        gid_map: format!("0 {} 1\n", Gid::effective()),
        resolv: format!("nameserver {dns}\n"),
        tapname,
        cfg,
        filter,
    };

    let (parent_sock, child_sock) = seqpacket_pair()?;
    let parent_pid = getpid();
    // SAFETY: the child branch only makes syscalls on values prepared before the fork
    // (`prep`, the socket) and always ends in `_exit` or `execvp` (run_main returns `!`),
    // never returning into the caller's code; it takes no locks another thread of the parent
    // could hold (no logging, no std stdio).
    match unsafe { fork() } {
        Err(e) => Err(NetnsError::Fork(errno(e))),
        Ok(ForkResult::Child) => {
            drop(parent_sock);
            run_main(child_sock, parent_pid, &prep)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(child_sock);
            let reply = match recv_reply(&parent_sock, child) {
                Ok(Reply::Fd(tap)) => {
                    return Ok(RunChild {
                        pid: child,
                        tap,
                        go: Some(parent_sock),
                    })
                }
                other => other,
            };
            // Failure: the child exits on its own; reap it.
            drop(parent_sock);
            let status = wait_child(child);
            match reply? {
                Reply::Error(message) => Err(NetnsError::Child {
                    pid: child,
                    message,
                }),
                Reply::Eof | Reply::Fd(_) => Err(NetnsError::ChildDied {
                    pid: child,
                    how: describe(status?),
                }),
            }
        }
    }
}

/// Body of the run child. Never returns.
fn run_main(sock: OwnedFd, parent: Pid, prep: &RunPrep<'_>) -> ! {
    let tap = match catch_unwind(AssertUnwindSafe(|| run_setup(parent, prep))) {
        Ok(Ok(tap)) => tap,
        Ok(Err(e)) => {
            send_error(sock.as_fd(), &e);
            exit_now(1)
        }
        Err(_) => exit_now(1),
    };
    if send_fd(sock.as_fd(), tap.as_fd()).is_err() {
        exit_now(1);
    }
    drop(tap);
    // Block until the parent says go (one byte) or goes away (EOF/error).
    let mut go = [0u8; 1];
    loop {
        match nix::unistd::read(&sock, &mut go) {
            Ok(1) => break,
            Err(Errno::EINTR) => continue,
            _ => exit_now(1),
        }
    }
    reset_signals();
    if let Some(filter) = prep.filter {
        hand_over_listener(&sock, filter);
    }
    drop(sock);
    exec(prep)
}

/// Run child, bypass mode: install the filter and give the parent the listener (see
/// [`spawn_run_filtered`]). Exits on any failure: the command must not run unsupervised.
fn hand_over_listener(sock: &OwnedFd, filter: &crate::bypass::seccomp::Program) {
    let listener = match crate::bypass::seccomp::install_listener(filter) {
        Ok(fd) => fd,
        Err(e) => {
            send_error(
                sock.as_fd(),
                &setup_err("install the seccomp filter (bypass mode)", e),
            );
            exit_now(1)
        }
    };
    let n = listener.to_ne_bytes();
    let msg = [TAG_LISTENER, n[0], n[1], n[2], n[3]];
    loop {
        match send(sock.as_raw_fd(), &msg, MsgFlags::MSG_NOSIGNAL) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(_) => exit_now(1),
        }
    }
    let mut ack = [0u8; 1];
    loop {
        match nix::unistd::read(sock, &mut ack) {
            Ok(1) => break,
            Err(Errno::EINTR) => continue,
            _ => exit_now(1),
        }
    }
    // SAFETY: `listener` is the fd seccomp() just returned to us; nothing else in this process
    // refers to it, and the parent holds its own copy now.
    unsafe { libc::close(listener) };
}

fn run_setup(parent: Pid, prep: &RunPrep<'_>) -> Result<Tap, NetnsError> {
    die_with_parent(parent)?;
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS)
        .map_err(|e| setup_err("unshare(CLONE_NEWUSER|CLONE_NEWNET|CLONE_NEWNS)", e))?;
    match write_proc("/proc/self/setgroups", b"deny") {
        // Kernels before 3.19 have no setgroups file and need no "deny".
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        other => other.map_err(|e| setup_err("write \"deny\" to /proc/self/setgroups", e))?,
    }
    write_proc("/proc/self/uid_map", prep.uid_map.as_bytes()).map_err(|e| {
        setup_err(
            format!("write {:?} to /proc/self/uid_map", prep.uid_map.trim_end()),
            e,
        )
    })?;
    write_proc("/proc/self/gid_map", prep.gid_map.as_bytes()).map_err(|e| {
        setup_err(
            format!("write {:?} to /proc/self/gid_map", prep.gid_map.trim_end()),
            e,
        )
    })?;
    let root_g = Gid::from_raw(0);
    nix::unistd::setresgid(root_g, root_g, root_g)
        .map_err(|e| setup_err("setresgid(0, 0, 0) in the new user namespace", e))?;
    let root_u = Uid::from_raw(0);
    nix::unistd::setresuid(root_u, root_u, root_u)
        .map_err(|e| setup_err("setresuid(0, 0, 0) in the new user namespace", e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| setup_err("make / recursively private (mount MS_REC|MS_PRIVATE)", e))?;

    let tap = Tap::open(prep.tapname)?;
    netlink::configure(prep.tapname, prep.cfg)?;
    override_resolv_conf(prep.resolv.as_bytes())?;
    Ok(tap)
}

/// One `write(2)` of `data` (the id-map files require the whole map in a single write).
fn write_proc(path: &str, data: &[u8]) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    let n = f.write(data)?;
    if n != data.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
    }
    Ok(())
}

/// Staging directories for the resolv.conf tmpfs, tried in order, with the file path in each.
const STAGING: [(&str, &CStr); 4] = [
    ("/tmp", c"/tmp/resolv.conf"),
    ("/run", c"/run/resolv.conf"),
    ("/mnt", c"/mnt/resolv.conf"),
    ("/var/tmp", c"/var/tmp/resolv.conf"),
];

/// Mount a file containing `content` over `/etc/resolv.conf` (in our private mount namespace).
fn override_resolv_conf(content: &[u8]) -> Result<(), NetnsError> {
    let mut last = Errno::ENOENT;
    let mut staged = None;
    for (dir, file) in STAGING {
        match mount(
            Some("tapwire"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=64k,mode=0755"),
        ) {
            Ok(()) => {
                staged = Some((dir, file));
                break;
            }
            Err(e) => last = e,
        }
    }
    let Some((dir, file)) = staged else {
        return Err(setup_err(
            "mount a tmpfs to stage resolv.conf (tried /tmp, /run, /mnt, /var/tmp)",
            last,
        ));
    };
    let result = stage_and_mount(file, content);
    // The bind mount keeps the tmpfs alive; the staging mount point goes back to normal.
    let _ = umount2(dir, MntFlags::MNT_DETACH);
    result
}

fn stage_and_mount(file: &CStr, content: &[u8]) -> Result<(), NetnsError> {
    let file_path = Path::new(std::ffi::OsStr::from_bytes(file.to_bytes()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(file_path)
        .map_err(|e| setup_err(format!("create {}", file_path.display()), e))?;
    f.write_all(content)
        .map_err(|e| setup_err(format!("write {}", file_path.display()), e))?;
    drop(f);

    match std::fs::metadata(RESOLV_CONF) {
        // Exists (possibly through a symlink, whose target then gets covered).
        Ok(_) => mount(
            Some(file_path),
            RESOLV_CONF,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| {
            NetnsError::ResolvConf(format!(
                "bind-mount {} over it: {}",
                file_path.display(),
                errno(e)
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match std::fs::read_link(RESOLV_CONF) {
            Ok(target) => mount_over_symlink(file).map_err(|e| {
                NetnsError::ResolvConf(format!(
                    "it is a dangling symlink to {} and mounting over the symlink failed: {e}",
                    target.display()
                ))
            }),
            Err(_) => Err(NetnsError::ResolvConf(
                "it does not exist, so there is nothing to mount the DNS configuration \
                     over (create /etc/resolv.conf on the host, any content)"
                    .to_owned(),
            )),
        },
        Err(e) => Err(setup_err(format!("stat {RESOLV_CONF}"), e)),
    }
}

/// Mount `file` over the symlink `/etc/resolv.conf` itself (not its target) with the new mount
/// API: `open_tree(OPEN_TREE_CLONE)` makes a detached bind mount of the file and `move_mount`
/// without `MOVE_MOUNT_T_SYMLINKS` attaches it without following the final symlink.
fn mount_over_symlink(file: &CStr) -> io::Result<()> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    // SAFETY: `file` is a NUL-terminated string alive across the call; open_tree takes
    // (dirfd, path, flags) and returns a new fd or -1.
    let raw = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            file.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    let raw = RawFd::try_from(raw).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: open_tree just returned this fd (checked >= 0) and nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: both paths are NUL-terminated static strings; `tree` is an open fd for the
    // duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c"/etc/resolv.conf".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Undo what the parent's signal state would impose on the command: an empty signal mask and
/// the default SIGPIPE action (the Rust runtime ignores SIGPIPE; `std::process::Command`
/// resets it the same way). Handlers themselves are reset by `execve`.
fn reset_signals() {
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    // SAFETY: installing SIG_DFL registers no Rust code as a handler; we are single-threaded
    // and about to exec.
    let _ = unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// `execvp` the prepared command; on failure print `tapwire run: CMD: error` with a raw
/// `write(2)` and `_exit(127)`.
fn exec(prep: &RunPrep<'_>) -> ! {
    let program = prep.argv_ptrs.first().copied().unwrap_or(std::ptr::null());
    // SAFETY: `argv_ptrs` is a NULL-terminated array of pointers into the NUL-terminated
    // CStrings owned by `prep._argv`, all alive for the call; execvp only returns on failure.
    unsafe { libc::execvp(program, prep.argv_ptrs.as_ptr()) };
    let desc = Errno::last().desc();
    let mut out = [0u8; 1024];
    let mut len = 0;
    for part in [&prep.exec_err_prefix[..], desc.as_bytes(), b"\n"] {
        for &b in part {
            if let Some(slot) = out.get_mut(len) {
                *slot = b;
                len += 1;
            }
        }
    }
    let msg = out.get(..len).unwrap_or(&[]);
    // SAFETY: `msg` is valid for reads of `msg.len()` bytes; fd 2 may be closed, in which
    // case write fails harmlessly.
    let _ = unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    exit_now(127)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pid_is_rejected_before_forking() {
        let err = open_tap(&Target::Pid(0), None, "tap0", None).unwrap_err();
        assert!(matches!(err, NetnsError::InvalidPid(0)));
        assert!(err.to_string().contains("positive integer"));
    }

    #[test]
    fn missing_namespace_names_the_path() {
        let err = open_tap(&Target::Pid(999_999_999), None, "tap0", None).unwrap_err();
        let s = err.to_string();
        assert!(s.contains("/proc/999999999/ns/"), "{s}");
        assert!(s.contains("No such file or directory"), "{s}");
        let err = open_tap(
            &Target::Path(PathBuf::from("/nonexistent/netns")),
            None,
            "tap0",
            None,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "open network namespace /nonexistent/netns: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn bad_tap_name_is_rejected_before_forking() {
        let err = open_tap(&Target::Pid(1), None, "much-too-long-name", None).unwrap_err();
        assert!(matches!(err, NetnsError::Tap(TapError::InvalidName { .. })));
        let cfg = IfConfig::from_net(&tapwire_proto::config::NetConfig::default());
        let err = spawn_run(&[], "", &cfg, Ipv4Addr::new(10, 0, 2, 3)).unwrap_err();
        assert!(matches!(err, NetnsError::Tap(TapError::InvalidName { .. })));
    }

    #[test]
    fn nul_in_command_is_rejected_before_forking() {
        let cfg = IfConfig::from_net(&tapwire_proto::config::NetConfig::default());
        let cmd = [OsString::from("a\0b")];
        let err = spawn_run(&cmd, "tap0", &cfg, Ipv4Addr::new(10, 0, 2, 3)).unwrap_err();
        assert!(matches!(err, NetnsError::InvalidArg(_)), "{err}");
    }
}
