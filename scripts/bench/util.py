#!/usr/bin/env python3
"""Small parsers and clients for scripts/bench.sh (one call per measurement; nothing here is
on a hot path).

  util.py iperf-tcp FILE        -> "GBITS BYTES SECONDS" (receiver side)
  util.py iperf-udp FILE LEN    -> "PPS LOSS_PERCENT" (datagrams received per second, loss)
  util.py sockperf FILE         -> "P50 P99 AVG" (one-way microseconds, as sockperf reports)
  util.py api SOCKET JSON       -> sends one request to a slirp4netns-style API socket, prints
                                   the reply, fails unless it has "return"
  util.py cpu PID               -> "TICKS" utime+stime of PID (all threads), clock ticks
  util.py mem PID               -> "RSS_KIB"

Every parser prints the reason on stderr and exits 1 when the file has no result.
"""
import json
import os
import re
import socket
import sys


def fail(why):
    sys.stderr.write("    %s\n" % why)
    sys.exit(1)


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        fail("no JSON in %s: %s" % (path, e))


def iperf_tcp(path):
    d = load(path)
    try:
        r = d["end"]["sum_received"]
        print("%.4f %d %.4f" % (r["bits_per_second"] / 1e9, r["bytes"], r["seconds"]))
    except (KeyError, TypeError):
        fail("iperf3: %s" % (d.get("error") or "no result"))


def iperf_udp(path, length):
    d = load(path)
    try:
        r = d["end"]["sum_received"]
        s = d["end"]["sum_sent"]
        secs = r["seconds"] or s["seconds"]
        received = r["bytes"] / float(length)
        sent = s["packets"] or 0
        loss = 100.0 * (1 - received / sent) if sent else 100.0
        print("%.1f %.2f" % (received / secs, max(loss, 0.0)))
    except (KeyError, TypeError, ZeroDivisionError):
        fail("iperf3: %s" % (d.get("error") or "no result"))


def sockperf(path):
    try:
        text = open(path, errors="replace").read()
    except OSError as e:
        fail(str(e))
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    pct = dict(
        (float(p), float(v))
        for p, v in re.findall(r"percentile\s+([\d.]+)\s*=\s*([\d.]+)", text)
    )
    avg = re.search(r"avg-latency=([\d.]+)", text) or re.search(r"Latency is ([\d.]+)", text)
    if 50.0 not in pct or 99.0 not in pct or not avg:
        fail("sockperf: no percentiles in output: %s" % text.strip()[-300:])
    print("%.3f %.3f %.3f" % (pct[50.0], pct[99.0], float(avg.group(1))))


def api(path, request):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    s.sendall(request.encode())
    s.shutdown(socket.SHUT_WR)
    out = b""
    while True:
        b = s.recv(4096)
        if not b:
            break
        out += b
    print(out.decode(errors="replace"))
    try:
        if "return" not in json.loads(out):
            sys.exit(1)
    except ValueError:
        sys.exit(1)


def cpu(pid):
    with open("/proc/%s/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime, stime are fields 14, 15.
    print(int(fields[11]) + int(fields[12]))


def mem(pid):
    with open("/proc/%s/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                print(line.split()[1])
                return
    fail("no VmRSS")


def main():
    a = sys.argv[1:]
    if not a:
        fail(__doc__)
    cmd = a[0]
    if cmd == "iperf-tcp":
        iperf_tcp(a[1])
    elif cmd == "iperf-udp":
        iperf_udp(a[1], int(a[2]))
    elif cmd == "sockperf":
        sockperf(a[1])
    elif cmd == "api":
        api(a[1], a[2])
    elif cmd == "cpu":
        cpu(a[1])
    elif cmd == "mem":
        mem(a[1])
    else:
        fail(__doc__)


if __name__ == "__main__":
    main()
