"""Plain-Python core of the inference graph: config, params, engine, scoring. Never imports bentoml.

Importing it bounds oneDNN's primitive cache for the process (graph/memory.py): it must happen
before the first bfloat16 matmul, and every node process imports `graph` before it loads a model."""

from graph.memory import bound_onednn_cache

bound_onednn_cache()
