//! Data, hashing and transfers: reproducible random bytes, SHA-256 (via `sha2`), TCP sinks and
//! sources with checked uploads/downloads, UDP echo and big-reply servers.

use super::*;
use sha2::Digest;

// Data, hashing, transfers.
// ---------------------------------------------------------------------------------------------

/// `n` pseudo-random bytes (xorshift64*, seeded): incompressible and reproducible.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(n);
    v
}

/// Streaming SHA-256 (the `sha2` crate), with the digest as lowercase hex.
#[derive(Clone, Default)]
pub struct Sha256(sha2::Sha256);

impl Sha256 {
    pub fn new() -> Self {
        Sha256(sha2::Sha256::new())
    }

    pub fn update(&mut self, data: &[u8]) {
        Digest::update(&mut self.0, data);
    }

    /// The digest as lowercase hex (what `sha256sum` prints).
    pub fn hex(self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0.finalize() {
            let _ = write!(s, "{b:02x}");
        }
        s
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    h.hex()
}

pub fn set_timeouts(s: &TcpStream) {
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
}

/// accept() with a deadline; the stream gets IO timeouts.
pub fn accept_timeout(l: &TcpListener, timeout: Duration) -> io::Result<(TcpStream, SocketAddr)> {
    l.set_nonblocking(true)?;
    let start = Instant::now();
    loop {
        match l.accept() {
            Ok((s, a)) => {
                s.set_nonblocking(false)?;
                set_timeouts(&s);
                return Ok((s, a));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if start.elapsed() > timeout {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "accept timed out"));
                }
                thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Read to EOF, hashing: (bytes, sha256 hex).
pub fn read_hash(s: &mut TcpStream) -> io::Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok((n, h.hex())),
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Host-side server task: accept one connection, read to EOF, return (bytes, sha256, peer).
pub fn serve_sink(l: TcpListener) -> Task<(u64, String, SocketAddr)> {
    task("sink-server", move || {
        let (mut s, peer) = accept_timeout(&l, TRANSFER_TIMEOUT).expect("sink accept");
        let (n, h) = read_hash(&mut s).expect("sink read");
        (n, h, peer)
    })
}

/// Host-side server task: accept one connection, send `data`, close.
pub fn serve_source(l: TcpListener, data: std::sync::Arc<Vec<u8>>) -> Task<()> {
    task("source-server", move || {
        let (mut s, _) = accept_timeout(&l, TRANSFER_TIMEOUT).expect("source accept");
        s.write_all(&data).expect("source write");
        s.shutdown(Shutdown::Write).expect("source shutdown");
        // Wait for the client to close so no data is lost to an early RST.
        let mut sink = [0u8; 64];
        let _ = s.read(&mut sink);
    })
}

/// Upload `data` from the guest to a sink listening on host `listener`, reached at `target`.
/// Asserts the byte count and sha256 seen by the server.
#[track_caller]
pub fn check_upload(guest: &Guest, listener: TcpListener, target: SocketAddr, data: &[u8]) {
    let want = sha256_hex(data);
    let server = serve_sink(listener);
    let start = Instant::now();
    let mut c = guest
        .connect(target, SETUP_TIMEOUT)
        .unwrap_or_else(|e| panic!("guest connect {target}: {e}"));
    c.write_all(data).expect("guest upload write");
    c.shutdown(Shutdown::Write)
        .expect("guest shutdown(SHUT_WR)");
    let (n, got, _) = server.join(TRANSFER_TIMEOUT);
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(n, data.len() as u64, "bytes received by the server");
    assert_eq!(got, want, "sha256 of the uploaded data");
    eprintln!(
        "upload {} MB to {target}: {:.2} Gbit/s",
        data.len() >> 20,
        n as f64 * 8.0 / secs / 1e9
    );
}

/// Download `data` from a source on host `listener` into the guest via `target`; sha256 check.
#[track_caller]
pub fn check_download(guest: &Guest, listener: TcpListener, target: SocketAddr, data: Vec<u8>) {
    let want = sha256_hex(&data);
    let len = data.len() as u64;
    let server = serve_source(listener, std::sync::Arc::new(data));
    let start = Instant::now();
    let mut c = guest
        .connect(target, SETUP_TIMEOUT)
        .unwrap_or_else(|e| panic!("guest connect {target}: {e}"));
    let (n, got) = read_hash(&mut c).expect("guest download read");
    let secs = start.elapsed().as_secs_f64();
    drop(c);
    server.join(TRANSFER_TIMEOUT);
    assert_eq!(n, len, "bytes received by the guest");
    assert_eq!(got, want, "sha256 of the downloaded data");
    eprintln!(
        "download {} MB from {target}: {:.2} Gbit/s",
        len >> 20,
        n as f64 * 8.0 / secs / 1e9
    );
}

/// A server task on `sock` that answers a datagram holding a decimal size with that many bytes
/// of `random_bytes(size, size)`, until 3 s pass with nothing; returns how many it answered.
pub fn serve_udp_big_replies(sock: UdpSocket) -> Task<usize> {
    task("udp-big-replies", move || {
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 64];
        let mut n = 0;
        while let Ok((k, from)) = sock.recv_from(&mut buf) {
            let size: usize = String::from_utf8_lossy(&buf[..k]).parse().unwrap();
            sock.send_to(&random_bytes(size, size as u64), from)
                .unwrap();
            n += 1;
        }
        n
    })
}

/// Ask a [`serve_udp_big_replies`] server reached by the connected socket `s` for a `size`-byte
/// reply (3 tries of 2 s) and check its length and sha256.
#[track_caller]
pub fn check_big_udp_reply(s: &UdpSocket, size: usize, buf: &mut [u8]) {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut got = None;
    for _ in 0..3 {
        s.send(size.to_string().as_bytes()).unwrap();
        if let Ok(k) = s.recv(buf) {
            got = Some(k);
            break;
        }
    }
    let k = got.unwrap_or_else(|| panic!("no {size} B reply reached the guest (3 tries)"));
    assert_eq!(k, size, "size of the reply datagram");
    assert_eq!(
        sha256_hex(&buf[..k]),
        sha256_hex(&random_bytes(size, size as u64)),
        "{size} B reply corrupted"
    );
}

/// UDP echo server task on `sock`: echoes every datagram until `quiet` passes with nothing.
pub fn serve_udp_echo(sock: UdpSocket, quiet: Duration) -> Task<usize> {
    task("udp-echo", move || {
        sock.set_read_timeout(Some(quiet)).unwrap();
        let mut buf = vec![0u8; 65536];
        let mut n = 0;
        while let Ok((k, from)) = sock.recv_from(&mut buf) {
            sock.send_to(&buf[..k], from).expect("udp echo send");
            n += 1;
        }
        n
    })
}

/// From the guest, send datagrams of `sizes` to `target` and expect each echoed back intact
/// (each retried up to 3 times, 2 s apart).
#[track_caller]
pub fn check_udp_echo(guest: &Guest, target: SocketAddr, sizes: &[usize]) {
    let s = guest.udp_to(target);
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = vec![0u8; 65536];
    for (i, &size) in sizes.iter().enumerate() {
        let msg = random_bytes(size, 1000 + i as u64);
        let mut ok = false;
        for _try in 0..3 {
            s.send(&msg)
                .unwrap_or_else(|e| panic!("guest udp send {size} B to {target}: {e}"));
            match s.recv(&mut buf) {
                Ok(k) if buf[..k] == msg[..] => {
                    ok = true;
                    break;
                }
                Ok(k) => panic!("udp echo of {size} B from {target}: got {k} B, different"),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) => panic!("guest udp recv from {target}: {e}"),
            }
        }
        assert!(
            ok,
            "no udp echo of a {size} B datagram from {target} after 3 tries"
        );
    }
}

/// A big receive buffer (`SO_RCVBUFFORCE`: the tests run as root), so only the daemon can lose
/// datagrams.
pub fn big_rcvbuf(s: &std::net::UdpSocket, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket fd and a pointer to a c_int of the stated length.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

#[cfg(test)]
mod selftest {
    use super::*;

    #[test]
    fn sha256_known_answers() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let data = random_bytes(1_000_003, 7);
        let mut h = Sha256::new();
        for c in data.chunks(4097) {
            h.update(c);
        }
        assert_eq!(h.hex(), sha256_hex(&data));
    }
}
