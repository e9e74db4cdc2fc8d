# Sourced by scripts/bench.sh, bench-iperf3.sh and bench-bypass.sh: the private "host" network
# namespace every benchmark runs in, what pasta needs there, and small helpers. The caller
# defines die().

# enter_private_ns ARGS...: re-exec the calling script (with ARGS, its original arguments)
# inside `unshare --net --mount`, once; relative paths stay valid, unshare keeps the cwd. Then
# make $WORK, a cleanup trap that kills $PIDS and removes $WORK (kept when KEEP=1), bring lo up,
# bind-mount our own resolv.conf ("nameserver 127.0.0.1") and check there is no default route.
enter_private_ns() {
	if [ -z "${TAPWIRE_BENCH_INNER:-}" ]; then
		export TAPWIRE_BENCH_INNER=1
		exec unshare --net --mount --propagation private -- "$BASH" "$0" "$@"
	fi
	WORK=$(mktemp -d /tmp/tapwire-bench.XXXXXX)
	chmod 0755 "$WORK"
	PIDS=()
	trap bench_cleanup EXIT
	trap 'exit 130' INT TERM
	ip link set lo up
	echo "nameserver 127.0.0.1" >"$WORK/resolv.conf"
	mount --bind "$WORK/resolv.conf" /etc/resolv.conf
	if ip -4 route show | grep -q default || ip -6 route show | grep -q default; then
		die "private namespace unexpectedly has a default route"
	fi
}

bench_cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if [ "${KEEP:-0}" = 1 ]; then echo "bench: kept $WORK" >&2; else rm -rf "$WORK"; fi
}

# pasta refuses to run as root: pasta and its guest run as nobody, with a world-usable
# /dev/net/tun bind-mounted in this private mount namespace only. pasta needs a template
# interface; a veth pair with no route to anywhere serves.
NOBODY=(setpriv --reuid=65534 --regid=65534 --clear-groups --)
PASTA_READY=0
prepare_pasta() {
	[ "$PASTA_READY" = 1 ] && return 0
	ip link add twbench0 type veth peer name twbench1
	ip addr add 10.200.0.1/24 dev twbench0
	ip link set twbench0 up
	ip link set twbench1 up
	mknod -m 0666 "$WORK/tun" c 10 200
	mount --bind "$WORK/tun" /dev/net/tun
	PASTA_READY=1
}

# wait_for DESC SECONDS CMD...: poll CMD every 50 ms.
wait_for() {
	local desc=$1 secs=$2 i
	shift 2
	for ((i = 0; i < secs * 20; i++)); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.05
	done
	echo "    timed out after ${secs}s waiting for $desc" >&2
	return 1
}
