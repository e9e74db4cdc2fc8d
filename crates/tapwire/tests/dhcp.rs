//! The DHCPv4 server for guests that configure themselves (no `-c`), and malformed DHCP / NDP.
//!
//! Each test builds a private host namespace and a guest namespace (see tests/common) and
//! starts the daemon *without* `-c`: the guest's tap0 exists but is unconfigured. The test
//! brings it up itself and runs a real client, busybox `udhcpc` (Debian busybox-static), with
//! an event script that applies the lease the way a distribution's script does (address, MTU,
//! default route) and records every variable udhcpc hands it, so the assertions see exactly
//! what the client understood from the server's replies.
//!
//! Checks: network+15 with router network+2, DNS network+3, the subnet mask, the daemon's
//! `--mtu` (option 26) and a lease time; RELEASE frees the address for the next client, a
//! client asking again keeps its address, a second client gets network+16; `--cidr`;
//! `--disable-dns` (no DNS option); TCP through the gateway once the lease is applied. And a
//! raw AF_PACKET sender in the guest sends malformed DHCP requests and forged NDP (hop limit
//! != 255, wrong code, foreign target): nothing is answered, the `dhcp` and `ndp` drop counters
//! of `get_stats` count them, and the daemon keeps serving.
//!
//! tapwire-only (they check tapwire's pool, options and `get_stats`). Needs root; see
//! tests/common for the skip policy (TAPWIRE_ALLOW_SKIP=1).

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const MB: usize = 1 << 20;
/// One udhcpc run: 3 discovers 1 s apart at most (`-t 3 -T 1 -n`).
const DHCP_TIMEOUT: Duration = Duration::from_secs(20);
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// The udhcpc event script: applies the lease like a distribution's default.script and appends
/// `event=...`, the variables udhcpc exported, and `end` to the file `@OUT@` (replaced at
/// creation).
const SCRIPT: &str = include_str!("sh/dhcp_udhcpc_event.sh");

/// What one script invocation saw.
type Event = HashMap<String, String>;

/// Daemon (dropped first), guest, host namespace, the script and its output file.
struct World {
    d: Daemon,
    guest: Guest,
    host: HostNs,
    script: PathBuf,
    out: PathBuf,
    args: Vec<String>,
}

impl World {
    /// The daemon with `-r 3 [args] PID tap0` (no `-c`; an `@API@` argument becomes the API
    /// socket path, [`World::api_sock`]); the guest brings lo and tap0 up.
    fn new(args: &[&str]) -> World {
        let host = HostNs::new();
        let guest = host.guest();
        let api = host.dir.join("api.sock");
        let args: Vec<&str> = args
            .iter()
            .map(|a| {
                if *a == "@API@" {
                    api.to_str().unwrap()
                } else {
                    a
                }
            })
            .collect();
        let cfg = DaemonCfg {
            configure: false,
            ..Default::default()
        }
        .args(&args);
        let d = Daemon::start(&host, &guest, cfg);
        let out = host.dir.join("udhcpc.out");
        let script = host.dir.join("udhcpc.script");
        std::fs::write(&script, SCRIPT.replace("@OUT@", out.to_str().unwrap())).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        guest
            .sh("ip link set lo up && ip link set tap0 up", SETUP_TIMEOUT)
            .ok();
        World {
            d,
            guest,
            host,
            script,
            out,
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn api_sock(&self) -> PathBuf {
        self.host.dir.join("api.sock")
    }

    fn set_mac(&self, mac: &str) {
        self.guest
            .sh(
                &format!("ip link set dev tap0 address {mac}"),
                SETUP_TIMEOUT,
            )
            .ok();
    }

    fn udhcpc(&self, extra: &str) -> String {
        format!(
            "busybox udhcpc -i tap0 -f -n -t 3 -T 1 -O mtu -s {} {extra}",
            self.script.display()
        )
    }

    /// The script's invocations so far (oldest first), and the raw file.
    fn events(&self) -> (Vec<Event>, String) {
        let raw = std::fs::read_to_string(&self.out).unwrap_or_default();
        let mut v = Vec::new();
        let mut cur: Option<Event> = None;
        for line in raw.lines() {
            if line == "end" {
                v.extend(cur.take());
            } else if let Some((k, val)) = line.split_once('=') {
                if k == "event" {
                    cur = Some(Event::new());
                }
                if let Some(c) = cur.as_mut() {
                    c.insert(k.to_string(), val.to_string());
                }
            }
        }
        (v, raw)
    }

    /// Run `udhcpc -q` with tap0's MAC set to `mac`: the `bound` event of the lease.
    #[track_caller]
    fn lease(&self, mac: &str) -> Event {
        self.set_mac(mac);
        let _ = std::fs::remove_file(&self.out);
        let out = self
            .guest
            .sh(&format!("{} -q", self.udhcpc("")), DHCP_TIMEOUT);
        self.bound_event(&out)
    }

    /// Take a lease with `mac`, then make udhcpc release it (SIGTERM with `-R`: udhcpc unicasts
    /// a RELEASE to the server and deconfigures). The `bound` event.
    ///
    /// Between the two the guest pings the router, as any guest using its lease would: the
    /// RELEASE is a unicast sent by the guest kernel, and without an ARP entry for the server
    /// it waits for ARP while udhcpc's deconfig flushes the address, which purges the ARP
    /// queue and loses the RELEASE (a client-side race, seen in about 1 run in 20).
    #[track_caller]
    fn lease_and_release(&self, mac: &str) -> Event {
        self.set_mac(mac);
        let _ = std::fs::remove_file(&self.out);
        let script = format!(
            "{} -R & p=$!; i=0; \
             while ! sed -n '/^event=bound/,/^end/p' '{out}' 2>/dev/null | grep -q '^end'; do \
               i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.1; done; \
             ping -c 1 -W 2 \"$(sed -n 's/^router=//p' '{out}')\" >&2 || echo PING_FAILED >&2; \
             kill -TERM $p; wait $p",
            self.udhcpc(""),
            out = self.out.display()
        );
        let out = self.guest.sh(&script, DHCP_TIMEOUT);
        let ev = self.bound_event(&out);
        assert!(
            !out.stderr.contains("PING_FAILED"),
            "the leased guest cannot ping its router: {out}"
        );
        assert!(
            out.stderr.contains("unicasting a release"),
            "udhcpc did not send a RELEASE: {out}"
        );
        let (events, raw) = self.events();
        assert_eq!(
            events
                .last()
                .and_then(|e| e.get("event"))
                .map(String::as_str),
            Some("deconfig"),
            "deconfig after the release: {raw}"
        );
        ev
    }

    #[track_caller]
    fn bound_event(&self, out: &Out) -> Event {
        let (events, raw) = self.events();
        let bound = events
            .iter()
            .find(|e| e["event"] == "bound")
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "udhcpc got no lease (daemon {:?}): {out}\n--- script output ---\n{raw}\n\
                     --- daemon log ---\n{}",
                    self.args,
                    self.d.output()
                )
            });
        assert!(
            !raw.contains("apply_error"),
            "the script could not apply the lease: {raw}\n{out}"
        );
        bound
    }

    fn stats(&self, sock: &Path) -> Value {
        let mut s = UnixStream::connect(sock).expect("connect to the API socket");
        s.set_read_timeout(Some(API_TIMEOUT)).unwrap();
        s.write_all(br#"{"execute":"get_stats"}"#).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let v: Value = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{e}: {raw}"));
        v["return"].clone()
    }
}

/// Assert the fields of a lease (`dns` None: no DNS option at all).
#[track_caller]
fn check_lease(ev: &Event, ip: &str, router: &str, dns: Option<&str>, subnet: &str, mtu: u32) {
    let get = |k: &str| {
        ev.get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("lease without `{k}`: {ev:?}"))
    };
    assert_eq!(get("ip"), ip, "leased address: {ev:?}");
    assert_eq!(get("router"), router, "router option: {ev:?}");
    assert_eq!(get("serverid"), router, "server identifier: {ev:?}");
    assert_eq!(get("subnet"), subnet, "subnet mask option: {ev:?}");
    assert_eq!(get("mtu"), mtu.to_string(), "MTU option: {ev:?}");
    let lease: u64 = get("lease")
        .parse()
        .unwrap_or_else(|e| panic!("lease time: {e}: {ev:?}"));
    assert!(lease > 0, "lease time: {ev:?}");
    assert_eq!(ev.get("dns").map(String::as_str), dns, "DNS option: {ev:?}");
}

fn drops(stats: &Value, reason: &str) -> u64 {
    stats["drops"][reason]
        .as_u64()
        .unwrap_or_else(|| panic!("no drops.{reason} in {stats}"))
}

// =============================================================================================
// 11. A lease for network+15, RELEASE, a second client.
// =============================================================================================

#[test]
fn udhcpc_lease_release_and_second_client() {
    if !preflight(&["busybox"]) || !tapwire_only("DHCP server checks") {
        return;
    }
    let w = World::new(&["--mtu", "1400"]);
    let a = w.lease_and_release("02:00:00:00:0a:01");
    check_lease(
        &a,
        "10.0.2.15",
        "10.0.2.2",
        Some("10.0.2.3"),
        "255.255.255.0",
        1400,
    );
    eprintln!("lease: {a:?}");
    // After the RELEASE, network+15 is free again for another client.
    let b = w.lease("02:00:00:00:0a:02");
    check_lease(
        &b,
        "10.0.2.15",
        "10.0.2.2",
        Some("10.0.2.3"),
        "255.255.255.0",
        1400,
    );
    // The same client asking again keeps its address.
    let b2 = w.lease("02:00:00:00:0a:02");
    assert_eq!(b2["ip"], "10.0.2.15", "the same client again: {b2:?}");
    // While b holds it, a third client gets the next one.
    let c = w.lease("02:00:00:00:0a:03");
    check_lease(
        &c,
        "10.0.2.16",
        "10.0.2.2",
        Some("10.0.2.3"),
        "255.255.255.0",
        1400,
    );
    // The script applied the last lease.
    let a4 = w
        .guest
        .sh(
            "ip -o -4 addr show dev tap0; ip -o link show tap0",
            SETUP_TIMEOUT,
        )
        .ok()
        .stdout;
    assert!(a4.contains("inet 10.0.2.16/24 "), "{a4}");
    assert!(a4.contains("mtu 1400 "), "{a4}");
}

// =============================================================================================
// 12. --cidr.
// =============================================================================================

#[test]
fn udhcpc_lease_follows_cidr() {
    if !preflight(&["busybox"]) || !tapwire_only("DHCP server checks") {
        return;
    }
    let w = World::new(&["--cidr", "10.9.0.0/24"]);
    let ev = w.lease("02:00:00:00:0b:01");
    check_lease(
        &ev,
        "10.9.0.15",
        "10.9.0.2",
        Some("10.9.0.3"),
        "255.255.255.0",
        1500,
    );
    drop(w);
    let w = World::new(&["--cidr", "10.8.0.0/16", "--mtu", "9000"]);
    let ev = w.lease("02:00:00:00:0b:02");
    check_lease(
        &ev,
        "10.8.0.15",
        "10.8.0.2",
        Some("10.8.0.3"),
        "255.255.0.0",
        9000,
    );
}

// =============================================================================================
// 13. --disable-dns.
// =============================================================================================

#[test]
fn udhcpc_lease_without_dns_option() {
    if !preflight(&["busybox"]) || !tapwire_only("DHCP server checks") {
        return;
    }
    let w = World::new(&["--disable-dns"]);
    let ev = w.lease("02:00:00:00:0c:01");
    check_lease(&ev, "10.0.2.15", "10.0.2.2", None, "255.255.255.0", 1500);
}

// =============================================================================================
// 14. The applied lease works: TCP through the gateway, DNS from the lease.
// =============================================================================================

#[test]
fn tcp_and_dns_after_dhcp() {
    if !preflight(&["busybox", "dnsmasq"]) || !tapwire_only("DHCP server checks") {
        return;
    }
    let w = World::new(&[]);
    let _dns = w.host.dnsmasq();
    // Nothing works before the lease: no address, no route.
    assert!(
        w.guest
            .connect(
                SocketAddrV4::new(GATEWAY, 20700),
                Duration::from_millis(500)
            )
            .is_err(),
        "TCP before DHCP"
    );
    let ev = w.lease("02:00:00:00:0d:01");
    check_lease(
        &ev,
        "10.0.2.15",
        "10.0.2.2",
        Some("10.0.2.3"),
        "255.255.255.0",
        1500,
    );
    let r = w
        .guest
        .sh("ip -4 route show default", SETUP_TIMEOUT)
        .ok()
        .stdout;
    assert!(r.contains("default via 10.0.2.2 dev tap0"), "{r}");
    let gw = |p: u16| SocketAddr::from(SocketAddrV4::new(GATEWAY, p));
    // The host sees the guest's connection from loopback; sha256 both ways.
    check_upload(
        &w.guest,
        w.host.listen(20701),
        gw(20701),
        &random_bytes(4 * MB, 91),
    );
    check_download(
        &w.guest,
        w.host.listen(20702),
        gw(20702),
        random_bytes(4 * MB, 92),
    );
    let l = w.host.listen(20703);
    let c = w.guest.connect(gw(20703), SETUP_TIMEOUT).expect("connect");
    let guest_side = c.local_addr().unwrap();
    assert_eq!(
        guest_side.ip(),
        std::net::Ipv4Addr::new(10, 0, 2, 15),
        "the guest connects from its leased address"
    );
    drop(accept_timeout(&l, SETUP_TIMEOUT).expect("accept"));
    // The DNS server from the lease answers.
    let dns = &ev["dns"];
    let out = w.guest.sh(
        &format!("busybox nslookup -type=a tapwire.test {dns}"),
        Duration::from_secs(20),
    );
    assert!(
        out.success() && out.stdout.contains("10.9.8.7"),
        "nslookup via the leased DNS {dns}: {out}"
    );
}

// =============================================================================================
// 15. Malformed DHCP and forged NDP: dropped, counted, unanswered; the daemon keeps serving.
// =============================================================================================

/// argv: repetitions. Sends malformed DHCP requests (valid Ethernet/IPv4/UDP, UDP checksum 0
/// as DHCP clients may send) and forged or foreign NDP (valid ICMPv6 checksums), then listens
/// 1 s for anything the daemon sends back. Prints `dhcp N`, `ndp N` (frames sent of each kind)
/// and `replies ...` (DHCP replies, RAs and NAs received).
const PY_BAD: &str = include_str!("py/dhcp_bad.py");

#[test]
fn malformed_dhcp_and_forged_ndp_are_dropped_and_counted() {
    if !preflight(&["busybox", "python3", "ping"]) || !tapwire_only("get_stats drop counters") {
        return;
    }
    let w = World::new(&["-6", "--api-socket", "@API@"]);
    let sock = &w.api_sock();
    // Let the guest's own IPv6 settle (SLAAC from our RA, DAD done): its DAD probes for its
    // own address are NDP we drop too, and must not land between the two snapshots.
    let start = Instant::now();
    loop {
        let a = w
            .guest
            .sh("ip -6 -o addr show dev tap0 scope global", SETUP_TIMEOUT)
            .ok()
            .stdout;
        if a.contains("inet6 fd00:") && !a.contains("tentative") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no SLAAC address on the unconfigured guest after `ip link set tap0 up`: {a}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let s0 = w.stats(sock);
    let out = w.guest.python(PY_BAD, &["3"], Duration::from_secs(20)).ok();
    let sent = |k: &str| -> u64 {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k} ")))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{k}` count: {out}"))
    };
    let (n_dhcp, n_ndp) = (sent("dhcp"), sent("ndp"));
    assert_eq!((n_dhcp, n_ndp), (39, 21), "{out}");
    assert!(
        out.stdout.contains("replies none"),
        "the daemon answered malformed DHCP or forged NDP: {out}"
    );
    let mut s1 = w.stats(sock);
    let t = Instant::now();
    while drops(&s1, "dhcp") < drops(&s0, "dhcp") + n_dhcp && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
        s1 = w.stats(sock);
    }
    assert_eq!(
        drops(&s1, "dhcp") - drops(&s0, "dhcp"),
        n_dhcp,
        "drops.dhcp after {n_dhcp} malformed requests: {s0} -> {s1}"
    );
    let ndp = drops(&s1, "ndp") - drops(&s0, "ndp");
    assert!(
        ndp >= n_ndp,
        "drops.ndp after {n_ndp} forged NDP messages: +{ndp}: {s0} -> {s1}"
    );
    assert_eq!(
        drops(&s1, "checksum"),
        drops(&s0, "checksum"),
        "the test's frames have valid checksums: {s1}"
    );
    eprintln!("drops.dhcp +{n_dhcp}, drops.ndp +{ndp}: {s1}");

    // Still serving: DHCP, and neighbor discovery + echo for the IPv6 gateway.
    let ev = w.lease("02:00:00:00:0e:01");
    check_lease(
        &ev,
        "10.0.2.15",
        "10.0.2.2",
        Some("10.0.2.3"),
        "255.255.255.0",
        1500,
    );
    let ping = w
        .guest
        .sh("ping -6 -c 4 -i 0.3 -W 2 fd00::2", Duration::from_secs(20));
    assert!(
        ping.stdout.contains(" 4 received") || ping.stdout.contains(" 3 received"),
        "ping6 after the garbage: {ping}"
    );
    let s2 = w.stats(sock);
    assert_eq!(
        drops(&s2, "dhcp"),
        drops(&s1, "dhcp"),
        "udhcpc's well-formed requests are not counted as malformed: {s2}"
    );
    drop(w);
}
