#!/usr/bin/env python3
"""Generate tests/fixtures/quant.json: reference dequantisation for GGML block types.

For every tensor type below we make 512 elements' worth of raw bytes from a fixed
seed, then ask gguf-py (`gguf.quants.dequantize`) what those bytes mean. Baleen's
own dequantisers must reproduce the values bit for bit (or to f32 rounding).

Quantised blocks start as uniformly random bytes; every f16 scale field is then
overwritten with a random finite f16 in [-2, 2], so that no block decodes to
inf/NaN. The scale offsets are checked against gguf-py's block layouts at run
time (see check_layouts), so a layout change in gguf-py fails loudly here.

Run with the fixtures venv (see requirements-fixtures.txt):
    python tests/scripts/make_quant_fixture.py
"""

import base64
import importlib.metadata
import json
import os
import sys

import numpy as np
import gguf
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as QT

N = 512
SEED = 20240611
GGUF_VERSION = "0.19.0"

# name -> (type, {byte offset within a block of each f16 scale field})
# Offsets are the layout of ggml's block_* structs; check_layouts() confirms
# them against gguf-py's own decoder.
TYPES = [
    ("F32", QT.F32, []),
    ("F16", QT.F16, []),
    ("Q4_0", QT.Q4_0, [0]),        # d | qs[16]
    ("Q4_1", QT.Q4_1, [0, 2]),     # d, m | qs[16]
    ("Q5_0", QT.Q5_0, [0]),        # d | qh[4] | qs[16]
    ("Q5_1", QT.Q5_1, [0, 2]),     # d, m | qh[4] | qs[16]
    ("Q8_0", QT.Q8_0, [0]),        # d | qs[32] (int8)
    ("Q4_K", QT.Q4_K, [0, 2]),     # d, dmin | scales[12] | qs[128]
    ("Q5_K", QT.Q5_K, [0, 2]),     # d, dmin | scales[12] | qh[32] | qs[128]
    ("Q6_K", QT.Q6_K, [208]),      # ql[128] | qh[64] | scales[16] (int8) | d
    ("BF16", QT.BF16, []),
]


def random_f16(rng, count):
    """`count` random finite float16 values in [-2, 2], as a uint16 bit array."""
    return rng.uniform(-2.0, 2.0, size=count).astype(np.float16).view(np.uint16)


def make_bytes(rng, qtype, scale_offsets):
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    assert N % block_size == 0
    n_blocks = N // block_size
    if qtype == QT.F32:
        return rng.uniform(-4.0, 4.0, size=N).astype("<f4").view(np.uint8)
    if qtype == QT.F16:
        vals = rng.uniform(-4.0, 4.0, size=N).astype("<f2")
        vals[:4] = np.array([0.0, -0.0, 6.0e-8, -3.0e-5], dtype="<f2")  # zero/subnormals
        return vals.view(np.uint8)
    if qtype == QT.BF16:
        # Random bf16 bit patterns with the exponent kept away from 0xFF
        # (inf/NaN): take the top 16 bits of random finite f32 values spread
        # over several orders of magnitude, including a few exact zeros/subnormals.
        mag = np.exp2(rng.uniform(-20.0, 20.0, size=N))
        sign = np.where(rng.random(N) < 0.5, -1.0, 1.0)
        vals = (mag * sign).astype("<f4")
        vals[:4] = np.array([0.0, -0.0, 1.0e-40, -3.0e-39], dtype="<f4")  # zero/subnormals
        bits = (vals.view(np.uint32) >> 16).astype("<u2")
        return bits.view(np.uint8)
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in scale_offsets:
        raw[:, off:off + 2] = random_f16(rng, n_blocks).astype("<u2").view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def check_layouts():
    """Confirm the scale-field offsets by poking gguf-py's decoder.

    For each quantised type: zero every byte except one f16 field, set that
    field to 1.0 and check that the decode changes when (and only when) one of
    the fields we call a scale changes. A wrong offset shows up as the decode
    staying identical when we scale the field we believe is `d`.
    """
    rng = np.random.default_rng(1)
    for name, qtype, offs in TYPES:
        if not offs:
            continue
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        base = rng.integers(0, 256, size=type_size, dtype=np.uint8)
        for off in offs:
            base[off:off + 2] = np.array([1.0], dtype="<f2").view(np.uint8)
        ref = gguf.quants.dequantize(base.copy(), qtype).astype(np.float64)
        # Each declared scale field: doubling it must change the output
        # (linearly for `d`, affinely for the min term).
        for off in offs:
            b = base.copy()
            b[off:off + 2] = np.array([2.0], dtype="<f2").view(np.uint8)
            out = gguf.quants.dequantize(b, qtype).astype(np.float64)
            if np.array_equal(out, ref):
                sys.exit(f"{name}: changing f16 at byte {off} did not change the decode; layout mismatch")
        # The first field is the multiplicative `d`: zeroing all declared scale
        # fields must give an all-zero block (nothing else scales the output).
        b = base.copy()
        for off in offs:
            b[off:off + 2] = 0
        out = gguf.quants.dequantize(b, qtype)
        if np.any(out != 0):
            sys.exit(f"{name}: zeroing f16 fields at {offs} left nonzero output; layout mismatch")
        print(f"  {name}: block_size={block_size} type_size={type_size} f16 scale offsets {offs} ok")


def main():
    have = importlib.metadata.version("gguf")
    if have != GGUF_VERSION:
        sys.exit(f"gguf {have} installed, fixtures are pinned to {GGUF_VERSION}")
    check_layouts()
    rng = np.random.default_rng(SEED)
    types_out = []
    for name, qtype, offs in TYPES:
        assert int(qtype) == {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7,
                              "Q8_0": 8, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "BF16": 30}[name]
        data = make_bytes(rng, qtype, offs)
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        assert data.nbytes == N // block_size * type_size, (name, data.nbytes)
        vals = gguf.quants.dequantize(data.copy(), qtype).reshape(-1)
        vals = np.asarray(vals, dtype=np.float32)
        assert vals.shape == (N,), (name, vals.shape)
        assert np.all(np.isfinite(vals)), name
        types_out.append({
            "name": name,
            "ggml_type": int(qtype),
            "n": N,
            "block_size": block_size,
            "type_size": type_size,
            "data_b64": base64.b64encode(data.tobytes()).decode("ascii"),
            "values": [float(np.float32(v)) for v in vals],
        })
        print(f"  {name}: {data.nbytes} bytes, values in [{vals.min():.4g}, {vals.max():.4g}]")

    out = {"gguf_version": GGUF_VERSION, "seed": SEED, "types": types_out}
    root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    path = os.path.join(root, "tests", "fixtures", "quant.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")

    # Round-trip check: every value survives JSON exactly as f32.
    with open(path) as f:
        back = json.load(f)
    for t_in, t_back in zip(types_out, back["types"]):
        a = np.array(t_in["values"], dtype=np.float32)
        b = np.array(t_back["values"], dtype=np.float32)
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), t_in["name"]
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
