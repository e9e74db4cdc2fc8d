#!/usr/bin/env bash
# Audit the daemon's seccomp allow-list (src/filter.rs) against what the daemon really does.
#
#   sudo scripts/seccomp-audit.sh [TEST-FILTER...]     (default: the whole tap_mode suite)
#
# Runs the integration tests with the daemon wrapped in `strace -f` (sandbox on, filter off, so
# nothing is killed), keeps the system calls each daemon made after it wrote "1" to its ready
# fd (that is where the filter starts to apply), and compares them with the list:
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

filters=("$@")
TAPWIRE_TEST_BIN="$work/tapwire" TAPWIRE_TEST_EXTRA_FLAGS="--enable-sandbox" \
	cargo test --release --quiet --test tap_mode -- "${filters[@]}" >"$work/test.log" 2>&1 ||
	{ echo "seccomp-audit: some tests failed under strace (timing?); continuing" >&2; tail -5 "$work/test.log" >&2; }

python3 - "$work/traces" src/filter.rs <<'EOF'
import os, re, sys
traces, filter_rs = sys.argv[1], sys.argv[2]
line_re = re.compile(r'^(\d+)\s+([a-z0-9_]+)\((.*)')
seen, args = {}, {'ioctl': set(), 'fcntl': set(), 'socket': set()}
for name in os.listdir(traces):
    after = False
    for line in open(os.path.join(traces, name), errors='replace'):
        m = line_re.match(line)
        if not m:
            continue
        call, rest = m.group(2), m.group(3)
        if not after:
            if call == 'write' and rest.startswith('3, "1", 1'):
                after = True
            continue
        seen[call] = seen.get(call, 0) + 1
        if call in args:
            parts = [p.strip() for p in rest.split(',')]
            args[call].add(parts[0] if call == 'socket' else parts[1] if len(parts) > 1 else '?')
allowed = set(re.findall(r'libc::SYS_([a-z0-9_]+)', open(filter_rs).read().split('#[cfg(test)]')[0]))
missing = sorted(set(seen) - allowed)
unused = sorted(allowed - set(seen))
print('traced after ready: ' + ', '.join('%s(%d)' % (k, seen[k]) for k in sorted(seen)))
for k, v in args.items():
    print('%s: %s' % (k, ', '.join(sorted(v)) or '-'))
print('allowed, never traced: ' + (', '.join(unused) or '-'))
print('traced, not allowed: ' + (', '.join(missing) or '-'))
sys.exit(1 if missing else 0)
EOF
