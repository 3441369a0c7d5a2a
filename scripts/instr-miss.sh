#!/usr/bin/env bash
# Instructions per cache miss, counted by callgrind (repeatable whatever else
# the machine does, unlike any timing here): one gateway at a time runs under
# valgrind in front of a native zero-latency mock upstream and serves N true
# misses (`uat loadtest --unique`, concurrency 1), then M; (run N - run M) / (N - M)
# is the gateway's user-space instructions per request without start-up.
# Repeatable to about 1k instructions (the background tasks' share varies with
# valgrind's pace). Kernel work (syscalls, page faults) is not counted. SHA-256 runs in software
# under valgrind (no SHA-NI there): about 14k of the key's instructions.
#   scripts/instr-miss.sh [path/to/uat]   (N=1500 M=300, MODES="off deterministic";
#   L3=true counts the default L1 + L3 SQLite path, its writer thread included)
# Keeps the callgrind files of the larger runs (`callgrind_annotate --inclusive=yes`
# on them gives the parts) in $OUT (default: a temporary folder, printed).
set -euo pipefail
BIN=$(realpath "${1:-${UAT_BIN:-target/release/uat}}")
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 1; }
N=${N:-1500}; M=${M:-300}; MODES=${MODES:-"off deterministic"}
DIR=$(mktemp -d); OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
PIDS=()
declare -A PID_OF
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; if [ -n "${KEEP:-}" ]; then echo "kept $DIR" >&2; else rm -rf "$DIR"; fi; }
trap cleanup EXIT
. "$(dirname "$0")/bench-lib.sh"
bench_conf upstream 39804 off 0 "$BENCH_MOCK"
bench_up "$BIN" upstream 39804
echo '{"model":"mock-model","temperature":0,"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Give me one fact about the sea."}]}' > "$DIR/body.json"

# count MODE REQUESTS: total instructions of one gateway life serving REQUESTS misses.
count() {
  local file="$OUT/callgrind.$1.$2"
  bench_conf "gw-$1-$2" 39801 "$1" 268435456 "$(bench_upstream 39804)" no "${L3:-false}"
  valgrind --tool=callgrind --callgrind-out-file="$file" "$BIN" serve --config "$DIR/gw-$1-$2.toml" \
    > "$DIR/gw.log" 2>&1 &
  local vg=$!
  PIDS+=("$vg")
  for _ in $(seq 1 600); do curl -sf 127.0.0.1:39801/health >/dev/null && break; sleep 0.2; done
  "$BIN" loadtest --url http://127.0.0.1:39801 --body "$DIR/body.json" -c 1 --warmup 0s \
    --duration 600s -n "$2" --unique --json --no-progress 2>/dev/null > "$DIR/lt.json"
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); sys.exit(d['errors'] != 0 or d['requests'] != int(sys.argv[2]))" \
    "$DIR/lt.json" "$2" || { echo "$1: the load test failed" >&2; exit 1; }
  kill -INT "$vg"
  for _ in $(seq 1 100); do kill -0 "$vg" 2>/dev/null || break; sleep 0.2; done
  callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(/,/, "", $1); print $1}'
  [ "$2" = "$N" ] || rm -f "$file"
}
declare -A PER
for mode in $MODES; do
  big=$(count "$mode" "$N"); small=$(count "$mode" "$M")
  PER[$mode]=$(( (big - small) / (N - M) ))
  echo "cache.mode = $mode: ${PER[$mode]} instructions per request ($N - $M requests)"
done
if [ -n "${PER[off]:-}" ] && [ -n "${PER[deterministic]:-}" ]; then
  echo "a miss through L1$([ "${L3:-false}" = true ] && echo " + L3") adds $(( PER[deterministic] - PER[off] )) instructions ($(python3 -c "print(f'{(${PER[deterministic]} / ${PER[off]} - 1) * 100:+.1f}%')"))"
fi
echo "callgrind files: $OUT"
