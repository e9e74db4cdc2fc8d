#!/usr/bin/env bash
# Audit the daemon's seccomp allow-list (crates/tapwire/src/confine/allowlist.rs) against what the daemon really does.
#
#   sudo scripts/seccomp-audit.sh [CARGO-TEST-ARGS...]
#       default: --test tap_mode; e.g. `--test bypass bypass_runc` for the supervisor thread
#
# Runs the integration tests with the daemon wrapped in `strace -f` (with $AUDIT_FLAGS, default
# --enable-sandbox; the filter stays off, so nothing is killed), keeps the system calls each daemon made after it wrote "1" to its ready
# fd (that is where the filter starts to apply) plus every call of a thread it started (the
# bypass supervisor; compared with DAEMON + BYPASS), and compares them with the list:
#   - "traced, not allowed": calls the filter would kill the daemon for (exit status 1);
#   - "allowed, never traced": entries no test exercised (review them; some are error paths);
#   - the ioctl requests, fcntl commands and socket domains seen, to check the conditions.
# Everything runs in the tests' private namespaces. Needs strace.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v strace >/dev/null || { echo "seccomp-audit: strace is not installed" >&2; exit 2; }

cargo build --release --quiet
work=$(mktemp -d /tmp/tapwire-audit.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir "$work/traces"
cat >"$work/tapwire" <<EOF
#!/bin/sh
exec strace -f -qq -s 8 -o "$work/traces/t.\$\$" "$PWD/target/release/tapwire" "\$@"
EOF
chmod +x "$work/tapwire"

args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--test tap_mode)
TAPWIRE_TEST_BIN="$work/tapwire" TAPWIRE_TEST_EXTRA_FLAGS="${AUDIT_FLAGS---enable-sandbox}" \
	cargo test --release --quiet -p tapwire "${args[@]}" >"$work/test.log" 2>&1 ||
	{ echo "seccomp-audit: some tests failed under strace (timing?); continuing" >&2; tail -5 "$work/test.log" >&2; }

python3 - "$work/traces" crates/tapwire/src/confine/allowlist.rs <<'EOF'
import os, re, sys
traces, filter_rs = sys.argv[1], sys.argv[2]
line_re = re.compile(r'^(\d+)\s+([a-z0-9_]+)\((.*)')
thread_re = re.compile(r'CLONE_THREAD.*= (\d+)$')
seen, args = {}, {'ioctl': set(), 'fcntl': set(), 'socket': set(), 'openat': set(), 'prctl': set()}
threads_seen = False
for name in os.listdir(traces):
    lines = open(os.path.join(traces, name), errors='replace').readlines()
    # Only daemons: `-r FD` (ready fd) or `--seccomp-listener` on the command line.
    first = next((l for l in lines if ' execve(' in l), '')
    if '"-r"' not in first and '"--seccomp-listener"' not in first:
        continue
    after, threads = False, set()
    for line in lines:
        m = line_re.match(line)
        if not m:
            continue
        tid, call, rest = m.group(1), m.group(2), m.group(3)
        t = thread_re.search(line.rstrip())
        if t and call in ('clone', 'clone3'):
            threads.add(t.group(1))
            threads_seen = True
        if not after and tid not in threads:
            if call == 'write' and rest.startswith('3, "1", 1'):
                after = True
            continue
        seen[call] = seen.get(call, 0) + 1
        if call in args:
            parts = [p.strip() for p in rest.split(',')]
            key = parts[0] if call in ('socket', 'prctl') else parts[1] if len(parts) > 1 else '?'
            if call == 'openat':
                key = parts[0] + ' ' + (parts[2] if len(parts) > 2 else '?')
            args[call].add(key)
src = open(filter_rs).read().split('#[cfg(test)]')[0]
if not threads_seen:
    src = src.split('pub const BYPASS')[0] + src.split('pub fn entries()')[1]
allowed = set(re.findall(r'libc::SYS_([a-z0-9_]+)', src))
missing = sorted(set(seen) - allowed)
unused = sorted(allowed - set(seen))
print('lists: DAEMON' + (' + BYPASS (a thread was started)' if threads_seen else ''))
print('traced after ready: ' + ', '.join('%s(%d)' % (k, seen[k]) for k in sorted(seen)))
for k, v in args.items():
    print('%s: %s' % (k, ', '.join(sorted(v)) or '-'))
print('allowed, never traced: ' + (', '.join(unused) or '-'))
print('traced, not allowed: ' + (', '.join(missing) or '-'))
sys.exit(1 if missing else 0)
EOF
