"""Plain-Python core of the inference graph: config, params, engine, scoring. Never imports bentoml."""
