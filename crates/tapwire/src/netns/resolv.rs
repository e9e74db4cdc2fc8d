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
#![forbid(unsafe_code)]

use std::ffi::CStr;
use std::io::{self, Write as _};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::{errno, setup_err, NetnsError};
use crate::sys::mount;

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
    let tree = mount::open_tree_clone(file, false)?;
    mount::move_mount_to(tree.as_fd(), c"/etc/resolv.conf")
}
