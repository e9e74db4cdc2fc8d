//! Unit tests of the allow-list: the lists' invariants, and the compiled filter run in forked
//! children (allowed calls survive, forbidden ones and unpinned arguments kill).
#![allow(unsafe_code)] // the tests fork and make raw syscalls to probe the filter
use super::*;
use std::collections::HashSet;
use std::os::fd::AsRawFd;

#[test]
fn no_call_is_listed_twice() {
    for list in [entries().collect::<Vec<_>>(), BYPASS.iter().collect()] {
        let mut nrs = HashSet::new();
        let mut names = HashSet::new();
        for e in list {
            assert!(nrs.insert(e.nr), "{} ({}) listed twice", e.name, e.nr);
            assert!(names.insert(e.name), "{} listed twice", e.name);
            assert!(!e.who.is_empty(), "{} has no reason", e.name);
        }
    }
}

#[test]
fn forbidden_calls_are_not_listed() {
    let forbidden = [
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_setns,
        libc::SYS_unshare,
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_fork,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_kexec_load,
        libc::SYS_reboot,
        libc::SYS_open_by_handle_at,
        libc::SYS_bpf,
        libc::SYS_keyctl,
        libc::SYS_userfaultfd,
        libc::SYS_perf_event_open,
    ];
    for e in entries_for(true) {
        assert!(!forbidden.contains(&e.nr), "{} must not be allowed", e.name);
    }
}

#[test]
fn bypass_only_calls_stay_out_of_the_plain_daemon() {
    for nr in [
        libc::SYS_prctl,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_getfd,
        libc::SYS_pidfd_open,
    ] {
        assert!(entries().all(|e| e.nr != nr), "syscall {nr} in DAEMON");
    }
}

#[test]
fn merged_entries_allow_the_union() {
    // openat: read-only relative to the working directory (DAEMON), or anything relative to
    // the pinned /proc fd (BYPASS; /dev stands in for /proc here).
    let dir = std::fs::File::open("/dev").unwrap();
    let pins = Pins {
        proc_dir: Some(dir.as_raw_fd()),
        ..test_pins()
    };
    let d = dir.as_raw_fd();
    let st = in_filtered_child_with(true, &pins, move || {
        // SAFETY: NUL-terminated paths; fds closed at once.
        unsafe {
            let f = libc::openat(d, c"null".as_ptr(), libc::O_WRONLY);
            let g = libc::openat(libc::AT_FDCWD, c"/dev/null".as_ptr(), libc::O_RDONLY);
            if f < 0 || g < 0 {
                libc::_exit(3);
            }
            libc::close(f);
            libc::close(g);
        }
    });
    assert_eq!(st, nix::sys::wait::WaitStatus::Exited(st.pid().unwrap(), 0));
}

#[test]
fn openat_through_an_unpinned_directory_fd_kills() {
    // An inherited directory fd of the host's / (the sandbox does not close fds).
    let root = std::fs::File::open("/").unwrap();
    let r = root.as_raw_fd();
    let relative = move || {
        // SAFETY: NUL-terminated path; the fd is closed at once.
        unsafe {
            let f = libc::openat(r, c"dev/null".as_ptr(), libc::O_RDONLY);
            if f < 0 {
                libc::_exit(3);
            }
            libc::close(f);
        }
    };
    for bypass in [false, true] {
        let pins = Pins {
            proc_dir: Some(999),
            ..test_pins()
        };
        let st = in_filtered_child_with(bypass, &pins, relative);
        assert!(killed_by_sigsys(st), "bypass {bypass}: {st:?}");
    }
    // Pinned as a kept directory: read-only opens work, writes still kill.
    let pins = Pins {
        read_dirs: vec![r],
        ..test_pins()
    };
    let st = in_filtered_child_with(false, &pins, relative);
    assert_eq!(st, nix::sys::wait::WaitStatus::Exited(st.pid().unwrap(), 0));
    let st = in_filtered_child_with(false, &pins, move || {
        // SAFETY: NUL-terminated path; the call never returns under the filter.
        unsafe { libc::openat(r, c"dev/null".as_ptr(), libc::O_WRONLY) };
    });
    assert!(killed_by_sigsys(st), "{st:?}");
}

#[test]
fn kill_reaches_only_the_pinned_pid() {
    // The pins name the test process (the child cannot be named before it exists); the child
    // may signal it (signal 0: a check only) and nobody else.
    let pins = test_pins();
    let me = pins.own_pid;
    let st = in_filtered_child_with(false, &pins, move || {
        // SAFETY: signal 0 delivers nothing.
        if unsafe { libc::kill(me, 0) } != 0 {
            // SAFETY: _exit is always safe to call.
            unsafe { libc::_exit(3) };
        }
    });
    assert_eq!(st, nix::sys::wait::WaitStatus::Exited(st.pid().unwrap(), 0));
    for target in [1, 0, -1, -me, me + 1] {
        let st = in_filtered_child_with(false, &pins, move || {
            // SAFETY: signal 0 delivers nothing; the call never returns under the filter.
            unsafe { libc::kill(target, 0) };
        });
        assert!(killed_by_sigsys(st), "kill({target}, 0): {st:?}");
    }
    // tgkill: SIGABRT to the pinned thread group only.
    let st = in_filtered_child_with(false, &pins, move || {
        // SAFETY: no such process (the kernel would say ESRCH); the filter refuses it first.
        unsafe { libc::syscall(libc::SYS_tgkill, i32::MAX, i32::MAX, libc::SIGABRT) };
    });
    assert!(killed_by_sigsys(st), "tgkill of another process: {st:?}");
}

#[test]
fn compiles() {
    let pins = Pins {
        read_dirs: vec![5],
        proc_dir: Some(6),
        ..test_pins()
    };
    for bypass in [false, true] {
        let prog = daemon_program(bypass, &pins).unwrap();
        assert!(!prog.is_empty());
        // The kernel limit is 4096 instructions.
        assert!(prog.len() < 4096, "{} instructions", prog.len());
    }
}

fn test_pins() -> Pins {
    Pins::this_process()
}

/// Fork; the child installs the filter, runs `body`, and `_exit(0)`s. Returns how it ended.
fn in_filtered_child(body: fn()) -> nix::sys::wait::WaitStatus {
    in_filtered_child_with(false, &test_pins(), body)
}

fn in_filtered_child_with(
    bypass: bool,
    pins: &Pins,
    body: impl FnOnce(),
) -> nix::sys::wait::WaitStatus {
    use nix::sys::wait::waitpid;
    use nix::unistd::{fork, ForkResult};
    let prog = daemon_program(bypass, pins).unwrap();
    // SAFETY: the child only makes raw syscalls (the program was built before the fork,
    // and `body` allocates nothing) and leaves with _exit; it never returns into the test
    // harness.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            if seccompiler::apply_filter_all_threads(&prog).is_err() {
                // SAFETY: _exit is always safe to call.
                unsafe { libc::_exit(2) };
            }
            body();
            // SAFETY: _exit is always safe to call.
            unsafe { libc::_exit(0) };
        }
        ForkResult::Parent { child } => waitpid(child, None).unwrap(),
    }
}

fn killed_by_sigsys(st: nix::sys::wait::WaitStatus) -> bool {
    matches!(
        st,
        nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSYS, _)
    )
}

#[test]
fn execve_kills_the_process() {
    let st = in_filtered_child(|| {
        let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null()];
        // SAFETY: NUL-terminated path and NULL-terminated argv/envp arrays, all alive.
        unsafe { libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    });
    assert!(killed_by_sigsys(st), "{st:?}");
}

#[test]
fn unix_socket_and_exec_mmap_kill_the_process() {
    let st = in_filtered_child(|| {
        // SAFETY: plain socket(2) call.
        unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    });
    assert!(killed_by_sigsys(st), "AF_UNIX socket: {st:?}");
    let st = in_filtered_child(|| {
        // SAFETY: an anonymous mapping the child never uses.
        unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
    });
    assert!(killed_by_sigsys(st), "PROT_EXEC mmap: {st:?}");
    let st = in_filtered_child(|| {
        // SAFETY: plain fork(2) syscall; the child would _exit at once.
        unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
    });
    assert!(killed_by_sigsys(st), "fork: {st:?}");
}

#[test]
fn allowed_calls_survive() {
    let st = in_filtered_child(|| {
        // SAFETY: plain syscalls on fds the child creates and closes.
        unsafe {
            let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if s < 0 {
                libc::_exit(3);
            }
            let fl = libc::fcntl(s, libc::F_GETFL);
            libc::fcntl(s, libc::F_SETFL, fl | libc::O_NONBLOCK);
            libc::close(s);
            let fd = libc::openat(libc::AT_FDCWD, c"/dev/null".as_ptr(), libc::O_RDONLY);
            libc::close(fd);
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            libc::munmap(p, 4096);
        }
    });
    assert_eq!(st, nix::sys::wait::WaitStatus::Exited(st.pid().unwrap(), 0));
}

#[test]
fn opening_for_write_kills_the_process() {
    let st = in_filtered_child(|| {
        // SAFETY: NUL-terminated path; the call never returns under the filter.
        unsafe { libc::openat(libc::AT_FDCWD, c"/dev/null".as_ptr(), libc::O_WRONLY) };
    });
    assert!(killed_by_sigsys(st), "{st:?}");
}
