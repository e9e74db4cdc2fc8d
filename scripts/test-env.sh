#!/usr/bin/env bash
# A throwaway test world for poking at a forwarder by hand, the same shape the integration
# tests build: a private host namespace (lo up, no default route, resolv.conf ->
# "nameserver 127.0.0.1", dnsmasq there answering tapwire.test = 10.9.8.7), a guest
# namespace (unshare --user --map-root-user --net) and the forwarder attached to it with -c.
#
#   scripts/test-env.sh [-b BIN] [-- EXTRA_DAEMON_FLAGS...]        (root; BIN default
#                                                                 ./target/release/tapwire)
#
# Opens a shell in the host namespace with $GUEST (the guest's pid), $DAEMON and a `g` command
# that runs its arguments inside the guest (`g ip addr`, `g busybox nslookup tapwire.test
# 10.0.2.3`, `g iperf3 -c 10.0.2.2`). Nothing outside the private namespace is reachable.
# Leaving the shell kills everything.
set -euo pipefail

BIN=./target/release/tapwire
while [ $# -gt 0 ]; do
	case "$1" in
	-b | --bin) BIN="$2"; shift 2 ;;
	--) shift; break ;;
	-h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "unknown option: $1 (flags for the daemon go after --)" >&2; exit 2 ;;
	esac
done

[ "$(id -u)" = 0 ] || { echo "test-env: must run as root" >&2; exit 2; }
if [ -z "${TAPWIRE_TESTENV_INNER:-}" ]; then
	export TAPWIRE_TESTENV_INNER=1
	exec unshare --net --mount --propagation private -- "$BASH" "$0" -b "$BIN" -- "$@"
fi

WORK=$(mktemp -d /tmp/tapwire-testenv.XXXXXX)
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

ip link set lo up
echo "nameserver 127.0.0.1" >"$WORK/resolv.conf"
mount --bind "$WORK/resolv.conf" /etc/resolv.conf

if command -v dnsmasq >/dev/null; then
	dnsmasq --no-daemon --conf-file=/dev/null --no-resolv --no-hosts --bind-interfaces \
		--listen-address=127.0.0.1 --user=root --address=/tapwire.test/10.9.8.7 \
		--pid-file="$WORK/dnsmasq.pid" --log-facility="$WORK/dnsmasq.log" &
	PIDS+=($!)
fi

unshare --user --map-root-user --net -- sleep infinity &
GUEST=$!
PIDS+=("$GUEST")
for _ in $(seq 100); do [ "$(cat /proc/$GUEST/comm)" = sleep ] && break; sleep 0.05; done

: >"$WORK/ready"
"$BIN" -c -r 3 "$@" "$GUEST" tap0 3>"$WORK/ready" >"$WORK/daemon.log" 2>&1 &
DAEMON=$!
PIDS+=("$DAEMON")
for _ in $(seq 200); do
	[ "$(cat "$WORK/ready")" = 1 ] && break
	kill -0 "$DAEMON" 2>/dev/null || break
	sleep 0.05
done
if [ "$(cat "$WORK/ready")" != 1 ]; then
	echo "test-env: $BIN did not become ready; log:" >&2
	cat "$WORK/daemon.log" >&2
	exit 1
fi

cat >"$WORK/rc" <<EOF
g() { nsenter -t $GUEST -U -n --preserve-credentials -- "\$@"; }
export GUEST=$GUEST DAEMON=$DAEMON
PS1='[tapwire test-env] \w# '
echo "guest pid \$GUEST, daemon pid \$DAEMON (log: $WORK/daemon.log); 'g CMD' runs CMD in the guest."
EOF
bash --rcfile "$WORK/rc" -i || true
