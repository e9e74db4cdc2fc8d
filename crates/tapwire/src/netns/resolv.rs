//! The run child's `/etc/resolv.conf`: a file naming the DNS forwarder, mounted over it.
//!
//! Theory of operation: a bind mount needs a source inside our mount namespace (a memfd is
//! not, and the kernel refuses it), so a small tmpfs is mounted on a staging directory (`/tmp`,
//! else `/run`, `/mnt`, `/var/tmp`), the file is written there and bind-mounted over
//! `/etc/resolv.conf` (following a symlink to its target), and the staging tmpfs is detached
//! again; the bind mount keeps its file alive. If `/etc/resolv.conf` is a dangling symlink, the
//! file is mounted over the symlink itself with `open_tree(2)` + `move_mount(2)` (Linux >= 5.2).
//! If it does not exist at all, setup fails with a message saying so. Runs in the child, in its
//! private mount namespace, after `/` was made recursively private.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io::{self, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::{errno, setup_err, NetnsError};

const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Staging directories for the resolv.conf tmpfs, tried in order, with the file path in each.
const STAGING: [(&str, &CStr); 4] = [
    ("/tmp", c"/tmp/resolv.conf"),
    ("/run", c"/run/resolv.conf"),
    ("/mnt", c"/mnt/resolv.conf"),
    ("/var/tmp", c"/var/tmp/resolv.conf"),
];

/// Mount a file containing `content` over `/etc/resolv.conf` (in our private mount namespace).
pub(super) fn override_resolv_conf(content: &[u8]) -> Result<(), NetnsError> {
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
