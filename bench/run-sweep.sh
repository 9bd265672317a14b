#!/usr/bin/env bash
# Regenerates BENCHMARKS.md with one command. Each sweep rewrites only its own section there,
# its plot and its raw figures, and keeps the others': the small sweep writes bench/latency.svg
# and bench/results-small.jsonl, --full latency-full.svg and results-full.jsonl, --peers
# latency-peers.svg and results-peers.jsonl.
#
#   bench/run-sweep.sh            small sweep: {100, 1000} clients × {10, 200} quotes/s for
#                                 fxproxy and the Python and Node ws alternatives (about 5 minutes)
#   bench/run-sweep.sh --full     fxproxy also at 5000×10, 10000 idle and 15000×2, plus the
#                                 alternatives' grid (about 10 minutes)
#   bench/run-sweep.sh --peers    all five implementations (fxproxy, python-tutorial, node-ws,
#                                 uws, tokio-tungstenite) at 1000×200, 5000×10 and 15000×1, each
#                                 paced (200 connection attempts in flight) and as a storm (every
#                                 client at once): 30 runs, about 20-30 minutes
#
# Options: --no-build (use the binaries already built), --no-alternatives (fxproxy only).
# Every run targets 127.0.0.1 only, and each is bounded (connect phase ≤ 120 s, then 2 s + 10 s).
# A run that fails (an implementation that cannot hold its clients, or dies) is recorded as
# failed in the table, not dropped.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
mode=small
build=1
alternatives=1
for arg in "$@"; do
  case "$arg" in
    --full) mode=full ;;
    --peers) mode=peers ;;
    --no-build) build=0 ;;
    --no-alternatives) alternatives=0 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "run-sweep.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done
command="bench/run-sweep.sh${*:+ $*}"
loadavg=$(cut -d' ' -f1-3 /proc/loadavg)

tokio_broadcast="$here/alternatives/tokio-broadcast/target/release/tokio-broadcast"
if [ "$build" = 1 ]; then
  (cd "$root" && cargo build --release)
  (cd "$here" && cargo build --release --locked)
  if [ "$alternatives" = 1 ] && [ "$mode" = peers ]; then
    (cd "$here/alternatives/tokio-broadcast" && cargo build --release --locked)
  fi
fi
fxbench="$here/target/release/fxbench"
fxproxy="$root/target/release/fxproxy"

if [ "$alternatives" = 1 ]; then
  if [ ! -x "$here/.venv/bin/python" ]; then
    python3 -m venv "$here/.venv"
  fi
  "$here/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/alternatives/requirements.txt"
  # ws for node-ws, and uwebsockets (uWebSockets.js's binaries, about 100 MB) for uws.
  (cd "$here/alternatives" && npm ci --silent --no-audit --no-fund)
fi

# Each sweep has its own figures, plot and section of BENCHMARKS.md; the other's are kept.
results="$here/results-$mode.jsonl"
svg=latency.svg
[ "$mode" = full ] && svg=latency-full.svg
[ "$mode" = peers ] && svg=latency-peers.svg
log="$here/sweep-$mode.log"
: > "$results"
: > "$log"
cd "$here"

# The machine's cores are shared with other work (builds, tests). Before each run, wait up to
# 2 minutes for the rest of the machine to fall below 15 % of one core, so that the figures are
# the proxy's; the table's "other CPU" column shows what ran beside it anyway.
busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
wait_quiet() {
  local waited=0 b1 b2 pct
  while :; do
    b1=$(busy_ticks); sleep 2; b2=$(busy_ticks)
    pct=$(( (b2 - b1) * 100 / 200 ))   # ticks are 1/100 s; over 2 s, in % of one core
    [ "$pct" -lt 15 ] && return 0
    if [ "$waited" -ge 120 ]; then
      echo "(other processes still use $pct % of a core; running anyway)" | tee -a "$log"
      return 0
    fi
    sleep 5
    waited=$((waited + 7))
  done
}

# How clients connect: 200 attempts in flight (fxbench's default), or 0 = a storm (all at once).
concurrency=200

# run LABEL CLIENTS RATE [target args...]
run() {
  local label=$1 clients=$2 rate=$3 how="paced, $concurrency in flight"
  shift 3
  [ "$concurrency" = 0 ] && how="storm, all at once"
  wait_quiet
  echo "== $label: $clients clients ($how), $rate quotes/s" | tee -a "$log"
  # A failed run is recorded in the results by fxbench itself; the sweep goes on.
  "$fxbench" --label "$label" --clients "$clients" --rate "$rate" --warmup 2 --duration 10 \
    --connect-concurrency "$concurrency" --json "$results" "$@" 2>&1 | tee -a "$log" || true
}
fx() { run fxproxy "$1" "$2" --proxy-bin "$fxproxy"; }
py() {
  run python-tutorial "$1" "$2" \
    --peer "$here/.venv/bin/python $here/alternatives/tutorial_proxy.py --upstream {feed} --port {port} --key {key}"
}
node_ws() {
  run node-ws "$1" "$2" --peer "node $here/alternatives/ws_fanout.mjs --upstream {feed} --port {port} --key {key}"
}
uws() {
  run uws "$1" "$2" --peer "node $here/alternatives/uws_fanout.mjs --upstream {feed} --port {port} --key {key}"
}
tokio_tungstenite() {
  run tokio-tungstenite "$1" "$2" --peer "$tokio_broadcast --upstream {feed} --port {port} --key {key}"
}

if [ "$mode" = peers ]; then
  impls=(fx)
  [ "$alternatives" = 1 ] && impls+=(py node_ws uws tokio_tungstenite)
  # Load by load, and within a load the implementations one after another, so that the runs
  # compared in one row of the plot ran minutes apart, not half an hour.
  for load in "1000 200" "5000 10" "15000 1"; do
    for concurrency in 200 0; do
      for impl in "${impls[@]}"; do
        # shellcheck disable=SC2086
        "$impl" $load
      done
    done
  done
elif [ "$mode" = small ]; then
  fx 100 10
  fx 100 200
  fx 1000 10
  fx 1000 200
else
  fx 100 10
  fx 100 200
  fx 1000 10
  fx 1000 200
  fx 5000 10
  fx 10000 0
  # 15,000 clients at 10 quotes/s is 150,000 wake-ups a second, more than 2 cores do with
  # one thread per client (see "Where the time goes"); 2 quotes/s shows them all served.
  fx 15000 2
fi
if [ "$alternatives" = 1 ] && [ "$mode" != peers ]; then
  # The same 2 × 2 grid as fxproxy's small sweep, so that each plots as lines, not dots.
  for impl in py node_ws; do
    "$impl" 100 10
    "$impl" 100 200
    "$impl" 1000 10
    "$impl" 1000 200
  done
fi

plot_by=rate
[ "$mode" = peers ] && plot_by=ladder
python3 "$here/plot.py" --by "$plot_by" "$results" "$here/$svg"
python3 "$here/report.py" --results "$results" --out "$root/BENCHMARKS.md" \
  --command "$command" --mode "$mode" --loadavg "$loadavg" --svg "bench/$svg"
echo "wrote $root/BENCHMARKS.md and $here/$svg (raw figures: $results, log: $log)"
