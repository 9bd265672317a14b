#!/usr/bin/env bash
# The small-host profile in docs/install.md ("Small hosts: memory and CPU"): memory and CPU of one
# fxproxy binary at 10, 100 and 1,000 clients x 10 quotes/s, with the default settings and with
# the small-host settings, then at 1,000 clients with each small-host setting alone (what each
# costs). Every run is made twice and both figures are printed: the machine may be shared.
#
# usage: contrib/small-host-profile.sh [--quick] [BINARY]
#   BINARY   default: the static x86_64 build (built with contrib/build-static.sh if missing)
#   --quick  one run of each, and no per-setting runs (a check that it works, about 1 min)
#
# Uses the benchmark in bench/ (built if missing): fxbench starts the proxy with a generated
# config on 127.0.0.1:0, its own feed as the upstream, and N clients; it reports the proxy's RSS
# (at the end and the peak), its CPU over the 10 s window and its threads. This script also
# samples the proxy's VmPeak (address space reserved: thread stacks count here in full). The
# JSON lines go to target/small-host-profile.jsonl. Takes about 6 minutes (22 runs).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
bin=""
for arg in "$@"; do
  case $arg in
    --quick) quick=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) bin=$arg ;;
  esac
done
if [ -z "$bin" ]; then
  bin=target/x86_64-unknown-linux-musl/static/fxproxy
  [ -x "$bin" ] || bin=$(contrib/build-static.sh x86_64-unknown-linux-musl)
fi
[ -x "$bin" ] || { echo "small-host-profile: $bin is not an executable" >&2; exit 1; }
fxbench=bench/target/release/fxbench
[ -x "$fxbench" ] || (cd bench && nice -n 10 cargo build --release --locked >&2)

out=target/small-host-profile.jsonl
mkdir -p target
: >"$out"
rounds=2
[ $quick = 0 ] || rounds=1

# The small-host settings (docs/install.md): each bounds memory that the defaults leave to
# larger hosts.
SMALL=(
  max_clients=2000             # 10000: the ceiling on threads and memory
  client_queue_len=256         # 1024: frames a lagging client may hold before it is dropped
  client_read_buffer_bytes=512 # 1024: each client's read buffer
)
# Tried alone too, and left out of SMALL for what they measured (docs/install.md): a smaller write
# buffer saves nothing measurable; a small pending cap evicts real clients in a connect burst.
TRIED=(
  client_write_buffer_bytes=2048
  max_pending_connections=64
)

# run LABEL CLIENTS [KEY=VALUE...]: one fxbench run; VmPeak is sampled beside it.
run() {
  local label=$1 clients=$2
  shift 2
  local sets=() kv
  for kv in "$@"; do sets+=(--proxy-set "$kv"); done
  local log
  log=$(mktemp)
  "$fxbench" --proxy-bin "$bin" --clients "$clients" --rate 10 \
    --symbols EURUSD,GBPUSD,USDJPY,AUDUSD --label "$label" --json "$out" \
    ${sets[@]+"${sets[@]}"} >"$log" 2>&1 &
  local bench_pid=$! proxy_pid="" vmpeak=""
  # Sampling, not synchronisation: VmPeak only grows, so the last reading is the run's peak.
  while kill -0 "$bench_pid" 2>/dev/null; do
    [ -n "$proxy_pid" ] || proxy_pid=$(pgrep -P "$bench_pid" -x fxproxy || true)
    if [ -n "$proxy_pid" ]; then
      vmpeak=$(sed -n 's/^VmPeak:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$proxy_pid/status" 2>/dev/null || true)
      [ -z "$vmpeak" ] || echo "$vmpeak" >"$log.vmpeak"
    fi
    sleep 0.5
  done
  if ! wait "$bench_pid"; then
    cat "$log" >&2
    echo "small-host-profile: fxbench failed ($label, $clients clients)" >&2
    exit 1
  fi
  # Attach VmPeak to the JSON line fxbench just appended.
  python3 - "$out" "$(cat "$log.vmpeak" 2>/dev/null || echo)" <<'EOF'
import json, sys
path, vmpeak = sys.argv[1], sys.argv[2]
lines = open(path).read().splitlines()
last = json.loads(lines[-1])
last["vmpeak_mb"] = int(vmpeak) / 1024 if vmpeak else None
lines[-1] = json.dumps(last)
open(path, "w").write("\n".join(lines) + "\n")
EOF
  rm -f "$log" "$log.vmpeak"
  printf '.' >&2
}

echo "small-host-profile: $bin; $out" >&2
for round in $(seq "$rounds"); do
  for clients in 10 100 1000; do
    run defaults "$clients"
    run small-host "$clients" "${SMALL[@]}"
  done
done
if [ $quick = 0 ]; then
  for round in $(seq "$rounds"); do
    for kv in "${SMALL[@]}" "${TRIED[@]}"; do
      run "only ${kv}" 1000 "$kv"
    done
  done
fi
echo >&2

python3 - "$out" <<'EOF'
import json, sys
from collections import defaultdict

runs = defaultdict(list)
order = []
for line in open(sys.argv[1]):
    j = json.loads(line)
    key = (j["impl"], j["clients"])
    if key not in runs:
        order.append(key)
    runs[key].append(j)

def both(rs, field, fmt):
    vals = [r.get(field) for r in rs]
    return " / ".join("-" if v is None else format(v, fmt) for v in vals)

print(f"{'settings':<40} {'clients':>7}  {'RSS MB':>13}  {'peak RSS MB':>13}  "
      f"{'CPU % core':>11}  {'VmPeak MB':>13}  {'threads':>11}  {'dropped':>9}")
for key in order:
    rs = runs[key]
    # Clients refused or disconnected during the run, and quotes lost, per run.
    dropped = " / ".join(
        str((r.get("failed") or 0) + (r.get("disconnected") or 0) + (r.get("lost") or 0))
        for r in rs)
    print(f"{key[0]:<40} {key[1]:>7}  {both(rs, 'rss_mb', '.1f'):>13}  "
          f"{both(rs, 'rss_peak_mb', '.1f'):>13}  {both(rs, 'proxy_cpu_pct_window', '.2f'):>11}  "
          f"{both(rs, 'vmpeak_mb', '.0f'):>13}  {both(rs, 'threads', 'd'):>11}  {dropped:>9}")
EOF
