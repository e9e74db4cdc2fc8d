#!/usr/bin/env bash
# UDP through a WireGuard tunnel: wireguard-go in the guest, its peer in a test host namespace
# behind a veth, iperf3 -u through the tunnel both ways; the same tunnel over each forwarder.
#
#   sudo scripts/bench-wireguard.sh [-t SECONDS] [-r ROUNDS] [-b TAPWIRE_BIN] [-B OTHER_BIN]
#                                   [--pasta BIN] [--paths run,bypass,bypassudp,tap,tapb,slirp4netns,pasta,veth]
#
# Paths: run (wireguard-go inside `tapwire run`), bypass (`tapwire run --bypass`: UDP on the
# tap), bypassudp (`--bypass --bypass-udp`: every send of the tunnel trapped), tap
# (`tapwire -c PID tap0`), tapb (tap with -B BIN, to A/B two builds), slirp4netns, pasta,
# veth (the guest's veth routed by the kernel: the ceiling). Each round runs every path in
# turn; the median of ROUNDS (default 3) of DUR seconds (default 3) is printed per path and
# direction: Mbit/s received and loss, iperf3 -u -l 1300 -b 0 (unlimited: loss shows where
# the path saturates; the tunnel's MTU is 1420).
#
# Network safety: everything runs inside a private network + mount namespace made here (lo
# up, no default route, own resolv.conf). The peer is another namespace joined by a veth
# (192.168.77.1 here, .2 there); the tunnel is 10.99.0.1 (guest) <-> 10.99.0.2 (peer).
# Needs root, wireguard-go, wg (wireguard-tools), iperf3, slirp4netns, pasta (optional).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TAPWIRE=$ROOT/target/release/tapwire
TAPWIRE_B=""
PASTA=/usr/bin/pasta
DUR=3
ROUNDS=3
PATHS_ARG=run,bypass,tap,slirp4netns,pasta,veth
KEEP=0
ORIG_ARGS=("$@")
while [ $# -gt 0 ]; do
	case "$1" in
	-t) DUR="$2"; shift 2 ;;
	-r) ROUNDS="$2"; shift 2 ;;
	-b) TAPWIRE="$2"; shift 2 ;;
	-B) TAPWIRE_B="$2"; PATHS_ARG+=",tapb"; shift 2 ;;
	--pasta) PASTA="$2"; shift 2 ;;
	--paths) PATHS_ARG="$2"; shift 2 ;;
	--keep) KEEP=1; shift ;;
	-h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "unknown option: $1" >&2; exit 2 ;;
	esac
done
die() { echo "bench-wireguard: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "must run as root (it creates namespaces)"
for t in wireguard-go wg iperf3 unshare nsenter ip python3; do
	command -v "$t" >/dev/null || die "$t not found"
done
source "$HERE/bench/common.sh"
enter_private_ns "${ORIG_ARGS[@]}"
IFS=, read -r -a PATHS <<<"$PATHS_ARG"

# ---- the peer: a namespace behind a veth, wireguard-go on 192.168.77.2:51820 -------------
(umask 077 && wg genkey >"$WORK/guest.key" && wg genkey >"$WORK/peer.key")
chmod 0644 "$WORK/guest.key"   # read by the guest's root (an unprivileged user outside)
GUEST_PUB=$(wg pubkey <"$WORK/guest.key")
PEER_PUB=$(wg pubkey <"$WORK/peer.key")
unshare --net -- sleep infinity &
PEER=$!
PIDS+=("$PEER")
is_sleep() { [ "$(cat "/proc/$1/comm" 2>/dev/null)" = sleep ]; }
wait_for "peer namespace" 10 is_sleep "$PEER"
px() { nsenter -t "$PEER" -n -- bash -c "$1"; }
ip link add twh0 type veth peer name twp0 netns "$PEER"
ip addr add 192.168.77.1/24 dev twh0
ip link set twh0 up
px "ip link set lo up && ip addr add 192.168.77.2/24 dev twp0 && ip link set twp0 up &&
    ip route add 10.0.2.0/24 via 192.168.77.1"
nsenter -t "$PEER" -n -- wireguard-go -f wgp0 >"$WORK/wg-peer.log" 2>&1 &
PIDS+=($!)
wait_for "peer wireguard-go" 10 px "ip link show wgp0 >/dev/null 2>&1"
px "wg set wgp0 private-key $WORK/peer.key listen-port 51820 peer $GUEST_PUB allowed-ips 10.99.0.1/32 &&
    ip addr add 10.99.0.2/24 dev wgp0 && ip link set wgp0 mtu 1420 up"
nsenter -t "$PEER" -n -- iperf3 -s -B 10.99.0.2 >/dev/null 2>&1 &
PIDS+=($!)
echo 1 >/proc/sys/net/ipv4/ip_forward   # this private namespace only (veth path)

# ---- what runs in the guest: the tunnel, then iperf3 through it both ways ----------------
cat >"$WORK/guest.sh" <<GUEST
set -e
W=$WORK
ip link set lo up 2>/dev/null || true
wireguard-go -f wgg0 >\$W/wg-guest.log 2>&1 &
WGPID=\$!
for i in \$(seq 100); do ip link show wgg0 >/dev/null 2>&1 && break; sleep 0.05; done
wg set wgg0 private-key \$W/guest.key peer $PEER_PUB endpoint 192.168.77.2:51820 allowed-ips 10.99.0.2/32
ip addr add 10.99.0.1/24 dev wgg0
ip link set wgg0 mtu 1420 up
ok=0
for i in \$(seq 50); do
	ping -c1 -W1 10.99.0.2 >/dev/null 2>&1 || true
	hs=\$(wg show wgg0 latest-handshakes | awk '{print \$2}')
	[ "\${hs:-0}" != 0 ] && { ok=1; break; }
	sleep 0.1
done
[ \$ok = 1 ] || { echo "no handshake: \$(wg show wgg0 | tr '\\n' ' ')" >&2; kill \$WGPID; exit 1; }
iperf3 -c 10.99.0.2 -u -l 1300 -b 0 -t $DUR -J >\$W/res.up.json 2>/dev/null || true
iperf3 -c 10.99.0.2 -u -l 1300 -b 0 -t $DUR -R -J >\$W/res.down.json 2>/dev/null || true
kill \$WGPID
GUEST

start_guest() {
	unshare --user --map-root-user --net -- sleep infinity &
	GUEST=$!
	PIDS+=("$GUEST")
	wait_for "guest namespace" 10 is_sleep "$GUEST"
}
in_guest() { nsenter -t "$GUEST" -U -n --preserve-credentials -- bash "$WORK/guest.sh"; }
has_addr() { nsenter -t "$GUEST" -n -- ip -o -4 addr show | grep -q 'inet 10.0.2.100/'; }

run_path() {
	local name=$1 d=
	rm -f "$WORK"/res.*.json
	case "$name" in
	run) timeout $((4 * DUR + 30)) "$TAPWIRE" run -- bash "$WORK/guest.sh" || true ;;
	bypass) timeout $((4 * DUR + 30)) "$TAPWIRE" run --bypass -- bash "$WORK/guest.sh" || true ;;
	bypassudp) timeout $((4 * DUR + 30)) "$TAPWIRE" run --bypass --bypass-udp -- bash "$WORK/guest.sh" || true ;;
	tap | tapb | slirp4netns)
		local bin=$TAPWIRE
		[ "$name" = tapb ] && bin=$TAPWIRE_B
		[ "$name" = slirp4netns ] && bin=slirp4netns
		start_guest
		"$bin" -c -r 3 "$GUEST" tap0 3>"$WORK/ready" >"$WORK/daemon.log" 2>&1 &
		d=$!
		wait_for "$name ready" 10 grep -q 1 "$WORK/ready" || true
		in_guest || true
		;;
	pasta)
		prepare_pasta
		unshare_cmd=("${NOBODY[@]}" unshare --user --map-root-user --net -- sleep infinity)
		"${unshare_cmd[@]}" &
		GUEST=$!
		PIDS+=("$GUEST")
		wait_for "guest namespace" 10 is_sleep "$GUEST"
		"${NOBODY[@]}" "$PASTA" -f --config-net -i twbench0 -a 10.0.2.100 -n 24 -g 10.0.2.2 \
			-t none -u none -T none -U none "$GUEST" >"$WORK/daemon.log" 2>&1 &
		d=$!
		wait_for "pasta" 10 has_addr || true
		in_guest || true
		;;
	veth)
		start_guest
		ip link add twv0 type veth peer name twv1 netns "$GUEST"
		ip addr add 10.0.2.2/24 dev twv0
		ip link set twv0 up
		nsenter -t "$GUEST" -n -- bash -c "ip link set lo up && ip addr add 10.0.2.100/24 dev twv1 &&
			ip link set twv1 up && ip route add 192.168.77.0/24 via 10.0.2.2"
		in_guest || true
		ip link del twv0 2>/dev/null || true
		;;
	esac
	[ -n "$d" ] && { kill "$d" 2>/dev/null || true; wait "$d" 2>/dev/null || true; }
	[ -n "${GUEST:-}" ] && { kill "$GUEST" 2>/dev/null || true; wait "$GUEST" 2>/dev/null || true; GUEST=; }
	for dir in up down; do
		python3 - "$WORK/res.$dir.json" "$name" "$dir" >>"$WORK/samples.txt" <<'PY' || echo "$name $dir - -" >>"$WORK/samples.txt"
import json, sys
d = json.load(open(sys.argv[1]))
s = d["end"]["sum"]
# Received rate: what reached the receiver (sender's bytes minus the lost share).
mbit = s["bits_per_second"] * (1 - s["lost_percent"] / 100) / 1e6
print(sys.argv[2], sys.argv[3], "%.1f" % mbit, "%.1f" % s["lost_percent"])
PY
		tail -1 "$WORK/samples.txt" | awk '{printf "   %-12s %-5s %8s Mbit/s received, %s%% loss\n", $1, $2, $3, $4}' >&2
	done
}

: >"$WORK/samples.txt"
for ((r = 1; r <= ROUNDS; r++)); do
	for ((i = 0; i < ${#PATHS[@]}; i++)); do
		name=${PATHS[$(((i + r - 1) % ${#PATHS[@]}))]}
		echo "== round $r/$ROUNDS: $name" >&2
		run_path "$name"
	done
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| path | ns->peer Mbit/s | loss % | peer->ns Mbit/s | loss % |"
echo "|---|---|---|---|---|"
python3 - "$WORK/samples.txt" "${PATHS[@]}" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    p, d, m, l = line.split()
    if m != "-":
        rows.setdefault((p, d), []).append((float(m), float(l)))
def med(p, d):
    v = rows.get((p, d))
    if not v:
        return "-", "-"
    return "%.1f" % statistics.median(x for x, _ in v), "%.1f" % statistics.median(y for _, y in v)
for p in sys.argv[2:]:
    print("| %s | %s | %s | %s | %s |" % ((p,) + med(p, "up") + med(p, "down")))
PY
