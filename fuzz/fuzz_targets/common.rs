//! Shared by the fuzz targets that run the engine: a private network namespace (so no packet
//! a fuzz input makes can leave the machine, or even reach its real loopback) and the
//! framing of inputs that hold several guest frames.
#![allow(dead_code)]

use std::os::fd::{FromRawFd, OwnedFd};

/// Move the calling thread (the one libFuzzer runs inputs on) into a new network namespace
/// whose only interface is `lo`, brought up. Aborts if that is impossible: fuzzing the engine
/// in the machine's real network namespace is never acceptable.
pub fn isolate() {
    // SAFETY: unshare takes flags only. CLONE_NEWUSER needs a single-threaded process, which is
    // why this runs from the target's `init` (before libFuzzer starts its threads).
    let ok = unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0
        || unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } == 0;
    if !ok {
        eprintln!(
            "fuzz: cannot make a private network namespace: {}",
            std::io::Error::last_os_error()
        );
        std::process::abort();
    }
    // lo up, so host sockets to 127.0.0.1 get real answers (refused connects, ICMP errors).
    // SAFETY: a socket for the ioctl, closed below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s >= 0 {
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        // SAFETY: SIOCSIFFLAGS reads a live ifreq; `s` is an open socket.
        unsafe {
            libc::ioctl(s, libc::SIOCSIFFLAGS as _, &ifr);
            libc::close(s);
        }
    }
}

/// A connected `AF_UNIX`/`SOCK_SEQPACKET` pair: one end stands in for the TAP (one datagram =
/// one frame, like `IFF_TAP | IFF_NO_PI`), the other is the guest.
pub fn fake_tap() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: socketpair just returned these fds; nothing else owns them.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A pipe (read end, write end).
pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0);
    // SAFETY: pipe2 just returned these fds; nothing else owns them.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Split an input into chunks: each is a big-endian u16 length and that many bytes (the last
/// chunk takes what is left). Seeds in `corpus/engine` and `corpus/dhcp` use this framing.
pub fn chunks(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if data.len() < 2 {
            return None;
        }
        let n = usize::from(u16::from_be_bytes([data[0], data[1]]));
        let rest = &data[2..];
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        data = tail;
        Some(chunk)
    })
}
