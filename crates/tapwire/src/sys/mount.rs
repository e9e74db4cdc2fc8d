//! The new mount API: detached bind mounts (`open_tree`) and attaching them (`move_mount`).
//!
//! # Theory of operation
//! `open_tree(OPEN_TREE_CLONE)` captures a file or directory as a detached mount held by an
//! fd (Linux >= 5.2): it keeps referring to what the path named at that moment, even if
//! something is mounted over the path later. `move_mount(fd, "", AT_FDCWD, target,
//! MOVE_MOUNT_F_EMPTY_PATH)` attaches it at `target`; without `MOVE_MOUNT_T_SYMLINKS` a final
//! symlink in `target` is not followed, so a file can be mounted over a symlink itself. The
//! daemon's sandbox builds its root this way and the namespace helper mounts resolv.conf so.
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use super::owned;

/// `open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC [| AT_RECURSIVE])`: a
/// detached bind mount of `path` (with the mounts under it if `recursive`).
pub fn open_tree_clone(path: &CStr, recursive: bool) -> io::Result<OwnedFd> {
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: `path` is a NUL-terminated string alive across the call; open_tree reads only it
    // and returns a new fd or -1.
    owned(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) })
}

/// `move_mount(tree, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`: attach the detached
/// mount `tree` at `target` (a final symlink is not followed).
pub fn move_mount_to(tree: BorrowedFd<'_>, target: &CStr) -> io::Result<()> {
    // SAFETY: `tree` is an open fd borrowed for the call; both strings are NUL-terminated and
    // alive across the call; move_mount only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
