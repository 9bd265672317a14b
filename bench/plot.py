#!/usr/bin/env python3
"""Draws p99 latency against clients as SVG, one line per implementation and feed rate (or,
with --by ladder, per implementation across a ladder of loads such as 1000×200, 5000×10,
15000×1), paced runs solid with round markers, storms (every client at once) dashed with
square ones.

    python3 bench/plot.py bench/results-small.jsonl bench/latency.svg
    python3 bench/plot.py --by ladder bench/results-peers.jsonl bench/latency-peers.svg

Standard library only. Reads the JSON lines fxbench appends with --json. A run that failed, or
that served clients but delivered no quote to measure, is drawn as a cross on the top edge (its
tooltip says why), not left out; a run in which some clients were not served has a hollow
marker. Runs on an idle feed (rate 0) have no latency and are left out. Both axes are
logarithmic: client counts span 100 to 15,000 and latencies a fraction of a millisecond to
seconds.
"""

import argparse
import json
import math
from xml.sax.saxutils import escape

W, H = 800, 460
LEFT, RIGHT, TOP, BOTTOM = 80, 250, 50, 60
COLORS = {
    "fxproxy": "#1f77b4",
    "python-tutorial": "#d62728",
    "node-ws": "#2ca02c",
    "uws": "#ff7f0e",
    "tokio-tungstenite": "#9467bd",
}
EXTRA = ["#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
DASHES = ["", "6,4", "2,3", "10,3,2,3"]


def storm(r):
    """Every client at once; runs recorded before storm mode existed were paced."""
    return r.get("connect_concurrency", 200) == 0


def load(path):
    """(runs with a p99, failed runs), each a list of JSON rows."""
    ok, failed = [], []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if not r.get("clients"):
                continue
            if r.get("error") or (r.get("p99_ms") is None and r.get("rate", 0) > 0):
                failed.append(r)
            elif r.get("p99_ms") is not None:
                ok.append(r)
    return ok, failed


def why_failed(r):
    if r.get("error"):
        return "failed: " + r["error"].splitlines()[0][:100]
    return f"{r.get('up', 0)} of {r['clients']} clients served, no quote measured"


def decades(lo, hi):
    """Tick values 1, 2, 5 × 10^k covering [lo, hi]."""
    ticks = []
    k = math.floor(math.log10(lo))
    while 10**k <= hi * 10:
        for m in (1, 2, 5):
            v = m * 10**k
            if lo <= v <= hi:
                ticks.append(v)
        k += 1
    return ticks


def fmt(v):
    if v >= 1000:
        return f"{v / 1000:g}k" if v < 1e6 else f"{v:g}"
    return f"{v:g}"


def render(rows, failed, by="rate"):
    """`by` = "rate": a line per (implementation, rate, paced/storm); "ladder": a line per
    (implementation, paced/storm) through whatever loads it ran."""

    def key(r):
        return (r["impl"], None if by == "ladder" else r["rate"], storm(r))

    series = {}
    for r in rows:
        series.setdefault(key(r), []).append(r)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{LEFT}" y="24" font-size="15" font-weight="bold">'
        "p99 latency (scheduled send → client receive) against clients</text>",
    ]
    if not series:
        out.append(f'<text x="{LEFT}" y="{H / 2}">no latency figures in this sweep</text></svg>')
        return "\n".join(out)

    xs = [r["clients"] for pts in series.values() for r in pts] + [r["clients"] for r in failed]
    ys = [max(r["p99_ms"], 1e-3) for pts in series.values() for r in pts]
    if by == "ladder":
        # Ticks are the loads, not decades: a margin around them is enough.
        xlo, xhi = min(xs) / 1.4, max(xs) * 1.4
    else:
        xlo, xhi = 10 ** math.floor(math.log10(min(xs))), 10 ** math.ceil(math.log10(max(xs)))
    if xlo == xhi:
        xhi *= 10
    ylo, yhi = 10 ** math.floor(math.log10(min(ys))), 10 ** math.ceil(math.log10(max(ys)))
    if ylo == yhi:
        yhi *= 10
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x):
        return LEFT + pw * (math.log10(x) - math.log10(xlo)) / (math.log10(xhi) - math.log10(xlo))

    def py(y):
        y = max(y, 1e-3)
        return TOP + ph * (1 - (math.log10(y) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo)))

    if by == "ladder":
        # Ticks at the loads themselves: "5k × 10/s".
        loads = {}
        for r in [r for pts in series.values() for r in pts] + failed:
            loads.setdefault(r["clients"], set()).add(r["rate"])
        xticks = [(c, f"{fmt(c)} × " + ",".join(f"{q:g}" for q in sorted(qs)) + "/s")
                  for c, qs in sorted(loads.items())]
    else:
        xticks = [(v, fmt(v)) for v in decades(xlo, xhi)]
    for v, label in xticks:
        x = px(v)
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + ph}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{x:.1f}" y="{TOP + ph + 18}" text-anchor="middle">{escape(label)}</text>')
    for v in decades(ylo, yhi):
        y = py(v)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + pw}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{fmt(v)}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    out.append(
        f'<text x="{LEFT + pw / 2}" y="{H - 18}" text-anchor="middle">clients (log scale)</text>'
    )
    out.append(
        f'<text transform="translate(22 {TOP + ph / 2}) rotate(-90)" text-anchor="middle">'
        "p99 latency, ms (log scale)</text>"
    )

    impls = sorted({k[0] for k in series} | {r["impl"] for r in failed},
                   key=lambda i: (i != "fxproxy", i))
    rates = sorted({k[1] for k in series if k[1] is not None})
    extra = iter(EXTRA)
    color = {i: COLORS.get(i) or next(extra, "#000") for i in impls}
    if by == "ladder":
        dash = {False: "", True: "6,4"}
    else:
        rate_dash = {r: DASHES[k % len(DASHES)] for k, r in enumerate(rates)}

    def marker(x, y, c, is_storm, hollow, title):
        fill = "white" if hollow else c
        t = f"<title>{escape(title)}</title>"
        if is_storm:
            return (f'<rect x="{x - 3.5:.1f}" y="{y - 3.5:.1f}" width="7" height="7" fill="{fill}" '
                    f'stroke="{c}" stroke-width="1.5">{t}</rect>')
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{fill}" stroke="{c}" stroke-width="1.5">{t}</circle>'

    def describe(r):
        mode = "storm" if storm(r) else f"paced {r.get('connect_concurrency', 200)}"
        return f"{r['impl']}, {r['clients']} clients ({mode}), {r['rate']:g}/s"

    ly = TOP + 6
    lx = LEFT + pw + 16
    for k in sorted(series, key=lambda k: (impls.index(k[0]), k[1] or 0, k[2])):
        impl, rate, is_storm = k
        pts = sorted(series[k], key=lambda r: r["clients"])
        c = color[impl]
        d = dash[is_storm] if by == "ladder" else rate_dash[rate]
        if by != "ladder" and is_storm:
            d = d or "6,4"
        da = f' stroke-dasharray="{d}"' if d else ""
        path = " ".join(f"{px(r['clients']):.1f},{py(r['p99_ms']):.1f}" for r in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"{da}/>')
        for r in pts:
            served = f"{r.get('up', r['clients'])} of {r['clients']} served"
            out.append(marker(px(r["clients"]), py(r["p99_ms"]), c, is_storm,
                              r.get("up", r["clients"]) < r["clients"],
                              f"{describe(r)}: p99 {r['p99_ms']:.3f} ms, {served}"))
        out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 28}" y2="{ly}" stroke="{c}" stroke-width="2"{da}/>')
        out.append(marker(lx + 14, ly, c, is_storm, False, ""))
        how = "storm" if is_storm else "paced"
        label = f"{impl}, {how}" if by == "ladder" else f"{impl} @ {rate:g} quotes/s" + (", storm" if is_storm else "")
        out.append(f'<text x="{lx + 34}" y="{ly + 4}">{escape(label)}</text>')
        ly += 20
    for r in failed:
        x, y, c = px(r["clients"]), TOP + 10, color[r["impl"]]
        out.append(
            f'<text x="{x:.1f}" y="{y + 5:.1f}" text-anchor="middle" font-size="15" font-weight="bold" '
            f'fill="{c}">×<title>{escape(describe(r) + ": " + why_failed(r))}</title></text>'
        )
    notes = ["hollow: not every client served"]
    if failed:
        notes.append("× on the top edge: run failed")
    for n in notes:
        out.append(f'<text x="{lx}" y="{ly + 8}" font-size="11" fill="#555">{escape(n)}</text>')
        ly += 16
    out.append("</svg>")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description="p99 latency against clients, as SVG")
    p.add_argument("--by", choices=("rate", "ladder"), default="rate",
                   help="a line per implementation and rate (default), or per implementation "
                        "across the loads it ran")
    p.add_argument("results")
    p.add_argument("out")
    a = p.parse_args()
    ok, failed = load(a.results)
    svg = render(ok, failed, a.by)
    with open(a.out, "w") as f:
        f.write(svg + "\n")


if __name__ == "__main__":
    main()
