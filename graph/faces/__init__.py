"""Protocol faces of the graph in plain Python: OpenAI (and later gRPC) messages <-> Graph calls."""
