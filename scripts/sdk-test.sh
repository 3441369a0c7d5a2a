#!/usr/bin/env bash
# Black-box test: the official `openai` Python SDK (from PyPI) against a running
# `uat serve` with the built-in mock provider.
#
#   scripts/sdk-test.sh
#
# Checks models.list, a chat completion, a streamed chat completion (its chunks
# must concatenate to the non-streamed content and it must end cleanly), text
# completions, the Responses API (plain and streamed), an unknown model (openai.NotFoundError), and -- when UAT_TEST_MODEL_DIR points at a
# sentence-transformers folder -- embeddings.create against the local model.
#
# Environment:
#   UAT_VENV          virtualenv to create/reuse (default ~/.cache/uat/venv; outside the repo)
#   UAT_BIN           a uat binary to test instead of building one
#   CARGO_TARGET_DIR  where cargo builds (default ./target), as for the caller
#   UAT_TEST_MODEL_DIR  optional local embedding model folder
#
# Exits non-zero on any failure; the last line is `sdk: N passed, M failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

log() { printf 'sdk-test: %s\n' "$*" >&2; }
die() { printf 'sdk-test: %s\n' "$*" >&2; echo "sdk: 0 passed, 1 failed"; exit 1; }

PYTHON=${PYTHON:-python3}
VENV=${UAT_VENV:-$HOME/.cache/uat/venv}
case "$VENV" in "$ROOT"/*) die "UAT_VENV must be outside the repository ($VENV)";; esac

# 1. The SDK, in a virtualenv outside the repository.
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV" || die "cannot create a virtualenv at $VENV"
fi
if ! "$VENV/bin/python" -c 'import openai' 2>/dev/null; then
  log "pip install openai"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check openai >&2 || die "pip install openai failed"
fi
log "openai $("$VENV/bin/python" -c 'import openai; print(openai.__version__)')"

# 2. The binary.
if [ -n "${UAT_BIN:-}" ]; then
  BIN=$UAT_BIN
else
  TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
  log "cargo build -p uat (target dir $TARGET)"
  CARGO_TARGET_DIR=$TARGET cargo build --quiet -p uat >&2 || die "cargo build -p uat failed"
  BIN=$TARGET/debug/uat
fi
[ -x "$BIN" ] || die "no uat binary at $BIN"

# 3. A config with a mock provider on an ephemeral port, scratch storage.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/uat-sdk-test.XXXXXX")
PID=""
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# Port 0: uat logs the port it bound ('uat is listening addr=...'), which is
# read back below (picking a free port first would race with other programs).
EMBED_MODEL=""
{
  printf '[server]\nlisten = "127.0.0.1:0"\nlog_level = "info"\n\n'
  printf '[[providers]]\nname = "mock"\nkind = "mock"\n\n'
  printf '[providers.mock]\nchunks = 4\nmodels = ["mock-model"]\n\n'
  printf '[routing]\nprobe_local = false\n\n'
  printf '[cache]\nmode = "off"\n\n'
  printf '[storage]\ndata_dir = "%s/data"\n' "$WORK"
  if [ -n "${UAT_TEST_MODEL_DIR:-}" ] && [ -d "$UAT_TEST_MODEL_DIR" ]; then
    EMBED_MODEL="all-MiniLM-L6-v2"
    printf '\n[[embeddings.models]]\nname = "%s"\npath = "%s"\n' "$EMBED_MODEL" "$UAT_TEST_MODEL_DIR"
  fi
} > "$WORK/uat.toml"

"$BIN" --config "$WORK/uat.toml" config check > /dev/null || die "uat config check rejected the test config"

# 4. Start uat, read its port from the log and wait for /health.
log "starting $BIN serve on an ephemeral port"
env -u RUST_LOG "$BIN" serve --config "$WORK/uat.toml" > "$WORK/uat.log" 2>&1 &
PID=$!
ready=0
PORT=""
for _ in $(seq 1 200); do
  if ! kill -0 "$PID" 2>/dev/null; then cat "$WORK/uat.log" >&2; die "uat serve exited during start-up"; fi
  [ -n "$PORT" ] || PORT=$(sed -n 's/.*uat is listening addr=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/uat.log" | head -n 1)
  if [ -n "$PORT" ] && "$PYTHON" - "$PORT" <<'EOF' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=1).read()
EOF
  then ready=1; break; fi
  sleep 0.05
done
[ "$ready" = 1 ] || { cat "$WORK/uat.log" >&2; die "uat did not listen and answer /health within 10 s"; }
log "uat is listening on 127.0.0.1:$PORT"

# 5. The SDK checks.
set +e
UAT_COUNTS="$WORK/counts" UAT_BASE_URL="http://127.0.0.1:$PORT/v1" UAT_EMBED_MODEL="$EMBED_MODEL" "$VENV/bin/python" - <<'EOF'
import os, sys, traceback
import openai

client = openai.OpenAI(base_url=os.environ["UAT_BASE_URL"], api_key="sk-test", max_retries=0, timeout=30)
MODEL = "mock-model"
passed, failed = 0, 0

def check(name, fn):
    global passed, failed
    try:
        fn()
        passed += 1
        print(f"  ok    {name}")
    except Exception:
        failed += 1
        print(f"  FAIL  {name}")
        traceback.print_exc(limit=3)

def models_list():
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids, f"{MODEL} not in {ids}"

def chat():
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}])
    assert r.object == "chat.completion", r.object
    assert r.choices and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content, "empty content"
    assert r.choices[0].finish_reason == "stop", r.choices[0].finish_reason
    return r.choices[0].message.content

def stream():
    want = chat()
    parts, finish, n, usage = [], None, 0, None
    with client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
        stream=True, stream_options={"include_usage": True},
    ) as s:
        for chunk in s:
            n += 1
            assert chunk.object == "chat.completion.chunk", chunk.object
            if chunk.usage is not None:
                usage = chunk.usage
            for c in chunk.choices:
                if c.delta.content:
                    parts.append(c.delta.content)
                if c.finish_reason:
                    finish = c.finish_reason
    got = "".join(parts)
    assert got == want, f"streamed {got!r} != non-streamed {want!r}"
    assert finish == "stop", f"finish_reason {finish!r}"
    assert n >= 2, f"only {n} chunks"
    assert usage is not None and usage.total_tokens > 0, f"usage {usage!r}"

def completions():
    r = client.completions.create(model=MODEL, prompt="def hello():", max_tokens=16)
    assert r.object == "text_completion", r.object
    assert r.choices and r.choices[0].text, "empty text"
    parts, finish = [], None
    for chunk in client.completions.create(model=MODEL, prompt="def hello():", max_tokens=16, stream=True):
        assert chunk.object == "text_completion", chunk.object
        for c in chunk.choices:
            parts.append(c.text)
            if c.finish_reason:
                finish = c.finish_reason
    got = "".join(parts)
    assert got == r.choices[0].text, f"streamed {got!r} != non-streamed {r.choices[0].text!r}"
    assert finish is not None, "no finish_reason"

def responses():
    # The Responses API, bridged onto chat routing (the mock answers chat).
    r = client.responses.create(model=MODEL, instructions="Be brief.", input="Say hello.")
    assert r.object == "response", r.object
    assert r.status == "completed", r.status
    assert r.output_text, "empty output_text"
    assert r.usage is not None and r.usage.total_tokens > 0, f"usage {r.usage!r}"
    deltas, done, first = [], None, None
    for event in client.responses.create(model=MODEL, instructions="Be brief.", input="Say hello.", stream=True):
        first = first or event.type
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        elif event.type == "response.completed":
            done = event.response
    got = "".join(deltas)
    assert first == "response.created", f"first event {first!r}"
    assert got == r.output_text, f"streamed {got!r} != non-streamed {r.output_text!r}"
    assert done is not None, "no response.completed"
    assert done.output_text == got and done.usage.total_tokens > 0, done
    # The SDK's own stream accumulator follows every event by its index.
    with client.responses.stream(model=MODEL, input="Say hello.") as s:
        final = s.get_final_response()
    assert final.output_text == r.output_text, final.output_text

def unknown_model():
    try:
        client.chat.completions.create(model="no-such-model-xyz", messages=[{"role": "user", "content": "hi"}])
    except openai.NotFoundError as e:
        assert e.status_code == 404
        return
    raise AssertionError("no NotFoundError for an unknown model")

def embeddings_served():
    # The route belongs to the embeddings subsystem; an unknown route is 404 unknown_url.
    import urllib.request, urllib.error, json
    req = urllib.request.Request(os.environ["UAT_BASE_URL"] + "/embeddings", method="POST",
                                 data=b'{"model":"x","input":"x"}', headers={"content-type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=30).read()
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return json.loads(body)["error"].get("code") != "unknown_url"
        except Exception:
            return True
    return True

def embeddings():
    model = os.environ["UAT_EMBED_MODEL"]
    r = client.embeddings.create(model=model, input=["hello world", "a second input"])
    assert len(r.data) == 2, len(r.data)
    dims = {len(d.embedding) for d in r.data}
    assert dims == {384}, dims
    assert r.data[0].embedding != r.data[1].embedding

check("models.list", models_list)
check("chat.completions.create", chat)
check("chat.completions.create(stream=True)", stream)
check("completions.create (and stream=True)", completions)
check("responses.create (and stream=True)", responses)
check("unknown model -> NotFoundError", unknown_model)
skipped = 0
if os.environ.get("UAT_EMBED_MODEL"):
    if embeddings_served():
        check("embeddings.create (local model)", embeddings)
    else:
        skipped += 1
        print("  SKIP  embeddings.create: this uat does not serve POST /v1/embeddings")
with open(os.environ["UAT_COUNTS"], "w") as f:
    f.write(f"{passed} {failed} {skipped}\n")
EOF
rc=$?
set -e
read -r passed failed skipped < "$WORK/counts" 2>/dev/null || { passed=0; failed=1; skipped=0; }
[ "$rc" = 0 ] || [ "$failed" != 0 ] || failed=1

# 6. Stop uat gracefully: exit status 0 within 10 s of SIGTERM.
kill -TERM "$PID"
stopped=0
for _ in $(seq 1 200); do kill -0 "$PID" 2>/dev/null || { stopped=1; break; }; sleep 0.05; done
status=0
if [ "$stopped" = 1 ]; then wait "$PID" || status=$?; fi
PID=""
if [ "$stopped" = 1 ] && [ "$status" = 0 ]; then
  echo "  ok    SIGTERM stops uat (exit 0)"
  passed=$((passed + 1))
else
  echo "  FAIL  SIGTERM stops uat (stopped=$stopped, exit status $status)"
  failed=$((failed + 1))
fi
if [ "$failed" != 0 ]; then
  log "uat log:"; tail -n 40 "$WORK/uat.log" >&2
fi
if [ "$skipped" != 0 ]; then
  echo "sdk: $passed passed, $failed failed, $skipped skipped"
else
  echo "sdk: $passed passed, $failed failed"
fi
[ "$failed" = 0 ]
