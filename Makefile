# kiln — every target sets up what is missing first, so each works on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_TRIALS ?= 32
PYTEST_ARGS ?=

.PHONY: setup demo test bench lint clean examples

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

examples/digits/model.onnx: examples/digits/train.py examples/digits/digits.npz | $(STAMP)
	$(BIN)/python examples/digits/train.py

examples: examples/digits/model.onnx

demo: setup examples
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/kiln optimize examples/digits --trials $(DEMO_TRIALS)

test: setup
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup examples
	$(BIN)/python benchmarks/compile_vs_ort.py
	$(BIN)/python benchmarks/serve.py
	$(BIN)/python benchmarks/compression.py

lint: setup
	$(BIN)/ruff check kiln tasks flows tests benchmarks examples

clean:
	rm -rf $(VENV) .pytest_cache examples/*/model.onnx
