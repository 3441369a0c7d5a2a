#!/usr/bin/env bash
# Cache benchmark (issue: tiered cache), every figure from the same run:
#   L1 hit vs L2 (Redis) hit vs true misses (L1; L1+L3 SQLite, the default;
#   L1+L2 Redis) vs cache off, through `uat loadtest`.
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
declare -A PID_OF
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; if [ -n "${KEEP:-}" ]; then echo "kept $DIR"; else rm -rf "$DIR"; fi; }
trap cleanup EXIT

. "$(dirname "$0")/bench-lib.sh"
UP=$(bench_upstream 39404)
L1=268435456
bench_conf upstream 39404 off 0 "$BENCH_MOCK"
bench_conf l1 39401 deterministic $L1 "$UP"           # L1 only
bench_conf l2 39403 deterministic 0 "$UP" yes         # L2 (Redis) only, to time its hits
bench_conf l13 39405 deterministic $L1 "$UP" no true  # the zero-config default: L1 + L3 (SQLite)
bench_conf l12 39406 deterministic $L1 "$UP" yes      # the scaled-out tiers: L1 + L2 (Redis)
bench_conf off 39402 off 0 "$UP"
NAMES=(upstream l1 l2 l13 l12 off)
PORTS=(39404 39401 39403 39405 39406 39402)
# The upstream first: the others discover its models at start-up.
for i in "${!NAMES[@]}"; do bench_up "$BIN" "${NAMES[$i]}" "${PORTS[$i]}"; done
BODY="$DIR/body.json"
echo '{"model":"mock-model","temperature":0,"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Give me one fact about the sea."}]}' > "$BODY"
# Prime the entries.
for p in 39401 39403; do curl -sf -o /dev/null "127.0.0.1:$p/v1/chat/completions" -H 'content-type: application/json' -d @"$BODY"; done

lt() { "$BIN" loadtest --url "http://127.0.0.1:$1" --body "$BODY" "${@:2}" --json --no-progress 2>/dev/null; }
fmt() { python3 -c "
import json,sys; d=json.load(sys.stdin); l=d['latency_ms']; s=d.get('service_time_ms') or l
print(f\"{sys.argv[1]:<34} req/s={d['requests_per_s']:8.0f} errors={d['errors']} p50={l['p50']:.3f} p99={l['p99']:.3f} service_p50={s['p50']:.3f} service_p99={s['p99']:.3f} ms\")" "$1"; }

echo "== hits: open loop, 1000 req/s, 5 s"
lt 39401 --rate 1000 --duration 5s | fmt "L1 hit"
lt 39403 --rate 1000 --duration 5s | fmt "L2 hit (Redis)"
# True misses: --unique gives every request its own seed (a new key, looked up
# in every level, fetched upstream, written to every level).
# Rounds alternate the configurations (the order rotates each round) so drift
# on a noisy machine hits all of them alike, and each configuration is compared
# with the cache-off run of its own round: the summary gives the median of
# those paired ratios and a bootstrap 95% interval of that median. On a 2-vCPU
# VM one 3 s run moves by +-10%, so a few-percent difference needs ~10 rounds.
ROUNDS=${ROUNDS:-10}
RUN=${RUN:-3s}
echo "== misses vs cache off: open loop, 1000 req/s, $RUN, $ROUNDS alternating rounds"
# misses PREFIX LOADTEST_ARGS...: alternating rounds of true misses through
# each configuration and the cache off; summary PREFIX prints the comparison.
misses() {
  local prefix=$1; shift
  local cfg=("39402 off" "39401 miss-l1" "39405 miss-l13" "39406 miss-l12")
  for r in $(seq 1 "$ROUNDS"); do
    for i in 0 1 2 3; do
      local c=${cfg[$(( (i + r) % 4 ))]}
      lt "${c% *}" "$@" --unique > "$DIR/$prefix-${c#* }.$r.json"
    done
  done
}
summary() {
python3 - "$DIR" "$ROUNDS" "$1" <<'PY'
import json, random, statistics, sys
d, rounds, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def runs(name):
    return [json.load(open(f"{d}/{prefix}-{name}.{r}.json")) for r in range(1, rounds + 1)]
def q(r, p):
    return (r.get("service_time_ms") or r["latency_ms"])[p]
def ci(xs, rng=random.Random(7)):
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(2000))
    return meds[50], meds[1949]
off = runs("off")
print(f"{'cache off':<30} p50={statistics.median(q(r, 'p50') for r in off):.3f} p99={statistics.median(q(r, 'p99') for r in off):.3f} ms (medians of {rounds} runs) errors={sum(r['errors'] for r in off)}")
for name, label in [("miss-l1", "miss, L1"), ("miss-l13", "miss, L1+L3 SQLite (default)"), ("miss-l12", "miss, L1+L2 Redis")]:
    rs = runs(name)
    out = []
    for p in ("p50", "p99"):
        ratios = [(q(a, p) / q(b, p) - 1) * 100 for a, b in zip(rs, off)]
        lo, hi = ci(ratios)
        out.append(f"{p} {statistics.median(ratios):+5.1f}% [{lo:+.1f}, {hi:+.1f}]")
    print(f"{label:<30} vs cache off, paired by round, median [95% CI]: {out[0]}  {out[1]}  errors={sum(r['errors'] for r in rs)}")
PY
}
misses open --rate 1000 --duration "$RUN"
summary open
# One client, back to back: the latency of one request with nothing queued
# and the CPUs kept awake. (At 1000 req/s open loop the cores idle between
# requests and each request pays the VM's wake-ups: the floor there, direct to
# the mock upstream, is about 0.3 ms P99 with or without uat in the path.)
echo "== latency, closed loop, concurrency 1, 5 s; misses: $RUN x $ROUNDS alternating rounds"
lt 39401 -c 1 --duration 5s | fmt "L1 hit"
lt 39403 -c 1 --duration 5s | fmt "L2 hit (Redis)"
lt 39404 -c 1 --duration 5s | fmt "mock upstream, direct (floor)"
# The gateway's own time per request, from its metrics: request duration
# minus the upstream call (the part of a miss the cache can add to), summed
# over the rounds of one configuration.
# Also the process's CPU time (user + system, every thread: the background
# L2/L3 writers too), from /proc, in clock ticks; and L1's own lookup and
# insert (moka, with L1's counters), from uat_cache_operation_seconds.
own() {
  local m; m=$(curl -sf "127.0.0.1:$1/metrics" | awk '/^uat_request_duration_seconds_sum\{(class="2xx",)?route="\/v1\/chat\/completions"\}/{r=$2} /^uat_request_duration_seconds_count\{(class="2xx",)?route="\/v1\/chat\/completions"\}/{n=$2} /^uat_upstream_duration_seconds_sum/{u+=$2} /^uat_cache_operation_seconds_sum\{level="l1",op="get"\}/{gs=$2} /^uat_cache_operation_seconds_count\{level="l1",op="get"\}/{gc=$2} /^uat_cache_operation_seconds_sum\{level="l1",op="put"\}/{ps=$2} /^uat_cache_operation_seconds_count\{level="l1",op="put"\}/{pc=$2} END{printf "%s %s %s %s %s %s %s", r+0, n+0, u+0, gs+0, gc+0, ps+0, pc+0}')
  echo "$m $(awk '{print $14 + $15}' "/proc/${PID_OF[$1]}/stat")"
}
for p in 39402 39401 39405 39406; do own $p > "$DIR/own-$p.before"; done
misses c1 -c 1 --duration "$RUN"
for p in 39402 39401 39405 39406; do own $p > "$DIR/own-$p.after"; done
summary c1
python3 - "$DIR" "$(getconf CLK_TCK)" <<'PY'
import sys
d, tick = sys.argv[1], float(sys.argv[2])
def own(port):
    b = [float(x) for x in open(f"{d}/own-{port}.before").read().split()]
    a = [float(x) for x in open(f"{d}/own-{port}.after").read().split()]
    n = max(a[1] - b[1], 1)
    cpu = (a[7] - b[7]) / tick / n * 1e6
    mean = lambda s, c: (a[s] - b[s]) / max(a[c] - b[c], 1) * 1e6
    return ((a[0] - b[0]) - (a[2] - b[2])) / n * 1e6, (a[0] - b[0]) / n * 1e6, cpu, mean(3, 4), mean(5, 6)
off_own, off_total, off_cpu, _, _ = own(39402)
print(f"gateway's own time per request (server-side request minus upstream call, all rounds): cache off {off_own:.1f} us of {off_total:.1f} us; process CPU {off_cpu:.1f} us per request")
for port, label in [(39401, "miss, L1"), (39405, "miss, L1+L3 SQLite (default)"), (39406, "miss, L1+L2 Redis")]:
    o, t, cpu, get, put = own(port)
    print(f"  {label:<32} {o:.1f} us: the cache adds {o - off_own:+.1f} us = {(o - off_own) / off_total * 100:+.1f}% of a cache-off request; CPU {cpu:.1f} us ({(cpu / off_cpu - 1) * 100:+.1f}%); of that, L1 lookup {get:.1f} us + L1 insert {put:.1f} us")
PY
echo "== closed loop, concurrency 32, 5 s"
lt 39401 -c 32 --duration 5s | fmt "L1 hit"
lt 39401 -c 32 --duration 5s --unique | fmt "miss, L1"
lt 39402 -c 32 --duration 5s --unique | fmt "cache off"
redis-cli --scan --pattern "uatbench:$$:*" | xargs -r redis-cli del >/dev/null 2>&1 || true
