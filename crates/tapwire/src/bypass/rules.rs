//! The bypass filter: one reviewed rule table and the BPF program built from it.
//!
//! # Theory of operation
//! The rules ([`rules`]) are the single source for both the BPF program that `tapwire run
//! --bypass` installs ([`Program::new`]) and the OCI profile that `tapwire seccomp-profile`
//! prints (`supervisor::oci`). Each rule says why it exists. Calls that can give a socket a
//! destination are trapped (`SECCOMP_RET_USER_NOTIF`) and handled by the supervisor without
//! ever letting the kernel re-read the container's memory for a bypassed socket; calls that
//! would otherwise slip past that (io_uring, the 32-bit and x32 entry points of the socket
//! calls, TCP Fast Open sends without UDP bypass) fail with an errno in the filter itself.
//! Everything else is allowed without a round trip: read, write, send/recv without an
//! address, setsockopt, fcntl, close...
//!
//! The program is built before `fork` ([`Program`]): one arch check, then one self-contained
//! block per rule, each ending in a return. [`Program::eval`] runs it as the kernel would, so
//! the tests check the program itself, not just the table.
//!
//! **Installing** ([`install_listener`]) runs in the forked run-mode child right before
//! `execvp`: `PR_SET_NO_NEW_PRIVS`, then `seccomp(SECCOMP_SET_MODE_FILTER,
//! SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_SPEC_ALLOW)`, which returns the
//! listener fd (SPEC_ALLOW: see [`install_listener`]). It only makes those two syscalls and
//! allocates nothing, so it is safe after `fork` in a threaded parent. The child then hands
//! the listener to the parent before any trapped call (see `netns`).
//!
//! Limits: x86_64 and aarch64 only (the syscall numbers of the compat ABIs are listed per
//! architecture); the filter cannot be removed once installed, and only one listener can exist
//! per filter chain (a nested `tapwire run --bypass` inside another fails with `EBUSY`).
#![allow(unsafe_code)]

use std::os::fd::RawFd;

/// The audit architecture of native syscalls, and the ABIs that reach the same kernel through
/// other syscall numbers.
#[cfg(target_arch = "x86_64")]
pub(crate) mod arch {
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
pub(crate) mod arch {
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
    fn classify_matches_rules() {
        for r in rules(true) {
            if r.action == Action::Notify {
                assert!(classify(r.nr as i32).is_some(), "{}", r.name);
                assert_eq!(call_name(r.nr as i32), r.name);
            }
        }
    }
}
