//! The daemon's own seccomp filter (`--enable-seccomp`): an allow-list of exactly the system
//! calls the running daemon makes after start-up; anything else kills the process.
//!
//! # Theory of operation
//! Start-up (forking the namespace helper, opening the TAP, binding sockets, building the
//! sandbox) is over before the filter is installed, so the list only has to cover the event
//! loop: frame and socket I/O, new host sockets for new flows, timers, memory, logging, and
//! the exit path. [`DAEMON`] is that list as reviewed data: one [`Entry`] per system call, with
//! the component that needs it and, where it narrows the attack surface, conditions on the
//! arguments (only `AF_INET`/`AF_INET6` sockets, no executable memory, files opened read-only,
//! only a few `fcntl`/`ioctl` commands). Three calls are pinned to values known only at run
//! time and added by [`super::pins`]: `kill`/`tgkill` to the daemon's own pid, `openat`
//! relative to named directory fds (the static entry allows only `AT_FDCWD`). Whatever is not
//! listed, or does not match its conditions, is answered with `SECCOMP_RET_KILL_PROCESS`: the daemon
//! dies with SIGSYS, which the caller sees as an abnormal exit, instead of running on
//! compromised.
//!
//! The filter is applied to every thread of the process (`SECCOMP_FILTER_FLAG_TSYNC`) and
//! sets no_new_privs. It goes in after the sandbox and before the ready fd is written (the
//! slirp4netns order), so a caller that saw "1" knows the daemon is confined.
//!
//! With bypass (`--seccomp-listener`) the supervisor thread is started before the filter and
//! covered by it: [`BYPASS`] is added, the calls it makes on its own (seccomp notification
//! ioctls, pidfds, reading and writing the trapped process's memory, the OCI runtimes'
//! socket) and those of a thread starting up (the filter may land while it does). An entry in
//! both lists allows the union of their conditions. No list allows creating a thread or a
//! process: nothing is spawned after the filter.
//!
//! Keeping the list honest: the tap-mode and API suites run with `--enable-seccomp` in CI
//! (`TAPWIRE_TEST_EXTRA_FLAGS`), so a missing entry is a killed daemon and a failing test;
//! `scripts/seccomp-audit.sh` traces the daemon through the suites and lists any traced call
//! missing here and any entry the trace never saw. The unit tests check that no call is listed
//! twice and that a forbidden call (execve) kills a process running the filter.
//!
//! Architectures: x86_64 and aarch64 (the legacy calls that aarch64 lacks are listed for
//! x86_64 only). On any other architecture [`apply`] returns [`FilterError::Arch`].
//!
//! Syscalls: `prctl(PR_SET_NO_NEW_PRIVS)`, `seccomp(SECCOMP_SET_MODE_FILTER)`.

use std::collections::BTreeMap;

pub use super::pins::{Pinned, Pins};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Errors from building or installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The architecture has no reviewed list.
    #[error("seccomp: no filter for architecture {0}")]
    Arch(&'static str),
    /// seccompiler refused the rules (a bug in [`DAEMON`]).
    #[error("seccomp: building the filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("seccomp: installing the filter: {0}")]
    Install(#[from] seccompiler::Error),
}

/// A comparison on one argument (a const-friendly mirror of seccompiler's).
#[derive(Debug, Clone, Copy)]
pub enum Op {
    Eq(u64),
    Ne(u64),
    Le(u64),
    Gt(u64),
    /// `(arg & mask) == value`.
    Masked {
        mask: u64,
        value: u64,
    },
}

/// `arg[index] <op>`, compared as 32 bits (every constrained argument is an int).
#[derive(Debug, Clone, Copy)]
pub struct Cond {
    pub arg: u8,
    pub op: Op,
}

/// One allowed system call: any of `rules` must match (an empty list allows every call).
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub nr: i64,
    pub name: &'static str,
    /// Who needs it, and why.
    pub who: &'static str,
    /// Alternatives, each a conjunction of conditions.
    pub rules: &'static [&'static [Cond]],
}

const fn c(arg: u8, op: Op) -> Cond {
    Cond { arg, op }
}

const fn any(nr: i64, name: &'static str, who: &'static str) -> Entry {
    Entry {
        nr,
        name,
        who,
        rules: &[],
    }
}

const fn only(
    nr: i64,
    name: &'static str,
    who: &'static str,
    rules: &'static [&'static [Cond]],
) -> Entry {
    Entry {
        nr,
        name,
        who,
        rules,
    }
}

const AF_INET: u64 = libc::AF_INET as u64;
const AF_INET6: u64 = libc::AF_INET6 as u64;
const PROT_EXEC: u64 = libc::PROT_EXEC as u64;
/// Open flags that could create or modify a file.
const OPEN_WRITE: u64 = (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u64;
/// `openat`'s flags (argument 2) open read-only.
pub(super) const READ_ONLY: Cond = c(
    2,
    Op::Masked {
        mask: OPEN_WRITE,
        value: 0,
    },
);
/// `AT_FDCWD` as the 32-bit argument the filter sees.
pub(super) const AT_FDCWD: u64 = libc::AT_FDCWD as u32 as u64;
// The ioctl request type differs between libcs (c_ulong for glibc, c_int for musl).
#[allow(clippy::unnecessary_cast)]
const FIONBIO: u64 = libc::FIONBIO as u64;
#[allow(clippy::unnecessary_cast)]
const FIONREAD: u64 = libc::FIONREAD as u64;

/// The reviewed list for the daemon (engine thread; run mode adds nothing after start-up).
pub const DAEMON: &[Entry] = &[
    // ---- the event loop ----
    any(
        libc::SYS_epoll_pwait,
        "epoll_pwait",
        "engine: mio's Poll::poll waits for readiness",
    ),
    any(
        libc::SYS_epoll_ctl,
        "epoll_ctl",
        "engine: (de)registering host sockets, API clients",
    ),
    any(
        libc::SYS_read,
        "read",
        "engine: TAP frames, signalfd, TCP host sockets; dns: resolv.conf",
    ),
    any(
        libc::SYS_write,
        "write",
        "engine: TAP frames, TCP host sockets, ready fd; tracing: stderr",
    ),
    any(
        libc::SYS_writev,
        "writev",
        "engine: TAP frames after their virtio-net header, TCP host sockets (vectored writes)",
    ),
    any(
        libc::SYS_readv,
        "readv",
        "engine: TAP frames with their virtio-net header",
    ),
    any(
        libc::SYS_close,
        "close",
        "engine: flows ending, API clients, resolv.conf",
    ),
    // ---- host sockets of the proxies ----
    only(
        libc::SYS_socket,
        "socket",
        "tcp/udp/icmp proxies: a host socket per flow; only IPv4/IPv6",
        &[&[c(0, Op::Eq(AF_INET))], &[c(0, Op::Eq(AF_INET6))]],
    ),
    any(
        libc::SYS_connect,
        "connect",
        "tcp/udp proxies: host side of a new flow",
    ),
    any(
        libc::SYS_bind,
        "bind",
        "--outbound-addr; add_hostfwd over the API",
    ),
    any(libc::SYS_listen, "listen", "add_hostfwd (tcp) over the API"),
    any(
        libc::SYS_accept4,
        "accept4",
        "port forwards, --forward-to-host listeners and the API socket: new clients",
    ),
    any(
        libc::SYS_setsockopt,
        "setsockopt",
        "TCP_NODELAY, SO_LINGER (RST), SO_REUSEADDR, SO_BINDTODEVICE, UDP_GRO (USO)",
    ),
    any(
        libc::SYS_getsockopt,
        "getsockopt",
        "SO_ERROR of a finished connect",
    ),
    any(
        libc::SYS_getsockname,
        "getsockname",
        "list_connections; forwards bound to port 0",
    ),
    any(
        libc::SYS_getpeername,
        "getpeername",
        "mio: connect completion",
    ),
    any(
        libc::SYS_recvfrom,
        "recvfrom",
        "udp/icmp proxies, TCP host sockets (std's recv); -p auto: sock_diag dumps and events",
    ),
    any(
        libc::SYS_sendto,
        "sendto",
        "udp/icmp proxies, TCP host sockets (std's send); -p auto: sock_diag dump requests",
    ),
    any(
        libc::SYS_recvmsg,
        "recvmsg",
        "udp proxy: datagrams with their source; icmp errors",
    ),
    any(libc::SYS_sendmsg, "sendmsg", "udp proxy"),
    any(
        libc::SYS_recvmmsg,
        "recvmmsg",
        "udp proxy: a binding's datagrams in batches, UDP_GRO trains (sys::mmsg)",
    ),
    any(
        libc::SYS_sendmmsg,
        "sendmmsg",
        "udp proxy: a turn's datagrams per binding, UDP_SEGMENT trains (sys::mmsg)",
    ),
    any(
        libc::SYS_shutdown,
        "shutdown",
        "tcp proxy: half-close; API: end of reply",
    ),
    only(
        libc::SYS_ioctl,
        "ioctl",
        "std/mio: FIONBIO on accepted sockets; FIONREAD",
        &[&[c(1, Op::Eq(FIONBIO))], &[c(1, Op::Eq(FIONREAD))]],
    ),
    only(
        libc::SYS_fcntl,
        "fcntl",
        "std/mio/socket2: status and fd flags (O_NONBLOCK, FD_CLOEXEC), dup with CLOEXEC; \
         sys::splice: pipe size",
        &[
            &[c(1, Op::Eq(libc::F_GETFL as u64))],
            &[c(1, Op::Eq(libc::F_SETFL as u64))],
            &[c(1, Op::Eq(libc::F_GETFD as u64))],
            &[c(1, Op::Eq(libc::F_SETFD as u64))],
            &[c(1, Op::Eq(libc::F_DUPFD_CLOEXEC as u64))],
            &[c(1, Op::Eq(libc::F_SETPIPE_SZ as u64))],
            &[c(1, Op::Eq(libc::F_GETPIPE_SZ as u64))],
        ],
    ),
    any(
        libc::SYS_pipe2,
        "pipe2",
        "--forward-to-host: a pipe per direction of a spliced connection (sys::splice)",
    ),
    any(
        libc::SYS_splice,
        "splice",
        "--forward-to-host: socket -> pipe -> socket without a copy (sys::splice)",
    ),
    // ---- files (inside the sandbox: resolv.conf and the API socket only) ----
    only(
        libc::SYS_openat,
        "openat",
        "dns: re-reading resolv.conf; read-only, relative to the working directory only (other \
         directory fds: see `pins`)",
        &[&[c(0, Op::Eq(AT_FDCWD)), READ_ONLY]],
    ),
    any(
        libc::SYS_statx,
        "statx",
        "dns: resolv.conf modification time; std's read_to_string",
    ),
    any(
        libc::SYS_newfstatat,
        "newfstatat",
        "dns: resolv.conf metadata (older std/glibc)",
    ),
    any(libc::SYS_fstat, "fstat", "std: file size hint"),
    any(libc::SYS_lseek, "lseek", "std: file reads"),
    any(
        libc::SYS_unlinkat,
        "unlinkat",
        "control: removing the API socket on exit",
    ),
    // ---- time and signals ----
    any(
        libc::SYS_clock_gettime,
        "clock_gettime",
        "engine/flows: Instant::now (vDSO fallback)",
    ),
    // libc::SYS_kill: pinned in `pins` (only the daemon's own pid; seccomp-audit.sh reads this).
    any(
        libc::SYS_wait4,
        "wait4",
        "run mode: reaping the command on SIGCHLD",
    ),
    any(
        libc::SYS_rt_sigprocmask,
        "rt_sigprocmask",
        "std: abort on panic",
    ),
    any(
        libc::SYS_rt_sigreturn,
        "rt_sigreturn",
        "kernel: return from any signal handler",
    ),
    any(libc::SYS_getpid, "getpid", "std: abort on panic (raise)"),
    any(libc::SYS_gettid, "gettid", "std: abort on panic (raise)"),
    // libc::SYS_tgkill: pinned in `pins` (SIGABRT to the daemon's own threads).
    any(
        libc::SYS_restart_syscall,
        "restart_syscall",
        "kernel: restarting an interrupted call",
    ),
    // ---- memory ----
    only(
        libc::SYS_mmap,
        "mmap",
        "allocator: large buffers (never executable)",
        &[&[c(
            2,
            Op::Masked {
                mask: PROT_EXEC,
                value: 0,
            },
        )]],
    ),
    only(
        libc::SYS_mprotect,
        "mprotect",
        "allocator: arena growth (never executable)",
        &[&[c(
            2,
            Op::Masked {
                mask: PROT_EXEC,
                value: 0,
            },
        )]],
    ),
    any(libc::SYS_munmap, "munmap", "allocator"),
    any(libc::SYS_mremap, "mremap", "allocator: growing large Vecs"),
    any(libc::SYS_madvise, "madvise", "allocator: returning memory"),
    any(libc::SYS_brk, "brk", "allocator: heap"),
    any(libc::SYS_futex, "futex", "std: locks (stderr, tracing)"),
    any(libc::SYS_getrandom, "getrandom", "std: HashMap keys"),
    any(
        libc::SYS_sched_yield,
        "sched_yield",
        "std: spin loops in locks",
    ),
    // ---- exit ----
    any(libc::SYS_exit_group, "exit_group", "main: process exit"),
    any(libc::SYS_exit, "exit", "std: thread exit"),
    any(
        libc::SYS_sigaltstack,
        "sigaltstack",
        "std: main's stack-overflow guard torn down at exit",
    ),
];

/// Entries for calls aarch64 does not have (x86_64 only).
#[cfg(target_arch = "x86_64")]
const LEGACY: &[Entry] = &[
    any(
        libc::SYS_epoll_wait,
        "epoll_wait",
        "mio: older builds wait with epoll_wait",
    ),
    any(
        libc::SYS_unlink,
        "unlink",
        "control: removing the API socket on exit (std's remove_file)",
    ),
    any(libc::SYS_poll, "poll", "std: stdio checks"),
];
#[cfg(not(target_arch = "x86_64"))]
const LEGACY: &[Entry] = &[];

/// Added when the bypass supervisor thread runs (see `supervisor`, `seccomp`).
pub const BYPASS: &[Entry] = &[
    any(
        libc::SYS_poll,
        "poll",
        "supervisor: its poll(2) set (listeners, pending connects, OCI socket)",
    ),
    any(
        libc::SYS_ppoll,
        "ppoll",
        "supervisor: poll(2) as some libcs implement it",
    ),
    only(
        libc::SYS_ioctl,
        "ioctl",
        "supervisor: seccomp notifications (RECV, SEND, ID_VALID, ADDFD)",
        &[
            &[c(1, Op::Eq(libc::SECCOMP_IOCTL_NOTIF_RECV as u32 as u64))],
            &[c(1, Op::Eq(libc::SECCOMP_IOCTL_NOTIF_SEND as u32 as u64))],
            &[c(
                1,
                Op::Eq(libc::SECCOMP_IOCTL_NOTIF_ID_VALID as u32 as u64),
            )],
            &[c(1, Op::Eq(libc::SECCOMP_IOCTL_NOTIF_ADDFD as u32 as u64))],
        ],
    ),
    any(
        libc::SYS_pidfd_open,
        "pidfd_open",
        "supervisor: a pidfd for the trapped thread",
    ),
    any(
        libc::SYS_pidfd_getfd,
        "pidfd_getfd",
        "supervisor: a copy of the trapped call's socket",
    ),
    any(
        libc::SYS_process_vm_readv,
        "process_vm_readv",
        "supervisor: reading a trapped call's sockaddr",
    ),
    any(
        libc::SYS_process_vm_writev,
        "process_vm_writev",
        "supervisor: writing getpeername/getsockname results",
    ),
    // openat relative to the supervisor's /proc fd: see `pins`.
    any(libc::SYS_pread64, "pread64", "supervisor: /proc/TID/mem"),
    any(libc::SYS_pwrite64, "pwrite64", "supervisor: /proc/TID/mem"),
    only(
        libc::SYS_socket,
        "socket",
        "supervisor: host sockets for bypassed calls (IPv4/IPv6 only)",
        &[&[c(0, Op::Eq(AF_INET))], &[c(0, Op::Eq(AF_INET6))]],
    ),
    any(
        libc::SYS_accept4,
        "accept4",
        "supervisor: OCI runtimes connecting to --seccomp-listener",
    ),
    any(
        libc::SYS_recvmsg,
        "recvmsg",
        "supervisor: the container state and listener fd (SCM_RIGHTS)",
    ),
    any(
        libc::SYS_fstat,
        "fstat",
        "supervisor: socket inodes (getpeername table)",
    ),
    any(
        libc::SYS_getsockname,
        "getsockname",
        "supervisor: bound addresses of host sockets",
    ),
    any(
        libc::SYS_getpeername,
        "getpeername",
        "supervisor: peers of host sockets",
    ),
    any(
        libc::SYS_sendmmsg,
        "sendmmsg",
        "supervisor: bypassed UDP sends",
    ),
    // A thread starting while the filter lands.
    any(
        libc::SYS_set_robust_list,
        "set_robust_list",
        "std: thread start-up (glibc)",
    ),
    any(libc::SYS_rseq, "rseq", "std: thread start-up (glibc)"),
    only(
        libc::SYS_prctl,
        "prctl",
        "std: naming the thread (PR_SET_NAME) only",
        &[&[c(0, Op::Eq(libc::PR_SET_NAME as u64))]],
    ),
    any(
        libc::SYS_sched_getaffinity,
        "sched_getaffinity",
        "std: thread start-up",
    ),
];

/// Every entry of the daemon's list for this architecture.
pub fn entries() -> impl Iterator<Item = &'static Entry> {
    DAEMON.iter().chain(LEGACY.iter())
}

/// The daemon's list, plus [`BYPASS`] when the supervisor thread runs.
pub fn entries_for(bypass: bool) -> impl Iterator<Item = &'static Entry> {
    entries().chain(BYPASS.iter().filter(move |_| bypass))
}

fn target_arch() -> Result<TargetArch, FilterError> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(TargetArch::x86_64),
        "aarch64" => Ok(TargetArch::aarch64),
        other => Err(FilterError::Arch(other)),
    }
}

fn condition(cond: &Cond) -> Result<SeccompCondition, FilterError> {
    let (op, value) = match cond.op {
        Op::Eq(v) => (SeccompCmpOp::Eq, v),
        Op::Ne(v) => (SeccompCmpOp::Ne, v),
        Op::Le(v) => (SeccompCmpOp::Le, v),
        Op::Gt(v) => (SeccompCmpOp::Gt, v),
        Op::Masked { mask, value } => (SeccompCmpOp::MaskedEq(mask), value),
    };
    Ok(SeccompCondition::new(
        cond.arg,
        SeccompCmpArgLen::Dword,
        op,
        value,
    )?)
}

/// Compile `list` and the runtime `pinned` entries into a BPF program: listed calls allowed,
/// everything else kills. A call listed more than once allows the union (unconditional if any
/// entry is).
pub fn compile<'a>(
    list: impl IntoIterator<Item = &'a Entry>,
    pinned: &[Pinned],
) -> Result<BpfProgram, FilterError> {
    // None: allowed unconditionally.
    let mut merged: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    let all = list
        .into_iter()
        .map(|e| (e.nr, e.rules.iter().map(|r| r.to_vec()).collect::<Vec<_>>()))
        .chain(pinned.iter().map(|p| (p.nr, p.rules.clone())));
    for (nr, alts) in all {
        let slot = merged.entry(nr).or_insert_with(|| Some(Vec::new()));
        if alts.is_empty() {
            *slot = None;
            continue;
        }
        if let Some(chain) = slot {
            for alt in alts {
                let conds = alt.iter().map(condition).collect::<Result<Vec<_>, _>>()?;
                chain.push(SeccompRule::new(conds)?);
            }
        }
    }
    let rules: BTreeMap<i64, Vec<SeccompRule>> = merged
        .into_iter()
        .map(|(nr, chain)| (nr, chain.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        target_arch()?,
    )?;
    Ok(filter.try_into()?)
}

/// The daemon's program (with [`BYPASS`] if `bypass`), arguments pinned per `pins`.
pub fn daemon_program(bypass: bool, pins: &Pins) -> Result<BpfProgram, FilterError> {
    compile(entries_for(bypass), &pins.entries(bypass))
}

/// Install the daemon's filter on every thread of the process (sets no_new_privs too).
/// `bypass`: the supervisor thread runs (adds [`BYPASS`]).
pub fn apply(bypass: bool, pins: &Pins) -> Result<(), FilterError> {
    let prog = daemon_program(bypass, pins)?;
    seccompiler::apply_filter_all_threads(&prog)?;
    Ok(())
}

#[cfg(test)]
mod tests;
