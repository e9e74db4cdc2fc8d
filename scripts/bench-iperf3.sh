#!/usr/bin/env bash
# iperf3 through tapwire and slirp4netns (and optionally pasta), in the same run.
#
#   scripts/bench-iperf3.sh [-t SECONDS] [-b TAPWIRE_BIN] [-s SLIRP4NETNS_BIN] [-m "1500 65520"]
#                           [--pasta] [--only NAME[,NAME]]
#
# For each MTU and forwarder: a guest namespace (unshare --user --map-root-user --net) is
# attached by the forwarder with -c, an iperf3 server listens on 127.0.0.1 of the "host", and
# the guest runs `iperf3 -c 10.0.2.2` (ns->host) and `iperf3 -c 10.0.2.2 -R` (host->ns).
# Then the port-forward path: add_hostfwd over the forwarder's --api-socket (127.0.0.1:PORT+
# 10000 -> 10.0.2.100:PORT), an iperf3 server in the guest and `iperf3 -c 127.0.0.1` on the
# host (host->ns through the forward; tapwire and slirp4netns, not pasta).
# Prints a markdown table in Gbit/s (receiver side) with the tapwire/slirp4netns ratio.
#
# Network safety: the script re-executes itself in a private network + mount namespace (lo up,
# no default route, /etc/resolv.conf bind-mounted to "nameserver 127.0.0.1"), so nothing it
# starts can reach anything but that namespace. Needs root, iperf3, slirp4netns, python3.
# Every step has a timeout; a forwarder that fails shows FAIL in its cell (details on stderr)
# and makes the script exit 1 after the table.
set -euo pipefail

DURATION=5
TAPWIRE=./target/release/tapwire
SLIRP=slirp4netns
MTUS="1500 65520"
PASTA=0
ONLY=""

usage() {
	sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
	exit "${1:-0}"
}

ORIG_ARGS=("$@")
while [ $# -gt 0 ]; do
	case "$1" in
	-t | --time) DURATION="$2"; shift 2 ;;
	-b | --bin) TAPWIRE="$2"; shift 2 ;;
	-s | --slirp4netns) SLIRP="$2"; shift 2 ;;
	-m | --mtu) MTUS="$2"; shift 2 ;;
	--pasta) PASTA=1; shift ;;
	--only) ONLY="$2"; shift 2 ;;
	-h | --help) usage 0 ;;
	*) echo "unknown option: $1" >&2; usage 2 >&2 ;;
	esac
done

die() { echo "bench-iperf3: $*" >&2; exit 2; }

if [ "$(id -u)" != 0 ]; then die "must run as root (it creates namespaces)"; fi
for t in iperf3 python3 unshare nsenter ip ss setpriv timeout; do
	command -v "$t" >/dev/null || die "$t not found"
done
case "$DURATION" in '' | *[!0-9]*) die "-t needs whole seconds" ;; esac

# ---- step 1: re-exec inside a private host namespace ------------------------------------
source "$(dirname "$0")/bench/common.sh"
enter_private_ns "${ORIG_ARGS[@]}"

want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# ---- helpers -------------------------------------------------------------------------------

# wait_for DESC SECONDS CMD...: scripts/bench/common.sh.

is_sleep() { [ "$(cat "/proc/$1/comm" 2>/dev/null)" = sleep ]; }
alive() { kill -0 "$1" 2>/dev/null; }
listening() { ss -Hltn "sport = :$1" | grep -q .; }

# start_guest [setpriv args...]: sets GUEST.
start_guest() {
	"$@" unshare --user --map-root-user --net -- sleep infinity &
	GUEST=$!
	PIDS+=("$GUEST")
	wait_for "guest namespace" 10 is_sleep "$GUEST"
}

in_guest() { nsenter -t "$GUEST" -U -n --preserve-credentials -- "$@"; }

stop() {
	local p
	for p in "$@"; do
		kill -TERM "$p" 2>/dev/null || true
	done
	for p in "$@"; do
		for _ in $(seq 1 40); do alive "$p" || break; sleep 0.05; done
		kill -9 "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
}

# start_slirp_like BIN MTU: BIN -c -r 3 --mtu MTU --api-socket $API GUEST tap0; sets DAEMON
# and API; 0 when ready.
start_slirp_like() {
	local bin=$1 mtu=$2 ready="$WORK/ready.$RANDOM"
	API="$WORK/api.$RANDOM.sock"
	: >"$ready"
	"$bin" -c -r 3 --mtu "$mtu" --api-socket "$API" "$GUEST" tap0 3>"$ready" \
		>"$WORK/daemon.log" 2>&1 &
	DAEMON=$!
	PIDS+=("$DAEMON")
	local i
	for ((i = 0; i < 200; i++)); do
		if [ "$(cat "$ready")" = 1 ]; then return 0; fi
		if ! alive "$DAEMON"; then
			echo "$bin exited before it was ready; log:" >&2
			sed 's/^/    /' "$WORK/daemon.log" >&2
			return 1
		fi
		sleep 0.05
	done
	echo "$bin not ready after 10 s; log:" >&2
	sed 's/^/    /' "$WORK/daemon.log" >&2
	return 1
}

has_guest_addr() { in_guest ip -o -4 addr show | grep -q 'inet 10\.0\.2\.100/'; }

# prepare_pasta and NOBODY: scripts/bench/common.sh.

start_pasta() {
	local mtu=$1
	"${NOBODY[@]}" pasta -f --config-net -i twbench0 -a 10.0.2.100 -n 24 -g 10.0.2.2 \
		-m "$mtu" -t none -u none -T none -U none "$GUEST" >"$WORK/daemon.log" 2>&1 &
	DAEMON=$!
	PIDS+=("$DAEMON")
	if ! wait_for "pasta to configure the guest" 10 has_guest_addr; then
		sed 's/^/    /' "$WORK/daemon.log" >&2
		return 1
	fi
}

# parse_iperf JSON RC ERRFILE: prints Gbit/s (receiver side), or the reason on stderr and fails.
parse_iperf() {
	python3 - "$1" "$2" "$3" <<'PY'
import json, sys
path, rc, err = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    d = json.load(open(path))
except ValueError:
    d = {}
try:
    print("%.2f" % (d["end"]["sum_received"]["bits_per_second"] / 1e9))
    sys.exit(0)
except (KeyError, TypeError):
    pass
why = d.get("error") or open(err).read().strip() or "no result"
if rc == "124":
    why = "timed out (killed); " + why
sys.stderr.write("    iperf3 client failed (status %s): %s\n" % (rc, why))
sys.exit(1)
PY
}

# api_add_hostfwd SOCKET HOST_PORT GUEST_PORT: add_hostfwd tcp 127.0.0.1:HOST_PORT ->
# 10.0.2.100:GUEST_PORT over the raw protocol (works with tapwire and slirp4netns).
api_add_hostfwd() {
	python3 - "$@" <<'PY'
import json, socket, sys
path, hport, gport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(path)
s.sendall(json.dumps({"execute": "add_hostfwd", "arguments": {
    "proto": "tcp", "host_addr": "127.0.0.1", "host_port": hport,
    "guest_addr": "10.0.2.100", "guest_port": gport}}).encode())
s.shutdown(socket.SHUT_WR)
r = b""
while True:
    b = s.recv(4096)
    if not b:
        break
    r += b
if "return" not in json.loads(r or b"{}"):
    sys.exit("    add_hostfwd failed: %r" % r)
PY
}

guest_listening() { in_guest ss -Hltn "sport = :$1" | grep -q .; }

PORT=5201
# iperf_run [-R]: prints Gbit/s (receiver side) or returns 1. Runs in $(...): bump PORT outside.
iperf_run() {
	iperf3 -s -1 -B 127.0.0.1 -p "$PORT" >"$WORK/server.log" 2>&1 &
	local srv=$!
	PIDS+=("$srv")
	if ! wait_for "iperf3 server on 127.0.0.1:$PORT" 10 listening "$PORT"; then
		sed 's/^/    /' "$WORK/server.log" >&2
		stop "$srv"
		return 1
	fi
	local json="$WORK/client.json" rc=0
	timeout $((DURATION + 20)) nsenter -t "$GUEST" -U -n --preserve-credentials -- \
		iperf3 -c 10.0.2.2 -p "$PORT" -t "$DURATION" -J "$@" >"$json" 2>"$WORK/client.err" ||
		rc=$?
	stop "$srv"
	parse_iperf "$json" "$rc" "$WORK/client.err"
}

# iperf_fwd: host->ns through a port forward: add_hostfwd 127.0.0.1:PORT+10000 ->
# 10.0.2.100:PORT on $API, iperf3 server in the guest, client on the host. Prints Gbit/s or
# returns 1. Runs in $(...): bump PORT outside.
iperf_fwd() {
	local fport=$((PORT + 10000))
	api_add_hostfwd "$API" "$fport" "$PORT" || return 1
	in_guest iperf3 -s -1 -B 10.0.2.100 -p "$PORT" >"$WORK/server.log" 2>&1 &
	local srv=$!
	PIDS+=("$srv")
	if ! wait_for "iperf3 server on 10.0.2.100:$PORT in the guest" 10 guest_listening "$PORT"; then
		sed 's/^/    /' "$WORK/server.log" >&2
		stop "$srv"
		return 1
	fi
	local json="$WORK/client.json" rc=0
	timeout $((DURATION + 20)) iperf3 -c 127.0.0.1 -p "$fport" -t "$DURATION" -J \
		>"$json" 2>"$WORK/client.err" || rc=$?
	stop "$srv"
	parse_iperf "$json" "$rc" "$WORK/client.err"
}

# measure NAME MTU: fills RES[NAME,MTU,up], RES[NAME,MTU,down] and RES[NAME,MTU,fwd].
declare -A RES
FAILED=0
measure() {
	local name=$1 mtu=$2 up down fwd
	RES[$name,$mtu,up]="FAIL"
	RES[$name,$mtu,down]="FAIL"
	RES[$name,$mtu,fwd]="-"
	echo "== $name, MTU $mtu" >&2
	case "$name" in
	tapwire)
		start_guest
		start_slirp_like "$TAPWIRE" "$mtu" || { FAILED=1; stop "$GUEST"; return; }
		;;
	slirp4netns)
		start_guest
		start_slirp_like "$SLIRP" "$mtu" || { FAILED=1; stop "$GUEST"; return; }
		;;
	pasta)
		prepare_pasta
		start_guest "${NOBODY[@]}"
		start_pasta "$mtu" || { FAILED=1; stop "$GUEST"; return; }
		;;
	esac
	PORT=$((PORT + 1))
	if up=$(iperf_run); then RES[$name,$mtu,up]=$up; else FAILED=1; fi
	PORT=$((PORT + 1))
	if down=$(iperf_run -R); then RES[$name,$mtu,down]=$down; else FAILED=1; fi
	if [ "$name" != pasta ]; then
		RES[$name,$mtu,fwd]="FAIL"
		PORT=$((PORT + 1))
		if fwd=$(iperf_fwd); then RES[$name,$mtu,fwd]=$fwd; else FAILED=1; fi
	fi
	echo "   ns->host ${RES[$name,$mtu,up]}  host->ns ${RES[$name,$mtu,down]}" \
		" host->ns via port forward ${RES[$name,$mtu,fwd]} Gbit/s" >&2
	stop "$DAEMON" "$GUEST"
}

NAMES=()
want slirp4netns && NAMES+=(slirp4netns)
want tapwire && NAMES+=(tapwire)
if [ "$PASTA" = 1 ] && want pasta; then
	if command -v pasta >/dev/null; then NAMES+=(pasta); else echo "pasta not found, skipped" >&2; fi
fi
[ ${#NAMES[@]} -gt 0 ] || die "nothing to measure (--only $ONLY)"
if want tapwire && [ ! -x "$TAPWIRE" ]; then
	echo "tapwire binary $TAPWIRE not found (cargo build --release?)" >&2
fi

for mtu in $MTUS; do
	for name in "${NAMES[@]}"; do
		measure "$name" "$mtu"
	done
done

# ---- table ---------------------------------------------------------------------------------
ratio() {
	python3 -c 'import sys
try:
    a, b = float(sys.argv[1]), float(sys.argv[2])
    print("%.2fx" % (a / b) if b > 0 else "-")
except ValueError:
    print("-")' "$1" "$2"
}

echo
echo "iperf3, ${DURATION} s per run, single TCP stream, guest <-> host 127.0.0.1 via 10.0.2.2;"
echo "port fwd: host client -> 127.0.0.1:FWDPORT -> add_hostfwd -> iperf3 server in the guest;"
echo "$(nproc) CPUs, kernel $(uname -r), $(iperf3 --version | head -1 | cut -d' ' -f1-2)."
echo
header="| direction | MTU |"
sep="|---|---|"
for n in "${NAMES[@]}"; do
	header+=" $n |"
	sep+="---|"
done
has_ratio=0
if [[ " ${NAMES[*]} " == *" tapwire "* && " ${NAMES[*]} " == *" slirp4netns "* ]]; then
	header+=" tapwire/slirp4netns |"
	sep+="---|"
	has_ratio=1
fi
echo "$header"
echo "$sep"
for dir in up down fwd; do
	label="ns -> host"
	[ "$dir" = down ] && label="host -> ns"
	[ "$dir" = fwd ] && label="host -> ns (port fwd)"
	for mtu in $MTUS; do
		row="| $label | $mtu |"
		for n in "${NAMES[@]}"; do row+=" ${RES[$n,$mtu,$dir]} |"; done
		if [ "$has_ratio" = 1 ]; then
			row+=" $(ratio "${RES[tapwire,$mtu,$dir]}" "${RES[slirp4netns,$mtu,$dir]}") |"
		fi
		echo "$row"
	done
done
echo "(Gbit/s, receiver side; FAIL: see messages above)"
exit "$FAILED"
