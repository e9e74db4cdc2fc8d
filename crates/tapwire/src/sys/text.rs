//! Letting go of the start-up code once the daemon is up.
//!
//! # Theory of operation
//! Most of an idle daemon's resident memory is code: the pages of its own executable and of
//! the C library that start-up ran once (argument parsing, the namespace helper, netlink,
//! the seccomp compiler, the sandbox) stay mapped, and count in its RSS, though the event
//! loop never runs them again. [`StartupText::find`] notes, before the sandbox hides
//! `/proc/self/maps`, every mapping that is executable, private, not writable and backed by a
//! file; [`StartupText::release`], called when the daemon is about to serve, unmaps their
//! pages with `madvise(MADV_DONTNEED)`. That changes nothing a program can observe: such a
//! mapping is never written, so each page is the file's, and one that runs again is mapped
//! back from the page cache with a minor fault (no I/O; the cache keeps them, shared with
//! every other process that maps the same file). What stays resident is what the loop uses.
//!
//! Never touched: anything writable or once written (data, `.bss`, the heap, stacks, the
//! relocated read-only data behind RELRO, which is anonymous memory now and would lose its
//! relocations), anything not file-backed (the vDSO, anonymous memory). Code pages are
//! written only by text relocations (none in Rust or glibc builds) and by breakpoints: a
//! debugger's or a uprobe's breakpoint placed in the daemon during start-up is lost when its
//! page is dropped (attach after start-up, or a uprobe set later, is unaffected).
//!
//! Syscalls: `read(/proc/self/maps)` (before the sandbox), `madvise`.
#![allow(unsafe_code)]

use std::io;

/// One address range `[start, end)`.
type Range = (usize, usize);

/// The executable file mappings to release (see the module doc).
#[derive(Debug, Default)]
pub struct StartupText {
    ranges: Vec<Range>,
}

impl StartupText {
    /// Read `/proc/self/maps`. An unreadable table gives an empty set (nothing to release).
    pub fn find() -> StartupText {
        let ranges = std::fs::read_to_string("/proc/self/maps")
            .map(|maps| code_ranges(&maps))
            .unwrap_or_default();
        StartupText { ranges }
    }

    /// Bytes covered (resident or not).
    pub fn bytes(&self) -> usize {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    /// Unmap the pages of every range (they come back on use).
    pub fn release(&self) -> io::Result<()> {
        for &(start, end) in &self.ranges {
            // SAFETY: [start, end) is a whole mapping of this process that is private,
            // file-backed and not writable (`code_ranges`: `r-xp` with a path), i.e. code,
            // which nothing in this process writes (no text relocations), so every page
            // equals the file's and MADV_DONTNEED only drops page-table entries that a later
            // access restores from the page cache. /proc/self/maps gives page-aligned ranges
            // (and `code_ranges` keeps only those).
            let rc = unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("madvise(MADV_DONTNEED) {start:#x}-{end:#x}: {e}"),
                ));
            }
        }
        Ok(())
    }
}

/// The ranges of `maps` (the text of `/proc/self/maps`) that are `r-xp` and backed by a file
/// (a path starting with `/`); anything that does not parse is left out.
fn code_ranges(maps: &str) -> Vec<Range> {
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        // offset, device, inode, then the path (which may contain spaces).
        let path = fields.nth(3);
        if perms != "r-xp" || !path.is_some_and(|p| p.starts_with('/')) {
            continue;
        }
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(s), Ok(e)) = (usize::from_str_radix(s, 16), usize::from_str_radix(e, 16)) else {
            continue;
        };
        if s < e && s % 4096 == 0 && e % 4096 == 0 {
            out.push((s, e));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
5581a0000000-5581a0100000 r--p 00000000 fd:01 1234 /usr/bin/tapwire
5581a0100000-5581a0300000 r-xp 00100000 fd:01 1234 /usr/bin/tapwire
5581a0300000-5581a0350000 r--p 00300000 fd:01 1234 /usr/bin/tapwire
5581a0350000-5581a0360000 rw-p 00350000 fd:01 1234 /usr/bin/tapwire
5581a1000000-5581a1100000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000020000 r-xp 00028000 fd:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000030000-7f0000040000 r-xp 00000000 00:00 0
7f0000050000-7f0000052000 r-xp 00000000 00:00 0 [vdso]
7f0000060000-7f0000070000 rwxp 00000000 fd:01 5 /tmp/jit
7f0000080000-7f0000090000 r-xs 00000000 fd:01 6 /dev/shm/shared
7f00000a0000-7f00000b0000 r-xp 00000000 fd:01 7 /opt/my lib/with space.so
garbage line
7f00000c0001-7f00000d0000 r-xp 00000000 fd:01 8 /misaligned
";

    #[test]
    fn only_private_read_exec_file_mappings_are_taken() {
        assert_eq!(
            code_ranges(MAPS),
            vec![
                (0x5581_a010_0000, 0x5581_a030_0000),
                (0x7f00_0000_0000, 0x7f00_0002_0000),
                (0x7f00_000a_0000, 0x7f00_000b_0000),
            ]
        );
    }

    #[test]
    fn this_process_has_code_to_release_and_keeps_running_after() {
        let text = StartupText::find();
        assert!(text.bytes() > 0, "{text:?}");
        text.release().unwrap();
        // Code and the C library still work after their pages were dropped.
        let v: Vec<u64> = (0..1000).map(|i| i * i).collect();
        assert_eq!(v.iter().sum::<u64>(), 332_833_500);
        assert!(format!("{}", 12345).contains("234"));
    }
}
