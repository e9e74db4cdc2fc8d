//! Packet capture: every frame crossing the TAP, both ways, in a pcap file.
//!
//! # Theory of operation
//! A [`Capture`] is a pcap writer (the classic format, microsecond timestamps,
//! `LINKTYPE_ETHERNET`) that the device counters carry as an `Option` (`DeviceStats::capture`):
//! off, the cost on the frame path is one `None` test per frame in [`super::device`] (written
//! frames) and in the engine's TAP read loop (read frames). On, each frame is appended to a
//! preallocated buffer (a 16-byte record header, then the frame), which goes to the file when
//! the next record would not fit, once a second, when the capture stops and when the engine
//! exits: nothing is allocated per frame and a frame costs one clock read and a copy.
//!
//! The virtio-net header is not written (it is not part of the frame). TSO super-segments,
//! from the guest or ours, are written whole with their real length: their IP total length
//! already covers the whole super-segment, so tcpdump and tshark decode them as one large
//! segment (with a partial checksum, as a capture on the guest's interface shows them too).
//! The snap length is [`SNAPLEN`], above the largest frame, so no frame is truncated.
//!
//! Size limit: with `max_bytes`, a record that would take the file past it either rotates
//! (`rotate` > 0: `path.N-1` → `path.N`, …, `path` → `path.1`, a new `path`) or ends the
//! capture (logged once). Rotation renames by path, so it needs the file system the path was
//! given in: a sandboxed daemon (`--enable-sandbox`, run mode) has pivoted into an empty
//! tmpfs, so `--pcap FILE` is opened before confinement and the API's `start_capture` is
//! refused there (see `engine::control`). A write error ends the capture, logged once; it
//! never stops the forwarder.
#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tapwire_proto::vnet::MAX_FRAME;

/// pcap magic (microsecond timestamps), written in our byte order.
const MAGIC: u32 = 0xa1b2_c3d4;
/// `LINKTYPE_ETHERNET`.
const LINKTYPE_ETHERNET: u32 = 1;
/// Snap length in the file header: above any frame ([`MAX_FRAME`]).
pub const SNAPLEN: u32 = 262_144;
/// The pcap file header's length.
pub const FILE_HEADER_LEN: usize = 24;
/// A record header's length.
pub const RECORD_HEADER_LEN: usize = 16;
/// The write buffer: four of the largest frames.
const BUF_LEN: usize = 4 * (MAX_FRAME + RECORD_HEADER_LEN);

/// What a capture is asked to do (parsed by `tapwire_proto::control` or from `--pcap`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub path: PathBuf,
    pub max_bytes: Option<u64>,
    pub rotate: u32,
}

/// The pcap file header.
pub fn file_header() -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC.to_ne_bytes());
    h[4..6].copy_from_slice(&2u16.to_ne_bytes());
    h[6..8].copy_from_slice(&4u16.to_ne_bytes());
    // thiszone, sigfigs: 0.
    h[16..20].copy_from_slice(&SNAPLEN.to_ne_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
    h
}

/// The record header of a `len`-byte frame seen at `micros` since the epoch.
pub fn record_header(micros: u64, len: usize) -> [u8; RECORD_HEADER_LEN] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    // The format's seconds are 32 bits (until 2106).
    let secs = (micros / 1_000_000) as u32;
    let usecs = (micros % 1_000_000) as u32;
    let len = len as u32;
    h[0..4].copy_from_slice(&secs.to_ne_bytes());
    h[4..8].copy_from_slice(&usecs.to_ne_bytes());
    h[8..12].copy_from_slice(&len.to_ne_bytes());
    h[12..16].copy_from_slice(&len.to_ne_bytes());
    h
}

/// A running capture; see the module documentation.
#[derive(Debug)]
pub struct Capture {
    opts: Options,
    file: File,
    buf: Vec<u8>,
    /// Bytes in the current file, counting the buffer.
    file_bytes: u64,
    /// Frames and frame bytes captured since the start (across rotations).
    pub frames: u64,
    pub bytes: u64,
    /// The capture ended (size limit without rotation, or a write error): frames are ignored.
    pub ended: bool,
}

fn open_file(path: &Path) -> io::Result<File> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(&file_header())?;
    Ok(f)
}

impl Capture {
    /// Create (or truncate) the file and write its header.
    pub fn start(opts: Options) -> io::Result<Capture> {
        let file = open_file(&opts.path)?;
        Ok(Capture {
            opts,
            file,
            buf: Vec::with_capacity(BUF_LEN),
            file_bytes: FILE_HEADER_LEN as u64,
            frames: 0,
            bytes: 0,
            ended: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.opts.path
    }

    /// Record one frame (at most [`MAX_FRAME`] bytes; longer ones are not frames we handle).
    #[inline]
    pub fn frame(&mut self, frame: &[u8]) {
        if self.ended {
            return;
        }
        let micros = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        self.record(micros, frame);
    }

    /// [`Capture::frame`] with the time given (for tests).
    pub fn record(&mut self, micros: u64, frame: &[u8]) {
        if self.ended || frame.len() > MAX_FRAME {
            return;
        }
        let rec = (RECORD_HEADER_LEN + frame.len()) as u64;
        if let Some(max) = self.opts.max_bytes {
            if self.file_bytes + rec > max && !self.roll() {
                return;
            }
        }
        if self.buf.len() + rec as usize > self.buf.capacity() {
            self.flush();
            if self.ended {
                return;
            }
        }
        self.buf
            .extend_from_slice(&record_header(micros, frame.len()));
        self.buf.extend_from_slice(frame);
        self.file_bytes += rec;
        self.frames += 1;
        self.bytes += frame.len() as u64;
    }

    /// The file is full: rotate (true: go on) or end the capture.
    fn roll(&mut self) -> bool {
        if self.opts.rotate == 0 {
            tracing::warn!(
                path = %self.opts.path.display(),
                "packet capture reached max_bytes; capture stopped"
            );
            self.flush();
            self.ended = true;
            return false;
        }
        self.flush();
        if self.ended {
            return false;
        }
        let name = |n: u32| {
            let mut p = self.opts.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        for n in (1..self.opts.rotate).rev() {
            // A missing older file is not an error.
            let _ = std::fs::rename(name(n), name(n + 1));
        }
        let result =
            std::fs::rename(&self.opts.path, name(1)).and_then(|()| open_file(&self.opts.path));
        match result {
            Ok(f) => {
                self.file = f;
                self.file_bytes = FILE_HEADER_LEN as u64;
                true
            }
            Err(e) => {
                tracing::warn!(path = %self.opts.path.display(), "packet capture rotation: {e}; capture stopped");
                self.ended = true;
                false
            }
        }
    }

    /// Write the buffer to the file.
    pub fn flush(&mut self) {
        if self.buf.is_empty() || self.ended {
            self.buf.clear();
            return;
        }
        if let Err(e) = self.file.write_all(&self.buf) {
            tracing::warn!(path = %self.opts.path.display(), "packet capture: {e}; capture stopped");
            self.ended = true;
        }
        self.buf.clear();
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tapwire-capture-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// Parse a pcap file (our byte order) into (micros, frame) records.
    fn records(bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
        assert_eq!(&bytes[..FILE_HEADER_LEN], &file_header());
        let mut out = Vec::new();
        let mut rest = &bytes[FILE_HEADER_LEN..];
        while !rest.is_empty() {
            let u = |i: usize| u32::from_ne_bytes(rest[i..i + 4].try_into().unwrap());
            let (secs, usecs, incl, orig) = (u(0), u(4), u(8) as usize, u(12) as usize);
            assert_eq!(incl, orig);
            out.push((
                u64::from(secs) * 1_000_000 + u64::from(usecs),
                rest[16..16 + incl].to_vec(),
            ));
            rest = &rest[16 + incl..];
        }
        out
    }

    #[test]
    fn headers() {
        let h = file_header();
        assert_eq!(u32::from_ne_bytes(h[0..4].try_into().unwrap()), 0xa1b2c3d4);
        assert_eq!(u32::from_ne_bytes(h[20..24].try_into().unwrap()), 1);
        let r = record_header(1_700_000_000_123_456, 60);
        assert_eq!(
            u32::from_ne_bytes(r[0..4].try_into().unwrap()),
            1_700_000_000
        );
        assert_eq!(u32::from_ne_bytes(r[4..8].try_into().unwrap()), 123_456);
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 60);
    }

    #[test]
    fn frames_whole_across_buffer_flushes() {
        let path = tmp("whole.pcap");
        let mut c = Capture::start(Options {
            path: path.clone(),
            max_bytes: None,
            rotate: 0,
        })
        .unwrap();
        let big = vec![0xabu8; MAX_FRAME];
        let mut want = Vec::new();
        for i in 0..10u64 {
            let f: &[u8] = if i % 2 == 0 { &big } else { &[1, 2, 3] };
            c.record(i, f);
            want.push((i, f.to_vec()));
        }
        // Too long for a frame: ignored.
        c.record(99, &vec![0u8; MAX_FRAME + 1]);
        assert_eq!((c.frames, c.bytes), (10, 5 * MAX_FRAME as u64 + 15));
        drop(c);
        assert_eq!(records(&std::fs::read(&path).unwrap()), want);
    }

    #[test]
    fn max_bytes_ends_or_rotates() {
        let path = tmp("max.pcap");
        let frame = [7u8; 84]; // a record of 100 bytes
        let mut c = Capture::start(Options {
            path: path.clone(),
            max_bytes: Some(24 + 300),
            rotate: 0,
        })
        .unwrap();
        for i in 0..5 {
            c.record(i, &frame);
        }
        assert!(c.ended);
        assert_eq!(c.frames, 3);
        drop(c);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 324);

        let path = tmp("rot.pcap");
        let mut c = Capture::start(Options {
            path: path.clone(),
            max_bytes: Some(24 + 200),
            rotate: 2,
        })
        .unwrap();
        for i in 0..7 {
            c.record(i, &frame);
        }
        assert!(!c.ended);
        drop(c);
        let read = |p: &Path| records(&std::fs::read(p).unwrap());
        let ts = |p: &Path| read(p).iter().map(|r| r.0).collect::<Vec<_>>();
        let mut p1 = path.clone().into_os_string();
        p1.push(".1");
        let mut p2 = path.clone().into_os_string();
        p2.push(".2");
        let mut p3 = path.clone().into_os_string();
        p3.push(".3");
        assert_eq!(ts(&path), [6]);
        assert_eq!(ts(Path::new(&p1)), [4, 5]);
        assert_eq!(ts(Path::new(&p2)), [2, 3]);
        assert!(
            !Path::new(&p3).exists(),
            "only `rotate` older files are kept"
        );
    }

    #[test]
    fn unopenable_path_is_an_error() {
        assert!(Capture::start(Options {
            path: "/nonexistent-dir/x.pcap".into(),
            max_bytes: None,
            rotate: 0,
        })
        .is_err());
    }
}
