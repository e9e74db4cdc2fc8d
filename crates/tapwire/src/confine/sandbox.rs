//! The daemon's sandbox (`--enable-sandbox`; on by default in run mode): a private mount
//! namespace whose root is an empty read-only tmpfs, no_new_privs, and no capabilities.
//!
//! # Theory of operation
//! Once the engine holds every fd it needs (TAP, signalfd, epoll, API listener, `-p` sockets),
//! the daemon needs almost nothing from the file system: it reads the host's resolv.conf (the
//! DNS forwarder follows changes to it) and unlinks the API socket on exit. So [`apply`]
//! builds a root that holds exactly that and nothing else:
//!
//! ```text
//! /                      tmpfs, 16 KiB, read-only, nosuid,nodev,noexec
//! /etc/resolv.conf       read-only bind of the host's file (its final target if a symlink)
//! <each socket's dir>    read-write bind: the API socket's, `--seccomp-listener`'s (the
//!                        sockets are unlinked at exit)
//! <cwd>                  empty directory (or the API dir), so relative paths keep meaning
//! ```
//!
//! Steps, in this order (each one fails with a [`SandboxError`] naming the step):
//!
//! 1. **Privilege for the mount namespace.** Real root (CAP_SYS_ADMIN in our user namespace)
//!    goes on. An unprivileged daemon first joins the guest's user namespace when one is given
//!    (like slirp4netns: we own it, so we get capabilities there), else it creates a fresh one
//!    mapping only its own uid and gid. `setns`/`unshare(CLONE_NEWUSER)` need a single-threaded
//!    process, so the sandbox comes before any thread is started.
//! 2. `unshare(CLONE_NEWNS)`, then `/` is made recursively private so nothing propagates back.
//! 3. The kept files are captured as detached mounts with `open_tree(OPEN_TREE_CLONE)` *before*
//!    anything is mounted over them (the staging directory might otherwise hide them, e.g. an
//!    API socket under `/tmp`). Linux >= 5.2.
//! 4. A tmpfs is mounted on a staging directory (`/tmp`, else `/run`, `/mnt`, `/var/tmp`), the
//!    skeleton is created in it, the captured mounts are moved in with `move_mount`, and
//!    resolv.conf is remounted read-only (keeping the flags the kernel locks for a less
//!    privileged user namespace: nosuid, nodev, noexec, atime).
//! 5. `pivot_root(".", ".")` inside the staging tmpfs and `umount2(".", MNT_DETACH)` drop the
//!    old root entirely; the new root is remounted read-only.
//! 6. `PR_SET_NO_NEW_PRIVS`; every capability leaves the bounding set and the ambient set; the
//!    permitted and effective sets keep only CAP_NET_BIND_SERVICE when asked to (below),
//!    inheritable is emptied.
//!
//! # CAP_NET_BIND_SERVICE
//! Kept only when [`Policy::keep_net_bind_service`] is set, which the daemon does when a `-p`
//! forward given at start-up has a host port below 1024, and only when the daemon did not have
//! to enter a user namespace in step 1 (a capability in a child user namespace does not
//! apply to the host's network namespace anyway). The start-up forwards are opened *before*
//! the sandbox, so they never depend on it; the capability is kept for forwards added later
//! over the API. Without it, an `add_hostfwd` with a host port below 1024 fails with
//! `slirp_add_hostfwd failed` (the log says `Permission denied`), unless the host's
//! `net.ipv4.ip_unprivileged_port_start` allows the port.
//!
//! # CAP_SYS_PTRACE (run mode with `--bypass`)
//! The bypass supervisor copies fds out of the command's processes (`pidfd_getfd`) and reads
//! their memory, which needs ptrace rights over them. A root daemon has them without any
//! capability: it owns the command's user namespace from the parent namespace. An unprivileged
//! daemon has joined that very user namespace in step 1, where the command is root with every
//! capability, so it keeps CAP_SYS_PTRACE *in that namespace* ([`Policy::keep_ptrace`]): it
//! reaches the command's processes and nothing outside them.
//!
//! # Limits
//! - resolv.conf is bind-mounted by inode: edits in place are seen through it, a file
//!   *replaced* on the host by rename (NetworkManager's way) is not; the DNS forwarder
//!   (`engine::dns`) therefore also keeps the file's directory open from before the sandbox
//!   and reads the new file by name there.
//! - If resolv.conf does not exist at start-up, it will not appear later (DNS forwarding has
//!   no upstream, as without the sandbox).
//! - No `/proc`, `/dev` or `/sys` inside: anything that needs them must open them before.
//!
//! Syscalls: `capget`, `setns`, `unshare`, `open`/`write` on `/proc/self/{setgroups,uid_map,
//! gid_map}`, `mount`, `open_tree`, `move_mount`, `statfs`, `mkdir`, `symlink`, `chdir`,
//! `pivot_root`, `umount2`, `prctl`, `capset` (`open_tree`/`move_mount` through [`crate::sys::mount`]).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::sys::mount as mount_api;

/// The capability that lets a socket bind a port below 1024.
pub const CAP_NET_BIND_SERVICE: u32 = 10;
/// The capability that gives ptrace rights (bypass, see the module documentation).
pub const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
/// Staging directories for the new root, first existing one wins.
const STAGING: [&str; 4] = ["/tmp", "/run", "/mnt", "/var/tmp"];
const TMPFS_OPTIONS: &str = "size=16k,nr_inodes=64,mode=0755";

/// Errors from building the sandbox; each names the step and the resource.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A step failed with an OS error.
    #[error("sandbox: {step}: {source}")]
    Step { step: String, source: io::Error },
    /// Joining a user namespace was refused because threads are running.
    #[error("sandbox: setns into user namespace {0}: the process must be single-threaded (start the sandbox before any thread)")]
    Threaded(PathBuf),
    /// No staging directory exists for the new root.
    #[error("sandbox: none of {STAGING:?} exists to stage the new root")]
    NoStaging,
    /// A path to keep cannot be represented (NUL byte, not absolute after canonicalization).
    #[error("sandbox: bad path {0:?}")]
    BadPath(PathBuf),
}

fn step(what: impl Into<String>, e: impl Into<io::Error>) -> SandboxError {
    SandboxError::Step {
        step: what.into(),
        source: e.into(),
    }
}

fn nix_err(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// What the sandbox keeps.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The user namespace to join when the daemon is not privileged (the guest's); `None`
    /// creates a fresh one in that case.
    pub userns: Option<PathBuf>,
    /// resolv.conf to keep visible at the same path (normally `/etc/resolv.conf`).
    pub resolv_conf: Option<PathBuf>,
    /// UNIX sockets the daemon serves (API, seccomp listener): their directories stay
    /// visible, read-write.
    pub sockets: Vec<PathBuf>,
    /// Keep CAP_NET_BIND_SERVICE (see the module documentation).
    pub keep_net_bind_service: bool,
    /// Keep CAP_SYS_PTRACE when a user namespace was entered (run mode with bypass; see the
    /// module documentation).
    pub keep_ptrace: bool,
}

impl Policy {
    /// The daemon's policy: resolv.conf, the directories of `sockets` (`None`s are skipped),
    /// CAP_NET_BIND_SERVICE if a start-up forward's host port is below 1024.
    pub fn daemon(
        userns: Option<PathBuf>,
        sockets: &[Option<&Path>],
        lowest_host_port: Option<u16>,
    ) -> Policy {
        Policy {
            userns,
            resolv_conf: Some(PathBuf::from("/etc/resolv.conf")),
            sockets: sockets.iter().flatten().map(|p| p.to_path_buf()).collect(),
            keep_net_bind_service: lowest_host_port.is_some_and(|p| p < 1024),
            keep_ptrace: false,
        }
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The daemon had to enter (or create) a user namespace.
    pub entered_userns: bool,
    /// Bit mask of the capabilities left in the permitted and effective sets.
    pub caps: u64,
}

/// Build the sandbox described in the module documentation. Call it once, single-threaded,
/// after every fd the daemon needs is open.
pub fn apply(policy: &Policy) -> Result<Applied, SandboxError> {
    let entered_userns = enter_privileged(policy.userns.as_deref())?;
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| step("unshare(CLONE_NEWNS)", nix_err(e)))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| step("make / private", nix_err(e)))?;

    let cwd = std::env::current_dir().ok().filter(|p| p.is_absolute());
    let keep = Keep::capture(policy)?;
    let staging = STAGING
        .iter()
        .map(Path::new)
        .find(|p| p.is_dir())
        .ok_or(SandboxError::NoStaging)?;
    mount(
        Some("tmpfs"),
        staging,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(TMPFS_OPTIONS),
    )
    .map_err(|e| step(format!("mount tmpfs on {}", staging.display()), nix_err(e)))?;
    keep.install(staging, cwd.as_deref())?;

    std::env::set_current_dir(staging)
        .map_err(|e| step(format!("chdir {}", staging.display()), e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| step("pivot_root", nix_err(e)))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| step("detach the old root", nix_err(e)))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| step("remount / read-only", nix_err(e)))?;
    let wd = cwd.as_deref().unwrap_or(Path::new("/"));
    std::env::set_current_dir(wd)
        .or_else(|_| std::env::set_current_dir("/"))
        .map_err(|e| step("chdir into the new root", e))?;

    let mut caps = 0u64;
    if policy.keep_net_bind_service && !entered_userns {
        caps |= 1 << CAP_NET_BIND_SERVICE;
    }
    if policy.keep_ptrace && entered_userns {
        caps |= 1 << CAP_SYS_PTRACE;
    }
    drop_privileges(caps)?;
    Ok(Applied {
        entered_userns,
        caps,
    })
}

/// Files and directories captured from the old root as detached mounts.
struct Keep {
    /// (path in the new root, detached mount, is a directory, read-only)
    mounts: Vec<(PathBuf, OwnedFd, bool, bool)>,
    /// (link path, target) for a resolv.conf that is a symlink.
    links: Vec<(PathBuf, PathBuf)>,
}

impl Keep {
    fn capture(policy: &Policy) -> Result<Keep, SandboxError> {
        let mut keep = Keep {
            mounts: Vec::new(),
            links: Vec::new(),
        };
        if let Some(rc) = &policy.resolv_conf {
            match std::fs::canonicalize(rc) {
                Ok(real) => {
                    let fd = open_tree(&real, false)?;
                    if real != *rc {
                        keep.links.push((rc.clone(), real.clone()));
                    }
                    keep.mounts.push((real, fd, false, true));
                }
                Err(e) => {
                    tracing::warn!(
                        "sandbox: {}: {e}; DNS forwarding will have no upstream",
                        rc.display()
                    );
                }
            }
        }
        for sock in &policy.sockets {
            let dir = match sock.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let real = std::fs::canonicalize(&dir)
                .map_err(|e| step(format!("socket directory {}", dir.display()), e))?;
            if real.parent().is_none() {
                // Keeping "/" read-write would undo the sandbox.
                return Err(SandboxError::BadPath(real));
            }
            // The socket is removed at exit by the path it was given: if that goes through a
            // symlink ($XDG_RUNTIME_DIR often does), recreate the link inside.
            if dir.is_absolute() && dir != real && !keep.links.iter().any(|(l, _)| *l == dir) {
                keep.links.push((dir.clone(), real.clone()));
            }
            if keep.mounts.iter().any(|(p, ..)| *p == real) {
                continue;
            }
            let fd = open_tree(&real, true)?;
            keep.mounts.push((real, fd, true, false));
        }
        Ok(keep)
    }

    /// Create the skeleton under `root` and move the captured mounts in.
    fn install(self, root: &Path, cwd: Option<&Path>) -> Result<(), SandboxError> {
        let under = |p: &Path| -> Result<PathBuf, SandboxError> {
            let mut out = root.to_path_buf();
            for c in p.components() {
                match c {
                    Component::RootDir => {}
                    Component::Normal(n) => out.push(n),
                    _ => return Err(SandboxError::BadPath(p.to_path_buf())),
                }
            }
            Ok(out)
        };
        if let Some(cwd) = cwd {
            // Best effort: a very deep working directory may not fit the small tmpfs; the
            // daemon then runs from "/".
            let _ = std::fs::create_dir_all(under(cwd)?);
        }
        for (path, _, is_dir, _) in &self.mounts {
            let target = under(path)?;
            let parent = target.parent().unwrap_or(root);
            std::fs::create_dir_all(parent)
                .map_err(|e| step(format!("mkdir {}", parent.display()), e))?;
            let made = if *is_dir {
                std::fs::create_dir_all(&target)
            } else {
                std::fs::File::create(&target).map(drop)
            };
            made.map_err(|e| step(format!("create {}", target.display()), e))?;
        }
        for (link, target) in &self.links {
            let l = under(link)?;
            if let Some(parent) = l.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| step(format!("mkdir {}", parent.display()), e))?;
            }
            if l.exists() {
                // The link's own path is also a kept path (e.g. both in /etc): nothing to do.
                continue;
            }
            std::os::unix::fs::symlink(target, &l)
                .map_err(|e| step(format!("symlink {}", l.display()), e))?;
        }
        for (path, fd, _, read_only) in self.mounts {
            let target = under(&path)?;
            move_mount(&fd, &target)?;
            if read_only {
                remount_read_only(&target)?;
            }
        }
        Ok(())
    }
}

fn cstring(p: &Path) -> Result<CString, SandboxError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| SandboxError::BadPath(p.to_path_buf()))
}

/// `open_tree(path, OPEN_TREE_CLONE [| AT_RECURSIVE])`: a detached bind mount of `path`.
fn open_tree(path: &Path, recursive: bool) -> Result<OwnedFd, SandboxError> {
    let c = cstring(path)?;
    mount_api::open_tree_clone(&c, recursive).map_err(|e| {
        step(
            format!("open_tree {} (needs Linux >= 5.2)", path.display()),
            e,
        )
    })
}

/// `move_mount(fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`.
fn move_mount(fd: &OwnedFd, target: &Path) -> Result<(), SandboxError> {
    let c = cstring(target)?;
    mount_api::move_mount_to(fd.as_fd(), &c)
        .map_err(|e| step(format!("move_mount onto {}", target.display()), e))
}

/// Remount a bind mount read-only, keeping the flags a less privileged user namespace may not
/// clear (nosuid, nodev, noexec, the atime mode).
fn remount_read_only(target: &Path) -> Result<(), SandboxError> {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let have = statvfs(target)
        .map_err(|e| step(format!("statvfs {}", target.display()), nix_err(e)))?
        .flags();
    let mut flags = MsFlags::MS_REMOUNT
        | MsFlags::MS_BIND
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    for (fs, ms) in [
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if have.contains(fs) {
            flags |= ms;
        }
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(|e| {
        step(
            format!("remount {} read-only", target.display()),
            nix_err(e),
        )
    })
}

/// Make sure we hold CAP_SYS_ADMIN over a user namespace we can build a mount namespace in.
/// Returns whether a user namespace was entered or created.
fn enter_privileged(userns: Option<&Path>) -> Result<bool, SandboxError> {
    if capabilities()?.effective & (1 << CAP_SYS_ADMIN) != 0 {
        return Ok(false);
    }
    match userns {
        Some(path) => {
            let f = std::fs::File::open(path)
                .map_err(|e| step(format!("open user namespace {}", path.display()), e))?;
            match setns(&f, CloneFlags::CLONE_NEWUSER) {
                Ok(()) => {}
                Err(nix::Error::EINVAL) if threaded() => {
                    return Err(SandboxError::Threaded(path.to_path_buf()))
                }
                // Already our own user namespace (setns refuses it): make a fresh one.
                Err(nix::Error::EINVAL) => new_userns()?,
                Err(e) => {
                    return Err(step(
                        format!("setns into user namespace {}", path.display()),
                        nix_err(e),
                    ))
                }
            }
        }
        None => new_userns()?,
    }
    Ok(true)
}

/// A fresh user namespace that maps only our own uid and gid (to themselves).
fn new_userns() -> Result<(), SandboxError> {
    let uid = nix::unistd::geteuid();
    let gid = nix::unistd::getegid();
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| step("unshare(CLONE_NEWUSER)", nix_err(e)))?;
    let write = |file: &str, text: String| {
        std::fs::write(file, text).map_err(|e| step(format!("write {file}"), e))
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
    write("/proc/self/gid_map", format!("{gid} {gid} 1"))
}

fn threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() > 1)
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 uses two of them (capabilities 0-31, 32-63).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The calling thread's capability sets as 64-bit masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

/// `capget(2)` for the calling thread.
pub fn capabilities() -> Result<CapSets, SandboxError> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: `hdr` and `data` are live repr(C) values matching the kernel's v3 layout (a
    // header and two data structs); capget writes only into them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut hdr as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if rc < 0 {
        return Err(step("capget", io::Error::last_os_error()));
    }
    let join = |f: fn(&CapData) -> u32| u64::from(f(&data[0])) | (u64::from(f(&data[1])) << 32);
    Ok(CapSets {
        effective: join(|d| d.effective),
        permitted: join(|d| d.permitted),
        inheritable: join(|d| d.inheritable),
    })
}

/// no_new_privs; empty bounding and ambient sets; permitted = effective = `keep`;
/// inheritable empty.
fn drop_privileges(keep: u64) -> Result<(), SandboxError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(step("PR_SET_NO_NEW_PRIVS", io::Error::last_os_error()));
    }
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(step(
            "clear the ambient capabilities",
            io::Error::last_os_error(),
        ));
    }
    for cap in 0..64u32 {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break; // past the kernel's last capability
            }
            return Err(step(
                format!("drop capability {cap} from the bounding set"),
                e,
            ));
        }
    }
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let lo = (keep & 0xffff_ffff) as u32;
    let hi = (keep >> 32) as u32;
    let data = [
        CapData {
            effective: lo,
            permitted: lo,
            inheritable: 0,
        },
        CapData {
            effective: hi,
            permitted: hi,
            inheritable: 0,
        },
    ];
    // SAFETY: `hdr` and `data` are live repr(C) values matching the kernel's v3 layout;
    // capset only reads `data` (and may write the preferred version into `hdr`).
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if rc < 0 {
        return Err(step("capset", io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_keeps_bind_service_only_below_1024() {
        let p = |port| Policy::daemon(None, &[], port).keep_net_bind_service;
        assert!(!p(None));
        assert!(!p(Some(1024)));
        assert!(!p(Some(8080)));
        assert!(p(Some(80)));
        assert!(p(Some(1023)));
    }

    #[test]
    fn capget_reports_something_consistent() {
        let c = capabilities().unwrap();
        assert_eq!(
            c.effective & !c.permitted,
            0,
            "effective is a subset of permitted"
        );
    }
}
