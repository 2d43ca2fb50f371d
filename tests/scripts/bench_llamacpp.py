#!/usr/bin/env python3
"""llama.cpp's CPU speed on a GGUF, through llama-cpp-python, measured the way
`baleen bench` measures: the same synthetic prompt (ids (i*7919+13) % vocab),
prefill tokens/s, then decode tokens/s one token per step; medians of --runs.
Prints one JSON object."""
import argparse, json, statistics, time

from llama_cpp import Llama

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--prompt-tokens", type=int, default=128)
ap.add_argument("--gen-tokens", type=int, default=64)
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()

llm = Llama(model_path=a.model, n_threads=a.threads, n_threads_batch=a.threads, n_ctx=1024, n_batch=512, verbose=False)
vocab = llm.n_vocab()
prompt = [(i * 7919 + 13) % vocab for i in range(a.prompt_tokens)]
prefill, decode = [], []
for _ in range(a.runs):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    t1 = time.perf_counter()
    tok = prompt[-1]
    for _ in range(a.gen_tokens):
        llm.eval([tok])
    t2 = time.perf_counter()
    prefill.append(a.prompt_tokens / (t1 - t0))
    decode.append(a.gen_tokens / (t2 - t1))
import llama_cpp
print(json.dumps({
    "engine": f"llama.cpp via llama-cpp-python {llama_cpp.__version__}, {a.threads} threads, CPU",
    "prompt_tokens": a.prompt_tokens, "gen_tokens": a.gen_tokens, "runs": a.runs,
    "prefill_tokens_per_s": statistics.median(prefill),
    "decode_tokens_per_s": statistics.median(decode),
}))
