#!/usr/bin/env bash
# Speed of baleen beside llama.cpp on this machine, in one run (figures here are
# noisy: compare the ratios). Writes bench-out/*.json and prints a Markdown
# summary for BENCHMARKS.md.
#
#   tests/scripts/bench.sh            # all of it
#   LLAMA_PY=/path/to/python ...      # a Python with llama-cpp-python==0.3.36
#                                     # (python3 -m venv v && v/bin/pip install
#                                     #  llama-cpp-python==0.3.36: builds llama.cpp, ~15 min)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
P=${PROMPT_TOKENS:-128}
G=${GEN_TOKENS:-64}
R=${RUNS:-3}
LLAMA_PY=${LLAMA_PY:-/root/venvs/llama/bin/python}
OUT=bench-out
mkdir -p "$OUT"
tests/scripts/fetch-models.sh >/dev/null
cargo build --release -q
B=target/release/baleen
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}

echo "== baleen bench (GPU backend, first adapter)" >&2
$B bench --model $MODEL --prompt-tokens $P --gen-tokens $G --runs $R --json > $OUT/baleen-gpu.json
echo "== baleen bench (reference backend, CPU)" >&2
$B bench --model $MODEL --prompt-tokens $P --gen-tokens $G --runs $R --backend reference --json > $OUT/baleen-reference.json
if [ -x "$LLAMA_PY" ] && "$LLAMA_PY" -c 'import llama_cpp' 2>/dev/null; then
    echo "== llama.cpp (llama-cpp-python, 2 threads)" >&2
    "$LLAMA_PY" tests/scripts/bench_llamacpp.py --model $MODEL --prompt-tokens $P --gen-tokens $G --runs $R > $OUT/llamacpp.json
else
    echo "(no llama-cpp-python at $LLAMA_PY: skipping llama.cpp)" >&2
    echo '{}' > $OUT/llamacpp.json
fi
echo "== baleen bench-kernels" >&2
$B bench-kernels --json > $OUT/kernels.json
echo "== mixture of experts: the same DeepSeek-V3-shaped model with 8 and 64 routed experts (top 6)" >&2
cargo build --release -q --example moe_bench_model
for e in 8 64; do
    target/release/examples/moe_bench_model $OUT/moe-e$e.gguf $e
    $B bench --model $OUT/moe-e$e.gguf --prompt-tokens 32 --gen-tokens 32 --runs $R --json > $OUT/moe-e$e.json
    # Prefill's routed experts per slot and grouped by expert (64-token passes).
    for g in 0 1; do
        BALEEN_GROUPED_EXPERTS=$g $B bench --model $OUT/moe-e$e.gguf --prompt-tokens 64 --gen-tokens 4 --runs $R --json > $OUT/moe-e$e-grouped$g.json
    done
done
$B inspect $OUT/moe-e64.gguf | grep -E '^(latent attn|experts|kv cache)' > $OUT/moe-inspect.txt
echo "== routed experts paged: the 64-expert model at budgets of all but one expert, 1/2, 1/4 of its experts, and one token's worth" >&2
$B run --model $OUT/moe-e64.gguf --prompt-ids 1 --max-tokens 1 --temperature 0 --json --expert-cache 1G > $OUT/moe-sizes.json
read -r TOTAL MIN < <(python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["expert_cache"]; print(e["total_bytes"], e["minimum_bytes"])' $OUT/moe-sizes.json)
ONE=$((MIN / 6))
for b in $((TOTAL - ONE)) $((TOTAL / 2)) $((TOTAL / 4)) $MIN; do
    $B bench --model $OUT/moe-e64.gguf --prompt-tokens 32 --gen-tokens 32 --runs $R --json --expert-cache $b > $OUT/moe-paged-$b.json
done

python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
load = lambda n: json.load(open(os.path.join(out, n)))
g, r, l, k = load("baleen-gpu.json"), load("baleen-reference.json"), load("llamacpp.json"), load("kernels.json")
m8, m64 = load("moe-e8.json"), load("moe-e64.json")
print(f"SmolLM2-135M-Instruct Q4_1, {g['prompt_tokens']}-token prompt, {g['gen_tokens']} generated, median of {g['runs']}\n")
print("| engine | prefill tok/s | decode tok/s |")
print("| --- | ---: | ---: |")
print(f"| baleen GPU backend on {g['adapter']['name']} ({g['adapter']['backend']}) | {g['prefill_tokens_per_s']:.1f} | {g['decode_tokens_per_s']:.1f} |")
print(f"| baleen reference backend (plain Rust, f32) | {r['prefill_tokens_per_s']:.1f} | {r['decode_tokens_per_s']:.1f} |")
if l:
    print(f"| {l['engine']} | {l['prefill_tokens_per_s']:.1f} | {l['decode_tokens_per_s']:.1f} |")
    print(f"\nbaleen GPU / llama.cpp: prefill {g['prefill_tokens_per_s']/l['prefill_tokens_per_s']:.3f}, decode {g['decode_tokens_per_s']/l['decode_tokens_per_s']:.3f}")
print(f"\nbench-kernels on {k['adapter']['name']}: copy {k['copy_gbps']:.2f} GB/s\n")
print("| kernel | shape | GB/s | of copy | GFLOP/s |")
print("| --- | --- | ---: | ---: | ---: |")
for x in k["kernels"]:
    flops = f"{x['gflops']:.2f}" if "gflops" in x else ""
    print(f"| {x['name']} | {x['shape']} | {x['gbps']:.2f} | {x['fraction_of_copy']:.2f} | {flops} |")
print(f"\nMixture of experts (synthetic DeepSeek-V3-shaped Q4_0 model, top 6, on {m8['adapter']['name']}):\n")
print("| routed experts | prefill tok/s | decode tok/s |")
print("| ---: | ---: | ---: |")
for n, m in (("8", m8), ("64", m64)):
    print(f"| {n} | {m['prefill_tokens_per_s']:.1f} | {m['decode_tokens_per_s']:.1f} |")
print(f"\ndecode 64 experts / 8 experts: {m64['decode_tokens_per_s']/m8['decode_tokens_per_s']:.2f}\n")
print("Prefill of 64 tokens, the routed experts per slot (the CPU adapter's default) and grouped by expert:\n")
print("| routed experts | per slot tok/s | grouped tok/s |")
print("| ---: | ---: | ---: |")
for n in ("8", "64"):
    a, b = load(f"moe-e{n}-grouped0.json"), load(f"moe-e{n}-grouped1.json")
    print(f"| {n} | {a['prefill_tokens_per_s']:.1f} | {b['prefill_tokens_per_s']:.1f} |")
print()
print(open(os.path.join(out, "moe-inspect.txt")).read())
import glob
paged = sorted((load(os.path.basename(f)) for f in glob.glob(os.path.join(out, "moe-paged-*.json"))), key=lambda m: -m["expert_cache"]["budget_bytes"])
if paged:
    print(f"\nRouted experts paged (the 64-expert model, 32-token prompt, 32 generated, median of {m64['runs']}; bytes loaded per token of prompt and reply):\n")
    print("| budget | slots | prefill tok/s | decode tok/s | of resident | hit rate | MB loaded / token |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| all resident | {3 * 64} | {m64['prefill_tokens_per_s']:.1f} | {m64['decode_tokens_per_s']:.1f} | 1.00 | | |")
    for m in paged:
        e = m["expert_cache"]
        share = e["budget_bytes"] / e["total_bytes"]
        hit = e["hits"] / max(e["hits"] + e["misses"], 1)
        per_token = e["bytes_loaded"] / (m["runs"] * (m["prompt_tokens"] + m["gen_tokens"])) / 1e6
        print(f"| {share:.0%} | {e['slots']} | {m['prefill_tokens_per_s']:.1f} | {m['decode_tokens_per_s']:.1f} | {m['decode_tokens_per_s'] / m64['decode_tokens_per_s']:.2f} | {hit:.2f} | {per_token:.2f} |")
PY
