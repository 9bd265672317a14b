#!/usr/bin/env bash
# Redis's own load on the backbone (docs/scaling-out.md, "Scaling out"): redis-server's CPU
# and memory while one ingest publishes R frames/s (fxproxy's built-in simulator as its source) and E edges
# read them, for R in 200 and 2000 and E in 1 and 3; then the memory of a full stream
# (backbone_max_len entries of a typical frame). Everything on 127.0.0.1; about 2 minutes.
#   bench/backbone-load.sh            # uses target/release/fxproxy
#   SECS=30 bench/backbone-load.sh    # a longer window per run
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/fxproxy}
SECS=${SECS:-20}
WARMUP=${WARMUP:-5}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
# shellcheck source=bench/scratch-redis.sh
source "$(dirname "$0")/scratch-redis.sh"
cli() { redis-cli -p "$port" "$@"; }
echo "loadkey-0001" > "$dir/users.keys"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
info() { cli info "$1" | tr -d '\r' | sed -n "s/^$2://p"; }

start_instance() { # role rate n
  cat > "$dir/$3.conf" <<CONF
listen = 127.0.0.1:0
upstream_url = sim
sim_rate = $2
symbols = EURUSD,GBPUSD,USDJPY
user_keys_file = users.keys
backbone = redis://127.0.0.1:$port
backbone_role = $1
backbone_name = load
market_hours = always
status_interval_secs = 0
log_level = warn
CONF
  "$BIN" --config "$dir/$3.conf" 2>"$dir/$3.log" &
  pids+=($!)
}

hz=$(getconf CLK_TCK)
printf '| frames/s published | edges reading | redis-server CPU (%% of one core) | commands/s | used_memory MB | RSS MB | stream entries |\n'
printf '|---:|---:|---:|---:|---:|---:|---:|\n'
for rate in 200 2000; do
  for edges in 1 3; do
    cli flushall >/dev/null
    pids=()
    start_instance ingest "$rate" ingest
    for e in $(seq 1 "$edges"); do start_instance edge "$rate" "edge$e"; done
    sleep "$WARMUP"
    c0=$(cpu_ticks "$redis_pid"); n0=$(info stats total_commands_processed); t0=$(date +%s.%N)
    sleep "$SECS"
    c1=$(cpu_ticks "$redis_pid"); n1=$(info stats total_commands_processed); t1=$(date +%s.%N)
    mem=$(info memory used_memory)
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$redis_pid/status")
    len=$(cli xlen load:stream)
    python3 - "$rate" "$edges" "$c0" "$c1" "$n0" "$n1" "$t0" "$t1" "$mem" "$rss" "$len" "$hz" <<'PY'
import sys
rate, edges, c0, c1, n0, n1, t0, t1, mem, rss, length, hz = sys.argv[1:]
secs = float(t1) - float(t0)
cpu = (int(c1) - int(c0)) / int(hz) / secs * 100
cmds = (int(n1) - int(n0)) / secs
print(f"| {int(rate):,} | {edges} | {cpu:.1f} | {cmds:,.0f} | {int(mem)/1e6:.1f} | {int(rss)/1e3:.1f} | {int(length):,} |")
PY
    for p in "${pids[@]}"; do kill "$p"; done
    wait "${pids[@]}" 2>/dev/null || true
  done
done

# A full stream: backbone_max_len (100,000 by default) entries of a frame as the simulator
# sends them, with the entry's TOKEN SEQ.
frame=$(cli --raw hget load:last EURUSD)
cli flushall >/dev/null
cli eval "for i = 1, tonumber(ARGV[2]) do redis.call('XADD', KEYS[1], '*', 'f', ARGV[1], 'p', '1796050092504 ' .. i) end return 1" \
  1 full:stream "$frame" 100000 >/dev/null
usage=$(cli memory usage full:stream samples 0)
echo
echo "A stream of 100,000 entries of a ${#frame}-byte frame: $(python3 -c "print(f'{$usage/1e6:.1f}')") MB (MEMORY USAGE)"
