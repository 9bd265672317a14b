#!/usr/bin/env python3
"""Draws p99 latency against clients, one line per implementation and feed rate, as SVG.

    python3 bench/plot.py bench/results-small.jsonl bench/latency.svg

Standard library only. Reads the JSON lines fxbench appends with --json; runs that failed or
had no latency samples (an idle feed) are left out. Both axes are logarithmic: client counts
span 100 to 15,000 and latencies span a fraction of a millisecond to seconds.
"""

import json
import math
import sys
from xml.sax.saxutils import escape

W, H = 800, 460
LEFT, RIGHT, TOP, BOTTOM = 80, 250, 50, 60
COLORS = {
    "fxproxy": "#1f77b4",
    "python-tutorial": "#d62728",
    "node-ws": "#2ca02c",
}
EXTRA = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
DASHES = ["", "6,4", "2,3", "10,3,2,3"]


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if r.get("error") or r.get("p99_ms") is None or not r.get("clients"):
                continue
            rows.append(r)
    return rows


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


def render(rows):
    series = {}
    for r in rows:
        series.setdefault((r["impl"], r["rate"]), []).append((r["clients"], r["p99_ms"]))
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

    xs = [c for pts in series.values() for c, _ in pts]
    ys = [max(p, 1e-3) for pts in series.values() for _, p in pts]
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

    for v in decades(xlo, xhi):
        x = px(v)
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + ph}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{x:.1f}" y="{TOP + ph + 18}" text-anchor="middle">{fmt(v)}</text>')
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

    impls = sorted({i for i, _ in series}, key=lambda i: (i != "fxproxy", i))
    rates = sorted({r for _, r in series})
    extra = iter(EXTRA)
    color = {i: COLORS.get(i) or next(extra, "#000") for i in impls}
    dash = {r: DASHES[k % len(DASHES)] for k, r in enumerate(rates)}
    ly = TOP + 6
    for key in sorted(series, key=lambda k: (impls.index(k[0]), k[1])):
        impl, rate = key
        pts = sorted(series[key])
        c, d = color[impl], dash[rate]
        da = f' stroke-dasharray="{d}"' if d else ""
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"{da}/>')
        for x, y in pts:
            out.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{c}">'
                f"<title>{escape(impl)}, {x} clients, {rate:g}/s: p99 {y:.3f} ms</title></circle>"
            )
        lx = LEFT + pw + 16
        out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 28}" y2="{ly}" stroke="{c}" stroke-width="2"{da}/>')
        out.append(f'<text x="{lx + 34}" y="{ly + 4}">{escape(impl)} @ {rate:g} quotes/s</text>')
        ly += 20
    out.append("</svg>")
    return "\n".join(out)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: plot.py RESULTS.jsonl OUT.svg")
    svg = render(load(sys.argv[1]))
    with open(sys.argv[2], "w") as f:
        f.write(svg + "\n")


if __name__ == "__main__":
    main()
