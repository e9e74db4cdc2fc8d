//! The trapped program's memory: reading the arguments of its call, writing results back.
//!
//! # Theory of operation
//! Reads use `process_vm_readv` ([`read_mem`]): one call per buffer, no fd to keep. A short
//! read (the range crosses into unmapped memory) is `EFAULT`, as the kernel would report for
//! the program's own call. Writes (a `getpeername` result, a `sendmmsg` `msg_len`) go through
//! `/proc/TID/mem` ([`open_mem`], [`write_mem`]): the open file keeps naming the process it
//! was opened for, whatever happens to the thread id afterwards.
//!
//! Neither proves anything about *which* thread was reached: a thread id can be reused once
//! its thread is gone. The supervisor therefore checks `SECCOMP_IOCTL_NOTIF_ID_VALID` after
//! every read, and opens `/proc/TID/mem` *before* that check, so that a write cannot land in
//! a process that reused the thread id. Both need ptrace rights over the target.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, IoSliceMut};
use std::os::unix::fs::FileExt;

use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

use crate::sys::pidfd::ProcFs;

/// Read exactly `buf.len()` bytes at `addr` in thread `tid`'s memory. A partial read (the
/// range crosses into unmapped memory) is `EFAULT`, as the kernel would report.
pub fn read_mem(tid: i32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let len = buf.len();
    let base = usize::try_from(addr).map_err(|_| io::Error::from_raw_os_error(libc::EFAULT))?;
    let remote = [RemoteIoVec { base, len }];
    let n = process_vm_readv(Pid::from_raw(tid), &mut [IoSliceMut::new(buf)], &remote)
        .map_err(io::Error::from)?;
    if n != len {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    Ok(())
}

/// `/proc/TID/mem`, open for writing (`ESRCH`: the thread is gone).
pub fn open_mem(proc: &ProcFs, tid: i32) -> io::Result<File> {
    proc.file(&format!("{tid}/mem"), true)
}

/// Write all of `data` at `addr`; a short write is `EFAULT`.
pub fn write_mem(mem: &File, addr: u64, data: &[u8]) -> io::Result<()> {
    match mem.write_at(data, addr) {
        Ok(k) if k == data.len() => Ok(()),
        Ok(_) => Err(io::Error::from_raw_os_error(libc::EFAULT)),
        Err(e) => Err(e),
    }
}
