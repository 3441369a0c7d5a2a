#!/usr/bin/env bash
# Embedding benchmark (issue: ML inference), uat against its reference in the
# same run: `uat bench embed` and sentence-transformers on PyTorch
# (scripts/bench-embed-pytorch.py), alternating, on one thread each, over the
# 50 fixture sentences and the same model folder; then `uat bench embed` on
# every core for the concurrency figures.
#
#   cargo build --release -p uat && scripts/bench-embed.sh [path/to/uat]
#
# Needs the model (scripts/fetch-model.sh) and a Python with torch and
# sentence-transformers: $PYTORCH_PYTHON (default /work/pt-venv/bin/python;
# make one with `python3 -m venv /work/pt-venv && /work/pt-venv/bin/pip
# install torch sentence-transformers`, several GB). Without it only the uat
# side runs, and the script says so.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-${UAT_BIN:-target/release/uat}}
[ -x "$BIN" ] || { echo "no uat binary at $BIN (cargo build --release -p uat)" >&2; exit 1; }
MODEL=${UAT_TEST_MODEL_DIR:-$(scripts/fetch-model.sh | tail -n 1)}
SENTENCES=${SENTENCES:-../shared/fixtures/embeddings/sentences.json}
PY=${PYTORCH_PYTHON:-/work/pt-venv/bin/python}
ROUNDS=${ROUNDS:-3}
have_torch=no
if [ -x "$PY" ] && "$PY" -c 'import torch, sentence_transformers' 2>/dev/null; then have_torch=yes; fi
[ "$have_torch" = yes ] || echo "no torch + sentence-transformers at $PY: the PyTorch side is skipped" >&2

uat_rate() { # batch-32 sentences per CPU-second, one thread
  CANDLE_NUM_THREADS=1 "$BIN" bench embed --model-dir "$MODEL" --sentences "$SENTENCES" --threads 1 \
    > "$DIR/uat.txt"
  awk '/^batch .* mixed lengths/ {print $(NF-5)}' "$DIR/uat.txt"
}
pt_rate() {
  OMP_NUM_THREADS=1 "$PY" scripts/bench-embed-pytorch.py --model-dir "$MODEL" --sentences "$SENTENCES" \
    --threads 1 2>/dev/null > "$DIR/pytorch.txt"
  awk '/^batch .* mixed lengths/ {print $(NF-3)}' "$DIR/pytorch.txt"
}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
echo "== batch 32 of mixed lengths, 1 thread, sentences per CPU-second ($ROUNDS alternating rounds)"
for r in $(seq 1 "$ROUNDS"); do
  u=$(uat_rate)
  if [ "$have_torch" = yes ]; then
    p=$(pt_rate)
    python3 -c "import sys; u,p=float(sys.argv[1]),float(sys.argv[2]); print(f'round {sys.argv[3]}: uat {u:.1f}  PyTorch {p:.1f}  uat/PyTorch {u/p:.2f}x')" "$u" "$p" "$r"
  else
    echo "round $r: uat $u"
  fi
done
echo "== the last round in full"
cat "$DIR/uat.txt"
[ "$have_torch" = yes ] && cat "$DIR/pytorch.txt"
echo "== uat on $(nproc) thread(s): concurrency, latency, memory"
"$BIN" bench embed --model-dir "$MODEL" --sentences "$SENTENCES" --threads "$(nproc)"
