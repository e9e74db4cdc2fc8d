#!/usr/bin/env bash
# Bypass mode: iperf3 through `tapwire run --bypass` against the kernel's own loopback, in the
# same run, plus the per-connect overhead (connections per second with and without bypass).
#
#   scripts/bench-bypass.sh [-t SECONDS] [-b TAPWIRE_BIN] [-n CONNECTS] [-r ROUNDS]
#
# Rows (iperf3 server on 127.0.0.1 of the host, one TCP stream, receiver-side Gbit/s, median and
# best of ROUNDS rounds that interleave the paths; this kind of machine is noisy):
#   loopback     iperf3 -c 127.0.0.1 in the host namespace itself (what a host socket gets)
#   bypass       tapwire run --bypass -- iperf3 -c 10.0.2.2   (gateway = host loopback)
#   tap 65520    tapwire run --mtu 65520 -- iperf3 -c 10.0.2.2 (the tap path, for scale)
# Connects: a Python client does N times connect / read a 100-byte reply / close against a
# Python server on the host's 127.0.0.1 (directly, through bypass, through the tap); best of
# ROUNDS runs. Prints markdown tables.
#
# Network safety: the script re-executes itself in a private network + mount namespace (lo up,
# no default route), so nothing it starts can reach anything but that namespace. Needs root,
# iperf3, python3. Every step has a timeout.
set -euo pipefail

DURATION=5
TAPWIRE=./target/release/tapwire
CONNECTS=3000
ROUNDS=3

usage() {
	sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
	exit "${1:-0}"
}

ORIG_ARGS=("$@")
while [ $# -gt 0 ]; do
	case "$1" in
	-t | --time) DURATION="$2"; shift 2 ;;
	-b | --bin) TAPWIRE="$2"; shift 2 ;;
	-n | --connects) CONNECTS="$2"; shift 2 ;;
	-r | --rounds) ROUNDS="$2"; shift 2 ;;
	-h | --help) usage 0 ;;
	*) echo "unknown option: $1" >&2; usage 2 >&2 ;;
	esac
done

die() { echo "bench-bypass: $*" >&2; exit 2; }

if [ "$(id -u)" != 0 ]; then die "must run as root (it creates namespaces)"; fi
for t in iperf3 python3 unshare ip ss timeout; do
	command -v "$t" >/dev/null || die "$t not found"
done
case "$DURATION$CONNECTS$ROUNDS" in '' | *[!0-9]*) die "-t, -n and -r take whole numbers" ;; esac
[ -x "$TAPWIRE" ] || die "tapwire binary $TAPWIRE not found (cargo build --release?)"
TAPWIRE=$(readlink -f "$TAPWIRE")
PY=$(command -v python3)
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3

# ---- re-exec inside a private host namespace ------------------------------------------------
source "$(dirname "$0")/bench/common.sh"
enter_private_ns "${ORIG_ARGS[@]}"

listening() { ss -Hltn "sport = :$1" | grep -q .; }
wait_listen() {
	local i
	for ((i = 0; i < 200; i++)); do listening "$1" && return 0; sleep 0.05; done
	echo "nothing listens on $1" >&2
	return 1
}

PORT=5300
# iperf_row NAME CMD_PREFIX... -- TARGET: fills RES[NAME,up] and RES[NAME,down].
declare -A RES
FAILED=0
iperf_once() { # TARGET PREFIX... ; extra iperf3 args in IPERF_EXTRA
	local target=$1
	shift
	PORT=$((PORT + 1))
	iperf3 -s -1 -B 127.0.0.1 -p "$PORT" >"$WORK/server.log" 2>&1 &
	local srv=$!
	PIDS+=("$srv")
	wait_listen "$PORT" || return 1
	local rc=0
	timeout $((DURATION + 30)) "$@" iperf3 -c "$target" -p "$PORT" -t "$DURATION" -J $IPERF_EXTRA \
		>"$WORK/client.json" 2>"$WORK/client.err" || rc=$?
	kill "$srv" 2>/dev/null || true
	wait "$srv" 2>/dev/null || true
	"$PY" - "$WORK/client.json" "$rc" "$WORK/client.err" <<'PY'
import json, sys
path, rc, err = sys.argv[1:4]
text = open(path).read()
# Run mode may print nothing but iperf3's JSON; take the outermost object.
try:
    d = json.loads(text[text.index("{"):text.rindex("}") + 1])
    print("%.2f" % (d["end"]["sum_received"]["bits_per_second"] / 1e9))
    sys.exit(0)
except (ValueError, KeyError, TypeError):
    pass
sys.stderr.write("    iperf3 failed (status %s): %s %s\n" % (rc, text[-300:], open(err).read()[-500:]))
sys.exit(1)
PY
}

# stat best|median FIGURES...: of the numeric ones (FAIL if none).
stat() {
	"$PY" -c 'import statistics, sys
v = [float(x) for x in sys.argv[2:] if x != "FAIL"]
f = max if sys.argv[1] == "best" else statistics.median
print("%.2f" % f(v) if v else "FAIL")' "$@"
}

iperf_row() {
	local name=$1 target=$2
	shift 2
	echo "== $name" >&2
	local v up=FAIL down=FAIL
	if v=$(IPERF_EXTRA="" iperf_once "$target" "$@"); then up=$v; else FAILED=1; fi
	if v=$(IPERF_EXTRA="-R" iperf_once "$target" "$@"); then down=$v; else FAILED=1; fi
	echo "   ns->host $up  host->ns $down Gbit/s" >&2
	ALL[$name,up]="${ALL[$name,up]:-} $up"
	ALL[$name,down]="${ALL[$name,down]:-} $down"
}
declare -A ALL

# Rounds interleave the paths, so that a noisy neighbour hurts them alike.
for ((round = 1; round <= ROUNDS; round++)); do
	echo "-- round $round/$ROUNDS" >&2
	iperf_row loopback 127.0.0.1
	iperf_row bypass 10.0.2.2 "$TAPWIRE" run --bypass --
	iperf_row "tap 65520" 10.0.2.2 "$TAPWIRE" run --mtu 65520 --
done
for name in loopback bypass "tap 65520"; do
	for dir in up down; do
		# shellcheck disable=SC2086
		RES[$name,$dir,best]=$(stat best ${ALL[$name,$dir]})
		# shellcheck disable=SC2086
		RES[$name,$dir,median]=$(stat median ${ALL[$name,$dir]})
	done
done

# ---- connections per second -------------------------------------------------------------------
cat >"$WORK/server.py" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(1024)
reply = b"x" * 100
while True:
    c, _ = s.accept()
    c.sendall(reply)
    c.close()
PY
cat >"$WORK/client.py" <<'PY'
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t = time.perf_counter()
for _ in range(n):
    s = socket.create_connection((host, port))
    got = 0
    while got < 100:
        b = s.recv(100 - got)
        if not b:
            break
        got += len(b)
    s.close()
print("%.0f" % (n / (time.perf_counter() - t)))
PY
CPORT=5400
"$PY" "$WORK/server.py" "$CPORT" >"$WORK/cserver.log" 2>&1 &
PIDS+=($!)
wait_listen "$CPORT" || die "connect server did not start"

# conn_row NAME TARGET PREFIX...: keeps the best of the rounds.
declare -A CONN
conn_row() {
	local name=$1 target=$2 v
	shift 2
	: "${CONN[$name]:=0}"
	if v=$(timeout 120 "$@" "$PY" "$WORK/client.py" "$target" "$CPORT" "$CONNECTS" 2>"$WORK/conn.err" | tail -1) &&
		[ -n "$v" ]; then
		echo "== connects: $name: $v/s" >&2
		if [ "$v" -gt "${CONN[$name]}" ]; then CONN[$name]=$v; fi
	else
		echo "== connects: $name failed" >&2
		sed 's/^/    /' "$WORK/conn.err" >&2
		FAILED=1
	fi
}

for ((round = 1; round <= ROUNDS; round++)); do
	conn_row loopback 127.0.0.1
	conn_row bypass 10.0.2.2 "$TAPWIRE" run --bypass --
	conn_row "tap" 10.0.2.2 "$TAPWIRE" run --
done

# ---- tables ---------------------------------------------------------------------------------
ratio() {
	"$PY" -c 'import sys
try:
    a, b = float(sys.argv[1]), float(sys.argv[2])
    print("%.0f%%" % (100 * a / b) if b > 0 else "-")
except ValueError:
    print("-")' "$1" "$2"
}

echo
echo "iperf3, one TCP stream, ${DURATION} s per cell, $ROUNDS interleaved rounds, Gbit/s (receiver side), median / best:"
echo
echo "| path | ns -> host | host -> ns | median vs loopback (->, <-) |"
echo "|---|---|---|---|"
for name in loopback bypass "tap 65520"; do
	u=${RES[$name,up,median]} d=${RES[$name,down,median]}
	echo "| $name | $u / ${RES[$name,up,best]} | $d / ${RES[$name,down,best]} | $(ratio "$u" "${RES[loopback,up,median]}"), $(ratio "$d" "${RES[loopback,down,median]}") |"
done
echo
echo "Connections per second (Python client, connect + 100-byte reply + close, best of $ROUNDS x $CONNECTS):"
echo
echo "| path | connections/s | vs loopback | per-connect cost over loopback |"
echo "|---|---|---|---|"
for name in loopback bypass tap; do
	cost=$("$PY" -c 'import sys
a, b = float(sys.argv[1]), float(sys.argv[2])
print("%.1f us" % (1e6 / a - 1e6 / b) if a > 0 and b > 0 else "-")' "${CONN[$name]}" "${CONN[loopback]}")
	echo "| $name | ${CONN[$name]} | $(ratio "${CONN[$name]}" "${CONN[loopback]}") | $cost |"
done
exit "$FAILED"
