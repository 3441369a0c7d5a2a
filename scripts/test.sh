#!/usr/bin/env bash
# The whole test suite, from a fresh machine: starts PostgreSQL and Redis when
# they are not running, fetches the embedding model fixture, then runs
# fmt, clippy, every Rust test and the black-box SDK tests.
#
#   scripts/test.sh            # everything
#   scripts/test.sh --quick    # Rust tests only (services still started)
#
# In CI (CI=true) a service that cannot be started is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'test.sh: %s\n' "$*" >&2; exit 1; }

export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
export UAT_TEST_POSTGRES_URL=${UAT_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
export UAT_TEST_REDIS_URL=${UAT_TEST_REDIS_URL:-redis://127.0.0.1:6379/}

need_apt_update=1
apt_install() {
  if [ "$need_apt_update" = 1 ]; then apt-get update -qq >/dev/null; need_apt_update=0; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

start_postgres() {
  if pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then return 0; fi
  log "starting PostgreSQL"
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    command -v apt-get >/dev/null || return 1
    apt_install postgresql || return 1
  fi
  local ver; ver=$(ls /etc/postgresql | sort -V | tail -n1)
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start || return 1
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
  pg_isready -h 127.0.0.1 -p 5432 -q || return 1
  # trust auth on loopback and a `test` database, as the tests expect.
  psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE test" >/dev/null
}

start_redis() {
  if redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then return 0; fi
  log "starting Redis"
  command -v redis-server >/dev/null || apt_install redis-server || return 1
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || return 1
  for _ in $(seq 1 30); do redis-cli ping 2>/dev/null | grep -q PONG && return 0; sleep 0.5; done
  return 1
}

service() {
  local name=$1 fn=$2
  if ! $fn; then
    if [ "${CI:-}" = "true" ]; then die "$name is required in CI and could not be started"; fi
    die "$name could not be started; the store and cache tests need it"
  fi
}

service PostgreSQL start_postgres
service Redis start_redis

if [ -x scripts/fetch-model.sh ]; then
  log "embedding model fixture"
  UAT_TEST_MODEL_DIR=$(scripts/fetch-model.sh | tail -n1) || die "cannot fetch the embedding model fixture"
  export UAT_TEST_MODEL_DIR
fi

if [ "$QUICK" = 0 ]; then
  log "cargo fmt --check"
  cargo fmt --all -- --check
  log "cargo clippy"
  cargo clippy --workspace --all-targets -- -D warnings
fi

log "cargo test"
cargo test --workspace --no-fail-fast 2>&1 | tee /tmp/uat-cargo-test.log
grep -qE '^test result: ' /tmp/uat-cargo-test.log || die "cargo test ran no test"

if [ "$QUICK" = 0 ] && [ -x scripts/sdk-test.sh ]; then
  log "black-box: the openai Python SDK against a running uat"
  # The `uat` binary cargo test just built (for the CLI tests) is the one to
  # test: `cargo build -p uat` alone would resolve other features and rebuild.
  TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
  if [ -z "${UAT_BIN:-}" ] && [ -x "$TARGET/debug/uat" ]; then
    UAT_BIN=$TARGET/debug/uat scripts/sdk-test.sh
  else
    scripts/sdk-test.sh
  fi
fi
log "all tests passed"
