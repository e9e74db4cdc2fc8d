//! Batched datagram I/O: `recvmmsg(2)` and `sendmmsg(2)` on connected UDP sockets.
//!
//! # Theory of operation
//! One syscall moves up to [`MAX_BATCH`] datagrams. The message and iovec arrays are built on
//! the stack for each call over buffers the caller preallocated, so nothing is allocated:
//! - [`recv_batch`] receives into `bufs[i][at..]`, one datagram per buffer, and reports each
//!   length; a datagram longer than its buffer is truncated by the kernel (callers size the
//!   buffers for the largest datagram, 64 KiB). On a socket with `UDP_GRO` ([`set_udp_gro`])
//!   a buffer may hold a train of datagrams of one size coalesced by the kernel: the size
//!   from its `UDP_GRO` control message is reported too (0 for a single datagram).
//! - [`send_batch`] sends `arena[start..start + len]` for each span as one datagram each on a
//!   connected socket (no destination address), or, for a span with a segment size, as a
//!   train the kernel cuts into datagrams of that size (a `UDP_SEGMENT` control message).
//!
//! Both are non-blocking (`MSG_DONTWAIT`) whatever the socket's mode: `WouldBlock` when
//! nothing could move, otherwise the number of datagrams that did (possibly fewer than asked:
//! `sendmmsg` stops at the first error, which the next call reports).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Most datagrams one call moves.
pub const MAX_BATCH: usize = 64;

/// Room for one control message with an int (`CMSG_SPACE(4)` is 24 on 64-bit), 8-aligned.
type CmsgBuf = [u64; 4];

/// Ask the kernel to coalesce datagrams of one size from one peer (`UDP_GRO`, Linux >= 5.0).
pub fn set_udp_gro(fd: BorrowedFd<'_>) -> io::Result<()> {
    let on: libc::c_int = 1;
    crate::sys::socket::setsockopt_raw(fd, libc::SOL_UDP, libc::UDP_GRO, &on.to_ne_bytes())
}

/// The segment size of a `UDP_GRO` control message in `msg`, 0 if there is none.
fn gro_size(msg: &libc::msghdr) -> u16 {
    // SAFETY: `msg` was filled by recvmmsg: msg_control points at our buffer and
    // msg_controllen is what the kernel wrote there, so the CMSG_* walk stays inside it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            let h = &*c;
            if h.cmsg_level == libc::SOL_UDP
                && h.cmsg_type == libc::UDP_GRO
                && h.cmsg_len as usize >= libc::CMSG_LEN(4) as usize
            {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return u16::try_from(v).unwrap_or(0);
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    0
}

/// Receive up to `lens.len()` (and at most [`MAX_BATCH`], one per buffer) datagrams from
/// `fd`, datagram `i` into `bufs[i][at..]`, its length into `lens[i]` and its `UDP_GRO`
/// segment size (0 if it is a single datagram) into `segs[i]`. Returns how many.
pub fn recv_batch(
    fd: BorrowedFd<'_>,
    bufs: &mut [Vec<u8>],
    at: usize,
    lens: &mut [usize],
    segs: &mut [u16],
) -> io::Result<usize> {
    let n = bufs.len().min(lens.len()).min(segs.len()).min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: iovec and mmsghdr are plain C structs for which all-zero is a valid value
    // (null pointers, zero lengths).
    let mut iov: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    let mut cmsgs = [CmsgBuf::default(); MAX_BATCH];
    for i in 0..n {
        let buf = bufs[i].get_mut(at..).unwrap_or_default();
        iov[i] = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        msgs[i].msg_hdr.msg_iov = &mut iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_control = cmsgs[i].as_mut_ptr().cast();
        msgs[i].msg_hdr.msg_controllen = std::mem::size_of::<CmsgBuf>();
    }
    // SAFETY: `msgs[..n]` each point at one iovec describing a live, exclusively borrowed
    // buffer (`bufs[i][at..]`) and at one control buffer (`cmsgs[i]`), all outliving the
    // call; no names are asked for; the timeout is null. The kernel writes only into those
    // buffers, `msg_len` and `msg_controllen`/`msg_flags`.
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
        segs[i] = gro_size(&msgs[i].msg_hdr);
    }
    Ok(got.min(n))
}

/// One message of [`send_batch`]: `len` bytes at `start` of the arena, sent as one datagram
/// (`seg` 0) or as a train of `seg`-byte datagrams (`UDP_SEGMENT`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub len: usize,
    pub seg: u16,
}

/// Send each span of `arena` as one datagram (or one `UDP_SEGMENT` train) on the connected
/// socket `fd`, at most [`MAX_BATCH`] of them. Returns how many were sent; spans outside
/// `arena` are an `InvalidInput` error before anything is sent. The kernel refuses a train
/// whose datagrams do not fit the path MTU with `EMSGSIZE` (`EINVAL` before Linux 6.x),
/// reported for that span.
pub fn send_batch(fd: BorrowedFd<'_>, arena: &[u8], spans: &[Span]) -> io::Result<usize> {
    let n = spans.len().min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: all-zero iovec/mmsghdr are valid (null pointers, zero lengths).
    let mut iov: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    let mut cmsgs = [CmsgBuf::default(); MAX_BATCH];
    for (i, span) in spans[..n].iter().enumerate() {
        let Some(bytes) = span
            .start
            .checked_add(span.len)
            .and_then(|end| arena.get(span.start..end))
        else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        iov[i] = libc::iovec {
            // The kernel only reads through this pointer (sendmmsg).
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        };
        msgs[i].msg_hdr.msg_iov = &mut iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        if span.seg != 0 {
            put_segment(&mut msgs[i].msg_hdr, &mut cmsgs[i], span.seg);
        }
    }
    // SAFETY: `msgs[..n]` each point at one iovec over a live slice of `arena` (checked in
    // bounds above) and, for trains, at a control buffer in `cmsgs`, all outliving the call;
    // sendmmsg only reads them and writes `msg_len`.
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

/// Attach a `UDP_SEGMENT` control message of `seg` to `msg`, in `buf`.
fn put_segment(msg: &mut libc::msghdr, buf: &mut CmsgBuf, seg: u16) {
    msg.msg_control = buf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as usize;
    // SAFETY: msg_control points at `buf` (32 bytes, 8-aligned), at least CMSG_SPACE(2) = 24
    // bytes long, so the first header and its 2 data bytes are inside it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(msg);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
    }
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
        let spans = spans.map(|(start, len)| Span { start, len, seg: 0 });
        assert_eq!(send_batch(a.as_fd(), &arena, &spans).unwrap(), 4);
        let mut bufs = vec![vec![0u8; 3000]; 8];
        let mut lens = [0usize; 8];
        let mut segs = [0u16; 8];
        let mut got = 0;
        while got < 4 {
            match recv_batch(
                b.as_fd(),
                &mut bufs[got..],
                5,
                &mut lens[got..],
                &mut segs[got..],
            ) {
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        for (i, s) in spans.iter().enumerate() {
            assert_eq!(lens[i], s.len);
            assert_eq!(segs[i], 0, "no UDP_GRO asked for");
            assert_eq!(&bufs[i][5..5 + s.len], &arena[s.start..s.start + s.len]);
        }
        let err = recv_batch(b.as_fd(), &mut bufs, 5, &mut lens, &mut segs).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // Bad spans are refused before anything is sent.
        let bad = |start, len| [Span { start, len, seg: 0 }];
        let err = send_batch(a.as_fd(), &arena, &bad(3999, 2)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = send_batch(a.as_fd(), &arena, &bad(usize::MAX, 2)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(send_batch(a.as_fd(), &arena, &[]).unwrap(), 0);
    }

    fn recv_all(s: &UdpSocket, want: usize) -> Vec<(Vec<u8>, u16)> {
        let mut bufs = vec![vec![0u8; 65_536]; 8];
        let (mut lens, mut segs) = ([0usize; 8], [0u16; 8]);
        let mut out = Vec::new();
        let mut total = 0;
        while total < want {
            match recv_batch(s.as_fd(), &mut bufs, 0, &mut lens, &mut segs) {
                Ok(n) => {
                    for i in 0..n {
                        total += lens[i];
                        out.push((bufs[i][..lens[i]].to_vec(), segs[i]));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        out
    }

    /// A `UDP_SEGMENT` train over loopback stays whole to a `UDP_GRO` receiver (with its
    /// segment size) and arrives cut into datagrams at one without.
    #[test]
    fn segment_and_gro_on_loopback() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        let arena: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let train = [Span {
            start: 0,
            len: 3500,
            seg: 1000,
        }];
        assert_eq!(send_batch(a.as_fd(), &arena, &train).unwrap(), 1);
        let got = recv_all(&b, 3500);
        let sizes: Vec<_> = got.iter().map(|(d, s)| (d.len(), *s)).collect();
        assert_eq!(sizes, [(1000, 0), (1000, 0), (1000, 0), (500, 0)]);
        let bytes: Vec<u8> = got.iter().flat_map(|(d, _)| d.iter().copied()).collect();
        assert_eq!(bytes, &arena[..3500]);
        set_udp_gro(b.as_fd()).unwrap();
        assert_eq!(send_batch(a.as_fd(), &arena, &train).unwrap(), 1);
        let got = recv_all(&b, 3500);
        assert_eq!(got.len(), 1, "one train");
        assert_eq!(got[0].1, 1000);
        assert_eq!(got[0].0, &arena[..3500]);
    }
}
