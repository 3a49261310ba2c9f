"""Where `make llama-cpp` (scripts/build_llama_cpp.sh) puts llama.cpp's tools, and a clear error when it has not run."""

from __future__ import annotations

import os
from pathlib import Path

# The same place scripts/bench_node.py looks (LLAMA_CPP_DIR overrides it).
LLAMA_CPP_BIN = Path(os.environ.get("LLAMA_CPP_DIR", Path.home() / ".cache" / "inference-graph" / "llama.cpp" / "bin"))


def llama_server_path() -> Path:
    """The built llama-server, or FileNotFoundError saying how to build it."""
    path = LLAMA_CPP_BIN / "llama-server"
    if not path.exists():
        raise FileNotFoundError(
            f"llama-server is not built ({path} is missing): run `make llama-cpp` once "
            "(scripts/build_llama_cpp.sh, about 25 minutes on 2 cores)"
        )
    return path
