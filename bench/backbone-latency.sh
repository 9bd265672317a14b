#!/usr/bin/env bash
# The latency the Redis backbone adds (BENCHMARKS.md, "Through the Redis backbone"): fxbench
# against a direct instance, a single `both` instance on Redis (its own frames come back to it
# through the stream), and an edge fed by a separate ingest, at the same loads. Everything on
# 127.0.0.1. Needs target/release/fxproxy, bench/target/release/fxbench and redis-server.
#   bench/backbone-latency.sh                 # 100 and 1,000 clients at 200 quotes/s
#   CLIENTS="100" RATE=2000 bench/backbone-latency.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/fxproxy}
BENCH=${BENCH:-bench/target/release/fxbench}
CLIENTS=${CLIENTS:-"100 1000"}
RATE=${RATE:-200}
DURATION=${DURATION:-10}
JSON=${JSON:-bench/results-backbone.jsonl}
for f in "$BIN" "$BENCH"; do [ -x "$f" ] || { echo "build first: $f" >&2; exit 1; }; done

# shellcheck source=bench/scratch-redis.sh
source "$(dirname "$0")/scratch-redis.sh"
echo "benchkey-0001" > "$dir/users.keys"

run=0
for clients in $CLIENTS; do
  run=$((run + 1))
  common=(--clients "$clients" --rate "$RATE" --duration "$DURATION" --json "$JSON" --proxy-bin "$BIN")
  "$BENCH" "${common[@]}" --label direct
  "$BENCH" "${common[@]}" --label backbone-both \
    --proxy-set "backbone=redis://127.0.0.1:$port" --proxy-set "backbone_name=both$run"

  # An ingest on the feed fxbench is about to start, and an edge the clients connect to.
  feed=$(free_port)
  for role in ingest edge; do
    cat > "$dir/$role.conf" <<CONF
listen = 127.0.0.1:0
upstream_url = ws://127.0.0.1:$feed/
symbols = EURUSD
user_keys_file = users.keys
max_clients = 20000
backbone = redis://127.0.0.1:$port
backbone_role = $role
backbone_name = split$run
upstream_backoff_min_ms = 100
upstream_backoff_max_secs = 1
status_interval_secs = 0
log_level = warn
CONF
    "$BIN" --config "$dir/$role.conf" 2>"$dir/$role.log" &
    pids+=($!)
  done
  edge_pid=${pids[-1]}
  # log_level = warn hides "listening on": the edge's one listening socket tells its port.
  edge_port=
  for _ in $(seq 1 100); do
    edge_port=$(ss -ltnpH | awk -v p="pid=$edge_pid," '$0 ~ p {n = split($4, a, ":"); print a[n]}' | head -1)
    [ -n "$edge_port" ] && break
    sleep 0.1
  done
  [ -n "$edge_port" ] || { echo "the edge did not listen; its log:" >&2; cat "$dir/edge.log" >&2; exit 1; }
  "$BENCH" --url "ws://127.0.0.1:$edge_port/" --pid "$edge_pid" --feed-port "$feed" \
    --clients "$clients" --rate "$RATE" --duration "$DURATION" --json "$JSON" --label backbone-edge
  for p in "${pids[@]}"; do kill "$p"; done
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
done
