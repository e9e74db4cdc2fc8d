#!/usr/bin/env bash
# The benchmark suite: tapwire against slirp4netns, pasta and the kernel, side by side.
#
#   sudo scripts/bench.sh [--quick] [--rounds N] [-t SECONDS] [--paths LIST] [--mtus "1500 65520"]
#                         [-b TAPWIRE_BIN] [-B OTHER_BIN] [--flows N] [--no-flows] [--out DIR]
#                         [--keep] [--pasta PASTA_BIN] [--udp-only] [--threads N]
#   sudo scripts/bench.sh --profile [-t SECONDS] [--paths tap]   # perf profiles of the daemon
#   sudo scripts/bench.sh --quick --rounds 1 --strace [...]      # daemon syscalls per conn/RTT
#
# Paths (columns): tap (tapwire -c PID), bypass (tapwire run --bypass, only if the binary has
# it), slirp4netns, pasta (as an unprivileged user), veth (a kernel veth pair: the kernel
# limit), lo (host loopback: what a bypassed socket gets). --paths takes a comma list of these
# (plus "run": tapwire run without --bypass, to check the in-guest command runner). splice
# (tapwire run --forward-to-host: the guest's own 127.0.0.1 spliced to the host's, no tap; TCP
# only, at the largest MTU; compare with lo and with tap's 10.0.2.2). -B BIN adds
# "tapb": tap mode with another tapwire binary, alternating with the others (A/B a change).
# tapmq: tap mode with --threads N (a multi-queue TAP, one engine thread per queue; N from
# --threads, default the number of CPUs), in the default paths when the binary has it.
#
# Measures, each the median of N rounds (default 3) in which the paths alternate (A B C A B C,
# starting one path later each round):
#   - TCP throughput (iperf3), 1 and 4 streams, ns->host and host->ns, each MTU;
#   - host->ns through a port forward (host 127.0.0.1:15201 -> guest :5201), each MTU;
#   - at the largest MTU: TCP ping-pong latency (sockperf, 64 B, one-way p50/p99), new TCP
#     connections per second (scripts/bench/twb.c crr: 8 in flight, 100 B request/reply),
#     UDP datagrams per second at 64 B and 1400 B payloads and loss (iperf3 -u -l LEN -b 0),
#     both ways;
#   - daemon CPU seconds per GB moved (utime+stime around each TCP run) and RSS;
# loopback and bypass (whose data never crosses the tap) only at the largest MTU. Then once
# per forwarder: idle CPU, wakeups and RSS, and with --flows N (default 10000) idle
# connections open: RSS, idle CPU, and latency (does per-packet cost grow with flows?).
#
# --profile: instead of the rounds, perf record (cpu-clock, DWARF call graphs) on each tapwire
# path during iperf3 both ways at each MTU, the connection-rate test, UDP 64 B and 1400 B both
# ways, ping-pong, and ping-pong with the idle flows open; then each workload once more with
# the whole machine sampled, split by command (who had the CPUs: the applications, the
# forwarder, or nobody), also for veth (--paths tap,veth) as the kernel's own split; writes
# bench-results/profile-<date>/*.txt (flat and caller views, the split at the end).
#
# Output: bench-results/<date>.json (every sample and the medians), <date>.md (tables, ratios,
# targets of issue 7) and <date>.png (bars per path, grouped by measure). Default: 2 s per
# run, about 14 minutes. --quick: 3 rounds of 1 s at MTU 65520 only (unless --mtus), TCP 1
# stream both ways, latency, connections/s and idle; no port forward, UDP or --flows (about
# 3 minutes). --udp-only: only the UDP measures (64 B and 1400 B both ways) at the largest MTU,
# no idle or --flows step (an A/B of UDP changes in a few minutes).
# --strace: during the latency and connection-rate runs, strace -c -f the daemon (tap paths)
# and print its system calls per ping-pong round trip (per host sendto) and per connection
# (per twb connection); strace slows the daemon: the speed figures of such a run are not
# speed figures. Tables in $OUT/strace-*.txt.
# --pasta BIN: the pasta binary to run (default /usr/bin/pasta, Debian's; e.g. one built
# outside the repo).
#
# Network safety: everything runs inside a private network + mount namespace made here (lo up,
# no default route, own resolv.conf); guests are further namespaces joined by veth/TAP. Needs
# root, iperf3, sockperf, slirp4netns, pasta (optional), cc, python3 (+matplotlib for the PNG).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TAPWIRE=$ROOT/target/release/tapwire
TAPWIRE_B=""
SLIRP=slirp4netns
PASTA=/usr/bin/pasta
UDP_ONLY=0
ROUNDS=3
DUR=2
SHORT=2
MTUS="1500 65520"
DO_PF=1
DO_UDP=1
IDLE_S=3
STREAMS="1 4"
PATHS_ARG=""
FLOWS=
OUT=$ROOT/bench-results
QUICK=0
KEEP=0
MTUS_SET=0
PROFILE=0
MQ_THREADS=$(nproc)
STRACE=0

usage() {
	sed -n '2,38p' "$0" | sed 's/^# \{0,1\}//'
	exit "${1:-0}"
}

ORIG_ARGS=("$@")
while [ $# -gt 0 ]; do
	case "$1" in
	--quick) QUICK=1; shift ;;
	--rounds) ROUNDS="$2"; shift 2 ;;
	-t | --time) DUR="$2"; SHORT="$2"; shift 2 ;;
	--paths) PATHS_ARG="$2"; shift 2 ;;
	--mtus | -m) MTUS="$2"; MTUS_SET=1; shift 2 ;;
	-b | --bin) TAPWIRE="$2"; shift 2 ;;
	-B | --bin-b) TAPWIRE_B="$2"; shift 2 ;;
	-s | --slirp4netns) SLIRP="$2"; shift 2 ;;
	--flows) FLOWS="$2"; shift 2 ;;
	--no-flows) FLOWS=0; shift ;;
	--out) OUT="$2"; shift 2 ;;
	--keep) KEEP=1; shift ;;
	--profile) PROFILE=1; shift ;;
	--strace) STRACE=1; shift ;;
	--pasta) PASTA="$2"; shift 2 ;;
	--threads) MQ_THREADS="$2"; shift 2 ;;
	--udp-only) UDP_ONLY=1; shift ;;
	-h | --help) usage 0 ;;
	*) echo "unknown option: $1" >&2; usage 2 >&2 ;;
	esac
done
if [ "$QUICK" = 1 ]; then
	DUR=1
	SHORT=1
	STREAMS=1
	[ "$MTUS_SET" = 1 ] || MTUS=65520
	DO_PF=0
	DO_UDP=0
	IDLE_S=2
	FLOWS=${FLOWS:-0}
fi
if [ "$UDP_ONLY" = 1 ]; then
	[ "$MTUS_SET" = 1 ] || MTUS=65520
	DO_PF=0
	DO_UDP=1
	FLOWS=${FLOWS:-0}
fi
FLOWS=${FLOWS:-10000}

die() { echo "bench: $*" >&2; exit 2; }
note() { echo "bench: $*" >&2; }

[ "$(id -u)" = 0 ] || die "must run as root (it creates namespaces)"
for t in iperf3 sockperf python3 unshare nsenter ip ss setpriv timeout cc mknod; do
	command -v "$t" >/dev/null || die "$t not found"
done
case "$ROUNDS$DUR" in *[!0-9]*) die "--rounds and -t take whole numbers" ;; esac
[ "$ROUNDS" -ge 1 ] || die "--rounds must be >= 1"

# ---- step 1: re-exec inside a private host namespace --------------------------------------
source "$HERE/bench/common.sh"
enter_private_ns "${ORIG_ARGS[@]}"
# Per-namespace knobs for connection-rate tests (this namespace only).
echo "1024 65000" >/proc/sys/net/ipv4/ip_local_port_range
echo 1 >/proc/sys/net/ipv4/tcp_tw_reuse
# Every process inherits the highest file limit we may set (10,000 idle flows need ~10,000 fds
# in the guest client, the host server and the forwarder each).
ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
if [ "$FLOWS" -gt 0 ] && [ "$NOFILE" != unlimited ] && [ "$NOFILE" -lt $((FLOWS + 200)) ]; then
	note "RLIMIT_NOFILE hard limit is $NOFILE (and cannot be raised here): --flows $FLOWS -> $((NOFILE - 200))"
	FLOWS=$((NOFILE - 200))
fi

cc -O2 -o "$WORK/twb" "$HERE/bench/twb.c" || die "building scripts/bench/twb.c failed"
# Run a private copy of tapwire: a rebuild during the run must not change the binary under
# test (and perf needs the file to resolve symbols).
if [ -x "$TAPWIRE" ]; then
	TAPWIRE_SRC=$TAPWIRE
	cp "$TAPWIRE" "$WORK/tapwire"
	TAPWIRE=$WORK/tapwire
fi
if [ -n "$TAPWIRE_B" ]; then
	[ -x "$TAPWIRE_B" ] || die "-B $TAPWIRE_B: not executable"
	TAPWIRE_B_SRC=$TAPWIRE_B
	cp "$TAPWIRE_B" "$WORK/tapwire-b"
	TAPWIRE_B=$WORK/tapwire-b
fi
UTIL=(python3 "$HERE/bench/util.py")
SAMPLES=$WORK/samples.jsonl
: >"$SAMPLES"
NOTES=()

# ---- paths ---------------------------------------------------------------------------------
PATHS=()
has_bypass() {
	local help
	[ -x "$TAPWIRE" ] && help=$("$TAPWIRE" run --help 2>/dev/null) && [[ "$help" == *--bypass* ]]
}
has_threads() {
	local help
	[ -x "$TAPWIRE" ] && help=$("$TAPWIRE" --help 2>/dev/null) && [[ "$help" == *--threads* ]]
}
has_splice() {
	local help
	[ -x "$TAPWIRE" ] && help=$("$TAPWIRE" run --help 2>/dev/null) && [[ "$help" == *--forward-to-host* ]]
}
want_default() {
	[ -x "$TAPWIRE" ] && PATHS+=(tap) || NOTES+=("tapwire binary $TAPWIRE not found: tap skipped (cargo build --release)")
	[ -n "$TAPWIRE_B" ] && PATHS+=(tapb)
	if has_threads; then PATHS+=(tapmq); else NOTES+=("tapmq: ${TAPWIRE_SRC:-tapwire} has no --threads; skipped"); fi
	if has_bypass; then PATHS+=(bypass); else NOTES+=("bypass: ${TAPWIRE_SRC:-tapwire} run has no --bypass; skipped"); fi
	if has_splice; then PATHS+=(splice); else NOTES+=("splice: ${TAPWIRE_SRC:-tapwire} run has no --forward-to-host; skipped"); fi
	command -v "$SLIRP" >/dev/null && PATHS+=(slirp4netns) || NOTES+=("$SLIRP not found: skipped")
	command -v "$PASTA" >/dev/null && PATHS+=(pasta) || NOTES+=("pasta ($PASTA) not found: skipped")
	PATHS+=(veth lo)
}
if [ -z "$PATHS_ARG" ]; then
	want_default
else
	IFS=, read -r -a PATHS <<<"$PATHS_ARG"
	for p in "${PATHS[@]}"; do
		case "$p" in
		tap | run | slirp4netns | pasta | veth | lo) ;;
		tapb) [ -n "$TAPWIRE_B" ] || die "tapb needs -B BIN" ;;
		tapmq) has_threads || die "$TAPWIRE has no --threads" ;;
		bypass) has_bypass || die "$TAPWIRE run has no --bypass" ;;
		splice) has_splice || die "$TAPWIRE run has no --forward-to-host" ;;
		*) die "unknown path $p" ;;
		esac
	done
fi
for n in "${NOTES[@]}"; do note "$n"; done
is_daemon() { case "$1" in tap | tapb | tapmq | run | bypass | splice | slirp4netns | pasta) return 0 ;; esac; return 1; }
is_runmode() { case "$1" in run | bypass | splice) return 0 ;; esac; return 1; }

# ---- helpers -------------------------------------------------------------------------------
# wait_for: scripts/bench/common.sh.
alive() { kill -0 "$1" 2>/dev/null; }
is_sleep() { [ "$(cat "/proc/$1/comm" 2>/dev/null)" = sleep ]; }
host_listening() { ss -Hltn "sport = :$1" | grep -q .; }
stop() {
	local p
	for p in "$@"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done
	for p in "$@"; do
		[ -n "$p" ] || continue
		for _ in $(seq 1 40); do alive "$p" || break; sleep 0.05; done
		kill -9 "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
}
cpu_ticks() {
	local s
	s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
	s=${s##*) }
	# shellcheck disable=SC2086
	set -- $s
	echo $((${12} + ${13}))
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
ctxsw() { awk '/ctxt_switches/ {s += $2} END {print s + 0}' "/proc/$1/status" 2>/dev/null || echo 0; }
TICK=$(getconf CLK_TCK)

ROUND=0
# sample PATH MEASURE VALUE [UNIT]
sample() {
	printf '{"round":%d,"path":"%s","measure":"%s","value":%s}\n' "$ROUND" "$1" "$2" "$3" >>"$SAMPLES"
}
fail_sample() {
	printf '{"round":%d,"path":"%s","measure":"%s","value":null,"error":true}\n' "$ROUND" "$1" "$2" >>"$SAMPLES"
}

# ---- host-side services (in this private namespace, on 0.0.0.0) ------------------------
"$WORK/twb" serve 7000 100 >"$WORK/twb-serve.log" 2>&1 &
PIDS+=($!)
sockperf sr --tcp -i 0.0.0.0 -p 11111 >"$WORK/sockperf-sr.log" 2>&1 &
PIDS+=($!)
wait_for "host twb server" 10 host_listening 7000 || die "twb serve did not start"
wait_for "host sockperf server" 10 host_listening 11111 || die "sockperf server did not start"

# pasta runs as nobody: prepare_pasta and NOBODY are in scripts/bench/common.sh.

# ---- guest setup: start_path NAME MTU sets GUEST (a pid to nsenter), DAEMON, GUEST_IP ----
GUEST=""
DAEMON=""
RUNNER=""
GUEST_IP=10.0.2.100
HOST_IP=10.0.2.2 # where the guest reaches the host's 0.0.0.0 services
PF_ADDR=127.0.0.1
PF_PORT=15201
CUR=""

start_guest() {
	"$@" unshare --user --map-root-user --net -- sleep infinity &
	GUEST=$!
	PIDS+=("$GUEST")
	wait_for "guest namespace" 10 is_sleep "$GUEST"
}

start_slirp_like() {
	local bin=$1 mtu=$2 ready="$WORK/ready" sock="$WORK/api.sock"
	shift 2
	: >"$ready"
	rm -f "$sock"
	"$bin" -c -r 3 --mtu "$mtu" -a "$sock" "$@" "$GUEST" tap0 3>"$ready" >"$WORK/daemon.log" 2>&1 &
	DAEMON=$!
	PIDS+=("$DAEMON")
	local i
	for ((i = 0; i < 200; i++)); do
		if [ "$(cat "$ready")" = 1 ]; then break; fi
		if ! alive "$DAEMON"; then
			echo "    $bin exited before it was ready:" >&2
			sed 's/^/      /' "$WORK/daemon.log" >&2
			return 1
		fi
		sleep 0.05
	done
	[ "$(cat "$ready")" = 1 ] || { echo "    $bin not ready after 10 s" >&2; return 1; }
	wait_for "API socket" 5 test -S "$sock" || return 1
	"${UTIL[@]}" api "$sock" "{\"execute\":\"add_hostfwd\",\"arguments\":{\"proto\":\"tcp\",\"host_addr\":\"$PF_ADDR\",\"host_port\":$PF_PORT,\"guest_port\":5201}}" >"$WORK/api.out" 2>&1 ||
		{ echo "    add_hostfwd failed: $(cat "$WORK/api.out")" >&2; return 1; }
}

has_guest_addr() { gx "ip -o -4 addr show | grep -q 'inet $GUEST_IP/'"; }

start_pasta() {
	local mtu=$1
	prepare_pasta
	start_guest "${NOBODY[@]}"
	"${NOBODY[@]}" "$PASTA" -f --config-net -i twbench0 -a "$GUEST_IP" -n 24 -g 10.0.2.2 \
		-m "$mtu" -t "$PF_PORT:5201" -u none -T none -U none "$GUEST" >"$WORK/daemon.log" 2>&1 &
	DAEMON=$!
	PIDS+=("$DAEMON")
	if ! wait_for "pasta to configure the guest" 10 has_guest_addr; then
		sed 's/^/      /' "$WORK/daemon.log" >&2
		return 1
	fi
}

start_veth() {
	local mtu=$1
	start_guest
	ip link add twv0 mtu "$mtu" type veth peer name twv1 mtu "$mtu"
	ip link set twv1 netns "$GUEST"
	ip addr add 10.0.2.2/24 dev twv0
	ip link set twv0 up
	gx "ip link set lo up && ip addr add $GUEST_IP/24 dev twv1 && ip link set twv1 up"
}

# Run-mode paths: the guest's commands must descend from tapwire's CMD (bypass intercepts
# their syscalls), so CMD is a small runner that executes lines written to a FIFO.
start_runmode() {
	local mtu=$1 extra=()
	[ "$CUR" = bypass ] && extra=(--bypass)
	if [ "$CUR" = splice ]; then
		# The guest's 127.0.0.1 -> the host's 127.0.0.1: sockperf, twb, and the next 60 iperf3
		# ports (iperf_server takes a fresh one per run).
		extra=(--forward-to-host 11111 --forward-to-host 7000)
		local p
		for p in $(seq $((PORT + 1)) $((PORT + 60))); do extra+=(--forward-to-host "$p"); done
	fi
	rm -f "$WORK/rq" "$WORK"/st.* "$WORK/runner.pid"
	mkfifo "$WORK/rq"
	cat >"$WORK/runner.sh" <<'EOF'
exec 3<>"$1"
echo $$ >"$2/runner.pid"
while IFS= read -r line <&3; do
	id=${line%% *}
	cmd=${line#* }
	case "$id" in
	bg) bash -c "$cmd" </dev/null >/dev/null 2>&1 & ;;
	*) bash -c "$cmd" </dev/null; echo $? >"$2/st.$id.tmp"; mv "$2/st.$id.tmp" "$2/st.$id" ;;
	esac
done
EOF
	"$TAPWIRE" run "${extra[@]}" --mtu "$mtu" -p "$PF_ADDR:$PF_PORT:5201" -- \
		bash "$WORK/runner.sh" "$WORK/rq" "$WORK" >"$WORK/daemon.log" 2>&1 &
	DAEMON=$!
	PIDS+=("$DAEMON")
	if ! wait_for "run-mode command runner" 10 test -s "$WORK/runner.pid"; then
		sed 's/^/      /' "$WORK/daemon.log" >&2
		return 1
	fi
	RUNNER=$(cat "$WORK/runner.pid")
	exec 8>"$WORK/rq"
}

GXID=0
# gx SHELL-COMMAND: run in the current guest, wait, return its status.
gx() {
	case "$CUR" in
	lo) bash -c "$1" ;;
	run | bypass | splice)
		GXID=$((GXID + 1))
		local id=$GXID
		echo "$id $1" >&8
		while [ ! -e "$WORK/st.$id" ]; do
			alive "$DAEMON" || return 1
			sleep 0.02
		done
		return "$(cat "$WORK/st.$id")"
		;;
	*) nsenter -t "$GUEST" -U -n --preserve-credentials -- bash -c "$1" ;;
	esac
}
# gx_bg PIDFILE SHELL-COMMAND: start in the background; the pid lands in PIDFILE.
gx_bg() {
	local pf=$1 cmd="echo \$\$ >$1; exec $2"
	rm -f "$pf"
	case "$CUR" in
	lo) bash -c "$cmd" </dev/null >/dev/null 2>&1 & ;;
	run | bypass | splice) echo "bg $cmd" >&8 ;;
	*) nsenter -t "$GUEST" -U -n --preserve-credentials -- bash -c "$cmd" </dev/null >/dev/null 2>&1 & ;;
	esac
	wait_for "guest background job" 10 test -s "$pf" || return 1
	PIDS+=("$(cat "$pf")")
}
kill_pidfile() { [ -s "$1" ] && stop "$(cat "$1")"; rm -f "$1"; }

start_path() {
	local name=$1 mtu=$2
	CUR=$name
	GUEST=""
	DAEMON=""
	HOST_IP=10.0.2.2
	case "$name" in lo | splice) HOST_IP=127.0.0.1 ;; esac
	case "$name" in
	tap) start_guest && start_slirp_like "$TAPWIRE" "$mtu" ;;
	tapb) start_guest && start_slirp_like "$TAPWIRE_B" "$mtu" ;;
	tapmq) start_guest && start_slirp_like "$TAPWIRE" "$mtu" --threads "$MQ_THREADS" ;;
	slirp4netns) start_guest && start_slirp_like "$SLIRP" "$mtu" ;;
	pasta) start_pasta "$mtu" ;;
	veth) start_veth "$mtu" ;;
	run | bypass | splice) start_runmode "$mtu" ;;
	lo) return 0 ;;
	esac
}

stop_path() {
	case "$CUR" in run | bypass | splice) exec 8>&- ;; esac
	stop $DAEMON $GUEST
	ip link del twv0 2>/dev/null || true
	CUR=""
}

# ---- measurements --------------------------------------------------------------------------
PORT=5300
# A one-shot iperf3 server on the host (0.0.0.0:PORT), or in the guest with "guest".
iperf_server() {
	PORT=$((PORT + 1))
	if [ "${1:-}" = guest ]; then
		# Readiness from its own log: in bypass mode the listening socket is a host socket.
		rm -f "$WORK/gsrv.log"
		gx_bg "$WORK/isrv.pid" "iperf3 -s -1 -p 5201 --forceflush >$WORK/gsrv.log 2>&1" || return 1
		wait_for "guest iperf3 server" 10 grep -q "Server listening" "$WORK/gsrv.log" || return 1
	else
		iperf3 -s -1 -p "$PORT" >"$WORK/isrv.log" 2>&1 &
		echo $! >"$WORK/isrv.pid"
		PIDS+=($!)
		wait_for "iperf3 server :$PORT" 10 host_listening "$PORT" || return 1
	fi
}

# daemon_cpu: ticks of the daemon, 0 without one.
daemon_cpu() { if [ -n "$DAEMON" ]; then cpu_ticks "$DAEMON"; else echo 0; fi; }

# tcp MEASURE [iperf3 args]: ns->host unless -R. Records Gbit/s and daemon CPU s/GB.
tcp_run() {
	local m=$1 out
	shift
	iperf_server || { fail_sample "$CUR" "$m"; return; }
	local c0 c1
	c0=$(daemon_cpu)
	gx "timeout $((DUR + 20)) iperf3 -c $HOST_IP -p $PORT -t $DUR -J $* >$WORK/ic.json 2>$WORK/ic.err" || true
	c1=$(daemon_cpu)
	kill_pidfile "$WORK/isrv.pid"
	if out=$("${UTIL[@]}" iperf-tcp "$WORK/ic.json"); then
		read -r gbit bytes _ <<<"$out"
		sample "$CUR" "$m" "$gbit"
		printf '   %-24s %8.2f Gbit/s' "$m" "$gbit" >&2
		if [ -n "$DAEMON" ] && [ "$bytes" -gt 0 ]; then
			local spg
			spg=$(awk -v t=$((c1 - c0)) -v hz="$TICK" -v b="$bytes" 'BEGIN {printf "%.3f", t / hz / (b / 1e9)}')
			sample "$CUR" "cpu_$m" "$spg"
			printf '   daemon %s CPU s/GB' "$spg" >&2
		fi
		echo >&2
	else
		fail_sample "$CUR" "$m"
	fi
}

pf_run() {
	local m=$1 out target=$PF_ADDR port=$PF_PORT
	case "$CUR" in veth) target=$GUEST_IP; port=5201 ;; lo) target=127.0.0.1; port=5201 ;; esac
	iperf_server guest || { fail_sample "$CUR" "$m"; kill_pidfile "$WORK/isrv.pid"; return; }
	local c0 c1
	c0=$(daemon_cpu)
	timeout $((DUR + 20)) iperf3 -c "$target" -p "$port" -t "$DUR" -J >"$WORK/ic.json" 2>"$WORK/ic.err" || true
	c1=$(daemon_cpu)
	kill_pidfile "$WORK/isrv.pid"
	if out=$("${UTIL[@]}" iperf-tcp "$WORK/ic.json"); then
		read -r gbit bytes _ <<<"$out"
		sample "$CUR" "$m" "$gbit"
		printf '   %-24s %8.2f Gbit/s\n' "$m" "$gbit" >&2
	else
		fail_sample "$CUR" "$m"
	fi
}

# udp_run MEASURE LEN [iperf3 args]: unlimited-rate UDP of LEN-byte payloads.
udp_run() {
	local m=$1 len=$2 out
	shift 2
	iperf_server || { fail_sample "$CUR" "${m}_kpps"; return; }
	gx "timeout $((SHORT + 20)) iperf3 -c $HOST_IP -p $PORT -t $SHORT -u -l $len -b 0 -J $* >$WORK/ic.json 2>$WORK/ic.err" || true
	kill_pidfile "$WORK/isrv.pid"
	if out=$("${UTIL[@]}" iperf-udp "$WORK/ic.json" "$len"); then
		read -r pps loss <<<"$out"
		sample "$CUR" "${m}_kpps" "$(awk -v p="$pps" 'BEGIN {printf "%.1f", p / 1000}')"
		sample "$CUR" "${m}_loss" "$loss"
		printf '   %-24s %8.0f pkt/s received, %s%% loss\n' "$m" "$pps" "$loss" >&2
	else
		fail_sample "$CUR" "${m}_kpps"
	fi
}

# strace_start NAME / strace_stop NAME COUNT: with --strace, count the daemon's system calls
# around one run and print them per COUNT (round trips, connections).
STRACE_PID=""
strace_start() {
	[ "$STRACE" = 1 ] && [ -n "$DAEMON" ] || return 0
	mkdir -p "$OUT"
	strace -c -f -p "$DAEMON" -o "$OUT/strace-$CUR-$1.txt" 2>/dev/null &
	STRACE_PID=$!
	sleep 0.5
}
strace_stop() {
	[ -n "$STRACE_PID" ] || return 0
	kill -INT "$STRACE_PID" 2>/dev/null || true
	wait "$STRACE_PID" 2>/dev/null || true
	STRACE_PID=""
	local f="$OUT/strace-$CUR-$1.txt" n=${2:-0}
	[ -s "$f" ] || return 0
	# COUNT may name a system call: its count is the number of units.
	[[ "$n" =~ ^[0-9]+$ ]] || n=$(awk -v s="$n" '$NF == s { print $4 }' "$f")
	[ "${n:-0}" -gt 0 ] 2>/dev/null || return 0
	awk -v n="$n" -v what="$1" '$NF ~ /^[a-z_0-9]+$/ && $NF != "syscall" && $NF != "total" {
			c = $4
			if (c ~ /^[0-9]+$/) { t += c; l = l sprintf(" %s %.2f", $NF, c / n) } }
		END { printf "   strace %-17s %.1f syscalls per unit (%d units):%s\n", what, t / n, n, l }' "$f" >&2
}

# lat_run SUFFIX: sockperf TCP ping-pong, 64 B, to the host's sockperf server.
lat_run() {
	local sfx=${1:-} out
	strace_start "latency$sfx"
	gx "timeout $((SHORT + 20)) sockperf pp --tcp -i $HOST_IP -p 11111 -m 64 -t $SHORT >$WORK/sp.out 2>&1" || true
	# Units: the daemon's sendto calls, one per request relayed to the host (sockperf's own
	# count leaves out its warm-up, whose round trips strace sees).
	strace_stop "latency$sfx" sendto
	if out=$("${UTIL[@]}" sockperf "$WORK/sp.out"); then
		read -r p50 p99 avg <<<"$out"
		sample "$CUR" "lat_p50$sfx" "$p50"
		sample "$CUR" "lat_p99$sfx" "$p99"
		printf '   %-24s p50 %s us, p99 %s us, avg %s us (one-way)\n' "latency$sfx" "$p50" "$p99" "$avg" >&2
	else
		fail_sample "$CUR" "lat_p50$sfx"
	fi
}

crr_run() {
	local out
	strace_start crr
	gx "timeout $((SHORT + 20)) $WORK/twb crr $HOST_IP 7000 $SHORT 8 100 >$WORK/crr.out 2>&1" || true
	out=$(cat "$WORK/crr.out" 2>/dev/null || true)
	strace_stop crr "$(sed -n 's/.*conns=\([0-9]*\).*/\1/p' "$WORK/crr.out")"
	if [[ "$out" =~ rate=([0-9.]+)\ errors=([0-9]+) ]]; then
		sample "$CUR" conn_rate "${BASH_REMATCH[1]}"
		printf '   %-24s %8.0f conn/s (%s errors)\n' "connections" "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" >&2
	else
		echo "    twb crr: $out" >&2
		fail_sample "$CUR" conn_rate
	fi
}

# ---- profiles (--profile) -----------------------------------------------------------------
# iperf_again: the host's one-off iperf3 server once more, on the same port.
iperf_again() {
	kill_pidfile "$WORK/isrv.pid"
	iperf3 -s -1 -p "$PORT" >"$WORK/isrv.log" 2>&1 &
	echo $! >"$WORK/isrv.pid"
	PIDS+=($!)
	wait_for "iperf3 server :$PORT" 10 host_listening "$PORT"
}

# prof_run NAME SHELL-COMMAND [AGAIN]: perf record on the daemon while the guest runs the
# command, then the command again (after the function AGAIN, if given) with the whole machine
# sampled.
prof_run() {
	local name=$1 cmd=$2 again=${3:-} data="$WORK/perf.data" perf c0 c1
	echo "   profiling $name" >&2
	if [ -z "$DAEMON" ]; then
		# No forwarder on this path (veth): the whole-machine pass alone.
		echo "# $CUR $name: no forwarder" >"$PROF_DIR/$CUR-$name.txt"
		echo "# workload: $cmd" >>"$PROF_DIR/$CUR-$name.txt"
	else
		perf record -q -o "$data" -e cpu-clock -F 1999 --call-graph dwarf,32768 -p "$DAEMON" \
			>"$WORK/perf.log" 2>&1 &
		perf=$!
		sleep 0.3
		c0=$(cpu_ticks "$DAEMON")
		gx "$cmd" || echo "    workload failed" >&2
		c1=$(cpu_ticks "$DAEMON")
		kill -INT "$perf" 2>/dev/null || true
		wait "$perf" 2>/dev/null || true
		{
			echo "# $CUR $name: daemon CPU $((c1 - c0)) ticks ($TICK/s) during the workload"
			echo "# workload: $cmd"
			perf report -i "$data" --stdio --no-children --sort dso,sym -g none --percent-limit 0.5 2>/dev/null |
				grep -v '^#' | grep -v '^$' || echo "(no samples)"
			echo
			echo "# inclusive (children), callers folded"
			perf report -i "$data" --stdio --children --sort sym -g none --percent-limit 2 2>/dev/null |
				grep -v '^#' | grep -v '^$' || echo "(no samples)"
		} >"$PROF_DIR/$CUR-$name.txt"
	fi
	# The workload again, the whole machine sampled (no call graphs): who had the CPUs, the
	# applications, the forwarder, softirq threads or nobody (swapper is idle time).
	if [ -n "$again" ]; then "$again" || echo "    $again failed" >&2; fi
	perf record -q -o "$data.all" -a -e cpu-clock -F 999 >"$WORK/perf.log" 2>&1 &
	perf=$!
	sleep 0.3
	gx "$cmd" || echo "    workload failed" >&2
	kill -INT "$perf" 2>/dev/null || true
	wait "$perf" 2>/dev/null || true
	{
		echo
		echo "# CPU by command, whole machine ($(nproc) CPUs; a second run of the workload; swapper = idle)"
		perf report -i "$data.all" --stdio --sort comm --percent-limit 0.5 2>/dev/null |
			grep -v '^#' | grep -v '^$' || echo "(no samples)"
	} >>"$PROF_DIR/$CUR-$name.txt"
	head -n 22 "$PROF_DIR/$CUR-$name.txt" | sed 's/^/     /' >&2
	grep -A8 '^# CPU by command' "$PROF_DIR/$CUR-$name.txt" | sed 's/^/     /' >&2
	rm -f "$data" "$data.all"
}

if [ "$PROFILE" = 1 ]; then
	command -v perf >/dev/null || die "perf not found (apt-get install linux-perf)"
	PROF_DIR=$OUT/profile-$(date -u +%Y-%m-%d-%H%M)
	mkdir -p "$PROF_DIR"
	MAXMTU=0
	for mtu in $MTUS; do [ "$mtu" -gt "$MAXMTU" ] && MAXMTU=$mtu; done
	if [ -z "$PATHS_ARG" ]; then
		PATHS=(tap)
		if has_bypass; then PATHS+=(bypass); fi
	fi
	for name in "${PATHS[@]}"; do
		# veth: only the whole-machine split, the kernel's own for comparison.
		is_daemon "$name" || [ "$name" = veth ] || continue
		for mtu in $MTUS; do
			echo "== profile: $name, MTU $mtu" >&2
			start_path "$name" "$mtu" || { stop_path; continue; }
			iperf_server && prof_run "tcp_up_mtu$mtu" "iperf3 -c $HOST_IP -p $PORT -t $DUR >/dev/null" iperf_again
			kill_pidfile "$WORK/isrv.pid"
			iperf_server && prof_run "tcp_down_mtu$mtu" "iperf3 -c $HOST_IP -p $PORT -t $DUR -R >/dev/null" iperf_again
			kill_pidfile "$WORK/isrv.pid"
			if [ "$mtu" = "$MAXMTU" ]; then
				prof_run crr "$WORK/twb crr $HOST_IP 7000 $DUR 8 100"
				iperf_server && prof_run udp_up "iperf3 -c $HOST_IP -p $PORT -t $DUR -u -l 64 -b 0 >/dev/null" iperf_again
				kill_pidfile "$WORK/isrv.pid"
				iperf_server && prof_run udp_down "iperf3 -c $HOST_IP -p $PORT -t $DUR -u -l 64 -b 0 -R >/dev/null" iperf_again
				kill_pidfile "$WORK/isrv.pid"
				iperf_server && prof_run udp1400_up "iperf3 -c $HOST_IP -p $PORT -t $DUR -u -l 1400 -b 0 >/dev/null" iperf_again
				kill_pidfile "$WORK/isrv.pid"
				iperf_server && prof_run udp1400_down "iperf3 -c $HOST_IP -p $PORT -t $DUR -u -l 1400 -b 0 -R >/dev/null" iperf_again
				kill_pidfile "$WORK/isrv.pid"
				prof_run latency "sockperf pp --tcp -i $HOST_IP -p 11111 -m 64 -t $DUR >/dev/null 2>&1"
				if [ "$FLOWS" -gt 0 ]; then
					gx_bg "$WORK/hold.pid" "$WORK/twb hold $HOST_IP 7000 $FLOWS 256 >$WORK/hold.out 2>&1"
					if wait_for "$FLOWS connections" 150 grep -q held= "$WORK/hold.out"; then
						prof_run "latency_${FLOWS}flows" "sockperf pp --tcp -i $HOST_IP -p 11111 -m 64 -t $DUR >/dev/null 2>&1"
					fi
					kill_pidfile "$WORK/hold.pid"
				fi
			fi
			stop_path
		done
	done
	echo "bench: wrote $PROF_DIR" >&2
	exit 0
fi

# ---- rounds --------------------------------------------------------------------------------
MAXMTU=0
for mtu in $MTUS; do [ "$mtu" -gt "$MAXMTU" ] && MAXMTU=$mtu; done
START_S=$(date +%s)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
NP=${#PATHS[@]}

run_setup() {
	local name=$1 mtu=$2 tag=mtu$2
	echo "== round $ROUND/$ROUNDS: $name, MTU $mtu" >&2
	if ! start_path "$name" "$mtu"; then
		echo "   $name failed to start" >&2
		fail_sample "$name" "tcp_up_1s_$tag"
		stop_path
		return
	fi
	if [ -n "$DAEMON" ]; then
		sleep 0.5
		sample "$name" "rss_start_kib_$tag" "$(rss_kib "$DAEMON")"
	fi
	local s
	if [ "$UDP_ONLY" = 0 ]; then
		for s in $STREAMS; do
			tcp_run "tcp_up_${s}s_$tag" -P "$s"
			tcp_run "tcp_down_${s}s_$tag" -P "$s" -R
		done
	fi
	[ "$DO_PF" = 1 ] && pf_run "pf_down_$tag"
	if [ "$mtu" = "$MAXMTU" ]; then
		[ "$UDP_ONLY" = 1 ] || lat_run
		[ "$UDP_ONLY" = 1 ] || crr_run
		# --forward-to-host is TCP only.
		if [ "$DO_UDP" = 1 ] && [ "$name" != splice ]; then
			udp_run udp_up 64
			udp_run udp_down 64 -R
			udp_run udp1400_up 1400
			udp_run udp1400_down 1400 -R
		fi
	fi
	if [ -n "$DAEMON" ]; then sample "$name" "rss_after_kib_$tag" "$(rss_kib "$DAEMON")"; fi
	stop_path
}

for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
	for mtu in $MTUS; do
		for ((i = 0; i < NP; i++)); do
			name=${PATHS[$(((i + ROUND - 1) % NP))]}
			# Loopback has one MTU (65536) and bypass traffic never crosses the tap: both
			# are measured once per round, at the largest MTU.
			case "$name" in lo | bypass | splice) [ "$mtu" = "$MAXMTU" ] || continue ;; esac
			run_setup "$name" "$mtu"
		done
	done
done

# ---- idle and many flows (once per forwarder) ---------------------------------------------
ROUND=0
if [ "$UDP_ONLY" = 0 ]; then
	for name in "${PATHS[@]}"; do
		is_daemon "$name" || continue
		echo "== idle and $FLOWS idle flows: $name, MTU $MAXMTU" >&2
		start_path "$name" "$MAXMTU" || { echo "   $name failed to start" >&2; stop_path; continue; }
		sleep 1
		c0=$(cpu_ticks "$DAEMON")
		w0=$(ctxsw "$DAEMON")
		sleep "$IDLE_S"
		c1=$(cpu_ticks "$DAEMON")
		w1=$(ctxsw "$DAEMON")
		sample "$name" idle_cpu_pct "$(awk -v t=$((c1 - c0)) -v hz="$TICK" -v s="$IDLE_S" 'BEGIN {printf "%.2f", 100 * t / hz / s}')"
		sample "$name" idle_wakeups_per_s "$(awk -v w=$((w1 - w0)) -v s="$IDLE_S" 'BEGIN {printf "%.1f", w / s}')"
		rss0=$(rss_kib "$DAEMON")
		sample "$name" rss_idle_kib "$rss0"
		printf '   idle: %s ticks CPU and %s context switches in %s s, RSS %s KiB\n' $((c1 - c0)) $((w1 - w0)) "$IDLE_S" "$rss0" >&2
		if [ "$FLOWS" -gt 0 ]; then
			lat_run _base
			gx_bg "$WORK/hold.pid" "$WORK/twb hold $HOST_IP 7000 $FLOWS 256 >$WORK/hold.out 2>&1" || true
			if wait_for "$FLOWS connections" 150 grep -q held= "$WORK/hold.out"; then
				cat "$WORK/hold.out" | sed 's/^/   /' >&2
				held=$(sed -n 's/.*held=\([0-9]*\).*/\1/p' "$WORK/hold.out")
				secs=$(sed -n 's/.*secs=\([0-9.]*\).*/\1/p' "$WORK/hold.out")
				sample "$name" flows_open_s "$secs"
				sample "$name" flows_held "$held"
				sleep 2
				c0=$(cpu_ticks "$DAEMON")
				w0=$(ctxsw "$DAEMON")
				sleep 3
				c1=$(cpu_ticks "$DAEMON")
				w1=$(ctxsw "$DAEMON")
				rss1=$(rss_kib "$DAEMON")
				sample "$name" flows_idle_cpu_pct "$(awk -v t=$((c1 - c0)) -v hz="$TICK" 'BEGIN {printf "%.2f", 100 * t / hz / 3}')"
				sample "$name" flows_idle_wakeups_per_s "$(awk -v w=$((w1 - w0)) 'BEGIN {printf "%.1f", w / 3}')"
				sample "$name" rss_flows_kib "$rss1"
				if [ "${held:-0}" -gt 0 ]; then
					sample "$name" rss_per_flow_kib "$(awk -v a="$rss0" -v b="$rss1" -v n="$held" 'BEGIN {printf "%.2f", (b - a) / n}')"
				fi
				printf '   with %s flows: RSS %s KiB, %s ticks CPU and %s context switches in 3 s idle\n' \
					"$held" "$rss1" $((c1 - c0)) $((w1 - w0)) >&2
				lat_run _flows
			else
				echo "   holding $FLOWS connections failed: $(cat "$WORK/hold.out" 2>/dev/null)" >&2
				fail_sample "$name" rss_flows_kib
			fi
			kill_pidfile "$WORK/hold.pid"
		fi
		stop_path
	done
fi

END_S=$(date +%s)

# ---- report --------------------------------------------------------------------------------
mkdir -p "$OUT"
STAMP=$(date -u +%Y-%m-%d-%H%M)
[ "$QUICK" = 1 ] && STAMP+=-quick
META=$WORK/meta.json
python3 - "$META" <<PY
import json, sys, platform, subprocess, os
def ver(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip().splitlines()[0]
    except Exception:
        return "?"
meta = {
    "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
    "kernel": platform.release(),
    "cpus": os.cpu_count(),
    "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
    "rounds": $ROUNDS,
    "seconds_per_run": $DUR,
    "quick": bool($QUICK),
    "mtus": "$MTUS".split(),
    "streams": "$STREAMS".split(),
    "flows": $FLOWS,
    "paths": "${PATHS[*]}".split(),
    "notes": $(printf '%s\n' "${NOTES[@]:-}" | python3 -c 'import json,sys; print(json.dumps([l.strip() for l in sys.stdin if l.strip()]))'),
    "wall_seconds": $((END_S - START_S)),
    "tapwire": ver(["$TAPWIRE", "--version"]),
    "tapwire_commit": "${TAPWIRE_BENCH_COMMIT:-}" or ver(["git", "-C", "$ROOT", "rev-parse", "--short", "HEAD"]),
    "tapwire_binary": "${TAPWIRE_SRC:-}",
    "tapwire_b_binary": "${TAPWIRE_B_SRC:-}",
    "loadavg_start": "$LOAD0",
    "loadavg_end": open("/proc/loadavg").read().split()[:3],
    "slirp4netns": ver(["$SLIRP", "--version"]),
    "pasta": ver(["$PASTA", "--version"]) or ver(["dpkg-query", "-W", "-f", "\${Version}", "passt"]),
    "pasta_binary": "$PASTA",
    "iperf3": ver(["iperf3", "--version"]),
    "sockperf": ver(["sockperf", "--version"]),
}
json.dump(meta, open(sys.argv[1], "w"), indent=1)
PY
# The report wants matplotlib for the PNG: take the first python3 that has it.
PY=python3
for p in python3 /usr/bin/python3; do
	if "$p" -c 'import matplotlib' 2>/dev/null; then PY=$p; break; fi
done
"$PY" "$HERE/bench/report.py" "$SAMPLES" "$META" "$OUT/$STAMP"
echo "bench: wrote $OUT/$STAMP.json, .md, .png ($((END_S - START_S)) s of measuring)" >&2
