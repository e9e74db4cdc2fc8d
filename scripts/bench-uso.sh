#!/usr/bin/env bash
# UDP segmentation offload (USO) A/B: datagrams per second of a UDP_SEGMENT sender (what QUIC
# stacks and wireguard-go do) and of a plain one, both ways, through tapwire with USO (tap),
# tapwire with --disable-udp-offload (tapnouso) and a kernel veth pair (veth, the ceiling);
# plus the daemon's system calls per datagram (perf stat -e raw_syscalls:sys_enter).
#
#   sudo scripts/bench-uso.sh [-t SECONDS] [-r ROUNDS] [-b TAPWIRE_BIN] [--sizes "64 1400"]
#                             [--paths tap,tapnouso,veth]
#
# Each run: the sender sends for -t seconds (default 3) at full speed, trains of up to 64
# datagrams in 64 KB (gso) or one datagram per send (plain); the receiver counts datagrams that arrived intact
# (sequence number + length checked, so a cut train shows as loss). Up: guest -> host
# 127.0.0.1 (10.0.2.2 in the guest); down: host -> guest, after the guest opened the binding.
# The median of ROUNDS (default 3) is printed, in kpkt/s received.
#
# Network safety: everything runs inside a private network + mount namespace made here (lo
# up, no default route, own resolv.conf); the guest is a further namespace (TAP or veth).
# Needs root, python3, perf (optional: syscall counts).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TAPWIRE=$ROOT/target/release/tapwire
DUR=3
ROUNDS=3
SIZES="64 1400"
PATHS_ARG=tap,tapnouso,veth
KEEP=0
ORIG_ARGS=("$@")
while [ $# -gt 0 ]; do
	case "$1" in
	-t) DUR="$2"; shift 2 ;;
	-r) ROUNDS="$2"; shift 2 ;;
	-b) TAPWIRE="$2"; shift 2 ;;
	--sizes) SIZES="$2"; shift 2 ;;
	--paths) PATHS_ARG="$2"; shift 2 ;;
	--keep) KEEP=1; shift ;;
	-h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "unknown option: $1" >&2; exit 2 ;;
	esac
done
die() { echo "bench-uso: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "must run as root (it creates namespaces)"
for t in unshare nsenter ip python3; do
	command -v "$t" >/dev/null || die "$t not found"
done
source "$HERE/bench/common.sh"
enter_private_ns "${ORIG_ARGS[@]}"
IFS=, read -r -a PATHS <<<"$PATHS_ARG"
HAVE_PERF=0
command -v perf >/dev/null && HAVE_PERF=1

# udp.py MODE ...: the sender and the receiver.
cat >"$WORK/udp.py" <<'PY'
import socket, struct, sys, time
mode = sys.argv[1]
def count(s, size, secs):
    """Datagrams of `size` bytes that arrive intact until `secs` of silence after the first."""
    s.settimeout(10)
    n = 0
    buf = bytearray(65536)
    first = None
    while True:
        try:
            k = s.recv_into(buf)
        except socket.timeout:
            break
        if first is None:
            first = time.monotonic()
            s.settimeout(1)
        if k == size and buf[8] == 0x5a:
            n += 1
        if time.monotonic() - first > secs + 1:
            break
    return n
def blast(s, size, secs, gso, to=None):
    d = bytes([0x5a]) * size
    train = min(64, 65000 // size) if gso else 1
    if gso:
        s.setsockopt(socket.IPPROTO_UDP, 103, size)
    msg = b"".join(struct.pack("!II", 0, i) + d[8:] for i in range(train))
    end = time.monotonic() + secs
    while time.monotonic() < end:
        for _ in range(16):
            try:
                s.send(msg) if to is None else s.sendto(msg, to)
            except (BlockingIOError, OSError):
                pass
if mode == "recv":          # recv PORT SIZE SECS -> prints the count
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(("0.0.0.0", int(sys.argv[2])))
    print(count(s, int(sys.argv[3]), float(sys.argv[4])))
elif mode == "send":        # send HOST PORT SIZE SECS GSO
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((sys.argv[2], int(sys.argv[3])))
    blast(s, int(sys.argv[4]), float(sys.argv[5]), sys.argv[6] == "1")
elif mode == "serve":       # serve PORT SIZE SECS GSO: wait for a hello, blast back to it
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1" if sys.argv[6] == "lo" else "0.0.0.0", int(sys.argv[2])))
    s.settimeout(10)
    _, peer = s.recvfrom(16)
    blast(s, int(sys.argv[3]), float(sys.argv[4]), sys.argv[5] == "1", peer)
elif mode == "pull":        # pull HOST PORT SIZE SECS: say hello, count what comes back
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.connect((sys.argv[2], int(sys.argv[3])))
    s.send(b"h")
    print(count(s, int(sys.argv[4]), float(sys.argv[5])))
PY

is_sleep() { [ "$(cat "/proc/$1/comm" 2>/dev/null)" = sleep ]; }
gx() { nsenter -t "$GUEST" -U -n --preserve-credentials -- bash -c "$1"; }
# Guests are root in their user namespace: the receive buffers may grow past rmem_max there
# only with the host's limit raised (this private namespace's sysctl).
sysctl -qw net.core.rmem_max=16777216 2>/dev/null || true

start_path() {
	local name=$1
	unshare --user --map-root-user --net -- sleep infinity &
	GUEST=$!
	PIDS+=("$GUEST")
	wait_for "guest namespace" 10 is_sleep "$GUEST"
	DAEMON=
	case "$name" in
	tap | tapnouso)
		local extra=()
		[ "$name" = tapnouso ] && extra=(--disable-udp-offload)
		"$TAPWIRE" -c -r 3 "${extra[@]}" "$GUEST" tap0 3>"$WORK/ready" >"$WORK/daemon.log" 2>&1 &
		DAEMON=$!
		PIDS+=("$DAEMON")
		wait_for "$name ready" 10 grep -q 1 "$WORK/ready" || die "daemon not ready"
		HOST_IP=10.0.2.2 ;;
	veth)
		ip link add twv0 type veth peer name twv1 netns "$GUEST"
		ip addr add 10.0.2.2/24 dev twv0
		ip link set twv0 up
		gx "ip link set lo up && ip addr add 10.0.2.100/24 dev twv1 && ip link set twv1 up"
		HOST_IP=10.0.2.2 ;;
	esac
}

stop_path() {
	[ -n "$DAEMON" ] && { kill "$DAEMON" 2>/dev/null || true; wait "$DAEMON" 2>/dev/null || true; }
	kill "$GUEST" 2>/dev/null || true
	wait "$GUEST" 2>/dev/null || true
	ip link del twv0 2>/dev/null || true
}

# syscalls N: the daemon's system calls during the last run (perf), per datagram received.
perf_start() {
	PERF=
	if [ "$HAVE_PERF" = 1 ] && [ -n "$DAEMON" ]; then
		perf stat -e raw_syscalls:sys_enter -x, -o "$WORK/perf.txt" -p "$DAEMON" &
		PERF=$!
	fi
}
perf_stop() {
	local n=$1
	echo - >"$WORK/sc"
	[ -n "$PERF" ] || return 0
	kill -INT "$PERF" 2>/dev/null || true
	wait "$PERF" 2>/dev/null || true
	awk -F, -v n="$n" '/raw_syscalls/ && n > 0 {printf "%.2f\n", $1 / n; exit}' "$WORK/perf.txt" >"$WORK/sc"
	[ -s "$WORK/sc" ] || echo - >"$WORK/sc"
}

run_one() {
	local name=$1 dir=$2 size=$3 gso=$4 port=$5 n sc
	if [ "$dir" = up ]; then
		python3 "$WORK/udp.py" recv "$port" "$size" "$DUR" >"$WORK/n" &
		local rx=$!
		sleep 0.3
		perf_start
		gx "python3 $WORK/udp.py send $HOST_IP $port $size $DUR $gso" || true
		wait "$rx" || true
	else
		local bind=lo
		[ "$name" = veth ] && bind=any
		python3 "$WORK/udp.py" serve "$port" "$size" "$DUR" "$gso" "$bind" &
		local tx=$!
		sleep 0.3
		perf_start
		gx "python3 $WORK/udp.py pull $HOST_IP $port $size $DUR" >"$WORK/n" || true
		wait "$tx" || true
	fi
	n=$(cat "$WORK/n" 2>/dev/null || echo 0)
	perf_stop "$n"
	sc=$(cat "$WORK/sc")
	local kpps
	kpps=$(awk -v n="$n" -v d="$DUR" 'BEGIN {printf "%.1f", n / d / 1000}')
	echo "$name $dir $size $gso $kpps $sc" >>"$WORK/samples.txt"
	printf '   %-9s %-4s %5s B %-5s %8s kpkt/s  %s syscalls/datagram\n' "$name" "$dir" "$size" \
		"$([ "$gso" = 1 ] && echo gso || echo plain)" "$kpps" "$sc" >&2
}

: >"$WORK/samples.txt"
port=30000
for ((r = 1; r <= ROUNDS; r++)); do
	for ((i = 0; i < ${#PATHS[@]}; i++)); do
		name=${PATHS[$(((i + r - 1) % ${#PATHS[@]}))]}
		echo "== round $r/$ROUNDS: $name" >&2
		start_path "$name"
		for size in $SIZES; do
			for gso in 1 0; do
				for dir in up down; do
					port=$((port + 1))
					run_one "$name" "$dir" "$size" "$gso" "$port"
				done
			done
		done
		stop_path
	done
done

echo
echo "median kpkt/s received (syscalls per datagram), $ROUNDS rounds of ${DUR}s:"
python3 - "$WORK/samples.txt" "$PATHS_ARG" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
calls = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, d, size, gso, kpps, sc = line.split()
    rows[(d, int(size), gso, name)].append(float(kpps))
    if sc != "-":
        calls[(d, int(size), gso, name)].append(float(sc))
paths = sys.argv[2].split(",")
print("| measure | " + " | ".join(paths) + (" | tap/veth |" if "veth" in paths and "tap" in paths else " |"))
print("|---" * (len(paths) + 1 + ("veth" in paths and "tap" in paths)) + "|")
for key in sorted({k[:3] for k in rows}):
    d, size, gso = key
    cells = []
    med = {}
    for p in paths:
        v = rows.get(key + (p,))
        if not v:
            cells.append("-")
            continue
        med[p] = statistics.median(v)
        c = calls.get(key + (p,))
        cells.append("%.1f" % med[p] + (" (%.2f)" % statistics.median(c) if c else ""))
    ratio = ""
    if "veth" in paths and "tap" in paths:
        ratio = " | %.2f" % (med.get("tap", 0) / med["veth"]) if med.get("veth") else " | -"
    label = "%s %d B %s" % ("ns->host" if d == "up" else "host->ns", size, "gso" if gso == "1" else "plain")
    print("| " + label + " | " + " | ".join(cells) + ratio + " |")
PY
