//! The OS side of bypass mode: the seccomp user-notify filter, its listener, pidfds, the
//! target's memory, and raw socket calls on file descriptors taken from the target.
//!
//! # Theory of operation
//! - **The rules** ([`rules`]) are one reviewed table, the single source for both the BPF
//!   program that `tapwire run --bypass` installs ([`Program::new`]) and the OCI profile that
//!   `tapwire seccomp-profile` prints ([`oci_profile`]). Each rule says why it exists. Calls
//!   that can give a socket a destination are trapped (`SECCOMP_RET_USER_NOTIF`) and handled by
//!   the supervisor without ever letting the kernel re-read the container's memory for a
//!   bypassed socket; calls that would otherwise slip past that (io_uring, the 32-bit and x32
//!   entry points of the socket calls, TCP Fast Open sends without UDP bypass) fail with an
//!   errno in the filter itself. Everything else is allowed without a round trip: read, write,
//!   send/recv without an address, setsockopt, fcntl, close...
//! - **Installing** ([`install_listener`]) runs in the forked run-mode child right before
//!   `execvp`: `PR_SET_NO_NEW_PRIVS`, then `seccomp(SECCOMP_SET_MODE_FILTER,
//!   SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_SPEC_ALLOW)`, which returns the
//!   listener fd (SPEC_ALLOW: see [`install_listener`]). It only makes those two
//!   syscalls (the program is built before `fork`), so it is safe after `fork` in a threaded
//!   parent. The child then hands the listener to the parent before any trapped call (see
//!   `netns`).
//! - **The listener** ([`Listener`]): `SECCOMP_IOCTL_NOTIF_RECV` (one notification: id, thread
//!   id, arch, syscall number, six raw arguments), `..._SEND` (a return value, an errno, or
//!   CONTINUE), `..._ID_VALID` (the target is still blocked in that very call: checked after
//!   every read of its memory, because a thread id can be reused once the thread is gone) and
//!   `..._ADDFD` with `SECCOMP_ADDFD_FLAG_SETFD` (install one of our fds at a given number in the
//!   target, replacing what was there, like `dup2`). `ENOENT` from any of them means the target
//!   left the call (killed, or a signal interrupted it); callers drop such notifications quietly.
//!   `..._SET_FLAGS` asks for synchronous wake-ups (Linux 6.6), cheaper round trips.
//! - **The target**: [`pidfd_open`] (a thread pidfd where the kernel has `PIDFD_THREAD`, else
//!   the thread group's) and [`pidfd_getfd`] give us a copy of a socket (same open file
//!   description, so `F_GETFL`, `getsockopt` and even `connect` on the copy act on the
//!   container's socket itself); [`read_mem`] uses `process_vm_readv` (writes go through
//!   `/proc/TID/mem`, [`ProcFs`], opened before the `ID_VALID` check so that they cannot land in
//!   a process that reused the thread id). All need ptrace rights over the target: being its
//!   parent (run mode) or root (OCI) does.
//! - **Socket calls on raw bytes** ([`connect_raw`], [`bind_raw`], [`sendmsg_raw`], ...): the
//!   supervisor passes addresses as the kernel would see them, so emulated calls keep the
//!   kernel's exact error behaviour.
//!
//! Limits: x86_64 and aarch64 only (the syscall numbers of the compat ABIs are listed per
//! architecture); the filter cannot be removed once installed, and only one listener can exist
//! per filter chain (a nested `tapwire run --bypass` inside another fails with `EBUSY`).
//!
//! Every unsafe block says why it is sound; fds become [`OwnedFd`] as soon as the kernel
//! returns them.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

/// `SO_NETNS_COOKIE` (Linux 5.14): a u64 naming the socket's network namespace.
const SO_NETNS_COOKIE: libc::c_int = 71;
/// `PIDFD_THREAD` (Linux 6.9) = `O_EXCL`: a pidfd for one thread rather than its group.
const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;

/// The audit architecture of native syscalls, and the ABIs that reach the same kernel through
/// other syscall numbers.
#[cfg(target_arch = "x86_64")]
mod arch {
    /// AUDIT_ARCH_X86_64.
    pub const NATIVE: u32 = 0xC000_003E;
    /// AUDIT_ARCH_I386 (int 0x80 / the 32-bit vDSO).
    pub const COMPAT: u32 = 0x4000_0003;
    /// x32 syscalls run with the native arch and this bit in the number.
    pub const X32_BIT: i32 = 0x4000_0000;
    /// i386: socketcall, connect, sendto, sendmsg, sendmmsg, io_uring_setup.
    pub const COMPAT_DENY: [u32; 6] = [102, 362, 369, 370, 345, 425];
    /// x32: connect, sendto, sendmsg, sendmmsg, io_uring_setup.
    pub const X32_DENY: [u32; 5] = [
        0x4000_0000 | 42,
        0x4000_0000 | 44,
        0x4000_0000 | 518,
        0x4000_0000 | 538,
        0x4000_0000 | 425,
    ];
    /// OCI names of the architectures the profile covers.
    pub const OCI_ARCHES: [&str; 3] = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"];
}

#[cfg(target_arch = "aarch64")]
mod arch {
    /// AUDIT_ARCH_AARCH64.
    pub const NATIVE: u32 = 0xC000_00B7;
    /// AUDIT_ARCH_ARM (32-bit EABI).
    pub const COMPAT: u32 = 0x4000_0028;
    pub const X32_BIT: i32 = 0;
    /// arm: connect, sendto, sendmsg, sendmmsg, io_uring_setup.
    pub const COMPAT_DENY: [u32; 5] = [283, 290, 296, 374, 425];
    pub const X32_DENY: [u32; 0] = [];
    pub const OCI_ARCHES: [&str; 2] = ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"];
}

pub use arch::NATIVE as NATIVE_ARCH;

/// Whether a notification comes from the native ABI (not i386/arm compat, not x32).
pub fn is_native(arch: u32, nr: i32) -> bool {
    arch == arch::NATIVE && (arch::X32_BIT == 0 || nr & arch::X32_BIT == 0)
}

/// What the filter does with a matching call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop the thread and notify the supervisor.
    Notify,
    /// Fail at once with this errno.
    Errno(i32),
}

/// When a rule applies (arguments are the raw syscall arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    Always,
    /// Argument `n` is not 0 (e.g. sendto's destination pointer).
    ArgNonZero(u8),
    /// Argument `n` has all bits of the mask set (e.g. MSG_FASTOPEN in the flags).
    ArgMaskSet(u8, u32),
}

/// One reviewed filter rule.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub name: &'static str,
    pub nr: i64,
    pub cond: Cond,
    pub action: Action,
    /// Why the rule exists.
    pub why: &'static str,
}

/// The syscalls the supervisor knows how to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Connect,
    Bind,
    Listen,
    GetPeerName,
    SendTo,
    SendMsg,
    SendMmsg,
}

/// The call behind a native syscall number.
pub fn classify(nr: i32) -> Option<Call> {
    match i64::from(nr) {
        libc::SYS_connect => Some(Call::Connect),
        libc::SYS_bind => Some(Call::Bind),
        libc::SYS_listen => Some(Call::Listen),
        libc::SYS_getpeername => Some(Call::GetPeerName),
        libc::SYS_sendto => Some(Call::SendTo),
        libc::SYS_sendmsg => Some(Call::SendMsg),
        libc::SYS_sendmmsg => Some(Call::SendMmsg),
        _ => None,
    }
}

/// The filter rules. `udp`: UDP sockets are bypassed too, so every send that can carry a
/// destination must be seen (a bypassed UDP socket lives in the host's network namespace: an
/// unchecked `sendto` on it would reach the host's network directly).
pub fn rules(udp: bool) -> Vec<Rule> {
    let fastopen = libc::MSG_FASTOPEN as u32;
    let mut r = vec![
        Rule {
            name: "connect",
            nr: libc::SYS_connect,
            cond: Cond::Always,
            action: Action::Notify,
            why: "the bypass decision; performed by the supervisor, never continued for an IP socket",
        },
        Rule {
            name: "bind",
            nr: libc::SYS_bind,
            cond: Cond::Always,
            action: Action::Notify,
            why: "published ports get a host socket bound to the host address",
        },
        Rule {
            name: "listen",
            nr: libc::SYS_listen,
            cond: Cond::Always,
            action: Action::Notify,
            why: "a host socket may only listen on a published address",
        },
        Rule {
            name: "getpeername",
            nr: libc::SYS_getpeername,
            cond: Cond::Always,
            action: Action::Notify,
            why: "a socket bypassed to host loopback reports the gateway address it was given",
        },
        Rule {
            name: "io_uring_setup",
            nr: libc::SYS_io_uring_setup,
            cond: Cond::Always,
            action: Action::Errno(libc::ENOSYS),
            why: "io_uring connect/sendmsg would bypass the checks on host sockets; programs fall back to syscalls",
        },
    ];
    if udp {
        r.extend([
            Rule {
                name: "sendto",
                nr: libc::SYS_sendto,
                cond: Cond::ArgNonZero(4),
                action: Action::Notify,
                why: "a destination address (send/sendto without one are not trapped)",
            },
            Rule {
                name: "sendmsg",
                nr: libc::SYS_sendmsg,
                cond: Cond::Always,
                action: Action::Notify,
                why: "msg_name lives in memory the program can rewrite: performed by the supervisor for IP sockets",
            },
            Rule {
                name: "sendmmsg",
                nr: libc::SYS_sendmmsg,
                cond: Cond::Always,
                action: Action::Notify,
                why: "as sendmsg",
            },
        ]);
    } else {
        for (name, nr, arg) in [
            ("sendto", libc::SYS_sendto, 3),
            ("sendmsg", libc::SYS_sendmsg, 2),
            ("sendmmsg", libc::SYS_sendmmsg, 3),
        ] {
            r.push(Rule {
                name,
                nr,
                cond: Cond::ArgMaskSet(arg, fastopen),
                action: Action::Errno(libc::EOPNOTSUPP),
                why: "MSG_FASTOPEN connects a closed TCP socket to the address it carries",
            });
        }
    }
    r
}

// --- the BPF program ----------------------------------------------------------------------

const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const RET_NOTIFY: u32 = libc::SECCOMP_RET_USER_NOTIF;
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;

fn off_arg_lo(n: u8) -> u32 {
    // seccomp_data.args[n]; the low word comes first on little-endian machines.
    16 + 8 * u32::from(n) + if cfg!(target_endian = "little") { 0 } else { 4 }
}

fn off_arg_hi(n: u8) -> u32 {
    16 + 8 * u32::from(n) + if cfg!(target_endian = "little") { 4 } else { 0 }
}

fn ld(k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: BPF_LD_W_ABS,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jmp(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn ret(k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: BPF_RET_K,
        jt: 0,
        jf: 0,
        k,
    }
}

fn ret_action(a: Action) -> u32 {
    match a {
        Action::Notify => RET_NOTIFY,
        Action::Errno(e) => libc::SECCOMP_RET_ERRNO | (e as u32 & libc::SECCOMP_RET_DATA),
    }
}

/// A BPF program, built before `fork` so that installing it allocates nothing.
pub struct Program(Vec<libc::sock_filter>);

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Program({} instructions)", self.0.len())
    }
}

impl Program {
    /// The filter for [`rules`]`(udp)` plus the compat/x32 denials.
    ///
    /// Layout: check the arch; native: load the number, one self-contained block per rule
    /// (each ends in a return, so the accumulator may be reused), allow; compat: deny the
    /// listed numbers with ENOSYS, allow the rest.
    pub fn new(udp: bool) -> Program {
        let mut native = vec![ld(OFF_NR)];
        let mut push_rule = |nr: u32, cond: Cond, action: Action| {
            let act = ret_action(action);
            match cond {
                Cond::Always => {
                    native.push(jmp(BPF_JEQ_K, nr, 0, 1));
                    native.push(ret(act));
                }
                Cond::ArgNonZero(n) => {
                    native.extend([
                        jmp(BPF_JEQ_K, nr, 0, 6),
                        ld(off_arg_lo(n)),
                        jmp(BPF_JEQ_K, 0, 0, 3),
                        ld(off_arg_hi(n)),
                        jmp(BPF_JEQ_K, 0, 0, 1),
                        ret(RET_ALLOW),
                        ret(act),
                    ]);
                }
                Cond::ArgMaskSet(n, mask) => {
                    native.extend([
                        jmp(BPF_JEQ_K, nr, 0, 4),
                        ld(off_arg_lo(n)),
                        jmp(BPF_JSET_K, mask, 1, 0),
                        ret(RET_ALLOW),
                        ret(act),
                    ]);
                }
            }
        };
        for r in rules(udp) {
            push_rule(r.nr as u32, r.cond, r.action);
        }
        for nr in arch::X32_DENY {
            push_rule(nr, Cond::Always, Action::Errno(libc::ENOSYS));
        }
        native.push(ret(RET_ALLOW));

        let mut compat = vec![ld(OFF_NR)];
        for nr in arch::COMPAT_DENY {
            compat.push(jmp(BPF_JEQ_K, nr, 0, 1));
            compat.push(ret(libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
        }
        compat.push(ret(RET_ALLOW));

        let mut prog = vec![ld(OFF_ARCH)];
        // Native: fall through into `native`; else skip it to the compat check.
        prog.push(jmp(
            BPF_JEQ_K,
            arch::NATIVE,
            0,
            u8::try_from(native.len()).unwrap_or(u8::MAX),
        ));
        prog.extend(native);
        // Compat arch: fall into `compat`; any other arch (none exists): allow.
        prog.push(jmp(
            BPF_JEQ_K,
            arch::COMPAT,
            0,
            u8::try_from(compat.len()).unwrap_or(u8::MAX),
        ));
        prog.extend(compat);
        prog.push(ret(RET_ALLOW));
        Program(prog)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Run the program on one syscall, as the kernel would (for tests).
    pub fn eval(&self, arch: u32, nr: i32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let mut acc: u32 = 0;
        let mut pc = 0usize;
        while let Some(ins) = self.0.get(pc) {
            match ins.code {
                BPF_LD_W_ABS => {
                    let k = ins.k as usize;
                    acc = data
                        .get(k..k + 4)
                        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(0);
                    pc += 1;
                }
                BPF_JEQ_K | BPF_JSET_K => {
                    let hit = if ins.code == BPF_JEQ_K {
                        acc == ins.k
                    } else {
                        acc & ins.k != 0
                    };
                    pc += 1 + usize::from(if hit { ins.jt } else { ins.jf });
                }
                BPF_RET_K => return ins.k,
                _ => return 0,
            }
        }
        0
    }
}

/// `SECCOMP_FILTER_FLAG_NEW_LISTENER`, and `SECCOMP_FILTER_FLAG_SPEC_ALLOW`: a seccomp filter
/// otherwise switches on the Speculative Store Bypass mitigation for the program, which costs
/// it a lot of speed on affected CPUs. This filter is a trap, not a sandbox: with SPEC_ALLOW
/// the program's mitigations stay exactly what they were without bypass mode.
const FILTER_FLAGS: libc::c_ulong =
    libc::SECCOMP_FILTER_FLAG_NEW_LISTENER | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW;

/// In the forked child, right before exec: set no_new_privs and install `prog` with a new
/// listener. Returns the listener's fd number (close-on-exec). Makes only `prctl` and
/// `seccomp` syscalls and allocates nothing.
pub fn install_listener(prog: &Program) -> Result<RawFd, nix::errno::Errno> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(nix::errno::Errno::last());
    }
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.0.len()).map_err(|_| nix::errno::Errno::E2BIG)?,
        filter: prog.0.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `prog.0`, which outlives the call; the kernel copies the
    // program and does not keep the pointer. The flags ask for a listener fd as the result.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            FILTER_FLAGS,
            &fprog as *const libc::sock_fprog,
        )
    };
    if fd < 0 {
        return Err(nix::errno::Errno::last());
    }
    RawFd::try_from(fd).map_err(|_| nix::errno::Errno::EBADF)
}

/// The `linux.seccomp` object for an OCI config.json: the same rules, as runc/crun take them.
pub fn oci_profile(udp: bool, listener_path: &str) -> serde_json::Value {
    use serde_json::json;
    let mut syscalls = Vec::new();
    for r in rules(udp) {
        let (action, errno) = match r.action {
            Action::Notify => ("SCMP_ACT_NOTIFY", None),
            Action::Errno(e) => ("SCMP_ACT_ERRNO", Some(e)),
        };
        let mut entry = json!({ "names": [r.name], "action": action });
        if let Some(e) = errno {
            entry["errnoRet"] = json!(e);
        }
        match r.cond {
            Cond::Always => {}
            Cond::ArgNonZero(n) => {
                entry["args"] = json!([{ "index": n, "value": 0, "op": "SCMP_CMP_NE" }]);
            }
            Cond::ArgMaskSet(n, mask) => {
                entry["args"] = json!([{ "index": n, "value": mask, "valueTwo": mask, "op": "SCMP_CMP_MASKED_EQ" }]);
            }
        }
        entry["comment"] = json!(r.why);
        syscalls.push(entry);
    }
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": arch::OCI_ARCHES,
        "listenerPath": listener_path,
        "listenerMetadata": profile_metadata(udp),
        "syscalls": syscalls,
    })
}

/// The `listenerMetadata` of the profile: tells the daemon which rules the container runs
/// under (UDP is only bypassed when the sends are trapped).
pub fn profile_metadata(udp: bool) -> &'static str {
    if udp {
        "tapwire-bypass-v1 udp"
    } else {
        "tapwire-bypass-v1 tcp"
    }
}

// --- the listener --------------------------------------------------------------------------

/// One notification: a thread stopped in a trapped syscall.
#[derive(Debug, Clone, Copy)]
pub struct Notif {
    pub id: u64,
    /// Thread id (in our pid namespace).
    pub tid: i32,
    pub arch: u32,
    pub nr: i32,
    pub args: [u64; 6],
}

/// The answer to a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Let the kernel run the call as if nothing happened.
    Continue,
    /// The call returns this value.
    Value(i64),
    /// The call fails with this errno.
    Error(i32),
}

/// A seccomp listener fd.
#[derive(Debug)]
pub struct Listener(OwnedFd);

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Listener {
    pub fn new(fd: OwnedFd) -> Listener {
        Listener(fd)
    }

    /// Receive one notification (blocks if none is pending: poll first). `ENOENT`: the
    /// notification was cancelled between poll and receive.
    pub fn recv(&self) -> io::Result<Notif> {
        // SAFETY: seccomp_notif is plain integers; all-zero is valid (and required by RECV).
        let mut n: libc::seccomp_notif = unsafe { zeroed() };
        // SAFETY: RECV writes one seccomp_notif into `n`, which is large enough and exclusively
        // borrowed for the call.
        cvt(unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_RECV,
                &mut n as *mut libc::seccomp_notif,
            )
        })?;
        Ok(Notif {
            id: n.id,
            tid: n.pid as i32,
            arch: n.data.arch,
            nr: n.data.nr,
            args: n.data.args,
        })
    }

    /// Answer notification `id`.
    pub fn respond(&self, id: u64, reply: Reply) -> io::Result<()> {
        let (val, error, flags) = match reply {
            Reply::Continue => (0, 0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32),
            Reply::Value(v) => (v, 0, 0),
            Reply::Error(e) => (0, -e.abs(), 0),
        };
        let mut resp = libc::seccomp_notif_resp {
            id,
            val,
            error,
            flags,
        };
        // SAFETY: SEND reads one seccomp_notif_resp from `resp`, which lives across the call.
        cvt(unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SEND,
                &mut resp as *mut libc::seccomp_notif_resp,
            )
        })
        .map(|_| ())
    }

    /// Whether notification `id` is still pending (its thread still blocked in that call).
    pub fn id_valid(&self, id: u64) -> bool {
        let mut id = id;
        // SAFETY: ID_VALID reads one u64 from the pointer, which is valid for the call.
        unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
                &mut id as *mut u64,
            ) == 0
        }
    }

    /// Ask the kernel to wake the supervisor and the trapped thread synchronously (hand the CPU
    /// over instead of a plain wake-up): `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`, Linux 6.6. Each
    /// notification is a round trip between two threads, which this makes cheaper. Best effort:
    /// older kernels refuse it (EINVAL) and work as before.
    pub fn set_sync_wakeup(&self) -> io::Result<()> {
        const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: libc::c_ulong = 1;
        // SAFETY: SET_FLAGS takes the flags by value; no memory is passed.
        cvt(unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS,
                SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
            )
        })
        .map(|_| ())
    }

    /// Install `src` in the target of notification `id` at fd number `newfd`, replacing
    /// whatever is there. Returns the fd number.
    pub fn addfd_at(
        &self,
        id: u64,
        src: BorrowedFd<'_>,
        newfd: RawFd,
        cloexec: bool,
    ) -> io::Result<RawFd> {
        let mut add = libc::seccomp_notif_addfd {
            id,
            flags: libc::SECCOMP_ADDFD_FLAG_SETFD as u32,
            srcfd: src.as_raw_fd() as u32,
            newfd: newfd as u32,
            newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
        };
        // SAFETY: ADDFD reads one seccomp_notif_addfd from `add` (valid across the call); `src`
        // is an open fd borrowed for the call, which the kernel duplicates into the target.
        cvt(unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ADDFD,
                &mut add as *mut libc::seccomp_notif_addfd,
            )
        })
    }
}

// --- the target ----------------------------------------------------------------------------

fn owned(raw: libc::c_long) -> io::Result<OwnedFd> {
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(raw).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the syscall just returned this fd (checked >= 0); nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_open_raw(pid: i32, flags: libc::c_uint) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) })
}

/// `/proc`, opened once before the daemon confines itself (the sandbox leaves no `/proc`
/// in its root; an fd opened earlier keeps working).
#[derive(Debug)]
pub struct ProcFs(OwnedFd);

impl ProcFs {
    pub fn open() -> io::Result<ProcFs> {
        nix::fcntl::open(
            "/proc",
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map(ProcFs)
        .map_err(io::Error::from)
    }

    /// Open `/proc/<path>` (`path` relative, e.g. "42/status"). A missing entry (the thread
    /// is gone) is `ESRCH`.
    pub fn file(&self, path: &str, write: bool) -> io::Result<std::fs::File> {
        let mode = if write {
            nix::fcntl::OFlag::O_WRONLY
        } else {
            nix::fcntl::OFlag::O_RDONLY
        };
        nix::fcntl::openat(
            &self.0,
            path,
            mode | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map(std::fs::File::from)
        .map_err(|e| match e {
            nix::errno::Errno::ENOENT => io::Error::from_raw_os_error(libc::ESRCH),
            e => io::Error::from(e),
        })
    }

    /// A small `/proc` text file (status, fdinfo): plain reads into one buffer, no size
    /// probing.
    fn read(&self, path: &str) -> io::Result<String> {
        use std::io::Read as _;
        let mut f = self.file(path, false)?;
        let mut buf = vec![0u8; 4096];
        let mut len = 0;
        while len < buf.len() {
            match f.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(k) => len += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(len);
        String::from_utf8(buf).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    }
}

/// A pidfd for thread `tid`: a thread pidfd if the kernel has them (6.9), else one for its
/// thread group (found in `/proc/TID/status`). `ESRCH`: the thread is gone.
pub fn pidfd_open(proc: &ProcFs, tid: i32) -> io::Result<OwnedFd> {
    match pidfd_open_raw(tid, PIDFD_THREAD) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let tgid = thread_group(proc, tid)?;
            pidfd_open_raw(tgid, 0)
        }
        other => other,
    }
}

/// A pidfd for a process we know is alive and cannot be reaped under us (our child).
pub fn pidfd_open_child(pid: i32) -> io::Result<OwnedFd> {
    pidfd_open_raw(pid, 0)
}

/// The thread group (process) id of thread `tid`.
pub fn thread_group(proc: &ProcFs, tid: i32) -> io::Result<i32> {
    let status = proc.read(&format!("{tid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))
}

/// A copy of the target's fd `fd` (close-on-exec in our table).
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes a pidfd, an fd number and flags (must be 0); returns a new fd.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) })
}

/// Read exactly `buf.len()` bytes at `addr` in thread `tid`'s memory. A partial read (the
/// range crosses into unmapped memory) is `EFAULT`, as the kernel would report.
pub fn read_mem(tid: i32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let len = buf.len();
    let base = usize::try_from(addr).map_err(|_| io::Error::from_raw_os_error(libc::EFAULT))?;
    let remote = [RemoteIoVec { base, len }];
    let n = process_vm_readv(Pid::from_raw(tid), &mut [IoSliceMut::new(buf)], &remote)
        .map_err(io::Error::from)?;
    if n != len {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    Ok(())
}

/// Whether fd `fd` of thread `tid` is close-on-exec (from `/proc/TID/fdinfo/FD`).
pub fn fd_cloexec(proc: &ProcFs, tid: i32, fd: RawFd) -> io::Result<bool> {
    let info = proc.read(&format!("{tid}/fdinfo/{fd}"))?;
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok(flags & libc::O_CLOEXEC as u32 != 0)
}

// --- socket calls on raw fds and bytes -------------------------------------------------------

/// `getsockopt` into `buf`; returns the length the kernel wrote.
pub fn getsockopt_raw(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut len = libc::socklen_t::try_from(buf.len()).unwrap_or(libc::socklen_t::MAX);
    // SAFETY: the kernel writes at most `len` bytes to `buf` (exclusively borrowed) and the
    // actual length to `len`.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    Ok((len as usize).min(buf.len()))
}

/// `setsockopt` with raw bytes.
pub fn setsockopt_raw(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    val: &[u8],
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(val.len())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the kernel reads `len` bytes from `val`, which lives across the call.
    cvt(unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, val.as_ptr().cast(), len) })
        .map(|_| ())
}

/// An int socket option.
pub fn getsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut b = [0u8; 4];
    getsockopt_raw(fd, level, name, &mut b)?;
    Ok(libc::c_int::from_ne_bytes(b))
}

/// The cookie of the socket's network namespace (`SO_NETNS_COOKIE`).
pub fn netns_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut b = [0u8; 8];
    getsockopt_raw(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE, &mut b)?;
    Ok(u64::from_ne_bytes(b))
}

fn addr_len(addr: &[u8]) -> io::Result<libc::socklen_t> {
    libc::socklen_t::try_from(addr.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `connect(fd, addr)` with the address as raw bytes.
pub fn connect_raw(fd: BorrowedFd<'_>, addr: &[u8]) -> io::Result<()> {
    let len = addr_len(addr)?;
    // SAFETY: the kernel reads `len` bytes of address from `addr` (it copies them first and
    // checks the length and family itself); the buffer lives across the call.
    cvt(unsafe { libc::connect(fd.as_raw_fd(), addr.as_ptr().cast(), len) }).map(|_| ())
}

/// `bind(fd, addr)` with the address as raw bytes.
pub fn bind_raw(fd: BorrowedFd<'_>, addr: &[u8]) -> io::Result<()> {
    let len = addr_len(addr)?;
    // SAFETY: as in connect_raw.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), addr.as_ptr().cast(), len) }).map(|_| ())
}

/// `listen(fd, backlog)`.
pub fn listen(fd: BorrowedFd<'_>, backlog: libc::c_int) -> io::Result<()> {
    // SAFETY: integer arguments only.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map(|_| ())
}

/// `getsockname` as raw bytes (at most 128).
pub fn getsockname_raw(fd: BorrowedFd<'_>, buf: &mut [u8; 128]) -> io::Result<usize> {
    let mut len: libc::socklen_t = 128;
    // SAFETY: the kernel writes at most `len` (128) bytes into `buf` and the full length to
    // `len`.
    cvt(unsafe { libc::getsockname(fd.as_raw_fd(), buf.as_mut_ptr().cast(), &mut len) })?;
    Ok((len as usize).min(buf.len()))
}

/// `sendmsg(fd, {name, iov, control}, flags)`.
pub fn sendmsg_raw(
    fd: BorrowedFd<'_>,
    name: Option<&[u8]>,
    iov: &[IoSlice<'_>],
    control: &[u8],
    flags: libc::c_int,
) -> io::Result<usize> {
    // SAFETY: msghdr is plain data; all-zero is a valid empty message.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    if let Some(n) = name {
        msg.msg_name = n.as_ptr().cast_mut().cast();
        msg.msg_namelen = addr_len(n)?;
    }
    // IoSlice is ABI-compatible with struct iovec.
    msg.msg_iov = iov.as_ptr().cast_mut().cast();
    msg.msg_iovlen = iov.len() as _;
    if !control.is_empty() {
        msg.msg_control = control.as_ptr().cast_mut().cast();
        msg.msg_controllen = control.len() as _;
    }
    // SAFETY: every pointer in `msg` refers to a buffer borrowed for the duration of the call
    // (the kernel only reads them for sendmsg).
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// One non-blocking `recvmsg` on a stream: data into `buf` (returns its length; 0 = end of
/// file), up to 8 SCM_RIGHTS fds appended to `fds` (close-on-exec).
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut cmsg = nix::cmsg_space!([RawFd; 8]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    if let Ok(cmsgs) = msg.cmsgs() {
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
    Ok(msg.bytes)
}

/// `socket(domain, type | SOCK_NONBLOCK | SOCK_CLOEXEC, protocol)` in our network namespace.
pub fn socket(domain: libc::c_int, ty: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments; returns a new fd or -1.
    let fd = unsafe {
        libc::socket(
            domain,
            ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    owned(libc::c_long::from(fd))
}

/// The size of the kernel's notification structures as this build knows them; checked
/// against `SECCOMP_GET_NOTIF_SIZES` at start-up.
pub fn check_notif_sizes() -> io::Result<()> {
    // SAFETY: seccomp_notif_sizes is plain integers.
    let mut sizes: libc::seccomp_notif_sizes = unsafe { zeroed() };
    // SAFETY: SECCOMP_GET_NOTIF_SIZES writes one seccomp_notif_sizes into `sizes`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_NOTIF_SIZES,
            0,
            &mut sizes as *mut libc::seccomp_notif_sizes,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if usize::from(sizes.seccomp_notif) > size_of::<libc::seccomp_notif>()
        || usize::from(sizes.seccomp_notif_resp) > size_of::<libc::seccomp_notif_resp>()
    {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "kernel seccomp notification structures are larger than this build knows ({} / {} bytes)",
                sizes.seccomp_notif, sizes.seccomp_notif_resp
            ),
        ));
    }
    Ok(())
}

/// A printable name for a syscall number we trap (for logs).
pub fn call_name(nr: i32) -> &'static str {
    match classify(nr) {
        Some(Call::Connect) => "connect",
        Some(Call::Bind) => "bind",
        Some(Call::Listen) => "listen",
        Some(Call::GetPeerName) => "getpeername",
        Some(Call::SendTo) => "sendto",
        Some(Call::SendMsg) => "sendmsg",
        Some(Call::SendMmsg) => "sendmmsg",
        None => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOW: u32 = RET_ALLOW;
    const NOTIFY: u32 = RET_NOTIFY;

    fn errno(e: i32) -> u32 {
        libc::SECCOMP_RET_ERRNO | e as u32
    }

    fn nr(n: i64) -> i32 {
        n as i32
    }

    #[test]
    fn program_traps_what_the_rules_say() {
        for udp in [false, true] {
            let p = Program::new(udp);
            let a = arch::NATIVE;
            let z = [0u64; 6];
            assert_eq!(p.eval(a, nr(libc::SYS_connect), z), NOTIFY);
            assert_eq!(p.eval(a, nr(libc::SYS_bind), z), NOTIFY);
            assert_eq!(p.eval(a, nr(libc::SYS_listen), z), NOTIFY);
            assert_eq!(p.eval(a, nr(libc::SYS_getpeername), z), NOTIFY);
            assert_eq!(
                p.eval(a, nr(libc::SYS_io_uring_setup), z),
                errno(libc::ENOSYS)
            );
            for n in [
                libc::SYS_read,
                libc::SYS_write,
                libc::SYS_close,
                libc::SYS_socket,
                libc::SYS_setsockopt,
                libc::SYS_fcntl,
                libc::SYS_recvfrom,
                libc::SYS_accept4,
                libc::SYS_execve,
            ] {
                assert_eq!(p.eval(a, nr(n), [3, 1, 2, 3, 4, 5]), ALLOW, "{n}");
            }
            // send() is sendto with a NULL address: never trapped.
            assert_eq!(p.eval(a, nr(libc::SYS_sendto), [3, 1, 2, 0, 0, 0]), ALLOW);
            let fo = libc::MSG_FASTOPEN as u64;
            if udp {
                assert_eq!(
                    p.eval(a, nr(libc::SYS_sendto), [3, 1, 2, 0, 0x1000, 16]),
                    NOTIFY
                );
                // A pointer with only high bits set is still a pointer.
                assert_eq!(
                    p.eval(a, nr(libc::SYS_sendto), [3, 1, 2, 0, 0x7f00_0000_0000, 16]),
                    NOTIFY
                );
                assert_eq!(p.eval(a, nr(libc::SYS_sendmsg), z), NOTIFY);
                assert_eq!(p.eval(a, nr(libc::SYS_sendmmsg), z), NOTIFY);
            } else {
                assert_eq!(
                    p.eval(a, nr(libc::SYS_sendto), [3, 1, 2, 0, 0x1000, 16]),
                    ALLOW
                );
                assert_eq!(
                    p.eval(a, nr(libc::SYS_sendto), [3, 1, 2, fo | 0x40, 0x1000, 16]),
                    errno(libc::EOPNOTSUPP)
                );
                assert_eq!(
                    p.eval(a, nr(libc::SYS_sendmsg), [3, 0x1000, 0, 0, 0, 0]),
                    ALLOW
                );
                assert_eq!(
                    p.eval(a, nr(libc::SYS_sendmsg), [3, 0x1000, fo, 0, 0, 0]),
                    errno(libc::EOPNOTSUPP)
                );
                assert_eq!(
                    p.eval(a, nr(libc::SYS_sendmmsg), [3, 0x1000, 2, fo, 0, 0]),
                    errno(libc::EOPNOTSUPP)
                );
                assert_eq!(
                    p.eval(a, nr(libc::SYS_sendmmsg), [3, 0x1000, 2, 0, 0, 0]),
                    ALLOW
                );
            }
            // Compat ABI: the socket calls that can set a destination are refused.
            for n in arch::COMPAT_DENY {
                assert_eq!(p.eval(arch::COMPAT, n as i32, z), errno(libc::ENOSYS));
            }
            assert_eq!(p.eval(arch::COMPAT, 3, z), ALLOW);
            for n in arch::X32_DENY {
                assert_eq!(p.eval(a, n as i32, z), errno(libc::ENOSYS));
            }
            // Unknown arch: allowed (the kernel has none other).
            assert_eq!(p.eval(0x1234, nr(libc::SYS_connect), z), ALLOW);
            assert!(p.len() < 120, "{}", p.len());
        }
    }

    #[test]
    fn native_detection() {
        assert!(is_native(arch::NATIVE, nr(libc::SYS_connect)));
        assert!(!is_native(arch::COMPAT, nr(libc::SYS_connect)));
        if arch::X32_BIT != 0 {
            assert!(!is_native(arch::NATIVE, arch::X32_BIT | 42));
        }
    }

    #[test]
    fn oci_profile_lists_every_rule() {
        for udp in [false, true] {
            let v = oci_profile(udp, "/run/x.sock");
            assert_eq!(v["listenerPath"], "/run/x.sock");
            assert_eq!(v["defaultAction"], "SCMP_ACT_ALLOW");
            let names: Vec<&str> = v["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["names"][0].as_str().unwrap())
                .collect();
            for r in rules(udp) {
                assert!(names.contains(&r.name), "{}", r.name);
            }
            assert_eq!(v["listenerMetadata"], profile_metadata(udp));
        }
        let v = oci_profile(true, "/x");
        let sendto = v["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["names"][0] == "sendto")
            .unwrap();
        assert_eq!(sendto["args"][0]["index"], 4);
        assert_eq!(sendto["args"][0]["op"], "SCMP_CMP_NE");
    }

    #[test]
    fn classify_matches_rules() {
        for r in rules(true) {
            if r.action == Action::Notify {
                assert!(classify(r.nr as i32).is_some(), "{}", r.name);
                assert_eq!(call_name(r.nr as i32), r.name);
            }
        }
    }
}
