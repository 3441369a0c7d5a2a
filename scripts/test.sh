#!/usr/bin/env bash
# The whole test suite, from a fresh machine: starts PostgreSQL and Redis when
# they are not running, fetches the embedding model fixture, then runs
# fmt, clippy, every Rust test and the black-box SDK tests.
#
#   scripts/test.sh              # everything
#   scripts/test.sh --quick      # Rust tests only (services still started)
#   scripts/test.sh --services   # only start PostgreSQL and Redis (and the `test` database)
#   scripts/test.sh --self-test  # check this script's own pg_hba.conf editing on scratch files
#
# In CI (CI=true) a service that cannot be started is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=all
case "${1:-}" in
  "") ;;
  --quick) MODE=quick ;;
  --services) MODE=services ;;
  --self-test) MODE=self-test ;;
  *) printf 'usage: %s [--quick | --services | --self-test]\n' "$0" >&2; exit 2 ;;
esac
QUICK=0
[ "$MODE" = quick ] && QUICK=1

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

# The lines that let the tests' password-less URL in: trust for TCP on loopback.
PG_HBA_TRUST=(
  "host    all             all             127.0.0.1/32            trust"
  "host    all             all             ::1/128                 trust"
)
PG_HBA_MARK="# added by uat scripts/test.sh: trust on loopback for the test suite"

# Whether the first two rules of pg_hba.conf FILE are the loopback trust lines
# (PostgreSQL uses the first rule that matches, so they must come first).
pg_hba_trusts_loopback() {
  local first
  first=$(awk '!/^[[:space:]]*(#|$)/ { $1 = $1; print; if (++n == 2) exit }' "$1") || return 1
  [ "$first" = $'host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' ]
}

# Puts the loopback trust lines at the top of pg_hba.conf FILE (other copies of
# them are removed, every other line kept). Idempotent; rewrites the file in
# place, so its owner and mode stay.
pg_hba_trust_loopback() {
  local hba=$1 rest
  pg_hba_trusts_loopback "$hba" && return 0
  rest=$(awk -v mark="$PG_HBA_MARK" '
    $0 == mark { next }
    { rule = $0; $1 = $1 }
    $0 == "host all all 127.0.0.1/32 trust" || $0 == "host all all ::1/128 trust" { next }
    { print rule }' "$hba") || return 1
  printf '%s\n' "$PG_HBA_MARK" "${PG_HBA_TRUST[@]}" "" "$rest" >"$hba" || return 1
  pg_hba_trusts_loopback "$hba"
}

# Creates the `test` database when psql can connect as postgres. STRICT=1: not
# being able to connect is a failure (a cluster this script set up).
ensure_test_database() {
  local strict=$1 have
  # psql's own error, if any, goes to stderr.
  if ! have=$(psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -wXtAc \
      "SELECT 1 FROM pg_database WHERE datname = 'test'"); then
    if [ "$strict" = 1 ]; then
      printf 'test.sh: psql cannot connect to 127.0.0.1:5432 as postgres\n' >&2
      return 1
    fi
    # A server this script did not start: its configuration is its owner's.
    log "warning: psql cannot connect to 127.0.0.1:5432 as postgres; not checking for" \
      "the \`test\` database. The tests connect to UAT_TEST_POSTGRES_URL (default" \
      "postgres://postgres@127.0.0.1:5432/test): trust loopback in that server's pg_hba.conf," \
      "or point the variable at a database that exists"
    return 0
  fi
  [ "$have" = 1 ] && return 0
  log "creating the \`test\` database"
  psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -wXq -c "CREATE DATABASE test" >/dev/null && return 0
  # Another run may have created it meanwhile.
  have=$(psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -wXtAc \
    "SELECT 1 FROM pg_database WHERE datname = 'test'") && [ "$have" = 1 ]
}

# Installs (Debian/Ubuntu) and starts the newest `main` cluster with trust auth on
# loopback. Only called when nothing answers on 127.0.0.1:5432.
start_postgres_cluster() {
  if ! ls -d /etc/postgresql/*/main >/dev/null 2>&1; then
    command -v apt-get >/dev/null || return 1
    apt_install postgresql || return 1
  fi
  local ver hba changed=0
  ver=$(find /etc/postgresql -mindepth 2 -maxdepth 2 -name main -printf '%h\n' | xargs -n1 basename | sort -V | tail -n1)
  [ -n "$ver" ] || return 1
  hba=/etc/postgresql/$ver/main/pg_hba.conf
  [ -f "$hba" ] || { printf 'test.sh: no %s\n' "$hba" >&2; return 1; }
  if ! pg_hba_trusts_loopback "$hba"; then
    log "trust auth on loopback in $hba"
    pg_hba_trust_loopback "$hba" || return 1
    changed=1
  fi
  # The package's installation may have started the cluster already (on a port
  # other than 5432 only if another cluster holds it: then it stays unready below).
  if pg_ctlcluster --skip-systemctl-redirect "$ver" main status >/dev/null 2>&1; then
    if [ "$changed" = 1 ]; then
      pg_ctlcluster --skip-systemctl-redirect "$ver" main reload || return 1
    fi
  else
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start || return 1
  fi
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
  pg_isready -h 127.0.0.1 -p 5432 -q || return 1
}

start_postgres() {
  # In CI the tests need the database whoever started the server.
  local strict=0
  [ "${CI:-}" = true ] && strict=1
  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    log "starting PostgreSQL"
    start_postgres_cluster || return 1
    strict=1
  fi
  # Always: a server that was already running may lack the database.
  ensure_test_database "$strict"
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

# Checks pg_hba_trust_loopback on scratch copies of pg_hba.conf files.
self_test() {
  local dir fail=0 before
  dir=$(mktemp -d)
  check() {
    local name=$1; shift
    if "$@"; then printf 'ok   %s\n' "$name"; else printf 'FAIL %s\n' "$name" >&2; fail=1; fi
  }
  # shellcheck disable=SC2317 # called through check
  same() { [ "$1" = "$2" ]; }
  # shellcheck disable=SC2317 # called through check
  not() { ! "$@"; }
  rules() { awk '!/^[[:space:]]*(#|$)/ { $1 = $1; print }' "$1"; }

  # What Debian's pg_createcluster writes (PostgreSQL 15).
  cat >"$dir/debian" <<'HBA'
# Database administrative login by Unix domain socket
local   all             postgres                                peer

# TYPE  DATABASE        USER            ADDRESS                 METHOD

# "local" is for Unix domain socket connections only
local   all             all                                     peer
# IPv4 local connections:
host    all             all             127.0.0.1/32            scram-sha-256
# IPv6 local connections:
host    all             all             ::1/128                 scram-sha-256
# Allow replication connections from localhost, by a user with the
# replication privilege.
local   replication     all                                     peer
host    replication     all             127.0.0.1/32            scram-sha-256
host    replication     all             ::1/128                 scram-sha-256
HBA
  cp "$dir/debian" "$dir/hba"
  chmod 640 "$dir/hba"
  check "Debian's default does not trust loopback" not pg_hba_trusts_loopback "$dir/hba"
  check "adding the lines succeeds" pg_hba_trust_loopback "$dir/hba"
  check "trust on loopback is the first two rules" pg_hba_trusts_loopback "$dir/hba"
  check "every other rule kept, in order" same "$(rules "$dir/hba" | tail -n +3)" "$(rules "$dir/debian")"
  check "every original line kept, in order" same "$(tail -n +5 "$dir/hba")" "$(cat "$dir/debian")"
  check "mode kept" same "$(stat -c %a "$dir/hba")" 640
  before=$(cat "$dir/hba")
  check "a second run succeeds" pg_hba_trust_loopback "$dir/hba"
  check "a second run changes nothing" same "$(cat "$dir/hba")" "$before"

  # Trust on 127.0.0.1 already, but below another rule and without ::1.
  printf '%s\n' "local all all trust" "host  all  all  127.0.0.1/32  trust" >"$dir/partial"
  check "a partial file does not count" not pg_hba_trusts_loopback "$dir/partial"
  check "adding to a partial file succeeds" pg_hba_trust_loopback "$dir/partial"
  check "a partial file gets both lines on top" pg_hba_trusts_loopback "$dir/partial"
  check "without a duplicate" same "$(rules "$dir/partial")" \
    $'host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal all all trust'

  : >"$dir/empty"
  check "adding to an empty file succeeds" pg_hba_trust_loopback "$dir/empty"
  check "an empty file gets the lines" pg_hba_trusts_loopback "$dir/empty"
  check "a missing file is a failure" not pg_hba_trust_loopback "$dir/missing/pg_hba.conf" 2>/dev/null

  rm -rf "$dir"
  [ "$fail" = 0 ] || die "self-test failed"
  log "self-test passed"
}

if [ "$MODE" = self-test ]; then self_test; exit 0; fi

service PostgreSQL start_postgres
service Redis start_redis
if [ "$MODE" = services ]; then log "PostgreSQL and Redis are up"; exit 0; fi

if [ -x scripts/fetch-model.sh ]; then
  log "embedding model fixture"
  UAT_TEST_MODEL_DIR=$(scripts/fetch-model.sh | tail -n1) || die "cannot fetch the embedding model fixture"
  export UAT_TEST_MODEL_DIR
fi

if [ "$QUICK" = 0 ]; then
  log "self-test: pg_hba.conf editing"
  self_test >/dev/null
  log "deployment files: deploy/check.py"
  if ! python3 -c 'import tomllib, yaml' 2>/dev/null; then
    # PyYAML from PyPI; Python 3.11 is the project's floor (tomllib).
    python3 -m pip install -q pyyaml >/dev/null 2>&1 || true
  fi
  if python3 -c 'import tomllib, yaml' 2>/dev/null; then
    python3 deploy/check.py
  elif [ "${CI:-}" = true ]; then
    die "deploy/check.py needs python3 >= 3.11 with PyYAML (pip install pyyaml)"
  else
    log "skipped: needs python3 >= 3.11 with PyYAML (pip install pyyaml)"
  fi
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
