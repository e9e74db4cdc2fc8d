//! Run mode (`tapwire run -- CMD`): the child that makes its own namespaces and runs CMD.
//!
//! Theory of operation: [`spawn_run`] prepares everything (argv, id maps, resolv.conf text)
//! before forking. The child unshares user+net+mount namespaces, maps root to the caller's
//! euid/egid, makes `/` recursively private, opens and configures the TAP, mounts a
//! resolv.conf naming the DNS forwarder over `/etc/resolv.conf` ([`super::resolv`]), and sends
//! the TAP fd (with `-p auto`, also a sock_diag socket of the new namespace, `link::sock_diag`;
//! then, with `--forward-to-host`, the loopback listeners: [`super::loopback`]).
//! It then blocks on the socketpair until [`RunChild::start`] writes one byte
//! (EOF = the parent died or dropped the [`RunChild`] -> `_exit(1)`) and finally `execvp`s the
//! command. The child has `PR_SET_PDEATHSIG(SIGKILL)`, which survives the exec, so the command
//! dies with tapwire (note: "parent" is the forking *thread*).
//!
//! `--map-auto` ([`super::idmap`]): right after unsharing, the child sends `b'M'` and waits for
//! one byte while the parent writes its id maps (root: `0 0 65536`; others: newuidmap and
//! newgidmap with their subordinate ranges).
//!
//! Bypass mode ([`spawn_run_filtered`]): after the go byte the child also sets no_new_privs and
//! installs the seccomp filter (nothing trapped happens after that but the exec), answers
//! `b'L'` + the listener's fd number (a plain `send`, which the filter lets through), waits for
//! a one-byte ack while the parent takes the listener with `pidfd_getfd`, closes its copy and
//! execs.
#![allow(unsafe_code)]

use std::ffi::{CString, OsString};
use std::io::{self, Write as _};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::socket::{send, MsgFlags};
use nix::unistd::{fork, getpid, ForkResult, Gid, Pid, Uid};

use super::channel::{
    describe, die_with_parent, exit_now, recv_queues, recv_reply, send_error, send_fd,
    seqpacket_pair, wait_child, Reply, MAX_REPLY, TAG_ERR, TAG_LISTENER,
};
use super::loopback::{open_listeners, recv_listeners, send_listeners};
use super::resolv::override_resolv_conf;
use super::{errno, setup_err, NetnsError};
use crate::link::netlink;
use crate::link::tap::{self, Tap};
use tapwire_proto::config::IfConfig;

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
    /// `--forward-to-host`: listeners on the child's 127.0.0.1 and ::1 (see [`super::loopback`]).
    pub listeners: Vec<OwnedFd>,
    /// `-p auto`: the sock_diag socket of the child's network namespace.
    pub diag: Option<OwnedFd>,
    /// `--threads N`: the TAP's other N-1 queues (`tap` is the first).
    pub queues: Vec<OwnedFd>,
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
    pub fn start_with_listener(&mut self) -> Result<Supervised, NetnsError> {
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
        let (fd_num, probe_num, ifindex) = match buf.get(..n).unwrap_or(&[]) {
            m @ [TAG_LISTENER, ..] if m.len() == LISTENER_MSG => {
                let word = |at: usize| [m[at], m[at + 1], m[at + 2], m[at + 3]];
                (
                    RawFd::from_ne_bytes(word(1)),
                    RawFd::from_ne_bytes(word(5)),
                    u32::from_ne_bytes(word(9)),
                )
            }
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
        let pidfd = crate::sys::pidfd::pidfd_open(pid.as_raw()).map_err(start_err)?;
        let listener = crate::sys::pidfd::pidfd_getfd(pidfd.as_fd(), fd_num).map_err(start_err)?;
        let route = if probe_num >= 0 {
            let fd = crate::sys::pidfd::pidfd_getfd(pidfd.as_fd(), probe_num).map_err(start_err)?;
            Some((fd, ifindex))
        } else {
            None
        };
        loop {
            match send(go.as_raw_fd(), &[1], MsgFlags::MSG_NOSIGNAL) {
                Ok(_) => return Ok(Supervised { listener, route }),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(start_err(errno(e))),
            }
        }
    }
}

/// What a bypass-mode run child hands over before it execs the command.
#[derive(Debug)]
pub struct Supervised {
    /// The seccomp listener.
    pub listener: OwnedFd,
    /// A `NETLINK_ROUTE` socket inside the command's network namespace and the tap's
    /// interface index there (`None` if the child could not open one).
    pub route: Option<(OwnedFd, u32)>,
}

/// What [`spawn_run_filtered`] adds to a plain [`spawn_run`].
#[derive(Debug, Default, Clone, Copy)]
pub struct RunOptions<'a> {
    /// Bypass mode: the seccomp filter the child installs right before exec.
    pub filter: Option<&'a crate::bypass::rules::Program>,
    /// `--map-auto` ([`super::idmap`]).
    pub map_auto: bool,
    /// `--forward-to-host`: guest ports to listen on ([`super::loopback`]).
    pub to_host: &'a [u16],
    /// `-p auto`: a sock_diag socket of the new namespace with the TAP.
    pub diag: bool,
    /// `--threads N`: open the TAP with N queues (0 or 1: one, as slirp4netns does).
    pub queues: usize,
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
    filter: Option<&'a crate::bypass::rules::Program>,
    /// `--map-auto`: the parent writes the id maps ([`super::idmap`]).
    map_auto: bool,
    /// `--forward-to-host`: guest ports to listen on.
    to_host: &'a [u16],
    /// `-p auto`: send a sock_diag socket with the TAP.
    diag: bool,
    /// `--threads N`: TAP queues to open.
    queues: usize,
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
    spawn_run_filtered(command, tapname, cfg, dns, RunOptions::default())
}

/// [`spawn_run`] with `--forward-to-host` listeners on the guest ports `to_host` (in
/// [`RunChild::listeners`], see [`super::loopback`]) and for bypass mode: with `filter`, the child sets no_new_privs and installs the
/// seccomp filter after everything else and right before `execvp`, and hands the listener to
/// [`RunChild::start_with_listener`] before it makes any trapped call: it writes the
/// listener's fd number (a plain `send` without an address, which the filter lets through),
/// the parent takes the fd with `pidfd_getfd` and acknowledges with one byte, and the child
/// closes its copy and execs. `diag`: also open a sock_diag socket in the new network
/// namespace ([`RunChild::diag`], for `-p auto`).
pub fn spawn_run_filtered(
    command: &[OsString],
    tapname: &str,
    cfg: &IfConfig,
    dns: Ipv4Addr,
    opts: RunOptions<'_>,
) -> Result<RunChild, NetnsError> {
    let RunOptions {
        filter,
        map_auto,
        to_host,
        diag,
        queues,
    } = opts;
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
        map_auto,
        to_host,
        diag,
        queues,
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
            if map_auto {
                if let Err(e) = answer_map_request(&parent_sock, child) {
                    drop(parent_sock);
                    let _ = wait_child(child);
                    return Err(e);
                }
            }
            let reply = match recv_reply(&parent_sock, child) {
                Ok(Reply::Fd(_, ref d)) if d.is_some() != diag => Err(NetnsError::BadReply {
                    pid: child,
                    reason: "wrong number of file descriptors",
                }),
                Ok(Reply::Fd(tap, d)) => {
                    let rest = recv_queues(parent_sock.as_fd(), child, queues).and_then(|q| {
                        let l = match to_host.is_empty() {
                            true => Vec::new(),
                            false => recv_listeners(parent_sock.as_fd(), child, to_host.len() * 2)?,
                        };
                        Ok((q, l))
                    });
                    match rest {
                        Ok((queues, listeners)) => {
                            return Ok(RunChild {
                                pid: child,
                                tap,
                                diag: d,
                                listeners,
                                queues,
                                go: Some(parent_sock),
                            })
                        }
                        Err(e) => {
                            drop(parent_sock);
                            let _ = wait_child(child);
                            return Err(e);
                        }
                    }
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
                Reply::Eof | Reply::Fd(..) => Err(NetnsError::ChildDied {
                    pid: child,
                    how: describe(status?),
                }),
            }
        }
    }
}

/// Body of the run child. Never returns.
fn run_main(sock: OwnedFd, parent: Pid, prep: &RunPrep<'_>) -> ! {
    let setup = || -> Result<_, NetnsError> {
        let mut taps = run_setup(&sock, parent, prep)?.into_iter();
        let tap = taps
            .next()
            .ok_or_else(|| setup_err("TAP queues", io::ErrorKind::NotFound))?;
        let rest: Vec<OwnedFd> = taps.map(OwnedFd::from).collect();
        let diag = match prep.diag {
            true => Some(
                crate::link::sock_diag::open()
                    .map_err(|e| setup_err("sock_diag socket (-p auto)", e))?
                    .0,
            ),
            false => None,
        };
        Ok((tap, rest, diag))
    };
    let (tap, rest, diag) = match catch_unwind(AssertUnwindSafe(setup)) {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            send_error(sock.as_fd(), &e);
            exit_now(1)
        }
        Err(_) => exit_now(1),
    };
    if send_fd(sock.as_fd(), tap.as_fd(), diag.as_ref().map(|d| d.as_fd())).is_err() {
        exit_now(1);
    }
    drop(tap);
    drop(diag);
    if !rest.is_empty() && send_listeners(sock.as_fd(), &rest).is_err() {
        exit_now(1);
    }
    drop(rest);
    if !prep.to_host.is_empty() {
        let sent = match open_listeners(prep.to_host) {
            Ok(fds) => send_listeners(sock.as_fd(), &fds),
            Err(e) => {
                send_error(sock.as_fd(), &e);
                exit_now(1)
            }
        };
        if sent.is_err() {
            exit_now(1);
        }
    }
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
        hand_over_listener(&sock, filter, prep.tapname);
    }
    drop(sock);
    exec(prep)
}

/// Run child, bypass mode: install the filter and give the parent the listener (see
/// [`spawn_run_filtered`]). Exits on any failure: the command must not run unsupervised.
fn hand_over_listener(sock: &OwnedFd, filter: &crate::bypass::rules::Program, tapname: &str) {
    // The route probe first (a socket call the filter would not trap anyway). Without it the
    // supervisor still runs, deciding by its policy alone (the parent warns).
    let (probe, ifindex) = match crate::link::netlink::route_probe(tapname) {
        Ok((fd, index)) => (Some(fd), index),
        Err(_) => (None, 0),
    };
    let probe_num = probe.as_ref().map_or(-1, |fd| fd.as_raw_fd());
    let listener = match crate::bypass::rules::install_listener(filter) {
        Ok(fd) => fd,
        Err(e) => {
            send_error(
                sock.as_fd(),
                &setup_err("install the seccomp filter (bypass mode)", e),
            );
            exit_now(1)
        }
    };
    let mut msg = [0u8; LISTENER_MSG];
    msg[0] = TAG_LISTENER;
    msg[1..5].copy_from_slice(&listener.to_ne_bytes());
    msg[5..9].copy_from_slice(&probe_num.to_ne_bytes());
    msg[9..13].copy_from_slice(&ifindex.to_ne_bytes());
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
    drop(probe);
}

/// `L`, the listener's fd number, the route probe's fd number (-1: none), the tap's index.
const LISTENER_MSG: usize = 13;

/// The single map any user may write for themselves: root is the caller.
fn write_own_maps(prep: &RunPrep<'_>) -> Result<(), NetnsError> {
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
    })
}

/// `--map-auto`, child side: ask the parent for the maps and wait until they are written.
fn request_maps(sock: &OwnedFd) -> Result<(), NetnsError> {
    loop {
        match send(sock.as_raw_fd(), &[TAG_MAP], MsgFlags::MSG_NOSIGNAL) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(setup_err("ask the parent for the id maps", e)),
        }
    }
    let mut ack = [0u8; 1];
    loop {
        match nix::unistd::read(sock, &mut ack) {
            Ok(1) => return Ok(()),
            Err(Errno::EINTR) => continue,
            // The parent failed (and reports why) or went away.
            _ => exit_now(1),
        }
    }
}

/// `--map-auto`, parent side: wait for the child's request (or its error, left for
/// [`recv_reply`]), write the maps, acknowledge.
fn answer_map_request(sock: &OwnedFd, child: Pid) -> Result<(), NetnsError> {
    let mut first = [0u8; 1];
    let n = loop {
        match nix::sys::socket::recv(sock.as_raw_fd(), &mut first, MsgFlags::MSG_PEEK) {
            Ok(n) => break n,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                return Err(NetnsError::Recv {
                    pid: child,
                    source: errno(e),
                })
            }
        }
    };
    if n == 0 || first[0] != TAG_MAP {
        return Ok(());
    }
    let _ = nix::sys::socket::recv(sock.as_raw_fd(), &mut first, MsgFlags::empty());
    super::idmap::map_child(child)?;
    loop {
        match send(sock.as_raw_fd(), &[1], MsgFlags::MSG_NOSIGNAL) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => {
                return Err(NetnsError::Start {
                    pid: child,
                    source: errno(e),
                })
            }
        }
    }
}

/// `--map-auto`: the child's request for its id maps.
const TAG_MAP: u8 = b'M';

fn run_setup(sock: &OwnedFd, parent: Pid, prep: &RunPrep<'_>) -> Result<Vec<Tap>, NetnsError> {
    die_with_parent(parent)?;
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS)
        .map_err(|e| setup_err("unshare(CLONE_NEWUSER|CLONE_NEWNET|CLONE_NEWNS)", e))?;
    if prep.map_auto {
        request_maps(sock)?;
    } else {
        write_own_maps(prep)?;
    }
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

    let taps = Tap::open_queues(prep.tapname, prep.queues)?;
    netlink::configure(prep.tapname, prep.cfg)?;
    override_resolv_conf(prep.resolv.as_bytes())?;
    Ok(taps)
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
    fn nul_in_command_is_rejected_before_forking() {
        let cfg = IfConfig::from_net(&tapwire_proto::config::NetConfig::default());
        let cmd = [OsString::from("a\0b")];
        let err = spawn_run(&cmd, "tap0", &cfg, Ipv4Addr::new(10, 0, 2, 3)).unwrap_err();
        assert!(matches!(err, NetnsError::InvalidArg(_)), "{err}");
    }
}
