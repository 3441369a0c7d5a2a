#!/usr/bin/env bash
# Cache benchmark (issue: tiered cache), every figure from the same run:
#   L1 hit vs L2 (Redis) hit vs miss vs cache off, through `uat loadtest`.
# Topology: uat(cache) --HTTP--> uat(mock provider, zero latency), so a miss
# pays a real upstream hop. Needs Redis on 127.0.0.1:6379 and a release build:
#   cargo build --release -p uat && scripts/bench-cache.sh [path/to/uat]
# Loopback only; bounded (a few 5 s runs); stops its servers on exit.
set -euo pipefail
BIN=${1:-${UAT_BIN:-target/release/uat}}
[ -x "$BIN" ] || { echo "no uat binary at $BIN (cargo build --release -p uat)" >&2; exit 1; }
BIN=$(realpath "$BIN")
DIR=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT

conf() { # name port cache_mode l1_bytes provider_block [l2]
  cat > "$DIR/$1.toml" <<TOML
[server]
listen = "127.0.0.1:$2"
max_in_flight = 4096
log_level = "warn"
$5
[routing]
probe_local = false
[storage]
data_dir = "$DIR/data-$1"
[cache]
mode = "$3"
[cache.l1]
max_bytes = $4
[cache.l3]
enabled = false
TOML
  if [ "${6:-}" = l2 ]; then
    printf '[cache.l2]\nurl = "redis://127.0.0.1:6379/"\nkey_prefix = "uatbench:%s:"\n' "$$" >> "$DIR/$1.toml"
  fi
}
MOCK='[[providers]]
name = "demo"
kind = "mock"'
UP='[[providers]]
name = "demo"
kind = "openai"
base_url = "http://127.0.0.1:39404/v1"'
conf upstream 39404 off 0 "$MOCK"
conf l1 39401 deterministic 268435456 "$UP"
conf l2 39403 deterministic 0 "$UP" l2
conf off 39402 off 0 "$UP"
for n in upstream l1 l2 off; do
  "$BIN" serve --config "$DIR/$n.toml" > "$DIR/$n.log" 2>&1 &
  PIDS+=($!)
done
for p in 39404 39401 39403 39402; do
  for _ in $(seq 1 50); do curl -sf "127.0.0.1:$p/health" >/dev/null && break; sleep 0.1; done
done
BODY="$DIR/body.json"
echo '{"model":"mock-model","temperature":0,"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Give me one fact about the sea."}]}' > "$BODY"
# Prime the entries.
for p in 39401 39403; do curl -sf -o /dev/null "127.0.0.1:$p/v1/chat/completions" -H 'content-type: application/json' -d @"$BODY"; done

lt() { "$BIN" loadtest --url "http://127.0.0.1:$1" --body "$BODY" "${@:2}" --json --no-progress 2>/dev/null; }
fmt() { python3 -c "
import json,sys; d=json.load(sys.stdin); l=d['latency_ms']; s=d.get('service_time_ms') or l
print(f\"{sys.argv[1]:<30} req/s={d['requests_per_s']:8.0f} errors={d['errors']} p50={l['p50']:.3f} p99={l['p99']:.3f} service_p50={s['p50']:.3f} service_p99={s['p99']:.3f} ms\")" "$1"; }

echo "== open loop, 1000 req/s, 5 s"
lt 39401 --rate 1000 --duration 5s | fmt "L1 hit"
lt 39403 --rate 1000 --duration 5s | fmt "L2 hit (Redis)"
lt 39401 --rate 1000 --duration 5s -H 'cache-control: no-cache' | fmt "miss"
lt 39402 --rate 1000 --duration 5s | fmt "cache off"
echo "== closed loop, concurrency 32, 5 s"
lt 39401 -c 32 --duration 5s | fmt "L1 hit"
lt 39401 -c 32 --duration 5s -H 'cache-control: no-cache' | fmt "miss"
lt 39402 -c 32 --duration 5s | fmt "cache off"
redis-cli --scan --pattern "uatbench:$$:*" | xargs -r redis-cli del >/dev/null 2>&1 || true
