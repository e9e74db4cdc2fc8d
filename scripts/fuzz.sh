#!/usr/bin/env bash
# Run every fuzz target (or the ones named) for SECONDS each and print executions per target.
#
#   scripts/fuzz.sh SECONDS [TARGET...]
#
# Environment:
#   FUZZ_SANITIZER=address|none  (default address; `none` is ~3x faster for long runs: the
#                                 daemon is Rust, unsafe code is confined to a few I/O modules)
#   FUZZ_JOBS=N                  parallel libFuzzer workers per target (default 1)
#   FUZZ_KEEP=DIR                keep the grown corpora in DIR/<target> (default: a temp dir)
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Seeds are read from
# fuzz/corpus/<target>/ and never modified; new inputs go to a scratch corpus. A crash leaves
# its input in fuzz/artifacts/<target>/ and makes the script exit 1 after the other targets.
# The engine and control targets put themselves in a private network namespace first (root,
# or unprivileged user namespaces), so nothing they send leaves it.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}
shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
	mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^tapwire-fuzz$')
fi
sanitizer=${FUZZ_SANITIZER:-address}
jobs=${FUZZ_JOBS:-1}
keep=${FUZZ_KEEP:-}
scratch=$(mktemp -d /tmp/tapwire-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

for t in "${targets[@]}"; do
	cargo +nightly fuzz build -s "$sanitizer" "$t" 2>&1 | grep -E '^(error|warning: unused)' -A5 >&2 || true
done

status=0
results=()
for t in "${targets[@]}"; do
	corpus=${keep:+$keep/$t}
	corpus=${corpus:-$scratch/$t}
	mkdir -p "$corpus" "fuzz/artifacts/$t"
	log=$scratch/$t.log
	set +e
	if [ "$jobs" -gt 1 ]; then
		# -fork keeps going after a crash; its stats are in the log's last "#N" line.
		cargo +nightly fuzz run -s "$sanitizer" "$t" "$corpus" "fuzz/corpus/$t" -- \
			-fork="$jobs" -ignore_crashes=0 -max_total_time="$secs" -timeout=10 \
			-print_final_stats=1 >"$log" 2>&1
	else
		cargo +nightly fuzz run -s "$sanitizer" "$t" "$corpus" "fuzz/corpus/$t" -- \
			-max_total_time="$secs" -timeout=10 -print_final_stats=1 >"$log" 2>&1
	fi
	rc=$?
	set -e
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
	if [ -z "$runs" ]; then
		# -fork mode: "#RUNS ... exec/s: N" progress lines.
		runs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
		rate=$(grep -o 'exec/s: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
	fi
	if [ "$rc" -eq 0 ]; then
		result=ok
	else
		result="FAILED (exit $rc)"
		status=1
		echo "---- $t: last lines of the log ----" >&2
		tail -40 "$log" >&2
	fi
	results+=("$(printf '| %s | %s | %s | %s | %s |' "$t" "${runs:-?}" "${rate:-?}" "$(find "$corpus" -type f | wc -l)" "$result")")
done

echo
echo "fuzz: ${secs}s per target, sanitizer $sanitizer, $jobs job(s)"
echo "| target | executions | exec/s | corpus | result |"
echo "|---|---|---|---|---|"
printf '%s\n' "${results[@]}"
exit $status
