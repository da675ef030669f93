#!/usr/bin/env python3
"""Where Damselfly's pieces came from, from the daemon logs of a bench/netns run.

Needs the hosts' dfdaemon logs at debug level for damselfly_daemon (run.sh:
DF_LOG_LEVEL="info,damselfly_daemon=debug"), which log one "piece downloaded" line per piece with
its source peer. Writes damselfly-pieces.md into the results directory and returns a one-line
summary for results.md: how many piece copies the seed sent (distinct and duplicate), when the
seed's last distinct piece landed, and the pieces per host from the seed and from other peers.

The image-pull contender's logs (image-logs, image-swarm-logs) hold one task per layer:
pieces are told apart by task and number there.

Usage: pieces.py RESULTS_DIR [LOGS_SUBDIR]
"""

import datetime
import glob
import gzip
import os
import re
import sys

LINE = re.compile(r"^(\S+Z)\s.*piece downloaded.*\btask_id=(\w+).*\bpiece=(\d+)\b.*\bsource=(\S+)")
START = re.compile(r"^(\S+Z)\s.*download requested")
ASKED = re.compile(r"^(\S+Z)\s.*\btask_id=(\w+).*piece\{number=(\d+) source=([^}\s]+)\}.*piece requested")
# Width of the windows of the per-host table: pieces landed per host per window.
WINDOW_S = 5
# Peer ids are "{ip}-{hostname}-{uuid}".
PEER = re.compile(r"^(\d+\.\d+\.\d+\.\d+)-(.+?)-[0-9a-f]{8}-")


def ts(text):
    return datetime.datetime.strptime(text[:26], "%Y-%m-%dT%H:%M:%S.%f").timestamp()


def peer_name(peer_id):
    p = PEER.match(peer_id)
    return p.group(2) if p else peer_id


def read_logs(results, logs):
    pieces = {}   # host -> list of (time, (task, piece), source host name)
    asked = {}    # host -> {(task, piece): (time first asked, parent host name)}
    starts = []
    for path in sorted(glob.glob(os.path.join(results, logs, "h*.log*"))):
        host = os.path.basename(path).split(".")[0]
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", errors="replace") as fh:
            for line in fh:
                m = LINE.match(line)
                if m:
                    key = (m.group(2), int(m.group(3)))
                    pieces.setdefault(host, []).append((ts(m.group(1)), key, peer_name(m.group(4))))
                    continue
                m = ASKED.match(line)
                if m:
                    key = (m.group(2), int(m.group(3)))
                    first = asked.setdefault(host, {})
                    first.setdefault(key, (ts(m.group(1)), peer_name(m.group(4))))
                    continue
                m = START.match(line)
                if m:
                    starts.append(ts(m.group(1)))
    return pieces, asked, (min(starts) if starts else None)


def host_order(host):
    return int(host[1:]) if host[1:].isdigit() else 0


def windows_table(pieces, t0):
    """Pieces landed per host per WINDOW_S seconds: where a host stood still."""
    end = max(t for rows in pieces.values() for t, _, _ in rows) - t0
    count = int(end // WINDOW_S) + 1
    out = ["", f"Pieces landed per host per {WINDOW_S} s (columns start at the second shown):", ""]
    out.append("| host | " + " | ".join(str(i * WINDOW_S) for i in range(count)) + " |")
    out.append("|---|" + "---|" * count)
    for host in sorted(pieces, key=host_order):
        cells = [0] * count
        for t, _, _ in pieces[host]:
            cells[min(int((t - t0) // WINDOW_S), count - 1)] += 1
        out.append(f"| {host} | " + " | ".join(str(c) for c in cells) + " |")
    return out


def longest_fetches(pieces, asked, t0):
    """Per host, the piece that took longest from its first request to landing, and whom it
    was first asked of: crawling fetches from slow parents show here."""
    out = ["", "Longest fetch per host (first request to landing):", ""]
    out.append("| host | piece | took (s) | first asked of | at (s) | landed from |")
    out.append("|---|---|---|---|---|---|")
    for host in sorted(pieces, key=host_order):
        first = asked.get(host, {})
        spans = [(t - first[key][0], key, first[key], src, t) for t, key, src in pieces[host] if key in first]
        if not spans:
            continue
        took, key, (at, parent), src, _ = max(spans)
        out.append(f"| {host} | {key[1]} | {took:.1f} | {parent} | {at - t0:.1f} | {src} |")
    return out


def analyse(results, logs="damselfly-logs", name="damselfly"):
    """Writes NAME-pieces.md from the daemon logs in RESULTS/LOGS; returns the summary line."""
    pieces, asked, t0 = read_logs(results, logs)
    if not pieces or t0 is None:
        return None
    out = [f"# {name}: where the pieces came from", ""]
    out.append("Times are seconds since the first download request reached a daemon.")
    out.append("")
    out.append("| host | pieces | from seed | from peers | parents used | first piece (s) | last piece (s) |")
    out.append("|---|---|---|---|---|---|---|")
    seed_copies = {}
    seed_first_landing = {}
    for host in sorted(pieces, key=host_order):
        rows = sorted(pieces[host])
        seed = [r for r in rows if r[2] == "seed"]
        peers = [r for r in rows if r[2] != "seed"]
        for t, n, _ in seed:
            seed_copies[n] = seed_copies.get(n, 0) + 1
            seed_first_landing[n] = min(seed_first_landing.get(n, t), t)
        used = sorted({r[2] for r in rows})
        out.append(f"| {host} | {len(rows)} | {len(seed)} | {len(peers)} | {' '.join(used)} "
                   f"| {rows[0][0] - t0:.1f} | {rows[-1][0] - t0:.1f} |")
    total = sum(seed_copies.values())
    distinct = len(seed_copies)
    dup = total - distinct
    last_distinct = max(seed_first_landing.values()) - t0 if seed_first_landing else float("nan")
    out.append("")
    out.append(f"The seed sent {total} piece copies for {distinct} distinct pieces ({dup} duplicates); "
               f"the first copy of its last distinct piece landed at {last_distinct:.1f} s.")
    # The seed's output over time: copies landed per 10 s window, duplicates in brackets.
    out.append("")
    out.append("| window (s) | seed copies landed | of them first copies |")
    out.append("|---|---|---|")
    landed = sorted((t, n) for host in pieces for t, n, s in pieces[host] if s == "seed")
    seen = set()
    if landed:
        end = landed[-1][0] - t0
        w = 0.0
        while w <= end:
            inwin = [(t, n) for t, n in landed if w <= t - t0 < w + 10]
            first = 0
            for _, n in inwin:
                if n not in seen:
                    seen.add(n)
                    first += 1
            out.append(f"| {w:.0f}-{w + 10:.0f} | {len(inwin)} | {first} |")
            w += 10
    out += windows_table(pieces, t0)
    out += longest_fetches(pieces, asked, t0)
    with open(os.path.join(results, f"{name}-pieces.md"), "w") as fh:
        fh.write("\n".join(out) + "\n")
    hosts = len(pieces)
    from_seed = sum(1 for h in pieces for r in pieces[h] if r[2] == "seed")
    all_ = sum(len(v) for v in pieces.values())
    tasks = len({key[0] for h in pieces for _, key, _ in pieces[h]})
    return (f"{name[:1].upper()}{name[1:]} pieces ({tasks} task{'s' if tasks > 1 else ''}, daemon logs): the seed sent {total} copies of {distinct} distinct pieces "
            f"({dup} duplicates, {total / max(distinct, 1):.2f} copies per piece), its last distinct piece "
            f"landed at {last_distinct:.1f} s; {from_seed}/{all_} pieces on {hosts} hosts came from the seed "
            f"(see {name}-pieces.md).")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    logs = sys.argv[2] if len(sys.argv) == 3 else "damselfly-logs"
    name = "damselfly" if logs == "damselfly-logs" else logs.removesuffix("-logs")
    print(analyse(sys.argv[1], logs, name) or f"no debug piece lines in {logs}")
