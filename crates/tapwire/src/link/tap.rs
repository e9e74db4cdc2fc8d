//! TAP device: `/dev/net/tun` opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, driven by plain
//! libc calls.
//!
//! Theory of operation:
//! - [`Tap::open`] opens `/dev/net/tun` (`O_RDWR | O_CLOEXEC`) and issues `TUNSETIFF` with the
//!   interface name and `IFF_TAP | IFF_NO_PI`. The interface is created in the network namespace
//!   of the *calling thread*, which is why [`crate::netns`] calls it from a forked helper that has
//!   already `setns()`ed into the target namespace, then passes the fd back over `SCM_RIGHTS`.
//!   The fd stays valid in any namespace afterwards; the interface lives as long as the fd (the
//!   device is not made persistent, so it disappears when the last fd is closed).
//! - With `IFF_NO_PI` each read returns exactly one Ethernet frame and each write injects
//!   exactly one frame; there is no packet-information header. With `IFF_VNET_HDR` each frame
//!   is preceded by a 10-byte `virtio_net_hdr` (see [`tapwire_proto::vnet`]): [`Tap::read`] and
//!   [`Tap::write`] move it separately with `readv`/`writev`, so frames stay where the caller
//!   built them. A buffer shorter than the frame truncates it (the kernel drops the tail), so
//!   callers size buffers for the largest frame ([`tapwire_proto::vnet::MAX_FRAME`] with offloads).
//! - [`Tap::set_offload`] (`TUNSETOFFLOAD`) lets the guest's kernel send and accept TSO
//!   super-segments and partial checksums, and where the kernel has it UDP super-datagrams
//!   (USO); without it the header is all zeros both ways.
//! - The fd is blocking until [`Tap::set_nonblocking`] is called; the event loop turns it
//!   non-blocking and gets `WouldBlock` when the queue is empty.
//! - Names follow the kernel's `dev_valid_name()`: 1..=15 bytes, not `.` or `..`, no `/`, `:`,
//!   whitespace or NUL. They are checked before any syscall so the error names the bad input.
//!
//! - `--threads N`: [`Tap::open_queues`] attaches N fds to one device made with
//!   `IFF_MULTI_QUEUE`; each is a queue of its own that one engine worker reads and writes.
//!
//! Syscalls: `open`, `ioctl(TUNSETIFF, TUNSETOFFLOAD)`, `fcntl(F_GETFL/F_SETFL)`, `readv`,
//! `writev`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use tapwire_proto::vnet::{self, VnetHdr};

/// `IFNAMSIZ` from `<net/if.h>`: names are at most 15 bytes plus the terminating NUL.
pub const IFNAMSIZ: usize = 16;

/// Errors from opening a TAP device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The requested interface name can never be accepted by the kernel.
    #[error("invalid TAP name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// `/dev/net/tun` could not be opened (missing module, no permission, ...).
    #[error("open /dev/net/tun: {0}")]
    OpenTun(#[source] io::Error),
    /// `TUNSETIFF` was refused (name in use by a non-TAP device, no CAP_NET_ADMIN, ...).
    #[error("TUNSETIFF {name} (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR) on /dev/net/tun: {source}")]
    SetIff { name: String, source: io::Error },
}

/// Check `name` against the kernel's rules for interface names and return it as a
/// NUL-padded `IFNAMSIZ` array.
pub fn check_name(name: &str) -> Result<[u8; IFNAMSIZ], TapError> {
    let invalid = |reason| TapError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    let bytes = name.as_bytes();
    if bytes.is_empty() {
        return Err(invalid("empty"));
    }
    if bytes.len() >= IFNAMSIZ {
        return Err(invalid("longer than 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(invalid("\".\" and \"..\" are reserved"));
    }
    if bytes
        .iter()
        .any(|&b| b == 0 || b == b'/' || b == b':' || b.is_ascii_whitespace())
    {
        return Err(invalid("contains NUL, '/', ':' or whitespace"));
    }
    let mut out = [0u8; IFNAMSIZ];
    // Length checked above: bytes.len() <= 15 < IFNAMSIZ.
    for (dst, src) in out.iter_mut().zip(bytes) {
        *dst = *src;
    }
    Ok(out)
}

/// `struct ifreq` as used by `TUNSETIFF`: the name, then `ifr_flags` (a `short`) at the start of
/// the union. The padding makes it at least as large as the kernel's `struct ifreq` (40 bytes on
/// 64-bit), which the kernel copies in full.
#[repr(C)]
struct IfReqFlags {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TAP queue: one fd, one frame per `read`/`write`.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
}

impl Tap {
    /// Create/attach TAP `name` (`IFF_TAP | IFF_NO_PI`) via `/dev/net/tun` + `TUNSETIFF` in the
    /// current network namespace. `name` must be 1..=15 bytes (see [`check_name`]).
    pub fn open(name: &str) -> Result<Tap, TapError> {
        Self::open_flags(name, 0)
    }

    /// `queues` fds of one multi-queue TAP `name` (`IFF_MULTI_QUEUE`, `--threads`): the kernel
    /// spreads the guest's flows over them and sends a flow's packets to the queue its replies
    /// were last written to (tun's automatic flow steering). One queue is [`Tap::open`] (a
    /// device made without `IFF_MULTI_QUEUE`, as slirp4netns makes it).
    pub fn open_queues(name: &str, queues: usize) -> Result<Vec<Tap>, TapError> {
        if queues <= 1 {
            return Ok(vec![Self::open(name)?]);
        }
        (0..queues)
            .map(|_| Self::open_flags(name, libc::IFF_MULTI_QUEUE))
            .collect()
    }

    fn open_flags(name: &str, extra: libc::c_int) -> Result<Tap, TapError> {
        let ifname = check_name(name)?;
        // SAFETY: the path is a NUL-terminated static C string; open(2) has no other memory
        // requirements.
        let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(TapError::OpenTun(io::Error::last_os_error()));
        }
        // SAFETY: open(2) just returned this fd (checked >= 0) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | extra;
        let mut req = IfReqFlags {
            name: ifname,
            // The flags fit in 16 bits (0x0002 | 0x1000 | 0x4000 | 0x0100).
            flags: flags as libc::c_short,
            _pad: [0; 22],
        };
        // SAFETY: `fd` is an open /dev/net/tun fd; TUNSETIFF reads and writes a `struct ifreq`,
        // and `req` is a live, writable, repr(C) value at least as large as `struct ifreq`
        // with a NUL-terminated name.
        let rc = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::TUNSETIFF as _,
                &mut req as *mut IfReqFlags,
            )
        };
        if rc < 0 {
            return Err(TapError::SetIff {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Tap { fd })
    }

    /// Wrap an fd that is already attached to a TAP device (e.g. received over `SCM_RIGHTS`).
    pub fn from_fd(fd: OwnedFd) -> Tap {
        Tap { fd }
    }

    /// Give the fd back.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Set or clear `O_NONBLOCK`.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: `fd` is owned by `self` and open; F_GETFL takes no pointer argument.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let new = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        if new != flags {
            // SAFETY: as above; F_SETFL takes an int argument.
            let rc = unsafe { libc::fcntl(fd, libc::F_SETFL, new) };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Enable (or, with `on` false, disable) checksum and TCP segmentation offload
    /// (`TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`), with `uso` also UDP segmentation offload
    /// (`TUN_F_USO4 | TUN_F_USO6`, Linux >= 6.2; an older kernel's `EINVAL` falls back to TCP
    /// offload alone): the guest may then send and must accept what [`tapwire_proto::vnet`]
    /// describes. Returns whether USO is on. The setting belongs to the device, not to this fd.
    pub fn set_offload(&self, on: bool, uso: bool) -> io::Result<bool> {
        let tcp = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        if on && uso {
            match self.offload_flags(tcp | libc::TUN_F_USO4 | libc::TUN_F_USO6) {
                Ok(()) => return Ok(true),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::info!("TUNSETOFFLOAD refused USO (kernel < 6.2?): UDP unsegmented");
                }
                Err(e) => return Err(e),
            }
        }
        self.offload_flags(if on { tcp } else { 0 })?;
        Ok(false)
    }

    fn offload_flags(&self, flags: libc::c_uint) -> io::Result<()> {
        // SAFETY: the fd is an open TAP owned by `self`; TUNSETOFFLOAD takes an unsigned int
        // argument by value.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETOFFLOAD as _,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Read one frame into `buf` and its virtio-net header (one `readv(2)`); returns the
    /// header and the frame's length. `WouldBlock` when the queue is empty in non-blocking
    /// mode; `EINTR` is retried. A read shorter than the header is `InvalidData`.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<(VnetHdr, usize)> {
        let mut hdr = [0u8; vnet::HDR_LEN];
        let mut iov = [
            libc::iovec {
                iov_base: hdr.as_mut_ptr().cast(),
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            },
        ];
        loop {
            // SAFETY: both iovecs describe live, writable buffers of their stated lengths for
            // the duration of the call, and the fd is owned by `self`.
            let n = unsafe { libc::readv(self.fd.as_raw_fd(), iov.as_mut_ptr(), 2) };
            if n >= 0 {
                // n >= 0, so it fits usize.
                let n = n.unsigned_abs();
                let Some(len) = n.checked_sub(vnet::HDR_LEN) else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "TAP read shorter than its virtio-net header",
                    ));
                };
                let h = VnetHdr::parse(&hdr).unwrap_or_default();
                return Ok((h, len));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Write one frame with its virtio-net header (one `writev(2)`); returns the frame bytes
    /// written. `EINTR` is retried.
    pub fn write(&self, hdr: &VnetHdr, frame: &[u8]) -> io::Result<usize> {
        let hdr = hdr.encode();
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut libc::c_void,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            },
        ];
        loop {
            // SAFETY: both iovecs describe live buffers of their stated lengths for the
            // duration of the call; writev only reads them. The fd is owned by `self`.
            let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
            if n >= 0 {
                return Ok(n.unsigned_abs().saturating_sub(vnet::HDR_LEN));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<Tap> for OwnedFd {
    fn from(tap: Tap) -> OwnedFd {
        tap.fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_length_limits() {
        assert!(matches!(
            Tap::open(""),
            Err(TapError::InvalidName {
                reason: "empty",
                ..
            })
        ));
        let long = "a".repeat(16);
        let err = Tap::open(&long).unwrap_err();
        assert!(matches!(err, TapError::InvalidName { .. }));
        assert!(err.to_string().contains("longer than 15 bytes"), "{err}");
        assert!(err.to_string().contains(&long), "{err}");
        // 15 bytes is the maximum accepted.
        let max = "b".repeat(15);
        let arr = check_name(&max).unwrap();
        assert_eq!(&arr[..15], max.as_bytes());
        assert_eq!(arr[15], 0);
        // Multi-byte UTF-8 counts bytes, not chars: 8 x 2 bytes = 16.
        assert!(check_name(&"é".repeat(8)).is_err());
        assert!(check_name(&"é".repeat(7)).is_ok());
    }

    #[test]
    fn name_characters() {
        for bad in [".", "..", "a/b", "a:b", "a b", "a\tb", "a\0b"] {
            assert!(
                matches!(check_name(bad), Err(TapError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        for good in ["tap0", "t", "tap-x_1.2", "..."] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn ifreq_is_large_enough() {
        assert!(std::mem::size_of::<IfReqFlags>() >= std::mem::size_of::<libc::ifreq>());
        assert_eq!(std::mem::offset_of!(IfReqFlags, flags), IFNAMSIZ);
    }
}
