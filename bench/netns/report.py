#!/usr/bin/env python3
"""Report for bench/netns/run.sh: results.md, results.csv and chart.png from the raw files.

Input, in the results directory run.sh filled:
  params.json   the configuration and the measured shaping;
  times.csv     contender,host,seconds,ok  (seconds from the common start; ok=1, or why not);
  summary.csv   per contender: origin bytes, daemon CPU and peak RSS;
  machine-cpu.csv  per contender: the machine's busy CPU share while its clients ran;
  image.json, image-waves.csv  (image-pull contender only) the image's size and each wave's
                containerd CPU; the image rows (image-direct, -cold, -warm) measure against the
                image's size instead of the file's.

Percentiles interpolate linearly between the sorted completion times (p99 of 8 hosts lies between
the 7th and the 8th). The Kumar-Ross bound (Mundinger's for uneven links) is
T_min = max(F/u_s, F/d_min, N*F/(u_s + sum u_i)), u_s the uplink of the origin namespace (seed
peer, origin, BitTorrent seeder), u_i and d_i each host's up- and downlink.

Usage: report.py RESULTS_DIR
"""

import csv
import json
import math
import os
import re
import struct
import sys
import zlib

FILE_ORDER = ["links", "direct", "bittorrent", "damselfly"]
IMAGE_ORDER = ["image-direct", "image-swarm", "image-cold", "image-warm"]
ORDER = FILE_ORDER + IMAGE_ORDER
COLORS = {"links": (0x33, 0x99, 0x99), "direct": (0x99, 0x99, 0x99), "bittorrent": (0xE0, 0x7B, 0x39), "damselfly": (0x2A, 0x6F, 0xDB),
          "image-direct": (0x55, 0x55, 0x55), "image-swarm": (0x8E, 0x44, 0xAD), "image-cold": (0x2E, 0x9E, 0x4F), "image-warm": (0x9A, 0xD8, 0x9F)}
# Issue 14: serving an image's layers through the mirror costs at most this much beyond
# containerd's own work (cold pull minus warm pull of the last host, over T_min).
IMAGE_COLD_MINUS_WARM_TARGET = 1.08


def percentile(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * p
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def host_rates(params):
    """Each host's (up, down) in Mbit/s: the lists of a run with uneven links, else host_mbit."""
    n, h = params["n"], params["host_mbit"]
    ups = params.get("host_up_mbit") or [h] * n
    downs = params.get("host_down_mbit") or [h] * n
    return ups, downs


def uneven(params):
    ups, downs = host_rates(params)
    return len(set(ups) | set(downs)) > 1


def bound(params):
    f = params["file_bytes"] * 8
    n = params["n"]
    u_s = params["origin_mbit"] * 1e6
    ups, downs = host_rates(params)
    terms = {"F/u_s": f / u_s, "F/d_min": f / (min(downs) * 1e6),
             "N*F/(u_s+sum u_i)": n * f / (u_s + sum(ups) * 1e6)}
    return max(terms.values()), terms


def links_text(params):
    """The hosts' links in words: one rate, or the distinct (up, down) pairs and how many."""
    ups, downs = host_rates(params)
    if not uneven(params):
        return f"{params['n']} hosts at {params['host_mbit']} Mbit/s (both ways)"
    pairs = {}
    for i, pair in enumerate(zip(ups, downs), 1):
        pairs.setdefault(pair, []).append(f"h{i}")
    parts = [f"{' '.join(hs)} up {u} / down {d} Mbit/s" for (u, d), hs in pairs.items()]
    return f"{params['n']} hosts: " + "; ".join(parts)


def fnum(x, digits=2):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def load(results):
    with open(os.path.join(results, "params.json")) as fh:
        params = json.load(fh)
    times = {}
    failures = {}
    with open(os.path.join(results, "times.csv")) as fh:
        for row in csv.DictReader(fh):
            c = row["contender"]
            times.setdefault(c, [])
            failures.setdefault(c, [])
            if row["ok"] == "1" and row["seconds"]:
                times[c].append((row["host"], float(row["seconds"])))
            else:
                failures[c].append(f'{row["host"]}:{row["ok"]}')
    summary = {}
    with open(os.path.join(results, "summary.csv")) as fh:
        for row in csv.DictReader(fh):
            summary[row["contender"]] = row
    return params, times, failures, summary


def num(row, key):
    v = row.get(key, "")
    return float(v) if v not in ("", None) else None


def image_params(params, results):
    """params with the image's size as the file size (None: no image-pull contender ran)."""
    path = os.path.join(results, "image.json")
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        image = json.load(fh)
    return dict(params, file_bytes=image["image_bytes"], image=image)


def rows_for(params, times, failures, summary, order=FILE_ORDER):
    t_min, _ = bound(params)
    fb = params["file_bytes"]
    out = []
    for c in [c for c in order if c in summary]:
        secs = [s for _, s in times.get(c, [])]
        s = summary[c]
        last = max(secs) if secs else float("nan")
        if failures.get(c):
            last = float("nan")
        http = num(s, "http_origin_bytes")
        out.append({
            "contender": c,
            "hosts_ok": f"{len(secs)}/{params['n']}",
            "p50_s": percentile(secs, 0.5),
            "p99_s": percentile(secs, 0.99),
            "max_s": last,
            "t_min_s": t_min,
            "last_over_tmin": last / t_min,
            "http_origin_over_f": (http / fb) if (http is not None and c != "bittorrent") else None,
            "uplink_payload_over_f": (num(s, "uplink_payload_bytes") or 0) / fb,
            "uplink_wire_over_f": (num(s, "uplink_wire_bytes") or 0) / fb,
            "cpu_s": num(s, "daemon_cpu_s"),
            "peak_rss_mib": (num(s, "daemon_peak_rss_kib") / 1024) if num(s, "daemon_peak_rss_kib") else None,
            "procs": s.get("daemon_count") or "",
            "seed_cpu_s": num(s, "seed_cpu_s"),
            "seed_rss_mib": (num(s, "seed_peak_rss_kib") / 1024) if num(s, "seed_peak_rss_kib") else None,
            "sched_cpu_s": num(s, "scheduler_cpu_s"),
            "sched_rss_mib": (num(s, "scheduler_peak_rss_kib") / 1024) if num(s, "scheduler_peak_rss_kib") else None,
            "failures": " ".join(failures.get(c, [])),
        })
    return out


def write_csv(path, rows):
    keys = list(rows[0].keys()) if rows else []
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(keys)
        for r in rows:
            w.writerow(["" if r[k] is None else (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k]) for k in keys])


def file_table(rows):
    """The file contenders' table and its notes (nothing when only the image contender ran)."""
    if not rows:
        return []
    lines = []
    lines.append("")
    lines.append("| contender | hosts ok | p50 (s) | p99 (s) | last (s) | T_last / T_min | origin HTTP / F "
                 "| origin uplink / F | CPU s (all daemons) | peak RSS MiB (max daemon) |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cpu = fnum(r["cpu_s"], 1) if r["cpu_s"] is not None else "n/a"
        rss = fnum(r["peak_rss_mib"], 1) if r["peak_rss_mib"] is not None else "n/a"
        lines.append(f"| {r['contender']} | {r['hosts_ok']} | {fnum(r['p50_s'], 1)} | {fnum(r['p99_s'], 1)} "
                     f"| {fnum(r['max_s'], 1)} | {fnum(r['last_over_tmin'], 2)} | "
                     f"{fnum(r['http_origin_over_f'], 3) if r['http_origin_over_f'] is not None else 'n/a'} "
                     f"| {fnum(r['uplink_payload_over_f'], 3)} | {cpu} | {rss} |")
    lines.append("")
    lines.append("- links: every host receives the file from the next host over one TCP connection, all at once "
                 "(no P2P logic): what the shaped links and the machine carry when every downlink is full.")
    lines.append("- origin HTTP / F: body bytes nginx sent (access log) / file size. BitTorrent has no HTTP origin.")
    lines.append("- origin uplink / F: payload that left the origin namespace towards the hosts / file size "
                 "(direct: nginx; BitTorrent: the seeder's uploadLength from aria2 RPC; Damselfly: seed-peer "
                 "bytes the hosts counted plus nginx bytes sent to hosts). Wire bytes incl. headers are in results.csv.")
    lines.append("- CPU and RSS: utime+stime and VmHWM from /proc of the daemons (BitTorrent: the N+1 aria2c; "
                 "Damselfly: the N+1 dfdaemons, the scheduler separately below).")
    for r in rows:
        if r["contender"] == "damselfly":
            lines.append(f"- Damselfly seed peer: {fnum(r['seed_cpu_s'], 1)} CPU s, {fnum(r['seed_rss_mib'], 1)} MiB peak RSS; "
                         f"dfscheduler: {fnum(r['sched_cpu_s'], 1)} CPU s, {fnum(r['sched_rss_mib'], 1)} MiB peak RSS.")
        if r["failures"]:
            lines.append(f"- {r['contender']}: hosts that did not finish: {r['failures']}")
    return lines


def markdown(params, rows, results):
    t_min, terms = bound(params)
    lines = []
    p = params
    lines.append(f"N={links_text(p)}, origin uplink {p['origin_mbit']} Mbit/s, "
                 f"file {p['size_mib']} MiB, latency {p['latency_ms']} ms; {p['cpus']} CPUs, kernel {p['kernel']}.")
    lines.append(f"Shaping measured with iperf3 before the run: origin uplink {p['measured_origin_up_mbit']} Mbit/s, "
                 f"host to host {p['measured_host_mbit']} Mbit/s.")
    lines.append("T_min = max(" + ", ".join(f"{k} = {v:.1f} s" for k, v in terms.items()) + f") = {t_min:.1f} s.")
    lines.extend(file_table(rows))
    df = [r for r in rows if r["contender"] == "damselfly"]
    bt = [r for r in rows if r["contender"] == "bittorrent"]
    if df:
        d = df[0]
        checks = [("last host within 1.15 x T_min", d["last_over_tmin"] <= 1.15),
                  ("origin HTTP sends at most 1.02 x F", (d["http_origin_over_f"] or 99) <= 1.02)]
        ups, _ = host_rates(p)
        if uneven(p):  # issue 14: uneven uplinks
            checks = [("last host within 1.3 x T_min", d["last_over_tmin"] <= 1.3),
                      ("origin uplink at most 1.05 x F", d["uplink_payload_over_f"] <= 1.05)]
        elif p["origin_mbit"] > max(ups):  # issue 14: a seed faster than the hosts
            checks = [("last host within 1.10 x T_min", d["last_over_tmin"] <= 1.10)]
        if bt:
            checks.append(("better T_last/T_min than BitTorrent",
                           not math.isnan(d["last_over_tmin"]) and (math.isnan(bt[0]["last_over_tmin"])
                                                                    or d["last_over_tmin"] < bt[0]["last_over_tmin"])))
        lines.append("")
        lines.append("Targets (issue 4): " + "; ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in checks) + ".")
    if uneven(p):
        lines.append(by_uplink(p, load(results)[1]))
    busy = machine_cpu(results)
    if busy:
        lines.append("Machine CPU busy while the clients ran (all namespaces share the cores): "
                     + ", ".join(f"{c} {100 * share:.0f} % of {cores}" for c, share, cores in busy) + ".")
    src = os.path.join(results, "damselfly-sources.csv")
    if os.path.exists(src):
        with open(src) as fh:
            srows = list(csv.DictReader(fh))
        if srows:
            tot = {k: sum(int(r[k] or 0) for r in srows) for k in ("from_seed", "from_peers", "back_to_source")}
            all_ = sum(tot.values()) or 1
            lines.append(f"Damselfly bytes by source over all hosts: seed peer {100 * tot['from_seed'] / all_:.1f}%, "
                         f"other peers {100 * tot['from_peers'] / all_:.1f}%, back to source {100 * tot['back_to_source'] / all_:.1f}%.")
    try:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import pieces
        for logs, name in (("damselfly-logs", "damselfly"), ("image-swarm-logs", "image-swarm"),
                           ("image-logs", "image-cold")):
            note = pieces.analyse(results, logs, name)
            if note:
                lines.append(note)
    except Exception as e:  # the analysis is a bonus; the table stands without it
        print(f"report.py: piece analysis failed: {e}", file=sys.stderr)
    lines.append("")
    ip = image_params(p, results)
    if ip:
        lines.extend(image_markdown(ip, results))
        lines.append("")
    lines.append(f"Command: `{p['command']}`")
    return "\n".join(lines) + "\n"


def machine_cpu(results):
    """[(contender, busy share, cores)] from machine-cpu.csv; empty for older results."""
    path = os.path.join(results, "machine-cpu.csv")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [(r["contender"], float(r["busy_share"]), r["cores"]) for r in csv.DictReader(fh)]


def go_seconds(text):
    """A Go duration as ctr prints it ("638.1ms", "1.2s", "1m2.5s") in seconds; None if empty."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    parts = re.findall(r"([0-9.]+)(h|ms|m|s|us|µs|ns)", text or "")
    return sum(float(v) * units[u] for v, u in parts) if parts else None


def image_phases(results):
    """wave -> (fetch seconds per host, unpack seconds per host), from ctr's own lines."""
    path = os.path.join(results, "image-phases.csv")
    out = {}
    if os.path.exists(path):
        with open(path) as fh:
            for r in csv.DictReader(fh):
                f, u = out.setdefault(r["wave"], ([], []))
                if r["fetch_s"]:
                    f.append(float(r["fetch_s"]))
                if go_seconds(r["unpack"]) is not None:
                    u.append(go_seconds(r["unpack"]))
    return out


def p50_max(values):
    return f"{fnum(percentile(values, 0.5), 1)} / {fnum(max(values), 1)}" if values else "n/a"


def image_markdown(ip, results):
    """The image-pull table: the same columns as the file table, F the image's size."""
    _, times, failures, summary = load(results)
    rows = rows_for(ip, times, failures, summary, IMAGE_ORDER)
    if not rows:
        return []
    im = ip["image"]
    t_min, terms = bound(ip)
    how = ("`ctr images pull` (fetch and unpack)" if im["pull"] == "pull" else "`ctr content fetch` (no unpack)")
    waves = {}
    path = os.path.join(results, "image-waves.csv")
    if os.path.exists(path):
        with open(path) as fh:
            waves = {r["wave"]: r for r in csv.DictReader(fh)}
    lines = ["", f"Image pulls: one image of {im['layers']} layers, {im['image_bytes'] / 2**20:.1f} MiB, "
             f"from docker-registry in the origin namespace; containerd {im['containerd']} on every host, "
             f"{how}, snapshotter {im['snapshotter']}. T_min = {t_min:.1f} s for the image.", "",
             "| pull | hosts ok | p50 (s) | last (s) | T_last / T_min | ctr fetch p50 / max (s) "
             "| ctr unpack p50 / max (s) | registry HTTP / image "
             "| origin uplink / image | containerd CPU s | dfdaemon CPU s (cumulative) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    phases = image_phases(results)
    for r in rows:
        w = waves.get(r["contender"], {})
        fetch, unpack = phases.get(r["contender"], ([], []))
        lines.append(f"| {r['contender']} | {r['hosts_ok']} | {fnum(r['p50_s'], 1)} | {fnum(r['max_s'], 1)} "
                     f"| {fnum(r['last_over_tmin'], 2)} | {p50_max(fetch)} | {p50_max(unpack)} "
                     f"| {fnum(r['http_origin_over_f'], 3)} "
                     f"| {fnum(r['uplink_payload_over_f'], 3)} | {w.get('containerd_cpu_s') or 'n/a'} "
                     f"| {w.get('dfdaemon_cpu_s_cumulative') or 'n/a'} |")
    lines.append("")
    lines.append("- image-direct: every containerd pulls straight from the registry; image-swarm: no containerd, "
                 "curl fetches every layer at once through the host's dfdaemon mirror, caches empty; image-cold: "
                 "containerd through its dfdaemon mirror (hosts.toml by dfinit), caches empty again; image-warm: the "
                 "same again after the image and its content left every containerd, with every layer still in every "
                 "dfdaemon. ctr fetches every blob, then unpacks (its own elapsed and done lines).")
    by = {r["contender"]: r for r in rows}
    if "image-cold" in by and "image-warm" in by:
        diff = by["image-cold"]["max_s"] - by["image-warm"]["max_s"]
        ok = not math.isnan(diff) and diff / t_min <= IMAGE_COLD_MINUS_WARM_TARGET
        lines.append(f"- cold minus warm (last host): {fnum(diff, 1)} s = {fnum(diff / t_min, 2)} x T_min; "
                     f"target (issue 14) at most {IMAGE_COLD_MINUS_WARM_TARGET} x T_min: {'met' if ok else 'MISSED'}.")
    return lines


def by_uplink(params, times):
    """When the hosts' uplinks differ: the last completion of each uplink class per contender."""
    ups, _ = host_rates(params)
    parts = []
    for c in [c for c in ORDER if c in times]:
        last = {}
        for host, secs in times[c]:
            i = int(host[1:]) - 1 if host[1:].isdigit() else -1
            if 0 <= i < len(ups):
                last[ups[i]] = max(last.get(ups[i], 0.0), secs)
        parts.append(f"{c} " + ", ".join(f"{u} Mbit/s up: {t:.1f} s" for u, t in sorted(last.items())))
    return "Last host per uplink: " + "; ".join(parts) + "."


def chart_matplotlib(path, params, times, t_min):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=110)
    for c in [c for c in ORDER if c in times]:
        secs = sorted(s for _, s in times[c])
        if not secs:
            continue
        xs = list(secs)
        ys = [100.0 * (i + 1) / params["n"] for i in range(len(secs))]
        ax.step([0] + xs, [0] + ys, where="post", color=tuple(v / 255 for v in COLORS[c]), lw=2, label=c)
        ax.plot(xs, ys, "o", color=tuple(v / 255 for v in COLORS[c]), ms=4)
    ax.axvline(t_min, color="black", ls="--", lw=1, label=f"T_min = {t_min:.1f} s")
    ax.axvline(1.15 * t_min, color="black", ls=":", lw=1, label="1.15 x T_min")
    ax.set_xlabel("completion time since start (s)")
    ax.set_ylabel("hosts finished (%)")
    ax.set_ylim(0, 105)
    ax.set_xlim(left=0)
    hosts = "uneven links" if uneven(params) else f"{params['host_mbit']} Mbit/s"
    ax.set_title(f"{params['size_mib']} MiB to N={params['n']} hosts at {hosts}, "
                 f"origin {params['origin_mbit']} Mbit/s")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def chart_plain(path, params, times, t_min):
    """No matplotlib: per-host completion times as dots, one row per contender, no text.
    x from 0 to the slowest host; vertical black line at T_min. Colours as in the legend of
    results.md (grey direct, orange BitTorrent, blue Damselfly)."""
    w, h, m = 800, 60 + 80 * len(ORDER), 40
    px = [[(255, 255, 255)] * w for _ in range(h)]
    allsecs = [s for c in times for _, s in times[c]] + [t_min]
    xmax = max(allsecs) * 1.05

    def x_of(s):
        return int(m + (w - 2 * m) * s / xmax)

    def dot(x, y, col, r=5):
        for yy in range(y - r, y + r + 1):
            for xx in range(x - r, x + r + 1):
                if 0 <= xx < w and 0 <= yy < h and (xx - x) ** 2 + (yy - y) ** 2 <= r * r:
                    px[yy][xx] = col

    for x in range(m, w - m):
        px[h - m][x] = (0, 0, 0)
    for y in range(m // 2, h - m):
        px[y][x_of(t_min)] = (0, 0, 0)
    for row, c in enumerate(ORDER):
        for _, s in times.get(c, []):
            dot(x_of(s), 60 + 80 * row, COLORS[c])
    raw = b"".join(b"\x00" + bytes(v for p in line for v in p) for line in px)

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                 + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    results = sys.argv[1]
    params, times, failures, summary = load(results)
    t_min, _ = bound(params)
    rows = rows_for(params, times, failures, summary)
    ip = image_params(params, results)
    image_rows = rows_for(ip, times, failures, summary, IMAGE_ORDER) if ip else []
    write_csv(os.path.join(results, "results.csv"), rows + image_rows)
    with open(os.path.join(results, "results.md"), "w") as fh:
        fh.write(markdown(params, rows, results))
    png = os.path.join(results, "chart.png")
    try:
        chart_matplotlib(png, params, times, t_min)
    except ImportError:
        chart_plain(png, params, times, t_min)
        print("report.py: matplotlib not available; chart.png drawn without labels", file=sys.stderr)


if __name__ == "__main__":
    main()
