//! Checksum and TCP segmentation offload on the TAP (`IFF_VNET_HDR` + `TUNSETOFFLOAD`, see
//! src/vnet.rs), end to end: with the guest's MTU at 1500, bulk TCP both ways crosses the TAP
//! in super-segments larger than the MTU (the daemon's frame counters prove it), the bytes
//! arrive intact (sha256), the guest's MTU is unchanged; `--disable-offload` gives MTU-sized
//! frames only. IPv4 here; tests/ipv6.rs moves bulk IPv6 with offloads on (the default), and
//! every other suite runs with them on too.
//!
//! Needs root; see tests/common for the skip policy.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::Path;

use common::*;

const MB: usize = 1 << 20;
/// An Ethernet frame at MTU 1500.
const FRAME_1500: u64 = 1514;

fn gw(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 2, 2], port))
}

/// `get_stats` over the control socket.
fn stats(sock: &Path) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).expect("connect to the API socket");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(br#"{"execute":"get_stats"}"#).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let v: serde_json::Value = serde_json::from_str(&reply).expect("JSON reply");
    v["return"].clone()
}

fn counter(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// Mean frame size each way over a 20 MB upload and a 20 MB download (sha256-checked) at MTU
/// 1500: (guest -> us, us -> guest).
fn mean_frames(extra: &[&str], port: u16) -> (u64, u64) {
    let host = HostNs::new();
    let guest = host.guest();
    let sock = host.dir.join("api.sock");
    let mut args = vec!["--mtu", "1500", "--api-socket", sock.to_str().unwrap()];
    args.extend_from_slice(extra);
    let _d = Daemon::with_args(&host, &guest, &args);
    let link = guest.sh("ip -o link show tap0", std::time::Duration::from_secs(10));
    let link = link.ok().stdout;
    assert!(
        link.contains(" mtu 1500 "),
        "the guest's MTU stays as set: {link}"
    );

    let data = random_bytes(20 * MB, 3);
    let s0 = stats(&sock);
    check_upload(&guest, host.listen(port), gw(port), &data);
    let s1 = stats(&sock);
    check_download(&guest, host.listen(port + 1), gw(port + 1), data);
    let s2 = stats(&sock);
    let mean = |a: &serde_json::Value, b: &serde_json::Value, bytes: &str, frames: &str| {
        let n = counter(b, frames) - counter(a, frames);
        assert!(n > 0, "no {frames} between {a} and {b}");
        (counter(b, bytes) - counter(a, bytes)) / n
    };
    let up = mean(&s0, &s1, "bytes_in", "frames_in");
    let down = mean(&s1, &s2, "bytes_out", "frames_out");
    eprintln!("mean frame with {extra:?}: guest->us {up} B, us->guest {down} B");
    (up, down)
}

#[test]
fn tso_super_segments_both_ways_at_mtu_1500() {
    if !preflight(&[]) || !tapwire_only("TCP segmentation offload") {
        return;
    }
    let (up, down) = mean_frames(&[], 20410);
    // Mostly 64 KiB segments each way (about 60 KB measured); a link of MTU-sized frames
    // cannot average above 1514 B. The guest sizes its TSO segments by its sending rate (about
    // 1 ms worth), so the bound leaves room for a slow machine.
    assert!(
        up > 2 * FRAME_1500,
        "guest -> us: mean frame {up} B: the guest is not sending TSO super-segments"
    );
    assert!(
        down > 2 * FRAME_1500,
        "us -> guest: mean frame {down} B: we are not sending TSO super-segments"
    );
}

#[test]
fn disable_offload_keeps_frames_within_the_mtu() {
    if !preflight(&[]) || !tapwire_only("--disable-offload") {
        return;
    }
    let (up, down) = mean_frames(&["--disable-offload"], 20420);
    assert!(up <= FRAME_1500, "guest -> us: mean frame {up} B");
    assert!(down <= FRAME_1500, "us -> guest: mean frame {down} B");
}
