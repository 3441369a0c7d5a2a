# Shared by the cache benchmarks (source it; needs $DIR, PIDS=() and
# `declare -A PID_OF` in the caller): gateway configs and start-up.

# The provider blocks: the built-in zero-latency mock, or an OpenAI-compatible
# upstream at 127.0.0.1:PORT (another uat serving the mock).
BENCH_MOCK='[[providers]]
name = "demo"
kind = "mock"'
bench_upstream() { # port
  printf '[[providers]]\nname = "demo"\nkind = "openai"\nbase_url = "http://127.0.0.1:%s/v1"\n' "$1"
}

# bench_conf NAME PORT CACHE_MODE L1_BYTES PROVIDER_BLOCK [L2 yes|no] [L3 true|false]
# writes $DIR/NAME.toml (its data under $DIR/data-NAME; L2 keys under a
# prefix of this shell's pid).
bench_conf() {
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
enabled = ${7:-false}
TOML
  if [ "${6:-no}" = yes ]; then
    printf '[cache.l2]\nurl = "redis://127.0.0.1:6379/"\nkey_prefix = "uatbench:%s:"\n' "$$" >> "$DIR/$1.toml"
  fi
}

# bench_up BINARY NAME PORT: starts one server and waits for its /health.
bench_up() {
  "$1" serve --config "$DIR/$2.toml" > "$DIR/$2.log" 2>&1 &
  PIDS+=($!)
  PID_OF[$3]=$!
  for _ in $(seq 1 100); do curl -sf "127.0.0.1:$3/health" >/dev/null && return; sleep 0.1; done
  echo "$2 did not start:" >&2; cat "$DIR/$2.log" >&2; exit 1
}
