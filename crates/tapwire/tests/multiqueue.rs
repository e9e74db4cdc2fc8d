//! `--threads N` (engine/queues.rs): a multi-queue TAP with one engine worker per queue.
//! Through the real TAP: the guest's TCP and UDP flows land on every queue (the per-queue
//! counters of `get_stats` show it) and arrive intact (sha256); port-forwarded TCP and UDP
//! flows, which belong to the first worker, keep working after idling past the kernel's 3 s
//! flow-steering memory, when the guest's next packets may arrive on another queue and are
//! handed over; `list_connections` shows every worker's flows; bad values are refused.
//!
//! Needs root; see tests/common for the skip policy.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use common::api::{add, connections, lo, stats, u, World};
use common::tap_mode::*;
use common::*;

/// Flows per test: the kernel picks a queue by hash, so all of them landing on one queue of
/// two happens once in 2^(FLOWS-1) runs.
const FLOWS: usize = 16;
/// Longer than the TAP's flow-steering memory (TUN_FLOW_EXPIRE, 3 s).
const IDLE: Duration = Duration::from_secs(4);

fn queue_counters(s: &serde_json::Value, ptr: &str) -> Vec<u64> {
    s["queues"]
        .as_array()
        .unwrap_or_else(|| panic!("get_stats has no queues: {s}"))
        .iter()
        .map(|q| u(q, ptr))
        .collect()
}

#[test]
fn guest_flows_spread_over_every_queue_and_arrive_intact() {
    if !preflight(&[]) {
        return;
    }
    let w = World::new(&["--threads", "2"]);
    let s = stats(&w.sock);
    assert_eq!(s["threads"], 2, "{s}");
    assert!(
        w.guest
            .sh("ip -d link show tap0", SETUP_TIMEOUT)
            .ok()
            .stdout
            .contains("numqueues 2"),
        "tap0 has two queues"
    );

    for i in 0..FLOWS {
        let port = 21000 + i as u16;
        let l = w.host.listen(port);
        let data = random_bytes(2 * MB, i as u64);
        if i % 2 == 0 {
            check_upload(&w.guest, l, gw(port), &data);
        } else {
            check_download(&w.guest, l, gw(port), data);
        }
    }
    let echo_port = 21100;
    let echo = w.host.udp(echo_port);
    let server = serve_udp_echo(echo, Duration::from_secs(3));
    for _ in 0..FLOWS {
        // A new socket each time: a new source port, a new flow.
        check_udp_echo(&w.guest, gw(echo_port), &[64, 1400, 9000]);
    }
    server.join(TRANSFER_TIMEOUT);

    let s = stats(&w.sock);
    let tcp = queue_counters(&s, "/flows_total/tcp");
    let udp = queue_counters(&s, "/flows_total/udp");
    let frames = queue_counters(&s, "/frames_in");
    eprintln!("per queue: tcp flows {tcp:?}, udp flows {udp:?}, frames in {frames:?}");
    assert_eq!(tcp.len(), 2, "{s}");
    assert!(tcp.iter().all(|&n| n > 0), "TCP flows on every queue: {s}");
    assert!(udp.iter().all(|&n| n > 0), "UDP flows on every queue: {s}");
    assert_eq!(u(&s, "/flows_total/tcp"), tcp.iter().sum::<u64>(), "{s}");
    assert!(u(&s, "/flows_total/tcp") >= FLOWS as u64, "{s}");
    assert_eq!(u(&s, "/frames_in"), frames.iter().sum::<u64>(), "{s}");
}

#[test]
fn forwarded_flows_survive_idling_past_the_steering_memory() {
    if !preflight(&[]) {
        return;
    }
    let w = World::new(&["--threads", "2"]);
    let guest_port = 8000;
    let host_port = 21200;
    add(&w.sock, "tcp", Some("127.0.0.1"), host_port, guest_port);
    let l = w.guest_listen(common::api::any_guest(guest_port));
    let udp_host_port = 21201;
    add(&w.sock, "udp", Some("127.0.0.1"), udp_host_port, guest_port);
    let gudp = w.guest_udp(common::api::any_guest(guest_port));

    // TCP: each connection says hello both ways, idles, then moves 1 MiB each way.
    let up = Arc::new(random_bytes(MB, 1));
    let down = Arc::new(random_bytes(MB, 2));
    let server = {
        let (up, down) = (up.clone(), down.clone());
        task("guest-idle-server", move || {
            let mut joins = Vec::new();
            for _ in 0..FLOWS {
                let (mut s, _) = accept_timeout(&l, TRANSFER_TIMEOUT).expect("guest accept");
                let (up, down) = (up.clone(), down.clone());
                joins.push(std::thread::spawn(move || {
                    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                    let mut hello = [0u8; 5];
                    s.read_exact(&mut hello).expect("guest reads hello");
                    s.write_all(b"olleh").expect("guest answers");
                    std::thread::sleep(IDLE);
                    // The guest speaks first after the pause.
                    s.write_all(&down).expect("guest writes after idling");
                    s.shutdown(Shutdown::Write).unwrap();
                    let (n, h) = read_hash(&mut s).expect("guest reads");
                    assert_eq!(n, up.len() as u64, "bytes uploaded after idling");
                    assert_eq!(h, sha256_hex(&up), "upload sha256");
                }));
            }
            for j in joins {
                j.join().expect("guest connection");
            }
        })
    };
    let mut clients = Vec::new();
    for _ in 0..FLOWS {
        let mut c = w.connect(lo(host_port)).expect("connect to the forward");
        c.write_all(b"hello").unwrap();
        let mut back = [0u8; 5];
        c.read_exact(&mut back).expect("hello answered");
        assert_eq!(&back, b"olleh");
        clients.push(c);
    }
    // UDP: every client hears from the guest once, then again after the pause, guest first.
    let udp_clients: Vec<UdpSocket> = (0..FLOWS)
        .map(|_| w.host_udp_to(lo(udp_host_port)))
        .collect();
    let mut buf = [0u8; 64];
    let mut peers: Vec<SocketAddr> = Vec::new();
    gudp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    for c in &udp_clients {
        c.send(b"ping").unwrap();
        let (n, from) = gudp.recv_from(&mut buf).expect("guest gets the datagram");
        assert_eq!(&buf[..n], b"ping");
        peers.push(from);
    }
    let down_want = (down.len() as u64, sha256_hex(&down));
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let up = up.clone();
            std::thread::spawn(move || {
                let got = read_hash(&mut c).expect("client reads after idling");
                c.write_all(&up).expect("client uploads after idling");
                c.shutdown(Shutdown::Write).unwrap();
                let mut rest = Vec::new();
                let _ = c.read_to_end(&mut rest);
                got
            })
        })
        .collect();
    std::thread::sleep(IDLE);
    for (i, p) in peers.iter().enumerate() {
        gudp.send_to(format!("late{i}").as_bytes(), p).unwrap();
    }
    for (i, c) in udp_clients.iter().enumerate() {
        let n = c
            .recv(&mut buf)
            .expect("the guest's late datagram reaches the host");
        assert_eq!(&buf[..n], format!("late{i}").as_bytes());
    }
    for r in readers {
        let got = r.join().expect("client");
        assert_eq!(got, down_want, "download after idling");
    }
    server.join(TRANSFER_TIMEOUT);
    let s = stats(&w.sock);
    eprintln!("handed over: {}", s["handed"]);
    assert_eq!(u(&s, "/handed/inbox_full"), 0, "{s}");
    // Each of the 2 * FLOWS flows' late packets took the other queue with probability 1/2.
    assert!(
        u(&s, "/handed/frames") > 0,
        "late packets were handed over: {s}"
    );
}

#[test]
fn list_connections_shows_every_workers_flows() {
    if !preflight(&[]) {
        return;
    }
    let w = World::new(&["--threads", "2"]);
    let port = 21300;
    let l = w.host.listen(port);
    let held: Vec<TcpStream> = (0..FLOWS)
        .map(|_| {
            w.guest
                .connect(gw(port), SETUP_TIMEOUT)
                .expect("guest connect")
        })
        .collect();
    let mut accepted = Vec::new();
    for _ in 0..FLOWS {
        accepted.push(accept_timeout(&l, SETUP_TIMEOUT).expect("accept"));
    }
    let conns = connections(&w.sock);
    let tcp = conns.iter().filter(|c| c["proto"] == "tcp").count();
    assert_eq!(tcp, FLOWS, "{conns:?}");
    let s = stats(&w.sock);
    let open = queue_counters(&s, "/flows/tcp");
    assert!(
        open.iter().all(|&n| n > 0),
        "open flows on every queue: {s}"
    );
    assert_eq!(u(&s, "/flows/tcp"), FLOWS as u64, "{s}");
    drop(held);
}

#[test]
fn bad_thread_counts_are_refused() {
    if !preflight(&[]) {
        return;
    }
    let host = HostNs::new();
    for bad in ["0", "17", "x"] {
        let out = host
            .cmd(bin())
            .args(["--threads", bad, "1"])
            .output()
            .expect("run tapwire");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--threads {bad} accepted");
        assert!(err.contains("--threads"), "error names the flag: {err}");
    }
    let pcap = host.dir.join("x.pcap");
    let out = host
        .cmd(bin())
        .args([
            "run",
            "--threads",
            "2",
            "--pcap",
            pcap.to_str().unwrap(),
            "--",
            "true",
        ])
        .output()
        .expect("run tapwire");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "--threads 2 --pcap accepted");
    assert!(err.contains("--pcap needs --threads 1"), "{err}");
    assert!(!pcap.exists(), "nothing was created");
}
