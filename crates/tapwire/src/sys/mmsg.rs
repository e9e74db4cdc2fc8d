//! Batched datagram I/O: `recvmmsg(2)` and `sendmmsg(2)` on connected UDP sockets.
//!
//! # Theory of operation
//! One syscall moves up to [`MAX_BATCH`] datagrams. The message and iovec arrays are built on
//! the stack for each call over buffers the caller preallocated, so nothing is allocated:
//! - [`recv_batch`] receives into `bufs[i][at..]`, one datagram per buffer, and reports each
//!   length; a datagram longer than its buffer is truncated by the kernel (callers size the
//!   buffers for the largest datagram, 64 KiB).
//! - [`send_batch`] sends `arena[start..start + len]` for each span as one datagram each on a
//!   connected socket (no destination address).
//!
//! Both are non-blocking (`MSG_DONTWAIT`) whatever the socket's mode: `WouldBlock` when
//! nothing could move, otherwise the number of datagrams that did (possibly fewer than asked:
//! `sendmmsg` stops at the first error, which the next call reports).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Most datagrams one call moves.
pub const MAX_BATCH: usize = 64;

/// Receive up to `lens.len()` (and at most [`MAX_BATCH`], one per buffer) datagrams from
/// `fd`, datagram `i` into `bufs[i][at..]`, its length into `lens[i]`. Returns how many.
pub fn recv_batch(
    fd: BorrowedFd<'_>,
    bufs: &mut [Vec<u8>],
    at: usize,
    lens: &mut [usize],
) -> io::Result<usize> {
    let n = bufs.len().min(lens.len()).min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: iovec and mmsghdr are plain C structs for which all-zero is a valid value
    // (null pointers, zero lengths).
    let mut iov: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        let buf = bufs[i].get_mut(at..).unwrap_or_default();
        iov[i] = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        msgs[i].msg_hdr.msg_iov = &mut iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `msgs[..n]` each point at one iovec describing a live, exclusively borrowed
    // buffer (`bufs[i][at..]`) that outlives the call; no names or control data are asked
    // for; the timeout is null. The kernel writes only into those buffers and `msg_len`.
    let rc = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let got = rc as usize;
    for i in 0..got.min(n) {
        lens[i] = msgs[i].msg_len as usize;
    }
    Ok(got.min(n))
}

/// Send each span `(start, len)` of `arena` as one datagram on the connected socket `fd`, at
/// most [`MAX_BATCH`] of them. Returns how many were sent; spans outside `arena` are an
/// `InvalidInput` error before anything is sent.
pub fn send_batch(fd: BorrowedFd<'_>, arena: &[u8], spans: &[(usize, usize)]) -> io::Result<usize> {
    let n = spans.len().min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: all-zero iovec/mmsghdr are valid (null pointers, zero lengths).
    let mut iov: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    for (i, &(start, len)) in spans[..n].iter().enumerate() {
        let Some(bytes) = start.checked_add(len).and_then(|end| arena.get(start..end)) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        iov[i] = libc::iovec {
            // The kernel only reads through this pointer (sendmmsg).
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        };
        msgs[i].msg_hdr.msg_iov = &mut iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `msgs[..n]` each point at one iovec over a live slice of `arena` (checked in
    // bounds above) that outlives the call; sendmmsg only reads them and writes `msg_len`.
    let rc = unsafe {
        libc::sendmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    #[test]
    fn batch_round_trip_on_loopback() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        let arena: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
        let spans = [(0, 1), (1, 1400), (1401, 0), (1401, 2599)];
        assert_eq!(send_batch(a.as_fd(), &arena, &spans).unwrap(), 4);
        let mut bufs = vec![vec![0u8; 3000]; 8];
        let mut lens = [0usize; 8];
        let mut got = 0;
        while got < 4 {
            match recv_batch(b.as_fd(), &mut bufs[got..], 5, &mut lens[got..]) {
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        for (i, &(start, len)) in spans.iter().enumerate() {
            assert_eq!(lens[i], len);
            assert_eq!(&bufs[i][5..5 + len], &arena[start..start + len]);
        }
        let err = recv_batch(b.as_fd(), &mut bufs, 5, &mut lens).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // Bad spans are refused before anything is sent.
        let err = send_batch(a.as_fd(), &arena, &[(3999, 2)]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = send_batch(a.as_fd(), &arena, &[(usize::MAX, 2)]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(send_batch(a.as_fd(), &arena, &[]).unwrap(), 0);
    }
}
