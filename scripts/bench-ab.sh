#!/usr/bin/env bash
# A/B of two uat binaries on the default cache path: true misses (every
# request its own seed) at concurrency 1 through L1+L3 (SQLite), each
# binary its own gateway in front of one zero-latency mock upstream, plus a
# cache-off gateway for reference. Rounds alternate the order; per run it
# records req/s, P50, P99 and the gateway's whole-process CPU (all threads,
# from /proc) per request, and prints the medians and B/A per round; then,
# from each gateway's metrics over all rounds, its own time per request
# (request minus upstream call) and L1's mean lookup and insert.
#   scripts/bench-ab.sh OLD_BINARY NEW_BINARY  (ROUNDS=8, RUN=3s, L3=true,
#   LOAD="-c 1"; LOAD="--rate 1000" is the open loop of bench-cache.sh)
# Loopback only; stops its servers on exit.
set -euo pipefail
A=$(realpath "$1"); B=$(realpath "$2"); ROUNDS=${ROUNDS:-8}; RUN=${RUN:-3s}; L3=${L3:-true}
read -r -a LOAD <<< "${LOAD:--c 1}"
DIR=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT
. "$(dirname "$0")/bench-lib.sh"
declare -A PID_OF
UP=$(bench_upstream 39504)
bench_conf up 39504 off 0 "$BENCH_MOCK"
bench_conf a 39505 deterministic 268435456 "$UP" no "$L3"
bench_conf b 39506 deterministic 268435456 "$UP" no "$L3"
bench_conf off 39502 off 0 "$UP"
bench_up "$A" up 39504; bench_up "$A" a 39505; bench_up "$B" b 39506; bench_up "$A" off 39502
echo '{"model":"mock-model","temperature":0,"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Give me one fact about the sea."}]}' > "$DIR/body.json"
cpu() { awk '{print $14 + $15}' "/proc/${PID_OF[$1]}/stat"; }
# request seconds, requests, upstream seconds, L1 get seconds and count, L1 put seconds and count
own() { curl -sf "127.0.0.1:$1/metrics" | awk '/^uat_request_duration_seconds_sum\{(class="2xx",)?route="\/v1\/chat\/completions"\}/{r=$2} /^uat_request_duration_seconds_count\{(class="2xx",)?route="\/v1\/chat\/completions"\}/{n=$2} /^uat_upstream_duration_seconds_sum/{u+=$2} /^uat_cache_operation_seconds_sum\{level="l1",op="get"\}/{gs=$2} /^uat_cache_operation_seconds_count\{level="l1",op="get"\}/{gc=$2} /^uat_cache_operation_seconds_sum\{level="l1",op="put"\}/{ps=$2} /^uat_cache_operation_seconds_count\{level="l1",op="put"\}/{pc=$2} END{printf "%s %s %s %s %s %s %s\n", r+0, n+0, u+0, gs+0, gc+0, ps+0, pc+0}'; }
for port in 39505 39506 39502; do own "$port" > "$DIR/own-$port.before"; done
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 0 ]; then order="39505 39506 39502"; else order="39506 39502 39505"; fi
  for port in $order; do
    c0=$(cpu "$port")
    "$A" loadtest --url "http://127.0.0.1:$port" --body "$DIR/body.json" "${LOAD[@]}" --duration "$RUN" \
      --warmup 0s --unique --json --no-progress 2>/dev/null > "$DIR/r-$port-$r.json"
    sleep 0.5 # the L3 writer's batch of this run lands in this run's CPU
    c1=$(cpu "$port")
    python3 - "$DIR/r-$port-$r.json" "$port" "$r" "$c0" "$c1" "$(getconf CLK_TCK)" >> "$DIR/rows" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); port, r, c0, c1, tick = sys.argv[2], sys.argv[3], *map(float, sys.argv[4:])
l = d["latency_ms"]
print(port, r, f"{d['requests_per_s']:.0f}", f"{l['p50']:.3f}", f"{l['p99']:.3f}", f"{(c1 - c0) / tick / max(d['requests'], 1) * 1e6:.1f}")
PY
  done
done
for port in 39505 39506 39502; do own "$port" > "$DIR/own-$port.after"; done
python3 - "$DIR/rows" <<'PY'
import collections, statistics as st, sys
by = collections.defaultdict(list)
for port, r, rps, p50, p99, cpu in (l.split() for l in open(sys.argv[1])):
    by[port].append((float(rps), float(p50), float(p99), float(cpu)))
for port, name in (("39505", "A"), ("39506", "B"), ("39502", "cache off")):
    v = by[port]
    print(f"{name:<10} req/s {st.median(x[0] for x in v):6.0f}  p50 {st.median(x[1] for x in v):.3f} ms"
          f"  p99 {st.median(x[2] for x in v):.3f} ms  CPU/request {st.median(x[3] for x in v):6.1f} us  (medians of {len(v)} runs)")
a, b = [x[3] for x in by["39505"]], [x[3] for x in by["39506"]]
print("B/A CPU per request, by round:", " ".join(f"{y / x:.3f}" for x, y in zip(a, b)), f"median {st.median(y / x for x, y in zip(a, b)):.3f}")
PY
python3 - "$DIR" <<'PY'
import sys
d = sys.argv[1]
def own(port):
    b = [float(x) for x in open(f"{d}/own-{port}.before").read().split()]
    a = [float(x) for x in open(f"{d}/own-{port}.after").read().split()]
    n = max(a[1] - b[1], 1)
    mean = lambda s, c: (a[s] - b[s]) / max(a[c] - b[c], 1) * 1e6
    return ((a[0] - b[0]) - (a[2] - b[2])) / n * 1e6, (a[0] - b[0]) / n * 1e6, mean(3, 4), mean(5, 6)
off, off_total, _, _ = own(39502)
print(f"gateway's own time per request (request minus upstream call, all rounds): cache off {off:.1f} us of {off_total:.1f} us")
for port, name in ((39505, "A"), (39506, "B")):
    o, _, get, put = own(port)
    print(f"  {name}: {o:.1f} us, the cache adds {o - off:+.1f} us = {(o - off) / off_total * 100:+.1f}% of a cache-off request; L1 lookup {get:.2f} us + L1 insert {put:.2f} us")
PY
