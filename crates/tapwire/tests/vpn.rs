//! A VPN inside the namespace: wireguard-go runs inside `tapwire run` (root in its own
//! user+network namespace, creating its TUN device there), handshakes with wireguard-go in a
//! peer namespace over tapwire's UDP path, and carries sha256-checked TCP transfers (a
//! download and an upload, 4 MiB each) through the tunnel; once on the tap path, once with
//! `--bypass`: the tunnel's UDP stays on the tap (bypass never traps its per-datagram sends),
//! and the transfers' TCP connects to the tunnel's network are not bypassed although no
//! `--ignore` names it: the supervisor asks the namespace's own routes, which send it into wg0
//! (a bypassed connect would be made in the host's namespace, which has no route into the
//! tunnel, and fail). Once more with `--bypass-udp`, where the tunnel's sends are trapped and
//! its UDP leaves from a host socket. tapwire only; needs root, wireguard-go and wg (Debian
//! `wireguard-go`, `wireguard-tools`), python3. See tests/common for the skip policy.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::*;

const SCRIPT: &str = include_str!("sh/vpn_inside.sh");
/// The peer's end of the tunnel; the guest's is 10.99.0.2.
const TUNNEL_PEER: &str = "10.99.0.1";
const WG_PORT: u16 = 51820;

fn preflight_vpn() -> bool {
    preflight(&["wireguard-go", "wg", "python3"]) && tapwire_only("run mode")
}

/// `wg genkey` into DIR/NAME.key, `wg pubkey` into DIR/NAME.pub.
fn keypair(host: &HostNs, name: &str) -> String {
    let dir = host.dir.path().display().to_string();
    host.sh(&format!(
        "umask 077 && wg genkey > {dir}/{name}.key && wg pubkey < {dir}/{name}.key > {dir}/{name}.pub"
    ))
    .ok();
    std::fs::read_to_string(host.dir.join(&format!("{name}.pub")))
        .unwrap()
        .trim()
        .to_owned()
}

fn vpn_transfer(flags: &[&str]) {
    let host = HostNs::new();
    let peer = host.peer();
    let dir = host.dir.path().to_owned();
    keypair(&host, "peer");
    let guest_pub = keypair(&host, "guest");
    // The peer's wireguard-go: its network namespace, the host test namespace's (private) mount
    // namespace, where its UAPI socket goes to a tmpfs of ours.
    host.sh("mkdir -p /run/wireguard && mount -t tmpfs tapwire-wg /run/wireguard")
        .ok();
    let log = std::fs::File::create(dir.join("wg1.log")).unwrap();
    let _wg_peer = Proc::spawn(
        Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", peer.pid()))
            .arg(format!("--mount=/proc/{}/ns/mnt", host.pid()))
            .args(["--", "wireguard-go", "wg1"])
            .env("WG_PROCESS_FOREGROUND", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    );
    wait_until(SETUP_TIMEOUT, "the peer's wireguard-go", || {
        host.sh("test -S /run/wireguard/wg1.sock").success()
    });
    let setup = format!(
        "nsenter --net=/proc/{pid}/ns/net -- sh -c 'wg set wg1 listen-port {WG_PORT} private-key {d}/peer.key \
         peer {guest_pub} allowed-ips 10.99.0.2/32 && ip addr add {TUNNEL_PEER}/24 dev wg1 && ip link set wg1 up'",
        pid = peer.pid(),
        d = dir.display()
    );
    host.sh(&setup).ok();

    let data = random_bytes(4 * MB_, 7);
    let want_down = sha256_hex(&data);
    let tunnel_peer: std::net::Ipv4Addr = TUNNEL_PEER.parse().unwrap();
    let source = peer
        .in_ns(|| std::net::TcpListener::bind((tunnel_peer, 5000)))
        .unwrap();
    let sink = peer
        .in_ns(|| std::net::TcpListener::bind((tunnel_peer, 5001)))
        .unwrap();
    let down = serve_source(source, std::sync::Arc::new(data));
    let up = serve_sink(sink);

    let script = dir.join("vpn_inside.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    let endpoint = SocketAddr::from((PEER_ADDR, WG_PORT)).to_string();
    let out = run(
        host.cmd(bin())
            .arg("run")
            .args(flags)
            .args(["--", "sh"])
            .arg(&script)
            .arg(&dir)
            .args([endpoint.as_str(), TUNNEL_PEER]),
        Duration::from_secs(120),
    );
    let wg_log = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap_or_default();
    assert!(
        out.success(),
        "tapwire run {flags:?}: {out}\n--- wg0 ---\n{}\n--- wg1 ---\n{}",
        wg_log("wg0.log"),
        wg_log("wg1.log")
    );
    let line = |key: &str| -> Vec<String> {
        out.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no `{key}` line: {out}"))
            .split_whitespace()
            .skip(1)
            .map(str::to_owned)
            .collect()
    };
    down.join(TRANSFER_TIMEOUT);
    let (n_up, sha_up, _) = up.join(TRANSFER_TIMEOUT);
    assert_eq!(
        line("download"),
        [(4 * MB_).to_string(), want_down],
        "download through the tunnel: {out}"
    );
    assert_eq!(
        line("upload"),
        [n_up.to_string(), sha_up],
        "upload through the tunnel (sha256 seen by the peer): {out}"
    );
    let hs: u64 = line("handshake")[0].parse().unwrap();
    assert!(hs > 0, "a completed handshake: {out}");
    // The peer saw its handshake arrive from the host namespace (tapwire's socket).
    let peer_view = host
        .sh(&format!(
            "nsenter --net=/proc/{}/ns/net -- wg show wg1 endpoints",
            peer.pid()
        ))
        .ok()
        .stdout;
    assert!(
        peer_view.contains(&PEER_HOST_ADDR.to_string()),
        "the peer's endpoint for the guest: {peer_view}"
    );
    eprintln!("tapwire run {flags:?}: {}", out.stdout.trim());
}

const MB_: usize = 1 << 20;

#[test]
fn wireguard_go_inside_run_mode() {
    if !preflight_vpn() {
        return;
    }
    vpn_transfer(&[]);
}

#[test]
fn wireguard_go_inside_run_mode_with_bypass() {
    if !preflight_vpn() {
        return;
    }
    vpn_transfer(&["--bypass"]);
}

#[test]
fn wireguard_go_inside_run_mode_with_bypass_udp() {
    if !preflight_vpn() {
        return;
    }
    vpn_transfer(&["--bypass", "--bypass-udp"]);
}
