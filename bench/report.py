#!/usr/bin/env python3
"""Writes BENCHMARKS.md from fxbench's JSON lines (called by bench/run-sweep.sh).

    python3 bench/report.py --mode small --results bench/results-small.jsonl --out BENCHMARKS.md \
        --command 'bench/run-sweep.sh' --loadavg '0.12 0.30 0.40' --svg bench/latency.svg

Standard library only. Each sweep owns one section, "## Peers sweep", "## Full sweep" or
"## Small sweep": a run rewrites its own and keeps the others as they are, so a quick small
sweep never erases the figures of the last full one. The section "## Where the time goes" is written by hand (by the proxy
engineer, from profiles) and is always kept as it is.
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess

WHERE = "## Where the time goes"
SECTIONS = {"peers": "## Peers sweep", "full": "## Full sweep", "small": "## Small sweep"}
PLACEHOLDER = (
    f"{WHERE}\n\n"
    "<!-- Placeholder, filled in by the proxy engineer from profiles (perf, /proc). "
    "bench/run-sweep.sh keeps this section as it is when it regenerates the file. -->\n"
)


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def utc(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def proxy_build(root, rows):
    exe = os.path.join(root, "target", "release", "fxproxy")
    version = sh(exe, "--version") if os.path.exists(exe) else ""
    built = sorted({r["binary_built_unix"] for r in rows if r.get("binary_built_unix")})
    if not built:
        return version or "not run"
    when = ", ".join(utc(b) for b in built)
    note = " — the binary was rebuilt during the sweep" if len(built) > 1 else ""
    return f"{version or 'fxproxy'}, binary written {when} UTC{note}"


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def alternatives(root):
    """The versions the alternatives ran with, from the files that pin them."""
    alt = os.path.join(root, "bench", "alternatives")
    out = []
    m = re.search(r"^websockets==(\S+)", read(os.path.join(alt, "requirements.txt")), re.M)
    if m:
        out.append(f"Python websockets {m.group(1)}")
    try:
        deps = json.loads(read(os.path.join(alt, "package.json")) or "{}").get("dependencies", {})
    except ValueError:
        deps = {}
    if "ws" in deps:
        out.append(f"Node ws {deps['ws']}")
    if "uwebsockets" in deps:
        commit = read(os.path.join(alt, "node_modules", "uwebsockets", "source_commit")).strip()
        built = f", uWebSockets.js binaries of commit {commit[:12]}" if commit else ""
        out.append(f"npm uwebsockets {deps['uwebsockets']}{built}")
    lock = read(os.path.join(alt, "tokio-broadcast", "Cargo.lock"))
    m = re.search(r'name = "tokio-tungstenite"\nversion = "([^"]+)"', lock)
    if m:
        out.append(f"tokio-tungstenite {m.group(1)}")
    return ", ".join(out)


def machine(loadavg, root, rows):
    mem = ""
    for line in sh("free", "-h").splitlines():
        if line.startswith("Mem:"):
            mem = line.split()[1]
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return [
        ("cores (`nproc`)", sh("nproc") or str(os.cpu_count())),
        ("memory (`free -h` total)", mem),
        ("kernel (`uname -r`)", platform.release()),
        ("CPU model", cpu),
        ("load average when the sweep started", loadavg or "?"),
        ("fxproxy", proxy_build(root, rows)),
        ("rustc", sh("rustc", "--version")),
        ("python3 / node", f"{platform.python_version()} / {sh('node', '--version')}"),
        ("alternatives", alternatives(root) or "?"),
        ("net.core.somaxconn (caps every listen backlog)",
         read("/proc/sys/net/core/somaxconn").strip() or "?"),
    ]


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def num(v, fmt="{:.3f}"):
    return "—" if v is None else fmt.format(v)


def connect_mode(r):
    """`storm` (every client at once) or `paced N`; runs from before storm mode were paced 200."""
    return r.get("connect_mode") or "paced 200"


def row(r):
    head = [r["impl"], str(r["clients"]), f"{r['rate']:g}", connect_mode(r)]
    if r.get("error"):
        msg = r["error"].splitlines()[0][:120].replace("|", "\\|")
        return head + [f"failed: {msg}"] + ["—"] * (len(COLUMNS) - len(head) - 1)
    up = f"{r['up']}/{r['clients']}"
    notes = []
    if r.get("disconnected"):
        notes.append(f"{r['disconnected']} dropped")
    if r.get("failed"):
        notes.append(f"{r['failed']} failed")
    if r.get("stalled"):
        notes.append(f"{r['stalled']} stalled")
    if notes:
        up += " (" + ", ".join(notes) + ")"
    if r["rate"] == 0:
        cpu = num(r.get("proxy_cpu_pct_window"), "{:.2f} % CPU idle")
    else:
        cpu = num(r.get("cpu_us_per_delivery"), "{:.2f}")
    return head + [
        up,
        num(r.get("connect_s"), "{:.2f}"),
        num(r.get("delivered_per_s"), "{:,.0f}"),
        str(r.get("lost", 0)),
        num(r.get("p50_ms")),
        num(r.get("p99_ms")),
        num(r.get("p999_ms")),
        num(r.get("max_ms")),
        cpu,
        num(r.get("rss_mb"), "{:.1f}"),
        "—" if r.get("threads") is None else str(r["threads"]),
        num(r.get("loadgen_cpu_pct_window"), "{:.0f} %"),
        num(r.get("other_cpu_pct_window"), "{:.0f} %"),
    ]


COLUMNS = [
    "impl", "clients", "rate /s", "connect", "connected", "connect s", "delivered /s", "lost",
    "p50 ms", "p99 ms", "p99.9 ms", "max ms", "proxy CPU µs / delivery", "RSS MB", "threads",
    "loadgen CPU", "other CPU",
]


def existing_sections(path):
    """The file's "## " sections by heading line, each up to the next "## " heading."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return {}
    parts = re.split(r"^(?=## )", text, flags=re.M)
    return {p.splitlines()[0].strip(): p.rstrip() + "\n" for p in parts if p.startswith("## ")}


def sweep_section(a, rows):
    # When the last run ended (the figures' own time), or now.
    ts = max((r.get("unix_time") or 0 for r in rows), default=0)
    ended = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc) if ts else None
    when = (ended or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    md = [
        SECTIONS[a.mode],
        "",
        f"Runs ended {when}; regenerate with:",
        "",
        "```sh",
        a.command,
        "```",
        "",
    ]
    md += [f"- {k}: {v}" for k, v in machine(a.loadavg, os.path.dirname(os.path.abspath(a.out)), rows)]
    md += [
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if c in ("impl", "connect") else "---:" for c in COLUMNS) + "|",
    ]
    md += ["| " + " | ".join(row(r)) + " |" for r in rows]
    md += [
        "",
        f"![p99 latency against clients, one line per implementation and rate ({a.mode} sweep)]({a.svg})",
        "",
    ]
    return "\n".join(md)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--results", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--command", required=True)
    p.add_argument("--mode", choices=sorted(SECTIONS), default="small")
    p.add_argument("--loadavg", default="")
    p.add_argument("--svg", default="bench/latency.svg", help="path of the plot, relative to --out")
    a = p.parse_args()

    rows = load(a.results)
    old = existing_sections(a.out)
    sections = {mode: old.get(h) for mode, h in SECTIONS.items()}
    sections[a.mode] = sweep_section(a, rows)
    md = [
        "# Benchmarks",
        "",
        "Written by `bench/run-sweep.sh`: `--peers` rewrites the section *Peers sweep*, `--full` "
        "*Full sweep*, the default (small) sweep *Small sweep*; each keeps the others. Only "
        "*Where the time goes* is written by hand, and every run keeps it.",
        "",
        "The proxy and the load generator share the machine's cores. *loadgen CPU* is fxbench's "
        "own use (clients and feed) in the recording window, in % of one core; *other CPU* is "
        "what every other process on the machine used meanwhile (builds, tests): a run where it "
        "is high was disturbed and its latencies are not the proxy's alone. Before each run the "
        "sweep waits, up to 2 minutes, for other work to fall below 15 % of a core.",
        "",
    ]
    for mode in ("peers", "full", "small"):
        if sections[mode]:
            md += [sections[mode].rstrip(), ""]
    md += [
        "## What is measured",
        "",
        "`bench/` holds `fxbench`, a separate cargo package (a tokio load generator; the proxy "
        "itself stays synchronous). For each run it:",
        "",
        "- starts its own **feed source** on 127.0.0.1, speaking the upstream protocol: greets "
        "`Connected`, waits for the subscribe message, then sends quotes of about 100 bytes at "
        "`rate` quotes/s in total, each with a `seq` rising by one and `sent_ns`, the quote's "
        "*scheduled* send time (start + seq × interval). A feed held back by a slow proxy "
        "therefore shows the stall as latency instead of hiding it (no coordinated omission);",
        "- starts the implementation with that feed as its upstream (fxproxy with a generated "
        "`proxy.conf`; the alternatives with `--upstream`), and connects `clients` WebSocket "
        "clients, each sending `{\"userKey\": ...}`: **paced** (column *connect*: `paced 200`, "
        "200 attempts in flight at a time) or as a **storm** (`storm`: every attempt starts at "
        "once, as a fleet of clients comes back after a restart or a network blip; "
        "`--connect-concurrency 0`). A client that is not in within 30 s counts as failed;",
        "- **connected** = clients open at the end that received quotes (on an idle feed: "
        "open at the end); *dropped* = closed by the proxy during the run; *failed* = never got "
        "in (refused, reset, or not in within 30 s); *stalled* = open but "
        "without a quote for the last second. **connect s** = from the first attempt until "
        "the last client had completed its handshake and sent its key;",
        "- after a 2 s warm-up, records for 10 s: **latency** = client receive time − `sent_ns` "
        "(HDR histogram over every quote every client received in the window), **lost** = "
        "sequence gaps inside the window, **delivered /s** = quotes received by all clients "
        "in the window ÷ its length;",
        "- **proxy CPU µs / delivery** = the proxy process's utime + stime over the whole run "
        "(connect phase included) ÷ every quote every client received in that time; on an idle "
        "feed (rate 0) the column gives the proxy's CPU % in the window instead. **RSS** and "
        "**threads** are read from /proc/PID/status at the end of the window.",
        "",
        "The alternatives, measured the same way: `python-tutorial` is "
        "`bench/alternatives/tutorial_proxy.py` (Python `websockets`, the tutorial shape: "
        "a client set and `asyncio.gather` of one send per client per quote); `node-ws` is "
        "`bench/alternatives/ws_fanout.mjs` (Node `ws`, for-each-client `send`); `uws` is "
        "`bench/alternatives/uws_fanout.mjs` (uWebSockets.js from the npm package `uwebsockets`, "
        "pub/sub: one `app.publish` per quote, written to every subscriber by uWS's C++ core); "
        "`tokio-tungstenite` is `bench/alternatives/tokio-broadcast/` (Rust, a multi-threaded "
        "tokio runtime, a `broadcast` channel of shared `Utf8Bytes` frames, a task per client). "
        "None of them greets; each closes a bad key with 1008.",
        "",
        (old.get(WHERE) or PLACEHOLDER).rstrip(),
        "",
        "## Reproducing one run",
        "",
        "```sh",
        "cargo build --release && (cd bench && cargo build --release)",
        "cd bench",
        "./target/release/fxbench --clients 1000 --rate 200            # fxproxy, generated config",
        "./target/release/fxbench --clients 5000 --rate 10 --connect-concurrency 0   # a storm",
        "./target/release/fxbench --clients 1000 --rate 200 --label node-ws \\",
        "    --peer 'node alternatives/ws_fanout.mjs --upstream {feed} --port {port} --key {key}'",
        "./target/release/fxbench --url ws://127.0.0.1:8765/ --key KEY --pid PID --feed-port 9000",
        "    # a running proxy whose upstream_url is ws://127.0.0.1:9000",
        "./target/release/fxbench --help",
        "```",
        "",
    ]
    with open(a.out, "w") as f:
        f.write("\n".join(md))


if __name__ == "__main__":
    main()
