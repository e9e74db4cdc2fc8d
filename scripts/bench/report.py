#!/usr/bin/env python3
"""Turn the samples of scripts/bench.sh into PREFIX.json, PREFIX.md and PREFIX.png.

  report.py SAMPLES.jsonl META.json PREFIX
  report.py --from-json PREVIOUS.json PREFIX     (re-render a run)

Each sample is {"round", "path", "measure", "value"}; a cell is the median of its rounds.
The Markdown has the tables (with ratios of tapwire to the other paths) and the targets of
issue 7 evaluated on this run; the PNG has bars per path, grouped by measure.
"""
import json
import statistics
import sys

PATH_ORDER = ["tap", "tapb", "tapmq", "bypass", "splice", "run", "slirp4netns", "pasta", "veth", "lo"]
PATH_LABEL = {
    "tap": "tapwire",
    "tapb": "tapwire B",
    "tapmq": "tapwire --threads",
    "bypass": "tapwire bypass",
    "splice": "tapwire --forward-to-host",
    "run": "tapwire run",
    "slirp4netns": "slirp4netns",
    "pasta": "pasta",
    "veth": "veth (kernel)",
    "lo": "loopback",
}
COLORS = {
    "tap": "#d62728",
    "tapb": "#9467bd",
    "tapmq": "#17becf",
    "bypass": "#ff7f0e",
    "splice": "#8c564b",
    "run": "#e377c2",
    "slirp4netns": "#1f77b4",
    "pasta": "#2ca02c",
    "veth": "#7f7f7f",
    "lo": "#bcbd22",
}


def fmt(v, digits=2):
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return "%.0f" % v
    if abs(v) >= 100:
        return "%.1f" % v
    return ("%." + str(digits) + "f") % v


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    return "%.2fx" % (a / b)


def main():
    if sys.argv[1] == "--from-json":
        # Re-render a previous run: report.py --from-json RUN.json PREFIX
        d = json.load(open(sys.argv[2]))
        render(d["samples"], d["meta"], sys.argv[3])
        return
    samples_path, meta_path, prefix = sys.argv[1:4]
    samples = [json.loads(l) for l in open(samples_path) if l.strip()]
    meta = json.load(open(meta_path))
    render(samples, meta, prefix)


def render(samples, meta, prefix):
    cells = {}
    failures = {}
    for s in samples:
        key = (s["path"], s["measure"])
        if s.get("value") is None:
            failures[key] = failures.get(key, 0) + 1
            continue
        cells.setdefault(key, []).append(float(s["value"]))
    med = {k: statistics.median(v) for k, v in cells.items()}
    paths = [p for p in PATH_ORDER if any(k[0] == p for k in list(cells) + list(failures))]
    mtus = meta["mtus"]
    maxmtu = str(max(int(m) for m in mtus))
    streams = meta["streams"]

    def get(p, m):
        return med.get((p, m))

    def cell(p, m, digits=2):
        v = get(p, m)
        if v is None and (p, m) in failures:
            return "FAIL"
        return fmt(v, digits)

    md = []
    md.append("# tapwire benchmark, %s\n" % meta["date"])
    md.append(
        "%d CPUs (%s), kernel %s; %s; %s (%s); %s; pasta %s; %s.\n"
        % (
            meta["cpus"], meta["cpu_model"], meta["kernel"], meta["iperf3"], meta["tapwire"],
            meta["tapwire_commit"], meta["slirp4netns"], meta["pasta"], meta["sockperf"],
        )
    )
    md.append(
        "Median of %d rounds, paths alternating within each round; %d s per throughput run%s. "
        "Everything ran in a private network namespace. `scripts/bench.sh%s`.\n"
        % (meta["rounds"], meta["seconds_per_run"], ", quick mode" if meta["quick"] else "",
           " --quick" if meta["quick"] else "")
    )
    if meta.get("loadavg_start"):
        md.append("Load average at start %s, at end %s (other work on the machine competes for "
                  "its CPUs; compare ratios within one run).\n"
                  % (meta["loadavg_start"], " ".join(meta.get("loadavg_end", []))))
    for n in meta.get("notes", []):
        md.append("- note: %s" % n)
    if meta.get("notes"):
        md.append("")

    ratio_cols = []
    if "tap" in paths:
        for other in ["slirp4netns", "pasta", "veth"]:
            if other in paths:
                ratio_cols.append(("tap", other))
    if "tapb" in paths and "tap" in paths:
        ratio_cols.append(("tapb", "tap"))
    if "tapmq" in paths:
        for other in ["tap", "veth"]:
            if other in paths:
                ratio_cols.append(("tapmq", other))
    if "bypass" in paths:
        for other in ["slirp4netns", "lo"]:
            if other in paths:
                ratio_cols.append(("bypass", other))
    if "splice" in paths:
        for other in ["lo", "tap"]:
            if other in paths:
                ratio_cols.append(("splice", other))

    def table(title, rows, unit_note, digits=2, higher_better=True):
        md.append("## %s\n" % title)
        hdr = "| measure | " + " | ".join(PATH_LABEL[p] for p in paths)
        short = {"tap": "tapwire", "tapb": "B", "tapmq": "threads", "bypass": "bypass", "splice": "splice"}
        hdr += "".join(" | %s/%s" % (short[a], "tapwire" if b == "tap" else b)
                       for a, b in ratio_cols) + " |"
        md.append(hdr)
        md.append("|---" * (1 + len(paths) + len(ratio_cols)) + "|")
        for label, m in rows:
            if not any((p, m) in med or (p, m) in failures for p in paths):
                continue
            line = "| %s | " % label + " | ".join(cell(p, m, digits) for p in paths)
            for a, b in ratio_cols:
                line += " | " + ratio(get(a, m), get(b, m))
            md.append(line + " |")
        md.append("\n%s\n" % unit_note)

    tput_rows = []
    for mtu in mtus:
        for d, dl in [("up", "ns->host"), ("down", "host->ns")]:
            for s in streams:
                tput_rows.append(("TCP %s, %s stream%s, MTU %s" % (dl, s, "s" if s != "1" else "", mtu),
                                  "tcp_%s_%ss_mtu%s" % (d, s, mtu)))
        tput_rows.append(("port forward host->ns, MTU %s" % mtu, "pf_down_mtu%s" % mtu))
    table("Throughput (Gbit/s, higher is better)", tput_rows,
          "iperf3, receiver side. ns->host: the guest's client to the host's server via the "
          "gateway 10.0.2.2 (host 127.0.0.1; veth: the host end of the pair). Port forward: a "
          "client on host 127.0.0.1:15201 forwarded to the guest's server (veth and loopback: "
          "direct). Loopback (MTU 65536) and bypass (its data never crosses the tap) are measured at "
          "MTU %s only." % maxmtu)

    other_rows = [
        ("TCP latency p50 (us, one-way)", "lat_p50"),
        ("TCP latency p99 (us, one-way)", "lat_p99"),
        ("new TCP connections/s", "conn_rate"),
        ("UDP 64 B ns->host (kpkt/s received)", "udp_up_kpps"),
        ("UDP 64 B ns->host loss (%)", "udp_up_loss"),
        ("UDP 64 B host->ns (kpkt/s received)", "udp_down_kpps"),
        ("UDP 64 B host->ns loss (%)", "udp_down_loss"),
        ("UDP 1400 B ns->host (kpkt/s received)", "udp1400_up_kpps"),
        ("UDP 1400 B ns->host loss (%)", "udp1400_up_loss"),
        ("UDP 1400 B host->ns (kpkt/s received)", "udp1400_down_kpps"),
        ("UDP 1400 B host->ns loss (%)", "udp1400_down_loss"),
    ]
    table("Latency, connections, small packets (MTU %s)" % maxmtu, other_rows,
          "Latency: sockperf ping-pong, TCP, 64 B messages, half the round trip as sockperf "
          "reports it (lower is better). Connections: scripts/bench/twb.c crr, 8 in flight, "
          "connect + 100 B request + 100 B reply + close. UDP: iperf3 -u -l 64 (or 1400) -b 0 "
          "(unlimited rate: loss shows where the path saturates).")

    daemon_paths = [p for p in paths if p in ("tap", "tapb", "tapmq", "bypass", "splice", "run", "slirp4netns", "pasta")]
    if daemon_paths:
        md.append("## Forwarder CPU seconds per GB moved (lower is better)\n")
        md.append("| measure | " + " | ".join(PATH_LABEL[p] for p in daemon_paths) + " |")
        md.append("|---" * (1 + len(daemon_paths)) + "|")
        for label, m in tput_rows:
            if m.startswith("pf_"):
                continue
            if not any((p, "cpu_" + m) in med for p in daemon_paths):
                continue
            md.append("| %s | " % label + " | ".join(cell(p, "cpu_" + m, 3) for p in daemon_paths) + " |")
        md.append("\nutime+stime of the forwarder process around each iperf3 run, divided by the "
                  "bytes received (10 ms clock ticks).\n")

        md.append("## Memory, idle, and %s idle flows (MTU %s; lower is better)\n"
                  % (meta["flows"], maxmtu))
        md.append("| measure | " + " | ".join(PATH_LABEL[p] for p in daemon_paths) + " |")
        md.append("|---" * (1 + len(daemon_paths)) + "|")
        mem_rows = [
            ("RSS at start (KiB)", "rss_start_kib_mtu%s" % maxmtu, 0),
            ("RSS after the throughput runs (KiB)", "rss_after_kib_mtu%s" % maxmtu, 0),
            ("RSS idle (KiB)", "rss_idle_kib", 0),
            ("idle CPU (%)", "idle_cpu_pct", 2),
            ("idle wakeups/s", "idle_wakeups_per_s", 1),
            ("time to open the flows (s)", "flows_open_s", 2),
            ("RSS with the flows open (KiB)", "rss_flows_kib", 0),
            ("RSS per idle flow (KiB)", "rss_per_flow_kib", 2),
            ("idle CPU with the flows open (%)", "flows_idle_cpu_pct", 2),
            ("wakeups/s with the flows open", "flows_idle_wakeups_per_s", 1),
            ("latency p50 before (us)", "lat_p50_base", 2),
            ("latency p50 with the flows open (us)", "lat_p50_flows", 2),
            ("latency p99 with the flows open (us)", "lat_p99_flows", 2),
        ]
        for label, m, d in mem_rows:
            if not any((p, m) in med or (p, m) in failures for p in daemon_paths):
                continue
            md.append("| %s | " % label + " | ".join(cell(p, m, d) for p in daemon_paths) + " |")
        md.append("")

    # ---- targets of issue 7 ----
    targets = []

    def target(name, value, goal, ok):
        targets.append({"target": name, "measured": value, "goal": goal,
                        "met": (None if ok is None else bool(ok))})

    def r(a, b):
        return None if a is None or b is None or b == 0 else a / b

    for tw in [p for p in ("tap", "tapb", "bypass") if p in paths]:
        lbl = PATH_LABEL[tw]
        t = lambda m: get(tw, m)
        s = lambda m: get("slirp4netns", m)
        x = r(t("tcp_up_1s_mtu65520"), s("tcp_up_1s_mtu65520"))
        target("%s: TCP ns->host, MTU 65520" % lbl, "%s slirp4netns" % ratio(t("tcp_up_1s_mtu65520"), s("tcp_up_1s_mtu65520")),
               ">= 3x slirp4netns", None if x is None else x >= 3)
        x = r(t("tcp_down_1s_mtu65520"), s("tcp_down_1s_mtu65520"))
        y = r(t("tcp_down_1s_mtu65520"), get("pasta", "tcp_down_1s_mtu65520"))
        ok = None if x is None else (x >= 2 and (y is None or y >= 1))
        target("%s: TCP host->ns, MTU 65520" % lbl,
               "%s slirp4netns, %s pasta" % (ratio(t("tcp_down_1s_mtu65520"), s("tcp_down_1s_mtu65520")),
                                             ratio(t("tcp_down_1s_mtu65520"), get("pasta", "tcp_down_1s_mtu65520"))),
               ">= 2x slirp4netns and >= pasta", ok)
        for d, dl in [("up", "ns->host"), ("down", "host->ns")]:
            m = "tcp_%s_1s_mtu1500" % d
            x = r(t(m), s(m))
            target("%s: TCP %s, MTU 1500" % (lbl, dl), "%s slirp4netns" % ratio(t(m), s(m)),
                   ">= 5x slirp4netns", None if x is None else x >= 5)
        for mtu in mtus:
            m = "pf_down_mtu%s" % mtu
            x = r(t(m), s(m))
            target("%s: port forward host->ns, MTU %s" % (lbl, mtu), "%s slirp4netns" % ratio(t(m), s(m)),
                   ">= 2x slirp4netns", None if x is None else x >= 2)
        lo = get("lo", "lat_p50")
        if lo is not None and t("lat_p50") is not None and s("lat_p50") is not None:
            add_t, add_s = t("lat_p50") - lo, s("lat_p50") - lo
            target("%s: latency added over loopback (p50)" % lbl,
                   "%.2f us vs slirp4netns %.2f us (%s)" % (add_t, add_s, ratio(add_t, add_s)),
                   "<= 0.5x slirp4netns's", add_s > 0 and add_t <= 0.5 * add_s)
        x = r(t("conn_rate"), s("conn_rate"))
        target("%s: connections per second" % lbl, "%s slirp4netns" % ratio(t("conn_rate"), s("conn_rate")),
               ">= 2x slirp4netns", None if x is None else x >= 2)
        if t("rss_per_flow_kib") is not None:
            target("%s: RSS per idle flow" % lbl, "%.1f KiB" % t("rss_per_flow_kib"), "<= 32 KiB",
                   t("rss_per_flow_kib") <= 32)
        if t("lat_p50_flows") is not None and t("lat_p50_base") is not None:
            x = t("lat_p50_flows") / t("lat_p50_base")
            target("%s: per-packet cost with %s flows" % (lbl, meta["flows"]),
                   "latency p50 %.2f -> %.2f us (%.2fx)" % (t("lat_p50_base"), t("lat_p50_flows"), x),
                   "unchanged (<= 1.2x)", x <= 1.2)
        if t("idle_cpu_pct") is not None:
            target("%s: idle CPU" % lbl, "%.2f%% (%s wakeups/s)" % (t("idle_cpu_pct"), fmt(t("idle_wakeups_per_s"), 1)),
                   "0%", t("idle_cpu_pct") == 0)
        if t("rss_idle_kib") is not None:
            target("%s: idle RSS" % lbl, "%.2f MiB" % (t("rss_idle_kib") / 1024), "<= 4 MiB",
                   t("rss_idle_kib") <= 4096)

    if targets:
        md.append("## Targets (issue 7)\n")
        md.append("| target | measured | goal | met |")
        md.append("|---|---|---|---|")
        for x in [t for t in targets if t["met"] is not None]:
            met = {True: "yes", False: "**no**", None: "?"}[x["met"]]
            md.append("| %s | %s | %s | %s |" % (x["target"], x["measured"], x["goal"], met))
        md.append("")

    bad = sorted(set(failures) - set(med))
    if bad:
        md.append("Failed cells (see the run's stderr): " + ", ".join("%s/%s" % k for k in bad) + "\n")

    with open(prefix + ".md", "w") as f:
        f.write("\n".join(md) + "\n")

    out = {
        "meta": meta,
        "medians": {p: {m: v for (pp, m), v in sorted(med.items()) if pp == p} for p in paths},
        "spread": {"%s/%s" % k: {"min": min(v), "max": max(v), "n": len(v)} for k, v in sorted(cells.items())},
        "failures": ["%s/%s" % k for k in sorted(failures)],
        "targets": targets,
        "samples": samples,
    }
    with open(prefix + ".json", "w") as f:
        json.dump(out, f, indent=1)

    chart(prefix + ".png", paths, get, meta, mtus, streams, maxmtu)


def chart(path, paths, get, meta, mtus, streams, maxmtu):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.stderr.write("report: matplotlib missing (apt-get install python3-matplotlib): no PNG\n")
        return
    groups = []
    for mtu in mtus:
        for d, dl in [("up", "ns→host"), ("down", "host→ns")]:
            for s in streams:
                groups.append(("%s\n%s%s" % (dl, s + "×, " if s != "1" else "", mtu), "tcp_%s_%ss_mtu%s" % (d, s, mtu)))
        groups.append(("fwd host→ns\n%s" % mtu, "pf_down_mtu%s" % mtu))
    panels = [
        ("TCP throughput, Gbit/s (higher is better; labels: direction, streams, MTU)", groups, False),
        ("Latency, µs one-way, log scale (lower is better)", [("p50", "lat_p50"), ("p99", "lat_p99")], True),
        ("New TCP connections/s (higher is better)", [("conn/s", "conn_rate")], False),
        ("UDP kpkt/s received (higher is better)", [("64 B ns→host", "udp_up_kpps"), ("64 B host→ns", "udp_down_kpps"),
                                                    ("1400 B ns→host", "udp1400_up_kpps"), ("1400 B host→ns", "udp1400_down_kpps")], False),
    ]
    fig = plt.figure(figsize=(16, 10))
    gs = fig.add_gridspec(2, 3, height_ratios=[1.15, 1])
    axes = [fig.add_subplot(gs[0, :]), fig.add_subplot(gs[1, 0]), fig.add_subplot(gs[1, 1]), fig.add_subplot(gs[1, 2])]
    for ax, (title, grp, log) in zip(axes, panels):
        grp = [(l, m) for l, m in grp if any(get(p, m) is not None for p in paths)]
        present = [p for p in paths if any(get(p, m) is not None for _, m in grp)]
        if not grp or not present:
            ax.set_visible(False)
            continue
        width = 0.8 / len(present)
        for i, p in enumerate(present):
            xs = [g + (i - (len(present) - 1) / 2) * width for g in range(len(grp))]
            ys = [get(p, m) or 0 for _, m in grp]
            ax.bar(xs, ys, width, label=PATH_LABEL[p], color=COLORS[p])
        ax.set_xticks(range(len(grp)))
        ax.set_xticklabels([l for l, _ in grp], fontsize=8)
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(ncol=len(paths), fontsize=9, loc="upper left")
    fig.suptitle("tapwire vs slirp4netns, pasta and the kernel — %s, %d CPUs, kernel %s, median of %d rounds"
                 % (meta["date"][:10], meta["cpus"], meta["kernel"], meta["rounds"]), fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    main()
