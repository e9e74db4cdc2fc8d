//! `splice(2)` between a socket and a pipe, and the pipe itself: the zero-copy data path of
//! `--forward-to-host` (see `engine::splice`).
//!
//! # Theory of operation
//! A spliced TCP byte never enters userspace: `splice(socket -> pipe)` moves page references
//! from the socket's receive queue into a pipe, `splice(pipe -> socket)` hands them to the
//! other socket's send queue. A [`Pipe`] is one direction of one connection: created
//! non-blocking and close-on-exec (`pipe2`), grown with `F_SETPIPE_SZ` to [`PIPE_SIZE`] where
//! the kernel allows it (an unprivileged user past `/proc/sys/fs/pipe-user-pages-soft` keeps
//! the default; the pipe works either way, just in smaller steps), and it counts the bytes it
//! holds so the caller knows how much room is left. Every call is non-blocking
//! (`SPLICE_F_NONBLOCK`; the sockets are non-blocking too): `WouldBlock` means "wait for the
//! next readiness edge".
//!
//! Syscalls: `pipe2`, `fcntl(F_SETPIPE_SZ)`, `splice`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// The pipe capacity asked for: bigger pipes mean fewer splices per megabyte.
pub const PIPE_SIZE: usize = 1 << 20;

/// One direction's pipe and how many bytes are in it.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes spliced in and not yet out.
    pub len: usize,
    /// The capacity the kernel granted.
    pub cap: usize,
}

impl Pipe {
    /// A non-blocking, close-on-exec pipe of up to [`PIPE_SIZE`] bytes.
    pub fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid, writable array of two ints, as pipe2 requires.
        super::cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
        let read = super::owned(fds[0] as libc::c_long)?;
        let write = super::owned(fds[1] as libc::c_long)?;
        // SAFETY: F_SETPIPE_SZ on the pipe we own takes an int size; F_GETPIPE_SZ takes none.
        let cap = unsafe {
            let _ = libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_SIZE as libc::c_int,
            );
            libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ)
        };
        Ok(Pipe {
            read,
            write,
            len: 0,
            cap: usize::try_from(cap).unwrap_or(0).max(4096),
        })
    }

    /// Room left in the pipe.
    #[inline]
    pub fn room(&self) -> usize {
        self.cap.saturating_sub(self.len)
    }

    /// Move up to `room()` bytes from socket `src` into the pipe. `Ok(0)`: end of stream.
    pub fn fill_from(&mut self, src: BorrowedFd<'_>) -> io::Result<usize> {
        let n = splice(src, self.write.as_raw_fd(), self.room())?;
        self.len += n;
        Ok(n)
    }

    /// Move up to `len` bytes from the pipe to socket `dst`.
    pub fn drain_to(&mut self, dst: BorrowedFd<'_>) -> io::Result<usize> {
        let n = splice_out(self.read.as_raw_fd(), dst, self.len)?;
        self.len = self.len.saturating_sub(n);
        Ok(n)
    }
}

const FLAGS: libc::c_uint = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;

fn splice(src: BorrowedFd<'_>, pipe_w: libc::c_int, len: usize) -> io::Result<usize> {
    // SAFETY: both fds are open for the call (`src` is borrowed, `pipe_w` belongs to a live
    // Pipe); null offsets are required for sockets and pipes; splice touches no user memory.
    let n = unsafe {
        libc::splice(
            src.as_raw_fd(),
            std::ptr::null_mut(),
            pipe_w,
            std::ptr::null_mut(),
            len,
            FLAGS,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

fn splice_out(pipe_r: libc::c_int, dst: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: as in `splice`: two open fds, null offsets, no user memory.
    let n = unsafe {
        libc::splice(
            pipe_r,
            std::ptr::null_mut(),
            dst.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            FLAGS,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::os::fd::AsFd as _;
    use std::os::unix::net::UnixStream;

    #[test]
    fn bytes_go_through_the_pipe_unchanged() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let (c, mut d) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut pipe = Pipe::new().unwrap();
        assert!(pipe.cap >= 4096);
        let err = pipe.fill_from(b.as_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        a.write_all(b"hello splice").unwrap();
        assert_eq!(pipe.fill_from(b.as_fd()).unwrap(), 12);
        assert_eq!((pipe.len, pipe.room()), (12, pipe.cap - 12));
        assert_eq!(pipe.drain_to(c.as_fd()).unwrap(), 12);
        assert_eq!(pipe.len, 0);
        let mut got = [0u8; 12];
        d.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello splice");
        drop(a);
        assert_eq!(pipe.fill_from(b.as_fd()).unwrap(), 0, "EOF");
    }
}
