#!/usr/bin/env bash
# Long soak and flood runs of the daemon (bounded in count and in time), as root:
#
#   sudo scripts/soak.sh [--conns N] [--concurrent N] [--flood-rate PPS] [--flood-mb MB]
#                        [--time-limit SECONDS]
#
# Defaults: 1,000,000 short connections (16 guest threads, each connection sha256-checked),
# 10,000 concurrent connections, four floods from the guest at 10,000 frames/s each (SYNs to
# closed ports, SYNs to a host that never answers, UDP to 10,000 ports, ICMP errors) during
# 400 MB bulk uploads; every test is killed after --time-limit seconds (default 1800).
# Each run checks that the daemon's fds and RSS come back to their baseline and prints its
# figures (lines starting with "soak:" and "bulk upload:").
#
# These are the tests of tests/hardening.rs with bigger numbers (CI runs them small), in the
# same private namespaces: nothing leaves the machine. The daemon runs with --enable-sandbox
# --enable-seccomp.
set -euo pipefail
cd "$(dirname "$0")/.."

conns=1000000 concurrent=10000 rate=10000 mb=400 limit=1800
while [ $# -gt 0 ]; do
	case $1 in
	--conns) conns=$2; shift 2 ;;
	--concurrent) concurrent=$2; shift 2 ;;
	--flood-rate) rate=$2; shift 2 ;;
	--flood-mb) mb=$2; shift 2 ;;
	--time-limit) limit=$2; shift 2 ;;
	-h | --help) sed -n '2,17p' "$0"; exit 0 ;;
	*) echo "soak: unknown argument $1" >&2; exit 2 ;;
	esac
done
[ "$(id -u)" -eq 0 ] || { echo "soak: needs root (private namespaces, TAP devices)" >&2; exit 2; }

cargo build --release --quiet --tests
# The test binary itself, so `timeout` bounds exactly one run.
bin=$(cargo test --release -p tapwire --test hardening --no-run --message-format=json 2>/dev/null |
	sed -n 's/.*"executable":"\([^"]*hardening[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "soak: cannot find the hardening test binary" >&2; exit 1; }
# 10,000 concurrent connections are 20,000 fds in the test process alone.
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"

status=0
one() {
	local name=$1; shift
	echo "== $name ($*)"
	local out rc=0
	out=$(env "$@" timeout --signal=KILL "$limit" "$bin" --exact "$name" --nocapture --test-threads=1 2>&1) || rc=$?
	echo "$out" | grep -E '^(soak:|bulk upload:|floods:|stats:|    ")|panicked|^test ' || true
	if [ $rc -ne 0 ]; then
		status=1
		echo "$out" | tail -30
		if [ $rc -eq 137 ]; then echo "soak: $name hit the ${limit}s time limit"; fi
	fi
}

one soak_short_connections TAPWIRE_SOAK_CONNS="$conns" TAPWIRE_SOAK_WORKERS=16
one soak_concurrent_connections TAPWIRE_SOAK_CONCURRENT="$concurrent"
one floods_from_the_guest_leave_bulk_transfer_and_memory_alone TAPWIRE_FLOOD_RATE="$rate" TAPWIRE_FLOOD_MB="$mb"
exit $status
