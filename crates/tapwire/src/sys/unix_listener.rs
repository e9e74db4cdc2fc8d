//! The daemon's listening UNIX sockets (`--api-socket`, `--seccomp-listener`): created owner-only,
//! never through a symbolic link, removed at exit only if the file is still ours; and the
//! credentials of a connected peer.
//!
//! # Theory of operation
//! Both sockets are doors into the daemon (the API adds port forwards; the runtimes' socket
//! takes seccomp listeners whose sockets the daemon then makes on the host), so:
//!
//! - **Mode 0600** whatever the caller's umask: the umask is set to 0177 around `bind` (the
//!   kernel applies it to the socket file atomically, there is no window with a wider mode).
//!   Start-up is single-threaded, so the process-wide umask change affects nothing else.
//! - **No symbolic link at the path** ([`Existing`]): `lstat` first; a symlink is refused with
//!   a clear error instead of being replaced. A directory is refused. What else may already be
//!   there depends on the socket: the API socket replaces any other file (slirp4netns does
//!   too); the runtimes' socket replaces only a *stale* socket (nobody listening: `connect`
//!   fails with `ECONNREFUSED`) and refuses anything else, so a second daemon cannot steal a
//!   live one's path.
//! - **Removal at exit** ([`BoundPath::remove_if_ours`]) compares the device and inode recorded
//!   after `bind`: a file put there by someone else since is left alone.
//! - A large listen backlog ([`BACKLOG`], capped by `net.core.somaxconn`): connections that
//!   wait their turn stay in the kernel rather than being refused.
//!
//! [`peer_cred`] is `SO_PEERCRED` (pid, uid, gid of the connecting process, as the kernel
//! recorded them at `connect`, translated into our namespaces).
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Listen backlog asked for (the kernel caps it at `net.core.somaxconn`, 4096 by default).
pub const BACKLOG: i32 = 4096;

/// What may already exist at the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Any file but a symlink or a directory is replaced (the API socket, as slirp4netns).
    Replace,
    /// Only a socket nobody listens on is replaced (the runtimes' socket).
    StaleSocketOnly,
}

/// A socket file we created: its path and identity.
#[derive(Debug, Clone)]
pub struct BoundPath {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl BoundPath {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remove the file if it is still the socket we created (same device and inode).
    pub fn remove_if_ours(&self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if m.dev() == self.dev && m.ino() == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

fn refuse(kind: io::ErrorKind, what: &str) -> io::Error {
    io::Error::new(kind, what.to_owned())
}

/// Make room at `path` per `existing` (see the module documentation).
fn clear(path: &Path, existing: Existing) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let ty = meta.file_type();
    if ty.is_symlink() {
        return Err(refuse(
            io::ErrorKind::InvalidInput,
            "the path is a symbolic link; refusing to follow or replace it",
        ));
    }
    if ty.is_dir() {
        return Err(refuse(
            io::ErrorKind::InvalidInput,
            "the path is a directory",
        ));
    }
    match existing {
        Existing::Replace => {}
        Existing::StaleSocketOnly if !ty.is_socket() => {
            return Err(refuse(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket; refusing to replace it",
            ))
        }
        Existing::StaleSocketOnly => match UnixStream::connect(path) {
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {}
            Ok(_) => {
                return Err(refuse(
                    io::ErrorKind::AddrInUse,
                    "a server is listening on this socket (another daemon?)",
                ))
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("the path exists and cannot be checked for staleness: {e}"),
                ))
            }
        },
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Bind a non-blocking, close-on-exec listening socket at `path`, mode 0600, backlog
/// [`BACKLOG`]. Call during single-threaded start-up (the umask is process-wide).
pub fn bind(path: &Path, existing: Existing) -> io::Result<(UnixListener, BoundPath)> {
    clear(path, existing)?;
    let sock = socket2::Socket::new(
        socket2::Domain::UNIX,
        socket2::Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    let addr = socket2::SockAddr::unix(path)?;
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = sock.bind(&addr);
    nix::sys::stat::umask(old);
    bound?;
    let meta = std::fs::symlink_metadata(path)?;
    let ours = BoundPath {
        path: path.to_owned(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    if let Err(e) = sock.listen(BACKLOG) {
        ours.remove_if_ours();
        return Err(e);
    }
    Ok((UnixListener::from(std::os::fd::OwnedFd::from(sock)), ours))
}

/// A connected peer's credentials (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// `SO_PEERCRED` of a connected UNIX stream.
pub fn peer_cred(stream: &impl AsFd) -> io::Result<PeerCred> {
    let c = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)?;
    Ok(PeerCred {
        pid: c.pid(),
        uid: c.uid(),
        gid: c.gid(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tapwire-ul-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn mode_is_0600_under_any_umask() {
        let d = tmp("mode");
        let p = d.join("s");
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let r = bind(&p, Existing::StaleSocketOnly);
        nix::sys::stat::umask(old);
        let (_l, ours) = r.unwrap();
        let mode = std::fs::symlink_metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        ours.remove_if_ours();
        assert!(!p.exists());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn symlinks_live_sockets_and_files_are_refused() {
        let d = tmp("refuse");
        let target = d.join("target");
        let link = d.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for ex in [Existing::Replace, Existing::StaleSocketOnly] {
            let e = bind(&link, ex).unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{e}");
        }
        assert!(!target.exists(), "nothing created through the link");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());

        let file = d.join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(bind(&file, Existing::StaleSocketOnly).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"x", "file untouched");
        // The API replaces it (slirp4netns compatibility).
        let (_l, ours) = bind(&file, Existing::Replace).unwrap();

        // A live socket is refused; once its listener is gone it is stale and replaced.
        let e = bind(&file, Existing::StaleSocketOnly).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        drop(_l);
        let (_l2, ours2) = bind(&file, Existing::StaleSocketOnly).unwrap();
        // A file put in place of our socket (ours2 still open: its inode cannot be reused) is
        // not ours to remove.
        std::fs::remove_file(&file).unwrap();
        std::fs::write(&file, "other").unwrap();
        ours2.remove_if_ours();
        assert_eq!(std::fs::read(&file).unwrap(), b"other");
        drop(ours);
        let _ = std::fs::remove_dir_all(d);
    }
}
